"""The C-style templates that move data between layouts or shapes: permute, channel slices,
resizing (nearest, bilinear), transposed convolution and element-wise ops with broadcasting.
Split from ``cstyle.py`` (same contract: a template takes a ``Ctx`` and returns what it
renders); ``cstyle.KERNELS`` lists them with the others.
"""

from __future__ import annotations

from codegen.emit.cstyle import Ctx, Rendered
from codegen.lr import numel


def permute(c: Ctx) -> Rendered:
    """One output element (CPU: a run of the last dim per item), read at its source index."""
    src, perm = c.ins[0], c.a["perm"]
    strides = [numel(src[k + 1:]) for k in range(len(src))]
    dims = [(f"d{k}", e) for k, e in enumerate(c.out)]
    read = " + ".join(f"d{k} * {strides[p]}" for k, p in enumerate(perm))
    write = " + ".join(f"d{k} * {numel(c.out[k + 1:])}" for k in range(len(c.out)))
    lines, items = c.lang.nest(c, dims, 1, [f"y[{write}] = x[{read}];"])
    return [c.x(), c.y(), *lines], items, 0


def _src_scale(c: Ctx, k: int) -> float:
    """Source pixels per output pixel along H (k=0) or W (k=1), as torch maps them."""
    i, o = c.ins[0][2 + k], c.out[2 + k]
    if c.a["align_corners"]:
        return (i - 1) / (o - 1) if o > 1 else 0.0
    sf = c.a["scale_factor"]
    return 1.0 / sf[k] if sf else i / o


def interpolate(c: Ctx) -> Rendered:
    """One output element: nearest (src = floor(dst * scale)), or bilinear from its four
    neighbours (src = (dst + 0.5) * scale - 0.5 clamped at 0, or dst * scale with
    align_corners), as torch computes them in float."""
    n, ch, ih, iw = c.ins[0]
    _, _, oh, ow = c.out
    sh, sw = _src_scale(c, 0), _src_scale(c, 1)
    i, f = c.i, "float"
    q, s = c.lang.global_q, c.lang.scalar
    body = [f"{q}const {s} *xp = x + nc * {ih * iw};"]
    if c.a["mode"] == "nearest":
        body += [f"{i} hs = ({i})(({f})oh * {sh!r}f), ws = ({i})(({f})ow * {sw!r}f);",
                 f"if (hs > {ih - 1}) hs = {ih - 1};", f"if (ws > {iw - 1}) ws = {iw - 1};",
                 f"{f} v = ({f})xp[hs * {iw} + ws];"]
        flops = 0
    else:
        off = "" if c.a["align_corners"] else " + 0.5f"
        sub = "" if c.a["align_corners"] else " - 0.5f"
        body += [f"{f} hf = (({f})oh{off}) * {sh!r}f{sub}, wf = (({f})ow{off}) * {sw!r}f{sub};",
                 "if (hf < 0.0f) hf = 0.0f;", "if (wf < 0.0f) wf = 0.0f;",
                 f"const {i} h0 = ({i})hf, w0 = ({i})wf;",
                 f"const {i} h1 = h0 < {ih - 1} ? h0 + 1 : h0, w1 = w0 < {iw - 1} ? w0 + 1 : w0;",
                 f"const {f} lh = hf - ({f})h0, lw = wf - ({f})w0;",
                 f"{f} v = (1.0f - lh) * ((1.0f - lw) * ({f})xp[h0 * {iw} + w0] + "
                 f"lw * ({f})xp[h0 * {iw} + w1])",
                 f"  + lh * ((1.0f - lw) * ({f})xp[h1 * {iw} + w0] + "
                 f"lw * ({f})xp[h1 * {iw} + w1]);"]
        flops = 11 * numel(c.out)
    body += [*c.epilogue("v"), f"y[(nc * {oh} + oh) * {ow} + ow] = v;"]
    lines, items = c.lang.nest(c, [("nc", n * ch), ("oh", oh), ("ow", ow)], 2, body)
    return [c.x(), c.y(), *lines], items, flops


def conv_transpose2d(c: Ctx) -> Rendered:
    """One output element gathered from the inputs that reach it: oh = ih * s - p + kh * d,
    so ih = (oh + p - kh * d) / s where that divides (groups 1; weight [ic][oc][kh][kw])."""
    n, ic, ih, iw = c.ins[0]
    _, oc, oh, ow = c.out
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = (c.a["kernel"], c.a["stride"], c.a["padding"],
                                             c.a["dilation"])
    i, f = c.i, "float"
    body = [f"{f} acc = ({f})b[oc];",
            f"for ({i} c = 0; c < {ic}; ++c) {{",
            f"  for ({i} ky = 0; ky < {kh}; ++ky) {{",
            f"    const {i} th = oh + {ph} - ky * {dh};",
            f"    if (th < 0 || th % {sh} != 0 || th / {sh} >= {ih}) continue;",
            f"    for ({i} kx = 0; kx < {kw}; ++kx) {{",
            f"      const {i} tw = ow + {pw} - kx * {dw};",
            f"      if (tw < 0 || tw % {sw} != 0 || tw / {sw} >= {iw}) continue;",
            f"      acc += ({f})x[((n * {ic} + c) * {ih} + th / {sh}) * {iw} + tw / {sw}] * "
            f"({f})w[((c * {oc} + oc) * {kh} + ky) * {kw} + kx];",
            "    }", "  }", "}",
            f"const {i} yi = ((n * {oc} + oc) * {oh} + oh) * {ow} + ow;",
            *c.epilogue("acc", "yi"), "y[yi] = acc;"]
    lines, items = c.lang.nest(c, [("n", n), ("oc", oc), ("oh", oh), ("ow", ow)], 2, body)
    return [c.x(), c.y(), c.w(0, "w"), c.w(1, "b"), *lines], items, \
        2 * n * ic * kh * kw * numel(c.ins[0][2:]) * oc


def binary(c: Ctx) -> Rendered:
    """One output element from both inputs, a broadcast dim read with stride 0."""
    out = c.out
    sym = {"add": "+", "sub": "-", "mul": "*"}[c.a["fn"]]

    def index(shape: tuple[int, ...]) -> str:
        terms = [f"d{k} * {numel(shape[k + 1:])}" for k in range(len(out))
                 if not (shape[k] == 1 and out[k] != 1)]
        return " + ".join(terms) or "0"

    body = [f"y[{index(out)}] = (float)x0[{index(c.ins[0])}] {sym} "
            f"(float)x1[{index(c.ins[1])}];"]
    lines, items = c.lang.nest(c, [(f"d{k}", e) for k, e in enumerate(out)], 1, body)
    return [c.x(0, "x0"), c.x(1, "x1"), c.y(), *lines], items, numel(out)


def slice_channels(c: Ctx) -> Rendered:
    """Channels [start, start + size) of each batch image: one (n, channel) plane per item
    (CPU), one element (GPU)."""
    n, ch = c.out[0], c.out[1]
    plane = numel(c.out[2:])
    cin, start = c.ins[0][1], c.a["start"]
    body = [f"y[(n * {ch} + k) * {plane} + i] = x[(n * {cin} + {start} + k) * {plane} + i];"]
    lines, items = c.lang.nest(c, [("n", n), ("k", ch), ("i", plane)], 1, body)
    return [c.x(), c.y(), *lines], items, 0
