"""Vectorised CPU kernels on blocked activations (NCHW[x]c), one C template per op family.

The C uses GCC/Clang vector extensions only (``vf``: x floats; no intrinsics headers, no libc),
so the same source compiles to AVX-512, AVX2 or NEON. A blocked tensor has the physical shape
(N, C/x, H, W, x) (channels padded up to a multiple of x); see ``codegen/passes/layout.py``.

Families and their variants (the name is the spec; the variant parameters are in it):

- ``conv2d_{kh}x{kw}s{s}[d{d}]_{nchw|nchw16c}__{isa}_{oc}x{w}w[_{epilogue}]``: register-blocked
  direct convolution, an ``oc`` (oc-blocks) x ``w`` (output columns) tile of vector
  accumulators, broadcast input scalars times vector weights, over every input channel and
  tap. Input plain NCHW (first layers: no padding of 3 channels to x) or blocked; output
  blocked. Weights packed ``[oc/x][ic/L][kh][kw][L][x]`` (L = x for blocked input, 1 for
  plain), zero-padded, so pad lanes never change results. Groups when channels per group are a
  multiple of x.
- ``dwconv2d_...``: depthwise, vector x vector over the channel block, same tiling.
- ``conv2d_3x3s1`` by Winograd F(m, 3), m in ``WINOGRAD`` (2, 4, 6; tuning ``algo``), on
  blocked input: ``winograd{m}_input_nchw16c__{isa}`` (B^T d B of one tile),
  ``winograd_gemm_nchw16c__{isa}_{oc}x{t}t`` (one transform point's GEMM over input channels:
  an ``oc`` x ``t`` (tiles) accumulator tile, vectorised over output channels, broadcast over
  input channels), ``winograd{m}_output_nchw16c__{isa}[_{epilogue}]`` (A^T M A + bias +
  epilogue). G g G^T is done at compile time (``pack_winograd``); V and M live in the runner's
  per-thread ``scratch`` (the step reports its size). Items (n, tile block, oc group).
- ``maxpool2d/avgpool2d/adaptive_avgpool2d_nchw16c__{isa}``, ``mul_channel_nchw16c__{isa}``.
- ``linear__{isa}_4k``: y[n, o-block] as 4 chains of broadcast x times packed ``[o/x][k][x]``.
- ``to_nchw16c`` / ``to_nchw``: the layout conversions at the graph's edges.

An epilogue is the element-wise ops fused after the layer, applied in registers before the
store: activations, and "add" (a fused residual: the layer's second input, the skip, read at the
output's NCHW[x]c position; the micro-kernels take it as ``s``, strided like ``y``).

Every layer's step loops over work items (n, oc-tile, output row); inside, the output row is
cut into interior tiles of ``w`` columns (no padding there, constant tap ranges) plus 1-column
edge calls with the tap range worked out per column. Tuning parameters (``Layer.tuning``):
``algo``, ``w_tile`` and ``oc_tile``; ``tuning_space`` lists the legal values,
``default_tuning`` picks with a cost model (``default_algo``: measured per layer shape).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from fractions import Fraction
from typing import Any

import numpy as np

from codegen.isa import VectorIsa
from codegen.lr import Layer, numel

AI = "static inline __attribute__((always_inline))"

VECTOR_PRELUDE = """\
typedef __INT32_TYPE__ int32_t;
typedef float vf __attribute__((vector_size(%(b)d), aligned(%(b)d), may_alias));
typedef float vfu __attribute__((vector_size(%(b)d), aligned(4), may_alias));
typedef int32_t vi __attribute__((vector_size(%(b)d)));
static inline vf npas_vsel(vi k, vf a, vf b) { return (vf)(((vi)a & k) | ((vi)b & ~k)); }
static inline vf npas_v_relu(vf v) { return (vf)((vi)v & ~(v < (vf){})); }
static inline vf npas_v_relu6(vf v) {
  v = npas_v_relu(v);
  const vf six = (vf){} + 6.0f;
  return npas_vsel(v > six, six, v);
}
static inline vf npas_v_hardswish(vf v) { return v * npas_v_relu6(v + 3.0f) * (1.0f / 6.0f); }
static inline vf npas_v_hardsigmoid(vf v) { return npas_v_relu6(v + 3.0f) * (1.0f / 6.0f); }
static inline vf npas_v_sigmoid(vf v) {
  for (int l = 0; l < %(x)d; ++l) v[l] = npas_sigmoid(v[l]);
  return v;
}
"""


def vector_prelude(isa: VectorIsa) -> str:
    return VECTOR_PRELUDE % {"b": 4 * isa.floats, "x": isa.floats}


# ---- which layers have a vectorised kernel, and their tuning space ---------------------------

def conv_kind(la: Layer, x: int) -> str | None:
    """"dense" (channels per group a multiple of x, or groups 1), "depthwise", or None (the
    scalar kernel on plain NCHW)."""
    oc, icg = la.params["weight"].shape[:2]
    g = la.attrs["groups"]
    if g == 1:
        return "dense"
    if icg == 1 and oc == g:
        return "depthwise"
    if icg % x == 0 and (oc // g) % x == 0:
        return "dense"
    return None


def _max_w(isa: VectorIsa, oc_tile: int) -> int:
    # accumulators + one weight vector per oc block + a broadcast register
    return max(1, min(16, (isa.registers - oc_tile - 1) // oc_tile))


def tuning_space(la: Layer, out_shape: tuple[int, ...], isa: VectorIsa) -> dict[str, tuple]:
    """Legal values of each tuning parameter of ``la``'s vectorised kernel (empty: none).
    ``algo``: "direct" or a Winograd variant (3x3 stride-1 dense convs); ``oc_tile`` x
    ``w_tile`` is the accumulator tile: oc blocks x output columns (direct) or x tiles
    (Winograd's per-point GEMM)."""
    if la.op != "conv2d" or len(out_shape) != 5:
        return {}
    ocb = out_shape[1]
    dw = conv_kind(la, isa.floats) == "depthwise"
    ocs = (1,) if dw or la.attrs["groups"] > 1 else tuple(t for t in (1, 2, 4) if ocb % t == 0
                                and _max_w(isa, t) * t <= isa.registers - t - 1)
    algos = ("direct", *WINOGRAD) if winograd_ok(la) else ("direct",)
    return {"algo": algos, "oc_tile": ocs, "w_tile": tuple(range(1, _max_w(isa, 1) + 1))}


def default_algo(la: Layer, out_shape: tuple[int, ...]) -> str:
    """Winograd for 3x3 stride-1 convs with at least 8 input channels: the largest of F(4,3),
    F(2,3) that gives an image at least 4 tiles (fewer leave the per-point GEMM one tile wide:
    weight-bandwidth bound), else direct. Measured per layer shape on the AVX-512 host (1
    thread): F(4,3) beats direct 2-3x from 56x56 down to 7x7 and F(2,3) at 14x14 and below;
    at 4x4 only F(2,3) wins (256 ch: 1.04 vs 1.42 ms direct, 2.2 F(4,3)), at 2x2 direct wins
    (5x); F(6,3) is within noise of F(4,3) at 28x28-224x224, slower below, less accurate."""
    if not winograd_ok(la) or la.params["weight"].shape[1] < 8:
        return "direct"
    oh, ow = out_shape[2:4]
    for algo in ("winograd4", "winograd2"):
        m = WINOGRAD[algo]
        if -(-oh // m) * -(-ow // m) >= 4:
            return algo
    return "direct"


def _best_tile(total: int, most: int) -> int:
    """The tile width with the least work per item (tiles cost their width plus a fixed
    overhead; the remainder is a tile too)."""
    best, best_cost = 1, float("inf")
    for w in range(1, most + 1):
        cost = (total // w) * (w + 3) + (total % w + 3 if total % w else 0)
        if cost <= best_cost:
            best, best_cost = w, cost
    return best


def default_tuning(la: Layer, out_shape: tuple[int, ...], isa: VectorIsa) -> dict[str, Any]:
    """The cost model: the algorithm (``default_algo``); the largest oc tile (fewer broadcasts
    per FMA) that leaves enough work items for a few threads (Winograd splits work by tiles, so
    up to 2 there), then the column (tile) count with the least work per output column (tile)."""
    space = tuning_space(la, out_shape, isa)
    if not space:
        return {}
    n, ocb, oh, ow, _ = out_shape
    algo = default_algo(la, out_shape)
    if algo in WINOGRAD:
        m = WINOGRAD[algo]
        oc_tile = max(t for t in space["oc_tile"] if t <= 2)
        tiles = -(-oh // m) * -(-ow // m)
        most = _max_w(isa, oc_tile)
        w = -(-tiles // -(-tiles // most))  # fewest register tiles, evened out
        return {"algo": algo, "oc_tile": oc_tile, "w_tile": w}
    oc_tile = max(t for t in space["oc_tile"] if t <= 2 and (t == 1 or n * ocb // t * oh >= 32))
    return {"algo": algo, "oc_tile": oc_tile, "w_tile": _best_tile(ow, _max_w(isa, oc_tile))}


# ---- weight packing ----------------------------------------------------------------------------

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


# ---- templates ---------------------------------------------------------------------------------

def _epi(epilogue: tuple[str, ...], var: str, skip: str | None = None) -> list[str]:
    """Lines applying ``epilogue`` to the vector ``var``; a fused residual ("add") adds the
    vector at ``skip`` (the same NCHW[x]c position in the layer's second input)."""
    return [f"{var} += *(const vf *)({skip});" if e == "add" else f"{var} = npas_v_{e}({var});"
            for e in epilogue]


def _skip_param(epilogue: tuple[str, ...]) -> str:
    """The micro-kernel parameter for a fused residual, right after y (strided like y)."""
    return "const float *restrict s, " if "add" in epilogue else ""



def _lane_fma(indent: str, X: int, acc: list[list[str]], x_at) -> list[str]:
    """One input lane of a register-blocked micro-kernel: load a weight vector per oc block
    (``wp + o * wb + l * X``), broadcast each column's input scalar ``x_at(j)`` and accumulate
    into ``acc[o][j]``. Shared by the direct convolution and the Winograd per-point GEMM."""
    L = [f"{indent}const vf w{o} = *(const vf *)(wp + {o} * wb + l * {X});"
         for o in range(len(acc))]
    for j in range(len(acc[0])):
        L.append(f"{indent}const float x{j} = {x_at(j)};")
        L += [f"{indent}{acc[o][j]} += x{j} * w{o};" for o in range(len(acc))]
    return L

def conv_microkernel(isa: VectorIsa, kh: int, kw: int, sh: int, sw: int, dh: int, dw: int,
                     lanes: int, depthwise: bool, oc_tile: int, w_tile: int,
                     epilogue: tuple[str, ...]) -> tuple[str, str]:
    """(name, C source) of one conv micro-kernel: an ``oc_tile`` x ``w_tile`` accumulator tile.

    Arguments: x, the input base, and xo, the (possibly negative) offset of the tile's top-left
    tap (row oh*sh - pt, column ow*sw - pl) in floats; w/b: this tile's packed weights and bias;
    y: the output at (n, first oc block, oh, ow); cb: input channel blocks (plain: channels);
    cs/rs: floats between input channel blocks / rows; wb: floats between oc blocks' weights;
    ys: floats between oc blocks of y; [ky0, ky1) x [kx0, kx1): the taps that see no padding."""
    X = isa.floats
    cs_col = X if lanes != 1 or depthwise else 1  # floats between input columns
    fam = "dwconv2d" if depthwise else "conv2d"
    s = f"s{sh}" if sh == sw else f"s{sh}x{sw}"
    d = "" if dh == dw == 1 else (f"d{dh}" if dh == dw else f"d{dh}x{dw}")
    lay = "nchw" if lanes == 1 and not depthwise else f"nchw{X}c"
    name = (f"{fam}_{kh}x{kw}{s}{d}_{lay}__{isa.name}_{oc_tile}x{w_tile}w"
            + "".join(f"_{e}" for e in epilogue))
    i = "int64_t"
    acc = [[f"a{o}_{j}" for j in range(w_tile)] for o in range(oc_tile)]
    L = [f"/* {name}: {oc_tile} oc block(s) x {w_tile} output column(s) of a {kh}x{kw} "
         f"{'depthwise ' if depthwise else ''}conv, stride {sh}x{sw}, dilation {dh}x{dw}, "
         f"{lay} input. */",
         f"{AI} void {name}(const float *restrict x, {i} xo, const float *restrict w, "
         f"{i} wb, const float *restrict b, float *restrict y, {_skip_param(epilogue)}"
         f"{i} ys, {i} cb, {i} cs, "
         f"{i} rs, {i} ky0, {i} ky1, {i} kx0, {i} kx1) {{"]
    for o in range(oc_tile):
        L.append(f"  const vf b{o} = *(const vf *)(b + {o * X});")
        L.append(f"  vf {', '.join(f'{a} = b{o}' for a in acc[o])};")
    if depthwise:
        L += ["  (void)cb; (void)cs; (void)wb;",
              f"  for ({i} ky = ky0; ky < ky1; ++ky)",
              f"    for ({i} kx = kx0; kx < kx1; ++kx) {{",
              f"      const float *xp = x + (xo + ky * {dh} * rs + kx * {dw * X});",
              f"      const vf w0 = *(const vf *)(w + (ky * {kw} + kx) * {X});"]
        for j in range(w_tile):
            L.append(f"      {acc[0][j]} += *(const vf *)(xp + {j * sw * X}) * w0;")
        L.append("    }")
    else:
        L += [f"  for ({i} c = 0; c < cb; ++c)",
              f"    for ({i} ky = ky0; ky < ky1; ++ky)",
              f"      for ({i} kx = kx0; kx < kx1; ++kx) {{",
              f"        const float *xp = x + (xo + c * cs + ky * {dh} * rs + kx * "
              f"{dw * cs_col});",
              f"        const float *wp = w + ((c * {kh} + ky) * {kw} + kx) * {lanes * X};",
              f"        for (int l = 0; l < {lanes}; ++l) {{"]
        L += _lane_fma(" " * 10, X, acc, lambda j: f"xp[{j * sw * cs_col} + l]")
        L += ["        }", "      }"]
    for o in range(oc_tile):
        for j in range(w_tile):
            L += ["  " + ln for ln in _epi(epilogue, acc[o][j], f"s + {o} * ys + {j * X}")]
            L.append(f"  *(vf *)(y + {o} * ys + {j * X}) = {acc[o][j]};")
    L.append("}")
    return name, "\n".join(L) + "\n"


def conv2d_blocked(c: Any) -> tuple[list[str], int, int]:
    """Step body of a vectorised conv: items (n, oc tile, output row); Winograd layers go to
    ``conv2d_winograd``."""
    isa: VectorIsa = c.lang.isa
    X = isa.floats
    la = c.la
    xin = c.ins[0]
    n, ic, ih, iw = (xin[0], xin[1] * X, xin[2], xin[3]) if len(xin) == 5 else xin
    _, ocb, oh, ow, _ = c.out
    oc, icg_real, kh, kw = la.params["weight"].shape
    sh, sw = la.attrs["stride"]
    dh, dw = la.attrs["dilation"]
    pt, _, pl, _ = la.attrs["padding"]
    g = la.attrs["groups"]
    depthwise = conv_kind(la, X) == "depthwise"
    lanes = X if len(xin) == 5 and not depthwise else (1 if not depthwise else X)
    tun = {**default_tuning(la, c.out, isa), **la.tuning}
    oc_tile, w_tile = int(tun["oc_tile"]), int(tun["w_tile"])
    if ocb % oc_tile:
        oc_tile = 1
    algo = conv_algo(la, c.out, xin, isa)
    if algo in WINOGRAD:
        return conv2d_winograd(c, WINOGRAD[algo], oc_tile, w_tile)
    col = X if (len(xin) == 5) else 1  # floats between input columns
    rs = iw * col
    cs = ih * iw * X if len(xin) == 5 else ih * iw  # between input channel blocks / channels
    xn = (ic if len(xin) == 4 else ic // X) * cs  # floats per batch image
    if depthwise:
        cb, wblk = 1, kh * kw * X
    else:
        cb = -(-icg_real // lanes)
        wblk = -(-icg_real // lanes) * kh * kw * lanes * X
    ocb_per_group = max(1, (oc // g) // X) if g > 1 and not depthwise else 0
    ys = oh * ow * X

    # interior columns: every kx tap lands inside the row
    ow_lo = min(ow, -(-pl // sw))
    ow_hi = max(ow_lo, min(ow, (iw - 1 + pl - (kw - 1) * dw) // sw + 1))
    interior = ow_hi - ow_lo
    main_n, rem = divmod(interior, w_tile)
    names = {}
    for t in {1, w_tile if main_n else 1, rem or 1}:
        nm, src = conv_microkernel(isa, kh, kw, sh, sw, dh, dw, lanes, depthwise, oc_tile, t,
                                   la.epilogue)
        c.lang.helpers.setdefault(nm, src)
        names[t] = nm
    octs = ocb // oc_tile
    i = "int64_t"
    if depthwise:
        xbase = f"n * {xn} + ocb * {cs}"
    elif g > 1:
        xbase = f"n * {xn} + (ocb / {ocb_per_group}) * {cb} * {cs}"
    else:
        xbase = f"n * {xn}"

    skip = "add" in la.epilogue

    def call(t: str, ow_expr: str, kx: str) -> str:
        sarg = f"sr + {ow_expr} * {X}, " if skip else ""
        return (f"{names[t]}(x, xb + ih0 * {rs} + ({ow_expr} * {sw} - {pl}) * {col}, "
                f"wp, {wblk}, bp, yr + {ow_expr} * {X}, {sarg}{ys}, {cb}, {cs}, {rs}, ky0, "
                f"ky1, {kx});")

    body = [f"const {i} n = it / {octs * oh}, ocb = (it / {oh}) % {octs} * {oc_tile}, "
            f"oh = it % {oh};",
            f"const {i} ih0 = oh * {sh} - {pt};",
            f"const {i} ky0 = ih0 < 0 ? (-ih0 + {dh - 1}) / {dh} : 0;",
            f"const {i} kyr = ({ih} - ih0 + {dh - 1}) / {dh};",
            f"const {i} ky1 = kyr < {kh} ? kyr : {kh};",
            f"const {i} xb = {xbase};",
            f"const float *wp = w + ocb * {wblk};",
            f"const float *bp = b + ocb * {X};",
            f"float *yr = y + ((n * {ocb} + ocb) * {oh} + oh) * {ow * X};"]
    if skip:
        body.append("const float *sr = s + (yr - y);")
    edge = [f"  const {i} iw0 = ow * {sw} - {pl};",
            f"  const {i} kx0 = iw0 < 0 ? (-iw0 + {dw - 1}) / {dw} : 0;",
            f"  const {i} kxr = ({iw} - iw0 + {dw - 1}) / {dw};",
            f"  const {i} kx1 = kxr < {kw} ? kxr : {kw};",
            "  " + call(1, "ow", "kx0, kx1")]
    if ow_lo:
        body += [f"for ({i} ow = 0; ow < {ow_lo}; ++ow) {{", *edge, "}"]
    if main_n:
        body += [f"for ({i} ow = {ow_lo}; ow < {ow_lo + main_n * w_tile}; ow += {w_tile})",
                 "  " + call(w_tile, "ow", f"0, {kw}")]
    if rem:
        body += ["{", f"  const {i} ow = {ow_lo + main_n * w_tile};",
                 "  " + call(rem, "ow", f"0, {kw}"), "}"]
    if ow_hi < ow:
        body += [f"for ({i} ow = {ow_hi}; ow < {ow}; ++ow) {{", *edge, "}"]
    items = n * octs * oh
    L = [c.x(), *c.skip(), c.y(), c.w(0, "w"), c.w(1, "b"), *c.lang.over_items(c, items, body)]
    return L, items, 2 * n * oc * oh * ow * icg_real * kh * kw


def pool_blocked(kind: str) -> Callable[[Any], tuple[list[str], int, int]]:
    """max/avg/adaptive-avg pooling on a blocked tensor: items (n, channel block, output row),
    one vector per output column."""
    def kernel(c: Any) -> tuple[list[str], int, int]:
        X = c.lang.isa.floats
        n, cbk, ih, iw, _ = c.ins[0]
        _, _, oh, ow, _ = c.out
        a = c.a
        i = "int64_t"
        body = [f"const {i} nc = it / {oh}, oh = it % {oh};",
                f"const float *xp = x + nc * {ih * iw * X};",
                f"float *yr = y + (nc * {oh} + oh) * {ow * X};",
                f"for ({i} ow = 0; ow < {ow}; ++ow) {{"]
        if kind == "max":
            (kh, kw), (sh, sw), (ph, pw), (dh, dw) = (a["kernel"], a["stride"], a["padding"],
                                                     a["dilation"])
            body += ["  vf m = (vf){} - __builtin_inff();",
                     f"  for ({i} ky = 0; ky < {kh}; ++ky) {{",
                     f"    const {i} ih = oh * {sh} - {ph} + ky * {dh};",
                     f"    if (ih < 0 || ih >= {ih}) continue;",
                     f"    for ({i} kx = 0; kx < {kw}; ++kx) {{",
                     f"      const {i} iw = ow * {sw} - {pw} + kx * {dw};",
                     f"      if (iw < 0 || iw >= {iw}) continue;",
                     f"      const vf v = *(const vf *)(xp + (ih * {iw} + iw) * {X});",
                     "      m = npas_vsel((v > m) | (v != v), v, m);",
                     "    }", "  }", f"  *(vf *)(yr + ow * {X}) = m;", "}"]
            flops = numel(c.out) * kh * kw
        else:
            if kind == "avg":
                (kh, kw), (sh, sw), (ph, pw) = a["kernel"], a["stride"], a["padding"]
                div = ("(float)pool" if a["count_include_pad"]
                       else "(float)((h1 - h0) * (w1 - w0))")
                body += [f"  {i} h0 = oh * {sh} - {ph}, w0 = ow * {sw} - {pw};",
                         f"  {i} h1 = h0 + {kh} < {ih + ph} ? h0 + {kh} : {ih + ph};",
                         f"  {i} w1 = w0 + {kw} < {iw + pw} ? w0 + {kw} : {iw + pw};",
                         f"  const {i} pool = (h1 - h0) * (w1 - w0);",
                         "  if (h0 < 0) h0 = 0;", "  if (w0 < 0) w0 = 0;",
                         f"  if (h1 > {ih}) h1 = {ih};", f"  if (w1 > {iw}) w1 = {iw};"]
                flops = numel(c.out) * kh * kw
            else:
                div = "(float)((h1 - h0) * (w1 - w0))"
                body += [f"  const {i} h0 = oh * {ih} / {oh}, "
                         f"h1 = ((oh + 1) * {ih} + {oh - 1}) / {oh};",
                         f"  const {i} w0 = ow * {iw} / {ow}, "
                         f"w1 = ((ow + 1) * {iw} + {ow - 1}) / {ow};"]
                flops = numel(c.ins[0])
            body += ["  vf s = (vf){};",
                     f"  for ({i} i = h0; i < h1; ++i)",
                     f"    for ({i} j = w0; j < w1; ++j) s += *(const vf *)(xp + "
                     f"(i * {iw} + j) * {X});",
                     f"  *(vf *)(yr + ow * {X}) = (h0 >= h1 || w0 >= w1) ? (vf){{}} : (vf)("
                     f"s / {div});" if kind == "avg" else
                     f"  *(vf *)(yr + ow * {X}) = s / {div};", "}"]
        items = n * cbk * oh
        return [c.x(), c.y(), *c.lang.over_items(c, items, body)], items, flops
    return kernel


def plain_pool_ok(la: Layer, in_width: int, x: int) -> bool:
    """A max pool ``maxpool2d_plain_s2`` runs on plain NCHW: stride 2, dilation 1, a window
    of at most 3 wide, an input at least 4 vectors wide (narrower ones go mostly column by
    column: vgg16's 28-wide pool took 0.94 ms so, 0.27 ms with its layout conversions and
    the blocked kernel)."""
    a = la.attrs
    return (la.op == "maxpool2d" and tuple(a["stride"]) == (2, 2)
            and tuple(a["dilation"]) == (1, 1) and a["kernel"][1] <= 3 and in_width >= 4 * x)


def maxpool2d_plain_s2(c: Any) -> tuple[list[str], int, int]:
    """Stride-2 max pooling on plain NCHW (between sparse convs, which read and write it):
    items (n * channel, output row); X output columns per step, each window column an
    odd-lane shuffle of two loads; the first columns (whose windows touch the padding) and
    any the vectors cannot reach go one by one. NaNs propagate as in PyTorch."""
    X = c.lang.isa.floats
    n, ch, ih, iw = c.ins[0]
    _, _, oh, ow = c.out
    (kh, kw), (ph, pw) = c.a["kernel"], c.a["padding"]
    i = "int64_t"
    # Output columns [q_lo, q_end) go in whole vectors. Window column kx of the X outputs from
    # q reads input columns 2q - pw + kx + 2j (j < X): the odd lanes of two loads from
    # 2q - pw + kx - 1, which read nothing past the last column used; so a vector may start
    # at q when 2q - pw - 1 >= 0 and 2q - pw + kw + 2X - 3 < iw. The last vector overlaps
    # the one before it rather than leaving a tail (max is idempotent).
    q_lo = (pw + 2) // 2
    q_max = (iw - kw - 2 * X + 2 + pw) // 2
    q_end = min(ow, q_max + X) if q_max >= q_lo else q_lo
    if q_end - q_lo < X:
        q_end = q_lo
    odd = ", ".join(str(2 * j + 1) for j in range(X))
    rows = [f"  const {i} ih = oh * 2 - {ph} + ky;", f"  if (ih < 0 || ih >= {ih}) continue;"]
    body = [f"const {i} nc = it / {oh}, oh = it % {oh};",
            f"const float *xp = x + nc * {ih * iw};",
            f"float *yr = y + it * {ow};",
            f"for ({i} q0 = {q_lo}; q0 < {q_end}; q0 += {X}) {{",
            f"  const {i} q = q0 + {X} <= {q_end} ? q0 : {q_end - X};",
            "  vf m = (vf){} - __builtin_inff();",
            f"  for ({i} ky = 0; ky < {kh}; ++ky) {{",
            *["  " + ln for ln in rows],
            f"    const float *r = xp + ih * {iw} + 2 * q - {pw + 1};",
            *[f"    {{ const vf a = *(const vfu *)(r + {kx}), b = *(const vfu *)(r + {kx + X});"
              f" const vf v = __builtin_shufflevector(a, b, {odd});"
              " m = npas_vsel((v > m) | (v != v), v, m); }" for kx in range(kw)],
            "  }", "  *(vfu *)(yr + q) = m;", "}",
            f"for ({i} q = 0; q < {ow}; ++q) {{",
            f"  if (q == {q_lo}) q = {q_end};",
            f"  if (q >= {ow}) break;",
            "  float m = -__builtin_inff();",
            f"  for ({i} ky = 0; ky < {kh}; ++ky) {{",
            *["  " + ln for ln in rows],
            f"    for ({i} kx = 0; kx < {kw}; ++kx) {{",
            f"      const {i} iw = q * 2 - {pw} + kx;",
            f"      if (iw < 0 || iw >= {iw}) continue;",
            f"      const float v = xp[ih * {iw} + iw];",
            "      if (v > m || v != v) m = v;", "    }", "  }",
            "  yr[q] = m;", "}"]
    items = n * ch * oh
    return [c.x(), c.y(), *c.lang.over_items(c, items, body)], items, numel(c.out) * kh * kw


def mul_channel_blocked(c: Any) -> tuple[list[str], int, int]:
    X = c.lang.isa.floats
    n, cbk, h, w, _ = c.out
    i = "int64_t"
    body = [f"const vf sv = *(const vf *)(s + it * {X});",
            f"const float *xp = x + it * {h * w * X};",
            f"float *yp = y + it * {h * w * X};",
            f"for ({i} p = 0; p < {h * w * X}; p += {X}) {{",
            "  vf v = *(const vf *)(xp + p) * sv;", *["  " + e for e in _epi(c.la.epilogue, "v")],
            "  *(vf *)(yp + p) = v;", "}"]
    items = n * cbk
    return [c.x(0), c.x(1, "s"), c.y(), *c.lang.over_items(c, items, body)], items, numel(c.out)


# Layout conversions go through tiles of CONVERT_TILE positions so that the strided side of
# the transpose stays in L1 (one pass per lane over a whole plane thrashed it: 0.8 ms for
# resnet18's 64x112x112 stem output on the AVX-512 host).
CONVERT_TILE = 64


def to_blocked(c: Any) -> tuple[list[str], int, int]:
    """NCHW -> NCHW[x]c, pad lanes zero: items (n, channel block)."""
    X = c.lang.isa.floats
    n, ch, h, w = c.ins[0]
    cbk = c.out[1]
    hw, t = h * w, CONVERT_TILE
    i = "int64_t"
    body = [f"const {i} n = it / {cbk}, cb = it % {cbk};",
            f"float *yp = y + it * {hw * X};",
            f"for ({i} p0 = 0; p0 < {hw}; p0 += {t}) {{",
            f"  const {i} p1 = p0 + {t} < {hw} ? p0 + {t} : {hw};",
            f"  for ({i} l = 0; l < {X}; ++l) {{",
            f"    const {i} ch = cb * {X} + l;",
            "    if (ch < " + str(ch) + ") {",
            f"      const float *xp = x + (n * {ch} + ch) * {hw};",
            f"      for ({i} p = p0; p < p1; ++p) yp[p * {X} + l] = xp[p];",
            f"    }} else {{ for ({i} p = p0; p < p1; ++p) yp[p * {X} + l] = 0.0f; }}",
            "  }", "}"]
    items = n * cbk
    return [c.x(), c.y(), *c.lang.over_items(c, items, body)], items, 0


def to_plain(c: Any) -> tuple[list[str], int, int]:
    """NCHW[x]c -> NCHW, pad lanes dropped: items (n, channel block)."""
    X = c.lang.isa.floats
    n, ch, h, w = c.out
    cbk = c.ins[0][1]
    hw, t = h * w, CONVERT_TILE
    i = "int64_t"
    body = [f"const {i} n = it / {cbk}, cb = it % {cbk};",
            f"const float *xp = x + it * {hw * X};",
            f"const {i} lanes = {ch} - cb * {X} < {X} ? {ch} - cb * {X} : {X};",
            f"for ({i} p0 = 0; p0 < {hw}; p0 += {t}) {{",
            f"  const {i} p1 = p0 + {t} < {hw} ? p0 + {t} : {hw};",
            f"  for ({i} l = 0; l < lanes; ++l) {{",
            f"    float *yp = y + (n * {ch} + cb * {X} + l) * {hw};",
            f"    for ({i} p = p0; p < p1; ++p) yp[p] = xp[p * {X} + l];",
            "  }", "}"]
    items = n * cbk
    return [c.x(), c.y(), *c.lang.over_items(c, items, body)], items, 0


def linear_store(c: Any) -> list[str]:
    """The end of a vectorised linear item: bias + the four chains a0..a3, the epilogue, and
    the store of output block ``obk`` of batch row ``n`` (the last block may be partial)."""
    X = c.lang.isa.floats
    o = c.out[1]
    ob = -(-o // X)
    L = [f"vf v = *(const vf *)(b + obk * {X}) + ((a0 + a1) + (a2 + a3));",
         *_epi(c.la.epilogue, "v"),
         f"float *yr = y + n * {o} + obk * {X};"]
    if o % X == 0:
        return [*L, "*(vfu *)yr = v;"]
    return [*L, f"if (obk < {ob - 1}) *(vfu *)yr = v;",
            f"else for (int l = 0; l < {o % X}; ++l) yr[l] = v[l];"]


def linear_vec(c: Any) -> tuple[list[str], int, int]:
    """One (output block, batch row) per item: 4 accumulator chains over k."""
    X = c.lang.isa.floats
    n, k = c.ins[0]
    o = c.out[1]
    ob = -(-o // X)
    k4 = k // 4 * 4
    i = "int64_t"
    body = [f"const {i} obk = it / {n}, n = it % {n};",
            f"const float *wr = w + obk * {k * X};",
            f"const float *xr = x + n * {k};",
            "vf a0 = (vf){}, a1 = (vf){}, a2 = (vf){}, a3 = (vf){};",
            f"for ({i} j = 0; j < {k4}; j += 4) {{",
            f"  a0 += xr[j] * *(const vf *)(wr + j * {X});",
            f"  a1 += xr[j + 1] * *(const vf *)(wr + (j + 1) * {X});",
            f"  a2 += xr[j + 2] * *(const vf *)(wr + (j + 2) * {X});",
            f"  a3 += xr[j + 3] * *(const vf *)(wr + (j + 3) * {X});",
            "}",
            f"for ({i} j = {k4}; j < {k}; ++j) a0 += xr[j] * *(const vf *)(wr + j * {X});",
            *linear_store(c)]
    items = ob * n
    return [c.x(), c.y(), c.w(0, "w"), c.w(1, "b"), *c.lang.over_items(c, items, body)], \
        items, 2 * n * o * k


# ---- Winograd F(m, 3): 3x3 stride-1 convolutions ---------------------------------------------

WINOGRAD = {"winograd2": 2, "winograd4": 4, "winograd6": 6}  # algo -> output tile m (m x m)
# Interpolation points (infinity is the last one) and the input transform B^T they give
# (solved exactly once; the same matrices as ncnn/NNPACK up to row scaling).
_WINO_POINTS = {2: ("0", "1", "-1"), 4: ("0", "1", "-1", "2", "-2"),
                6: ("0", "1", "-1", "2", "-2", "1/2", "-1/2")}
_WINO_BT = {
    2: ("-1 0 1 0", "0 1 1 0", "0 -1 1 0", "0 -1 0 1"),
    4: ("4 0 -5 0 1 0", "0 -4 -4 1 1 0", "0 4 -4 -1 1 0", "0 -2 -1 2 1 0", "0 2 -1 -2 1 0",
        "0 4 0 -5 0 1"),
    6: ("-1 0 21/4 0 -21/4 0 1 0", "0 1 1 -17/4 -17/4 1 1 0", "0 -1 1 17/4 -17/4 -1 1 0",
        "0 1/2 1/4 -5/2 -5/4 2 1 0", "0 -1/2 1/4 5/2 -5/4 -2 1 0", "0 2 4 -5/2 -5 1/2 1 0",
        "0 -2 4 5/2 -5 -1/2 1 0", "0 -1 0 21/4 0 -21/4 0 1"),
}
# Scratch (per thread) the transform buffers of one work item may take: V and M of a tile
# block stay in L2 (1 MiB per core on the AVX-512 host; phones' big cores have 512 KiB-1 MiB).
WINOGRAD_SCRATCH_BUDGET = 384 << 10


@functools.cache
def winograd_matrices(m: int) -> tuple[tuple[tuple[Fraction, ...], ...], ...]:
    """(A^T [m][a], G [a][3], B^T [a][a]) of F(m, 3), a = m + 2, exact: y = A^T[(G g)(B^T d)]
    is the correlation of d (a samples) with g (3 taps)."""
    pts = [Fraction(p) for p in _WINO_POINTS[m]]
    a = m + 2
    at = [[p ** i for p in pts] + [Fraction(int(i == m - 1))] for i in range(m)]
    g = []
    for p in pts:
        f = Fraction(1)
        for q in pts:
            if q != p:
                f *= p - q
        g.append([p ** k / f for k in range(3)])
    g.append([Fraction(0), Fraction(0), Fraction(1)])
    bt = [[Fraction(v) for v in row.split()] for row in _WINO_BT[m]]
    assert len(at[0]) == len(g) == len(bt) == a
    return tuple(map(tuple, at)), tuple(map(tuple, g)), tuple(map(tuple, bt))


def winograd_ok(la: Layer) -> bool:
    """Whether F(m, 3) computes ``la``: a dense 3x3 conv, stride 1, dilation 1, groups 1."""
    return (la.op == "conv2d" and tuple(la.params["weight"].shape[2:]) == (3, 3)
            and tuple(la.attrs["stride"]) == (1, 1) and tuple(la.attrs["dilation"]) == (1, 1)
            and la.attrs["groups"] == 1)


def conv_algo(la: Layer, out_shape: tuple[int, ...], in_shape: tuple[int, ...],
              isa: VectorIsa) -> str:
    """The algorithm ``la``'s kernel uses: its tuning's ``algo`` (the cost model's default when
    unset); Winograd needs a blocked input, so a plain one (first layers) falls back to direct."""
    algo = {**default_tuning(la, out_shape, isa), **la.tuning}.get("algo", "direct")
    if algo not in WINOGRAD or len(in_shape) != 5 or not winograd_ok(la):
        return "direct"
    return algo


def _frac_c(v: Fraction) -> str:
    return f"{float(v)!r}f" if v.denominator != 1 else f"{v.numerator}.0f"


def _lincomb(coeffs: Sequence[Fraction], terms: Sequence[str]) -> str:
    """C for sum(coeffs[k] * terms[k]) with zeros dropped and +-1 as add/sub."""
    out = ""
    for cf, t in zip(coeffs, terms, strict=True):
        if cf == 0:
            continue
        mag = abs(cf)
        term = t if mag == 1 else f"{t} * {_frac_c(mag)}"
        if not out:
            out = term if cf > 0 else (f"-{t}" if mag == 1 else f"{t} * {_frac_c(cf)}")
        else:
            out += f" {'+' if cf > 0 else '-'} {term}"
    return out or "(vf){}"


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


def winograd_input_kernel(isa: VectorIsa, m: int) -> tuple[str, str]:
    """B^T d B of one tile and one input channel block: d is the a x a patch at x + xo (row
    stride rs), zero outside rows [r0, r1) x columns [c0, c1); point p goes to v + p * vs."""
    X, a = isa.floats, m + 2
    _, _, bt = winograd_matrices(m)
    name = f"winograd{m}_input_nchw{X}c__{isa.name}"
    i = "int64_t"
    L = [f"/* {name}: F({m},3) input transform of one {a}x{a} tile, {X} channels. */",
         f"{AI} void {name}(const float *restrict x, {i} xo, {i} rs, {i} r0, {i} r1, {i} c0, "
         f"{i} c1, float *restrict v, {i} vs) {{",
         f"  vf d[{a}][{a}], t[{a}][{a}];",
         f"  for (int r = 0; r < {a}; ++r)",
         f"    for (int c = 0; c < {a}; ++c)",
         "      d[r][c] = (r >= r0 && r < r1 && c >= c0 && c < c1) ? "
         f"*(const vf *)(x + (xo + r * rs + c * {X})) : (vf){{}};",
         f"  for (int c = 0; c < {a}; ++c) {{"]
    for r in range(a):
        L.append(f"    t[{r}][c] = {_lincomb(bt[r], [f'd[{k}][c]' for k in range(a)])};")
    L += ["  }", f"  for (int r = 0; r < {a}; ++r) {{"]
    for c in range(a):
        L.append(f"    *(vf *)(v + (r * {a} + {c}) * vs) = "
                 f"{_lincomb(bt[c], [f't[r][{k}]' for k in range(a)])};")
    L += ["  }", "}"]
    return name, "\n".join(L) + "\n"


def winograd_output_kernel(isa: VectorIsa, m: int, epilogue: tuple[str, ...]) -> tuple[str, str]:
    """A^T M A + bias, then the epilogue, of one tile and one output channel block: point p of
    M at mm + p * ms; stores rows [0, rows) x columns [0, cols) of the m x m tile at y (row
    stride rs)."""
    X, a = isa.floats, m + 2
    at, _, _ = winograd_matrices(m)
    name = (f"winograd{m}_output_nchw{X}c__{isa.name}" + "".join(f"_{e}" for e in epilogue))
    i = "int64_t"
    L = [f"/* {name}: F({m},3) output transform of one tile, {X} channels, + bias"
         f"{''.join(' + ' + e for e in epilogue)}. */",
         f"{AI} void {name}(const float *restrict mm, {i} ms, const float *restrict b, "
         f"float *restrict y, {_skip_param(epilogue)}{i} rs, {i} rows, {i} cols) {{",
         "  const vf bv = *(const vf *)b;",
         f"  vf t[{m}][{a}];",
         f"  for (int c = 0; c < {a}; ++c) {{"]
    for r in range(m):
        L.append(f"    t[{r}][c] = " + _lincomb(
            at[r], [f"*(const vf *)(mm + ({k} * {a} + c) * ms)" for k in range(a)]) + ";")
    L += ["  }", f"  for (int r = 0; r < {m}; ++r) {{"]
    for c in range(m):
        # the residual is only read inside the image (a tile may overhang it)
        L += [f"    if (r < rows && {c} < cols) {{",
              f"      vf o = bv + ({_lincomb(at[c], [f't[r][{k}]' for k in range(a)])});",
              *[f"      {ln}" for ln in _epi(epilogue, "o", f"s + r * rs + {c * X}")],
              f"      *(vf *)(y + r * rs + {c * X}) = o; }}"]
    L += ["  }", "}"]
    return name, "\n".join(L) + "\n"


def winograd_gemm_kernel(isa: VectorIsa, oc_tile: int, t_tile: int) -> tuple[str, str]:
    """One transform point's batched GEMM, an ``oc_tile`` (oc blocks) x ``t_tile`` (tiles)
    accumulator tile: M[o][t] = sum over input channels of V[t][ic] (broadcast) * U[ic][o]
    (vector over x output channels). v: V at (first channel block, first tile), cs floats
    between channel blocks, X floats between tiles; w: U at (first oc block, ic 0), wb floats
    between oc blocks; mo: M at (first oc block, first tile), ms floats between oc blocks."""
    X = isa.floats
    name = f"winograd_gemm_nchw{X}c__{isa.name}_{oc_tile}x{t_tile}t"
    i = "int64_t"
    acc = [[f"a{o}_{j}" for j in range(t_tile)] for o in range(oc_tile)]
    L = [f"/* {name}: {oc_tile} oc block(s) x {t_tile} tile(s) of one Winograd point. */",
         f"{AI} void {name}(const float *restrict v, const float *restrict w, {i} wb, "
         f"float *restrict mo, {i} ms, {i} cb, {i} cs) {{"]
    for o in range(oc_tile):
        L.append(f"  vf {', '.join(f'{a_} = (vf){{}}' for a_ in acc[o])};")
    L += [f"  for ({i} c = 0; c < cb; ++c) {{",
          "    const float *vp = v + c * cs;",
          f"    const float *wp = w + c * {X * X};",
          f"    for (int l = 0; l < {X}; ++l) {{"]
    L += _lane_fma(" " * 6, X, acc, lambda j: f"vp[{j * X} + l]")
    L += ["    }", "  }"]
    for o in range(oc_tile):
        for j in range(t_tile):
            L.append(f"  *(vf *)(mo + {o} * ms + {j * X}) = {acc[o][j]};")
    L.append("}")
    return name, "\n".join(L) + "\n"


def winograd_blocking(m: int, out_shape: tuple[int, ...], in_shape: tuple[int, ...],
                      oc_tile: int, t_tile: int) -> tuple[int, int, int]:
    """(tiles per work item, oc groups, scratch floats): tile blocks of a multiple of
    ``t_tile`` tiles whose V and M fit the scratch budget, then the output channels split into
    groups until there are a few work items for the threads."""
    n, ocb, oh, ow, X = out_shape
    icb = in_shape[1]
    a2 = (m + 2) ** 2
    tiles = -(-oh // m) * -(-ow // m)
    groups = -(-tiles // t_tile)
    per_group = a2 * (icb + ocb) * X * 4 * t_tile
    tb = t_tile * max(1, min(groups, WINOGRAD_SCRATCH_BUDGET // per_group))
    octs, og = ocb // oc_tile, 1
    while n * -(-tiles // tb) * og < 4 and octs % (og * 2) == 0:
        og *= 2
    return tb, og, a2 * (icb + ocb // og) * X * tb


def conv2d_winograd(c: Any, m: int, oc_tile: int, t_tile: int) -> tuple[list[str], int, int]:
    """Step body of an F(m, 3) conv: items (n, tile block, oc group). Per item: the input
    transform of the block's tiles into V (scratch, [a*a][ic/x][tiles][x]), one batched GEMM per
    transform point into M (scratch, [a*a][oc/x][tiles][x]), then the output transform with
    bias and epilogue straight into y."""
    isa: VectorIsa = c.lang.isa
    X = isa.floats
    la = c.la
    n, icb, ih, iw, _ = c.ins[0]
    _, ocb, oh, ow, _ = c.out
    oc, ic_real = la.params["weight"].shape[:2]
    pt, _, pl, _ = la.attrs["padding"]
    a = m + 2
    a2 = a * a
    th, tw = -(-oh // m), -(-ow // m)
    tiles = th * tw
    tb, og, scratch = winograd_blocking(m, c.out, c.ins[0], oc_tile, t_tile)
    ocg = ocb // og
    blocks = -(-tiles // tb)
    c.scratch_bytes = scratch * 4
    names = []
    for nm, src in (winograd_input_kernel(isa, m), winograd_gemm_kernel(isa, oc_tile, t_tile),
                    winograd_output_kernel(isa, m, la.epilogue)):
        c.lang.helpers.setdefault(nm, src)
        names.append(nm)
    fin, fgemm, fout = names
    i = "int64_t"
    vs = icb * tb * X  # floats between V's transform points
    ms = ocg * tb * X  # and M's
    rs = iw * X
    body = [f"const {i} n = it / {blocks * og}, t0 = (it / {og}) % {blocks} * {tb}, "
            f"g = it % {og};",
            f"const {i} nt = {tiles} - t0 < {tb} ? {tiles} - t0 : {tb};",
            f"float *v = (float *)scratch, *mm = v + {a2 * vs};",
            f"for ({i} cb = 0; cb < {icb}; ++cb) {{",
            f"  const {i} xo = (n * {icb} + cb) * {ih * iw * X};",
            f"  float *vc = v + cb * {tb * X};",
            f"  for ({i} t = 0; t < nt; ++t) {{",
            f"    const {i} r = (t0 + t) / {tw} * {m} - {pt}, "
            f"col = (t0 + t) % {tw} * {m} - {pl};",
            f"    const {i} o = xo + r * {rs} + col * {X};",
            f"    if (r >= 0 && r + {a} <= {ih} && col >= 0 && col + {a} <= {iw})",
            f"      {fin}(x, o, {rs}, 0, {a}, 0, {a}, vc + t * {X}, {vs});",
            "    else",
            f"      {fin}(x, o, {rs}, r < 0 ? -r : 0, {ih} - r, col < 0 ? -col : 0, "
            f"{iw} - col, vc + t * {X}, {vs});",
            "  }",
            # GEMM tiles past nt read these slots: keep them finite
            f"  for ({i} t = nt; t < (nt + {t_tile - 1}) / {t_tile} * {t_tile}; ++t)",
            f"    for ({i} p = 0; p < {a2}; ++p) *(vf *)(vc + t * {X} + p * {vs}) = (vf){{}};",
            "}",
            f"for ({i} p = 0; p < {a2}; ++p)",
            f"  for ({i} ob = 0; ob < {ocg}; ob += {oc_tile})",
            f"    for ({i} t = 0; t < nt; t += {t_tile})",
            f"      {fgemm}(v + p * {vs} + t * {X}, w + ((p * {ocb} + g * {ocg} + ob) * "
            f"{icb * X}) * {X}, {icb * X * X}, mm + p * {ms} + (ob * {tb} + t) * {X}, {tb * X}, "
            f"{icb}, {tb * X});",
            f"for ({i} ob = 0; ob < {ocg}; ++ob) {{",
            f"  const {i} oc = g * {ocg} + ob;",
            f"  float *yc = y + (n * {ocb} + oc) * {oh * ow * X};",
            f"  for ({i} t = 0; t < nt; ++t) {{",
            f"    const {i} r = (t0 + t) / {tw} * {m}, col = (t0 + t) % {tw} * {m};",
            f"    {fout}(mm + (ob * {tb} + t) * {X}, {ms}, b + oc * {X}, "
            f"yc + (r * {ow} + col) * {X}, "
            + (f"s + (yc - y) + (r * {ow} + col) * {X}, " if "add" in la.epilogue else "")
            + f"{ow * X}, {oh} - r, {ow} - col);",
            "  }",
            "}"]
    items = n * blocks * og
    L = [c.x(), *c.skip(), c.y(), c.w(0, "w"), c.w(1, "b"), *c.lang.over_items(c, items, body)]
    return L, items, 2 * n * oc * oh * ow * ic_real * 9
