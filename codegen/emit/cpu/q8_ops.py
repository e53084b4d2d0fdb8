"""int8 kernels for the ops around the convs: average pooling (k x k and adaptive, the global
pool among them), the add of two uint8 tensors of their own scales, concat, and the element-wise
activations as 256-entry lookup tables, and squeeze-excite's per-channel product
(``mul_channel``: the gate's term a vector per channel block, hoisted out of the pixel loop).
What they compute is ``codegen.quant``'s ``int8_op`` (``op_quant`` gives every constant), bit
for bit.

They are memory-bound: the element-wise ones are portable C on bytes that the compiler
vectorises at -O3 for every ISA (AVX-512, AVX2, NEON: the same text); a blocked pool keeps
one int32 vector of a pixel block's x lanes (``npas_u8x`` loads, the ISA's vector types: the
first form, int32 arrays, took 10x the float32 pool's time on MobileNet-V2's global pool),
requantizes with the float32 multiplier of its window's divisor (a table) as the convs do
(``q8_requant.requant``: ``1.5 * 2^23``, ties to even; compiled with ``-ffp-contract=off``);
a plain one (x = 1) is the same in scalars. A step whose output only float32 layers read
writes float32 (no rounding), as an int8 conv does.
"""

from __future__ import annotations

import numpy as np

from codegen.emit.cpu.q8 import IX, _need
from codegen.emit.cpu.q8_requant import MAGIC, fl, requant
from codegen.emit.cstyle import Ctx, Rendered
from codegen.lr import numel
from codegen.quant import OpQuant, op_quant, pool_windows

CHUNK = 4096  # elements per work item of the element-wise ones

RQ8 = f"""\
static inline uint8_t npas_rq8(float v, float lo, float hi, int32_t z) {{
  v = v < lo ? lo : v;
  v = v > hi ? hi : v;
  v = (v + {MAGIC}) - {MAGIC};
  return (uint8_t)((int32_t)v + z);
}}
"""


def _helpers(c: Ctx) -> None:
    _need(c)
    c.lang.helpers.setdefault("npas_rq8", RQ8)


def _store(oq: OpQuant, dst: str) -> str:
    """``dst = `` the float ``v`` clamped, rounded and offset (u8), or clamped (float)."""
    if oq.y is not None:
        return f"{dst} = npas_rq8(v, {fl(oq.lo)}, {fl(oq.hi)}, {oq.y.zero});"
    s = ""
    if oq.lo is not None:
        s += f"if (v < {fl(oq.lo)}) v = {fl(oq.lo)}; "
    if oq.hi is not None:
        s += f"if (v > {fl(oq.hi)}) v = {fl(oq.hi)}; "
    return s + f"{dst} = v;"


def _table(name: str, ctype: str, values) -> str:
    vals = ", ".join(values)
    return f"static const {ctype} {name}[{len(values)}] = {{{vals}}};"


def _elementwise(c: Ctx, decls: list[str], stmt: str, flops_per: int = 1) -> Rendered:
    """``stmt`` (reading index ``i``) over the output buffer, CHUNK elements per item."""
    total = numel(c.out)
    items = -(-total // CHUNK)
    body = [f"const {IX} i1 = it * {CHUNK} + {CHUNK} < {total} ? it * {CHUNK} + {CHUNK} : "
            f"{total};", f"for ({IX} i = it * {CHUNK}; i < i1; ++i) {{ {stmt} }}"]
    return [*decls, c.y(), *c.lang.over_items(c, items, body)], items, total * flops_per


def _vstore(oq: OpQuant, dst: str) -> list[str]:
    """``_store`` of the float vector ``v`` to the x elements at ``dst`` (``requant``'s)."""
    L = []
    if oq.lo is not None:
        L.append(f"{{ const vf lo = (vf){{}} + {fl(oq.lo)}; v = npas_vsel(v < lo, lo, v); }}")
    if oq.hi is not None:
        L.append(f"{{ const vf hi = (vf){{}} + {fl(oq.hi)}; v = npas_vsel(v > hi, hi, v); }}")
    if oq.y is None:
        return [*L, f"*(vf *)({dst}) = v;"]
    return [*L, f"v = (v + {MAGIC}) - {MAGIC};",
            f"*(vq *)({dst}) = __builtin_convertvector(__builtin_convertvector(v, vi) + "
            f"{oq.y.zero}, vq);"]


def qadd(c: Ctx) -> Rendered:
    """add_qs8: both inputs requantized to the output's scale, summed, an optional ReLU/ReLU6
    clamp, rounded (either layout: the inputs share the output's); x elements a vector (the
    int8 ISA's uint8/int32/float vectors), the buffer's last ones one by one."""
    _helpers(c)
    _need(c, vectors=True)
    oq = op_quant(c.graph, c.la)
    X = c.lang.qisa.lanes
    (qa, qb), (ma, mb) = oq.x, oq.mult
    total = numel(c.out)
    items = -(-total // CHUNK)
    vec = [f"vf v = __builtin_convertvector(npas_u8x(a + i) - {qa.zero}, vf) * {fl(ma)} + "
           f"__builtin_convertvector(npas_u8x(b + i) - {qb.zero}, vf) * {fl(mb)};",
           *_vstore(oq, "y + i")]
    one = (f"float v = (float)((int32_t)a[i] - {qa.zero}) * {fl(ma)} + "
           f"(float)((int32_t)b[i] - {qb.zero}) * {fl(mb)}; {_store(oq, 'y[i]')}")
    body = ["/* add_qs8 */",
            f"const {IX} i1 = it * {CHUNK} + {CHUNK} < {total} ? it * {CHUNK} + {CHUNK} : "
            f"{total};", f"{IX} i = it * {CHUNK};",
            f"for (; i + {X} <= i1; i += {X}) {{", *["  " + ln for ln in vec], "}",
            f"for (; i < i1; ++i) {{ {one} }}"]
    return ([c.x(0, "a"), c.x(1, "b"), c.y(), *c.lang.over_items(c, items, body)], items,
            total * 4)


def qlut(c: Ctx) -> Rendered:
    """<act>_qs8: y = T[x], the activation(s)' 256-entry table (``codegen.quant.lut_table``)."""
    _helpers(c)
    oq = op_quant(c.graph, c.la)
    t = oq.table
    if oq.y is not None:
        table = _table("T", "uint8_t", [str(int(v)) for v in t])
    else:
        table = _table("T", "float", [fl(v) for v in t.astype(np.float32)])
    name = "_".join((c.la.op, *c.la.epilogue))
    return _elementwise(c, [f"/* {name}_lut_qs8 */", table, c.x()], "y[i] = T[x[i]];")


def qconcat(c: Ctx) -> Rendered:
    """concat_qs8: one (batch row, input) pair per item, each input's slice of the row (plain
    NCHW, or blocked when every input but the last fills whole blocks: its blocks are then
    one run of the output's row) copied where its quantization is the output's, requantized
    elsewhere."""
    _helpers(c)
    oq = op_quant(c.graph, c.la)
    n = c.out[0]
    row = numel(c.out) // n
    k = len(c.ins)
    L = [c.x(j, f"x{j}") for j in range(k)]
    body = [f"/* concat_qs8 */ const {IX} n = it / {k}, k = it % {k};", "switch (k) {"]
    off = 0
    for j, (shape, qp, m) in enumerate(zip(c.ins, oq.x, oq.mult, strict=True)):
        sz = numel(shape) // n
        src, dst = f"x{j}[n * {sz} + i]", f"y[n * {row} + {off} + i]"
        if oq.y == qp:
            stmt = f"{dst} = {src};"
        else:
            stmt = f"float v = (float)((int32_t){src} - {qp.zero}) * {fl(m)}; {_store(oq, dst)}"
        body += [f"  case {j}:", f"    for ({IX} i = 0; i < {sz}; ++i) {{ {stmt} }}",
                 "    break;"]
        off += sz
    body += ["  default: break;", "}"]
    return [*L, c.y(), *c.lang.over_items(c, n * k, body)], n * k, 0


def qavgpool(c: Ctx) -> Rendered:
    """avgpool2d / adaptive_avgpool2d_qs8: items (n, channel block, output row); per output
    pixel an int32 sum of each lane over the window's real pixels, ``- count * zero_x``, times
    the window divisor's multiplier, requantized (blocked: x lanes; plain: 1)."""
    _helpers(c)
    oq = op_quant(c.graph, c.la)
    src, dst = c.ins[0], c.out
    lanes = src[4] if len(src) == 5 else 1
    n, cb, ih, iw = src[:4]
    oh, ow = dst[2], dst[3]
    h0, h1, dh, w0, w1, dw = pool_windows(c.la, ih, iw, oh, ow)
    tables = [_table(nm, "int32_t", [str(int(v)) for v in vals])
              for nm, vals in (("H0", h0), ("H1", h1), ("DH", dh), ("W0", w0), ("W1", w1),
                               ("DW", dw))]
    tables.append(_table("M", "float", [fl(v) for v in oq.pool_mult]))
    zx = oq.x[0].zero
    lay = f"nchw{lanes}c" if lanes > 1 else "nchw"
    at = f"((nc * {oh} + oh) * {ow} + ow) * {lanes}"
    body = [f"/* {c.la.op}_{lay}_qs8 */",
            f"const {IX} nc = it / {oh}, oh = it % {oh};",
            f"const uint8_t *xp = x + nc * {ih * iw * lanes};",
            "const int32_t h0 = H0[oh], h1 = H1[oh];",
            f"for ({IX} ow = 0; ow < {ow}; ++ow) {{",
            "  const int32_t w0 = W0[ow], w1 = W1[ow];",
            f"  const int32_t cnt = (h1 - h0) * (w1 - w0) * {zx};",
            "  const float m = M[DH[oh] * DW[ow]];"]
    if lanes > 1 and lanes == c.lang.qisa.lanes:  # a pixel block is one vector
        _need(c, vectors=True)
        body += ["  vi acc = (vi){};",
                 "  for (int32_t i = h0; i < h1; ++i)",
                 f"    for (int32_t j = w0; j < w1; ++j) acc += npas_u8x(xp + (i * {iw} + j) * "
                 f"{lanes});",
                 *["  " + ln for ln in requant(oq, "(acc - cnt)", "((vf){} + m)", f"y + {at}",
                                               None)], "}"]
        consts = [f"const float qlo = {fl(oq.lo or 0.0)}, qhi = {fl(oq.hi or 0.0)}; "
                  f"const int32_t qzy = {oq.y.zero if oq.y else 0}; (void)qlo; (void)qhi; "
                  "(void)qzy;"]
    else:
        body += [f"  int32_t acc[{lanes}] = {{0}};",
                 "  for (int32_t i = h0; i < h1; ++i)",
                 "    for (int32_t j = w0; j < w1; ++j)",
                 f"      for (int32_t l = 0; l < {lanes}; ++l) acc[l] += xp[(i * {iw} + j) * "
                 f"{lanes} + l];",
                 f"  for (int32_t l = 0; l < {lanes}; ++l) {{",
                 "    float v = (float)(acc[l] - cnt) * m;",
                 f"    {_store(oq, f'y[{at} + l]')}", "  }", "}"]
        consts = []
    body = consts + body
    items = n * cb * oh
    return [*tables, c.x(), c.y(), *c.lang.over_items(c, items, body)], items, numel(src)


def qmul_channel(c: Ctx) -> Rendered:
    """mul_channel_qs8: x [N, C, H, W] times the SE gate [N, C, 1, 1], ``v = float((x - zx) *
    (g - zg)) * m``; items (n, channel block) blocked, (n, channel) plain. The gate's term is
    hoisted out of the pixel loop: a float vector of ``g - zg`` (blocked: x lanes a pixel),
    so each pixel's product ``float(x - zx) * gv`` is the int32 product exactly (|.| <= 255^2
    < 2^24), then times m: one rounding, the reference's."""
    _helpers(c)
    oq = op_quant(c.graph, c.la)
    (qx, qg), (m,) = oq.x, oq.mult
    src = c.ins[0]
    lanes = src[4] if len(src) == 5 else 1
    n, cb, h, w = src[:4]
    hw = h * w
    items = n * cb
    if lanes > 1 and lanes == c.lang.qisa.lanes:  # a pixel block is one vector
        _need(c, vectors=True)
        body = [f"/* mul_channel_nchw{lanes}c_qs8 */",
                f"const vf gv = __builtin_convertvector(npas_u8x(s + it * {lanes}) - "
                f"{qg.zero}, vf);",
                f"const vf mv = (vf){{}} + {fl(m)};",
                f"const uint8_t *xp = x + it * {hw * lanes};",
                f"for ({IX} p = 0; p < {hw * lanes}; p += {lanes}) {{",
                f"  vf v = (__builtin_convertvector(npas_u8x(xp + p) - {qx.zero}, vf) * gv) "
                "* mv;",
                *["  " + ln for ln in _vstore(oq, f"y + it * {hw * lanes} + p")], "}"]
    else:  # plain, or blocks narrower than a vector: one lane at a time
        lay = f"nchw{lanes}c" if lanes > 1 else "nchw"
        one = (f"float v = (float)(((int32_t)x[it * {hw * lanes} + p] - {qx.zero}) * "
               f"g[p % {lanes}]) * {fl(m)}; {_store(oq, f'y[it * {hw * lanes} + p]')}")
        body = [f"/* mul_channel_{lay}_qs8 */", f"int32_t g[{lanes}];",
                f"for (int32_t l = 0; l < {lanes}; ++l) g[l] = (int32_t)s[it * {lanes} + l] - "
                f"{qg.zero};",
                f"for ({IX} p = 0; p < {hw * lanes}; ++p) {{ {one} }}"]
    return ([c.x(0), c.x(1, "s"), c.y(), *c.lang.over_items(c, items, body)], items,
            numel(src) * 2)
