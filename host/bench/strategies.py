"""Benchmark of the search strategies (not a test): npas, random, uniform and jcw, each with the
same evaluation budget, over several seeds, on one device, with the same phase-1 model and the
same latency target; prints per strategy and seed the best accuracy among the evaluated
candidates that meet the target (phase 2's accuracy: one-shot pruning + the short fine-tune),
and the hypervolume of the evaluated candidates' front: the area of (accuracy, measured
latency) they dominate, up to the fixed reference point (accuracy 0, the dense latency), with
latency over the dense latency, so 1.0 would be a 100 % accurate model taking no time (pymoo's
``HV``). Every strategy's front is built the same way, from its evaluated candidates.

    scripts/bench_search.sh [--seeds 0,1,2] [--budget 24] [--speedup 8] ...

The phase-1 model is trained once (a first run with seed 0) and shared; the target is fixed
from that run's dense latency, so every strategy chases the same number. Strategies run
interleaved per seed so that a change in the machine's load hits all of them alike.

Two settings. At equal evaluation budget (``--budget`` candidates each) npas, random, uniform
and jcw fine-tune every candidate and measure it on the device. At equal wall time,
``jcw-fast`` is jcw with the weight-sharing supernet (``--evaluator supernet``) and the
per-layer latency table (``--latency table``): it evaluates as many candidates as fit in the
wall time of the fastest of that seed's npas, random and uniform runs (``--time-budget``, the
front's re-measurement on the device included), and its hypervolume counts only the
candidates measured on the device (the re-measured front), not the table's estimates.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from contextlib import ExitStack
from pathlib import Path

from rich.table import Table

from ..console import err, out
from ..measure import MeasureConfig


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="bench_search.sh", description=__doc__.split("\n\n")[0])
    ap.add_argument("--strategies", default="npas,random,uniform,jcw,jcw-fast",
                    help="npas, random, uniform, jcw (equal evaluation budget) and jcw-fast "
                         "(jcw + supernet + latency table, at equal wall time: run last)")
    ap.add_argument("--fast-population", type=int, default=16,
                    help="jcw-fast's population (default 16)")
    ap.add_argument("--walls-from", type=Path, metavar="BENCH_JSON",
                    help="jcw-fast's wall time from the npas/random/uniform runs of an earlier "
                         "bench (its bench.json; with --base OUT/base of that bench)")
    ap.add_argument("--jcw-bounds", default="0.1,0.3,0.3,0.3",
                    help="jcw's lower bounds (default 0.1,0.3,0.3,0.3: JCW's own, "
                         "0.5,0.8,0.9,0.3, cannot reach dense/8 on the digits CNN)")
    ap.add_argument("--population", type=int, default=8, help="jcw's population (default 8)")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--budget", type=int, default=24, help="candidates per run (default 24)")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--speedup", type=float, default=8.0,
                    help="target = dense latency / SPEEDUP (default 8)")
    ap.add_argument("--latency-ms", type=float, help="or an absolute target")
    ap.add_argument("--model", default=None, help="default: the search's default model")
    ap.add_argument("--dataset", default="digits")
    ap.add_argument("--finetune-epochs", type=float, default=0.5,
                    help="phase 2 fine-tuning per candidate (default 0.5)")
    ap.add_argument("--pretrain-epochs", default="auto")
    ap.add_argument("--runs", type=int, default=MeasureConfig.runs)
    ap.add_argument("--device", default="local")
    ap.add_argument("--runner", type=Path)
    ap.add_argument("--out", type=Path, help="default runs/bench-search-DATE-TIME")
    ap.add_argument("--base", type=Path,
                    help="reuse the phase-1 model and target of an earlier bench's base run "
                         "(OUT/base) instead of making a new one")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from ..devices import DeviceSpec, open_device
    from ..errors import UserError
    from ..search import DEFAULT_MODEL, Search, SearchConfig, SearchError, prepare
    from ..search.config import SEARCH_STORE_BYTES
    from ..search.estimates import estimated, with_remeasured
    from ..search.journal import Journal
    from ..search.live import SearchUI

    a = parse_args(argv)
    strategies = [s for s in a.strategies.split(",") if s]
    seeds = [int(s) for s in a.seeds.split(",") if s]
    root = a.out or Path("runs") / f"bench-search-{time.strftime('%Y%m%d-%H%M%S')}"
    pre = None if a.pretrain_epochs == "auto" else float(a.pretrain_epochs)
    common = dict(model=a.model or DEFAULT_MODEL, dataset=a.dataset, device=a.device,
                  budget=a.budget, batch=a.batch, finetune_epochs=a.finetune_epochs,
                  pretrain_epochs=pre, runs=a.runs, skip_final=True,
                  population=a.population,
                  jcw_bounds=tuple(float(v) for v in a.jcw_bounds.split(",")))
    spec = DeviceSpec(name=a.device, runner=a.runner, private_store_bytes=SEARCH_STORE_BYTES)
    ui = SearchUI(err)
    table: dict[str, dict[int, float | None]] = {s: {} for s in strategies}
    meeting: dict[str, dict[int, int]] = {s: {} for s in strategies}
    hv: dict[str, dict[int, float]] = {s: {} for s in strategies}
    walls: dict[str, dict[int, float]] = {s: {} for s in strategies}
    counts: dict[str, dict[int, int]] = {s: {} for s in strategies}
    extra: dict[str, dict[int, dict]] = {s: {} for s in strategies}
    earlier = {}
    if a.walls_from is not None:
        earlier = {k: {int(s): v for s, v in row.items()}
                   for k, row in json.loads(a.walls_from.read_text())["run_wall_s"].items()}
    t0 = time.perf_counter()
    try:
        with ExitStack() as stack:
            device = open_device(spec, stack)
            # the shared phase-1 model and target: one short run
            base_cfg = SearchConfig(**{**common, "strategy": "uniform", "budget": 1,
                                       "speedup": a.speedup if a.latency_ms is None else None,
                                       "latency_ms": a.latency_ms, "seed": 0})
            ui.phase("bench", "phase 1 (shared) and the latency target")
            base_dir = a.base or root / "base"
            if a.base is None:
                base = Search(base_cfg, base_dir, device, ui=ui,
                              prepared=prepare(base_cfg)).run()
            else:
                base = _base_of(a.base)
            target = base["target_ms"]
            ckpt = str(base_dir / "checkpoints" / "phase1.pt")
            ui.log(f"target {target:.4f} ms (dense {base['dense_ms']:.4f} ms)")
            for seed in seeds:
                for strat in sorted(strategies, key=lambda x: x == FAST):  # jcw-fast last
                    over = {"strategy": strat}
                    if strat == FAST:
                        rivals = [w[seed] for x in ("npas", "random", "uniform")
                                  for w in (walls.get(x, {}), earlier.get(x, {}))
                                  if seed in w]
                        if not rivals:
                            raise SearchError("jcw-fast runs at the wall time of npas, "
                                              "random or uniform: list one of them too")
                        over = {"strategy": "jcw", "evaluator": "supernet", "latency": "table",
                                "budget": FAST_BUDGET, "population": a.fast_population,
                                "time_budget_s": min(rivals)}
                    cfg = SearchConfig(**{**common, **over, "seed": seed,
                                          "latency_ms": target, "phase1_checkpoint": ckpt})
                    ui.phase("bench", f"{strat}, seed {seed}")
                    s = Search(cfg, root / f"{strat}-seed{seed}", device,
                               ui=SearchUI(err, quiet=True), prepared=prepare(cfg)).run()
                    table[strat][seed] = s["best_meeting_accuracy"]
                    recs = [r for r in with_remeasured(Journal(root / f"{strat}-seed{seed}")
                                                       .records(), target)
                            if r.get("status") == "done" and r["id"] < cfg.budget]
                    counts[strat][seed] = len(recs)
                    recs = [r for r in recs if not estimated(r)]  # measured on the device
                    meeting[strat][seed] = sum(1 for r in recs if r["meets_target"])
                    hv[strat][seed] = hypervolume(recs, base["dense_ms"])
                    walls[strat][seed] = s["wall_s"]
                    extra[strat][seed] = {
                        "evaluated": counts[strat][seed], "measured": len(recs),
                        "time_budget_s": cfg.time_budget_s,
                        "cpu_minutes_per_candidate":
                            (s.get("evaluator") or {}).get("cpu_minutes_per_candidate"),
                        "table_error": {k: v for k, v in (s.get("latency_table") or {}).items()
                                        if k != "rows"} or None}
                    ui.log(f"{strat} seed {seed}: best accuracy meeting the target "
                           f"{_fmt(table[strat][seed])} ({meeting[strat][seed]}/{len(recs)} "
                           f"measured meet it, {counts[strat][seed]} evaluated), hypervolume "
                           f"{hv[strat][seed]:.4f}, {s['wall_s']:.0f} s")
    except SearchError as e:
        raise UserError(str(e)) from None
    _print(table, meeting, seeds, target, base["dense_ms"], a, time.perf_counter() - t0)
    _print_hv(hv, walls, counts, extra, seeds, base["dense_ms"], a)
    (root / "bench.json").write_text(json.dumps(
        {"target_ms": target, "dense_ms": base["dense_ms"], "budget": a.budget,
         "seeds": seeds, "best_meeting_accuracy": table, "meeting": meeting,
         "hypervolume": hv, "run_wall_s": walls, "jcw_bounds": a.jcw_bounds,
         "evaluated": counts, "runs": extra,
         "wall_s": time.perf_counter() - t0}, indent=1) + "\n")
    out.print(f"runs and bench.json: {root}")
    return 0


def hypervolume(records: list[dict], dense_ms: float) -> float:
    """The hypervolume of the evaluated candidates (loss = 1 − accuracy, latency / dense
    latency; both minimised) up to the reference point (1, 1): what accuracy-latency
    trade-offs the run found, in [0, 1]. pymoo's HV; candidates slower than the dense model
    add nothing."""
    import numpy as np
    from pymoo.indicators.hv import HV

    pts = [(1.0 - r["accuracy"], r["latency_ms"] / dense_ms) for r in records
           if r.get("status") == "done"]
    if not pts:
        return 0.0
    return float(HV(ref_point=np.array([1.0, 1.0]))(np.array(pts)))


def _print_hv(hv, walls, counts, extra, seeds, dense, a) -> None:
    t = Table(title=f"hypervolume of (accuracy, measured latency / {dense:.4f} ms dense), "
                    f"reference (0 %, dense)")
    t.add_column("strategy")
    t.add_column("setting")
    for s in seeds:
        t.add_column(f"seed {s}", justify="right")
    t.add_column("mean", justify="right")
    t.add_column("evaluated (mean)", justify="right")
    t.add_column("CPU-min per candidate", justify="right")
    t.add_column("wall per run (mean)", justify="right")
    for strat, row in hv.items():
        vals = [row.get(s, 0.0) for s in seeds]
        cpm = [e["cpu_minutes_per_candidate"] for e in extra[strat].values()
               if e.get("cpu_minutes_per_candidate") is not None]
        setting = ("equal wall time (supernet + table)" if strat == FAST
                   else f"equal budget ({a.budget})")
        t.add_row(strat, setting, *(f"{v:.4f}" for v in vals), f"{statistics.fmean(vals):.4f}",
                  f"{statistics.fmean(counts[strat].values()):.0f}",
                  f"{statistics.fmean(cpm):.4f}" if cpm else "-",
                  f"{statistics.fmean(walls[strat].values()):.0f} s")
    out.print(t)
    for seed in seeds:
        e = extra.get(FAST, {}).get(seed)
        if e and e.get("table_error"):
            te = e["table_error"]
            out.print(f"jcw-fast seed {seed}: {e['evaluated']} evaluated in "
                      f"{walls[FAST][seed]:.0f} s (time budget {e['time_budget_s']:.0f} s), "
                      f"{te['remeasured']} re-measured on the device; the table's error "
                      + (f"{te['mean_abs_error']:.1%} mean, {te['max_abs_error']:.1%} largest"
                         if te.get("mean_abs_error") is not None else "unknown"))


FAST = "jcw-fast"
FAST_BUDGET = 100000  # jcw-fast: the time budget stops it, not the count


def _base_of(run: Path) -> dict:
    from ..search import SearchError
    from ..search.journal import Journal

    recs = Journal(run).records()
    probe = next((r for r in recs if r.get("type") == "probe"), None)
    if not recs or probe is None or not (run / "checkpoints" / "phase1.pt").is_file():
        raise SearchError(f"--base {run}: not a finished base run (journal, probe, "
                          f"checkpoints/phase1.pt)")
    return {"target_ms": recs[0]["target_ms"], "dense_ms": probe["dense"]["median_ms"]}


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.2%}"


def _mean(vals: list[float | None]) -> float | None:
    got = [v if v is not None else 0.0 for v in vals]
    return statistics.fmean(got) if got else None


def _print(table, meeting, seeds, target, dense, a, wall) -> None:
    t = Table(title=f"best phase-2 accuracy meeting {target:.4f} ms (dense {dense:.4f} ms), "
                    f"{a.budget} candidates each, {a.finetune_epochs:g} epoch fine-tune")
    t.add_column("strategy")
    for s in seeds:
        t.add_column(f"seed {s}", justify="right")
    t.add_column("mean", justify="right")
    t.add_column("meeting (mean)", justify="right")
    for strat, row in table.items():
        vals = [row.get(s) for s in seeds]
        t.add_row(strat, *(_fmt(v) for v in vals), _fmt(_mean(vals)),
                  f"{statistics.fmean(meeting[strat].values()):.1f}")
    out.print(t)
    out.print(f"'-': none of the run's candidates met the target (counts 0 in the mean); "
              f"{wall:.0f} s in all")


if __name__ == "__main__":
    sys.exit(main())
