"""The qemu-arm64-static device: the static arm64 npas-runner under qemu-aarch64 with no sysroot.

build/arm64-static/npas-runner (scripts/build_arm64.sh, CMake's NPAS_STATIC=ON) is one static,
stripped executable: no program interpreter, no NEEDED libraries, no GPU backend. It is what
`npas-host install --device SERIAL` pushes to a phone, so running it here without
``qemu-aarch64 -L`` checks what a phone's bare kernel would see: nothing but the binary and the
kernel libraries it dlopens. Timings mean nothing, as for qemu-arm64.
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path

from . import DeviceSpec
from .local import REPO_ROOT, LocalRunner, LocalRunnerConfig, default_cache_dir
from .qemu import BUILD_HINT, QEMU, QemuArm64Runner, find_qemu

STATIC_ARM64_RUNNER = REPO_ROOT / "build" / "arm64-static" / "npas-runner"


def find_static_arm64_runner(explicit: Path | None = None) -> Path:
    """The static arm64 runner: an explicit path or build/arm64-static/npas-runner."""
    path = Path(explicit) if explicit else STATIC_ARM64_RUNNER
    if not path.is_file():
        raise FileNotFoundError(f"static arm64 npas-runner not found at {path}; {BUILD_HINT}")
    return path


class QemuArm64StaticRunner(LocalRunner):
    """The static arm64 runner under ``qemu-aarch64`` alone (no ``-L``: nothing to load).

    ``config.binary`` defaults to build/arm64-static/npas-runner, ``config.store`` to its own
    store; traits are qemu-arm64's. Raises FileNotFoundError naming scripts/build_arm64.sh when
    the runner or qemu is missing."""

    name = "qemu-arm64-static"
    STARTUP_TIMEOUT_S = QemuArm64Runner.STARTUP_TIMEOUT_S
    traits = QemuArm64Runner.traits

    def __init__(self, config: LocalRunnerConfig | None = None, qemu: str = QEMU):
        if config is None:
            config = LocalRunnerConfig(store=default_cache_dir() / "store-qemu-arm64-static",
                                       startup_timeout_s=self.STARTUP_TIMEOUT_S)
        self.qemu = find_qemu(qemu)
        config = replace(config, binary=find_static_arm64_runner(config.binary),
                         command_prefix=(self.qemu,))
        super().__init__(config)


def from_spec(spec: DeviceSpec, stack: ExitStack) -> QemuArm64StaticRunner:
    """The qemu-arm64-static device (devices/__init__.py's registry); its own runner and store."""
    runner = QemuArm64StaticRunner()
    stack.callback(runner.close)
    return runner
