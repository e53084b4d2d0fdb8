"""The x86 int8 Linear that computes several output blocks an item, one dot-product chain
each, so that their weight rows stream from memory side by side (``q8.qlinear`` calls it
where ``linear_blocks`` says; requantized and stored by ``q8.linear_store``)."""

from __future__ import annotations

from codegen.emit.cpu.q8 import IX, bcast, linear_store, requant_constants
from codegen.emit.cpu.q8_requant import epilogue_tag as _tag
from codegen.emit.cstyle import Ctx, Rendered
from codegen.isa import QuantIsa
from codegen.quant import LayerQuant


def linear_blocks(q: QuantIsa, ob: int) -> int:
    """Output blocks an x86 int8 Linear's item computes at once, one chain each: their weight
    rows stream side by side. 25088 -> 4096 (VGG-16's, 102 MB of weights), AVX-512 VNNI, on
    the shared 2-core machine: a C harness, CPU time, 1 block of 2 chains 4.1-4.4 ms, 4 blocks
    3.4-3.8 ms; the layer alone in the runner, 1 thread, CPU per inference 5.01 -> 4.23 ms
    (more lines in flight with four sequential streams than with one). VNNI only: SDOT and
    AVX2 (whose pair loads read a dword) keep 1, their text unchanged."""
    if q.name == "neondot" or q.group != 4:
        return 1
    return 4 if ob % 4 == 0 else 2 if ob % 2 == 0 else 1


def qlinear_blocks(c: Ctx, q: QuantIsa, lq: LayerQuant, blocks: int) -> Rendered:
    """``blocks`` output blocks (one dot-product chain each) and a batch row per item."""
    X, g, WT = q.lanes, q.group, q.weight
    n, k = c.ins[0]
    o = c.out[1]
    ob = -(-o // X)
    kp = -(-k // g) * g
    kw = k // g * g  # whole groups
    out = "float" if lq.y is None else "uint8_t"
    name = f"linear_qs8__{q.name}_{blocks}o" + _tag(lq, c.la.epilogue)
    acc = [f"c{r}" for r in range(blocks)]  # linear_store sums a0 and a1
    body = [f"/* {name}: {blocks} output blocks, a dot-product chain each */",
            *requant_constants(lq),
            f"const {IX} ob0 = it / {n} * {blocks}, n = it % {n};",
            f"const {WT} *wr = w + ob0 * {kp * X};",
            f"const uint8_t *xr = x + n * {k};",
            *[f"vi {a} = *(const vqi *)(b + (ob0 + {r}) * {X});" for r, a in enumerate(acc)],
            f"for ({IX} j = 0; j < {kw}; j += {g}) {{",
            f"  const vi xb = {bcast(q, 'xr + j')};",
            *[f"  {a} = npas_dot({a}, xb, *(const vqi *)(wr + {r * kp * X} + j * {X}));"
              for r, a in enumerate(acc)],
            "}"]
    if kp > kw:  # the last partial group, zero-filled
        parts = " | ".join(f"((uint32_t)xr[{kw + r}] << {r * 8})" for r in range(k - kw))
        flip = " ^ 0x80808080u" if q.offset else ""
        body.append(f"const vi xt = (vi){{}} + (int32_t)({parts}{flip});")
        body += [f"{a} = npas_dot({a}, xt, *(const vqi *)(wr + {r * kp * X + kw * X}));"
                 for r, a in enumerate(acc)]
    for r, a in enumerate(acc):
        body += [f"{{ const {IX} obk = ob0 + {r}; vi a0 = {a}, a1 = (vi){{}};",
                 *["  " + ln for ln in linear_store(lq, out, X, o, ob)], "}"]
    items = ob // blocks * n
    pr = c.lang.param_ref
    decl = [f"const {WT} *restrict w = (const {WT} *){pr(c, 0)};",
            f"const int32_t *restrict b = (const int32_t *){pr(c, 1)};",
            f"const float *restrict m = (const float *){pr(c, 2)};"]
    return [c.x(), c.y(), *decl, *c.lang.over_items(c, items, body)], items, 2 * n * o * k
