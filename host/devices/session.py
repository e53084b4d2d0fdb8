"""A measuring session on one device: upload what is missing, load, run, benchmark.

The session outlives its runner: when the runner dies mid-session (a crashing kernel, a killed
process), a device that can restart it (the local runner) is restarted, the model re-uploaded
where needed and reloaded, and the call retried once. A device that cannot be restarted gives
a RunnerError that says so. A load that finds an artifact gone from the store (evicted, or
corrupted and removed by the runner) uploads it again and retries once. Nothing waits longer
than its deadline.

Each load records what it uploaded (``upload(key)``: bytes sent and seconds, 0 when the runner
had every artifact): with compact weight blobs (bundle format 2) that is the raw weights, not
the layout the kernels read, which the runner builds at load time.

The measurement settings are one MeasureConfig (host/measure.py), given at load and passed
unchanged to the client; benchmark uses the one the model was loaded with unless given another.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from codegen import Bundle

from ..errors import UserError
from ..measure import BenchmarkResult, MeasureConfig
from ..rpc.client import LoadedModel, ProgressFn, RunnerClient, RunnerError
from . import Device
from .remote import RemoteRunner

__all__ = ["RemoteRunner", "Session", "Upload"]


@dataclass(frozen=True)
class Upload:
    """What one load sent to the runner: the artifacts it lacked (a re-upload after an
    eviction included), and the wall time of those uploads."""

    bytes: int = 0
    seconds: float = 0.0
    artifact_bytes: int = 0  # the bundle's artifacts in all, sent or not

    def __add__(self, other: Upload) -> Upload:
        return Upload(self.bytes + other.bytes, self.seconds + other.seconds,
                      max(self.artifact_bytes, other.artifact_bytes))


class Session:
    """``call_timeout_s`` None: the device's own (``device.traits.call_timeout_s``)."""

    def __init__(self, device: Device, call_timeout_s: float | None = None,
                 on_event: Callable[[str], None] | None = None):
        self.device = device
        self.call_timeout_s = (device.traits.call_timeout_s if call_timeout_s is None
                               else call_timeout_s)
        self.on_event = on_event or (lambda _msg: None)
        self.restarts = 0
        device.start()
        self._client = device.client(self.call_timeout_s)
        self._loaded: dict[str, tuple[Bundle, MeasureConfig, LoadedModel]] = {}
        self._uploads: dict[str, Upload] = {}
        self._pending = Upload()  # uploads of the load in progress

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
        for key, (bundle, measure, _) in list(self._loaded.items()):
            self._loaded[key] = (bundle, measure, self._load(bundle, measure, None))

    def _with_retry(self, fn):
        try:
            return fn()
        except RunnerError as e:
            if not e.unreachable:
                raise
            self._recover(e)
            return fn()

    def _ensure(self, bundle: Bundle, progress: ProgressFn | None) -> None:
        t0 = time.perf_counter()
        sent = self._client.ensure_artifacts(bundle, progress)
        total = sum(a.size for a in bundle.manifest.artifacts)
        self._pending += Upload(sent, time.perf_counter() - t0 if sent else 0.0, total)

    def _load(self, bundle: Bundle, measure: MeasureConfig, progress: ProgressFn | None):
        self._ensure(bundle, progress)
        try:
            return self._client.load_model(bundle.manifest, measure)
        except RunnerError as e:
            # An artifact left the store after MissingArtifacts saw it (evicted, or found
            # corrupted and removed by the load): upload it again and retry once.
            shas = [a.sha256 for a in bundle.manifest.artifacts]
            if e.code != "NOT_FOUND" or not self._client.missing(shas):
                raise
            self.on_event(f"re-uploading artifacts the runner lost: {e.message}")
            self._ensure(bundle, progress)
            return self._client.load_model(bundle.manifest, measure)

    def load(self, bundle: Bundle, measure: MeasureConfig | None = None,
             progress: ProgressFn | None = None) -> str:
        """Upload (only what is missing) and load; returns a key for run/benchmark."""
        measure = measure or MeasureConfig()
        self._pending = Upload()
        model = self._with_retry(lambda: self._load(bundle, measure, progress))
        if model.affinity_note:
            self.on_event(f"the device refused some of the cores asked for; those threads run "
                          f"unpinned: {model.affinity_note}")
        key = model.handle
        self._loaded[key] = (bundle, measure, model)
        self._uploads[key], self._pending = self._pending, Upload()
        return key

    def loaded(self, key: str) -> LoadedModel:
        return self._loaded[key][2]

    def upload(self, key: str) -> Upload:
        """What loading ``key`` uploaded (bytes, seconds)."""
        return self._uploads.get(key, Upload())

    def run(self, key: str, inputs: list[np.ndarray]) -> list[np.ndarray]:
        def call():
            bundle, _, model = self._loaded[key]
            return self._client.run(model.handle, bundle.manifest, inputs)
        return self._with_retry(call)

    def benchmark(self, key: str, measure: MeasureConfig | None = None,
                  timeout_s: float = 1800.0) -> BenchmarkResult:
        """Time the model with ``measure`` (default: the one it was loaded with), passed to the
        runner call as it is."""
        measure = measure or self._loaded[key][1]
        if measure.warmup_min_s or measure.pause_s:
            self._require_protocol(3, "a minimum warm-up time or a pause between runs")
        self.device.before_measure(self.on_event)

        def call():
            _, _, model = self._loaded[key]
            return self._client.benchmark(model.handle, measure, timeout_s)
        return self._with_retry(call)

    def _require_protocol(self, minor: int, what: str) -> None:
        """A runner before protocol 1.``minor`` would ignore the fields ``what`` needs."""
        info = self._with_retry(lambda: self._client.device_info())
        if info.protocol_major == 1 and info.protocol_minor < minor:
            raise UserError(f"the runner ({info.runner_version}, protocol 1."
                            f"{info.protocol_minor}) cannot do {what}: that needs protocol "
                            f"1.{minor}; rebuild or reinstall it (scripts/setup.sh, "
                            f"npas-host install)")

    def unload(self, key: str) -> None:
        bundle, measure, model = self._loaded.pop(key)
        self._uploads.pop(key, None)
        try:
            self._client.unload(model.handle)
        except RunnerError as e:
            if not (e.unreachable or e.code == "NOT_FOUND"):
                raise
