"""Shared by the int8 test modules (dense and sparse): the x86 int8 ISAs this host runs, a host
toolchain fixed to one of them, and ``Seq`` (modules in a row, or a forward function over them)."""

from __future__ import annotations

from torch import nn

from codegen import HostToolchain
from codegen.isa import AVX2_Q8, AVX512_VNNI, QuantIsa
from codegen.toolchain import _cpu_flags


class FixedQ8(HostToolchain):
    """The host's int8 toolchain with a chosen int8 ISA."""

    def __init__(self, qisa: QuantIsa) -> None:
        super().__init__(precision="int8")
        self._qisa = qisa

    def quant_isa(self) -> QuantIsa:
        return self._qisa


def host_qisas() -> list[QuantIsa]:
    flags = _cpu_flags()
    out = []
    if {"avx2", "fma"} <= flags:
        out.append(AVX2_Q8)
    if {"avx512f", "avx512_vnni"} <= flags:
        out.append(AVX512_VNNI)
    return out


QISAS = host_qisas()


class Seq(nn.Module):
    def __init__(self, *mods: nn.Module, fn=None) -> None:
        super().__init__()
        self.mods = nn.ModuleList(mods)
        self.fn = fn

    def forward(self, x):
        if self.fn is not None:
            return self.fn(self, x)
        for m in self.mods:
            x = m(x)
        return x
