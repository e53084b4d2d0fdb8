"""A measuring session on one device: upload what is missing, load, run, benchmark.

The session outlives its runner: when the runner dies mid-session (a crashing kernel, a killed
process), a device that can restart it (the local runner) is restarted, the model re-uploaded
where needed and reloaded, and the call retried once. A device that cannot be restarted gives
a RunnerError that says so. Nothing waits longer than its deadline.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from codegen.bundle import Bundle

from .measure import BenchmarkResult
from .rpc.client import LoadedModel, ProgressFn, RunnerClient, RunnerError


class Device(Protocol):
    name: str

    def start(self) -> None: ...
    def restart(self) -> None: ...
    def client(self, timeout_s: float = 60.0) -> RunnerClient: ...
    def close(self) -> None: ...


class RemoteRunner:
    """A runner someone else started (by hand, or on a phone behind `adb forward`)."""

    name = "remote"

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

    def close(self) -> None:
        pass


@dataclass
class LoadOptions:
    threads: int = 1
    cpu_affinity: tuple[int, ...] = ()
    pin_big_cores: bool = False
    backend: str = "cpu"


class Session:
    def __init__(self, device: Device, call_timeout_s: float = 60.0,
                 on_event: Callable[[str], None] | None = None):
        self.device = device
        self.call_timeout_s = call_timeout_s
        self.on_event = on_event or (lambda _msg: None)
        self.restarts = 0
        device.start()
        self._client = device.client(call_timeout_s)
        self._loaded: dict[str, tuple[Bundle, LoadOptions, LoadedModel]] = {}

    @property
    def client(self) -> RunnerClient:
        return self._client

    def close(self) -> None:
        for key in list(self._loaded):
            self.unload(key)
        self._client.close()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _recover(self, err: RunnerError) -> None:
        self.on_event(f"runner lost ({err.code}); restarting it")
        self.device.restart()  # raises for devices that cannot be restarted
        self.restarts += 1
        self._client.close()
        self._client = self.device.client(self.call_timeout_s)
        for key, (bundle, opts, _) in list(self._loaded.items()):
            self._loaded[key] = (bundle, opts, self._load(bundle, opts, None))

    def _with_retry(self, fn):
        try:
            return fn()
        except RunnerError as e:
            if not e.unreachable:
                raise
            self._recover(e)
            return fn()

    def _load(self, bundle: Bundle, opts: LoadOptions, progress: ProgressFn | None):
        self._client.ensure_artifacts(bundle, progress)
        return self._client.load_model(bundle.manifest, opts.threads, opts.cpu_affinity,
                                       opts.pin_big_cores, opts.backend)

    def load(self, bundle: Bundle, opts: LoadOptions | None = None,
             progress: ProgressFn | None = None) -> str:
        """Upload (only what is missing) and load; returns a key for run/benchmark."""
        opts = opts or LoadOptions()
        model = self._with_retry(lambda: self._load(bundle, opts, progress))
        key = model.handle
        self._loaded[key] = (bundle, opts, model)
        return key

    def loaded(self, key: str) -> LoadedModel:
        return self._loaded[key][2]

    def run(self, key: str, inputs: list[np.ndarray]) -> list[np.ndarray]:
        def call():
            bundle, _, model = self._loaded[key]
            return self._client.run(model.handle, bundle.manifest, inputs)
        return self._with_retry(call)

    def benchmark(self, key: str, runs: int = 100, warmup: int = 10,
                  per_layer: bool = False, timeout_s: float = 1800.0) -> BenchmarkResult:
        before = getattr(self.device, "before_measure", None)
        if before is not None:
            before(self.on_event)

        def call():
            _, _, model = self._loaded[key]
            r = self._client.benchmark(model.handle, runs, warmup, per_layer, timeout_s)
            return BenchmarkResult(r.samples_ns, r.warmup_ns, model.init_ns, r.threads,
                                   r.layers, r.telemetry_before, r.telemetry_after)
        return self._with_retry(call)

    def unload(self, key: str) -> None:
        bundle, opts, model = self._loaded.pop(key)
        try:
            self._client.unload(model.handle)
        except RunnerError as e:
            if not (e.unreachable or e.code == "NOT_FOUND"):
                raise
