"""The code generator's target for a device: which toolchain compiles for what a runner reports.

The device's runner says what it is (DeviceInfo: ABI and CPU features); this module maps that
onto codegen's toolchains, so callers never guess a target from a device's name.
"""

from __future__ import annotations

from codegen import CToolchain, OpenClToolchain, toolchain_for

from .errors import UserError

CPU_ABIS = ("x86_64", "arm64-v8a")


def toolchain_for_device(info, backend: str = "cpu",
                         precision: str = "fp32") -> CToolchain | OpenClToolchain:
    """The toolchain for ``backend``/``precision`` on the device that reported ``info`` (a
    DeviceInfo); ``info`` None means this machine (CPU code for the host). CPU fp16 is for
    arm64 devices whose features include fphp/asimdhp (codegen refuses others, naming them)."""
    if backend == "gpu":
        return toolchain_for("gpu", precision)
    if info is None:
        return toolchain_for("cpu", precision)
    if info.abi not in CPU_ABIS:
        raise UserError(f"the device's ABI {info.abi!r} has no CPU code generator; "
                        f"use --backend gpu")
    abi = None if info.abi == "x86_64" else info.abi
    return toolchain_for("cpu", precision, abi=abi, features=tuple(info.cpu_features))


def toolchain_for_abi(abi: str = "host", backend: str = "cpu",
                      precision: str = "fp32") -> CToolchain | OpenClToolchain:
    """The toolchain for an ABI named on the command line (``compile --abi``): 'host' is this
    machine, 'arm64-v8a' a phone."""
    if backend == "gpu":
        return toolchain_for("gpu", precision)
    return toolchain_for("cpu", precision, abi=None if abi == "host" else abi)
