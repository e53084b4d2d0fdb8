"""Devices the host can measure on, and how one is chosen: the Device protocol every device
implements, its DeviceTraits, and open_device(DeviceSpec) over a registry of device kinds.

A kind is one module here with ``from_spec(spec, stack) -> Device`` plus one row in KINDS:
local (the host runner, local.py), qemu-arm64 (qemu.py), qemu-arm64-static (qemu_static.py: the
static runner phones get, with no sysroot), a runner at an address (remote.py)
and a phone by adb serial (phone.py). Callers ask a device's ``traits`` what it needs; nothing
compares device names to decide behaviour.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from ..errors import UserError
from ..measure import MeasureConfig

if TYPE_CHECKING:
    from ..rpc.client import RunnerClient


@dataclass(frozen=True)
class DeviceTraits:
    """What a device needs from its callers, declared by the device.

    call_timeout_s: the deadline of one runner call (emulators are slow);
    timing_note: a caveat printed with its timings ("" when none);
    pin_big_cores: load models with the threads pinned to the big cores;
    shares_host_cpu: the runner runs on this machine's CPU, so training must pause while it
    measures; default_warmup: discarded warm-up runs when the user gives none.
    """

    call_timeout_s: float = 60.0
    timing_note: str = ""
    pin_big_cores: bool = False
    shares_host_cpu: bool = False
    default_warmup: int = MeasureConfig.warmup


class Device(Protocol):
    """A runner the host can reach: started, restarted after a crash where possible, closed."""

    name: str
    traits: DeviceTraits

    def start(self) -> None: ...
    def restart(self) -> None: ...
    def client(self, timeout_s: float = 60.0) -> RunnerClient: ...
    def close(self) -> None: ...
    def before_measure(self, on_event: Callable[[str], None]) -> None:
        """Called before every benchmark (phones wait to cool down); a no-op for most."""


@dataclass
class DeviceSpec:
    """Which device to open and how (the command line's --device, --address, --token-file,
    --runner, --store, --max-temp and --no-pin).

    name: 'local', 'qemu-arm64' or a phone's adb serial; address/token: a runner already
    listening (then ``name`` is only a label); runner/store: the local runner's binary and
    artifact store; max_temp_c: phones cool below this before timing; private_store_bytes:
    for the local runner without --store, a private temporary store of at most this size
    (work that uploads many distinct bundles: a search, a tuner)."""

    name: str = "local"
    address: str | None = None
    token: str | None = None
    runner: Path | None = None
    store: Path | None = None
    max_temp_c: float = 40.0
    pin_big_cores: bool = True
    private_store_bytes: int | None = None


@dataclass(frozen=True)
class DeviceKind:
    """One row of the registry: a kind of device, when a spec means it, and the module (in
    this package) whose ``from_spec(spec, stack)`` opens it."""

    name: str
    matches: Callable[[DeviceSpec], bool]
    module: str
    help: str


# First match wins: an address means that runner, whatever --device says.
KINDS: tuple[DeviceKind, ...] = (
    DeviceKind("remote", lambda s: s.address is not None, "remote",
               "a runner already listening at --address (with --token-file)"),
    DeviceKind("local", lambda s: s.name == "local", "local", "the host runner"),
    DeviceKind("qemu-arm64", lambda s: s.name == "qemu-arm64", "qemu",
               "the arm64 runner under qemu: real arm64 kernels, meaningless timings"),
    DeviceKind("qemu-arm64-static", lambda s: s.name == "qemu-arm64-static", "qemu_static",
               "the static arm64 runner (the one pushed to phones) under qemu, no sysroot"),
    DeviceKind("phone", lambda s: True, "phone", "a phone by its adb serial"),
)


def device_kind(spec: DeviceSpec) -> DeviceKind:
    """The registry row for ``spec``."""
    return next(k for k in KINDS if k.matches(spec))


def open_device(spec: DeviceSpec, stack: ExitStack) -> Device:
    """The device ``spec`` names, closed when ``stack`` closes; not started yet (Session starts
    it). What the user can fix (a missing runner binary, no token) raises UserError."""
    kind = device_kind(spec)
    module = importlib.import_module(f".{kind.module}", __name__)
    try:
        return module.from_spec(spec, stack)
    except FileNotFoundError as e:
        raise UserError(str(e)) from None
