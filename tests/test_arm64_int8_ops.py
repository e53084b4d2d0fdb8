"""arm64 tier of the int8 pools, add, concat, mul_channel and lookup tables
(tests/test_int8_ops.py): SDOT bundles (NCHW4c uint8) built with clang, run on the arm64 runner
under ``qemu-aarch64 -cpu cortex-a76``, bit-exact against ``codegen.quant``'s reference with no
conversion but the input's quantize."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_int8_ops import CASES, _batches, _model, _reference

from codegen import compile_model, read_report
from codegen.isa import NEON_DOT
from codegen.toolchain import Arm64AndroidToolchain
from host.devices.session import Session
from host.measure import MeasureConfig

pytestmark = pytest.mark.arm64

CALL_TIMEOUT_S = 300.0
# each kernel kind once, at the layouts NEON's 4 lanes give (qemu is slow)
ARM64_CASES = ("avgpool3x3s2_ceil_nocount", "global_pool_fc", "add_relu6", "add_out",
               "add_plain", "concat_plain", "concat_same_scale", "hardswish_conv", "linear_sigmoid",
               "hardsigmoid_out",
               # squeeze-excite's x * gate: 21 channels (a partial NCHW4c block), two batch
               # rows, nonzero zero points (a SiLU gate), a float32 output (se_plain is
               # blocked at 4 lanes: x86 alone tests the plain kernel)
               "se_hardsigmoid_21", "se_silu_gate", "se_out")


@pytest.mark.parametrize("case", ARM64_CASES)
def test_int8_arm64_op_is_bit_exact(case, tmp_path, clang, a76):
    _, shape, kernel = CASES[case]
    model = _model(case)
    batches = _batches(shape)
    x = _batches(shape, 1, seed=7)[0][0]
    b = compile_model(model, torch.from_numpy(x), tmp_path / "b",
                      toolchain=Arm64AndroidToolchain(precision="int8"), calibration=batches)
    assert read_report(b.path).fp32_layers == {}
    ops = [s.op for s in b.manifest.steps]
    assert ops.count("quantize") == 1 and "dequantize" not in ops, ops
    src = (b.path / "kernels.c").read_text()
    assert "_qs8__neondot_" in src and kernel in src
    (want,) = _reference(model, x, batches, NEON_DOT.lanes)
    with Session(a76, call_timeout_s=CALL_TIMEOUT_S) as s:
        (got,) = s.run(s.load(b, MeasureConfig(threads=1)), [x])
    assert np.array_equal(got, want), f"max |diff| {np.abs(got - want).max()}"
