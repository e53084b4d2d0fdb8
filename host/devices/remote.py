"""A runner someone else started (by hand, or on a phone behind `adb forward`), reached at an
address with its session token. npas-host cannot restart it."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack

from ..errors import UserError
from ..rpc.client import RunnerClient, RunnerError
from . import DeviceSpec, DeviceTraits


class RemoteRunner:
    """A runner listening at ``address`` that takes ``token``."""

    name = "remote"
    traits = DeviceTraits()

    def __init__(self, address: str, token: str):
        self.address, self.token = address, token

    def start(self) -> None:
        pass

    def restart(self) -> None:
        raise RunnerError("restart", "UNAVAILABLE",
                          "the runner is not reachable and was not started by npas-host, so "
                          "it cannot be restarted from here; start it again", self.address)

    def client(self, timeout_s: float = 60.0) -> RunnerClient:
        return RunnerClient(self.address, self.token, timeout_s)

    def before_measure(self, on_event: Callable[[str], None]) -> None:
        pass

    def close(self) -> None:
        pass


def from_spec(spec: DeviceSpec, stack: ExitStack) -> RemoteRunner:
    """The runner at ``spec.address`` (devices/__init__.py's registry)."""
    if spec.address is None or spec.token is None:
        raise UserError("--address needs --token-file (the runner's session token)")
    return RemoteRunner(spec.address, spec.token)
