"""int8 max pooling and the conversions of an int8 graph: ``quantize`` (float32 -> uint8),
``dequantize`` (uint8 -> float32) and the uint8 layout conversions, each side plain NCHW or
blocked NCHW[x]c (the pass fuses a conversion with the layout change beside it). What they
compute is ``codegen.quant``'s ``quantize_array`` / ``dequantize_array``, bit for bit."""

from __future__ import annotations

from codegen.emit.cpu.q8 import IX, _need, fl
from codegen.emit.cstyle import Ctx, Rendered
from codegen.lr import numel


def qmaxpool2d(c: Ctx) -> Rendered:
    """Max pool of blocked uint8: padding never wins (every window holds a real value)."""
    _need(c, vectors=True)
    X = c.lang.qisa.lanes
    n, cbk, ih, iw, _ = c.ins[0]
    _, _, oh, ow, _ = c.out
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = (c.a["kernel"], c.a["stride"], c.a["padding"],
                                             c.a["dilation"])
    body = [f"/* maxpool2d_nchw{X}c_qs8__{c.lang.qisa.name} */",
            f"const uint8_t *xp = x + nc * {ih * iw * X};",
            "vq mx = (vq){};",
            f"for ({IX} ky = 0; ky < {kh}; ++ky) {{",
            f"  const {IX} ih = oh * {sh} - {ph} + ky * {dh};",
            f"  if (ih < 0 || ih >= {ih}) continue;",
            f"  for ({IX} kx = 0; kx < {kw}; ++kx) {{",
            f"    const {IX} iw = ow * {sw} - {pw} + kx * {dw};",
            f"    if (iw < 0 || iw >= {iw}) continue;",
            f"    const vq v = *(const vq *)(xp + (ih * {iw} + iw) * {X});",
            "    const vq k = (vq)(v > mx);",
            "    mx = (mx & ~k) | (v & k);", "  }", "}",
            f"*(vq *)(y + ((nc * {oh} + oh) * {ow} + ow) * {X}) = mx;"]
    lines, items = c.lang.nest(c, [("nc", n * cbk), ("oh", oh), ("ow", ow)], 2, body)
    return [c.x(), c.y(), *lines], items, numel(c.out) * kh * kw


def _convert(c: Ctx, fn, pad: str) -> Rendered:
    """y = fn(x) element by element, each side plain or blocked (pad lanes get ``pad``)."""
    src, dst = c.ins[0], c.out
    if len(src) == len(dst):  # the same layout: element-wise over the buffer
        total = numel(dst)
        ch = 4096
        items = -(-total // ch)
        body = [f"const {IX} i1 = it * {ch} + {ch} < {total} ? it * {ch} + {ch} : {total};",
                f"for ({IX} i = it * {ch}; i < i1; ++i) y[i] = {fn('x[i]')};"]
        return [c.x(), c.y(), *c.lang.over_items(c, items, body)], items, total
    blocked_in = len(src) == 5
    logical = dst if blocked_in else src
    blocked = src if blocked_in else dst
    n, ch, h, w = logical
    cbk, X = blocked[1], blocked[4]
    hw = h * w
    body = [f"const {IX} n = it / {cbk}, cb = it % {cbk};",
            f"for ({IX} l = 0; l < {X}; ++l) {{",
            f"  const {IX} ch = cb * {X} + l;"]
    if blocked_in:
        body += [f"  if (ch >= {ch}) break;",
                 f"  for ({IX} p = 0; p < {hw}; ++p) y[(n * {ch} + ch) * {hw} + p] = "
                 f"{fn(f'x[(it * {hw} + p) * {X} + l]')};"]
    else:
        body += [f"  if (ch >= {ch}) {{ for ({IX} p = 0; p < {hw}; ++p) "
                 f"y[(it * {hw} + p) * {X} + l] = {pad}; continue; }}",
                 f"  for ({IX} p = 0; p < {hw}; ++p) y[(it * {hw} + p) * {X} + l] = "
                 f"{fn(f'x[(n * {ch} + ch) * {hw} + p]')};"]
    body.append("}")
    items = n * cbk
    return [c.x(), c.y(), *c.lang.over_items(c, items, body)], items, 0


def quantize(c: Ctx) -> Rendered:
    """float32 -> uint8 (``codegen.quant.quantize_array``), either layout to either."""
    _need(c)
    qp = c.graph.quant[c.la.output]
    args = f"{fl(1.0 / qp.scale)}, {fl(-qp.zero)}, {fl(255 - qp.zero)}, {qp.zero}"
    return _convert(c, lambda v: f"npas_q8({v}, {args})", str(qp.zero))


def dequantize(c: Ctx) -> Rendered:
    """uint8 -> float32 (``codegen.quant.dequantize_array``), either layout to either."""
    _need(c)
    qp = c.graph.quant[c.la.inputs[0]]
    return _convert(c, lambda v: f"npas_dq8({v}, {fl(qp.scale)}, {qp.zero})", "0.0f")


def convert_u8(c: Ctx) -> Rendered:
    """A uint8 tensor's layout conversion (NCHW <-> NCHW[x]c)."""
    _need(c)
    return _convert(c, lambda v: v, "0")
