"""The qemu-arm64 device: the arm64 build of npas-runner under qemu-aarch64 on this machine.

No phone is reachable from the development machines; this is the closest check: kernels built
for arm64-v8a (codegen's Arm64AndroidToolchain) loaded by an arm64 runner over the same gRPC
API, on loopback with a fresh token. scripts/build_arm64.sh builds the runner
(build/arm64/npas-runner) and the sysroot qemu loads its libraries from (build/arm64-sysroot).
Emulation makes it slow: startup and every call take several times longer than on the host,
and its timings say nothing about a phone's.
"""

from __future__ import annotations

import shutil
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path

from . import DeviceSpec, DeviceTraits
from .local import REPO_ROOT, LocalRunner, LocalRunnerConfig, default_cache_dir

ARM64_RUNNER = REPO_ROOT / "build" / "arm64" / "npas-runner"
ARM64_SYSROOT = REPO_ROOT / "build" / "arm64-sysroot"
QEMU = "qemu-aarch64"
BUILD_HINT = "build it with scripts/build_arm64.sh"


def find_arm64_runner(explicit: Path | None = None) -> Path:
    """The arm64 runner: an explicit path or the project's build/arm64/npas-runner."""
    path = Path(explicit) if explicit else ARM64_RUNNER
    if not path.is_file():
        raise FileNotFoundError(f"arm64 npas-runner not found at {path}; {BUILD_HINT}")
    return path


def find_arm64_sysroot(explicit: Path | None = None) -> Path:
    """The arm64 sysroot qemu takes the loader and libraries from (qemu-aarch64 -L)."""
    path = Path(explicit) if explicit else ARM64_SYSROOT
    if not (path / "lib" / "ld-linux-aarch64.so.1").exists():
        raise FileNotFoundError(f"arm64 sysroot {path} has no lib/ld-linux-aarch64.so.1; "
                                f"{BUILD_HINT}")
    return path


def find_qemu(name: str = QEMU) -> str:
    path = shutil.which(name)
    if path is None:
        raise FileNotFoundError(f"{name} not found on PATH; install qemu-user "
                                f"(apt-get install qemu-user, or scripts/build_arm64.sh)")
    return path


class QemuArm64Runner(LocalRunner):
    """Start, stop and restart the arm64 runner under qemu-aarch64 (a LocalRunner whose command
    is prefixed with ``qemu-aarch64 -L <sysroot>``).

    ``config.binary`` defaults to build/arm64/npas-runner, ``config.store`` to its own store
    (the arm64 runner's kernels are not the host's), and the startup timeout is 120 s unless
    the config says otherwise; ``qemu_args`` go to qemu-aarch64 before the program (a CPU
    model, a plugin: bench/arm64/counting.py). Raises FileNotFoundError naming
    scripts/build_arm64.sh when the runner, the sysroot or qemu is missing."""

    name = "qemu-arm64"
    STARTUP_TIMEOUT_S = 120.0
    # emulation: every call is several times slower than native, and warm-up buys nothing
    traits = DeviceTraits(
        call_timeout_s=300.0, shares_host_cpu=True, default_warmup=1,
        timing_note=("qemu-arm64 emulates an arm64 CPU: the kernels and the runner are real "
                     "arm64 code, but these timings say nothing about a phone"))

    def __init__(self, config: LocalRunnerConfig | None = None, sysroot: Path | None = None,
                 qemu: str = QEMU, qemu_args: tuple[str, ...] = ()):
        if config is None:
            config = LocalRunnerConfig(store=default_cache_dir() / "store-qemu-arm64",
                                       startup_timeout_s=self.STARTUP_TIMEOUT_S)
        self.sysroot = find_arm64_sysroot(sysroot)
        self.qemu = find_qemu(qemu)
        config = replace(config, binary=find_arm64_runner(config.binary),
                         command_prefix=(self.qemu, *qemu_args, "-L", str(self.sysroot)))
        super().__init__(config)


def from_spec(spec: DeviceSpec, stack: ExitStack) -> QemuArm64Runner:
    """The qemu-arm64 device (devices/__init__.py's registry); its own runner and store."""
    qemu = QemuArm64Runner()
    stack.callback(qemu.close)
    return qemu
