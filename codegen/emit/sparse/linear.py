"""The block-sparse (``bcsr``) linear layer: blocks of x outputs (the vector width), the kept
input indices per block, one (output block, batch row) per work item."""

from __future__ import annotations

import numpy as np

from codegen.emit.cpu.linear import linear_store
from codegen.emit.cstyle import Ctx
from codegen.emit.sparse.common import ints, pack_blocks
from codegen.lr import Layer


def pack_sparse_linear(la: Layer, x: int) -> tuple[np.ndarray, ...]:
    return pack_blocks(la.params["weight"], la.params["bias"], x, lambda li: li)


def linear_bcsr(c: Ctx) -> tuple[list[str], int, int]:
    """Block-sparse linear: one (output block, batch row) per item."""
    X = c.lang.isa.floats
    n, k = c.ins[0]
    o = c.out[1]
    ob = -(-o // X)
    i = "int64_t"
    body = [f"const {i} obk = it / {n}, n = it % {n};",
            f"const float *xr = x + n * {k};",
            "vf a0 = (vf){}, a1 = (vf){}, a2 = (vf){}, a3 = (vf){};",
            "int32_t e = gptr[obk];",
            "const int32_t e1 = gptr[obk + 1];",
            f"const float *wv = w + (int64_t)e * {X};",
            f"for (; e + 4 <= e1; e += 4, wv += {4 * X}) {{",
            *[f"  a{j} += xr[offs[e + {j}]] * *(const vf *)(wv + {j * X});" for j in range(4)],
            "}",
            f"for (; e < e1; ++e, wv += {X}) a0 += xr[offs[e]] * *(const vf *)wv;",
            *linear_store(c)]
    items = ob * n
    nnz = int((c.la.params["weight"] != 0).sum())
    L = [c.x(), c.y(), c.w(0, "w"), c.w(1, "b"), ints(c, 2, "offs"), ints(c, 3, "gptr"),
         *c.lang.over_items(c, items, body)]
    return L, items, 2 * n * nnz
