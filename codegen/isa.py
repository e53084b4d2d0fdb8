"""Vector ISAs the CPU kernels are written for: what a target's SIMD unit looks like to codegen.

A ``VectorIsa`` is the data the blocked layout pass and the vectorised templates need: the
vector width in floats (the channel block of NCHW[x]c), the number of vector registers (which
bounds a micro-kernel's accumulator tile), the name that goes after ``__`` in a kernel's name,
and whether it multiplies by a register's lane (``by_lane``). The toolchain picks one from the
target's features (``isa_for``); the same C source (GCC/Clang vector extensions) compiles to
any of them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class VectorIsa:
    name: str  # kernel-name suffix: conv2d_3x3s1_nchw16c__avx512_14w
    floats: int  # float32 lanes per vector register: the channel block
    registers: int  # architectural vector registers
    # FMA by element (NEON's FMLA v.4s, v.4s, v.s[i]): a kernel loads one input vector of X
    # channels and multiplies by each of its lanes, instead of loading (broadcasting) every
    # input scalar; x86 broadcasts from memory inside the FMA itself, so it does not need it.
    by_lane: bool = False


AVX512 = VectorIsa("avx512", 16, 32)
AVX2 = VectorIsa("avx2", 8, 16)
SSE = VectorIsa("sse", 4, 16)
NEON = VectorIsa("neon", 4, 32, by_lane=True)
ISAS = {i.name: i for i in (AVX512, AVX2, SSE, NEON)}


def isa_for(arch: str, features: Iterable[str]) -> VectorIsa:
    """The widest ISA a CPU of ``arch`` with /proc/cpuinfo ``features`` runs."""
    f = set(features)
    if arch in ("aarch64", "arm64"):
        return NEON
    if "avx512f" in f:
        return AVX512
    if "avx2" in f and "fma" in f:
        return AVX2
    return SSE
