"""Vectorised linear layers: y[n, o-block] as 4 chains of broadcast x (or x's lanes) times packed
``[o/x][k][x]`` weights; ``linear_store`` is shared with the block-sparse linear."""

from __future__ import annotations

from codegen.emit.cpu.prelude import epi, half, narrow, widen
from codegen.emit.cstyle import Ctx


def linear_store(c: Ctx) -> list[str]:
    """The end of a vectorised linear item: bias + the four chains a0..a3, the epilogue, and
    the store of output block ``obk`` of batch row ``n`` (the last block may be partial)."""
    X, E = c.lang.isa.floats, c.lang.isa.elem
    o = c.out[1]
    ob = -(-o // X)
    bias = f"*(const vf *)(b + obk * {X})"
    if half(c.lang.isa):  # float32 chains (linear_vec): one rounding, after the bias
        v = narrow(f"{widen(bias)} + ((a0 + a1) + (a2 + a3))")
    else:
        v = f"{bias} + ((a0 + a1) + (a2 + a3))"
    L = [f"vf v = {v};",
         *epi(c.la.epilogue, "v"),
         f"{E} *yr = y + n * {o} + obk * {X};"]
    if o % X == 0:
        return [*L, "*(vfu *)yr = v;"]
    return [*L, f"if (obk < {ob - 1}) *(vfu *)yr = v;",
            f"else for (int l = 0; l < {o % X}; ++l) yr[l] = v[l];"]


def linear_vec(c: Ctx) -> tuple[list[str], int, int]:
    """One (output block, batch row) per item: 4 accumulator chains over k. Where the ISA
    multiplies by lanes (NEON), one vector load of 4 inputs feeds the 4 chains by lane
    instead of 4 scalar loads."""
    if half(c.lang.isa):
        return _linear_vec_f16(c)
    X = c.lang.isa.floats
    by_lane = c.lang.isa.by_lane
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
            *(["  const vf xv = *(const vfu *)(xr + j);"] if by_lane else []),
            *[f"  a{q} += {f'xv[{q}]' if by_lane else xs} * *(const vf *)(wr + {ws} * {X});"
              for q, xs, ws in ((0, "xr[j]", "j"), *((q, f"xr[j + {q}]", f"(j + {q})")
                                                     for q in (1, 2, 3)))],
            "}",
            f"for ({i} j = {k4}; j < {k}; ++j) a0 += xr[j] * *(const vf *)(wr + j * {X});",
            *linear_store(c)]
    items = ob * n
    return [c.x(), c.y(), c.w(0, "w"), c.w(1, "b"), *c.lang.over_items(c, items, body)], \
        items, 2 * n * o * k


def _linear_vec_f16(c: Ctx) -> tuple[list[str], int, int]:
    """fp16 (NEON FP16): fp16 weights and inputs, four float32 chains (``vw``, 8 floats each).
    A Linear sums over all of k (512 in resnet18, 25088 in vgg16's first): in fp16 the chains
    would lose the small terms once they grow, so they are float32 and the output is rounded
    once. One load of 8 inputs, widened, feeds 8 widened weight vectors by lane; Linear layers
    are a small share of a CNN's multiply-adds, so the widening costs little."""
    X = c.lang.isa.floats
    n, k = c.ins[0]
    o = c.out[1]
    ob = -(-o // X)
    k8 = k // 8 * 8
    i = "int64_t"

    def wv(j: str) -> str:
        return widen(f"*(const vf *)(wr + {j} * {X})")

    body = [f"const {i} obk = it / {n}, n = it % {n};",
            f"const _Float16 *wr = w + obk * {k * X};",
            f"const _Float16 *xr = x + n * {k};",
            "vw a0 = (vw){}, a1 = (vw){}, a2 = (vw){}, a3 = (vw){};",
            f"for ({i} j = 0; j < {k8}; j += 8) {{",
            f"  const vw xv = {widen('*(const vfu *)(xr + j)')};",
            *[f"  a{q % 4} += {wv(f'(j + {q})' if q else 'j')} * xv[{q}];" for q in range(8)],
            "}",
            f"for ({i} j = {k8}; j < {k}; ++j) a0 += {wv('j')} * (float)xr[j];",
            *linear_store(c)]
    items = ob * n
    return [c.x(), c.y(), c.w(0, "w"), c.w(1, "b"), *c.lang.over_items(c, items, body)], \
        items, 2 * n * o * k
