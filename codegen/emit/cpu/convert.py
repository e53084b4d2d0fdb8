"""The layout conversions at a blocked region's edges: NCHW -> NCHW[x]c (``to_nchwxc`` steps,
pad lanes zero) and back (``to_nchw``), through L1-sized tiles."""

from __future__ import annotations

from codegen.emit.cstyle import Ctx

# Layout conversions go through tiles of CONVERT_TILE positions so that the strided side of
# the transpose stays in L1 (one pass per lane over a whole plane thrashed it: 0.8 ms for
# resnet18's 64x112x112 stem output on the AVX-512 host).
CONVERT_TILE = 64


def to_blocked(c: Ctx) -> tuple[list[str], int, int]:
    """NCHW -> NCHW[x]c, pad lanes zero: items (n, channel block). In fp16 graphs it may read
    a float32 graph input (the assignment converts)."""
    X = c.lang.isa.floats
    xs, E = c.lang.tensor_scalar(c.graph, c.la.inputs[0]), c.lang.isa.elem
    n, ch, h, w = c.ins[0]
    cbk = c.out[1]
    hw, t = h * w, CONVERT_TILE
    i = "int64_t"
    body = [f"const {i} n = it / {cbk}, cb = it % {cbk};",
            f"{E} *yp = y + it * {hw * X};",
            f"for ({i} p0 = 0; p0 < {hw}; p0 += {t}) {{",
            f"  const {i} p1 = p0 + {t} < {hw} ? p0 + {t} : {hw};",
            f"  for ({i} l = 0; l < {X}; ++l) {{",
            f"    const {i} ch = cb * {X} + l;",
            "    if (ch < " + str(ch) + ") {",
            f"      const {xs} *xp = x + (n * {ch} + ch) * {hw};",
            f"      for ({i} p = p0; p < p1; ++p) yp[p * {X} + l] = xp[p];",
            f"    }} else {{ for ({i} p = p0; p < p1; ++p) yp[p * {X} + l] = 0.0f; }}",
            "  }", "}"]
    items = n * cbk
    return [c.x(), c.y(), *c.lang.over_items(c, items, body)], items, 0


def to_plain(c: Ctx) -> tuple[list[str], int, int]:
    """NCHW[x]c -> NCHW, pad lanes dropped: items (n, channel block). In fp16 graphs it may
    write a float32 graph output (the assignment converts)."""
    X = c.lang.isa.floats
    ys, E = c.lang.tensor_scalar(c.graph, c.la.output), c.lang.isa.elem
    n, ch, h, w = c.out
    cbk = c.ins[0][1]
    hw, t = h * w, CONVERT_TILE
    i = "int64_t"
    body = [f"const {i} n = it / {cbk}, cb = it % {cbk};",
            f"const {E} *xp = x + it * {hw * X};",
            f"const {i} lanes = {ch} - cb * {X} < {X} ? {ch} - cb * {X} : {X};",
            f"for ({i} p0 = 0; p0 < {hw}; p0 += {t}) {{",
            f"  const {i} p1 = p0 + {t} < {hw} ? p0 + {t} : {hw};",
            f"  for ({i} l = 0; l < lanes; ++l) {{",
            f"    {ys} *yp = y + (n * {ch} + cb * {X} + l) * {hw};",
            f"    for ({i} p = p0; p < p1; ++p) yp[p] = xp[p * {X} + l];",
            "  }", "}"]
    items = n * cbk
    return [c.x(), c.y(), *c.lang.over_items(c, items, body)], items, 0
