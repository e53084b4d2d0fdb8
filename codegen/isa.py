"""Vector ISAs the CPU kernels are written for: what a target's SIMD unit looks like to codegen.

A ``VectorIsa`` is the data the blocked layout pass and the vectorised templates need: the
vector width in elements (the channel block of NCHW[x]c), the number of vector registers (which
bounds a micro-kernel's accumulator tile), the name that goes after ``__`` in a kernel's name,
whether it multiplies by a register's lane (``by_lane``), and the element type the kernels
store and compute in (``elem``: float, or ``_Float16`` for NEON's FP16 arithmetic, 8 lanes per
register). The toolchain picks one from the target's features and the precision asked for
(``isa_for``); the same C source (GCC/Clang vector extensions) compiles to any of them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from codegen.lr import CodegenError


@dataclass(frozen=True)
class VectorIsa:
    name: str  # kernel-name suffix: conv2d_3x3s1_nchw16c__avx512_14w
    floats: int  # lanes (of ``elem``) per vector register: the channel block
    registers: int  # architectural vector registers
    # FMA by element (NEON's FMLA v.4s, v.4s, v.s[i]): a kernel loads one input vector of X
    # channels and multiplies by each of its lanes, instead of loading (broadcasting) every
    # input scalar; x86 broadcasts from memory inside the FMA itself, so it does not need it.
    by_lane: bool = False
    # the C element type of tensors, weights and the vector type ``vf``; "_Float16" needs
    # ARMv8.2's FP16 arithmetic (-march=armv8.2-a+fp16)
    elem: str = "float"

    @property
    def elem_bytes(self) -> int:
        return 2 if self.elem == "_Float16" else 4

    @property
    def precision(self) -> str:
        """The precision's name in kernel names and on the command line: "f32" or "f16"."""
        return "f16" if self.elem == "_Float16" else "f32"


AVX512 = VectorIsa("avx512", 16, 32)
AVX2 = VectorIsa("avx2", 8, 16)
SSE = VectorIsa("sse", 4, 16)
NEON = VectorIsa("neon", 4, 32, by_lane=True)
NEON_FP16 = VectorIsa("neonfp16", 8, 32, by_lane=True, elem="_Float16")
ISAS = {i.name: i for i in (AVX512, AVX2, SSE, NEON, NEON_FP16)}
FP16_FEATURES = frozenset({"fphp", "asimdhp"})  # /proc/cpuinfo names of FP16 arithmetic


def isa_for(arch: str, features: Iterable[str], precision: str = "fp32") -> VectorIsa:
    """The widest ISA a CPU of ``arch`` with /proc/cpuinfo ``features`` runs at ``precision``
    ("fp32", or "fp16": NEON FP16, arm64 CPUs that report fphp/asimdhp only)."""
    f = set(features)
    if precision == "fp16":
        if arch in ("aarch64", "arm64") and f & FP16_FEATURES:
            return NEON_FP16
        raise CodegenError(f"precision 'fp16' on a CPU needs arm64 with FP16 arithmetic "
                           f"(fphp/asimdhp); this {arch} target reports "
                           f"{sorted(f) or 'no features'}: use --precision fp32")
    if precision != "fp32":
        raise CodegenError(f"CPU precision {precision!r}: use 'fp32' or 'fp16' (arm64)")
    if arch in ("aarch64", "arm64"):
        return NEON
    if "avx512f" in f:
        return AVX512
    if "avx2" in f and "fma" in f:
        return AVX2
    return SSE


@dataclass(frozen=True)
class QuantIsa:
    """The integer dot product of a CPU's int8 kernels (``codegen/emit/cpu/q8.py``): ``lanes``
    int32 accumulators per vector (the channel block, the float32 ISA's width), each summing
    ``group`` products of a uint8 activation and a signed weight per instruction; ``weight``
    is the C type weights are packed in."""

    name: str  # kernel-name suffix: conv2d_3x3s1_nchw16c_qs8__avx512vnni_2x12w
    lanes: int
    group: int
    registers: int
    weight: str
    fp32: VectorIsa  # the float32 ISA of the same width (the graph's float32 layers)
    # what the dot product subtracts from a uint8 activation: SDOT multiplies signed bytes,
    # so its kernels flip the top bit (x - 128) and add 128 * sum w back in the bias
    offset: int = 0


# vpdpbusd: 4 u8 x s8 products into each int32 lane, no intermediate saturation
AVX512_VNNI = QuantIsa("avx512vnni", 16, 4, 32, "int8_t", AVX512)
# vpmaddwd on 16-bit pairs: u8 activations and s8 weights widened to int16, 2 exact products
# per int32 lane (vpmaddubsw would sum two u8 x s8 products into int16 and saturate past
# 32767: 2 x 255 x 127 = 64770)
AVX2_Q8 = QuantIsa("avx2", 8, 2, 16, "int16_t", AVX2)
# SDOT (ARMv8.2 dot product, asimddp): 4 s8 x s8 products into each int32 lane
NEON_DOT = QuantIsa("neondot", 4, 4, 32, "int8_t", NEON, offset=128)
QUANT_ISAS = {i.name: i for i in (AVX512_VNNI, AVX2_Q8, NEON_DOT)}


def quant_isa_for(arch: str, features: Iterable[str]) -> QuantIsa:
    """The int8 kernels' ISA on a CPU of ``arch`` with /proc/cpuinfo ``features``: AVX-512
    VNNI where the CPU has avx512_vnni, else AVX2 (the whole bundle then at AVX2's width);
    on arm64 SDOT (NEON, 4 lanes) where it reports asimddp."""
    f = set(features)
    if arch in ("x86_64", "amd64"):
        if {"avx512f", "avx512_vnni"} <= f:
            return AVX512_VNNI
        if {"avx2", "fma"} <= f:
            return AVX2_Q8
    if arch in ("aarch64", "arm64") and "asimddp" in f:
        return NEON_DOT
    raise CodegenError(f"precision 'int8' on a CPU needs x86-64 with AVX2 or AVX-512 VNNI, or "
                       f"arm64 with the dot product (asimddp); this {arch} target reports "
                       f"{sorted(f) or 'no features'}: use --precision fp32")
