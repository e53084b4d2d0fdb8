"""The dense int8 Linear: ``qlinear`` (one output block and batch row an item, two
dot-product chains over k; on x86 with a whole number of 2 or 4 blocks, ``linear_blocks`` of
them an item, a chain each, so that their weight rows stream from memory side by side),
``pack_qlinear`` (its weights); requantized and stored by ``q8.linear_store``."""

from __future__ import annotations

import numpy as np

from codegen.emit.cpu.q8 import IX, _need, bcast, linear_store, requant_constants, words
from codegen.emit.cpu.q8_requant import epilogue_tag as _tag
from codegen.emit.cstyle import Ctx, Rendered
from codegen.isa import QuantIsa
from codegen.lr import Graph, Layer
from codegen.quant import LayerQuant, layer_quant


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


def qlinear(c: Ctx) -> Rendered:
    """One (output block, batch row) per item: two dot-product chains over k (x86 with a
    whole number of 2 or 4 blocks: ``linear_blocks`` of them an item, a chain each)."""
    _need(c, vectors=True)
    q: QuantIsa = c.lang.qisa
    X, g, WT = q.lanes, q.group, q.weight
    lq = layer_quant(c.graph, c.la)
    n, k = c.ins[0]
    o = c.out[1]
    ob = -(-o // X)
    blocks = linear_blocks(q, ob)
    if blocks > 1:
        return qlinear_blocks(c, q, lq, blocks)
    kp = -(-k // g) * g
    kw = k // g * g  # whole groups
    k2 = kw // (2 * g) * (2 * g)
    out = "float" if lq.y is None else "uint8_t"
    name = f"linear_qs8__{q.name}_2c" + _tag(lq, c.la.epilogue)
    body = [f"/* {name}: two dot-product chains */", *requant_constants(lq),
            f"const {IX} obk = it / {n}, n = it % {n};",
            f"const {WT} *wr = w + obk * {kp * X};",
            f"const uint8_t *xr = x + n * {k};",
            f"vi a0 = *(const vqi *)(b + obk * {X}), a1 = (vi){{}};",
            f"for ({IX} j = 0; j < {k2}; j += {2 * g}) {{",
            f"  a0 = npas_dot(a0, {bcast(q, 'xr + j')}, *(const vqi *)(wr + j * {X}));",
            f"  a1 = npas_dot(a1, {bcast(q, 'xr + j', g)}, "
            f"*(const vqi *)(wr + (j + {g}) * {X}));",
            "}"]
    if kw > k2:
        # one group left: its bytes only (a dword load could pass the row's end)
        pair = (f"((vi){{}} + (int32_t)((uint32_t)xr[{k2}] | ((uint32_t)xr[{k2 + 1}] << 16)))"
                if g == 2 else bcast(q, "xr", k2))
        body.append(f"a0 = npas_dot(a0, {pair}, *(const vqi *)(wr + {k2 * X}));")
    if kp > kw:  # the last partial group, zero-filled
        shift = 8 if g == 4 else 16
        parts = " | ".join(f"((uint32_t)xr[{kw + r}] << {r * shift})" for r in range(k - kw))
        flip = " ^ 0x80808080u" if q.offset else ""
        body.append(f"a0 = npas_dot(a0, (vi){{}} + (int32_t)(({parts}){flip}), "
                    f"*(const vqi *)(wr + {kw * X}));")
    body += linear_store(lq, out, X, o, ob)
    items = ob * n
    pr = c.lang.param_ref
    decl = [f"const {WT} *restrict w = (const {WT} *){pr(c, 0)};",
            f"const int32_t *restrict b = (const int32_t *){pr(c, 1)};",
            f"const float *restrict m = (const float *){pr(c, 2)};"]
    return [c.x(), c.y(), *decl, *c.lang.over_items(c, items, body)], items, 2 * n * o * k


def pack_qlinear(graph: Graph, la: Layer, q: QuantIsa) -> tuple[np.ndarray, ...]:
    """Weights ``[o/x][k/group][x][group]``, bias with ``-zero_x * sum w`` folded in, mult."""
    X, g = q.lanes, q.group
    lq = layer_quant(graph, la)
    w = lq.weight.astype(np.int32)
    o, k = w.shape
    op, kp = -(-o // X) * X, -(-k // g) * g
    wp = np.zeros((op, kp), np.int32)
    wp[:o, :k] = w
    wp = wp.reshape(op // X, X, kp // g, g).transpose(0, 2, 1, 3)
    bias = np.zeros(op, np.int32)
    bias[:o] = lq.bias.astype(np.int64) + (q.offset - lq.x.zero) * w.sum(axis=1)
    mult = np.zeros(op, np.float32)
    mult[:o] = lq.mult
    wdt = np.int8 if q.weight == "int8_t" else np.int16
    return words(wp.astype(wdt)), words(bias), mult
