"""Weight layouts of the vectorised CPU kernels, zero-padded to whole vectors so pad lanes
never change a result: direct conv, Winograd and linear. A Winograd layer's transformed
weights are what its kernel reads, but its bundle ships the raw 3x3 weights (``Prepared``):
the runner transforms them at load time with a generated kernel that computes exactly what
``winograd_transform`` does here."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from codegen.cost import conv_kind
from codegen.emit.cpu.winograd import winograd_matrices
from codegen.lr import Layer


def pack_conv(la: Layer, in_shape: tuple[int, ...], x: int) -> tuple[np.ndarray, np.ndarray]:
    """Weights and bias of a vectorised conv, zero-padded: dense ``[oc/x][ic/L][kh][kw][L][x]``
    (L lanes of input per channel block: x when the input is blocked, 1 when plain),
    depthwise ``[c/x][kh][kw][x]``."""
    w, b = la.params["weight"], la.params["bias"]
    oc, icg, kh, kw = w.shape
    ocp = -(-oc // x) * x
    bp = np.zeros(ocp, np.float32)
    bp[:oc] = b
    if conv_kind(la, x) == "depthwise":
        wp = np.zeros((ocp, kh, kw), np.float32)
        wp[:oc] = w[:, 0]
        return wp.reshape(ocp // x, x, kh, kw).transpose(0, 2, 3, 1).copy(), bp
    lanes = x if len(in_shape) == 5 else 1
    icp = -(-icg // lanes) * lanes
    wp = np.zeros((ocp, icp, kh, kw), np.float32)
    wp[:oc, :icg] = w
    wp = wp.reshape(ocp // x, x, icp // lanes, lanes, kh, kw)
    return wp.transpose(0, 2, 4, 5, 3, 1).copy(), bp


def pack_linear(la: Layer, x: int) -> tuple[np.ndarray, np.ndarray]:
    """Linear weights as ``[o/x][k][x]``, bias padded to a multiple of x."""
    w, b = la.params["weight"], la.params["bias"]
    o, k = w.shape
    op = -(-o // x) * x
    wp = np.zeros((op, k), np.float32)
    wp[:o] = w
    bp = np.zeros(op, np.float32)
    bp[:o] = b
    return wp.reshape(op // x, x, k).transpose(0, 2, 1).copy(), bp


@dataclass(frozen=True)
class Prepared:
    """A param the bundle ships smaller than the kernels read it: ``raw`` (float32) goes into
    the weight blob, and the kernel ``symbol`` (C ``source``, in the step's kernel library)
    expands it into the param's layout at load time over ``work_items``; ``helpers``: (name,
    C) of the functions it calls, emitted once per library."""

    raw: np.ndarray
    symbol: str
    work_items: int
    source: str
    helpers: tuple[tuple[str, str], ...] = ()


def winograd_transform(w: np.ndarray, m: int) -> np.ndarray:
    """U = G g G^T of every (oc, ic) 3x3 kernel, ``[a][a][oc][ic]`` float32 (a = m + 2):
    float64 products and sums in the order of the load-time kernel
    (``winograd_prepare_kernel``: t = G g, then U = t G^T, each a left-to-right sum of three
    products, no fused multiply-add, every term kept), so both round to the same floats."""
    _, g, _ = winograd_matrices(m)
    gm = [[float(v) for v in row] for row in g]
    w = w.astype(np.float64)
    a = m + 2
    t = [[(gm[i][0] * w[:, :, 0, col] + gm[i][1] * w[:, :, 1, col]) + gm[i][2] * w[:, :, 2, col]
          for col in range(3)] for i in range(a)]
    u = np.empty((a, a, *w.shape[:2]), np.float32)
    for i in range(a):
        for j in range(a):
            u[i, j] = (t[i][0] * gm[j][0] + t[i][1] * gm[j][1]) + t[i][2] * gm[j][2]
    return u


def pack_winograd(la: Layer, m: int, x: int) -> tuple[np.ndarray, np.ndarray]:
    """Weights as the kernel reads them, U = G g G^T per (oc, ic) (``winograd_transform``),
    packed ``[a*a][oc/x][ic/x*x][x]`` (a = m + 2: one oc-block-major matrix per transform
    point, so a point's GEMM streams contiguous weights), zero-padded; bias padded to a
    multiple of x. The bundle ships the raw weights instead (``Prepared``)."""
    w, b = la.params["weight"], la.params["bias"]
    oc, ic = w.shape[:2]
    u = winograd_transform(w, m).transpose(0, 1, 3, 2)  # [a][a][ic][oc]
    a = m + 2
    ocp, icp = -(-oc // x) * x, -(-ic // x) * x
    up = np.zeros((a * a, icp, ocp), np.float32)
    up[:, :ic, :oc] = u.reshape(a * a, ic, oc)
    bp = np.zeros(ocp, np.float32)
    bp[:oc] = b
    return up.reshape(a * a, icp, ocp // x, x).transpose(0, 2, 1, 3).copy(), bp
