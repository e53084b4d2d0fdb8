"""What the sparse formats share: int32 params in the float blob, the load-balancing order
of index lists, the block packing (linear and blocked 1x1), and the plain-NCHW store of a
sparse conv's accumulators with the padding's columns dropped."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from codegen.emit.cstyle import Ctx


def i32(a: npt.ArrayLike) -> np.ndarray:
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


def pack_blocks(w: np.ndarray, b: np.ndarray, x: int,
                offset: Callable[[np.ndarray], np.ndarray]) -> tuple[np.ndarray, ...]:
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
            i32(np.concatenate(offs)), i32(gptr))


def ints(c: Ctx, k: int, name: str) -> str:
    return f"const int32_t *restrict {name} = (const int32_t *){c.lang.param_ref(c, k)};"


# Measured on vgg16 at 8.2x (AVX-512, 1 thread, three runs of each bundle): vector stores
# took features.0 (3 input channels: few multiply-adds per stored output) from 2.8 to 2.3 ms;
# the 224- and 112-wide 3x3 layers were within noise (±5 %); the 56- and 28-wide ones 2-4 %
# slower (the per-vector test costs more than it saves once most stores are cheap relative
# to the multiply-adds, or most vectors cross a row end).
VEC_STORE_MIN_WIDTH = 7


def store(c: Ctx, acc: list[list[str]], m: int, grp: str) -> list[str]:
    """Lines storing the accumulators of filters ``grp * m + r`` (chunk p0 of the flat
    plane), with the epilogue, dropping the padding's columns: a vector whose positions all
    lie in one output row's columns is stored as it is (one unaligned store; the row and
    column divisions are by constants); one that crosses a row end or the plane's end goes
    lane by lane. Images narrower than VEC_STORE_MIN_WIDTH vectors, where most
    vectors cross a row end, store row segments element by element (``store_rows``)."""
    X, E = c.lang.isa.floats, c.lang.isa.elem
    if c.out[3] < VEC_STORE_MIN_WIDTH * X:
        return store_rows(c, acc, m, grp)
    geo = c.la.sparse.geometry
    V = len(acc[0])
    n, oc, oh, ow = c.out
    wq, plane, chunk = geo.wq, geo.plane, V * X
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
                     f"  {E} v = {acc[r][v]}[l];",
                     *["  " + ln for ln in c.epilogue("v", f"po + row * {ow} + col")],
                     f"  y[po + row * {ow} + col] = v;", "}"]
            body.append(f"  if (whole{v}) {{ " + " ".join(vec) + " }")
            body += ["  else {", *["    " + ln for ln in lanes], "  }"]
        body.append("}")
    return body


def store_rows(c: Ctx, acc: list[list[str]], m: int, grp: str) -> list[str]:
    """``store`` for narrow images: through ``buf``, one row segment at a time, element by
    element."""
    X, E = c.lang.isa.floats, c.lang.isa.elem
    geo = c.la.sparse.geometry
    V = len(acc[0])
    n, oc, oh, ow = c.out
    wq, plane, chunk = geo.wq, geo.plane, V * X
    i = "int64_t"
    body = [f"const {i} pend = p0 + {chunk} < {plane} ? p0 + {chunk} : {plane};",
            f"{E} buf[{chunk}] __attribute__((aligned(64)));"]
    for r in range(m):
        guard = f"if ({grp} * {m} + {r} < {oc}) " if oc % m else ""
        body.append(f"{guard}{{")
        body += [f"  *(vf *)(buf + {v * X}) = {acc[r][v]};" for v in range(V)]
        body.append(f"  const {i} po = (n * {oc} + {grp} * {m} + {r}) * {oh * ow};")
        if wq == ow:
            body += [f"  for ({i} q = p0; q < pend; ++q) {{",
                     f"    {E} v = buf[q - p0];",
                     *["    " + ln for ln in c.epilogue("v", "po + q")],
                     "    y[po + q] = v;", "  }"]
        else:
            body += [f"  for ({i} p = p0; p < pend;) {{",
                     f"    const {i} row = p / {wq}, rs = row * {wq};",
                     f"    const {i} seg = rs + {wq} < pend ? rs + {wq} : pend;",
                     f"    const {i} lim = rs + {ow} < seg ? rs + {ow} : seg;",
                     f"    const {i} yo = po + row * {ow} - rs;",
                     f"    for ({i} q = p; q < lim; ++q) {{",
                     f"      {E} v = buf[q - p0];",
                     *["      " + ln for ln in c.epilogue("v", "yo + q")],
                     "      y[yo + q] = v;", "    }",
                     "    p = seg;", "  }"]
        body.append("}")
    return body
