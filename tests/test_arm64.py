"""arm64 tier: kernels built for arm64-v8a (Arm64AndroidToolchain, clang + lld) run on the arm64
runner under qemu-aarch64 (scripts/build_arm64.sh builds it) and match PyTorch. The closest
check to a phone these machines have; qemu's timings mean nothing, so none are asserted."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
import torch
from torch import nn
from zoo import rel_err, run_on_runner, small_cnn, torchvision_model

from codegen import compile_model
from codegen.toolchain import (
    ARM64_BASE_MARCH,
    ARM64_DOTPROD_FP16_MARCH,
    Arm64AndroidToolchain,
    HostToolchain,
    toolchain_for,
)
from host.devices.local import LocalRunnerConfig
from host.devices.session import Session
from host.measure import MeasureConfig
from host.rpc.client import RunnerError

pytestmark = pytest.mark.arm64

MODELS = {
    "small_cnn": (small_cnn, (1, 3, 32, 32)),
    "resnet18": (lambda: torchvision_model("resnet18"), (1, 3, 64, 64)),
    "mobilenet_v2": (lambda: torchvision_model("mobilenet_v2"), (1, 3, 64, 64)),
}
CALL_TIMEOUT_S = 300.0  # emulated: calls take several times longer than on the host


@pytest.fixture(scope="module")
def qemu_runner(tmp_path_factory):
    from host.devices.qemu import QemuArm64Runner

    try:
        runner = QemuArm64Runner(LocalRunnerConfig(store=tmp_path_factory.mktemp("arm64-store"),
                                                   startup_timeout_s=120.0))
    except FileNotFoundError as e:
        pytest.skip(f"arm64 tier: {e}")
    with runner:
        yield runner


@pytest.fixture(scope="module")
def device_info(qemu_runner):
    return qemu_runner.client().device_info()


@pytest.fixture(scope="module")
def arm64_compiled(tmp_path_factory, clang):
    """arm64_compiled(key, toolchain=None) -> (Bundle, model, x), once per key."""
    cache: dict = {}

    def get(key: str, toolchain: Arm64AndroidToolchain | None = None, name: str | None = None):
        name = name or key
        if name not in cache:
            factory, shape = MODELS[key]
            model = factory()
            x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
            out = tmp_path_factory.mktemp(f"arm64-{name}")
            bundle = compile_model(model, (x,), out, name=name,
                                   toolchain=toolchain or Arm64AndroidToolchain())
            cache[name] = (bundle, model, x)
        return cache[name]

    return get


def _run(runner, bundle, x, threads: int = 1):
    return run_on_runner(runner, bundle, x, threads, call_timeout_s=CALL_TIMEOUT_S)


# ---- toolchain choices (no qemu needed) ----

@pytest.mark.parametrize("features, march", [
    ((), ARM64_BASE_MARCH),
    (("asimd", "asimddp"), ARM64_BASE_MARCH),  # dot product without fp16
    (("asimd", "fphp", "asimdhp"), ARM64_BASE_MARCH),  # fp16 without dot product
    (("asimd", "asimddp", "asimdhp"), ARM64_DOTPROD_FP16_MARCH),
    (("asimd", "asimddp", "fphp"), ARM64_DOTPROD_FP16_MARCH),
])
def test_march_follows_device_features(features, march):
    tc = Arm64AndroidToolchain(compiler="clang", features=features)
    assert march in tc.flags
    assert {ARM64_BASE_MARCH, ARM64_DOTPROD_FP16_MARCH} - {march} & set(tc.flags) == set()
    assert "--target=aarch64-linux-android24" in tc.flags
    t = tc.target()
    assert (t.arch, t.os, t.abi) == ("aarch64", "android", "arm64-v8a")
    assert ("asimddp" in t.features) == (march == ARM64_DOTPROD_FP16_MARCH)


def test_toolchain_for_picks_by_abi(tmp_path):
    assert isinstance(toolchain_for("cpu"), HostToolchain)
    tc = toolchain_for("cpu", abi="arm64-v8a", features=("asimddp", "asimdhp"))
    assert isinstance(tc, Arm64AndroidToolchain)
    assert ARM64_DOTPROD_FP16_MARCH in tc.flags


def test_ndk_clang_is_preferred(tmp_path, monkeypatch):
    clang = tmp_path / "ndk" / "toolchains/llvm/prebuilt/linux-x86_64/bin/clang"
    clang.parent.mkdir(parents=True)
    clang.write_text("#!/bin/sh\n")
    monkeypatch.delenv("ANDROID_NDK_HOME", raising=False)
    monkeypatch.setenv("ANDROID_NDK_ROOT", str(tmp_path / "ndk"))
    assert Arm64AndroidToolchain().compiler == str(clang)
    monkeypatch.delenv("ANDROID_NDK_ROOT")
    assert Arm64AndroidToolchain().compiler == "clang"


# ---- the kernel library ----

def test_kernel_library_is_freestanding_arm64(arm64_compiled):
    bundle, _, _ = arm64_compiled("small_cnn")
    lib = bundle.file("kernels")
    readelf = shutil.which("llvm-readelf") or shutil.which("readelf")
    if readelf is None:
        pytest.skip("arm64 tier: no readelf (binutils or llvm)")
    header = subprocess.run([readelf, "-h", str(lib)], capture_output=True, text=True,
                            check=True).stdout
    assert "AArch64" in header and "DYN" in header
    dyn = subprocess.run([readelf, "-d", str(lib)], capture_output=True, text=True,
                         check=True).stdout
    assert "NEEDED" not in dyn
    assert f"[{lib.name}]" in dyn  # the soname
    syms = subprocess.run([readelf, "--dyn-syms", "-W", str(lib)], capture_output=True,
                          text=True, check=True).stdout
    undefined = [ln.split()[-1] for ln in syms.splitlines()
                 if " UND " in ln and len(ln.split()) >= 8]
    assert undefined == []
    assert bundle.manifest.target.abi == "arm64-v8a"


def test_conv_kernels_use_neon_fma(arm64_compiled):
    """The blocked conv kernels are written with vector extensions, so clang emits NEON FMAs
    (the scalar loops used to be unrolled before its vectoriser saw them)."""
    bundle, _, _ = arm64_compiled("resnet18")
    assert "conv2d_3x3s1_nchw4c__neon_" in (bundle.path / "kernels.c").read_text()
    objdump = shutil.which("llvm-objdump")
    if objdump is None:
        pytest.skip("arm64 tier: no llvm-objdump")
    text = subprocess.run([objdump, "-d", str(bundle.file("kernels"))], capture_output=True,
                          text=True, check=True).stdout
    assert len(re.findall(r"fmla\s+v\d+\.4s", text)) > 100


# ---- on the arm64 runner under qemu ----

def test_device_info_reports_arm64(device_info):
    assert device_info.abi == "arm64-v8a"
    assert device_info.machine == "aarch64"


@pytest.mark.parametrize("key", list(MODELS))
@pytest.mark.parametrize("threads", [1, 2])
def test_arm64_output_equals_pytorch(key, threads, arm64_compiled, qemu_runner):
    bundle, model, x = arm64_compiled(key)
    with torch.no_grad():
        want = model(x).numpy()
    got = _run(qemu_runner, bundle, x, threads)
    assert got.shape == want.shape
    assert rel_err(got, want) <= 1e-4


def test_kernels_for_the_device_features(device_info, arm64_compiled, qemu_runner):
    """Compile for what the runner reports (qemu's CPU has dot product and fp16, so this is the
    armv8.2-a build) and check it still runs and matches."""
    features = tuple(device_info.cpu_features)
    tc = toolchain_for("cpu", abi=device_info.abi, features=features)
    bundle, model, x = arm64_compiled("small_cnn", tc, name="small_cnn_devfeat")
    want_march = (ARM64_DOTPROD_FP16_MARCH
                  if "asimddp" in features and {"fphp", "asimdhp"} & set(features)
                  else ARM64_BASE_MARCH)
    assert want_march in bundle.manifest.toolchain.flags
    with torch.no_grad():
        want = model(x).numpy()
    assert rel_err(_run(qemu_runner, bundle, x), want) <= 1e-4


def test_x86_64_library_is_refused(compiled, qemu_runner):
    bundle, _, _ = compiled("small_cnn", *MODELS["small_cnn"])  # host cc: x86-64 kernels
    if bundle.manifest.target.arch == "aarch64":
        pytest.skip("this host builds aarch64 kernels itself")
    with Session(qemu_runner, call_timeout_s=CALL_TIMEOUT_S) as s:
        with pytest.raises(RunnerError) as e:
            s.load(bundle)
    assert e.value.code == "FAILED_PRECONDITION"
    assert bundle.manifest.target.arch in str(e.value) and "aarch64" in str(e.value)


def test_benchmark_returns_every_sample(arm64_compiled, qemu_runner):
    bundle, _, _ = arm64_compiled("small_cnn")
    with Session(qemu_runner, call_timeout_s=CALL_TIMEOUT_S) as s:
        h = s.load(bundle, MeasureConfig(threads=1))
        r = s.benchmark(h, MeasureConfig(threads=1, runs=3, warmup=1))
    assert len(r.samples_ns) == 3 and all(v > 0 for v in r.samples_ns)
    assert len(r.warmup_ns) == 1


def test_sparse_kernels_on_arm64_equal_torch(qemu_runner, clang, tmp_path):
    """Every sparse format (csr, bcsr with NEON's 4 filters per list, the block Linear) built
    for arm64 and run under qemu: the same result as PyTorch's pruned model."""
    from test_sparse import MIXED, SHAPE, _net

    from codegen import read_report
    from host.pruning import PruningConfig
    from host.pruning.plan import PruningPlan

    pruned = PruningPlan(dict(MIXED), PruningConfig(vector_width=16)).apply(_net(1))
    x = torch.randn(*SHAPE)
    with torch.no_grad():
        want = pruned.model(x)
    bundle = compile_model(pruned.model, x, tmp_path / "sparse", name="sparse_arm64",
                           toolchain=Arm64AndroidToolchain(), schemes=pruned.schemes)
    sparse = read_report(bundle.path).sparse
    assert sparse["c2"].startswith("block_punched: bcsr, m=8")  # 32 NEON registers
    assert sparse["fc"].startswith("block: bcsr, m=4")  # one NEON vector of outputs
    for threads in (1, 2):
        assert rel_err(_run(qemu_runner, bundle, x, threads), want.numpy()) <= 1e-4


def test_plain_pool_and_vector_stores_on_arm64_equal_torch(qemu_runner, clang, tmp_path):
    """NEON's 4-float vectors: sparse convs wide enough for whole-vector stores around a
    stride-2 max pool on plain NCHW (the shuffles of maxpool2d_plain_s2), under qemu."""
    from test_sparse import _PoolBetween

    from host.pruning import LayerRule, PruningConfig
    from host.pruning.plan import PruningPlan

    torch.manual_seed(9)
    plan = PruningPlan({"a": LayerRule("unstructured", 0.8), "b": LayerRule("unstructured", 0.8)},
                       PruningConfig(vector_width=16))
    pruned = plan.apply(_PoolBetween(nn.MaxPool2d(3, 2, 1)).eval())
    x = torch.randn(1, 8, 41, 41)
    with torch.no_grad():
        want = pruned.model(x)
    bundle = compile_model(pruned.model, x, tmp_path / "pool", name="pool_arm64",
                           toolchain=Arm64AndroidToolchain(), schemes=pruned.schemes,
                           sparse="always")
    assert "to_nchwxc" not in [s.op for s in bundle.manifest.steps]
    for threads in (1, 2):
        assert rel_err(_run(qemu_runner, bundle, x, threads), want.numpy()) <= 1e-4


# ---- the static runner (what phones get) under qemu-aarch64 with no sysroot ----

@pytest.fixture(scope="module")
def static_runner(tmp_path_factory):
    from host.devices.qemu_static import QemuArm64StaticRunner

    try:
        runner = QemuArm64StaticRunner(LocalRunnerConfig(
            store=tmp_path_factory.mktemp("arm64-static-store"), startup_timeout_s=120.0))
    except FileNotFoundError as e:
        pytest.skip(f"arm64 static tier: {e}")
    with runner:
        yield runner


def _readelf(*args: str) -> str:
    tool = shutil.which("readelf") or shutil.which("aarch64-linux-gnu-readelf")
    if tool is None:
        pytest.skip("readelf (binutils) is needed")
    return subprocess.run([tool, *args], capture_output=True, text=True, check=True).stdout


def test_static_runner_has_no_interpreter_and_no_libraries(static_runner):
    binary = str(static_runner.binary)
    assert "INTERP" not in _readelf("-l", binary)
    assert "NEEDED" not in _readelf("-d", binary)
    assert ".symtab" not in _readelf("-S", binary)  # stripped
    build_id = re.search(r"Build ID: ([0-9a-f]+)", _readelf("-n", binary)).group(1)
    version = subprocess.run([static_runner.qemu, binary, "--version"], capture_output=True,
                             text=True, check=True, timeout=60).stdout
    assert version.startswith("npas-runner ") and "arm64, static" in version
    assert f"build-id {build_id}" in version


def test_static_runner_says_it_has_no_gpu_backend(static_runner):
    info = static_runner.client(timeout_s=CALL_TIMEOUT_S).device_info()
    assert info.abi == "arm64-v8a"
    assert "this static build has no GPU backend" in info.opencl_status


def test_static_runner_profiles_resnet18_at_224_equal_to_pytorch(static_runner, clang,
                                                                  tmp_path):
    """The full-size model: one checked run, then a per-layer benchmark (1 warm-up, 1 run)."""
    model = torchvision_model("resnet18")
    x = torch.randn((1, 3, 224, 224), generator=torch.Generator().manual_seed(1))
    bundle = compile_model(model, (x,), tmp_path / "b", name="resnet18",
                           toolchain=Arm64AndroidToolchain())
    with torch.no_grad():
        want = model(x).numpy()
    with Session(static_runner, call_timeout_s=CALL_TIMEOUT_S) as s:
        key = s.load(bundle)
        (got,) = s.run(key, [x.numpy()])
        result = s.benchmark(key, MeasureConfig(runs=1, warmup=1, per_layer=True))
    assert rel_err(got, want) <= 1e-4
    assert len(result.samples_ns) == 1 and result.layers
