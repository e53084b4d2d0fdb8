"""Shared fixtures. Tiers: pure Python (no marker), host (compiler + host runner), arm64,
opencl, phone. A tier whose tools are missing is skipped with the reason; scripts/test.sh
installs the tools for the host tier, so there it always runs."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from host.devices.local import LocalRunner, LocalRunnerConfig, find_runner_binary  # noqa: E402


@pytest.fixture(scope="session")
def runner_binary() -> Path:
    try:
        return find_runner_binary()
    except FileNotFoundError as e:
        pytest.skip(f"host tier: {e}")


@pytest.fixture(scope="session")
def cc() -> str:
    path = shutil.which("cc")
    if not path:
        pytest.skip("host tier: no C compiler (cc) on PATH")
    return path


@pytest.fixture(scope="session")
def local_runner(runner_binary, tmp_path_factory):
    """One runner for the whole session (its own store)."""
    store = tmp_path_factory.mktemp("store")
    with LocalRunner(LocalRunnerConfig(binary=runner_binary, store=store)) as r:
        yield r


@pytest.fixture()
def fresh_runner(runner_binary, tmp_path):
    """A runner per test, for tests that kill or restart it."""
    with LocalRunner(LocalRunnerConfig(binary=runner_binary, store=tmp_path / "store")) as r:
        yield r


@pytest.fixture(scope="session")
def compiled(tmp_path_factory, cc):
    """compiled(key, factory, shape) -> Bundle, compiled once per session and key."""
    from codegen import compile_model

    cache: dict = {}

    def get(key: str, factory, shape):
        if key not in cache:
            import torch
            model = factory()
            x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
            out = tmp_path_factory.mktemp(f"bundle-{key}")
            cache[key] = (compile_model(model, (x,), out, name=key), model, x)
        return cache[key]

    return get


@pytest.fixture()
def one_thread():
    """What the search does too: one torch thread (the runner measures on the other core);
    the search tests use it for every test (``pytest.mark.usefixtures``)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def clang() -> str:
    """The arm64 tier's compiler: Debian's clang with lld, or a skip saying how to get them."""
    if not shutil.which("clang") or not shutil.which("ld.lld"):
        pytest.skip("arm64 tier: clang and lld are needed (apt-get install clang lld, or "
                    "scripts/build_arm64.sh)")
    return shutil.which("clang")


@pytest.fixture(scope="module")
def a76(clang, tmp_path_factory):
    """The arm64 runner under qemu-aarch64 emulating a Cortex-A76 (FP16 arithmetic and dot
    product: the fp16, fp16-sparse and int8 tiers), one per test module."""
    from host.devices.qemu import QemuArm64Runner

    try:
        runner = QemuArm64Runner(LocalRunnerConfig(store=tmp_path_factory.mktemp("a76-store"),
                                                   startup_timeout_s=120.0),
                                 qemu_args=("-cpu", "cortex-a76"))
    except FileNotFoundError as e:
        pytest.skip(f"arm64 tier: {e}")
    with runner:
        yield runner

