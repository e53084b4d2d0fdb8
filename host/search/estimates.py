"""Latency estimates for phase 2 (``--latency table``): where a search proposes more candidates
than the device can time, a per-layer table measured on the device first (by layer, channel
width and weight density: host/pruning/latency_table.py's ``DensityTable``) gives each
candidate's latency, and before anything is reported every member of the front (and every
candidate a target would choose) is compiled and measured end to end on the device; the
report gives the table's error against those measurements.

The table's per-layer times add up to a little more or less than a whole run (the runner's
per-step timing has its own overhead); the estimate is that sum scaled by the dense model's
measured latency over the table's dense sum (``scale``), both recorded in the journal's
``latency_table`` record, so a resumed search estimates with the same numbers.
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from ..pruning.latency_table import DensityTable, layer_macs, measure_density_table
from .config import SearchError
from .report import pareto
from .strategies.jcw import JcwEncoding


class TableEstimator:
    """The run's table and what predicts with it."""

    def __init__(self, table: DensityTable, scale: float, base, seconds: float):
        self.table, self.scale, self.seconds = table, float(scale), float(seconds)
        self.dense_macs = layer_macs(base)

    def predict(self, pruned) -> float:
        """A realized candidate's estimated ms (PrunedModel: narrowed layers, masks)."""
        return self.scale * self.table.predict_model(pruned.model, pruned.masks,
                                                     self.dense_macs)


def open_table(search) -> TableEstimator:
    """The journal's table (a resumed run), else measured now on the device: the phase-1
    model at uniform widths × densities, each bundle timed per layer."""
    rec = next((r for r in search.journal.records() if r.get("type") == "latency_table"),
               None)
    if rec is not None:
        return TableEstimator(DensityTable.from_dict(rec["table"]), rec["scale"], search.base,
                              rec.get("seconds", 0.0))
    t0 = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="npas-table-"))
    enc = JcwEncoding(search.space, search.cfg.bounds())
    masked = sorted({search.space.layers[g.layer].name for g in enc.genes
                     if g.kind == "density"})
    n = 0

    def time_layers(label: str, model, schemes) -> dict[str, float]:
        nonlocal n
        n += 1
        search.ui.phase("phase 2", f"latency table: measuring {label} per layer ({n})")
        slug = "".join(c if c.isalnum() else "_" for c in label)
        r = search.oracle.measure(slug, model, schemes, tmp / slug, per_layer=True,
                                  keep_bundle=False)
        if not r.ok:
            raise SearchError(f"the latency table's {label} could not be measured: "
                              f"{'; '.join(r.errors)}")
        times: dict[str, float] = {}  # as timing.layer_times, from the oracle's records
        for la in r.layers:
            times[la["name"]] = times.get(la["name"], 0.0) + la["median_ms"]
        return times

    try:
        table = measure_density_table(search.base, time_layers,
                                      search.space.config.vector_width, masked)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    scale = search.dense_lat.median_ms / table.dense_ms
    seconds = time.perf_counter() - t0
    search.journal.append({"type": "latency_table", "table": table.to_dict(), "scale": scale,
                           "seconds": seconds, "bundles": n})
    search.ui.log(f"latency table: {n} bundles timed per layer in {seconds:.0f} s; dense "
                  f"{table.dense_ms:.4f} ms summed per layer, {search.dense_lat.median_ms:.4f} "
                  f"ms measured whole (scale {scale:.3f})")
    return TableEstimator(table, scale, search.base, seconds)


def estimated(r: dict) -> bool:
    """A done record whose latency is the table's estimate (not measured on the device)."""
    return r.get("latency_source") == "table" and not r.get("remeasured", False)


def remeasure(search, records: list[dict], pick: Callable[[list[dict], float], dict | None],
              targets: list[float], describe: Callable) -> dict:
    """Measure on the device, end to end, every front member and every candidate a target
    would pick, until each target's pick is measured (a measured latency can move a candidate
    over its target, and another one up); updates the records in place and journals each
    measurement (a resumed run reads them back); ``describe``: a candidate in words. Returns
    the table's error summary."""
    before = {r["id"]: r for r in search.journal.records() if r.get("type") == "remeasured"}
    by_id = {r["id"]: r for r in records if r["status"] == "done"}
    tried: set[int] = set()
    t0 = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="npas-remeasure-"))
    try:
        while True:
            live = [r for r in by_id.values() if not r.get("remeasure_error")]
            pts = [(r["latency_ms"], r["accuracy"]) for r in live]
            want = [live[i] for i in pareto(pts)]
            want += [p for p in (pick(live, t) for t in targets) if p is not None]
            todo = list({r["id"]: r for r in want
                         if estimated(r) and r["id"] not in tried}.values())
            if not todo:
                break
            for r in todo:
                tried.add(r["id"])
                rec = before.get(r["id"])
                if rec is None:
                    rec = _measure(search, r, tmp, describe)
                _apply(search, r, rec)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    errs = [(r["latency_ms"] - r["table_ms"]) / r["latency_ms"] for r in by_id.values()
            if r.get("remeasured")]
    return {"remeasured": len(errs), "seconds": time.perf_counter() - t0,
            "mean_abs_error": statistics.fmean(abs(e) for e in errs) if errs else None,
            "max_abs_error": max((abs(e) for e in errs), default=None),
            "mean_error": statistics.fmean(errs) if errs else None,
            "rows": [{"id": r["id"], "accuracy": r["accuracy"], "table_ms": r["table_ms"],
                      "measured_ms": r["latency_ms"]}
                     for r in sorted(by_id.values(), key=lambda r: r["table_ms"]
                                     if "table_ms" in r else r["latency_ms"])
                     if r.get("remeasured")]}


def _measure(search, r: dict, tmp: Path, describe) -> dict:
    from .space import Candidate

    c = Candidate.from_json(r["encoding"])
    search.ui.phase("phase 2", f"re-measuring front member {r['id']} on the device: "
                               f"{describe(c)}")
    pruned = search.space.realize(search.base, c)
    lat = search.oracle.measure(f"c{r['id']}", pruned.model, pruned.schemes,
                                tmp / f"c{r['id']}", keep_bundle=False)
    rec = {"type": "remeasured", "id": r["id"], "key": r["key"], "table_ms": r["latency_ms"]}
    if lat.ok:
        rec.update(latency_ms=lat.median_ms, latency=search.lat_rec(lat, samples=False))
    else:
        rec["error"] = "; ".join(lat.errors)
    search.journal.append(rec)
    return rec


def _apply(search, r: dict, rec: dict) -> None:
    if rec.get("error") is not None or rec.get("latency_ms") is None:
        r["remeasure_error"] = rec.get("error", "not measured")
        return
    ms = float(rec["latency_ms"])
    r.update(table_ms=float(rec["table_ms"]), latency_ms=ms, remeasured=True,
             meets_target=ms <= search.target_ms, reward=search.reward(r["accuracy"], ms))
    if rec.get("latency"):
        r["latency"] = rec["latency"]


def with_remeasured(records: list[dict], target_ms: float) -> list[dict]:
    """A journal's finished candidates with the device's re-measurements applied (what
    ``remeasure`` did to them in the run): latency measured, the table's kept as ``table_ms``,
    ``meets_target`` against ``target_ms``."""
    again = {r["id"]: r for r in records
             if r.get("type") == "remeasured" and r.get("latency_ms") is not None}
    out = []
    for r in records:
        if r.get("type") != "candidate" or r.get("status") not in ("done", "failed"):
            continue
        a = again.get(r["id"])
        if a is not None and r["status"] == "done":
            ms = float(a["latency_ms"])
            r = {**r, "table_ms": r["latency_ms"], "latency_ms": ms, "remeasured": True,
                 "meets_target": ms <= target_ms}
        out.append(r)
    return out
