"""Sparse CPU kernels: pruned convolutions and linear layers that skip their zeros.

``FORMATS`` is the one table of storage formats: per format (``Layer.storage``, chosen by
``codegen/passes/sparse.py``; the passes' facts about each, such as whether it reads blocked
activations, are ``codegen.lr.SPARSE_FORMATS``), per op it serves, the step template and the
packing of the layer's params. A new format is one file here and one row in each table.

A sparse conv ("csr", "bcsr", "fkw") reads plain NCHW and writes plain NCHW. Its input is read
as one flat plane per input channel and stride phase: the ``sparse_pad`` step (``pad.py``)
copies the input into zero-padded planes Q_ab[r][q] = x_padded[s*r + a][s*q + b] (one per
phase (a, b) the kernel uses), each ``PS`` floats long with zeros after its ``Hq x Wq`` data; a
1x1 stride-1 unpadded conv reads its input directly. Then output position p = oh*Wq + ow of
every filter is

    y'[p] = sum over kept weights (ic, ky, kx) of w * Q[ic, ky%s, kx%s][p + (ky//s)*Wq + kx//s]

so each kept weight is one (offset, value) pair and the inner loop streams vectors of
consecutive p: one unaligned load and one FMA per vector, no branches, no index arithmetic.
Columns ow >= OW of y' (the padding's) are computed and dropped when storing.

Formats (params, in order):
- ``csr`` (m = 1) and ``bcsr`` (m filters share one index list; their union, zero-filled):
  ``vals`` [entries][m] float, ``bias`` [groups*m], ``offs`` [entries] int32 (the offset
  above), ``gptr`` [groups+1] int32 (each group's entries), ``order`` [groups] int32 (the
  group computed in each slot). Groups are ordered by index-list length, longest and shortest
  alternating, so any contiguous range of work items (what one thread gets) carries an even
  share of the work. Work items: (n, chunk of V vectors of p, group slot), slots innermost so
  a thread reuses the same input chunk across filters (``csr.py``).
- linear ``bcsr``: blocks of x outputs (the vector width), kept input indices per block:
  ``vals`` [entries][x], ``bias`` [blocks*x], ``offs`` [entries] int32, ``gptr`` (``linear.py``).
- conv ``bcsr_blocked`` (1x1, stride 1): the linear format on the [oc, ic] matrix, on blocked
  NCHW[x]c activations (the one sparse conv that is): ``offs`` holds each kept input
  channel's offset in the blocked image; vectorised over the x outputs of a block, the input
  broadcast, a tile of W positions per work item (``blocked.py``).
- ``fkw``: per filter, its kept kernels grouped by shape (``fkw.py``).

Int32 arrays travel in the float32 weight blob bit for bit (``np.ndarray.view``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from codegen.emit.cstyle import Ctx, Rendered
from codegen.emit.sparse.blocked import pack_sparse_conv1x1_blocked, spconv1x1_blocked
from codegen.emit.sparse.csr import pack_sparse_conv, spconv
from codegen.emit.sparse.fkw import fkw_conv, pack_fkw
from codegen.emit.sparse.linear import linear_bcsr, pack_sparse_linear
from codegen.emit.sparse.pad import sparse_pad
from codegen.lr import Graph, Layer

Pack = Callable[[Graph, Layer, int], tuple[np.ndarray, ...]]  # (graph, layer, vector width)


@dataclass(frozen=True)
class Format:
    """How one storage format is emitted: per op it serves, the step template and the packing
    of the layer's params (in the order the template reads them)."""

    kernel: Mapping[str, Callable[[Ctx], Rendered]]
    pack: Mapping[str, Pack]


def _pack_conv(graph: Graph, la: Layer, x: int) -> tuple[np.ndarray, ...]:
    return pack_sparse_conv(la)


def _pack_linear(graph: Graph, la: Layer, x: int) -> tuple[np.ndarray, ...]:
    return pack_sparse_linear(la, x)


def _pack_fkw(graph: Graph, la: Layer, x: int) -> tuple[np.ndarray, ...]:
    return pack_fkw(la)


def _pack_blocked(graph: Graph, la: Layer, x: int) -> tuple[np.ndarray, ...]:
    _, _, h, w, _ = graph.shapes[la.output]
    return pack_sparse_conv1x1_blocked(la, x, h * w)


FORMATS: dict[str, Format] = {
    "csr": Format(kernel={"conv2d": spconv}, pack={"conv2d": _pack_conv}),
    "bcsr": Format(kernel={"conv2d": spconv, "linear": linear_bcsr},
                   pack={"conv2d": _pack_conv, "linear": _pack_linear}),
    "fkw": Format(kernel={"conv2d": fkw_conv}, pack={"conv2d": _pack_fkw}),
    "bcsr_blocked": Format(kernel={"conv2d": spconv1x1_blocked},
                           pack={"conv2d": _pack_blocked}),
}

__all__ = ["FORMATS", "Format", "Pack", "sparse_pad"]
