"""Sparse CPU kernels: pruned convolutions and linear layers that skip their zeros.

A sparse conv (``Layer.storage`` "csr" or "bcsr", chosen by ``codegen/passes/sparse.py``) reads
plain NCHW and writes plain NCHW. Its input is read as one flat plane per input channel and
stride phase: the ``sparse_pad`` step copies the input into zero-padded planes Q_ab[r][q] =
x_padded[s*r + a][s*q + b] (one per phase (a, b) the kernel uses), each ``PS`` floats long with
zeros after its ``Hq x Wq`` data; a 1x1 stride-1 unpadded conv reads its input directly. Then
output position p = oh*Wq + ow of every filter is

    y'[p] = sum over kept weights (ic, ky, kx) of w * Q[ic, ky%s, kx%s][p + (ky//s)*Wq + kx//s]

so each kept weight is one (offset, value) pair and the inner loop streams vectors of
consecutive p: one unaligned load and one FMA per vector, no branches, no index arithmetic.
Columns ow >= OW of y' (the padding's) are computed and dropped when storing.

Formats (params, in order):
- ``csr`` (m = 1) and ``bcsr`` (m filters share one index list; their union, zero-filled):
  ``vals`` [entries][m] float, ``bias`` [groups*m], ``offs`` [entries] int32 (the offset
  above), ``gptr`` [groups+1] int32 (each group's entries), ``order`` [groups] int32 (the
  group computed in each slot). Groups are ordered by index-list length, longest and shortest
  alternating, so any contiguous range of work items (what one thread gets) carries an even
  share of the work. Work items: (n, chunk of V vectors of p, group slot), slots innermost so
  a thread reuses the same input chunk across filters.
- linear ``bcsr``: blocks of x outputs (the vector width), kept input indices per block:
  ``vals`` [entries][x], ``bias`` [blocks*x], ``offs`` [entries] int32, ``gptr``.
- conv ``bcsr_blocked`` (1x1, stride 1): the linear format on the [oc, ic] matrix, on blocked
  NCHW[x]c activations (the one sparse conv that is): ``offs`` holds each kept input
  channel's offset in the blocked image; vectorised over the x outputs of a block, the input
  broadcast, a tile of W positions per work item.

Int32 arrays travel in the float32 weight blob bit for bit (``np.ndarray.view``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from codegen.emit.vec import linear_store
from codegen.isa import VectorIsa
from codegen.lr import Layer


def _i32(a) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(a, np.int32)).view(np.float32)


def balanced_order(lengths: list[int]) -> list[int]:
    """Indices sorted by length, taken longest, shortest, second longest, ... ."""
    by = sorted(range(len(lengths)), key=lambda g: (-lengths[g], g))
    out, lo, hi = [], 0, len(by) - 1
    while lo <= hi:
        out.append(by[lo])
        if lo != hi:
            out.append(by[hi])
        lo, hi = lo + 1, hi - 1
    return out


def pack_sparse_conv(la: Layer) -> tuple[np.ndarray, ...]:
    w, b = la.params["weight"], la.params["bias"]
    m = int(la.tuning["m"])
    geo = la.attrs["sparse"]
    oc, ic, kh, kw = w.shape
    s = la.attrs["stride"][0]
    g = -(-oc // m)
    wp = np.zeros((g * m, ic, kh, kw), np.float32)
    wp[:oc] = w
    bp = np.zeros(g * m, np.float32)
    bp[:oc] = b
    phase = {ph: i for i, ph in enumerate(geo["phases"])}
    ps, wq = geo["PS"], geo["Wq"]
    nph = len(geo["phases"])
    # offset of every (ic, ky, kx)
    ci, ky, kx = np.meshgrid(np.arange(ic), np.arange(kh), np.arange(kw), indexing="ij")
    if geo["direct"]:
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
    return (np.ascontiguousarray(vals_a, np.float32).reshape(-1), bp, _i32(offs_a),
            _i32(gptr), _i32(order))


def pack_sparse_linear(la: Layer, x: int) -> tuple[np.ndarray, ...]:
    return _pack_blocks(la.params["weight"], la.params["bias"], x, lambda li: li)


def pack_sparse_conv1x1_blocked(la: Layer, x: int, hw: int) -> tuple[np.ndarray, ...]:
    """bcsr_blocked: the block Linear's format on the [oc, ic] matrix, each kept input channel
    ic stored as its offset in a blocked image, (ic // x) * hw * x + ic % x."""
    w = la.params["weight"]
    return _pack_blocks(w.reshape(w.shape[0], -1), la.params["bias"], x,
                        lambda li: (li // x) * hw * x + li % x)


def _pack_blocks(w: np.ndarray, b: np.ndarray, x: int, offset) -> tuple[np.ndarray, ...]:
    o, k = w.shape
    g = -(-o // x)
    wp = np.zeros((g * x, k), np.float32)
    wp[:o] = w
    bp = np.zeros(g * x, np.float32)
    bp[:o] = b
    blocks = wp.reshape(g, x, k)
    gptr, offs, vals = [0], [], []
    for j in range(g):
        li = np.flatnonzero(blocks[j].any(0))
        offs.append(offset(li))
        vals.append(blocks[j][:, li].T)
        gptr.append(gptr[-1] + len(li))
    return (np.ascontiguousarray(np.concatenate(vals), np.float32).reshape(-1), bp,
            _i32(np.concatenate(offs)), _i32(gptr))


def _ints(c: Any, k: int, name: str) -> str:
    return f"const int32_t *restrict {name} = (const int32_t *){c.lang.param_ref(c, k)};"


# Measured on vgg16 at 8.2x (AVX-512, 1 thread, three runs of each bundle): vector stores
# took features.0 (3 input channels: few multiply-adds per stored output) from 2.8 to 2.3 ms;
# the 224- and 112-wide 3x3 layers were within noise (±5 %); the 56- and 28-wide ones 2-4 %
# slower (the per-vector test costs more than it saves once most stores are cheap relative
# to the multiply-adds, or most vectors cross a row end).
VEC_STORE_MIN_WIDTH = 7


def _store(c: Any, acc: list[list[str]], m: int, grp: str) -> list[str]:
    """Lines storing the accumulators of filters ``grp * m + r`` (chunk p0 of the flat
    plane), with the epilogue, dropping the padding's columns: a vector whose positions all
    lie in one output row's columns is stored as it is (one unaligned store; the row and
    column divisions are by constants); one that crosses a row end or the plane's end goes
    lane by lane. Images narrower than VEC_STORE_MIN_WIDTH vectors, where most
    vectors cross a row end, store row segments element by element (``_store_rows``)."""
    X = c.lang.isa.floats
    if c.out[3] < VEC_STORE_MIN_WIDTH * X:
        return _store_rows(c, acc, m, grp)
    geo = c.la.attrs["sparse"]
    V = len(acc[0])
    n, oc, oh, ow = c.out
    wq, plane, chunk = geo["Wq"], geo["plane"], V * X
    i = "int64_t"
    body = [f"const {i} pend = p0 + {chunk} < {plane} ? p0 + {chunk} : {plane};"]
    for v in range(V):
        body += [f"const {i} q{v} = p0 + {v * X}, r{v} = q{v} / {wq}, "
                 f"c{v} = q{v} - r{v} * {wq}, yo{v} = r{v} * {ow} + c{v};",
                 f"const int whole{v} = q{v} + {X} <= pend && c{v} + {X} <= {ow};"]
    for r in range(m):
        guard = f"if ({grp} * {m} + {r} < {oc}) " if oc % m else ""
        body.append(f"{guard}{{")
        body.append(f"  const {i} po = (n * {oc} + {grp} * {m} + {r}) * {oh * ow};")
        for v in range(V):
            vec = [f"vf t = {acc[r][v]};",
                   *[f"t += *(const vfu *)(s + po + yo{v});" if e == "add"
                     else f"t = npas_v_{e}(t);" for e in c.la.epilogue],
                   f"*(vfu *)(y + po + yo{v}) = t;"]
            lanes = [f"for (int l = 0; l < {X}; ++l) {{",
                     f"  const {i} q = q{v} + l, row = q / {wq}, col = q - row * {wq};",
                     f"  if (q >= pend || col >= {ow}) continue;",
                     f"  float v = {acc[r][v]}[l];",
                     *["  " + ln for ln in c.epilogue("v", f"po + row * {ow} + col")],
                     f"  y[po + row * {ow} + col] = v;", "}"]
            body.append(f"  if (whole{v}) {{ " + " ".join(vec) + " }")
            body += ["  else {", *["    " + ln for ln in lanes], "  }"]
        body.append("}")
    return body


def _store_rows(c: Any, acc: list[list[str]], m: int, grp: str) -> list[str]:
    """``_store`` for narrow images: through ``buf``, one row segment at a time, element by
    element."""
    X = c.lang.isa.floats
    geo = c.la.attrs["sparse"]
    V = len(acc[0])
    n, oc, oh, ow = c.out
    wq, plane, chunk = geo["Wq"], geo["plane"], V * X
    i = "int64_t"
    body = [f"const {i} pend = p0 + {chunk} < {plane} ? p0 + {chunk} : {plane};",
            f"float buf[{chunk}] __attribute__((aligned(64)));"]
    for r in range(m):
        guard = f"if ({grp} * {m} + {r} < {oc}) " if oc % m else ""
        body.append(f"{guard}{{")
        body += [f"  *(vf *)(buf + {v * X}) = {acc[r][v]};" for v in range(V)]
        body.append(f"  const {i} po = (n * {oc} + {grp} * {m} + {r}) * {oh * ow};")
        if wq == ow:
            body += [f"  for ({i} q = p0; q < pend; ++q) {{",
                     "    float v = buf[q - p0];",
                     *["    " + ln for ln in c.epilogue("v", "po + q")],
                     "    y[po + q] = v;", "  }"]
        else:
            body += [f"  for ({i} p = p0; p < pend;) {{",
                     f"    const {i} row = p / {wq}, rs = row * {wq};",
                     f"    const {i} seg = rs + {wq} < pend ? rs + {wq} : pend;",
                     f"    const {i} lim = rs + {ow} < seg ? rs + {ow} : seg;",
                     f"    const {i} yo = po + row * {ow} - rs;",
                     f"    for ({i} q = p; q < lim; ++q) {{",
                     "      float v = buf[q - p0];",
                     *["      " + ln for ln in c.epilogue("v", "yo + q")],
                     "      y[yo + q] = v;", "    }",
                     "    p = seg;", "  }"]
        body.append("}")
    return body


# A conv whose (padded) input is this large streams it from beyond L2 through dozens of
# concurrent row streams, more than the hardware prefetchers follow: each kept weight's load
# prefetches its own stream PREFETCH_CHUNKS work items ahead. Measured (AVX-512, 1 thread,
# block-punched 8.2x, 3x3): 64 ch at 224x224 (12.8 MB) 7.0-7.5 -> 5.2-5.6 ms; 128 ch at
# 112x112 (6.4 MB) 4.7-5.4 -> 4.5-4.7; 512 ch at 28x28 (1.6 MB) and 14x14 no gain (at 28x28
# once 9 % slower). A distance of 3 chunks gained less.
PREFETCH_MIN_INPUT_BYTES = 4 << 20
PREFETCH_CHUNKS = 2


def spconv(c: Any) -> tuple[list[str], int, int]:
    """A csr/bcsr conv step (see the module docstring)."""
    isa: VectorIsa = c.lang.isa
    X = isa.floats
    la = c.la
    geo = la.attrs["sparse"]
    m, V = int(la.tuning["m"]), int(geo["V"])
    n, oc, oh, ow = c.out
    g = -(-oc // m)
    plane = geo["plane"]
    chunk = V * X
    nch = -(-plane // chunk)
    i = "int64_t"
    acc = [[f"a{r}_{v}" for v in range(V)] for r in range(m)]
    body = [f"const {i} slot = it % {g}, ch = (it / {g}) % {nch}, n = it / {g * nch};",
            f"const {i} p0 = ch * {chunk};",
            f"const float *xb = x + n * {geo['XN']} + p0;",
            f"const {i} grp = order[slot];",
            f"const float *bb = b + grp * {m};"]
    for r in range(m):
        body.append(f"vf {', '.join(acc[r])};")
        body.append(f"{{ const vf bv = (vf){{}} + bb[{r}]; "
                    + " ".join(f"{a} = bv;" for a in acc[r]) + " }")
    body += ["const float *wv = w + (int64_t)gptr[slot] * " + str(m) + ";",
             "for (int32_t e = gptr[slot], e1 = gptr[slot + 1]; e < e1; ++e, wv += "
             f"{m}) {{",
             "  const float *xp = xb + offs[e];"]
    if geo["XN"] * 4 >= PREFETCH_MIN_INPUT_BYTES:
        body += [f"  __builtin_prefetch(xp + {PREFETCH_CHUNKS * chunk});"]
    body += [f"  const float w{r} = wv[{r}];" for r in range(m)]
    for v in range(V):
        body.append(f"  {{ const vf xv = *(const vfu *)(xp + {v * X});"
                    + "".join(f" {acc[r][v]} += xv * w{r};" for r in range(m)) + " }")
    body.append("}")
    body += _store(c, acc, m, "grp")
    items = n * nch * g
    nnz = int((la.params["weight"] != 0).sum())
    L = [c.x(), *c.skip(), c.y(), c.w(0, "w"), c.w(1, "b"), _ints(c, 2, "offs"),
         _ints(c, 3, "gptr"), _ints(c, 4, "order"), *c.lang.over_items(c, items, body)]
    return L, items, 2 * n * nnz * oh * ow


def sparse_pad(c: Any) -> tuple[list[str], int, int]:
    """Zero-padded, phase-split planes of a plain NCHW tensor for sparse convs; items
    (n, channel)."""
    a = c.la.attrs
    n, ch, h, w = c.ins[0]
    s = a["stride"]
    pt, _, pl, _ = a["padding"]
    hq, wq, ps = a["Hq"], a["Wq"], a["PS"]
    i = "int64_t"
    body = [f"const float *xi = x + it * {h * w};",
            f"float *yo = y + it * {len(a['phases']) * ps};"]
    for k, (pa, pb) in enumerate(a["phases"]):
        # columns q whose source column s*q + pb - pl lies in [0, w)
        q_lo = max(0, -(-(pl - pb) // s))
        q_hi = max(q_lo, min(wq, (w - 1 + pl - pb) // s + 1))
        body += ["{", f"  float *yp = yo + {k * ps};",
                 f"  for ({i} r = 0; r < {hq}; ++r) {{",
                 f"    const {i} ih = r * {s} + {pa - pt};",
                 f"    float *yr = yp + r * {wq};",
                 f"    if (ih < 0 || ih >= {h}) {{ for ({i} q = 0; q < {wq}; ++q) yr[q] = 0.0f;"
                 " continue; }",
                 f"    const float *xr = xi + ih * {w} + {pb - pl};",
                 f"    for ({i} q = 0; q < {q_lo}; ++q) yr[q] = 0.0f;",
                 f"    npas_copy_strided(yr + {q_lo}, xr + {q_lo * s}, {q_hi - q_lo}, {s});",
                 f"    for ({i} q = {q_hi}; q < {wq}; ++q) yr[q] = 0.0f;",
                 "  }",
                 f"  for ({i} q = {hq * wq}; q < {ps}; ++q) yp[q] = 0.0f;", "}"]
    items = n * ch
    c.lang.helpers.setdefault("npas_copy_strided", COPY_STRIDED)
    return [c.x(), c.y(), *c.lang.over_items(c, items, body)], items, 0


# The row copy of sparse_pad, kept out of GCC's loop vectoriser: GCC 12.2 at -O3 with AVX2 or
# AVX-512 vectorised it inline wrongly when a padded row is 16 floats wide (resnet18's 14x14
# layers came out wrong; tests/test_sparse.py::test_padded_planes_at_resnet_sizes). A copy
# is memory-bound anyway.
COPY_STRIDED = """\
#if defined(__GNUC__) && !defined(__clang__)
__attribute__((noinline, optimize("no-tree-loop-vectorize")))
#endif
static void npas_copy_strided(float *y, const float *x, int64_t n, int64_t s) {
  for (int64_t q = 0; q < n; ++q) y[q] = x[q * s];
}
"""


def spconv1x1_blocked(c: Any) -> tuple[list[str], int, int]:
    """A bcsr_blocked 1x1 conv on NCHW[x]c: items (n, output block, tile of W positions); W
    accumulator vectors (x outputs each) start at the bias; per kept input channel, one weight
    vector and W broadcast inputs, W FMAs; the epilogue (a fused residual read blocked) in
    registers, aligned vector stores. The last tile of a plane may be shorter."""
    X = c.lang.isa.floats
    n, ob, h, w, _ = c.out
    cb = c.ins[0][1]
    hw = h * w
    W = int(c.la.tuning["W"])
    nt = -(-hw // W)
    i = "int64_t"
    add = "add" in c.la.epilogue

    def tile(wt: int) -> list[str]:
        acc = [f"a{j}" for j in range(wt)]
        L = [f"vf {', '.join(acc)};", " ".join(f"{a} = bv;" for a in acc),
             "for (int32_t e = gptr[obk], e1 = gptr[obk + 1]; e < e1; ++e, wv += "
             f"{X}) {{",
             "  const vf wk = *(const vf *)wv;",
             "  const float *xp = xb + offs[e];",
             *[f"  {acc[j]} += xp[{j * X}] * wk;" for j in range(wt)], "}"]
        for j in range(wt):
            L += [f"{acc[j]} += *(const vf *)(sb + {j * X});" if e == "add"
                  else f"{acc[j]} = npas_v_{e}({acc[j]});" for e in c.la.epilogue]
            L.append(f"*(vf *)(yb + {j * X}) = {acc[j]};")
        return L

    body = [f"const {i} t = it % {nt}, obk = (it / {nt}) % {ob}, n = it / {nt * ob};",
            f"const {i} p0 = t * {W};",
            f"const float *xb = x + n * {cb * hw * X} + p0 * {X};",
            f"float *yb = y + ((n * {ob} + obk) * {hw} + p0) * {X};",
            *([f"const float *sb = s + ((n * {ob} + obk) * {hw} + p0) * {X};"] if add else []),
            f"const vf bv = *(const vf *)(b + obk * {X});",
            f"const float *wv = w + (int64_t)gptr[obk] * {X};"]
    rem = hw % W
    if rem:
        body += [f"if (p0 + {W} <= {hw}) {{", *["  " + ln for ln in tile(W)], "} else {",
                 *["  " + ln for ln in tile(rem)], "}"]
    else:
        body += tile(W)
    items = n * ob * nt
    nnz = int((c.la.params["weight"] != 0).sum())
    L = [c.x(), *c.skip(), c.y(), c.w(0, "w"), c.w(1, "b"), _ints(c, 2, "offs"),
         _ints(c, 3, "gptr"), *c.lang.over_items(c, items, body)]
    return L, items, 2 * n * nnz * hw


def linear_bcsr(c: Any) -> tuple[list[str], int, int]:
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
    L = [c.x(), c.y(), c.w(0, "w"), c.w(1, "b"), _ints(c, 2, "offs"), _ints(c, 3, "gptr"),
         *c.lang.over_items(c, items, body)]
    return L, items, 2 * n * nnz


# ---- filter-kernel-weight (FKW): pattern and connectivity pruning ----------------------------

def _tap_offsets(la: Layer, shape: np.ndarray) -> list[int]:
    """Offsets (within one input channel's planes) of the kept positions of a kernel shape."""
    geo = la.attrs["sparse"]
    kw = la.params["weight"].shape[3]
    s = la.attrs["stride"][0]
    phase = {ph: i for i, ph in enumerate(geo["phases"])}
    out = []
    for pos in np.flatnonzero(shape):
        ky, kx = divmod(int(pos), kw)
        out.append(0 if geo["direct"] else
                   phase[(ky % s, kx % s)] * geo["PS"] + (ky // s) * geo["Wq"] + kx // s)
    return out


def pack_fkw(la: Layer) -> tuple[np.ndarray, ...]:
    """FKW: per filter, its kept kernels grouped by shape into runs (shape, first, end); each
    kernel one channel offset and its T kept weights; filters in ``balanced_order`` of their
    kernel counts. Params: vals [kernels][T], bias [oc], koff [kernels], runs [R][3], sptr
    [oc+1] (each slot's runs), order [oc], taps [shapes][T] (tap offsets)."""
    from codegen.passes.sparse import fkw_shapes

    w, b = la.params["weight"], la.params["bias"]
    oc, ic, kh, kw = w.shape
    geo = la.attrs["sparse"]
    nph = len(geo["phases"])
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
            koff.append(c * nph * geo["PS"])
            vals.append(kern[f, c][shapes[sh]])
        sptr.append(len(runs))
    taps = [_tap_offsets(la, sh) for sh in shapes]
    return (np.asarray(vals, np.float32).reshape(-1), np.asarray(b, np.float32), _i32(koff),
            _i32(np.asarray(runs).reshape(-1)), _i32(sptr), _i32(order), _i32(taps))


def fkw_conv(c: Any) -> tuple[list[str], int, int]:
    """An FKW conv step: items (n, chunk, filter slot); per run of one kernel shape its T tap
    offsets are loaded once, then every kernel of the run is T weights x V vectors of FMAs with
    no index arithmetic or branches."""
    X = c.lang.isa.floats
    la = c.la
    geo = la.attrs["sparse"]
    V = int(geo["V"])
    n, oc, oh, ow = c.out
    taps = int((la.params["weight"] != 0).reshape(-1, la.params["weight"][0, 0].size)
               .sum(1).max())
    plane, chunk = geo["plane"], V * X
    nch = -(-plane // chunk)
    i = "int64_t"
    acc = [[f"a0_{v}" for v in range(V)]]
    body = [f"const {i} slot = it % {oc}, ch = (it / {oc}) % {nch}, n = it / {oc * nch};",
            f"const {i} p0 = ch * {chunk};",
            f"const float *xb = x + n * {geo['XN']} + p0;",
            f"const {i} grp = order[slot];",
            f"vf {', '.join(acc[0])};",
            "{ const vf bv = (vf){} + b[grp]; " + " ".join(f"{a} = bv;" for a in acc[0])
            + " }",
            "for (int32_t r = sptr[slot], r1 = sptr[slot + 1]; r < r1; ++r) {",
            "  const int32_t *rr = runs + 3 * r;",
            f"  const int32_t *tp = taps + rr[0] * {taps};",
            *[f"  const {i} t{j} = tp[{j}];" for j in range(taps)],
            f"  const float *wk = w + (int64_t)rr[1] * {taps};",
            f"  for (int32_t k = rr[1], k1 = rr[2]; k < k1; ++k, wk += {taps}) {{",
            "    const float *xp = xb + koff[k];"]
    body += [f"    const float w{j} = wk[{j}];" for j in range(taps)]
    for j in range(taps):
        body.append("    " + " ".join(f"{acc[0][v]} += *(const vfu *)(xp + t{j} + {v * X}) * w{j};"
                                      for v in range(V)))
    body += ["  }", "}"]
    body += _store(c, acc, 1, "grp")
    items = n * nch * oc
    nnz = int((la.params["weight"] != 0).sum())
    L = [c.x(), *c.skip(), c.y(), c.w(0, "w"), c.w(1, "b"), _ints(c, 2, "koff"),
         _ints(c, 3, "runs"), _ints(c, 4, "sptr"), _ints(c, 5, "order"), _ints(c, 6, "taps"),
         *c.lang.over_items(c, items, body)]
    return L, items, 2 * n * nnz * oh * ow
