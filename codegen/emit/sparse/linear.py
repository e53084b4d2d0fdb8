"""The block-sparse (``bcsr``) linear layer: blocks of x outputs (the vector width), the kept
input indices per block, one (output block, batch row) per work item."""

from __future__ import annotations

import numpy as np

from codegen.emit.cpu.linear import linear_store
from codegen.emit.cpu.prelude import half, widen
from codegen.emit.cstyle import Ctx
from codegen.emit.sparse.common import ints, pack_blocks
from codegen.lr import Layer


def pack_sparse_linear(la: Layer, x: int) -> tuple[np.ndarray, ...]:
    return pack_blocks(la.params["weight"], la.params["bias"], x, lambda li: li)


def linear_bcsr(c: Ctx) -> tuple[list[str], int, int]:
    """Block-sparse linear: one (output block, batch row) per item. At fp16 (NEON FP16) the
    four chains are float32 (``vw``), the fp16 weights and inputs widened, as in the dense
    fp16 Linear (``linear_vec``): a block's kept inputs run to thousands (vgg16's first
    classifier layer keeps ~3000 of 25088 at 8.2x), too long a sum for fp16 chains."""
    X, E = c.lang.isa.floats, c.lang.isa.elem
    n, k = c.ins[0]
    o = c.out[1]
    ob = -(-o // X)
    i = "int64_t"
    h = half(c.lang.isa)
    acc = "vw" if h else "vf"

    def wvec(p: str) -> str:
        return widen(f"*(const vf *){p}") if h else f"*(const vf *){p}"

    def xs(j: str) -> str:
        return f"(float)xr[offs[{j}]]" if h else f"xr[offs[{j}]]"

    body = [f"const {i} obk = it / {n}, n = it % {n};",
            f"const {E} *xr = x + n * {k};",
            f"{acc} a0 = ({acc}){{}}, a1 = ({acc}){{}}, a2 = ({acc}){{}}, a3 = ({acc}){{}};",
            "int32_t e = gptr[obk];",
            "const int32_t e1 = gptr[obk + 1];",
            f"const {E} *wv = w + (int64_t)e * {X};",
            f"for (; e + 4 <= e1; e += 4, wv += {4 * X}) {{",
            *[f"  a{j} += {xs(f'e + {j}')} * {wvec(f'(wv + {j * X})')};"
              for j in range(4)],
            "}",
            f"for (; e < e1; ++e, wv += {X}) a0 += {xs('e')} * {wvec('wv')};",
            *linear_store(c)]
    items = ob * n
    nnz = int((c.la.params["weight"] != 0).sum())
    L = [c.x(), c.y(), c.w(0, "w"), c.w(1, "b"), ints(c, 2, "offs"), ints(c, 3, "gptr"),
         *c.lang.over_items(c, items, body)]
    return L, items, 2 * n * nnz
