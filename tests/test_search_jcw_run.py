"""jcw on the real local runner: one search, several targets, a model exported per target;
a search killed mid-run and resumed evaluates no finished candidate again."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from procs import descendants, wait_gone
from test_search import REPO, TINY_ARGS, _kill_runners_using, _tiny_config

from host.search.journal import Journal

pytestmark = [pytest.mark.host, pytest.mark.usefixtures("one_thread")]
JCW_ARGS = [*TINY_ARGS, "--strategy", "jcw", "--population", "4"]


def test_jcw_exports_a_model_per_target(tmp_path, fresh_runner):
    """Targets far above the tiny model's latency: the whole path of several targets (per
    target a choice, phase 3 and an export measured on the device again; one candidate
    chosen for two targets is finished once)."""
    from host.search import Search

    run = tmp_path / "run"
    targets = (40.0, 60.0)
    cfg = _tiny_config(strategy="jcw", population=4, budget=4, speedup=None,
                       latency_ms=targets[0], targets=targets)
    s = Search(cfg, run, fresh_runner).run()
    assert s["target_ms"] == 40.0 and [t["target_ms"] for t in s["targets"]] == list(targets)
    recs = Journal(run).records()
    cands = [r for r in recs if r["type"] == "candidate" and r["status"] == "done"]
    assert len(cands) == 4
    assert recs[1]["type"] == "probe" and recs[1]["floor"], "jcw's own floor was measured"
    phases = [r["phase"] for r in recs if r["type"] == "phase"]
    ids = [t["chosen"]["id"] for t in s["targets"]]
    # every candidate meets both targets, so both choose the most accurate one: it is pruned,
    # trained and exported once, for the first target, and the second points at it
    assert ids[0] == ids[1]
    assert [p for p in phases if p.endswith("@60ms")] == []
    assert [p for p in phases if p.endswith("@40ms")] == [
        "phase3-gradual@40ms", "phase3-admm@40ms", "phase3-final@40ms", "phase3@40ms"]
    final = run / "final" / "40ms"
    prof = json.loads((final / "profile.json").read_text())
    assert len(prof["samples_ns"]) == 20 and prof["target_ms"] == 40.0
    model = torch.load(final / "model.pt", weights_only=False)
    assert model(torch.randn(1, 1, 8, 8)).shape == (1, 10)
    enc = json.loads((final / "candidate.json").read_text())["encoding"]
    joint = any(len(row) == 5 for row in enc)
    assert (final / "structure.json").is_file() == joint
    assert (final / "bundle").is_dir() and (final / "plan.json").is_file()
    for t in s["targets"]:
        assert t["phase3"]["target_ms"] == t["target_ms"]
        assert t["phase3"]["meets_target"] == (t["phase3"]["final_ms"] <= t["target_ms"])
        assert t["chosen"]["latency_ms"] <= t["target_ms"]
        assert t["phase3"]["exported"]["PyTorch model"] == "final/40ms/model.pt"
    report = (run / "report.md").read_text()
    assert "## Targets: one model per target" in report
    assert "| 40 ms |" in report and "| 60 ms |" in report and "`final/40ms`" in report
    assert (run / "plots" / "accuracy_vs_latency.png").stat().st_size > 1000


def test_jcw_resume_after_kill_evaluates_no_finished_candidate_twice(tmp_path, runner_binary):
    run, store = tmp_path / "run", tmp_path / "store"
    cmd = [sys.executable, "-m", "host.cli", "search", *JCW_ARGS, "--latency-ms", "50",
           "--budget", "8", "--batch", "2", "--skip-final", "--out", str(run), "--no-live",
           "--store", str(store), "--runner", str(runner_binary)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    log = open(tmp_path / "first.log", "w")
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=log, env=env)
    journal = Journal(run)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            if len(journal.finished_candidates()) >= 5:  # into the second generation
                break
            time.sleep(0.05)  # polling a file for a condition, not waiting for time to pass
        assert proc.poll() is None, (tmp_path / "first.log").read_text()
        below = descendants(proc.pid)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        wait_gone(below, 30)
    finally:
        log.close()
        _kill_runners_using(store)
    before = journal.finished_candidates()
    assert 5 <= len(before) < 8
    r = subprocess.run([sys.executable, "-m", "host.cli", "search", "--resume", str(run),
                        "--no-live", "--store", str(store), "--runner", str(runner_binary)],
                       cwd=REPO, capture_output=True, text=True, env=env, timeout=300)
    _kill_runners_using(store)
    assert r.returncode == 0, r.stderr
    recs = journal.records()
    cands = [x for x in recs if x["type"] == "candidate"]
    finished = [x["id"] for x in cands if x["status"] in ("done", "failed")]
    assert sorted(finished) == list(range(8)), "every candidate finished exactly once"
    resumed_at = next(i for i, x in enumerate(recs) if x["type"] == "resume")
    restarted = {x["id"] for x in recs[resumed_at:] if x.get("status") == "started"}
    assert not restarted & set(before), "a finished candidate was started again"
    assert restarted == set(range(8)) - set(before)
    # the replayed NSGA-II (told the journal's results and probes) proposed what it had
    assert "differs from the journal" not in r.stderr, r.stderr
    keys = [x["key"] for x in cands if x["status"] == "done"]
    assert len(set(keys)) == len(keys), "no candidate evaluated twice under two ids"
