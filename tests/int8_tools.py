"""Shared by the int8 test modules (dense and sparse): the x86 int8 ISAs this host runs, a host
toolchain fixed to one of them, seeded calibration batches, the reference run of a
model (optionally pruned)."""

from __future__ import annotations

from functools import partial

import numpy as np
import torch
from torch import nn

from codegen import HostToolchain, capture
from codegen.isa import AVX2_Q8, AVX512_VNNI, QuantIsa
from codegen.passes import fold_bn, fuse_epilogue, quantize_int8, run_passes
from codegen.passes.sparse import with_schemes
from codegen.quant import run_int8_reference
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


def batches(shape: tuple[int, ...], n: int = 3, seed: int = 1) -> list[list[np.ndarray]]:
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(shape, generator=g).numpy()] for _ in range(n)]


def reference(model: nn.Module, x: np.ndarray, calibration, lanes: int,
              schemes: dict | None = None) -> list[np.ndarray]:
    """``codegen.quant``'s reference on the graph the quantization pass makes of ``model``
    (with ``schemes``: its pruned layers' schemes)."""
    g = capture(model, torch.from_numpy(x))
    if schemes is not None:
        g = with_schemes(g, schemes)
    g = run_passes(g, (fold_bn, fuse_epilogue,
                       partial(quantize_int8, calibration=calibration, lanes=lanes)))
    return run_int8_reference(g, [x])
