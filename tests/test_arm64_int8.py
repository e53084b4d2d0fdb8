"""arm64 int8 tier: SDOT kernels (``-march=armv8.2-a+dotprod``, NEON, 4 int32 lanes, NCHW4c
uint8) built with clang and run on the arm64 runner under ``qemu-aarch64 -cpu cortex-a76``
(an ARMv8.2 core with the dot product), bit-exact against ``codegen.quant``'s reference, as
on x86 (tests/test_int8.py). SDOT multiplies signed bytes: the kernels flip each uint8
activation's top bit (x - 128) and add 128 * sum w back, the same integer."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_int8 import CASES, _batches, _reference
from zoo import run_on_runner, torchvision_model

from codegen import CodegenError, compile_model, read_report
from codegen.isa import NEON_DOT, quant_isa_for
from codegen.toolchain import (
    ARM64_DOTPROD_FP16_MARCH,
    ARM64_DOTPROD_MARCH,
    Arm64AndroidToolchain,
    toolchain_for,
)
from host.devices.session import Session
from host.measure import MeasureConfig

pytestmark = pytest.mark.arm64

CALL_TIMEOUT_S = 300.0
# the cases of the x86 tier that cover each kernel kind once (qemu is slow)
ARM64_CASES = ("conv3x3s2_relu6", "conv7x7s2_stem", "conv3x3_4oc_blocks", "residual",
               "depthwise3x3s1_relu6",
               "two_readers", "maxpool", "linear")


def test_int8_arm64_choices():
    assert quant_isa_for("aarch64", ("asimd", "asimddp")) is NEON_DOT
    with pytest.raises(CodegenError, match="asimddp"):
        quant_isa_for("aarch64", ("asimd",))
    tc = toolchain_for("cpu", "int8", abi="arm64-v8a", features=("asimd", "asimddp"))
    assert ARM64_DOTPROD_MARCH in tc.flags and "-ffp-contract=off" in tc.flags
    assert tc.isa().floats == 4
    assert ARM64_DOTPROD_FP16_MARCH in Arm64AndroidToolchain(precision="int8").flags
    with pytest.raises(CodegenError, match="no dot product"):
        toolchain_for("cpu", "int8", abi="arm64-v8a", features=("asimd", "asimdhp"))


@pytest.mark.parametrize("case", ARM64_CASES)
def test_int8_arm64_kernel_is_bit_exact(case, tmp_path, clang, a76):
    factory, shape = CASES[case]
    torch.manual_seed(0)
    model = factory().eval()
    batches = _batches(shape)
    x = _batches(shape, 1, seed=7)[0][0]
    b = compile_model(model, torch.from_numpy(x), tmp_path / "b",
                      toolchain=Arm64AndroidToolchain(precision="int8"), calibration=batches)
    assert read_report(b.path).fp32_layers == {}
    assert "_qs8__neondot_" in (b.path / "kernels.c").read_text()
    want = _reference(model, x, batches, NEON_DOT.lanes)
    with Session(a76, call_timeout_s=CALL_TIMEOUT_S) as s:
        got = s.run(s.load(b, MeasureConfig(threads=1)), [x])
    for g, w in zip(got, want, strict=True):
        assert np.array_equal(g, w), f"max |diff| {np.abs(g - w).max()}"


def test_int8_arm64_resnet18_agrees_with_fp32(tmp_path, clang, a76):
    model = torchvision_model("resnet18")
    shape = (1, 3, 64, 64)
    g = torch.Generator().manual_seed(5)
    cal = [[torch.randn(shape, generator=g)] for _ in range(2)]
    x = torch.randn(shape, generator=g)
    b = compile_model(model, x, tmp_path / "r18", toolchain=Arm64AndroidToolchain(
        precision="int8"), calibration=cal)
    got = run_on_runner(a76, b, x, 2, call_timeout_s=CALL_TIMEOUT_S)
    with torch.no_grad():
        fp32 = model(x).numpy()
    cos = float((got * fp32).sum() / np.linalg.norm(got) / np.linalg.norm(fp32))
    assert cos > 0.999 and got.argmax() == fp32.argmax()
