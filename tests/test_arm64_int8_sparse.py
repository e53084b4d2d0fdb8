"""arm64 sparse + int8 tier: the block-sparse int8 kernels at SDOT (NEON, 4 int32 lanes,
NCHW4c uint8; ``codegen/emit/sparse/q8.py``) built with clang and run on the arm64 runner under
``qemu-aarch64 -cpu cortex-a76``, bit-exact against ``codegen.quant``'s reference on the pruned
model, as on x86 (tests/test_int8_sparse.py), and a pruned network with several formats. SDOT
multiplies signed bytes: the kernels flip each uint8 activation's top bit and the per-tap
correction adds (128 - zero_x) * sum w over the kept weights of the taps they ran."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_int8_sparse import CASES, _batches, _pruned, _reference, block_punched, block_rows, net

from codegen import compile_model, read_report
from codegen.isa import NEON_DOT
from codegen.toolchain import Arm64AndroidToolchain
from host.devices.session import Session
from host.measure import MeasureConfig

pytestmark = pytest.mark.arm64

CALL_TIMEOUT_S = 300.0
# each kernel kind once (qemu is slow): strided with odd channels, the narrow stem, dilation
# with a float32 output, the fused residual, 16-column SDOT tiles, block 1x1, the block Linear
ARM64_CASES = ("bp3x3s2_relu6_odd_channels", "bp7x7s2_stem", "bp3x3_dilated_dq", "bp_residual",
               "bp3x3_wide_rows",
               "block1x1", "block_linear")


def _run(a76, bundle, x):
    with Session(a76, call_timeout_s=CALL_TIMEOUT_S) as s:
        return s.run(s.load(bundle, MeasureConfig(threads=1)), [x])


@pytest.mark.parametrize("case", ARM64_CASES)
def test_int8_sparse_arm64_kernel_is_bit_exact(case, tmp_path, clang, a76):
    factory, shape, schemes = CASES[case]
    model = factory()
    batches = _batches(shape)
    x = _batches(shape, 1, seed=7)[0][0]
    b = compile_model(model, torch.from_numpy(x), tmp_path / "b",
                      toolchain=Arm64AndroidToolchain(precision="int8"), calibration=batches,
                      schemes=schemes, sparse="always")
    rep = read_report(b.path)
    assert rep.fp32_layers == {}
    for name in schemes:
        assert rep.sparse[name].split(": ")[1].startswith("bcsr"), rep.sparse[name]
    src = (b.path / "kernels.c").read_text()
    assert "_bcsr4x4_qs8__neondot_" in src
    want = _reference(model, x, batches, NEON_DOT.lanes, schemes)
    for g, w in zip(_run(a76, b, x), want, strict=True):
        assert np.array_equal(g, w), f"max |diff| {np.abs(g - w).max()}"


def test_int8_sparse_arm64_pruned_network(tmp_path, clang, a76):
    """Block-punched stem and 3x3 convs (residual, strided), a block 1x1 shortcut and fc, in
    one SDOT bundle, equal to the reference."""
    prune = {"stem": (block_punched, 0.5), "c1": (block_punched, 0.25),
             "c2": (block_punched, 0.25), "c3": (block_punched, 0.25),
             "down": (block_rows, 0.25), "fc": (block_rows, 0.3)}
    model = _pruned(net, prune)()
    schemes = {"stem": "block_punched", "c1": "block_punched", "c2": "block_punched",
               "c3": "block_punched", "down": "block", "fc": "block"}
    shape = (1, 3, 32, 32)
    batches = _batches(shape)
    x = _batches(shape, 1, seed=7)[0][0]
    b = compile_model(model, torch.from_numpy(x), tmp_path / "b",
                      toolchain=Arm64AndroidToolchain(precision="int8"), calibration=batches,
                      schemes=schemes)
    rep = read_report(b.path)
    assert not set(schemes) & set(rep.fp32_layers)
    assert "spconv2d_3x3s1_nchw4c_bcsr4x4_qs8__neondot_" in (b.path / "kernels.c").read_text()
    (want,) = _reference(model, x, batches, NEON_DOT.lanes, schemes)
    (got,) = _run(a76, b, x)
    assert np.array_equal(got, want), f"max |diff| {np.abs(got - want).max()}"
