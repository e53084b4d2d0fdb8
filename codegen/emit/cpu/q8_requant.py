"""The int8 kernels' requantization, written once for ``q8.py``, ``q8_neon.py`` and the sparse
int8 kernels: int32 accumulators to the layer's uint8 (or float32) output as ``codegen.quant``
defines it, bit for bit (see ``q8.py``'s notes); on NEON ``requant_neon`` (``q8_neon.py``'s
notes: FCVTNS, the clamps in int32, saturating narrows, two pixels a store).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from codegen.isa import QuantIsa
from codegen.quant import LayerQuant

MAGIC = "12582912.0f"  # 1.5 * 2^23


def fl(v: float) -> str:
    """A float32 constant, exactly."""
    return float(np.float32(v)).hex() + "f"


def requant(lq: LayerQuant, acc: str, mv: str, store: str, skip: str | None) -> list[str]:
    """Lines turning the int32 vector ``acc`` into the output at ``store`` (a pointer
    expression); ``mv``: the multiplier vector; ``skip``: the residual's uint8 pointer. The
    layer's constants are the variables ``qzs``, ``qms`` (residual), ``qlo``, ``qhi`` (clamp)
    and ``qzy`` (zero point), declared by ``requant_constants``."""
    L = [f"{{ vf v = __builtin_convertvector({acc}, vf) * {mv};"]
    if skip is not None:
        L.append(f"  v += __builtin_convertvector(npas_u8x({skip}) - qzs, vf) * qms;")
    if lq.lo is not None:
        L.append("  { const vf lo = (vf){} + qlo; v = npas_vsel(v < lo, lo, v); }")
    if lq.hi is not None:
        L.append("  { const vf hi = (vf){} + qhi; v = npas_vsel(v > hi, hi, v); }")
    if lq.y is None:
        return [*L, f"  *(vf *)({store}) = v; }}"]
    return [*L, f"  v = (v + {MAGIC}) - {MAGIC};",
            f"  *(vq *)({store}) = __builtin_convertvector(__builtin_convertvector(v, vi) + "
            "qzy, vq); }"]


REQUANT_PARAMS = "int32_t qzx, int32_t qzs, float qms, float qlo, float qhi, int32_t qzy"


def requant_row(q: QuantIsa, lq: LayerQuant, accs: list[str], mv: str, store, skip
                ) -> list[str]:
    """``requant`` of neighbouring pixels' accumulators ``accs`` (``store(j)``, ``skip(j)``:
    column j's pointers; ``skip`` None without a residual); NEON pairs them
    (``requant_neon``)."""
    if q.name != "neondot" or lq.y is None:
        return [ln for j, a in enumerate(accs)
                for ln in requant(lq, a, mv, store(j), skip(j) if skip else None)]
    L = []
    for j in range(0, len(accs), 2):
        L += requant_neon(lq, [(accs[i], mv, store(i), skip(i) if skip else None)
                                  for i in range(j, min(j + 2, len(accs)))])
    return L


def requant_args(lq: LayerQuant) -> str:
    """The values of ``REQUANT_PARAMS`` for layer constants ``lq``."""
    return (f"{lq.x.zero}, {lq.skip.zero if lq.skip else 0}, {fl(lq.skip_mult)}, "
            f"{fl(lq.lo or 0.0)}, {fl(lq.hi or 0.0)}, {lq.y.zero if lq.y else 0}")


def requant_constants(lq: LayerQuant) -> list[str]:
    """``REQUANT_PARAMS`` as local constants (for kernels without a micro-kernel)."""
    vals = requant_args(lq).split(", ")
    return [f"const {p} = {v}; (void){p.split()[-1]};"
            for p, v in zip(REQUANT_PARAMS.split(", "), vals, strict=True)]


def epilogue_tag(lq: LayerQuant, epilogue: tuple[str, ...]) -> str:
    return "".join(f"_{e}" for e in epilogue) + ("_dq" if lq.y is None else "")


def requant_neon(lq: LayerQuant, items: Sequence[tuple[str, str, str, str | None]]) -> list[str]:
    """Lines requantizing one or two int32 vectors ``(acc, mult vector, store, skip)`` to a
    uint8 output (two: neighbouring pixels, one 8-byte store at the first's place). The
    layer's constants are ``REQUANT_PARAMS`` (q8.py), known where the kernel is inlined: the
    clamps the saturation does not give fold away."""
    assert lq.y is not None and 1 <= len(items) <= 2
    L = ["{ const int32_t qli = (int32_t)__builtin_rintf(qlo) + qzy, "
         "qhi_ = (int32_t)__builtin_rintf(qhi) + qzy;"]
    for i, (acc, mv, _, skip) in enumerate(items):
        L.append(f"  vf v{i} = __builtin_convertvector({acc}, vf) * {mv};")
        if skip is not None:
            L.append(f"  v{i} += __builtin_convertvector(npas_u8x({skip}) - qzs, vf) * qms;")
        L += [f"  vi r{i} = npas_rndn(v{i}) + qzy;",
              f"  if (qli > 0) r{i} = npas_smax(r{i}, qli);",
              f"  if (qhi_ < 255) r{i} = npas_smin(r{i}, qhi_);"]
    if len(items) == 2:
        L.append(f"  *(npas_i64u *)({items[0][2]}) = npas_sat8x2(r0, r1); }}")
    else:
        L.append(f"  *(npas_i32u *)({items[0][2]}) = npas_sat8(r0); }}")
    return L
