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
- ``maxpool2d/avgpool2d/adaptive_avgpool2d_nchw16c__{isa}``, ``mul_channel_nchw16c__{isa}``.
- ``linear__{isa}_4k``: y[n, o-block] as 4 chains of broadcast x times packed ``[o/x][k][x]``.
- ``to_nchw16c`` / ``to_nchw``: the layout conversions at the graph's edges.

Every layer's step loops over work items (n, oc-tile, output row); inside, the output row is
cut into interior tiles of ``w`` columns (no padding there, constant tap ranges) plus 1-column
edge calls with the tap range worked out per column. Tuning parameters (``Layer.tuning``):
``w_tile`` and ``oc_tile``; ``tuning_space`` lists the legal values, ``default_tuning`` picks
with a register-file cost model.
"""

from __future__ import annotations

from collections.abc import Callable
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
    """Legal values of each tuning parameter of ``la``'s vectorised kernel (empty: none)."""
    if la.op != "conv2d" or len(out_shape) != 5:
        return {}
    ocb = out_shape[1]
    dw = conv_kind(la, isa.floats) == "depthwise"
    ocs = (1,) if dw or la.attrs["groups"] > 1 else tuple(t for t in (1, 2, 4) if ocb % t == 0
                                and _max_w(isa, t) * t <= isa.registers - t - 1)
    return {"oc_tile": ocs, "w_tile": tuple(range(1, _max_w(isa, 1) + 1))}


def default_tuning(la: Layer, out_shape: tuple[int, ...], isa: VectorIsa) -> dict[str, Any]:
    """The cost model: the largest oc tile (fewer broadcasts per FMA) that leaves enough work
    items for a few threads, then the column tile with the least work per output column
    (tiles cost their width plus a fixed overhead; the remainder is a tile too)."""
    space = tuning_space(la, out_shape, isa)
    if not space:
        return {}
    n, ocb, oh, ow, _ = out_shape
    oc_tile = max(t for t in space["oc_tile"] if t <= 2 and (t == 1 or n * ocb // t * oh >= 32))
    best, best_cost = 1, float("inf")
    for w in range(1, _max_w(isa, oc_tile) + 1):
        cost = (ow // w) * (w + 3) + (ow % w + 3 if ow % w else 0)
        if cost <= best_cost:
            best, best_cost = w, cost
    return {"oc_tile": oc_tile, "w_tile": best}


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

def _epi(epilogue: tuple[str, ...], var: str) -> list[str]:
    return [f"{var} = npas_v_{e}({var});" for e in epilogue]


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
         f"{i} wb, const float *restrict b, float *restrict y, {i} ys, {i} cb, {i} cs, "
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
        for o in range(oc_tile):
            L.append(f"          const vf w{o} = *(const vf *)(wp + {o} * wb + l * {X});")
        for j in range(w_tile):
            L.append(f"          const float x{j} = xp[{j * sw * cs_col} + l];")
            for o in range(oc_tile):
                L.append(f"          {acc[o][j]} += x{j} * w{o};")
        L += ["        }", "      }"]
    for o in range(oc_tile):
        for j in range(w_tile):
            L += ["  " + ln for ln in _epi(epilogue, acc[o][j])]
            L.append(f"  *(vf *)(y + {o} * ys + {j * X}) = {acc[o][j]};")
    L.append("}")
    return name, "\n".join(L) + "\n"


def conv2d_blocked(c: Any) -> tuple[list[str], int, int]:
    """Step body of a vectorised conv: items (n, oc tile, output row)."""
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

    def call(t: str, ow_expr: str, kx: str) -> str:
        return (f"{names[t]}(x, xb + ih0 * {rs} + ({ow_expr} * {sw} - {pl}) * {col}, "
                f"wp, {wblk}, bp, yr + {ow_expr} * {X}, {ys}, {cb}, {cs}, {rs}, ky0, ky1, {kx});")

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
    L = [c.x(), c.y(), c.w(0, "w"), c.w(1, "b"), *c.lang.over_items(c, items, body)]
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


def to_blocked(c: Any) -> tuple[list[str], int, int]:
    """NCHW -> NCHW[x]c, pad lanes zero: items (n, channel block)."""
    X = c.lang.isa.floats
    n, ch, h, w = c.ins[0]
    cbk = c.out[1]
    i = "int64_t"
    body = [f"const {i} n = it / {cbk}, cb = it % {cbk};",
            f"float *yp = y + it * {h * w * X};",
            f"for ({i} l = 0; l < {X}; ++l) {{",
            f"  const {i} ch = cb * {X} + l;",
            f"  if (ch < {ch}) {{",
            f"    const float *xp = x + (n * {ch} + ch) * {h * w};",
            f"    for ({i} p = 0; p < {h * w}; ++p) yp[p * {X} + l] = xp[p];",
            f"  }} else {{ for ({i} p = 0; p < {h * w}; ++p) yp[p * {X} + l] = 0.0f; }}",
            "}"]
    items = n * cbk
    return [c.x(), c.y(), *c.lang.over_items(c, items, body)], items, 0


def to_plain(c: Any) -> tuple[list[str], int, int]:
    """NCHW[x]c -> NCHW, pad lanes dropped: items (n, channel)."""
    X = c.lang.isa.floats
    n, ch, h, w = c.out
    cbk = c.ins[0][1]
    i = "int64_t"
    body = [f"const {i} n = it / {ch}, ch = it % {ch};",
            f"const float *xp = x + ((n * {cbk} + ch / {X}) * {h * w}) * {X} + ch % {X};",
            f"float *yp = y + it * {h * w};",
            f"for ({i} p = 0; p < {h * w}; ++p) yp[p] = xp[p * {X}];"]
    items = n * ch
    return [c.x(), c.y(), *c.lang.over_items(c, items, body)], items, 0


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
            f"vf v = *(const vf *)(b + obk * {X}) + ((a0 + a1) + (a2 + a3));",
            *_epi(c.la.epilogue, "v"),
            f"float *yr = y + n * {o} + obk * {X};"]
    if o % X == 0:
        body.append("*(vfu *)yr = v;")
    else:
        body += [f"if (obk < {ob - 1}) *(vfu *)yr = v;",
                 f"else for (int l = 0; l < {o % X}; ++l) yr[l] = v[l];"]
    items = ob * n
    return [c.x(), c.y(), c.w(0, "w"), c.w(1, "b"), *c.lang.over_items(c, items, body)], \
        items, 2 * n * o * k
