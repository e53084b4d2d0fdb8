"""Benchmark of phase 2's scale-out (not a test): candidates per minute of the main job's
phase 2 (the README's first search: the digits CNN, npas, 1-epoch fine-tunes, 100 timed runs on
the local runner, target 0.02 ms) in this process (``--executor local``) and on a local Ray
cluster with 1 and 2 workers (``--executor ray --workers N``).

    npas-host bench scaleout [--budget 12] [--repeats 3] [--workers 1,2]

Phase 1 is run once and shared (its checkpoint), so every run searches from the same model;
the runs are interleaved (local, ray 1, ray 2, local, ...) so that a change in the machine's
load hits all of them alike. Per run: candidates evaluated / phase 2's wall time; the table
gives the median over the repeats and every run's figure. One Ray cluster (as many CPUs as the
largest worker count) serves all Ray runs; ``--workers`` caps how many fine-tunes run at once.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from contextlib import ExitStack
from pathlib import Path

from rich.table import Table

from ..console import err, out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="npas-host bench scaleout",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--budget", type=int, default=12, help="candidates per run (default 12)")
    ap.add_argument("--repeats", type=int, default=3, help="runs per setting (default 3)")
    ap.add_argument("--workers", default="1,2", help="Ray worker counts (default 1,2)")
    ap.add_argument("--no-local", action="store_true", help="leave out the in-process runs")
    ap.add_argument("--latency-ms", type=float, default=0.02)
    ap.add_argument("--finetune-epochs", type=float, default=1.0)
    ap.add_argument("--strategy", default="npas")
    ap.add_argument("--runner", type=Path)
    ap.add_argument("--out", type=Path, help="default runs/bench-scaleout-DATE-TIME")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    import ray

    from ..devices import DeviceSpec, open_device
    from ..errors import UserError
    from ..search import Search, SearchConfig, SearchError, prepare
    from ..search.config import SEARCH_STORE_BYTES
    from ..search.live import SearchUI

    a = parse_args(argv)
    counts = [int(w) for w in a.workers.split(",") if w]
    settings = ([] if a.no_local else [("local", 0)]) + [("ray", w) for w in counts]
    root = a.out or Path("runs") / f"bench-scaleout-{time.strftime('%Y%m%d-%H%M%S')}"
    common = dict(latency_ms=a.latency_ms, strategy=a.strategy,
                  finetune_epochs=a.finetune_epochs, skip_final=True)
    ui = SearchUI(err)
    rates: dict[str, list[float]] = {_name(e, w): [] for e, w in settings}
    strat: dict[str, list[float]] = {_name(e, w): [] for e, w in settings}
    t0 = time.perf_counter()
    try:
        with ExitStack() as stack:
            spec = DeviceSpec(name="local", runner=a.runner,
                              private_store_bytes=SEARCH_STORE_BYTES)
            device = open_device(spec, stack)
            ui.phase("bench", "phase 1 (shared)")
            base_cfg = SearchConfig(**{**common, "strategy": "uniform", "budget": 1})
            Search(base_cfg, root / "base", device, ui=ui, prepared=prepare(base_cfg)).run()
            ckpt = str(root / "base" / "checkpoints" / "phase1.pt")
            if counts:
                ray.init(num_cpus=max(counts), include_dashboard=False, log_to_driver=False)
                stack.callback(ray.shutdown)
            for rep in range(a.repeats):
                for executor, w in settings:
                    name = _name(executor, w)
                    cfg = SearchConfig(**{**common, "budget": a.budget, "executor": executor,
                                          "workers": w, "phase1_checkpoint": ckpt})
                    ui.phase("bench", f"{name}, run {rep + 1}/{a.repeats}")
                    s = Search(cfg, root / f"{name.replace(' ', '-')}-{rep}", device,
                               ui=SearchUI(err, quiet=True), prepared=prepare(cfg)).run()
                    p2 = s["phase2"]
                    rate = 60.0 * p2["evaluated"] / p2["seconds"]
                    rates[name].append(rate)
                    strat[name].append(p2["strategy_s"] / max(p2["evaluated"], 1))
                    ui.log(f"{name}: {p2['evaluated']} candidates in {p2['seconds']:.1f} s: "
                           f"{rate:.1f} per minute; the strategy's ask/tell "
                           f"{p2['strategy_s']:.1f} s")
    except SearchError as e:
        raise UserError(str(e)) from None
    _print(rates, strat, a, time.perf_counter() - t0)
    (root / "bench.json").write_text(json.dumps(
        {"candidates_per_minute": rates, "strategy_s_per_candidate": strat,
         "budget": a.budget, "repeats": a.repeats,
         "latency_ms": a.latency_ms, "finetune_epochs": a.finetune_epochs,
         "strategy": a.strategy, "wall_s": time.perf_counter() - t0}, indent=1) + "\n")
    out.print(f"runs and bench.json: {root}")
    return 0


def _name(executor: str, workers: int) -> str:
    return "local (in-process)" if executor == "local" else f"ray, {workers} worker(s)"


def _print(rates: dict[str, list[float]], strat: dict[str, list[float]], a,
           wall: float) -> None:
    t = Table(title=f"phase 2, {a.strategy}, {a.budget} candidates per run, "
                    f"{a.finetune_epochs:g}-epoch fine-tunes: candidates per minute")
    t.add_column("executor")
    t.add_column("median", justify="right")
    t.add_column("runs", justify="right")
    t.add_column("strategy s / candidate (median)", justify="right")
    first = statistics.median(next(iter(rates.values())))
    for name, vals in rates.items():
        med = statistics.median(vals)
        t.add_row(name, f"{med:.1f} ({med / first:.2f}x)", ", ".join(f"{v:.1f}" for v in vals),
                  f"{statistics.median(strat[name]):.2f}")
    out.print(t)
    out.print(f"{wall:.0f} s in all")
