"""Pure tier: the int8 benchmark's cool-down between engines (host/bench/quiet.py) on real
threads and a real child process: a spinning thread is seen as busy and the wait ends only
once it stops; the CPU time a sample reports counts the engine's other threads; the child
processes (our runner) are in the tree that is watched."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

from host.bench import quiet
from host.bench.engines import Loaded


def _spinner(stop: threading.Event) -> threading.Thread:
    def spin() -> None:
        while not stop.is_set():
            pass
    t = threading.Thread(target=spin, daemon=True)
    t.start()
    return t


def test_a_spinning_thread_keeps_the_process_busy_until_it_stops():
    stop = threading.Event()
    t = _spinner(stop)
    try:
        _, quiet_now = quiet.settle([quiet.os.getpid()], limit_s=0.05)
        assert not quiet_now  # the spinner runs well over 5 % of every window
    finally:
        stop.set()
        t.join()
    _, quiet_now = quiet.settle([quiet.os.getpid()], limit_s=5.0)
    assert quiet_now


def test_a_sample_counts_the_cpu_time_of_the_engines_worker_threads():
    """A sample whose work runs on another thread (as a pool's workers): its CPU time is the
    worker's, halved (the untimed and the timed run), not the waiting caller's ~0."""
    burn = 0.05

    def work() -> None:
        t0 = time.thread_time()
        while time.thread_time() - t0 < burn:
            pass

    def sample() -> int:
        for _ in range(2):
            w = threading.Thread(target=work)
            w.start()
            w.join()
        return 1
    meter = quiet.Meter([quiet.os.getpid()])
    lo = meter.wrap(Loaded("e", lambda: None, sample), quiet_first=True)
    assert lo.sample_ns() == 1
    assert len(meter.settle_s) == 1 and meter.busy == 0
    assert meter.cpu_ns[0] >= burn * 1e9 * 0.9  # at least the worker's burn (per run)
    assert meter.cpu_ms is not None and meter.settle_ms is not None


def test_the_watched_processes_include_children():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        pids = quiet.process_tree()
        assert pids[0] == quiet.os.getpid()
        assert child.pid in pids
        assert quiet.run_ns([child.pid]) > 0  # it ran (its start-up)
    finally:
        child.kill()
        child.wait()


def test_alone_samples_each_engine_back_to_back():
    order: list[str] = []

    def engine(name: str) -> Loaded:
        def sample() -> int:
            order.append(name)
            return 5
        return Loaded(name, lambda: None, sample)
    from host.bench.common import measure
    got = quiet.measure_alone({"a": engine("a"), "b": engine("b")}, 3, measure,
                              [quiet.os.getpid()], lambda: None)
    assert order == ["a"] * 3 + ["b"] * 3
    assert got == {"a": [5, 5, 5], "b": [5, 5, 5]}


def test_the_runner_call_overhead_is_what_a_call_costs_besides_its_inferences():
    """A stand-in call that burns 20 ms of CPU plus 10 ms an inference (its first run, one
    warm-up, ``runs`` timed): the estimate is the 20 ms, not 0 and not a whole call."""
    from host.bench.int8 import call_overhead_ns

    def burn(s: float) -> None:
        t0 = time.thread_time()
        while time.thread_time() - t0 < s:
            pass

    def bench(runs: int) -> None:
        burn(0.020 + 0.010 * (runs + 2))
    got = call_overhead_ns(bench, [quiet.os.getpid()], pairs=2, more=3) / 1e6
    assert 10 < got < 30, got
