"""Latency on several devices of one model at once: one ``LatencyOracle`` per device (each
owns its runner session, its compile process and its restarts) behind the oracle's own face
(``submit``, ``measure``, ``info``, ``toolchain``, the cache), lent out by
``host.devices.pool.DevicePool``.

A measurement takes a free device for its whole course (compile, upload, load, timed runs), so
two never share one. A device whose runner is lost and cannot be restarted (the oracle's
second attempt failed at the restart: a phone unplugged) is taken out of the pool and the
candidate measured on another; ``lost`` says what went. The devices share one cache (same model,
same program: same latency), kept by the driver in ``latency.jsonl``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from torch import nn

from ..devices import Device
from ..devices.pool import DeviceModel, DevicePool, PoolEmpty, one_model
from ..measure import MeasureConfig
from .oracle import LatencyOracle, LatencyResult


def device_gone(r: LatencyResult) -> bool:
    """The oracle measured twice, and restarting the device in between failed."""
    return not r.ok and r.attempts > 0 and any(e.startswith("restart:") for e in r.errors)


class OraclePool:
    """``devices`` by name (all of one model, else a UserError naming the models)."""

    def __init__(self, devices: dict[str, Device], example, cfg: MeasureConfig, *,
                 quiet=None, on_event: Callable[[str], None] | None = None):
        self.on_event = on_event or (lambda _m: None)
        oracles: dict[str, LatencyOracle] = {}
        try:
            for name, dev in devices.items():
                o = LatencyOracle(dev, example, cfg, quiet=quiet,
                                  on_event=lambda m, n=name: self.on_event(f"{n}: {m}"))
                if oracles:
                    o.share_cache(next(iter(oracles.values())))
                oracles[name] = o
            self.model: DeviceModel = one_model({n: DeviceModel.of(o.info)
                                                 for n, o in oracles.items()})
        except BaseException:
            for o in oracles.values():
                o.close()
            raise
        self.first = next(iter(oracles.values()))
        self.all = dict(oracles)
        self.pool: DevicePool[LatencyOracle] = DevicePool(oracles)
        self.info, self.toolchain = self.first.info, self.first.toolchain
        self._threads = ThreadPoolExecutor(len(oracles), thread_name_prefix="npas-pool")
        self._lock = threading.Lock()
        self.measured_on: dict[str, int] = dict.fromkeys(oracles, 0)

    # the oracle's face -------------------------------------------------------------------------
    @property
    def before_benchmark(self):
        return self.first.before_benchmark

    @before_benchmark.setter
    def before_benchmark(self, hook) -> None:
        for o in self.all.values():
            o.before_benchmark = hook

    @property
    def lost(self) -> list[tuple[str, str]]:
        return self.pool.lost

    @property
    def restarts(self) -> int:
        return sum(o.restarts for o in self.all.values())

    def load_cache(self, path: Path) -> None:
        self.first.load_cache(path)
        for o in self.all.values():
            o.cache_path = path

    def persist(self, path: Path) -> None:
        self.first.persist(path)
        for o in self.all.values():
            o.cache_path = path

    def submit(self, tag: str, model: nn.Module, schemes: dict[str, str], bundle_dir: Path,
               keep_bundle: bool = False, int8=None) -> Future:
        return self._threads.submit(self.measure, tag, model, schemes, bundle_dir, False,
                                    keep_bundle, True, int8)

    def int8_toolchain(self):
        return self.first.int8_toolchain()

    def measure(self, tag: str, model: nn.Module, schemes: dict[str, str], bundle_dir: Path,
                per_layer: bool = False, keep_bundle: bool = True,
                use_cache: bool = True, int8=None) -> LatencyResult:
        """On whichever device is free; on another if that one is lost meanwhile."""
        errors: list[str] = []
        while True:
            try:
                with self.pool.lease() as (name, oracle):
                    r = oracle.measure(tag, model, schemes, bundle_dir, per_layer,
                                       keep_bundle, use_cache, int8)
                    if device_gone(r):  # out before the lease ends: nobody else gets it
                        why = "; ".join(r.errors)
                        self.pool.remove(name, why)
            except PoolEmpty as e:
                return LatencyResult(ok=False, errors=[*errors, str(e)], attempts=1)
            if not device_gone(r):
                with self._lock:
                    self.measured_on[name] += 1
                r.errors = [*errors, *r.errors]
                return r
            errors.extend(f"{name}: {e}" for e in r.errors)
            self.on_event(f"device {name} is lost ({why}); {len(self.pool)} left in the "
                          f"pool; {tag} goes to another")

    def close(self) -> None:
        self._threads.shutdown(wait=True, cancel_futures=True)
        for o in self.all.values():
            o.close()
