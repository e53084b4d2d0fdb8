"""Measurement records: the settings of a measurement (MeasureConfig) and what a benchmark on a
device gives back, with its statistics.

The runner defines the semantics (one first inference reported alone; warm-up runs by count and
by time, discarded; N timed runs with an optional pause between them, every sample kept; the
runner's peak resident memory over it all); this module only states the settings and
summarises. MeasureConfig passes unchanged from the
command line through the Session to the RPC client; host/rpc/convert.py alone turns it into
proto requests. Summaries use medians and percentiles because phones and shared machines are
noisy.
"""

from __future__ import annotations

import re
import statistics
from dataclasses import asdict, dataclass, field, replace


@dataclass(frozen=True)
class MeasureConfig:
    """How to load and time a bundle on a runner: the one place the host states these settings
    and their defaults (argparse defaults read them: ``default=MeasureConfig.runs``).

    ``threads``, ``cpu_affinity``, ``pin_big_cores`` and ``backend`` apply when the model is
    loaded; ``runs``, ``warmup``, ``warmup_min_s``, ``pause_s`` and ``per_layer`` when it is
    benchmarked. ``threads`` 0 lets the runner choose (one per big core;
    DeviceInfo.default_threads says how many). Warm-up goes on until ``warmup`` runs are done
    and ``warmup_min_s`` have passed; ``pause_s`` is slept between two timed runs (both need
    protocol 1.3, LiteRT's ``warmup_min_secs`` and ``run_delay``).
    """

    runs: int = 100
    warmup: int = 10
    warmup_min_s: float = 0.0
    pause_s: float = 0.0
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
    missing: tuple[str, ...] = ()  # what the runner could not read, and why


@dataclass(frozen=True)
class LayerTiming:
    """One step's samples. ``name`` is the PyTorch module path, ``symbol`` the step's function
    the runner called (empty from runners before protocol 1.3), ``kernels`` the kernel
    variants that function calls, main one first (from the bundle's kernels.c: see
    ``kernel_variants``; empty when unknown or when the step's code is all inline)."""

    name: str
    op: str
    samples_ns: tuple[int, ...]
    symbol: str = ""
    kernels: tuple[str, ...] = ()

    @property
    def median_ms(self) -> float:
        return statistics.median(self.samples_ns) / 1e6

    @property
    def label(self) -> str:
        """``layer1.0.conv1 → winograd_gemm_nchw16c__avx512_2x8t +2``: the module path and
        what ran, the main variant (and how many more the step calls) or else the symbol."""
        what = self.kernels[0] if self.kernels else self.symbol
        more = f" +{len(self.kernels) - 1}" if len(self.kernels) > 1 else ""
        return f"{self.name} → {what}{more}" if what else self.name


_STEP_FN = re.compile(r"^NPAS_EXPORT void (npas_step_\d+_\w+)\(", re.M)
_VARIANT_CALL = re.compile(r"\b([a-z]\w*__\w+)\(")  # what__where_tile: the naming rule
_TILE = re.compile(r"_(\d+)x(\d+)[wt](?:_|$)")


def kernel_variants(source: str) -> dict[str, tuple[str, ...]]:
    """Step symbol -> the kernel variants its function calls in a bundle's C source, the
    main one first: the largest register tile (``2x6w`` beats its ``2x1w`` edge, Winograd's
    GEMM beats its transforms), then call order. Variants follow the kernels' naming rule
    (``conv2d_3x3s1_nchw16c__avx512_2x14w_relu``: what, ``__``, where and the tile)."""
    out: dict[str, tuple[str, ...]] = {}
    for m in _STEP_FN.finditer(source):
        end = source.find("\n}\n", m.end())
        body = source[m.end():end if end >= 0 else len(source)]
        calls = list(dict.fromkeys(_VARIANT_CALL.findall(body)))

        def area(name: str) -> int:
            t = _TILE.search(name)
            return int(t[1]) * int(t[2]) if t else 0
        out[m[1]] = tuple(sorted(calls, key=lambda c: -area(c)))  # stable: call order on ties
    return out


def with_kernel_variants(result: BenchmarkResult, source: str) -> BenchmarkResult:
    """``result`` with each layer's ``kernels`` read from the bundle's C source."""
    table = kernel_variants(source)
    return replace(result, layers=tuple(replace(la, kernels=table.get(la.symbol, ()))
                                        for la in result.layers))


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
    first_run_ns: int = 0  # the benchmark's first inference, alone (0: runner before 1.3)
    first_run_cold: bool = False  # ... and it was the model's first since its load
    warmup_elapsed_ns: int = 0
    rss_before_bytes: int = 0  # the runner process's resident memory before the runs
    peak_rss_bytes: int = 0  # its peak during the benchmark; 0: unknown
    memory_note: str = ""  # empty: the peak covers this benchmark alone

    @property
    def stats(self) -> Stats:
        return Stats.of(self.samples_ns)

    def layer_share(self) -> float | None:
        """Median over the timed runs of (sum of the per-layer times) / (the run's time):
        how much of a run the per-layer rows account for. None without per-layer times."""
        if not self.layers:
            return None
        per_run = [sum(v) for v in zip(*(la.samples_ns for la in self.layers), strict=True)]
        shares = [p / t for p, t in zip(per_run, self.samples_ns, strict=True) if t > 0]
        return statistics.median(shares) if shares else None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["stats"] = asdict(self.stats)
        d["warmup_stats"] = asdict(Stats.of(self.warmup_ns)) if self.warmup_ns else None
        d["first_run_ms"] = self.first_run_ns / 1e6
        d["layer_share"] = self.layer_share()
        for row, layer in zip(d["layers"], self.layers, strict=True):
            row["label"] = layer.label
            row["stats"] = asdict(Stats.of(layer.samples_ns))
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
