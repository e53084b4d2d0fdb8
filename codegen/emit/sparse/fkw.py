"""Filter-kernel-weight (``fkw``): pattern and connectivity pruning. Per filter its kept
kernels are grouped by shape into runs; a run loads its tap offsets once and then does
T weights x V vectors of FMAs per kernel with no index arithmetic."""

from __future__ import annotations

import numpy as np

from codegen.cost import fkw_shapes
from codegen.emit.cstyle import Ctx
from codegen.emit.sparse.common import balanced_order, i32, ints, store
from codegen.lr import Layer


def _tap_offsets(la: Layer, shape: np.ndarray) -> list[int]:
    """Offsets (within one input channel's planes) of the kept positions of a kernel shape."""
    geo = la.sparse.geometry
    kw = la.params["weight"].shape[3]
    s = la.attrs["stride"][0]
    phase = {ph: i for i, ph in enumerate(geo.phases)}
    out = []
    for pos in np.flatnonzero(shape):
        ky, kx = divmod(int(pos), kw)
        out.append(0 if geo.direct else
                   phase[(ky % s, kx % s)] * geo.ps + (ky // s) * geo.wq + kx // s)
    return out


def pack_fkw(la: Layer) -> tuple[np.ndarray, ...]:
    """FKW: per filter, its kept kernels grouped by shape into runs (shape, first, end); each
    kernel one channel offset and its T kept weights; filters in ``balanced_order`` of their
    kernel counts. Params: vals [kernels][T], bias [oc], koff [kernels], runs [R][3], sptr
    [oc+1] (each slot's runs), order [oc], taps [shapes][T] (tap offsets)."""
    w, b = la.params["weight"], la.params["bias"]
    oc, ic, kh, kw = w.shape
    geo = la.sparse.geometry
    nph = len(geo.phases)
    shapes = fkw_shapes(w != 0)
    assert shapes is not None
    code = {tuple(sh.tolist()): j for j, sh in enumerate(shapes)}
    kern = w.reshape(oc, ic, kh * kw)
    per_filter = []
    for f in range(oc):
        ks = [(code[tuple((kern[f, c] != 0).tolist())], c) for c in range(ic) if kern[f, c].any()]
        per_filter.append(sorted(ks))
    order = balanced_order([len(k) for k in per_filter])
    vals, koff, runs, sptr = [], [], [], [0]
    for f in order:
        prev = None
        for sh, c in per_filter[f]:
            if sh != prev:
                runs.append([sh, len(koff), len(koff)])
                prev = sh
            runs[-1][2] += 1
            koff.append(c * nph * geo.ps)
            vals.append(kern[f, c][shapes[sh]])
        sptr.append(len(runs))
    taps = [_tap_offsets(la, sh) for sh in shapes]
    return (np.asarray(vals, np.float32).reshape(-1), np.asarray(b, np.float32), i32(koff),
            i32(np.asarray(runs).reshape(-1)), i32(sptr), i32(order), i32(taps))


def fkw_conv(c: Ctx) -> tuple[list[str], int, int]:
    """An FKW conv step: items (n, chunk, filter slot); per run of one kernel shape its T tap
    offsets are loaded once, then every kernel of the run is T weights x V vectors of FMAs with
    no index arithmetic or branches."""
    X, E = c.lang.isa.floats, c.lang.isa.elem
    la = c.la
    geo = la.sparse.geometry
    V = la.sparse.vectors
    n, oc, oh, ow = c.out
    taps = int((la.params["weight"] != 0).reshape(-1, la.params["weight"][0, 0].size)
               .sum(1).max())
    plane, chunk = geo.plane, V * X
    nch = -(-plane // chunk)
    i = "int64_t"
    acc = [[f"a0_{v}" for v in range(V)]]
    body = [f"const {i} slot = it % {oc}, ch = (it / {oc}) % {nch}, n = it / {oc * nch};",
            f"const {i} p0 = ch * {chunk};",
            f"const {E} *xb = x + n * {geo.xn} + p0;",
            f"const {i} grp = order[slot];",
            f"vf {', '.join(acc[0])};",
            "{ const vf bv = (vf){} + b[grp]; " + " ".join(f"{a} = bv;" for a in acc[0])
            + " }",
            "for (int32_t r = sptr[slot], r1 = sptr[slot + 1]; r < r1; ++r) {",
            "  const int32_t *rr = runs + 3 * r;",
            f"  const int32_t *tp = taps + rr[0] * {taps};",
            *[f"  const {i} t{j} = tp[{j}];" for j in range(taps)],
            f"  const {E} *wk = w + (int64_t)rr[1] * {taps};",
            f"  for (int32_t k = rr[1], k1 = rr[2]; k < k1; ++k, wk += {taps}) {{",
            f"    const {E} *xp = xb + koff[k];"]
    body += [f"    const {E} w{j} = wk[{j}];" for j in range(taps)]
    for j in range(taps):
        body.append("    " + " ".join(f"{acc[0][v]} += *(const vfu *)(xp + t{j} + {v * X}) * w{j};"
                                      for v in range(V)))
    body += ["  }", "}"]
    body += store(c, acc, 1, "grp")
    items = n * nch * oc
    nnz = int((la.params["weight"] != 0).sum())
    L = [c.x(), *c.skip(), c.y(), c.w(0, "w"), c.w(1, "b"), ints(c, 2, "koff"),
         ints(c, 3, "runs"), ints(c, 4, "sptr"), ints(c, 5, "order"), ints(c, 6, "taps"),
         *c.lang.over_items(c, items, body)]
    return L, items, 2 * n * nnz * oh * ow
