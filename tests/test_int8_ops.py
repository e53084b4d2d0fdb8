"""int8 for the ops around the convs (issue 14): average pooling (k x k, adaptive, global), the
add of two uint8 tensors of their own scales, concat, and the activations without an int8
epilogue as 256-entry lookup tables. On x86 (each int8 ISA this host runs) every case compiles
with no float32 layer and no conversion but the input's ``quantize``, and is bit-exact against
``codegen.quant``'s reference; pure Python: the semantics, the pass's placement and the
calibration methods."""

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
from zoo import Seq, small_cnn, torchvision_model

from codegen import CodegenError, capture, compile_model, read_report
from codegen.passes import fold_bn, fuse_epilogue, quantize_int8, run_passes
from codegen.quant import (
    calibrate,
    calibration_method,
    dequantize_array,
    is_int8,
    lut_table,
    qparams_from_range,
    quantize_array,
    run_int8_reference,
)


def _conv_pool_conv(self, x):  # int8 conv -> the pool -> int8 conv
    a, p, b = self.mods
    return b(p(F.relu(a(x))))


def _conv_pool_fc(self, x):
    a, p, fc = self.mods
    return fc(torch.flatten(p(F.relu(a(x))), 1))


def _conv_pool(self, x):  # the pool's output is the graph's: it writes float32
    a, p = self.mods
    return p(F.relu(a(x)))


def _add(act):
    def fn(self, x):  # two branches of their own scales, added, an activation fused
        a, b, c = self.mods
        y = F.relu(a(x)) + F.relu6(b(x))
        return c(act(y))
    return fn


def _add_out(self, x):  # the add's output is the graph's: it writes float32
    a, b = self.mods
    return F.relu(a(x)) + F.relu6(b(x))


def _add_plain(self, x):  # concats of 12 + 7 channels are plain NCHW: so is their add
    a, b, c, d, e = self.mods
    y = torch.cat([F.relu(a(x)), F.relu(b(x))], 1) + torch.cat([F.relu6(c(x)), d(x)], 1)
    return e(y)


def _concat(self, x):
    a, b, c = self.mods
    return c(torch.cat([F.relu(a(x)), b(x)], 1))


def _concat_same(self, x):  # both inputs carry y's quantization: the output's too (a copy)
    a, p, c = self.mods
    y = F.relu(a(x))
    return c(torch.cat([p(y), y], 1))


def _act_conv(act):
    def fn(self, x):  # conv + act (split: int8 conv, then a table step), then a conv
        a, b = self.mods
        return b(act(a(x)))
    return fn


def _act_out(self, x):  # the table writes float32 (the graph's output)
    (a,) = self.mods
    return F.hardsigmoid(a(x))


def _pool_act(self, x):  # a standalone activation (after a max pool: nothing to fuse into)
    a, p, b = self.mods
    return b(F.hardswish(p(F.relu(a(x)))))


def _mlp_sigmoid(self, x):
    a, b = self.mods
    return b(torch.sigmoid(a(x)))


def _se(gate, act=F.relu):
    def fn(self, x):  # conv -> squeeze-excite (pool, 1x1 convs, the gate) -> x * gate -> conv
        a, f1, f2, b = self.mods
        y = act(a(x)) if act else a(x)  # no act: x's zero point is not 0
        s = gate(f2(F.relu(f1(F.adaptive_avg_pool2d(y, 1)))))
        return b(y * s)
    return fn


def _se_plain(self, x):  # concat of 12 + 7 channels: plain NCHW, x's zero point not 0
    a, b, f1, f2, c = self.mods
    y = torch.cat([F.relu(a(x)), b(x)], 1)
    return c(y * F.hardsigmoid(f2(F.relu(f1(F.adaptive_avg_pool2d(y, 1))))))


def _se_out(self, x):  # the product is the graph's output: it writes float32
    a, f1, f2 = self.mods
    y = F.relu6(a(x))
    return y * torch.sigmoid(f2(F.relu(f1(F.adaptive_avg_pool2d(y, 1)))))


def _se_net(c: int, r: int, fn, tail: bool = True):
    mods = [nn.Conv2d(5, c, 3, padding=1), nn.Conv2d(c, r, 1), nn.Conv2d(r, c, 1)]
    return Seq(*mods, *([nn.Conv2d(c, 8, 1)] if tail else []), fn=fn)


# (model factory, input shape, a kernel name the source must hold)
CASES = {
    "avgpool3x3s2_ceil_nocount": (lambda: Seq(
        nn.Conv2d(16, 16, 3, padding=1), nn.AvgPool2d(3, 2, 1, ceil_mode=True,
                                                      count_include_pad=False),
        nn.Conv2d(16, 8, 1), fn=_conv_pool_conv), (1, 16, 11, 10), "avgpool2d_nchw"),
    "avgpool2x2_pad_count": (lambda: Seq(
        nn.Conv2d(8, 24, 3, padding=1), nn.AvgPool2d(2, 2, padding=1, count_include_pad=True),
        nn.Conv2d(24, 8, 1), fn=_conv_pool_conv), (1, 8, 9, 7), "avgpool2d_nchw"),
    "global_pool_fc": (lambda: Seq(nn.Conv2d(5, 40, 3, 2), nn.AdaptiveAvgPool2d(1),
                                   nn.Linear(40, 10), fn=_conv_pool_fc), (2, 5, 13, 12),
                       "adaptive_avgpool2d_nchw"),
    "adaptive3x2_fc": (lambda: Seq(nn.Conv2d(6, 20, 3, padding=1), nn.AdaptiveAvgPool2d((3, 2)),
                                   nn.Linear(120, 9), fn=_conv_pool_fc), (1, 6, 7, 5),
                       "adaptive_avgpool2d_nchw"),
    "global_pool_out": (lambda: Seq(nn.Conv2d(4, 24, 3), nn.AdaptiveAvgPool2d(1),
                                    fn=_conv_pool), (1, 4, 9, 9), "adaptive_avgpool2d_nchw"),
    "add_relu": (lambda: Seq(nn.Conv2d(8, 16, 3, padding=1), nn.Conv2d(8, 16, 1),
                             nn.Conv2d(16, 8, 1), fn=_add(F.relu)), (1, 8, 7, 9), "add_qs8"),
    "add_relu6": (lambda: Seq(nn.Conv2d(8, 20, 3, padding=1), nn.Conv2d(8, 20, 1),
                              nn.Conv2d(20, 8, 1), fn=_add(F.relu6)), (1, 8, 6, 5), "add_qs8"),
    "add_out": (lambda: Seq(nn.Conv2d(8, 16, 3, padding=1), nn.Conv2d(8, 16, 1), fn=_add_out),
                (1, 8, 5, 6), "add_qs8"),
    "add_plain": (lambda: Seq(nn.Conv2d(8, 12, 3, padding=1), nn.Conv2d(8, 7, 1),
                              nn.Conv2d(8, 12, 1), nn.Conv2d(8, 7, 1), nn.Conv2d(19, 8, 1),
                              fn=_add_plain), (1, 8, 5, 7), "add_qs8"),
    "concat_blocked": (lambda: Seq(nn.Conv2d(8, 16, 3, padding=1), nn.Conv2d(8, 16, 1),
                                   nn.Conv2d(32, 8, 1), fn=_concat), (1, 8, 6, 7), "concat_qs8"),
    "concat_plain": (lambda: Seq(nn.Conv2d(8, 12, 3, padding=1), nn.Conv2d(8, 7, 1),
                                 nn.Conv2d(19, 8, 1), fn=_concat), (1, 8, 5, 6), "concat_qs8"),
    "concat_same_scale": (lambda: Seq(nn.Conv2d(8, 16, 3, padding=1), nn.MaxPool2d(3, 1, 1),
                                      nn.Conv2d(32, 8, 1), fn=_concat_same), (1, 8, 6, 6),
                          "concat_qs8"),
    "hardswish_conv": (lambda: Seq(nn.Conv2d(6, 16, 3, padding=1), nn.Conv2d(16, 8, 1),
                                   fn=_act_conv(F.hardswish)), (1, 6, 8, 7), "hardswish_lut_qs8"),
    "sigmoid_conv": (lambda: Seq(nn.Conv2d(6, 16, 3, 2, 1), nn.Conv2d(16, 8, 1),
                                 fn=_act_conv(torch.sigmoid)), (1, 6, 9, 8), "sigmoid_lut_qs8"),
    "hardsigmoid_out": (lambda: Seq(nn.Conv2d(6, 16, 3), fn=_act_out), (1, 6, 7, 7),
                        "hardsigmoid_lut_qs8"),
    "standalone_hardswish": (lambda: Seq(nn.Conv2d(3, 16, 3, padding=1), nn.MaxPool2d(2),
                                         nn.Conv2d(16, 8, 1), fn=_pool_act), (1, 3, 10, 10),
                             "hardswish_lut_qs8"),
    "linear_sigmoid": (lambda: Seq(nn.Linear(30, 40), nn.Linear(40, 6), fn=_mlp_sigmoid),
                       (3, 30), "sigmoid_lut_qs8"),
    # squeeze-excite's x * gate: whole and partial channel blocks, two batch rows, plain NCHW
    "se_sigmoid": (lambda: _se_net(32, 8, _se(torch.sigmoid)), (1, 5, 7, 9),
                   "mul_channel_nchw"),
    "se_hardsigmoid_21": (lambda: _se_net(21, 5, _se(F.hardsigmoid, None)), (2, 5, 6, 5),
                          "mul_channel_nchw"),
    # a SiLU gate takes negative values: its zero point is not 0 either
    "se_silu_gate": (lambda: _se_net(24, 6, _se(F.silu, None)), (1, 5, 6, 7),
                     "mul_channel_nchw"),
    "se_plain": (lambda: Seq(nn.Conv2d(5, 12, 3, padding=1), nn.Conv2d(5, 7, 1),
                             nn.Conv2d(19, 5, 1), nn.Conv2d(5, 19, 1), nn.Conv2d(19, 8, 1),
                             fn=_se_plain), (1, 5, 5, 7), "mul_channel_nchw_qs8"),
    "se_out": (lambda: _se_net(12, 3, _se_out, tail=False), (1, 5, 5, 6), "mul_channel_nchw"),
}


def _model(case: str) -> nn.Module:
    torch.manual_seed(0)
    return CASES[case][0]().eval()


@pytest.mark.host
@pytest.mark.parametrize("qisa", QISAS, ids=lambda q: q.name)
@pytest.mark.parametrize("case", list(CASES))
def test_int8_op_is_bit_exact(case, qisa, tmp_path):
    _, shape, kernel = CASES[case]
    model = _model(case)
    batches = _batches(shape)
    x = _batches(shape, 1, seed=7)[0][0]
    b = compile_model(model, torch.from_numpy(x), tmp_path / "b", toolchain=FixedQ8(qisa),
                      calibration=batches)
    assert read_report(b.path).fp32_layers == {}  # every layer ran in int8
    ops = [s.op for s in b.manifest.steps]
    # no float32 conversion around these ops: the input's quantize, nothing else
    assert ops.count("quantize") == 1 and "dequantize" not in ops, ops
    assert kernel in (b.path / "kernels.c").read_text()
    (got,) = run_bundle(b, [x])
    (want,) = _reference(model, x, batches, qisa.lanes)
    assert got.shape == want.shape
    # x lies outside the calibration batches: the clamps are exercised too
    assert np.array_equal(got, want), f"max |diff| {np.abs(got - want).max()}"
    assert np.std(want) > 0


@pytest.mark.host
def test_resnet18_and_mobilenet_v2_run_int8_from_input_to_output(tmp_path):
    """The global pool before the classifier is int8 now: one quantize (the image), no
    dequantize, bit-exact (AVX2, the one ISA every int8 host has)."""
    for name in ("resnet18", "mobilenet_v2"):
        model = torchvision_model(name)
        shape = (1, 3, 32, 32)
        batches = _batches(shape, 2)
        x = _batches(shape, 1, seed=7)[0][0]
        b = compile_model(model, torch.from_numpy(x), tmp_path / name, toolchain=FixedQ8(
            QISAS[0]), calibration=batches)
        assert read_report(b.path).fp32_layers == {}
        ops = [s.op for s in b.manifest.steps]
        assert ops.count("quantize") == 1 and "dequantize" not in ops
        assert "adaptive_avgpool2d_nchw" in (b.path / "kernels.c").read_text()
        (got,) = run_bundle(b, [x])
        (want,) = _reference(model, x, batches, QISAS[0].lanes)
        assert np.array_equal(got, want), name


# ---- the semantics and the pass, pure Python ---------------------------------------------

def _quantized(model: nn.Module, shape, lanes: int = 16, **kw):
    batches = _batches(shape)
    g = capture(model.eval(), torch.from_numpy(batches[0][0]))
    return run_passes(g, (fold_bn, fuse_epilogue, partial(
        quantize_int8, calibration=batches, lanes=lanes, **kw))), batches


def test_the_pass_runs_the_small_cnn_in_int8_but_grouped_convs():
    g, _ = _quantized(small_cnn(), (1, 3, 32, 32))
    int8 = {la.name: la.op for la in g.layers if is_int8(la)}
    for name in ("add", "se.pool", "concat", "pool_avg", "adapt", "pw.hardswish",
                 "se.fc2.sigmoid", "k5.hardsigmoid", "fc.sigmoid", "pw", "se.fc2", "fc",
                 "se.mul_channel"):
        assert name in int8, name
    assert "grouped" not in int8
    # the SE product reads the block's uint8 input and its uint8 gate: no conversion between
    (mul,) = [la for la in g.layers if la.name == "se.mul_channel"]
    assert all(t in g.quant for t in (*mul.inputs, mul.output))
    # a split layer writes its pre-activation tensor, uint8, for its table
    (pw,) = [la for la in g.layers if la.name == "pw"]
    assert pw.epilogue == () and pw.output.endswith("_pre_q8")


def test_keep_fp32_keeps_a_conv_and_its_activation_together():
    g, _ = _quantized(Seq(nn.Conv2d(3, 16, 3), nn.Hardswish(), nn.Conv2d(16, 8, 1)),
                      (1, 3, 8, 8), keep_fp32=("mods.0",))
    (c0,) = [la for la in g.layers if la.name == "mods.0"]
    assert not is_int8(c0) and c0.epilogue == ("hardswish",)


def test_ops_after_a_float32_layer_stay_float32():
    """An avg pool whose input is float32 (a grouped conv without int8 kernel) adds no
    conversion pair around itself."""
    g, _ = _quantized(Seq(nn.Conv2d(6, 9, 3, groups=3), nn.AvgPool2d(2), nn.Conv2d(9, 8, 1)),
                      (1, 6, 10, 10))
    (pool,) = [la for la in g.layers if la.op == "avgpool2d"]
    assert not is_int8(pool)
    assert [la.op for la in g.layers if la.op in ("quantize", "dequantize")] == ["quantize"]


def test_tables_are_the_fake_quantized_activation():
    qx, qy = qparams_from_range(-4.0, 4.0), qparams_from_range(-0.5, 4.0)
    t = lut_table(qx, qy, ("hardswish",))
    q = np.arange(256, dtype=np.uint8)
    want = quantize_array(F.hardswish(torch.from_numpy(dequantize_array(q, qx))).numpy(), qy)
    assert t.dtype == np.uint8 and np.array_equal(t, want)
    f = lut_table(qx, None, ("sigmoid",))  # float32 output: no requantization
    assert f.dtype == np.float32 and f[qx.zero] == np.float32(0.5)


@pytest.mark.parametrize("case", list(CASES))
def test_reference_follows_the_float_model(case):
    """On a calibration batch (no clipping), each case's int8 graph is a model of the float
    one."""
    model = _model(case)
    g, batches = _quantized(model, CASES[case][1])
    (got,) = run_int8_reference(g, batches[0])
    with torch.no_grad():
        want = model(torch.from_numpy(batches[0][0])).numpy()
    assert np.abs(got - want).max() <= 0.05 * np.abs(want).max()


def test_calibration_methods():
    assert calibration_method("minmax") == ("minmax", 100.0)
    assert calibration_method("percentile") == ("percentile", 99.99)
    assert calibration_method("percentile:99.9") == ("percentile", 99.9)
    for bad in ("percentile:40", "percentile:x", "entropy", "minmax:3"):
        with pytest.raises(CodegenError, match="calibration method"):
            calibration_method(bad)
    model = Seq(nn.Conv2d(3, 16, 3), nn.ReLU()).eval()
    batches = _batches((2, 3, 16, 16))
    g = fuse_epilogue(fold_bn(capture(model, torch.from_numpy(batches[0][0]))))
    mm, pc = calibrate(g, batches), calibrate(g, batches, "percentile:99")
    for t, (lo, hi) in mm.items():  # percentiles lie inside the min/max range
        assert lo <= pc[t][0] <= pc[t][1] <= hi
    x = np.concatenate([b[0].ravel() for b in batches])
    assert pc["x"][1] == pytest.approx(float(np.percentile(x, 99)))
    assert pc["x"][1] < mm["x"][1]
    # the default is min/max: the bundles built before the option are unchanged
    g_mm, _ = _quantized(model, (2, 3, 16, 16))
    g_def, _ = _quantized(model, (2, 3, 16, 16), method="minmax")
    assert g_mm.quant == g_def.quant
    g_pc, _ = _quantized(model, (2, 3, 16, 16), method="percentile:99")
    assert g_pc.quant["x_q8"].scale < g_mm.quant["x_q8"].scale


def _compile_cli(capsys, *argv: str) -> tuple[int, str]:
    from host.cli import main

    rc = main(["compile", *argv])
    return rc, " ".join(capsys.readouterr().err.split())


@pytest.mark.host
def test_compile_calibration_method_flag(capsys, tmp_path):
    base = ("zoo:small_cnn", "--input-shape", "1,3,32,32", "--precision", "int8",
            "--no-tuning-db")
    src = {}
    for method in ("minmax", "percentile:99.9", None):
        out = tmp_path / str(method)
        extra = ("--calibration-method", method) if method else ()
        rc, err = _compile_cli(capsys, *base, "-o", str(out), *extra)
        assert rc == 0, err
        src[method] = (out / "kernels.c").read_text()
    assert src[None] == src["minmax"]  # the default
    assert src["percentile:99.9"] != src["minmax"]  # other scales baked in
    rc, err = _compile_cli(capsys, *base, "-o", str(tmp_path / "bad"),
                           "--calibration-method", "entropy")
    assert rc != 0 and "Traceback" not in err and "calibration method 'entropy'" in err


def _sparse_net(self, x):  # block-pruned conv + hardswish (split), global pool, pruned fc
    a, b, fc = self.mods
    y = F.hardswish(b(F.relu(a(x))))
    return fc(torch.flatten(F.adaptive_avg_pool2d(y, 1), 1))


@pytest.mark.host
def test_sparse_int8_with_tables_and_the_global_pool(tmp_path):
    """Sparse + int8: a block-punched conv whose hardswish becomes a table, the global pool
    and a block-pruned Linear, all int8, bit-exact."""
    from test_int8_sparse import block_punched, block_rows

    torch.manual_seed(0)
    model = Seq(nn.Conv2d(8, 32, 3, padding=1), nn.Conv2d(32, 48, 3, padding=1),
                nn.Linear(48, 20), fn=_sparse_net).eval()
    with torch.no_grad():
        model.mods[1].weight.copy_(block_punched(model.mods[1].weight, 0.3))
        model.mods[2].weight.copy_(block_rows(model.mods[2].weight, 0.3))
    shape = (1, 8, 9, 10)
    batches = _batches(shape)
    x = _batches(shape, 1, seed=7)[0][0]
    schemes = {"mods.1": "block_punched", "mods.2": "block"}
    for qisa in QISAS:
        b = compile_model(model, torch.from_numpy(x), tmp_path / qisa.name,
                          toolchain=FixedQ8(qisa), calibration=batches, schemes=schemes,
                          sparse="always")
        assert read_report(b.path).fp32_layers == {}
        ops = [s.op for s in b.manifest.steps]
        assert ops.count("quantize") == 1 and "dequantize" not in ops, ops
        src = (b.path / "kernels.c").read_text()
        assert "hardswish_lut_qs8" in src and "adaptive_avgpool2d_nchw" in src
        assert "spconv2d_3x3s1_" in src and "splinear_bcsr" in src  # the sparse int8 kernels
        (got,) = run_bundle(b, [x])
        (want,) = _reference(model, x, batches, qisa.lanes, schemes)
        assert np.array_equal(got, want), qisa.name
