"""The ``bcsr_blocked`` 1x1 conv: the block-sparse linear format on the [oc, ic] matrix, run
on blocked NCHW[x]c activations (the one sparse conv that reads and writes them)."""

from __future__ import annotations

import numpy as np

from codegen.emit.cstyle import Ctx
from codegen.emit.sparse.common import ints, pack_blocks
from codegen.lr import Layer


def pack_sparse_conv1x1_blocked(la: Layer, x: int, hw: int) -> tuple[np.ndarray, ...]:
    """bcsr_blocked: the block Linear's format on the [oc, ic] matrix, each kept input channel
    ic stored as its offset in a blocked image, (ic // x) * hw * x + ic % x."""
    w = la.params["weight"]
    return pack_blocks(w.reshape(w.shape[0], -1), la.params["bias"], x,
                        lambda li: (li // x) * hw * x + li % x)


def spconv1x1_blocked(c: Ctx) -> tuple[list[str], int, int]:
    """A bcsr_blocked 1x1 conv on NCHW[x]c: items (n, output block, tile of W positions); W
    accumulator vectors (x outputs each) start at the bias; per kept input channel, one weight
    vector and W broadcast inputs, W FMAs; the epilogue (a fused residual read blocked) in
    registers, aligned vector stores. The last tile of a plane may be shorter."""
    X, E = c.lang.isa.floats, c.lang.isa.elem
    n, ob, h, w, _ = c.out
    cb = c.ins[0][1]
    hw = h * w
    W = c.la.sparse.tile
    nt = -(-hw // W)
    i = "int64_t"
    add = "add" in c.la.epilogue

    def tile(wt: int) -> list[str]:
        acc = [f"a{j}" for j in range(wt)]
        L = [f"vf {', '.join(acc)};", " ".join(f"{a} = bv;" for a in acc),
             "for (int32_t e = gptr[obk], e1 = gptr[obk + 1]; e < e1; ++e, wv += "
             f"{X}) {{",
             "  const vf wk = *(const vf *)wv;",
             f"  const {E} *xp = xb + offs[e];",
             *[f"  {acc[j]} += xp[{j * X}] * wk;" for j in range(wt)], "}"]
        for j in range(wt):
            L += [f"{acc[j]} += *(const vf *)(sb + {j * X});" if e == "add"
                  else f"{acc[j]} = npas_v_{e}({acc[j]});" for e in c.la.epilogue]
            L.append(f"*(vf *)(yb + {j * X}) = {acc[j]};")
        return L

    body = [f"const {i} t = it % {nt}, obk = (it / {nt}) % {ob}, n = it / {nt * ob};",
            f"const {i} p0 = t * {W};",
            f"const {E} *xb = x + n * {cb * hw * X} + p0 * {X};",
            f"{E} *yb = y + ((n * {ob} + obk) * {hw} + p0) * {X};",
            *([f"const {E} *sb = s + ((n * {ob} + obk) * {hw} + p0) * {X};"] if add else []),
            f"const vf bv = *(const vf *)(b + obk * {X});",
            f"const {E} *wv = w + (int64_t)gptr[obk] * {X};"]
    rem = hw % W
    if rem:
        body += [f"if (p0 + {W} <= {hw}) {{", *["  " + ln for ln in tile(W)], "} else {",
                 *["  " + ln for ln in tile(rem)], "}"]
    else:
        body += tile(W)
    items = n * ob * nt
    nnz = int((c.la.params["weight"] != 0).sum())
    L = [c.x(), *c.skip(), c.y(), c.w(0, "w"), c.w(1, "b"), ints(c, 2, "offs"),
         ints(c, 3, "gptr"), *c.lang.over_items(c, items, body)]
    return L, items, 2 * n * nnz * hw
