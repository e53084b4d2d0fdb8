"""Scale-out: phase 2 on a real local Ray cluster (two CPU worker processes, started once for
the module), and a pool of two local runners.

- ``--executor ray --workers 2`` gives the sequential run's journal results (same candidates,
  same accuracies, for a strategy whose proposals do not depend on timing);
- a worker process killed mid-evaluation: the task is retried on another worker, journaled as
  a restart, and no candidate is lost or evaluated twice;
- the driver killed with -9 (connected to the cluster by --ray-address) resumes: the journal's
  asks and tells are replayed, the unfinished candidates evaluated again, nothing twice;
- two local runners as a pool measure at once and never overlap on one runner; a runner that
  is lost for good is taken out and its candidate measured on the other;
- devices of different models are refused, naming the models; --executor ray without Ray
  installed says how to install it.
No timing assertions."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import ray
import torch
from procs import descendants, wait_gone

from host.devices.local import LocalRunner, LocalRunnerConfig
from host.devices.pool import DeviceModel, one_model
from host.errors import UserError
from host.measure import MeasureConfig
from host.models.zoo import digits_tiny
from host.rpc.client import RunnerError
from host.search.journal import Journal
from host.search.ops import replace_ops
from host.search.space import SearchSpace

REPO = Path(__file__).resolve().parents[1]
TINY = "host.models.zoo:digits_tiny"
TINY_ARGS = ["--model", TINY, "--image-size", "8", "--pretrain-epochs", "1",
             "--phase1-epochs", "0.2", "--finetune-epochs", "0.2", "--samples", "32",
             "--runs", "20", "--warmup", "2", "--schemes", "unstructured,filter,channel",
             "--filter-types", "keep,dwpw", "--latency-ms", "1", "--skip-final", "--no-live"]


@pytest.fixture(scope="module")
def cluster():
    """A one-node Ray cluster with two CPUs: two fine-tunes at once. Yields its address."""
    # the worker-side test hook below lives in this module, which workers cannot import
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ctx = ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ctx.address_info["gcs_address"]
    ray.shutdown()


def _config(**kw):
    from host.search import SearchConfig

    base = dict(model=TINY, image_size=8, pretrain_epochs=1.0, phase1_epochs=0.2,
                finetune_epochs=0.2, samples=32, runs=20, warmup=2,
                schemes=("unstructured", "filter", "channel"), filter_types=("keep", "dwpw"),
                latency_ms=1.0, budget=4, batch=2, skip_final=True)
    base.update(kw)
    return SearchConfig(**base)


def _results(run: Path) -> dict[int, tuple]:
    out = {}
    for r in Journal(run).records():
        if r["type"] == "candidate" and r["status"] != "started":
            assert r["id"] not in out, f"candidate {r['id']} finished twice"
            out[r["id"]] = (r["key"], r["status"], r.get("accuracy"))
    return out


@pytest.mark.host
def test_ray_gives_the_sequential_journal_results(tmp_path, cluster, runner_binary):
    from host.search import Search

    results = {}
    for executor in ("local", "ray"):
        run = tmp_path / executor
        store = tmp_path / f"store-{executor}"
        with LocalRunner(LocalRunnerConfig(binary=runner_binary, store=store)) as dev:
            cfg = _config(strategy="uniform", executor=executor,
                          workers=2 if executor == "ray" else 0)
            s = Search(cfg, run, dev).run()
        assert s["evaluated"] == 4 and s["failed"] == 0
        results[executor] = _results(run)
    assert sorted(results["ray"]) == [0, 1, 2, 3]
    assert results["ray"] == results["local"], "same candidates, same accuracies"
    recs = [r for r in Journal(tmp_path / "ray").records() if r["type"] == "candidate"]
    assert all("ask" in r for r in recs)
    assert all(r["worker"]["pid"] != os.getpid() for r in recs if r["status"] == "done")


def kill_first_attempt_of_c1(cid: int, attempt: int) -> None:
    """Runs inside the Ray worker (pickled by value): the worker dies mid-evaluation."""
    if cid == 1 and attempt == 1:
        os.kill(os.getpid(), signal.SIGKILL)


@pytest.mark.host
def test_worker_killed_mid_evaluation_is_retried(tmp_path, cluster, runner_binary):
    from host.search import Search

    run = tmp_path / "run"
    with LocalRunner(LocalRunnerConfig(binary=runner_binary, store=tmp_path / "s")) as dev:
        s = Search(_config(strategy="random", executor="ray", workers=2), run, dev,
                   worker_hook=kill_first_attempt_of_c1).run()
    assert s["evaluated"] == 4 and s["failed"] == 0
    recs = [r for r in Journal(run).records() if r["type"] == "candidate"]
    done = {r["id"]: r for r in recs if r["status"] == "done"}
    assert sorted(done) == [0, 1, 2, 3], "no candidate lost"
    assert sorted(r["id"] for r in recs if r["status"] == "started") == [0, 1, 2, 3], \
        "none started twice by the driver"
    c1 = done[1]
    assert c1["eval_restarts"] == 1
    lost = c1["lost_workers"][0]["pid"]
    assert lost != c1["worker"]["pid"], "retried on another worker process"
    with pytest.raises(ProcessLookupError):
        os.kill(lost, 0)
    assert all("eval_restarts" not in done[i] for i in (0, 2, 3))


@pytest.mark.host
def test_driver_killed_resumes_without_evaluating_twice(tmp_path, cluster, runner_binary):
    run, store = tmp_path / "run", tmp_path / "store"
    common = ["--no-live", "--store", str(store), "--runner", str(runner_binary),
              "--ray-address", cluster]
    cmd = [sys.executable, "-m", "host.cli", "search", *TINY_ARGS, "--budget", "6",
           "--executor", "ray", "--workers", "2", "--out", str(run), *common]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    log = open(tmp_path / "first.log", "w")
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=log, env=env)
    journal = Journal(run)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            if len(journal.finished_candidates()) >= 2:
                break
            time.sleep(0.05)  # polling a file for a condition, not waiting for time to pass
        assert proc.poll() is None, (tmp_path / "first.log").read_text()
        below = descendants(proc.pid)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        left = wait_gone(below, 30)
        assert not left, f"outlived the SIGKILLed driver: {[below[i] for i in left]}"
    finally:
        log.close()
    before = journal.finished_candidates()
    assert 2 <= len(before) < 6
    r = subprocess.run([sys.executable, "-m", "host.cli", "search", "--resume", str(run),
                        *common], cwd=REPO, capture_output=True, text=True, env=env,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    recs = journal.records()
    cands = [x for x in recs if x["type"] == "candidate"]
    finished = [x["id"] for x in cands if x["status"] in ("done", "failed")]
    assert sorted(finished) == list(range(6)), "every candidate finished exactly once"
    resumed_at = next(i for i, x in enumerate(recs) if x["type"] == "resume")
    restarted = {x["id"] for x in recs[resumed_at:] if x.get("again")}
    assert not restarted & set(before), "a finished candidate was started again"
    first_started = {x["id"] for x in recs[:resumed_at] if x.get("status") == "started"}
    assert restarted == first_started - set(before), "the unfinished ones were evaluated"
    # npas, replayed from the journal's asks and tells, proposed the same candidates
    assert "differs from the journal" not in r.stderr
    assert recs[-1]["type"] == "final"


# --- the device pool ----------------------------------------------------------------------------
class _Watched(LocalRunner):
    """A real local runner whose benchmark calls are logged (device, start, end)."""

    calls: list[tuple[str, float, float]] = []

    def __init__(self, label: str, config: LocalRunnerConfig):
        super().__init__(config)
        self.label = label
        self.lost = False

    def client(self, timeout_s: float = 60.0):
        c = super().client(timeout_s)
        real = c.benchmark

        def benchmark(*a, **k):
            t0 = time.monotonic()
            try:
                return real(*a, **k)
            finally:
                _Watched.calls.append((self.label, t0, time.monotonic()))
        c.benchmark = benchmark
        return c

    def restart(self) -> None:
        if self.lost:
            raise RunnerError("restart", "UNAVAILABLE", f"{self.label} is unplugged (test)")
        super().restart()


@pytest.fixture()
def pool_parts(tmp_path, runner_binary):
    torch.manual_seed(0)
    model, _ = replace_ops(digits_tiny())
    x = torch.randn(1, 1, 8, 8)
    space = SearchSpace.build(model.eval(), x, vector_width=8)
    devs = {f"local#{i}": _Watched(f"local#{i}", LocalRunnerConfig(
        binary=runner_binary, store=tmp_path / f"store{i}")) for i in (1, 2)}
    _Watched.calls = []
    yield model, x, space, devs
    for d in devs.values():
        d.close()


@pytest.mark.host
def test_two_local_runners_measure_at_once_never_overlapping_on_one(tmp_path, pool_parts):
    from host.search.oracle_pool import OraclePool

    model, x, space, devs = pool_parts
    pool = OraclePool(devs, x, MeasureConfig(runs=50, warmup=2, threads=1))
    try:
        rng = np.random.default_rng(0)
        pruned = [space.realize(model, space.random(rng)) for _ in range(4)]
        futs = [pool.submit(f"c{i}", p.model, p.schemes, tmp_path / f"b{i}")
                for i, p in enumerate(pruned)]
        results = [f.result() for f in futs]
    finally:
        pool.close()
    assert all(r.ok for r in results), [r.errors for r in results]
    assert pool.pool.peak_in_use == 2, "both runners were measuring at once"
    assert all(n >= 1 for n in pool.measured_on.values()), pool.measured_on
    by_dev: dict[str, list] = {}
    for label, t0, t1 in _Watched.calls:
        by_dev.setdefault(label, []).append((t0, t1))
    assert set(by_dev) == set(devs)
    for label, spans in by_dev.items():
        spans.sort()
        for (_, end), (start, _) in zip(spans, spans[1:], strict=False):
            assert start >= end, f"two benchmarks overlapped on {label}"


@pytest.mark.host
def test_a_lost_runner_leaves_the_pool_and_its_candidate_goes_to_the_other(tmp_path,
                                                                           pool_parts):
    from host.search.oracle_pool import OraclePool

    model, x, space, devs = pool_parts
    events: list[str] = []
    pool = OraclePool(devs, x, MeasureConfig(runs=20, warmup=2, threads=1),
                      on_event=events.append)
    gone = devs["local#2"]
    gone.lost = True
    killed = threading.Event()

    def hook(tag: str, attempt: int) -> None:  # local#2's runner dies before its benchmark
        if attempt == 0 and gone.alive():
            killed.set()
            os.kill(gone.pid, signal.SIGKILL)
            gone._proc.wait()

    pool.all["local#2"].before_benchmark = hook
    try:
        d = space.realize(model, space.dense())
        results = [f.result() for f in [pool.submit(f"c{i}", d.model, d.schemes,
                                                    tmp_path / f"b{i}") for i in range(3)]]
        results.append(pool.measure("c3", d.model, d.schemes, tmp_path / "b3",
                                    keep_bundle=False))
    finally:
        pool.close()
    assert killed.is_set()
    assert all(r.ok for r in results), [r.errors for r in results]
    assert [n for n, _ in pool.lost] == ["local#2"]
    assert "unplugged (test)" in pool.lost[0][1]
    assert any("device local#2 is lost" in e and "1 left" in e for e in events), events
    assert pool.measured_on == {"local#1": 4, "local#2": 0}


def test_a_pool_of_two_device_models_is_refused_naming_them():
    s10 = DeviceModel("arm64-v8a", "Kryo 485", (1785600,) * 4 + (2419200,) * 3 + (2841600,))
    a54 = DeviceModel("arm64-v8a", "Exynos 1380", (2000000,) * 4 + (2400000,) * 4)
    assert one_model({"R58M1": s10, "R58M2": s10}) == s10
    with pytest.raises(UserError) as e:
        one_model({"R58M1": s10, "R58M2": s10, "RZ8T9": a54})
    msg = str(e.value)
    assert "R58M1, R58M2: Kryo 485 (arm64-v8a, 8 cores, up to 2842 MHz)" in msg
    assert "RZ8T9: Exynos 1380 (arm64-v8a, 8 cores, up to 2400 MHz)" in msg


def test_executor_ray_without_ray_says_how_to_install_it(tmp_path):
    code = ("import sys; sys.modules['ray'] = None\n"
            "from host.cli import main\n"
            f"sys.exit(main(['search', '--executor', 'ray', '--speedup', '2', '--out', "
            f"{str(tmp_path / 'run')!r}]))")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                       timeout=120)
    text = " ".join(r.stderr.split())
    assert r.returncode == 2, r.stderr
    assert "--executor ray needs Ray, which is not installed" in text
    assert "pip install -e '.[ray]'" in text
    assert not (tmp_path / "run").exists()


def test_a_ray_address_where_nothing_listens_is_refused_at_once():
    import socket

    from host.search import SearchError
    from host.search.executors.ray_cluster import _reachable

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    with pytest.raises(SearchError, match=f"--ray-address 127.0.0.1:{port}: nothing answers"):
        _reachable(f"127.0.0.1:{port}")
    with pytest.raises(SearchError, match="HOST:PORT of the cluster's head"):
        _reachable("headnode")
