"""Weight layouts of the vectorised CPU kernels, zero-padded to whole vectors so pad lanes
never change a result: direct conv, Winograd (transformed at compile time) and linear."""

from __future__ import annotations

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


def pack_winograd(la: Layer, m: int, x: int) -> tuple[np.ndarray, np.ndarray]:
    """Weights transformed at compile time, U = G g G^T per (oc, ic), packed
    ``[a*a][oc/x][ic/x*x][x]`` (a = m + 2: one oc-block-major matrix per transform point, so a
    point's GEMM streams contiguous weights), zero-padded; bias padded to a multiple of x."""
    w, b = la.params["weight"], la.params["bias"]
    oc, ic = w.shape[:2]
    _, g, _ = winograd_matrices(m)
    gm = np.array([[float(v) for v in row] for row in g])
    u = np.einsum("ak,oikl,bl->abio", gm, w.astype(np.float64), gm)  # [a][a][ic][oc]
    a = m + 2
    ocp, icp = -(-oc // x) * x, -(-ic // x) * x
    up = np.zeros((a * a, icp, ocp), np.float32)
    up[:, :ic, :oc] = u.reshape(a * a, ic, oc)
    bp = np.zeros(ocp, np.float32)
    bp[:oc] = b
    return up.reshape(a * a, icp, ocp // x, x).transpose(0, 2, 1, 3).copy(), bp
