"""jcw with its estimators on the real local runner: the supernet scores candidates, the
per-layer latency table estimates their latency, every front member and target pick is
measured again on the device before it is reported; a search killed and resumed trains
neither the supernet nor the table again and evaluates no finished candidate twice."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from procs import descendants, wait_gone
from test_search import REPO, TINY_ARGS, _kill_runners_using, _tiny_config

from host.search.estimates import with_remeasured
from host.search.journal import Journal
from host.search.report import pareto

pytestmark = [pytest.mark.host, pytest.mark.usefixtures("one_thread")]
FAST_ARGS = [*TINY_ARGS, "--strategy", "jcw", "--population", "4", "--evaluator", "supernet",
             "--latency", "table", "--supernet-epochs", "0.5", "--supernet-steps", "4"]


def test_jcw_supernet_and_table_remeasure_the_front(tmp_path, fresh_runner):
    from host.search import Search

    run = tmp_path / "run"
    targets = (40.0, 60.0)
    cfg = _tiny_config(strategy="jcw", population=4, budget=10, speedup=None,
                       latency_ms=targets[0], targets=targets, evaluator="supernet",
                       latency="table", supernet_epochs=0.5, supernet_steps=4,
                       skip_final=True)
    s = Search(cfg, run, fresh_runner).run()
    recs = Journal(run).records()
    phases = [r["phase"] for r in recs if r["type"] == "phase"]
    assert phases.count("supernet") == 1
    rounds = [p for p in phases if p.startswith("supernet-round")]
    assert rounds and rounds == [f"supernet-round{i}" for i in range(1, len(rounds) + 1)]
    tables = [r for r in recs if r["type"] == "latency_table"]
    assert len(tables) == 1 and tables[0]["bundles"] == 16, "4 widths × 4 densities"
    assert sorted(tables[0]["table"]["levels"]) == ["0.3", "0.6", "0.9", "1"]
    cands = [r for r in recs if r["type"] == "candidate" and r["status"] == "done"]
    assert len(cands) == 10
    assert all(r["latency_source"] == "table" and r["evaluator"] == "supernet" for r in cands)
    # nothing but the probes, the table and the re-measurements was compiled: no candidate
    # carries samples from the device
    assert all(not r["latency"]["samples_ns"] for r in cands)
    view = with_remeasured(recs, cfg.latency_ms)
    done = [r for r in view if r["status"] == "done"]
    again = [r for r in recs if r["type"] == "remeasured"]
    assert again and len({r["id"] for r in again}) == len(again), "each measured once"
    # the front, on the latencies as reported (measured where re-measured), is all measured
    front = pareto([(r["latency_ms"], r["accuracy"]) for r in done])
    assert front and all(done[i].get("remeasured") for i in front)
    for t in s["targets"]:
        chosen = next(r for r in done if r["id"] == t["chosen"]["id"])
        assert chosen.get("remeasured"), "a target's choice was measured on the device"
        assert t["chosen"]["latency_ms"] == chosen["latency_ms"]
    tab = s["latency_table"]
    assert tab["remeasured"] == len(again) == len(tab["rows"])
    for row in tab["rows"]:
        rec = next(r for r in again if r["id"] == row["id"])
        assert row["table_ms"] == rec["table_ms"] and row["measured_ms"] == rec["latency_ms"]
    assert tab["mean_abs_error"] >= 0 and tab["scale"] > 0
    ev = s["evaluator"]
    assert ev["evaluator"] == "supernet" and ev["scored"] == 10 and ev["rounds"] == len(rounds)
    assert ev["cpu_minutes_per_candidate"] > 0
    report = (run / "report.md").read_text()
    assert "### The latency table against the device" in report
    assert "CPU-minutes per candidate" in report and "supernet" in report


def test_jcw_supernet_resume_after_kill_trains_and_evaluates_nothing_twice(tmp_path,
                                                                          runner_binary):
    run, store = tmp_path / "run", tmp_path / "store"
    budget = 12
    cmd = [sys.executable, "-m", "host.cli", "search", *FAST_ARGS, "--latency-ms", "50",
           "--budget", str(budget), "--batch", "2", "--skip-final", "--out", str(run),
           "--no-live", "--store", str(store), "--runner", str(runner_binary)]
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
    rounds_before = [r["phase"] for r in journal.records()
                     if r["type"] == "phase" and r["phase"].startswith("supernet-round")]
    assert 5 <= len(before) < budget and rounds_before
    r = subprocess.run([sys.executable, "-m", "host.cli", "search", "--resume", str(run),
                        "--no-live", "--store", str(store), "--runner", str(runner_binary)],
                       cwd=REPO, capture_output=True, text=True, env=env, timeout=300)
    _kill_runners_using(store)
    assert r.returncode == 0, r.stderr
    recs = journal.records()
    cands = [x for x in recs if x["type"] == "candidate"]
    finished = [x["id"] for x in cands if x["status"] in ("done", "failed")]
    assert sorted(finished) == list(range(budget)), "every candidate finished exactly once"
    resumed_at = next(i for i, x in enumerate(recs) if x["type"] == "resume")
    restarted = {x["id"] for x in recs[resumed_at:] if x.get("status") == "started"}
    assert not restarted & set(before), "a finished candidate was started again"
    assert restarted == set(range(budget)) - set(before)
    after = recs[resumed_at:]
    assert not [x for x in after if x["type"] == "latency_table"], "the table was measured again"
    phases = [x["phase"] for x in recs if x["type"] == "phase"]
    assert phases.count("supernet") == 1, "the supernet's first training was done again"
    rounds = [p for p in phases if p.startswith("supernet-round")]
    assert len(rounds) == len(set(rounds)), "a round was trained twice"
    assert "differs from the journal" not in r.stderr, r.stderr
    assert [x for x in recs if x["type"] == "remeasured"], "the front was measured on the device"
