"""arm64 fp16 tier: kernels that store and compute in _Float16 (NEON FP16, 8 lanes, NCHW8c,
``-march=armv8.2-a+fp16``) built with clang and run on the arm64 runner under ``qemu-aarch64
-cpu cortex-a76`` (an ARMv8.2 core with FP16 arithmetic), against PyTorch in float32.

Tolerance: the error is max |got - want| / max |want| (``rel_err``). fp16 has an 11-bit
significand (a rounding is at most 2^-11 ~ 4.9e-4 relative); the convolutions accumulate in
fp16 over ic * kh * kw terms (Winograd over ic), so one layer's error is a few roundings of
its largest partial sums: measured 2.6e-4 (linear, pools) to 2.7e-3 (a direct 3x3 over 12
channels), bound ``LAYER_TOL`` 1e-2. Winograd F(4,3)'s fp16 GEMM errors are amplified by its
output transform (codegen.cost.FP16_WINOGRAD): measured 2.2e-2 (one conv over 27 channels)
and 1.1e-2 (a residual block), bound ``WINOGRAD4_TOL`` 1e-1. Whole networks, whose pools
and classifiers average that noise: measured 5.4e-4 (small_cnn), 2.6e-3 (mobilenet_v2),
5.9e-3 (resnet18) at 64x64, bound ``MODEL_TOL`` 1.5e-2. fp32 bundles of the same models
stay within 1e-4 (tests/test_arm64.py).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from zoo import randomize_bn, rel_err, run_on_runner, small_cnn, torchvision_model

from codegen import CodegenError, compile_model
from codegen.isa import NEON_FP16, isa_for
from codegen.toolchain import (
    ARM64_DOTPROD_FP16_MARCH,
    ARM64_FP16_MARCH,
    Arm64AndroidToolchain,
    toolchain_for,
)

pytestmark = pytest.mark.arm64

LAYER_TOL = 1e-2
WINOGRAD4_TOL = 1e-1
MODEL_TOL = 1.5e-2
CALL_TIMEOUT_S = 300.0


def fp16_toolchain() -> Arm64AndroidToolchain:
    return Arm64AndroidToolchain(precision="fp16")


def _compile(model: nn.Module, x: torch.Tensor, out: Path, name: str, tuning=None):
    return compile_model(model, (x,), out, name=name, toolchain=fp16_toolchain(),
                         tuning=tuning)


def _check(runner, bundle, model, x, tol, threads=(1,)) -> float:
    with torch.no_grad():
        want = model(x).numpy()
    worst = 0.0
    for t in threads:
        got = run_on_runner(runner, bundle, x, t, call_timeout_s=CALL_TIMEOUT_S)
        assert got.dtype == np.float32 and got.shape == want.shape
        err = rel_err(got, want)
        print(f"{bundle.manifest.name}, {t} thread(s): rel err {err:.2e}")  # shown with -s
        assert err <= tol, f"{bundle.manifest.name}, {t} thread(s): rel err {err:.2e} > {tol}"
        worst = max(worst, err)
    return worst


# ---- choices (no qemu) ----

def test_fp16_isa_needs_arm64_fp16_features():
    assert isa_for("aarch64", ("asimd", "asimdhp", "fphp"), "fp16") is NEON_FP16
    assert (NEON_FP16.floats, NEON_FP16.elem, NEON_FP16.by_lane) == (8, "_Float16", True)
    with pytest.raises(CodegenError, match="fphp/asimdhp"):
        isa_for("aarch64", ("asimd",), "fp16")
    with pytest.raises(CodegenError, match="arm64"):
        isa_for("x86_64", ("avx2", "fma"), "fp16")


def test_fp16_toolchain_flags_and_refusals():
    assert ARM64_FP16_MARCH in fp16_toolchain().flags  # no device: what was asked for
    tc = toolchain_for("cpu", "fp16", abi="arm64-v8a", features=("asimd", "asimddp", "asimdhp"))
    assert ARM64_DOTPROD_FP16_MARCH in tc.flags and tc.isa() is NEON_FP16
    assert "fphp" in tc.target().features
    with pytest.raises(CodegenError, match="no FP16 arithmetic"):
        toolchain_for("cpu", "fp16", abi="arm64-v8a", features=("asimd", "asimddp"))
    with pytest.raises(CodegenError, match="arm64"):
        toolchain_for("cpu", "fp16")  # this x86-64 host
    assert toolchain_for("cpu", "fp32", abi="arm64-v8a").isa().elem == "float"


def test_fp16_bundle_layout(tmp_path, clang):
    """Kernel names carry f16, NCHW8c, weights are float16, the ends float32, and clang
    emits FP16 FMAs (fmla v.8h)."""
    model = small_cnn()
    x = torch.randn(1, 3, 32, 32)
    b16 = _compile(model, x, tmp_path / "f16", "small_f16")
    src = (b16.path / "kernels.c").read_text()
    assert "typedef _Float16 vf" in src
    names = set(re.findall(r"\b(?:dw)?conv2d_\w+__neonfp16_\w+", src))
    assert names and all("_nchw8c_f16__" in n or "_nchw_f16__" in n for n in names)
    m = b16.manifest
    ends = [m.tensors[i] for i in (*m.inputs, *m.outputs)]
    assert all(t.dtype == "float32" for t in ends)
    assert ends[0].shape == (1, 3, 32, 32) and ends[-1].shape == (1, 10)
    # 2 bytes a weight: direct convs whose channels need no padding at 4 or 8 lanes give half
    # the blob (Winograd's weights differ: F(2,3) at fp16, F(4,3) at fp32)
    conv = nn.Sequential(nn.Conv2d(16, 32, 3), nn.ReLU(), nn.Conv2d(32, 16, 1)).eval()
    xc = torch.randn(1, 16, 8, 8)
    c16 = _compile(conv, xc, tmp_path / "c16", "conv_f16", _direct)
    c32 = compile_model(conv, (xc,), tmp_path / "c32", name="conv_f32",
                        toolchain=Arm64AndroidToolchain(), tuning=_direct)
    w16, w32 = (c.file("weights").stat().st_size for c in (c16, c32))
    assert abs(2 * w16 - w32) <= 4 * 64  # up to 64 bytes of alignment a param
    objdump = shutil.which("llvm-objdump")
    if objdump is None:
        pytest.skip("no llvm-objdump")
    # llvm-objdump decodes FP16 instructions only when told the feature
    text = subprocess.run([objdump, "-d", "--mattr=+fullfp16", str(b16.file("kernels"))],
                          capture_output=True, text=True, check=True).stdout
    assert len(re.findall(r"fmla\s+v\d+\.8h", text)) > 100


def test_fp16_winograd_variants(tmp_path, clang):
    """F(4,3) and F(2,3) at fp16, no F(6,3) (cost.FP16_WINOGRAD); asking for it is refused."""
    from codegen import cost

    conv = nn.Sequential(nn.Conv2d(32, 32, 3, padding=1)).eval()
    space = cost.tuning_space(_layer(conv), (1, 4, 56, 56, 8), NEON_FP16)
    assert set(space["algo"]) == {"direct", "winograd2", "winograd4"}
    assert cost.default_tuning(_layer(conv), (1, 4, 56, 56, 8), NEON_FP16)["algo"] == "winograd4"
    with pytest.raises(CodegenError, match="winograd6.*not offered at f16"):
        _compile(conv, torch.randn(1, 32, 16, 16), tmp_path, "w6", _wino("winograd6"))


def _layer(module: nn.Module):
    from codegen import capture

    return capture(module, torch.randn(1, 32, 56, 56)).steps[0]


# ---- every kernel kind, awkward channel counts, under qemu -cpu cortex-a76 ----

class _Res(nn.Module):
    """conv -> bn -> relu -> conv -> bn + skip -> relu: the fused residual epilogue."""

    def __init__(self, c: int, k: int = 3):
        super().__init__()
        self.a = nn.Conv2d(c, c, k, padding=k // 2)
        self.b = nn.Conv2d(c, c, k, padding=k // 2)
        self.bn = nn.BatchNorm2d(c)

    def forward(self, x):
        return torch.relu(self.bn(self.b(torch.relu(self.a(x)))) + x)


def _direct(la, graph, target):
    return {"algo": "direct"} if la.op == "conv2d" else None


def _wino(algo):
    return lambda la, graph, target: {"algo": algo} if la.op == "conv2d" else None


KINDS = {
    # name: (module, input shape, tuning lookup)
    "stem_7x7s2_plain": (lambda: nn.Sequential(nn.Conv2d(3, 13, 7, 2, 3), nn.ReLU()),
                         (1, 3, 29, 31), None),
    "direct_3x3s1": (lambda: nn.Sequential(nn.Conv2d(12, 21, 3, 1, 1), nn.ReLU6()),
                     (1, 12, 15, 17), _direct),
    "winograd2": (lambda: nn.Sequential(nn.Conv2d(19, 13, 3, 1, 1)), (1, 19, 14, 13),
                  _wino("winograd2")),
    "winograd4": (lambda: nn.Sequential(nn.Conv2d(27, 11, 3, 1, 1), nn.Hardswish()),
                  (1, 27, 18, 15), None),
    "conv_3x3s2": (lambda: nn.Sequential(nn.Conv2d(10, 17, 3, 2, 1), nn.Sigmoid()),
                   (1, 10, 17, 19), None),
    "conv_1x1": (lambda: nn.Sequential(nn.Conv2d(13, 30, 1), nn.ReLU()), (1, 13, 9, 11), None),
    "depthwise_s1_s2": (lambda: nn.Sequential(nn.Conv2d(20, 20, 3, 1, 1, groups=20),
                                              nn.ReLU6(),
                                              nn.Conv2d(20, 20, 3, 2, 1, groups=20)),
                        (1, 20, 13, 15), None),
    "grouped": (lambda: nn.Sequential(nn.Conv2d(16, 32, 3, 1, 1, groups=2)), (1, 16, 9, 9),
                _direct),
    "residual_winograd": (lambda: _Res(24), (1, 24, 12, 12), None),
    "residual_direct": (lambda: _Res(11), (1, 11, 10, 9), _direct),
    "pools": (lambda: nn.Sequential(nn.Conv2d(5, 19, 1), nn.MaxPool2d(3, 2, 1),
                                    nn.AvgPool2d(2, ceil_mode=True), nn.AdaptiveAvgPool2d(1)),
              (1, 5, 21, 23), None),
    "linear": (lambda: nn.Sequential(nn.Flatten(), nn.Linear(3 * 7 * 5, 13), nn.ReLU(),
                                     nn.Linear(13, 6)), (2, 3, 7, 5), None),
}


@pytest.mark.parametrize("kind", list(KINDS))
def test_kernel_kind_equals_pytorch(kind, a76, clang, tmp_path):
    factory, shape, tuning = KINDS[kind]
    torch.manual_seed(3)
    model = randomize_bn(factory().eval())
    x = torch.randn(shape, generator=torch.Generator().manual_seed(4))
    bundle = _compile(model, x, tmp_path, f"fp16_{kind}", tuning)
    src = (bundle.path / "kernels.c").read_text()
    if kind.startswith("winograd"):
        m = kind[-1]
        assert f"winograd{m}_input_nchw8c_f16__neonfp16" in src
        assert f"winograd{m}_output_nchw8c_f16__neonfp16" in src
        assert "winograd_gemm_nchw8c_f16__neonfp16_" in src
    f43 = kind in ("winograd4", "residual_winograd")  # the cost model picks F(4,3) for both
    assert ("winograd4_input" in src) == f43
    _check(a76, bundle, model, x, WINOGRAD4_TOL if f43 else LAYER_TOL, threads=(1, 2))


# ---- whole models ----

@pytest.mark.parametrize("key, shape", [("small_cnn", (1, 3, 32, 32)),
                                        ("resnet18", (1, 3, 64, 64)),
                                        ("mobilenet_v2", (1, 3, 64, 64))])
def test_model_equals_pytorch(key, shape, a76, clang, tmp_path):
    model = small_cnn() if key == "small_cnn" else torchvision_model(key)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    bundle = _compile(model, x, tmp_path, f"{key}_f16")
    src = (bundle.path / "kernels.c").read_text()
    assert "__neonfp16_" in src and "__neon_" not in src
    _check(a76, bundle, model, x, MODEL_TOL, threads=(1, 2))


class _TwoOutputs(nn.Module):
    """A graph output that a later layer also reads (the Linear): it is written in fp16 for
    the Linear and cast to float32 for the caller."""

    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(3, 10, 3, padding=1)
        self.fc = nn.Linear(10 * 8 * 8, 5)

    def forward(self, x):
        y = torch.relu(self.c(x))
        return y, self.fc(y.flatten(1))


def test_outputs_read_inside_the_graph(a76, clang, tmp_path):
    from host.devices.session import Session

    torch.manual_seed(5)
    model = _TwoOutputs().eval()
    x = torch.randn(1, 3, 8, 8)
    bundle = _compile(model, x, tmp_path, "two_outputs")
    m = bundle.manifest
    assert [m.tensors[i].dtype for i in m.outputs] == ["float32", "float32"]
    assert [s.op for s in m.steps].count("cast") == 3  # the input, then both outputs
    with Session(a76, call_timeout_s=CALL_TIMEOUT_S) as s:
        got = s.run(s.load(bundle), [x.numpy()])
    with torch.no_grad():
        want = model(x)
    for g, w in zip(got, want, strict=True):
        assert g.dtype == np.float32 and rel_err(g, w.numpy()) <= LAYER_TOL


def test_fp32_tuning_database_entries_do_not_steer_fp16(tmp_path, clang):
    """The database keys entries by target and ISA, not precision: an fp32 entry (here F(6,3),
    which fp16 refuses) for the very layer is not applied to the fp16 bundle, and applies to
    the fp32 one."""
    from codegen import TuningDB, capture, layer_key
    from codegen.autotune.db import Entry

    conv = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1)).eval()
    x = torch.randn(1, 16, 16, 16)
    graph = capture(conv, x)
    a76 = ("asimd", "asimddp", "asimdhp", "fphp")  # fp32 and fp16 builds share this Target
    tc16 = Arm64AndroidToolchain(features=a76, precision="fp16")
    tc32 = Arm64AndroidToolchain(features=a76)
    target = tc16.target()
    assert target == tc32.target()
    db = TuningDB(tmp_path / "tuning.json")
    point = {"algo": "winograd6", "oc_tile": 1, "w_tile": 4}
    db.put(Entry(layer_key(graph.steps[0], graph, target, 1), point, 1.0, point, 1.0))
    b16 = compile_model(conv, (x,), tmp_path / "f16", name="db16", toolchain=tc16,
                        tuning=db.lookup(1))
    assert "winograd4_input_nchw8c_f16" in (b16.path / "kernels.c").read_text()
    b32 = compile_model(conv, (x,), tmp_path / "f32", name="db32", tuning=db.lookup(1),
                        toolchain=tc32)
    assert "winograd6_input_nchw4c__neon" in (b32.path / "kernels.c").read_text()
