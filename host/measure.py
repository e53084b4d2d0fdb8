"""Measurement records: the settings of a measurement (MeasureConfig) and what a benchmark on a
device gives back, with its statistics.

The runner defines the semantics (warm-up discarded, then N timed runs, every sample kept);
this module only states the settings and summarises. MeasureConfig passes unchanged from the
command line through the Session to the RPC client; host/rpc/convert.py alone turns it into
proto requests. Summaries use medians and percentiles because phones and shared machines are
noisy.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class MeasureConfig:
    """How to load and time a bundle on a runner: the one place the host states these settings
    and their defaults (argparse defaults read them: ``default=MeasureConfig.runs``).

    ``threads``, ``cpu_affinity``, ``pin_big_cores`` and ``backend`` apply when the model is
    loaded; ``runs``, ``warmup`` and ``per_layer`` when it is benchmarked. ``threads`` 0 lets
    the runner choose (one per big core; DeviceInfo.default_threads says how many).
    """

    runs: int = 100
    warmup: int = 10
    threads: int = 0
    cpu_affinity: tuple[int, ...] = ()
    pin_big_cores: bool = False
    per_layer: bool = False
    backend: str = "cpu"


@dataclass(frozen=True)
class Stats:
    n: int
    mean_ms: float
    median_ms: float
    p10_ms: float
    p90_ms: float
    std_ms: float
    min_ms: float
    max_ms: float

    @staticmethod
    def of(samples_ns: list[int] | tuple[int, ...]) -> Stats:
        if not samples_ns:
            raise ValueError("no samples to summarise")
        ms = sorted(s / 1e6 for s in samples_ns)
        return Stats(
            n=len(ms),
            mean_ms=statistics.fmean(ms),
            median_ms=statistics.median(ms),
            p10_ms=percentile(ms, 10),
            p90_ms=percentile(ms, 90),
            std_ms=statistics.pstdev(ms),
            min_ms=ms[0],
            max_ms=ms[-1],
        )


def percentile(sorted_values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    if len(sorted_values) == 1:
        return sorted_values[0]
    pos = (len(sorted_values) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


@dataclass(frozen=True)
class Telemetry:
    timestamp_ns: int
    core_freq_khz: dict[int, int]
    thermal_millicelsius: dict[str, int]


@dataclass(frozen=True)
class LayerTiming:
    name: str
    op: str
    samples_ns: tuple[int, ...]

    @property
    def median_ms(self) -> float:
        return statistics.median(self.samples_ns) / 1e6


@dataclass(frozen=True)
class BenchmarkResult:
    samples_ns: tuple[int, ...]
    warmup_ns: tuple[int, ...]
    init_ns: int
    threads: int
    layers: tuple[LayerTiming, ...] = ()
    telemetry_before: Telemetry | None = None
    telemetry_after: Telemetry | None = None
    meta: dict = field(default_factory=dict)

    @property
    def stats(self) -> Stats:
        return Stats.of(self.samples_ns)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["stats"] = asdict(self.stats)
        return d


def throttled_cores(result: BenchmarkResult, device_info, threshold: float = 0.9) -> list[int]:
    """Big cores whose frequency after the runs was under ``threshold`` of their maximum:
    the device was throttling and the samples are pessimistic. Empty where the OS does not
    expose frequencies."""
    after = result.telemetry_after.core_freq_khz if result.telemetry_after else {}
    return [c.id for c in device_info.cores
            if c.is_big and c.max_freq_khz and after.get(c.id)
            and after[c.id] < threshold * c.max_freq_khz]


def runner_threads(threads: int, device_info) -> int:
    """The threads a model loaded with ``threads`` gets on the device that reported
    ``device_info``: ``threads`` itself, or for 0 the runner's own choice
    (DeviceInfo.default_threads: one per big core). The rule lives in the runner only."""
    if threads > 0:
        return threads
    if device_info.default_threads < 1:
        from .errors import UserError

        raise UserError(f"the runner ({device_info.runner_version}) does not say how many "
                        f"threads --threads 0 gives (DeviceInfo.default_threads, protocol "
                        f"1.2); rebuild it (scripts/setup.sh) or give --threads N")
    return device_info.default_threads
