"""Per-channel scaling (squeeze-excite's ``mul_channel``) on blocked tensors, one vector of
channels at a time, with the epilogue in registers."""

from __future__ import annotations

from codegen.emit.cpu.prelude import epi
from codegen.emit.cstyle import Ctx
from codegen.lr import numel


def mul_channel_blocked(c: Ctx) -> tuple[list[str], int, int]:
    X, E = c.lang.isa.floats, c.lang.isa.elem
    n, cbk, h, w, _ = c.out
    i = "int64_t"
    body = [f"const vf sv = *(const vf *)(s + it * {X});",
            f"const {E} *xp = x + it * {h * w * X};",
            f"{E} *yp = y + it * {h * w * X};",
            f"for ({i} p = 0; p < {h * w * X}; p += {X}) {{",
            "  vf v = *(const vf *)(xp + p) * sv;", *["  " + e for e in epi(c.la.epilogue, "v")],
            "  *(vf *)(yp + p) = v;", "}"]
    items = n * cbk
    return [c.x(0), c.x(1, "s"), c.y(), *c.lang.over_items(c, items, body)], items, numel(c.out)
