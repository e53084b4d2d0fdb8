"""Side-by-side timing that measures the engines, not each other's idle threads.

Most engines' thread pools keep their workers spinning for a while after a call returns (ONNX
Runtime's intra-op pool, OpenVINO's TBB arena, XNNPACK's pthreadpool, ncnn's OpenMP team, our
runner's pool: ``thread_pool.cpp``, 2^13 pauses, ~0.2 ms), so on a machine with as many cores
as the benchmark's threads the engine sampled next shares a core with its predecessor's
spinning workers. Rather than reconfigure every engine (which changes how each one runs inside a
call), ``Meter`` waits before each sample until the benchmark's processes (this one, where the
peers run, and its children: our runner) are idle: no thread other than the caller ran more
than ``QUIET_FRACTION`` of a ``WINDOW_S`` window (the processes' CPU clocks, less the caller's
thread clock). The wait is measured and reported per engine; the engine then runs its untimed
and its timed inference as before.

The same clocks give each sample's CPU time (all the benchmark's threads, per inference: a
peer's sample is an untimed and a timed one, ours (the runner's benchmark call) its first
run, one warm-up and the timed run): at 1 thread it is the engine's work, not what other
processes on a loaded machine take from it; at 2 threads it includes in-call spinning.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from .engines import Loaded

WINDOW_S = 0.002
QUIET_FRACTION = 0.05  # of the window, summed over the threads: a spinning thread is ~100 %
LIMIT_S = 0.5  # a pool still busy after this long is reported, and the sample taken anyway


def process_tree(root: int | None = None) -> list[int]:
    """``root`` (default: this process) and its descendants, from /proc's parent links."""
    root = os.getpid() if root is None else root
    parents: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                # the command name (2nd field) is in parentheses and may hold spaces
                ppid = int(f.read().rpartition(")")[2].split()[1])
        except (OSError, ValueError, IndexError):
            continue  # gone, or not ours to read
        parents.setdefault(ppid, []).append(int(d))
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += parents.get(p, [])
    return out


def process_cpu_clock(pid: int) -> int:
    """The clock id of process ``pid``'s CPU time, all its threads (glibc's
    ``clock_getcpuclockid``: the kernel's ``MAKE_PROCESS_CPUCLOCK(pid, CPUCLOCK_SCHED)``)."""
    return ((~pid) << 3) | 2


def run_ns(pids: Sequence[int]) -> int:
    """CPU time in ns of the processes ``pids``, every thread, ended ones too (a process that
    is gone counts 0)."""
    total = 0
    for p in pids:
        try:
            total += time.clock_gettime_ns(process_cpu_clock(p))
        except OSError:
            continue
    return total


def settle(pids: Sequence[int], window_s: float = WINDOW_S, quiet: float = QUIET_FRACTION,
           limit_s: float = LIMIT_S) -> tuple[float, bool]:
    """Wait until the threads of ``pids`` (the caller's own aside) ran less than ``quiet`` of
    a ``window_s`` window: (seconds waited, whether they went quiet before ``limit_s``)."""
    t0 = time.perf_counter()
    while True:
        a, ma, ta = run_ns(pids), time.thread_time_ns(), time.perf_counter()
        time.sleep(window_s)
        b, mb, tb = run_ns(pids), time.thread_time_ns(), time.perf_counter()
        if (b - a) - (mb - ma) < quiet * (tb - ta) * 1e9:
            return tb - t0, True
        if tb - t0 > limit_s:
            return tb - t0, False


@dataclass
class Meter:
    """Wraps a loaded engine's ``sample_ns``: optionally ``settle`` first, and the sample's
    CPU time (all threads of ``pids``, per inference of the sample's ``inferences``) beside
    its wall time."""

    pids: list[int]
    inferences: int = 2  # a sample's: one untimed and one timed (ours: three, the runner's)
    overhead_ns: int = 0  # a sample's CPU time besides its inferences, left out (ours' call)
    cpu_ns: list[int] = field(default_factory=list)
    settle_s: list[float] = field(default_factory=list)
    busy: int = 0  # samples taken after ``LIMIT_S`` without the threads going quiet

    def wrap(self, lo: Loaded, quiet_first: bool) -> Loaded:
        def sample() -> int:
            if quiet_first:
                waited, ok = settle(self.pids)
                self.settle_s.append(waited)
                self.busy += not ok
            c0 = run_ns(self.pids)
            ns = lo.sample_ns()
            cpu = run_ns(self.pids) - c0 - self.overhead_ns
            self.cpu_ns.append(max(0, cpu) // self.inferences)
            return ns
        return replace(lo, sample_ns=sample)

    @property
    def cpu_ms(self) -> float | None:
        return statistics.median(self.cpu_ns) / 1e6 if self.cpu_ns else None

    @property
    def settle_ms(self) -> float | None:
        return statistics.median(self.settle_s) * 1e3 if self.settle_s else None


def measure_alone(loaded: dict[str, Loaded], runs: int, measure: Callable,
                  pids: Sequence[int], on_sample: Callable[[], None]) -> dict:
    """Each engine's ``runs`` samples back to back (the engines one after another, the
    processes settled before each engine's first): ``measure``'s samples dict."""
    samples: dict = {}
    for name, lo in loaded.items():
        settle(pids)
        samples.update(measure({name: lo}, runs, on_sample))
    return samples
