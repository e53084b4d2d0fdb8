"""The ``sparse_pad`` step: a plain NCHW tensor copied into the zero-padded, phase-split planes
that strided or padded sparse convs read (shared by the convs of one geometry)."""

from __future__ import annotations

from codegen.emit.cstyle import Ctx


def sparse_pad(c: Ctx) -> tuple[list[str], int, int]:
    """Zero-padded, phase-split planes of a plain NCHW tensor for sparse convs; items
    (n, channel)."""
    a = c.la.attrs
    n, ch, h, w = c.ins[0]
    s = a["stride"]
    pt, _, pl, _ = a["padding"]
    hq, wq, ps = a["Hq"], a["Wq"], a["PS"]
    i, E = "int64_t", c.lang.isa.elem if c.lang.isa is not None else "float"
    # fp16: the same copy on halves, under its own name (the fp32 helper's text unchanged)
    copy = "npas_copy_strided" if E == "float" else "npas_copy_strided_f16"
    body = [f"const {E} *xi = x + it * {h * w};",
            f"{E} *yo = y + it * {len(a['phases']) * ps};"]
    for k, (pa, pb) in enumerate(a["phases"]):
        # columns q whose source column s*q + pb - pl lies in [0, w)
        q_lo = max(0, -(-(pl - pb) // s))
        q_hi = max(q_lo, min(wq, (w - 1 + pl - pb) // s + 1))
        body += ["{", f"  {E} *yp = yo + {k * ps};",
                 f"  for ({i} r = 0; r < {hq}; ++r) {{",
                 f"    const {i} ih = r * {s} + {pa - pt};",
                 f"    {E} *yr = yp + r * {wq};",
                 f"    if (ih < 0 || ih >= {h}) {{ for ({i} q = 0; q < {wq}; ++q) yr[q] = 0.0f;"
                 " continue; }",
                 f"    const {E} *xr = xi + ih * {w} + {pb - pl};",
                 f"    for ({i} q = 0; q < {q_lo}; ++q) yr[q] = 0.0f;",
                 f"    {copy}(yr + {q_lo}, xr + {q_lo * s}, {q_hi - q_lo}, {s});",
                 f"    for ({i} q = {q_hi}; q < {wq}; ++q) yr[q] = 0.0f;",
                 "  }",
                 f"  for ({i} q = {hq * wq}; q < {ps}; ++q) yp[q] = 0.0f;", "}"]
    items = n * ch
    c.lang.helpers.setdefault(copy, COPY_STRIDED if E == "float" else
                              COPY_STRIDED.replace("npas_copy_strided", copy)
                              .replace("float", E))
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
