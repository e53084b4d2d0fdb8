"""What every vectorised CPU template shares: the vector types and activations (the prelude
of a vector source), and the lines that apply an epilogue or accumulate one input lane.

In fp16 sources (``VectorIsa.elem`` "_Float16", NEON FP16) ``vf`` is 8 halves and two more
types exist for the kernels that accumulate in float32: ``vw``, 8 floats (two NEON registers;
``widen``/``narrow`` convert with FCVTL/FCVTN), and ``vwu``, its unaligned form."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

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


VECTOR_PRELUDE_F16 = """\
typedef __INT16_TYPE__ int16_t;
typedef __INT32_TYPE__ int32_t;
typedef _Float16 vf __attribute__((vector_size(16), aligned(16), may_alias));
typedef _Float16 vfu __attribute__((vector_size(16), aligned(2), may_alias));
typedef int16_t vi __attribute__((vector_size(16)));
typedef float vw __attribute__((vector_size(32), aligned(16), may_alias));
typedef float vwu __attribute__((vector_size(32), aligned(4), may_alias));
static inline vf npas_vsel(vi k, vf a, vf b) { return (vf)(((vi)a & k) | ((vi)b & ~k)); }
"""

# A float constant that is not exact in half precision (1/6) does not convert to a _Float16
# vector implicitly: the fp16 forms of the activations cast it.
_INEXACT = re.compile(r"\((\d+\.\d+f / \d+\.\d+f)\)")


def half(isa: VectorIsa | None) -> bool:
    """Whether ``isa``'s kernels store and compute in _Float16."""
    return isa is not None and isa.elem == "_Float16"


def ptag(isa: VectorIsa) -> str:
    """The precision in a kernel's name, before ``__``: "_f16" for fp16, nothing for fp32 (the
    fp32 names predate it)."""
    return "_f16" if half(isa) else ""


def widen(v: str) -> str:
    """An fp16 vector expression as 8 floats (``vw``)."""
    return f"__builtin_convertvector({v}, vw)"


def narrow(v: str) -> str:
    """8 floats (``vw``) as an fp16 vector."""
    return f"__builtin_convertvector({v}, vf)"


def vector_activation(name: str, isa: VectorIsa) -> str:
    """``npas_v_<name>``, the vector form of an activation (``ACTIVATIONS[name].vec_body``):
    a one-line body stays on the signature's line."""
    body = ACTIVATIONS[name].vec_body.replace("{lanes}", str(isa.floats))
    if half(isa):
        body = _INEXACT.sub(r"((_Float16)(\1))", body)
    lines = body.split("\n")
    head = f"static inline vf npas_v_{name}(vf v) {{"
    if len(lines) == 1:
        return f"{head} {lines[0]} }}\n"
    return head + "\n" + "".join(f"  {ln}\n" for ln in lines) + "}\n"


def vector_prelude(isa: VectorIsa, names: Sequence[str] | None = None) -> str:
    """The vector types and activations: ``names`` (``used_activations(graph)``), or all."""
    return ((VECTOR_PRELUDE_F16 if half(isa) else VECTOR_PRELUDE % {"b": 4 * isa.floats})
            + "".join(vector_activation(a, isa) for a in ACTIVATIONS
                      if names is None or a in names))


def epi(epilogue: tuple[str, ...], var: str, skip: str | None = None) -> list[str]:
    """Lines applying ``epilogue`` to the vector ``var``; a fused residual ("add") adds the
    vector at ``skip`` (the same NCHW[x]c position in the layer's second input)."""
    return [f"{var} += *(const vf *)({skip});" if e == "add" else f"{var} = npas_v_{e}({var});"
            for e in epilogue]


def skip_param(epilogue: tuple[str, ...], elem: str = "float") -> str:
    """The micro-kernel parameter for a fused residual, right after y (strided like y)."""
    return f"const {elem} *restrict s, " if "add" in epilogue else ""


def lane_fma(indent: str, X: int, acc: list[list[str]], x_at: Callable[[int], str],
             elem: str = "float") -> list[str]:
    """One input lane of a register-blocked micro-kernel: load a weight vector per oc block
    (``wp + o * wb + l * X``), broadcast each column's input scalar ``x_at(j)`` and accumulate
    into ``acc[o][j]``. Shared by the direct convolution and the Winograd per-point GEMM."""
    L = [f"{indent}const vf w{o} = *(const vf *)(wp + {o} * wb + l * {X});"
         for o in range(len(acc))]
    for j in range(len(acc[0])):
        L.append(f"{indent}const {elem} x{j} = {x_at(j)};")
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
