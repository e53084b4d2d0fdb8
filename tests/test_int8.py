"""int8 on x86: every int8 kernel bit-exact against codegen.quant's reference executor, at
each int8 ISA this host runs (AVX-512 VNNI, AVX2), and the semantics themselves (pure Python).

The reference runs the graph the quantization pass produces (before the layout pass) with
integer accumulation and the float32 requantization ``codegen.quant`` defines; the bundle is
compiled from the same model with the same calibration batches, so the quantization
parameters are the same and the outputs must be equal bit for bit.
"""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from ctypes_exec import run_bundle
from int8_tools import QISAS, FixedQ8
from int8_tools import batches as _batches
from int8_tools import reference as _reference
from torch import nn
from zoo import Seq

from codegen import HostToolchain, capture, compile_model, read_report
from codegen.isa import AVX2_Q8, AVX512_VNNI
from codegen.passes import fold_bn, fuse_epilogue, quantize_int8, run_passes
from codegen.quant import (
    dequantize_array,
    is_int8,
    qparams_from_range,
    quantize_array,
    quantize_weights,
    run_int8_reference,
)


def _residual(self, x):  # conv -> conv + skip -> relu: the fused residual in int8
    a, b = self.mods
    y = F.relu(a(x))
    return F.relu(b(y) + y)


def _two_readers(self, x):  # a uint8 tensor read by an int8 conv and by the caller
    a, b = self.mods
    y = F.relu(a(x))
    return b(y), y


def _pool(self, x):  # int8 conv -> int8 max pool -> int8 conv
    a, p, b = self.mods
    return b(p(F.relu(a(x))))


def _mlp(self, x):
    a, b = self.mods
    return b(F.relu6(a(x)))


# (model factory, input shape): every int8 kernel and conversion at awkward sizes
CASES = {
    "conv3x3s1_relu": (lambda: Seq(nn.Conv2d(16, 24, 3, padding=1), nn.ReLU()), (1, 16, 9, 11)),
    "conv3x3s2_relu6": (lambda: Seq(nn.Conv2d(5, 20, 3, 2, 1), nn.ReLU6()), (2, 5, 13, 10)),
    "conv7x7s2_stem": (lambda: Seq(nn.Conv2d(3, 16, 7, 2, 3), nn.ReLU()), (1, 3, 23, 21)),
    "conv1x1": (lambda: Seq(nn.Conv2d(40, 33, 1)), (1, 40, 6, 7)),
    "conv3x3_4oc_blocks": (lambda: Seq(nn.Conv2d(16, 64, 3, padding=1), nn.ReLU()),
                           (1, 16, 32, 10)),
    "conv3x3_dilated": (lambda: Seq(nn.Conv2d(16, 16, 3, padding=2, dilation=2)), (1, 16, 9, 9)),
    "conv_wide_row": (lambda: Seq(nn.Conv2d(8, 32, (1, 3), padding=(0, 1))), (1, 8, 3, 40)),
    "residual": (lambda: Seq(nn.Conv2d(16, 32, 3, padding=1), nn.Conv2d(32, 32, 3, padding=1),
                             fn=_residual), (1, 16, 8, 8)),
    "depthwise3x3s1_relu6": (lambda: Seq(nn.Conv2d(24, 24, 3, padding=1, groups=24),
                                         nn.ReLU6()), (1, 24, 10, 9)),
    "depthwise5x5s2": (lambda: Seq(nn.Conv2d(16, 16, 5, 2, 2, groups=16)), (1, 16, 11, 12)),
    "two_readers": (lambda: Seq(nn.Conv2d(6, 16, 3, padding=1), nn.Conv2d(16, 8, 1),
                                fn=_two_readers), (1, 6, 7, 7)),
    "maxpool": (lambda: Seq(nn.Conv2d(3, 16, 3, padding=1), nn.MaxPool2d(3, 2, 1),
                            nn.Conv2d(16, 16, 1), fn=_pool), (1, 3, 12, 13)),
    "linear": (lambda: Seq(nn.Linear(37, 50), nn.Linear(50, 7), fn=_mlp), (3, 37)),
}


@pytest.mark.host
@pytest.mark.parametrize("qisa", QISAS, ids=lambda q: q.name)
@pytest.mark.parametrize("case", list(CASES))
def test_int8_kernel_is_bit_exact(case, qisa, tmp_path):
    factory, shape = CASES[case]
    torch.manual_seed(0)
    model = factory().eval()
    batches = _batches(shape)
    x = _batches(shape, 1, seed=7)[0][0]
    b = compile_model(model, torch.from_numpy(x), tmp_path / "b", toolchain=FixedQ8(qisa),
                      calibration=batches)
    assert read_report(b.path).fp32_layers == {}  # every layer ran in int8
    src = (b.path / "kernels.c").read_text()
    assert f"_qs8__{qisa.name}_" in src
    if shape[1:2] == (3,):  # an image: blocked by 4 channels, not a whole vector
        assert "_nchw4c_qs8__" in src
    if case == "conv3x3_4oc_blocks" and qisa is AVX512_VNNI:  # 4 oc blocks a tile
        assert "_qs8__avx512vnni_4x" in src
    if case == "depthwise3x3s1_relu6" and qisa is AVX512_VNNI:  # a row's taps in one dot
        assert "_qs8__avx512vnni_dot_" in src
    got = run_bundle(b, [x])
    want = _reference(model, x, batches, qisa.lanes)
    with torch.no_grad():
        fp32 = model(torch.from_numpy(x))
    fp32 = [fp32] if isinstance(fp32, torch.Tensor) else list(fp32)
    for g, w, f in zip(got, want, fp32, strict=True):
        assert g.shape == w.shape
        assert np.array_equal(g, w), f"max |diff| {np.abs(g - w).max()}"
        # and the int8 model is a model of the float one (not a constant)
        f = f.numpy()
        assert np.abs(w - f).max() <= 0.1 * np.abs(f).max()
        assert np.std(w) > 0


@pytest.mark.host
def test_mixed_precision_graph_keeps_unsupported_layers_in_float32(tmp_path):
    """grouped convs stay float32 with conversions around them; hardswish (a lookup table
    after its int8 conv), the pools and SE's channel product run in int8."""
    from zoo import small_cnn

    model = small_cnn()
    shape = (1, 3, 32, 32)
    batches = _batches(shape)
    x = _batches(shape, 1, seed=7)[0][0]
    b = compile_model(model, torch.from_numpy(x), tmp_path / "b",
                      toolchain=HostToolchain(precision="int8"), calibration=batches,
                      keep_fp32=("out",))
    why = read_report(b.path).fp32_layers
    assert "pw" not in why and "pw.hardswish" not in why and "se.pool" not in why
    assert why["grouped"].startswith("grouped conv")
    assert "se.mul_channel" not in why  # int8 (issue 14: q8_ops.qmul_channel)
    assert why["out"] == "kept in float32 (asked)"
    ops = [s.op for s in b.manifest.steps]
    # the grouped conv's input comes dequantized by the int8 add; its output is quantized
    # again (the image's quantize, then that one); the SE product adds no conversion
    assert ops.count("quantize") == 2 and "dequantize" not in ops, ops
    (got,) = run_bundle(b, [x])
    (want,) = _reference(model, x, batches, HostToolchain(precision="int8").isa().floats)
    # float32 layers in C and in torch may round differently, and a quantize after them may
    # then land one level apart: close, not equal
    assert np.abs(got - want).max() <= 0.02 * np.abs(want).max()
    with torch.no_grad():
        fp32 = model(torch.from_numpy(x)).numpy()
    assert np.abs(got - fp32).max() <= 0.05 * np.abs(fp32).max()


@pytest.mark.host
def test_no_int8_isa_and_other_targets_are_refused():
    import codegen
    from codegen import CodegenError
    from codegen.isa import quant_isa_for

    with pytest.raises(CodegenError, match="AVX2 or AVX-512 VNNI"):
        quant_isa_for("x86_64", ["sse4_2"])
    assert quant_isa_for("x86_64", ["avx512f", "avx2", "fma"]) is AVX2_Q8
    assert codegen.toolchain_for("cpu", "int8").quant_isa() in QISAS
    with pytest.raises(CodegenError, match="precision 'int8'"):
        codegen.toolchain_for("gpu", "int8")


# ---- the semantics, pure Python -------------------------------------------------------------

def test_quantization_parameters_cover_the_range_and_keep_zero_exact():
    qp = qparams_from_range(-1.0, 3.0)
    assert qp.zero == 64 and np.float32(qp.scale) == qp.scale
    assert qparams_from_range(0.0, 6.0).zero == 0  # after a ReLU: every level is >= 0
    assert qparams_from_range(2.0, 5.0).zero == 0  # widened to include 0
    x = np.array([-1.0, 0.0, 3.0, 10.0, -5.0, 0.5 * qp.scale], np.float32)
    q = quantize_array(x, qp)
    assert q.tolist()[:5] == [0, 64, 255, 255, 0]  # clamped at both ends
    assert q[5] == 64  # a tie rounds to even
    assert dequantize_array(q, qp)[1] == 0.0


def test_weights_are_symmetric_per_output_channel():
    w = np.array([[0.5, -1.0], [0.0, 0.0], [2.0, 1.0]], np.float32)
    q, s = quantize_weights(w)
    assert q.dtype == np.int8 and q.tolist() == [[64, -127], [0, 0], [127, 64]]
    assert s.tolist() == [1 / 127, 1.0, 2 / 127]


def test_reference_marks_int8_layers_and_follows_the_float_model():
    torch.manual_seed(0)
    model = Seq(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 8, 3, padding=1))
    shape = (1, 3, 10, 10)
    batches = _batches(shape)
    g = run_passes(capture(model.eval(), torch.from_numpy(batches[0][0])),
                   (fold_bn, fuse_epilogue, partial(quantize_int8, calibration=batches,
                                                    lanes=16)))
    assert [la.op for la in g.layers if is_int8(la)] == ["conv2d", "conv2d"]
    assert [la.op for la in g.layers if la.op == "quantize"] == ["quantize"]
    assert set(g.quant) == {"x_q8", "mods_1_q8"} and g.quant["mods_1_q8"].zero == 0
    (got,) = run_int8_reference(g, batches[0])
    with torch.no_grad():
        want = model(torch.from_numpy(batches[0][0])).numpy()
    assert np.abs(got - want).max() <= 0.03 * np.abs(want).max()


@pytest.mark.host
def test_pruned_layers_stay_float32_beside_int8_ones(tmp_path):
    """Sparse kernels are float32: a layer with a pruning scheme keeps them, its neighbours
    run in int8, with the conversions between."""
    torch.manual_seed(0)
    model = Seq(nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1),
                nn.ReLU(), nn.Conv2d(32, 8, 1)).eval()
    with torch.no_grad():  # prune the middle conv to 25% unstructured
        w = model.mods[2].weight
        w.mul_((torch.rand_like(w) < 0.25).float())
    shape = (1, 16, 12, 12)
    batches = _batches(shape)
    x = _batches(shape, 1, seed=7)[0][0]
    b = compile_model(model, torch.from_numpy(x), tmp_path / "b",
                      toolchain=HostToolchain(precision="int8"), calibration=batches,
                      schemes={"mods.2": "unstructured"}, sparse="always")
    why = read_report(b.path).fp32_layers
    assert list(why) == ["mods.2"] and why["mods.2"].startswith("pruned (unstructured)")
    ops = [s.op for s in b.manifest.steps]
    assert ops.count("quantize") == 2 and ops.count("dequantize") == 0  # fused dequantize
    (got,) = run_bundle(b, [x])
    with torch.no_grad():
        fp32 = model(torch.from_numpy(x)).numpy()
    assert np.abs(got - fp32).max() <= 0.05 * np.abs(fp32).max()
