"""What every vectorised CPU template shares: the vector types and activations (the prelude
of a vector source), and the lines that apply an epilogue or accumulate one input lane."""

from __future__ import annotations

from collections.abc import Callable

from codegen.isa import VectorIsa
from codegen.lr import ACTIVATIONS

AI = "static inline __attribute__((always_inline))"


VECTOR_PRELUDE = """\
typedef __INT32_TYPE__ int32_t;
typedef float vf __attribute__((vector_size(%(b)d), aligned(%(b)d), may_alias));
typedef float vfu __attribute__((vector_size(%(b)d), aligned(4), may_alias));
typedef int32_t vi __attribute__((vector_size(%(b)d)));
static inline vf npas_vsel(vi k, vf a, vf b) { return (vf)(((vi)a & k) | ((vi)b & ~k)); }
"""


def vector_activation(name: str, isa: VectorIsa) -> str:
    """``npas_v_<name>``, the vector form of an activation (``ACTIVATIONS[name].vec_body``):
    a one-line body stays on the signature's line."""
    lines = ACTIVATIONS[name].vec_body.replace("{lanes}", str(isa.floats)).split("\n")
    head = f"static inline vf npas_v_{name}(vf v) {{"
    if len(lines) == 1:
        return f"{head} {lines[0]} }}\n"
    return head + "\n" + "".join(f"  {ln}\n" for ln in lines) + "}\n"


def vector_prelude(isa: VectorIsa) -> str:
    return (VECTOR_PRELUDE % {"b": 4 * isa.floats}
            + "".join(vector_activation(a, isa) for a in ACTIVATIONS))


def epi(epilogue: tuple[str, ...], var: str, skip: str | None = None) -> list[str]:
    """Lines applying ``epilogue`` to the vector ``var``; a fused residual ("add") adds the
    vector at ``skip`` (the same NCHW[x]c position in the layer's second input)."""
    return [f"{var} += *(const vf *)({skip});" if e == "add" else f"{var} = npas_v_{e}({var});"
            for e in epilogue]


def skip_param(epilogue: tuple[str, ...]) -> str:
    """The micro-kernel parameter for a fused residual, right after y (strided like y)."""
    return "const float *restrict s, " if "add" in epilogue else ""


def lane_fma(indent: str, X: int, acc: list[list[str]], x_at: Callable[[int], str]
             ) -> list[str]:
    """One input lane of a register-blocked micro-kernel: load a weight vector per oc block
    (``wp + o * wb + l * X``), broadcast each column's input scalar ``x_at(j)`` and accumulate
    into ``acc[o][j]``. Shared by the direct convolution and the Winograd per-point GEMM."""
    L = [f"{indent}const vf w{o} = *(const vf *)(wp + {o} * wb + l * {X});"
         for o in range(len(acc))]
    for j in range(len(acc[0])):
        L.append(f"{indent}const float x{j} = {x_at(j)};")
        L += [f"{indent}{acc[o][j]} += x{j} * w{o};" for o in range(len(acc))]
    return L


def by_lane_fma(indent: str, X: int, acc: list[list[str]], x_vec_at: Callable[[int], str]
                ) -> list[str]:
    """All X input lanes of a register-blocked micro-kernel on an ISA that multiplies by a
    register's lane (``VectorIsa.by_lane``): a weight vector per oc block and lane (``wp + o *
    wb + l * X``), then per column one load of its X input channels (``x_vec_at(j)``, a
    pointer) and X FMAs by lane per oc block: one load per X * oc_tile FMAs, where
    ``lane_fma`` loads every scalar."""
    L = [f"{indent}const vf w{o}_{lane} = *(const vf *)(wp + {o} * wb + {lane * X});"
         for o in range(len(acc)) for lane in range(X)]
    for j in range(len(acc[0])):
        L.append(f"{indent}const vf x{j} = *(const vfu *)({x_vec_at(j)});")
        L += [f"{indent}{acc[o][j]} += w{o}_{lane} * x{j}[{lane}];"
              for lane in range(X) for o in range(len(acc))]
    return L
