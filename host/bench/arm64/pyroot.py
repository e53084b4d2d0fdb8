"""The arm64 Python that runs under qemu-aarch64 (build/arm64-python, made by
scripts/build_arm64_python.sh): Debian's arm64 python3.11 with the aarch64 wheels of numpy, ncnn
and MNN in its site folder, and how to start guest.py in it.

The guest's environment is the caller's without any PYTHON* or QEMU_* variable, plus
PYTHONPATH (the site folder), PYTHONNOUSERSITE and PYTHONDONTWRITEBYTECODE, so the guest never
sees the host's packages or writes into the tree; PYTHONHASHSEED=0 keeps runs alike.
"""

from __future__ import annotations

import os
from pathlib import Path

from host.devices.local import REPO_ROOT
from host.devices.qemu import find_qemu

from .counting import QEMU_CPU

PYROOT = REPO_ROOT / "build" / "arm64-python"
GUEST_SCRIPT = Path(__file__).with_name("guest.py")
BUILD_HINT = "build it with scripts/build_arm64_python.sh"


def find_pyroot() -> Path:
    """build/arm64-python, checked for its Python and its site folder."""
    for need in (PYROOT / "usr" / "bin" / "python3.11", PYROOT / "site" / "numpy"):
        if not need.exists():
            raise FileNotFoundError(f"the arm64 Python is not built ({need} is missing); "
                                    f"{BUILD_HINT}")
    return PYROOT


def guest_env(root: Path = PYROOT) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYTHON", "QEMU_"))}
    env.update(PYTHONPATH=str(root / "site"), PYTHONNOUSERSITE="1",
               PYTHONDONTWRITEBYTECODE="1", PYTHONHASHSEED="0")
    return env


def guest_command(script_args: list[str],
                  plugin: list[str] | None = None) -> tuple[list[str], dict[str, str]]:
    """The command line that runs guest.py with ``script_args`` under qemu-aarch64, and the
    environment to run it with. ``plugin`` is extra qemu arguments (e.g. ``["-plugin",
    "/path/libcount.so,out=/tmp/x"]``), placed before the program. Raises FileNotFoundError
    when the arm64 Python or qemu-aarch64 is missing."""
    root = find_pyroot()
    cmd = [find_qemu(), "-cpu", QEMU_CPU, "-L", str(root), *(plugin or []),
           str(root / "usr" / "bin" / "python3.11"), str(GUEST_SCRIPT), *script_args]
    return cmd, guest_env(root)
