"""What the dense and the sparse benchmark share: argument checks, the engine-run record, the
workload cache, loading and checking an engine, interleaved sampling and the local runner.

Measurement rules live here once: every engine's output is checked against PyTorch before it
is timed, and samples are taken round-robin in an order that rotates every repetition, so
machine drift lands on all engines alike.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import statistics
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)

from host.console import err, out
from host.measure import Stats

if TYPE_CHECKING:
    from numpy.typing import ArrayLike

    from host.devices.session import Session

    from .engines import Loaded, Workload


# ---------------------------------------------------------------- arguments

class BenchArgError(ValueError):
    """A bad command line: printed without a traceback, exit code 2."""


def parse_threads(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise BenchArgError(f"--threads {text!r}: expected a comma-separated list of thread "
                            f"counts, e.g. 1,2") from None
    if not values or any(v < 1 for v in values):
        raise BenchArgError(f"--threads {text!r}: every thread count must be ≥ 1")
    return tuple(dict.fromkeys(values))


def parse_models(text: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    if not names:
        raise BenchArgError(f"--models {text!r}: name at least one model, e.g. resnet18")
    return names


def check_sampling(args: argparse.Namespace) -> None:
    """The options both benchmarks share: --runs, --warmup, --input-size, --tolerance."""
    if args.runs < 1:
        raise BenchArgError(f"--runs must be ≥ 1, got {args.runs}")
    if args.warmup < 0:
        raise BenchArgError(f"--warmup must be ≥ 0, got {args.warmup}")
    if not 32 <= args.input_size <= 2048:
        raise BenchArgError(f"--input-size must be within 32..2048 (torchvision classifiers "
                            f"downsample by 32), got {args.input_size}")
    if not args.tolerance > 0:
        raise BenchArgError(f"--tolerance must be > 0, got {args.tolerance}")


def engine_names(text: str) -> tuple[str, ...]:
    """--engines: the comma-separated names, blanks and repeats dropped, in order."""
    return tuple(dict.fromkeys(e.strip() for e in text.split(",") if e.strip()))


# ---------------------------------------------------------------- pure arithmetic

def rotated(items: Sequence, rep: int) -> list:
    """Round-robin order for repetition ``rep``: every item leads once per len(items) reps."""
    if not items:
        return []
    k = rep % len(items)
    return list(items[k:]) + list(items[:k])


def gflops(flops: int | None, ms: float | None) -> float | None:
    if not flops or not ms or ms <= 0:
        return None
    return flops / (ms * 1e-3) / 1e9


def max_rel_error(out: ArrayLike, ref: ArrayLike) -> float:
    """max|out - ref| / max|ref| (inf for a shape mismatch or non-finite output)."""
    import numpy as np

    o, r = np.asarray(out, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    if o.size != r.size:
        return float("inf")
    diff = np.abs(o.reshape(r.shape) - r).max()
    scale = np.abs(r).max()
    if not np.isfinite(diff):
        return float("inf")
    return float(diff / scale) if scale > 0 else float(diff)


# ---------------------------------------------------------------- records

@dataclass
class EngineRun:
    """One engine on one model at one thread count: a result, also when it failed."""

    model: str
    threads: int
    engine: str
    status: str  # "ok", "wrong", "unavailable", "failed"
    detail: str = ""
    rel_err: float | None = None
    samples_ns: list[int] = field(default_factory=list)

    @property
    def stats(self) -> Stats | None:
        return Stats.of(self.samples_ns) if self.samples_ns else None

    @property
    def median_ms(self) -> float | None:
        return statistics.median(self.samples_ns) / 1e6 if self.samples_ns else None


def attach_samples(runs: dict[str, EngineRun], samples: dict) -> None:
    """Put ``measure``'s samples into the runs; an engine that failed mid-way says after how
    many samples."""
    for label, got in samples.items():
        if isinstance(label, tuple):
            continue
        runs[label].samples_ns = got
        if (label, "error") in samples:
            runs[label].status = "failed"
            runs[label].detail = (f"failed after {len(got)} samples: "
                                  f"{samples[(label, 'error')]}")


# ---------------------------------------------------------------- workloads

def bench_cache_dir(explicit: Path | None) -> Path:
    from host.devices.local import default_cache_dir

    return explicit or default_cache_dir() / "bench"


def load_workload(name: str, size: int, cache_root: Path) -> Workload:
    """The model with weights that stay the same across runs (models have random weights, and
    the cached conversions were made from them), and the benchmark input."""
    import torch

    from host.models import example_inputs, load_model

    from .engines import Workload

    cache = cache_root / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', name)}-{size}"
    cache.mkdir(parents=True, exist_ok=True)
    model = load_model(name)
    weights = cache / "weights.pt"
    if weights.is_file():
        model.load_state_dict(torch.load(weights, weights_only=True))
    else:
        for stale in cache.iterdir():  # converted from weights that are gone
            if stale.is_file():
                stale.unlink()
        tmp = weights.with_suffix(".tmp")
        torch.save(model.state_dict(), tmp)
        os.replace(tmp, weights)
    (x,) = example_inputs((1, 3, size, size))
    return Workload(name, size, model.eval(), x, cache)


# ---------------------------------------------------------------- measuring

def progress() -> Progress:
    """The benchmarks' progress display: on stderr, gone when done."""
    return Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                    MofNCompleteColumn(), TimeElapsedColumn(), console=err, transient=True)


def measure(loaded: dict, runs: int, on_sample: Callable[[], None]) -> dict[str, list[int]]:
    """``runs`` samples per engine, round-robin with a rotating order; an engine that raises
    stops being sampled and its error is kept under the key ``(name, "error")``."""
    samples: dict = {name: [] for name in loaded}
    alive = list(loaded)
    for rep in range(runs):
        for name in rotated(alive, rep):
            if name not in alive:
                continue
            try:
                samples[name].append(loaded[name].sample_ns())
            except Exception as e:  # an engine failing is a result, not the end of the run
                samples[(name, "error")] = f"{type(e).__name__}: {e}"
                alive.remove(name)
            on_sample()
    return samples


def close_loaded(lo: Loaded) -> None:
    """Close a loaded engine; a failure is a warning (a leak), not the end of the run."""
    try:
        lo.close()
    except Exception as e:  # a leak for the rest of the run, not a reason to stop it
        err.print(f"[yellow]warning:[/yellow] closing {lo.engine}: {escape(str(e))}")


def load_checked(label: str, eng, w: Workload, ref: ArrayLike, threads: int,
                 args: argparse.Namespace,
                 keep_wrong: bool = False) -> tuple[EngineRun, Loaded | None]:
    """Load ``eng`` on workload ``w`` for ``threads``, check one output against ``ref``
    (``args.tolerance``) and run ``args.warmup`` untimed inferences: the EngineRun (status
    "ok" with its error, or why not) and the Loaded engine, which is None unless "ok" (or
    "wrong" with ``keep_wrong``: timed all the same, for kernels being worked on)."""
    from .engines import EngineUnavailable

    try:
        lo = eng.load(w, threads)
    except EngineUnavailable as e:
        return EngineRun(w.name, threads, label, "unavailable", str(e)), None
    except Exception as e:
        return EngineRun(w.name, threads, label, "unavailable",
                         f"load failed: {type(e).__name__}: {e}"), None
    try:
        rel = max_rel_error(lo.infer(), ref)
        for _ in range(args.warmup):
            lo.infer()
    except Exception as e:
        close_loaded(lo)
        return EngineRun(w.name, threads, label, "failed",
                         f"inference failed: {type(e).__name__}: {e}"), None
    if rel > args.tolerance:
        if keep_wrong:
            return EngineRun(w.name, threads, label, "wrong",
                             f"output differs from PyTorch (max rel err {rel:.2e} > "
                             f"{args.tolerance:g}); timed all the same", rel), lo
        close_loaded(lo)
        return EngineRun(w.name, threads, label, "wrong",
                         f"output differs from PyTorch (max rel err {rel:.2e} > "
                         f"{args.tolerance:g}); not timed", rel), None
    return EngineRun(w.name, threads, label, "ok", "", rel), lo


def load_and_sample(model: str, threads: int,
                    entries: Sequence[tuple[str, object, Workload, ArrayLike, bool]],
                    runs: dict[str, EngineRun], args: argparse.Namespace,
                    progress: Progress) -> None:
    """Load and check every ``(label, engine, workload, ref, keep_wrong)`` (``load_checked``)
    on ``threads`` threads, sample the loaded ones round-robin (``measure``), close them, and
    record each one's EngineRun with its samples in ``runs``."""
    loaded: dict = {}
    samples: dict = {}
    task = progress.add_task(f"{model}, {threads} thread(s): loading", total=None)
    try:
        for label, eng, w, ref, keep_wrong in entries:
            progress.update(task, description=f"{model}, {threads} thread(s): loading and "
                                              f"checking {label}")
            runs[label], lo = load_checked(label, eng, w, ref, threads, args, keep_wrong)
            if lo is not None:
                loaded[label] = lo
        progress.remove_task(task)
        task = progress.add_task(f"{model}, {threads} thread(s): sampling {len(loaded)} "
                                 f"engines round-robin", total=args.runs * len(loaded))
        samples = measure(loaded, args.runs, lambda: progress.advance(task))
    finally:
        for lo in loaded.values():
            close_loaded(lo)
        progress.remove_task(task)
    attach_samples(runs, samples)


# ---------------------------------------------------------------- the machine and the runner

def announce_machine(width: int) -> tuple[float, float, float]:
    """Widen a piped console to ``width`` columns (80 would wrap the numbers), say what the
    machine is and how busy (a busy machine gives noisy numbers); the load averages."""
    if not out.is_terminal:
        out.width = max(out.width, width)
    load = os.getloadavg()
    err.print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load "
              f"average {load[0]:.2f}: a busy machine gives noisy numbers")
    return load


def local_session(binary: Path | None, stack: ExitStack, progress: Progress) -> Session:
    """A session on a fresh local runner, both closed with ``stack``; UserError (saying how to
    build one) when there is no runner binary."""
    from host.devices import DeviceSpec, open_device
    from host.devices.session import Session

    task = progress.add_task("starting the local runner", total=None)
    try:
        device = open_device(DeviceSpec("local", runner=binary), stack)
        return stack.enter_context(Session(device, call_timeout_s=600, on_event=err.print))
    finally:
        progress.remove_task(task)
