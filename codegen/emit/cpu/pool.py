"""Pooling on the CPU: max/avg/adaptive-avg on blocked tensors, one vector per output column,
and the stride-2 max pool on plain NCHW that sits between sparse convs."""

from __future__ import annotations

from collections.abc import Callable

from codegen.emit.cpu.prelude import half, narrow, widen
from codegen.emit.cstyle import Ctx, Rendered
from codegen.lr import numel


def pool_blocked(kind: str) -> Callable[[Ctx], Rendered]:
    """max/avg/adaptive-avg pooling on a blocked tensor: items (n, channel block, output row),
    one vector per output column. fp16: max pools compare in fp16 (exact); the averages sum
    in float32 (``vw``: a global pool sums up to a whole plane, where fp16's 11 bits would
    drop the small terms) and round once, on the store."""
    def kernel(c: Ctx) -> tuple[list[str], int, int]:
        X, E = c.lang.isa.floats, c.lang.isa.elem
        wide = half(c.lang.isa)
        vs = "vw" if wide else "vf"
        n, cbk, ih, iw, _ = c.ins[0]
        _, _, oh, ow, _ = c.out
        a = c.a
        i = "int64_t"
        body = [f"const {i} nc = it / {oh}, oh = it % {oh};",
                f"const {E} *xp = x + nc * {ih * iw * X};",
                f"{E} *yr = y + (nc * {oh} + oh) * {ow * X};",
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
            ld = f"*(const vf *)(xp + (i * {iw} + j) * {X})"
            mean = narrow(f"s / {div}") if wide else f"s / {div}"
            body += [f"  {vs} s = ({vs}){{}};",
                     f"  for ({i} i = h0; i < h1; ++i)",
                     f"    for ({i} j = w0; j < w1; ++j) s += {widen(ld) if wide else ld};",
                     f"  *(vf *)(yr + ow * {X}) = (h0 >= h1 || w0 >= w1) ? (vf){{}} : (vf)("
                     f"{mean});" if kind == "avg" else
                     f"  *(vf *)(yr + ow * {X}) = {mean};", "}"]
        items = n * cbk * oh
        return [c.x(), c.y(), *c.lang.over_items(c, items, body)], items, flops
    return kernel


def maxpool2d_plain_s2(c: Ctx) -> tuple[list[str], int, int]:
    """Stride-2 max pooling on plain NCHW (between sparse convs, which read and write it):
    items (n * channel, output row); X output columns per step, each window column an
    odd-lane shuffle of two loads; the first columns (whose windows touch the padding) and
    any the vectors cannot reach go one by one. NaNs propagate as in PyTorch."""
    X, E = c.lang.isa.floats, c.lang.isa.elem
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
            f"const {E} *xp = x + nc * {ih * iw};",
            f"{E} *yr = y + it * {ow};",
            f"for ({i} q0 = {q_lo}; q0 < {q_end}; q0 += {X}) {{",
            f"  const {i} q = q0 + {X} <= {q_end} ? q0 : {q_end - X};",
            "  vf m = (vf){} - __builtin_inff();",
            f"  for ({i} ky = 0; ky < {kh}; ++ky) {{",
            *["  " + ln for ln in rows],
            f"    const {E} *r = xp + ih * {iw} + 2 * q - {pw + 1};",
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
