"""``npas-host bench load`` and ``bench fuzz``: reliability figures, not tests (issue 19).

``load`` starts one local runner (``$NPAS_RUNNER`` or the project's build) and either drives it
with N concurrent clients for T seconds (device info, artifact checks, uploads, small
benchmarks; each client its own channel) and prints errors, p50/p99 per call and the runner's
RSS before, at its peak and after; or, with ``--cycles N``, loads and unloads one model N
times and prints the runner's RSS sampled along the way, so a leak shows as growth (``--heap``:
with malloc's bytes in use and the RSS after ``malloc_trim``, to tell a leak from retention).
``fuzz`` runs ``scripts/fuzz.sh`` (the libFuzzer targets) and passes its options on.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import shutil
import subprocess
import tempfile
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from host.devices.local import REPO_ROOT, LocalRunner, LocalRunnerConfig, find_runner_binary
from host.measure import MeasureConfig
from host.rpc.client import RunnerClient, RunnerError


def status_kb(pid: int, key: str) -> int:
    """A ``/proc/PID/status`` field in kB (VmRSS, VmHWM)."""
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def percentile(values: list[float], q: float) -> float:
    """The q-quantile (0..1) by nearest rank; NaN for no values."""
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


@dataclass
class LoadReport:
    clients: int
    seconds: float
    calls: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    errors: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    first_errors: list[str] = field(default_factory=list)
    rss_before_kb: int = 0
    hwm_kb: int = 0
    rss_after_kb: int = 0

    def lines(self) -> list[str]:
        total = sum(len(v) for v in self.calls.values())
        errs = sum(self.errors.values())
        out = [f"{self.clients} clients for {self.seconds:.0f} s: {total} calls "
               f"({total / self.seconds:.0f}/s), {errs} errors",
               f"{'call':<18} {'n':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}"]
        for name in sorted(self.calls):
            ms = self.calls[name]
            out.append(f"{name:<18} {len(ms):>8} {percentile(ms, .5):>8.2f} "
                       f"{percentile(ms, .99):>8.2f} {self.errors.get(name, 0):>7}")
        out.append(f"runner RSS: before {self.rss_before_kb / 1024:.1f} MB, peak (VmHWM) "
                   f"{self.hwm_kb / 1024:.1f} MB, after {self.rss_after_kb / 1024:.1f} MB")
        out += [f"  first error: {e}" for e in self.first_errors[:3]]
        return out


def _small_bundle(out: Path, model_spec: str, shape: tuple[int, ...]):
    from codegen import compile_model
    from host.models import example_inputs, load_model
    return compile_model(load_model(model_spec), example_inputs(shape), out, name="load")


def _client_loop(runner: LocalRunner, handle: str, blobs: list[tuple[Path, str]],
                 stop: float, report: LoadReport, lock: threading.Lock, seed: int) -> None:
    bench = MeasureConfig(runs=3, warmup=1)
    path, sha = blobs[seed % len(blobs)]
    size = path.stat().st_size
    with RunnerClient(runner.address, runner.token, timeout_s=60) as c:
        calls = [("GetDeviceInfo", c.device_info),
                 ("MissingArtifacts", lambda: c.missing([s for _, s in blobs])),
                 ("UploadArtifact", lambda: c.upload(path, "weights", sha, size)),
                 ("Benchmark", lambda: c.benchmark(handle, bench))]
        i = seed
        while time.monotonic() < stop:
            name, fn = calls[i % len(calls)]
            i += 1
            t0 = time.perf_counter()
            try:
                fn()
                ok, why = True, ""
            except RunnerError as e:
                ok, why = False, str(e)
            ms = (time.perf_counter() - t0) * 1e3
            with lock:
                report.calls[name].append(ms)
                if not ok:
                    report.errors[name] += 1
                    if len(report.first_errors) < 3:
                        report.first_errors.append(why)


def run_load(runner: LocalRunner, bundle, clients: int, seconds: float, work: Path) -> LoadReport:
    c = runner.client(timeout_s=60)
    c.ensure_artifacts(bundle)
    handle = c.load_model(bundle.manifest, MeasureConfig(threads=1)).handle
    blobs = []
    for k in range(8):
        p = work / f"blob{k}"
        p.write_bytes(hashlib.sha256(bytes([k])).digest() * 128)  # 4 KiB each
        blobs.append((p, hashlib.sha256(p.read_bytes()).hexdigest()))
    report = LoadReport(clients, seconds)
    report.rss_before_kb = status_kb(runner.pid, "VmRSS")
    lock = threading.Lock()
    stop = time.monotonic() + seconds
    threads = [threading.Thread(target=_client_loop,
                                args=(runner, handle, blobs, stop, report, lock, k))
               for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    report.hwm_kb = status_kb(runner.pid, "VmHWM")
    c.unload(handle)
    c.close()
    time.sleep(2)  # let gRPC's idle channels close before the last reading
    report.rss_after_kb = status_kb(runner.pid, "VmRSS")
    return report


_MALLOC_TOTAL = re.compile(r"Total \(incl\. mmap\):\s*system bytes\s*=\s*(\d+)\s*"
                           r"in use bytes\s*=\s*(\d+)")


def heap_kb(runner: LocalRunner) -> tuple[int, int]:
    """(VmRSS kB after ``malloc_trim(0)``, malloc's bytes in use in kB) of the runner, asked
    through gdb (attached for a moment: ``malloc_trim``, then ``malloc_stats``, which glibc
    prints to the runner's stderr, its log). In-use bytes that grow are a leak; RSS that grows
    while they stay flat, and falls back after the trim, is the allocator keeping freed
    memory."""
    gdb = shutil.which("gdb")
    if gdb is None:
        raise RuntimeError("--heap needs gdb (Debian: apt-get install gdb)")
    start = runner.log_path.stat().st_size
    subprocess.run([gdb, "-p", str(runner.pid), "-batch", "-nx",
                    "-ex", "call (int)malloc_trim(0)", "-ex", "call (void)malloc_stats()"],
                   capture_output=True, timeout=120, check=True)
    with open(runner.log_path, "rb") as f:
        f.seek(start)
        found = _MALLOC_TOTAL.findall(f.read().decode(errors="replace"))
    if not found:
        raise RuntimeError(f"no malloc_stats output in {runner.log_path} (is the runner's "
                           "malloc glibc's, and may gdb attach to it?)")
    return status_kb(runner.pid, "VmRSS"), int(found[-1][1]) // 1024


Sample = tuple[int, ...]  # (cycle, VmRSS kB) or, with heap, + (RSS after trim, in use) kB


def run_cycles(runner: LocalRunner, bundle, cycles: int, every: int,
               heap: bool = False) -> list[Sample]:
    """Load and unload ``bundle`` ``cycles`` times; (cycle, VmRSS kB) every ``every`` cycles,
    with ``heap`` also ``heap_kb``'s two figures (after the RSS reading)."""
    c = runner.client(timeout_s=60)
    c.ensure_artifacts(bundle)

    def sample(i: int) -> Sample:
        rss = status_kb(runner.pid, "VmRSS")
        return (i, rss, *heap_kb(runner)) if heap else (i, rss)

    samples = [sample(0)]
    for i in range(1, cycles + 1):
        c.unload(c.load_model(bundle.manifest, MeasureConfig(threads=1)).handle)
        if i % every == 0 or i == cycles:
            samples.append(sample(i))
    c.close()
    return samples


def cycles_lines(samples: list[Sample], warm: int) -> list[str]:
    heap = len(samples[0]) > 2
    out = [f"{'cycle':>7} {'RSS MB':>8}" + (f" {'trimmed':>8} {'in use':>8}" if heap else "")]
    out += [f"{s[0]:>7} " + " ".join(f"{kb / 1024:>8.1f}" for kb in s[1:]) for s in samples]

    def summary(col: int, what: str) -> str:
        base = next((s[col] for s in samples if s[0] >= warm), samples[0][col])
        last = samples[-1][col]
        return (f"{what} {samples[0][col] / 1024:.1f} MB before the first load, "
                f"{base / 1024:.1f} MB at cycle {warm}, {last / 1024:.1f} MB after "
                f"{samples[-1][0]} cycles: {(last - base) / 1024:+.1f} MB after warm-up, "
                f"max {max(s[col] for s in samples) / 1024:.1f} MB")

    out.append(summary(1, "RSS"))
    if heap:
        out.append(summary(2, "RSS after malloc_trim"))
        out.append(summary(3, "malloc in use"))
    return out


def load_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="npas-host bench load", description=__doc__.split("\n")[0])
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--cycles", type=int, default=0,
                   help="instead of the load: load and unload the model this many times")
    p.add_argument("--every", type=int, default=50, help="with --cycles: RSS every N cycles")
    p.add_argument("--heap", action="store_true",
                   help="with --cycles: also malloc's bytes in use and the RSS after "
                        "malloc_trim at each sample (through gdb), to tell a leak from "
                        "memory the allocator keeps")
    p.add_argument("--model", default="host.models.zoo:digits_tiny")
    p.add_argument("--shape", default="1,1,28,28")
    a = p.parse_args(argv)
    shape = tuple(int(s) for s in a.shape.split(","))
    with tempfile.TemporaryDirectory(prefix="npas-load-") as tmp:
        work = Path(tmp)
        bundle = _small_bundle(work / "bundle", a.model, shape)
        cfg = LocalRunnerConfig(binary=find_runner_binary(), store=work / "store")
        with LocalRunner(cfg) as runner:
            print(f"runner {cfg.binary}, model {a.model} {shape}")
            if a.cycles:
                lines = cycles_lines(run_cycles(runner, bundle, a.cycles, a.every, a.heap),
                                     warm=min(100, a.cycles))
            else:
                lines = run_load(runner, bundle, a.clients, a.seconds, work).lines()
    print("\n".join(lines))
    return 0


def fuzz_main(argv: list[str]) -> int:
    """``bench fuzz [--runs N | --seconds S] [TARGET...]``: scripts/fuzz.sh's table."""
    return subprocess.call([str(REPO_ROOT / "scripts" / "fuzz.sh"), *argv])
