"""Host tier: compile bundles with the system cc and run them in-process through ctypes,
comparing with torch. Needs ``cc`` (skipped without it)."""

from __future__ import annotations

import ctypes
import math
import subprocess

import numpy as np
import pytest
import torch
from codegen_models import every_op_cnn
from ctypes_exec import run_bundle
from zoo import rel_err, small_cnn, torchvision_model

from codegen import CompileError, HostToolchain, compile_model, read_report
from codegen.bundle import BundleError, load_bundle
from codegen.emit.c import MATH, PRELUDE

pytestmark = pytest.mark.host
TOL = 1e-4
MODELS = [("every_op", every_op_cnn, (2, 3, 61, 53)),
          ("small_cnn", small_cnn, (2, 3, 33, 29)),
          ("resnet18", lambda: torchvision_model("resnet18"), (2, 3, 64, 64)),
          ("mobilenet_v2", lambda: torchvision_model("mobilenet_v2"), (1, 3, 64, 64)),
          ("vgg16", lambda: torchvision_model("vgg16"), (1, 3, 64, 64))]


@pytest.mark.parametrize("name,factory,shape", MODELS, ids=[m[0] for m in MODELS])
def test_compiled_model_matches_torch(cc, tmp_path, name, factory, shape) -> None:
    model = factory()
    x = torch.randn(shape, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        want = model(x)
    stages: list[str] = []
    bundle = compile_model(model, x, tmp_path / name, name=name, progress=stages.append)
    assert stages[0] == "capture" and stages[-1] == "done"
    (got,) = run_bundle(tmp_path / name, [x.numpy()])
    assert got.shape == tuple(want.shape)
    assert rel_err(got, want) <= TOL

    lib = bundle.file("kernels")
    undefined = subprocess.run(["nm", "-D", "--undefined-only", str(lib)], check=True,
                               capture_output=True, text=True).stdout
    assert undefined.strip() == "", f"kernel library needs symbols: {undefined}"
    exported = subprocess.run(["nm", "-D", "--defined-only", str(lib)], check=True,
                              capture_output=True, text=True).stdout
    for s in bundle.manifest.steps:
        assert s.symbol in exported
        assert s.work_items > 0 and s.flops >= 0
    assert "npas_kernel_abi_version" in exported

    report = read_report(tmp_path / name)
    assert report.arena_bytes == bundle.manifest.arena_bytes
    assert 0 < report.peak_bytes <= report.arena_bytes
    assert report.stage_seconds["compile"] > 0 and report.steps == len(bundle.manifest.steps)


def test_bundle_on_disk_round_trips_and_detects_tampering(cc, tmp_path) -> None:
    model = small_cnn()
    bundle = compile_model(model, torch.randn(1, 3, 32, 32), tmp_path / "b", name="b")
    m = bundle.manifest
    assert m.content_hash and m.with_hash().content_hash == m.content_hash
    loaded = load_bundle(tmp_path / "b")
    assert loaded.manifest == m and loaded.manifest.content_hash == m.content_hash
    assert (tmp_path / "b" / "kernels.c").is_file()
    assert {a.role for a in m.artifacts} == {"kernels", "weights"}
    assert all(p.offset % 64 == 0 for s in m.steps for p in s.params)
    assert m.toolchain.version and "-nostdlib" in m.toolchain.flags
    assert m.target.arch and m.target.os == "linux"
    conv = next(s for s in m.steps if s.op == "conv2d")
    assert len(conv.params) == 2  # folded weight, bias
    with open(bundle.file("weights"), "r+b") as f:
        f.write(b"\1")
    with pytest.raises(BundleError, match="does not match"):
        load_bundle(tmp_path / "b")


def test_compiler_error_carries_stderr(cc, tmp_path) -> None:
    with pytest.raises(CompileError, match="error") as e:
        HostToolchain().compile("int broken( {", tmp_path / "libbad.so")
    assert "libbad.so" in str(e.value)
    with pytest.raises(CompileError, match="undefined reference"):
        HostToolchain().compile("float f(float x); float g(float x) { return f(x); }",
                                tmp_path / "libundef.so")


@pytest.fixture(scope="module")
def mathlib(tmp_path_factory):
    import shutil
    if not shutil.which("cc"):
        pytest.skip("host tier: no C compiler (cc) on PATH")
    src = PRELUDE % {"abi": 1} + MATH + """
NPAS_EXPORT void t_expf(const float *x, float *y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = npas_expf(x[i]); }
NPAS_EXPORT void t_sigmoid(const float *x, float *y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = npas_sigmoid(x[i]); }
"""
    path = HostToolchain().compile(src, tmp_path_factory.mktemp("math") / "libmath.so")
    lib = ctypes.CDLL(str(path))

    def call(fn: str, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        y = np.empty_like(x)
        getattr(lib, fn)(x.ctypes.data_as(ctypes.c_void_p), y.ctypes.data_as(ctypes.c_void_p),
                         ctypes.c_int64(x.size))
        return y
    return call


def test_expf_relative_error_and_saturation(mathlib) -> None:
    rng = np.random.default_rng(0)
    x = np.concatenate([np.linspace(-87.3, 88.72, 400_001, dtype=np.float32),
                        rng.uniform(-5, 5, 100_000).astype(np.float32),
                        np.float32([0.0, -0.0, 1e-30, -1e-30])])
    got = mathlib("t_expf", x).astype(np.float64)
    want = np.exp(x.astype(np.float64))
    assert np.max(np.abs(got - want) / want) < 1e-6
    edge = np.float32([89.0, 1e4, np.inf, -104.0, -1e4, -np.inf, np.nan])
    out = mathlib("t_expf", edge)
    assert np.isinf(out[:3]).all() and (out[:3] > 0).all()
    assert (out[3:6] == 0).all() and math.isnan(out[6])


def test_sigmoid_accuracy_and_saturation(mathlib) -> None:
    x = np.linspace(-80, 80, 200_001, dtype=np.float32)
    got = mathlib("t_sigmoid", x).astype(np.float64)
    want = 1 / (1 + np.exp(-x.astype(np.float64)))
    assert np.max(np.abs(got - want) / want) < 1e-6
    out = mathlib("t_sigmoid", np.float32([200, 1e30, np.inf, -200, -1e30, -np.inf]))
    assert (out[:3] == 1).all() and (out[3:] == 0).all()
