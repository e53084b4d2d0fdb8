"""The ``csr`` and ``bcsr`` sparse convs: one (offset, value) list per filter (m = 1) or per
block of m filters, streamed over vectors of consecutive output positions of the padded,
phase-split input planes (see the package docstring)."""

from __future__ import annotations

import numpy as np

from codegen.emit.cstyle import Ctx
from codegen.emit.sparse.common import balanced_order, i32, ints, store
from codegen.isa import VectorIsa
from codegen.lr import Layer


def pack_sparse_conv(la: Layer) -> tuple[np.ndarray, ...]:
    w, b = la.params["weight"], la.params["bias"]
    m = la.sparse.m
    geo = la.sparse.geometry
    oc, ic, kh, kw = w.shape
    s = la.attrs["stride"][0]
    g = -(-oc // m)
    wp = np.zeros((g * m, ic, kh, kw), np.float32)
    wp[:oc] = w
    bp = np.zeros(g * m, np.float32)
    bp[:oc] = b
    phase = {ph: i for i, ph in enumerate(geo.phases)}
    ps, wq = geo.ps, geo.wq
    nph = len(geo.phases)
    # offset of every (ic, ky, kx)
    ci, ky, kx = np.meshgrid(np.arange(ic), np.arange(kh), np.arange(kw), indexing="ij")
    if geo.direct:
        off = ci * ps
    else:
        ph = np.vectorize(lambda a, c: phase[(a, c)])(ky % s, kx % s)
        off = (ci * nph + ph) * ps + (ky // s) * wq + kx // s
    off = off.reshape(-1)
    blocks = wp.reshape(g, m, -1)
    lists = [np.flatnonzero(blocks[j].any(0)) for j in range(g)]
    lists = [li[np.argsort(off[li], kind="stable")] for li in lists]
    order = balanced_order([len(li) for li in lists])
    gptr, offs, vals = [0], [], []
    for j in order:
        li = lists[j]
        offs.append(off[li])
        vals.append(blocks[j][:, li].T)
        gptr.append(gptr[-1] + len(li))
    offs_a = np.concatenate(offs) if offs else np.zeros(0, np.int64)
    vals_a = np.concatenate(vals) if vals else np.zeros((0, m), np.float32)
    assert offs_a.max(initial=0) < 2**31
    return (np.ascontiguousarray(vals_a, np.float32).reshape(-1), bp, i32(offs_a),
            i32(gptr), i32(order))


# A conv whose (padded) input is this large streams it from beyond L2 through dozens of
# concurrent row streams, more than the hardware prefetchers follow: each kept weight's load
# prefetches its own stream PREFETCH_CHUNKS work items ahead. Measured (AVX-512, 1 thread,
# block-punched 8.2x, 3x3): 64 ch at 224x224 (12.8 MB) 7.0-7.5 -> 5.2-5.6 ms; 128 ch at
# 112x112 (6.4 MB) 4.7-5.4 -> 4.5-4.7; 512 ch at 28x28 (1.6 MB) and 14x14 no gain (at 28x28
# once 9 % slower). A distance of 3 chunks gained less.
PREFETCH_MIN_INPUT_BYTES = 4 << 20


PREFETCH_CHUNKS = 2


def spconv(c: Ctx) -> tuple[list[str], int, int]:
    """A csr/bcsr conv step (see the module docstring)."""
    isa: VectorIsa = c.lang.isa
    X, E = isa.floats, isa.elem
    la = c.la
    geo = la.sparse.geometry
    m, V = la.sparse.m, la.sparse.vectors
    n, oc, oh, ow = c.out
    g = -(-oc // m)
    plane = geo.plane
    chunk = V * X
    nch = -(-plane // chunk)
    i = "int64_t"
    acc = [[f"a{r}_{v}" for v in range(V)] for r in range(m)]
    body = [f"const {i} slot = it % {g}, ch = (it / {g}) % {nch}, n = it / {g * nch};",
            f"const {i} p0 = ch * {chunk};",
            f"const {E} *xb = x + n * {geo.xn} + p0;",
            f"const {i} grp = order[slot];",
            f"const {E} *bb = b + grp * {m};"]
    for r in range(m):
        body.append(f"vf {', '.join(acc[r])};")
        body.append(f"{{ const vf bv = (vf){{}} + bb[{r}]; "
                    + " ".join(f"{a} = bv;" for a in acc[r]) + " }")
    body += [f"const {E} *wv = w + (int64_t)gptr[slot] * " + str(m) + ";",
             "for (int32_t e = gptr[slot], e1 = gptr[slot + 1]; e < e1; ++e, wv += "
             f"{m}) {{",
             f"  const {E} *xp = xb + offs[e];"]
    if geo.xn * isa.elem_bytes >= PREFETCH_MIN_INPUT_BYTES:
        body += [f"  __builtin_prefetch(xp + {PREFETCH_CHUNKS * chunk});"]
    if isa.elem_bytes == 2 and m == X and isa.by_lane:
        # fp16, a block of X filters (NEON FP16: m = 8): one vector load of its X weights,
        # FMLA by element, where X scalar loads (ldr h) also held X registers and the
        # accumulators spilled: 55 instructions an entry (m = 8, V = 3) -> 29
        body.append("  const vf wl = *(const vfu *)wv;")
        ws = [f"wl[{r}]" for r in range(m)]
    else:
        body += [f"  const {E} w{r} = wv[{r}];" for r in range(m)]
        ws = [f"w{r}" for r in range(m)]
    for v in range(V):
        body.append(f"  {{ const vf xv = *(const vfu *)(xp + {v * X});"
                    + "".join(f" {acc[r][v]} += xv * {ws[r]};" for r in range(m)) + " }")
    body.append("}")
    body += store(c, acc, m, "grp")
    items = n * nch * g
    nnz = int((la.params["weight"] != 0).sum())
    L = [c.x(), *c.skip(), c.y(), c.w(0, "w"), c.w(1, "b"), ints(c, 2, "offs"),
         ints(c, 3, "gptr"), ints(c, 4, "order"), *c.lang.over_items(c, items, body)]
    return L, items, 2 * n * nnz * oh * ow
