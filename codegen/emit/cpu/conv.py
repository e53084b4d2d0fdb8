"""Direct convolution on blocked activations: the register-blocked micro-kernel
(``conv2d_{kh}x{kw}s{s}[d{d}]_{nchw|nchw16c}__{isa}_{oc}x{w}w[_{epilogue}]``, ``dwconv2d_...``)
and the step that tiles an output row with it; Winograd layers go to ``winograd.py``."""

from __future__ import annotations

from codegen.cost import WINOGRAD, conv_algo, conv_kind, default_tuning
from codegen.emit.cpu.prelude import AI, by_lane_fma, epi, lane_fma, ptag, skip_param
from codegen.emit.cpu.winograd import conv2d_winograd
from codegen.emit.cstyle import Ctx
from codegen.isa import VectorIsa


def conv_microkernel(isa: VectorIsa, kh: int, kw: int, sh: int, sw: int, dh: int, dw: int,
                     lanes: int, depthwise: bool, oc_tile: int, w_tile: int,
                     epilogue: tuple[str, ...]) -> tuple[str, str]:
    """(name, C source) of one conv micro-kernel: an ``oc_tile`` x ``w_tile`` accumulator tile.

    Arguments: x, the input base, and xo, the (possibly negative) offset of the tile's top-left
    tap (row oh*sh - pt, column ow*sw - pl) in floats; w/b: this tile's packed weights and bias;
    y: the output at (n, first oc block, oh, ow); cb: input channel blocks (plain: channels);
    cs/rs: floats between input channel blocks / rows; wb: floats between oc blocks' weights;
    ys: floats between oc blocks of y; [ky0, ky1) x [kx0, kx1): the taps that see no padding."""
    X, E = isa.floats, isa.elem
    cs_col = X if lanes != 1 or depthwise else 1  # floats between input columns
    fam = "dwconv2d" if depthwise else "conv2d"
    s = f"s{sh}" if sh == sw else f"s{sh}x{sw}"
    d = "" if dh == dw == 1 else (f"d{dh}" if dh == dw else f"d{dh}x{dw}")
    lay = "nchw" if lanes == 1 and not depthwise else f"nchw{X}c"
    name = (f"{fam}_{kh}x{kw}{s}{d}_{lay}{ptag(isa)}__{isa.name}_{oc_tile}x{w_tile}w"
            + "".join(f"_{e}" for e in epilogue))
    i = "int64_t"
    acc = [[f"a{o}_{j}" for j in range(w_tile)] for o in range(oc_tile)]
    L = [f"/* {name}: {oc_tile} oc block(s) x {w_tile} output column(s) of a {kh}x{kw} "
         f"{'depthwise ' if depthwise else ''}conv, stride {sh}x{sw}, dilation {dh}x{dw}, "
         f"{lay} input. */",
         f"{AI} void {name}(const {E} *restrict x, {i} xo, const {E} *restrict w, "
         f"{i} wb, const {E} *restrict b, {E} *restrict y, {skip_param(epilogue, E)}"
         f"{i} ys, {i} cb, {i} cs, "
         f"{i} rs, {i} ky0, {i} ky1, {i} kx0, {i} kx1) {{"]
    for o in range(oc_tile):
        L.append(f"  const vf b{o} = *(const vf *)(b + {o * X});")
        L.append(f"  vf {', '.join(f'{a} = b{o}' for a in acc[o])};")
    if depthwise:
        L += ["  (void)cb; (void)cs; (void)wb;",
              f"  for ({i} ky = ky0; ky < ky1; ++ky)",
              f"    for ({i} kx = kx0; kx < kx1; ++kx) {{",
              f"      const {E} *xp = x + (xo + ky * {dh} * rs + kx * {dw * X});",
              f"      const vf w0 = *(const vf *)(w + (ky * {kw} + kx) * {X});"]
        for j in range(w_tile):
            L.append(f"      {acc[0][j]} += *(const vf *)(xp + {j * sw * X}) * w0;")
        L.append("    }")
    else:
        L += [f"  for ({i} c = 0; c < cb; ++c)",
              f"    for ({i} ky = ky0; ky < ky1; ++ky)",
              f"      for ({i} kx = kx0; kx < kx1; ++kx) {{",
              f"        const {E} *xp = x + (xo + c * cs + ky * {dh} * rs + kx * "
              f"{dw * cs_col});",
              f"        const {E} *wp = w + ((c * {kh} + ky) * {kw} + kx) * {lanes * X};"]
        if isa.by_lane and lanes == X:
            L += by_lane_fma(" " * 8, X, acc, lambda j: f"xp + {j * sw * cs_col}")
        elif isa.by_lane and lanes == 1:
            L += _plain_by_lane_fma(" " * 8, X, acc, sw * cs_col, E)
        else:
            L.append(f"        for (int l = 0; l < {lanes}; ++l) {{")
            L += lane_fma(" " * 10, X, acc, lambda j: f"xp[{j * sw * cs_col} + l]", E)
            L.append("        }")
        L.append("      }")
    for o in range(oc_tile):
        for j in range(w_tile):
            L += ["  " + ln for ln in epi(epilogue, acc[o][j], f"s + {o} * ys + {j * X}")]
            L.append(f"  *(vf *)(y + {o} * ys + {j * X}) = {acc[o][j]};")
    L.append("}")
    return name, "\n".join(L) + "\n"


def _plain_by_lane_fma(indent: str, X: int, acc: list[list[str]], stride: int,
                       elem: str = "float") -> list[str]:
    """One input channel of a plain (NCHW) input on an ISA that multiplies by lanes: the
    columns' inputs lie ``stride`` floats apart in one row, so each vector load that lies wholly
    inside the tile's span feeds the columns it holds (X / stride of them) by lane; the columns
    past the last whole vector load their scalar. Never reads past the last column's input."""
    w_tile = len(acc[0])
    L = [f"{indent}const vf w{o} = *(const vf *)(wp + {o} * wb);" for o in range(len(acc))]
    whole = ((w_tile - 1) * stride + 1) // X  # vectors inside [0, last column's input]
    for q in range(whole):
        cols = [j for j in range(w_tile) if q * X <= j * stride < (q + 1) * X]
        if cols:
            L.append(f"{indent}const vf x{q} = *(const vfu *)(xp + {q * X});")
            L += [f"{indent}{acc[o][j]} += w{o} * x{q}[{j * stride - q * X}];"
                  for j in cols for o in range(len(acc))]
    for j in range(w_tile):
        if j * stride >= whole * X:
            L.append(f"{indent}const {elem} s{j} = xp[{j * stride}];")
            L += [f"{indent}{acc[o][j]} += s{j} * w{o};" for o in range(len(acc))]
    return L


def conv2d_blocked(c: Ctx) -> tuple[list[str], int, int]:
    """Step body of a vectorised conv: items (n, oc tile, output row); Winograd layers go to
    ``conv2d_winograd``."""
    isa: VectorIsa = c.lang.isa
    X, E = isa.floats, isa.elem
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
            f"const {E} *wp = w + ocb * {wblk};",
            f"const {E} *bp = b + ocb * {X};",
            f"{E} *yr = y + ((n * {ocb} + ocb) * {oh} + oh) * {ow * X};"]
    if skip:
        body.append(f"const {E} *sr = s + (yr - y);")
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
