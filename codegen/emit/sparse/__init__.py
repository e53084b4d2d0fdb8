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

Int32 arrays travel in the float32 weight blob bit for bit (``np.ndarray.view``); in an fp16
bundle (NEON FP16) as two float16 words each, bit for bit, and the values in float16
(``packed``).

fp16 (``_Float16``, 8 lanes; kernels unchanged but for the element type): the convs (csr,
bcsr, fkw, bcsr_blocked) accumulate in fp16 as the dense fp16 convs and ncnn's do, over a
filter's kept terms (at most the dense conv's ic * kh * kw, at the NPAS rates a fifth to a
tenth of it); the block Linear in float32 chains (``linear.py``: its sums run to thousands of
terms). ``tests/test_arm64_fp16_sparse.py`` states and asserts the bounds.

int8 (``q8.py``; ``codegen/emit/c_int8.py`` dispatches to it, not through ``FORMATS``): a
pruned layer the quantization pass ran in int8 has storage "bcsr_blocked" (a conv of any
kernel size, stride, dilation and padding, on blocked uint8 activations) or "bcsr" (a Linear),
m = x filters per index list of (4 input channels, tap) entries, the dot products' byte
groups; ``codegen/passes/sparse.py``'s ``_int8_storage`` decides, ``tests/test_int8_sparse.py``
and ``tests/test_arm64_int8_sparse.py`` check them bit for bit.
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
    ints: Mapping[str, tuple[int, ...]]  # per op, which packed params are int32 (views)


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
    "csr": Format(kernel={"conv2d": spconv}, pack={"conv2d": _pack_conv},
                  ints={"conv2d": (2, 3, 4)}),
    "bcsr": Format(kernel={"conv2d": spconv, "linear": linear_bcsr},
                   pack={"conv2d": _pack_conv, "linear": _pack_linear},
                   ints={"conv2d": (2, 3, 4), "linear": (2, 3)}),
    "fkw": Format(kernel={"conv2d": fkw_conv}, pack={"conv2d": _pack_fkw},
                  ints={"conv2d": (2, 3, 4, 5, 6)}),
    "bcsr_blocked": Format(kernel={"conv2d": spconv1x1_blocked},
                           pack={"conv2d": _pack_blocked}, ints={"conv2d": (2, 3)}),
}


def packed(graph: Graph, la: Layer, x: int, elem: str = "float") -> tuple[np.ndarray, ...]:
    """A sparse layer's params as its kernel reads them, for element type ``elem``: float32
    (int32 params as float32 views), or for "_Float16" the values in float16 and each int32
    param as two float16 words holding its bytes (the blob writer keeps float16 bit for bit)."""
    fmt = FORMATS[la.storage]
    ps = fmt.pack[la.op](graph, la, x)
    if elem == "float":
        return ps
    ints = fmt.ints[la.op]
    return tuple(np.ascontiguousarray(p).view(np.int32).view(np.float16) if k in ints
                 else np.asarray(p, np.float16) for k, p in enumerate(ps))


__all__ = ["FORMATS", "Format", "Pack", "packed", "sparse_pad"]
