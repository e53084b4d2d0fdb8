"""The three phases of a search, as functions over the running search's state: ``RunState``,
what a phase reads and writes (its settings, journal, oracle, space, live view, target, and
the helpers to train, evaluate and checkpoint); engine.py's ``Search`` implements it.

1. ``phase1``: train the model if it came with random weights, replace mobile-unfriendly
   operators, fine-tune briefly; accuracy before and after.
2. ``phase2``: the strategy proposes candidates in rounds; each is pruned one-shot and
   fine-tuned for its accuracy on the main thread while the latency oracle compiles and
   measures it on the device on its worker thread; the journal gets a record before and after
   each. ``choose`` (or ``best`` without phase 3) picks the candidate to finish.
3. ``phase3``: the chosen candidate is pruned again with gradual magnitude pruning and with
   ADMM (a short budget each), the better one trained longer; the engine exports it.

Each phase first looks in the journal for what a stopped run already did (``--resume``).
Phase 2 is replayed: the strategy (seeded) is asked again and told the journal's results for
the candidates that finished; only candidates without a result are evaluated.
"""

from __future__ import annotations

import copy
import statistics
import time
from dataclasses import asdict
from pathlib import Path
from typing import Protocol

import torch
from torch import nn

from ..models import load_checkpoint
from ..models.train import TrainConfig, recalibrate_bn, train
from ..pruning import PruningError
from ..pruning.algorithms import admm, gradual
from .config import AUTO_PRETRAIN_EPOCHS, SearchConfig, SearchError
from .estimates import estimated, open_table, remeasure
from .finetune import finetune
from .journal import Journal
from .live import SearchUI
from .ops import replace_ops
from .oracle import LatencyOracle, LatencyResult
from .precision import int8_spec, quantized_accuracy
from .prepare import Prepared
from .report import pareto
from .space import Candidate, SearchSpace
from .strategies import make_strategy
from .strategies.reward import Outcome, RewardConfig
from .supernet import SearchSupernet
from .tasks import fmt_metric, untrained

MAX_CONSECUTIVE_FAILURES = 3
TARGET_MARGIN = 0.03  # the chosen candidate keeps this much under the target if it can


class RunState(Protocol):
    """What the phases need from the running search (engine.Search). The engine sets
    everything up to ``floor_cand`` before phase 1; ``base`` is phase 1's model, ``reward``
    phase 2's reward function."""

    cfg: SearchConfig
    run_dir: Path
    journal: Journal
    ui: SearchUI
    prep: Prepared
    train_cfg: TrainConfig
    oracle: LatencyOracle
    space: SearchSpace
    target_ms: float
    dense_lat: LatencyResult
    extremes: list[tuple[Candidate, LatencyResult]]
    floor_cand: Candidate
    summary: dict
    base: nn.Module
    reward: RewardConfig
    executor: object | None  # None: in this process, in rounds (executors/__init__.py)
    t0: float  # when the run started (perf_counter): --time-budget counts from it
    # phase 2's estimators: the weight-sharing supernet (--evaluator supernet) and the
    # latency table (--latency table); None when not asked for (phase 2 sets them)
    supernet: SearchSupernet | None
    table: object | None  # estimates.TableEstimator
    file_gate: object | None  # executors/gate.py, when Ray workers share a runner's CPU
    # --precisions with int8 (engine._offer_int8): the int8 kernels' vector width, and the
    # calibration images every int8 candidate is compiled and scored with
    int8_lanes: int
    calibration: list

    def gate(self): ...
    def accuracy(self, model: nn.Module) -> float: ...
    def save(self, obj, name: str) -> str: ...
    def load(self, rel: str): ...
    def lat_rec(self, r: LatencyResult, samples: bool = True) -> dict: ...
    def export(self, cand, plan, pruned, picked, results, final_acc,
               target_ms: float | None = None, tag: str = "") -> dict: ...
    def run_async(self, strategy) -> list[dict]: ...


def summary(cand: Candidate) -> str:
    """A candidate in words, layer by layer (the journal's, the live view's, the report's)."""
    return ", ".join(str(c) for c in cand.choices)


# --- phase 1 ---------------------------------------------------------------------------------


def phase1(search: RunState) -> tuple[nn.Module, dict]:
    cfg, data = search.cfg, search.prep.data
    done = search.journal.phase("phase1")
    if done is not None:
        search.ui.phase("phase 1", "done before (resumed)")
        return search.load(done["checkpoint"]).eval(), done
    if cfg.phase1_checkpoint:
        search.ui.phase("phase 1", f"from {cfg.phase1_checkpoint}")
        base = load_checkpoint(cfg.phase1_checkpoint)
        acc = search.accuracy(base)
        rec = {"acc_before": acc, "acc_replaced": acc, "acc_after": acc, "epochs": 0,
               "replacements": [], "from": cfg.phase1_checkpoint,
               "checkpoint": search.save(base, "phase1.pt")}
        search.journal.append({"type": "phase", "phase": "phase1", **rec})
        return base.cpu().eval(), rec
    model = search.prep.model_orig
    pre = search.journal.phase("pretrain")
    pre_epochs = 0.0
    if pre is not None:
        model = search.load(pre["checkpoint"])
        pre_epochs = pre["epochs"]
    else:
        acc0 = search.accuracy(model)
        pre_epochs = cfg.pretrain_epochs if cfg.pretrain_epochs is not None else (
            AUTO_PRETRAIN_EPOCHS if untrained(cfg.task, acc0, data, search.prep.baseline)
            else 0.0)
        if pre_epochs > 0:
            search.ui.phase("phase 1", f"training the model first ({pre_epochs:g} epochs; "
                                       f"{fmt_metric(acc0, cfg.task)}: random weights)")
            train(model, data, pre_epochs, search.train_cfg, cfg.seed, gate=search.gate())
        acc_pre = search.accuracy(model)
        search.journal.append({"type": "phase", "phase": "pretrain", "epochs": pre_epochs,
                               "acc_initial": acc0, "accuracy": acc_pre,
                               "checkpoint": search.save(model.cpu(), "pretrained.pt")})
    acc_before = search.accuracy(model)
    fast, reps = replace_ops(model.cpu(), int8="int8" in cfg.precisions)
    acc_replaced = search.accuracy(fast)
    epochs = cfg.phase1_epochs if reps else 0.0
    search.ui.phase("phase 1", f"{len(reps)} operator(s) replaced; fine-tuning {epochs:g} "
                               f"epoch(s)")
    if epochs > 0:
        train(fast, data, epochs, search.train_cfg, cfg.seed + 1, gate=search.gate(),
              lr=cfg.finetune_lr)
    acc_after = search.accuracy(fast)
    rec = {"acc_before": acc_before, "acc_replaced": acc_replaced, "acc_after": acc_after,
           "epochs": epochs, "pretrain_epochs": pre_epochs,
           "replacements": [asdict(r) for r in reps],
           "checkpoint": search.save(fast.cpu(), "phase1.pt")}
    search.journal.append({"type": "phase", "phase": "phase1", **rec})
    f = fmt_metric
    search.ui.log(f"phase 1: {f(acc_before, cfg.task)} → {f(acc_replaced, cfg.task)} with the "
                  f"replacements → {f(acc_after, cfg.task)} after fine-tuning")
    return fast.cpu().eval(), rec


# --- phase 2 ---------------------------------------------------------------------------------
def phase2(search: RunState) -> list[dict]:
    cfg = search.cfg
    t0 = time.perf_counter()
    search.reward = RewardConfig(search.target_ms, cfg.latency_weight)
    strategy = make_strategy(cfg.strategy, search.space, cfg.seed, search.reward, cfg.samples,
                             targets=cfg.targets or (search.target_ms,),
                             population=cfg.population, bounds=cfg.bounds())
    acc_dense = search.summary["phase1"]["acc_after"]
    dense_c = search.space.dense()
    # the probes as the journal has them: a resumed run re-measures them, and a strategy
    # told other numbers than the first time would not replay the same proposals
    probe = next((r for r in search.journal.records() if r.get("type") == "probe"), None)
    if probe is not None:
        dense_ms = float(probe["dense"]["median_ms"])
        floors = [(Candidate.from_json(f["encoding"]), float(f["median_ms"]))
                  for f in probe["floor"]]
    else:
        dense_ms = search.dense_lat.median_ms
        floors = [(c, r.median_ms) for c, r in search.extremes]
    strategy.prior([Outcome(dense_c, acc_dense, dense_ms, search.reward(acc_dense, dense_ms))]
                   + [Outcome(c, None, ms, None) for c, ms in floors])
    if search.executor is not None:  # Ray: asynchronous, as many at once as workers
        records = search.run_async(strategy)
        search.summary["phase2"] = {"evaluated": len(records),
                                    "seconds": time.perf_counter() - t0,
                                    "strategy_status": strategy.status(),
                                    "strategy_s": search.summary.pop("phase2_strategy_s", None),
                                    "executor": search.executor.desc}
        return records
    search.supernet = SearchSupernet(search) if cfg.evaluator == "supernet" else None
    search.table = open_table(search) if cfg.latency == "table" else None
    finished = search.journal.finished_candidates()
    records: list[dict] = []
    next_id = evaluated = 0
    last_round, batches = None, 0
    # one device measurement (compile + time) of a pruned model, the probes' median: what
    # re-measuring a front member will take
    measure_s = statistics.median([r.compile_s + r.measure_s for _, r in search.extremes]
                                  or [search.dense_lat.compile_s + search.dense_lat.measure_s])
    diverged = False
    consecutive = 0
    strategy_s = 0.0  # the time spent in ask and tell
    search.ui.phase("phase 2", f"{cfg.strategy}, {cfg.budget} candidates, space of "
                               f"{search.space.size():.3g}")
    search.ui.progress(0, cfg.budget)
    while evaluated < cfg.budget:
        if _out_of_time(search, records, measure_s):
            search.ui.log(f"--time-budget {cfg.time_budget_s:g} s: stopping after {evaluated} "
                          f"candidates")
            break
        ts = time.perf_counter()
        cands = strategy.ask(min(cfg.batch, cfg.budget - evaluated))
        strategy_s += time.perf_counter() - ts
        if not cands:
            search.ui.log(f"{cfg.strategy}: nothing left to propose after {evaluated} "
                          f"candidates")
            break
        batches += 1
        if search.supernet is not None:  # each generation (jcw) or batch: a round
            key = getattr(strategy, "generations", None)
            key = batches if key is None else key
            if key != last_round:
                last_round = key
                offspring = getattr(strategy, "offspring", None)
                search.supernet.next_round(offspring() if offspring is not None else cands)
        batch: list[tuple[int, Candidate, dict | None]] = []
        for c in cands:
            rec = finished.get(next_id)
            if rec is not None and rec["key"] != c.key():
                if not diverged:
                    search.ui.log(f"resume: the strategy's proposal for candidate {next_id} "
                                  f"differs from the journal's; continuing from the journal")
                diverged = True
                c = Candidate.from_json(rec["encoding"])
            batch.append((next_id, c, rec))
            next_id += 1
        new = _evaluate(search, [(i, c) for i, c, rec in batch if rec is None])
        outcomes = []
        for i, c, rec in batch:
            rec = rec if rec is not None else new[i]
            records.append(rec)
            if rec["status"] == "done":
                outcomes.append(Outcome(c, rec["accuracy"], rec["latency_ms"],
                                        rec["reward"]))
                consecutive = 0
            else:
                outcomes.append(Outcome(c, None, None, None))
                consecutive += 1 if i in new else 0
                if rec.get("device_lost") and consecutive >= MAX_CONSECUTIVE_FAILURES:
                    raise SearchError(
                        f"the device is lost: {consecutive} candidates in a row could not "
                        f"be measured ({rec.get('error')}). Reconnect it and continue with "
                        f"--resume {search.run_dir}")
            if i in finished:
                search.ui.candidate({**rec, "summary": rec.get("summary", "")})
        ts = time.perf_counter()
        strategy.tell(outcomes)
        strategy_s += time.perf_counter() - ts
        evaluated += len(batch)
        search.ui.progress(evaluated, cfg.budget)
        search.ui.detail = strategy.status()
    if search.table is not None:
        search.ui.phase("phase 2", "re-measuring the front on the device")
        tab = remeasure(search, records, pick, list(cfg.targets or (search.target_ms,)),
                        summary)
        search.summary["latency_table"] = {**tab, "table_s": search.table.seconds,
                                           "scale": search.table.scale}
    search.summary["evaluator"] = _evaluator_cost(search, records)
    search.summary["phase2"] = {"evaluated": evaluated, "seconds": time.perf_counter() - t0,
                                "strategy_status": strategy.status(), "strategy_s": strategy_s}
    return records


def _out_of_time(search: RunState, records: list[dict], measure_s: float) -> bool:
    """--time-budget: the run has taken it, counting what re-measuring the current front on
    the device will take (--latency table); never before the first batch."""
    budget = search.cfg.time_budget_s
    if budget is None or not records:  # one batch at least
        return False
    reserve = 0.0
    if search.table is not None:
        done = [r for r in records if r["status"] == "done"]
        front = pareto([(r["latency_ms"], r["accuracy"]) for r in done])
        reserve = measure_s * sum(1 for i in front if estimated(done[i]))
    return time.perf_counter() - search.t0 + reserve >= budget


def _evaluator_cost(search: RunState, records: list[dict]) -> dict:
    """What phase 2's accuracy cost per candidate, in CPU-minutes (seconds of this process's
    training threads; the device's compiling and timing are apart)."""
    cfg = search.cfg
    done = [r for r in records if r["status"] == "done"]
    secs = sum(float(r.get("finetune_s", 0.0)) for r in done)
    out = {"evaluator": cfg.evaluator, "candidates": len(done), "accuracy_s": secs}
    if search.supernet is not None:
        out.update(search.supernet.cost(secs, len(done)))
    else:
        out["per_candidate_s"] = secs / max(1, len(done))
    out["cpu_minutes_per_candidate"] = out["per_candidate_s"] * cfg.train_threads / 60
    return out


def _evaluate(search: RunState, todo: list[tuple[int, Candidate]],
              measured: bool = False) -> dict[int, dict]:
    """Fine-tune (or score on the supernet) on this thread while the oracle compiles and
    measures on its own; with the latency table (unless ``measured``) estimate instead."""
    cfg = search.cfg
    net = getattr(search, "supernet", None)
    table = None if measured else getattr(search, "table", None)
    out: dict[int, dict] = {}
    pruned_models = {}
    specs = {}
    futures = {}
    for cid, c in todo:
        search.journal.append({"type": "candidate", "id": cid, "status": "started",
                               "key": c.key(), "encoding": c.to_json(),
                               "strategy": cfg.strategy, "summary": summary(c)})
    for cid, c in todo:
        try:
            pruned = search.space.realize(search.base, c)
        except PruningError as e:
            out[cid] = _failed(search, cid, c, f"pruning: {e}")
            continue
        pruned_models[cid] = pruned
        specs[cid] = int8_spec(search.space, c, pruned.model, getattr(search, "calibration", []))
        if table is None:
            futures[cid] = search.oracle.submit(f"c{cid}", copy.deepcopy(pruned.model),
                                                pruned.schemes,
                                                search.run_dir / "bundles" / f"c{cid}",
                                                int8=specs[cid])
    for cid, c in todo:
        if cid in out:
            continue
        pruned = pruned_models[cid]
        t0 = time.perf_counter()
        if net is not None:
            acc, err = net.score(c)
        else:
            acc, err = finetune(pruned, c, search.prep.data, cfg, search.train_cfg,
                                search.gate())
        extra = {"evaluator": cfg.evaluator} if net is not None else {}
        if specs[cid] is not None and err is None:  # scored on the quantized model
            extra["accuracy_fp32"] = acc
            acc, extra["int8_layers"] = quantized_accuracy(
                pruned.model, search.prep.data, search.prep.example, specs[cid],
                search.int8_lanes, pruned.schemes, search.gate())
            extra["int8_layers"] = list(extra["int8_layers"])
        ft_s = time.perf_counter() - t0
        if table is not None:
            lat = LatencyResult(ok=True, median_ms=table.predict(pruned))
            extra["latency_source"] = "table"
        else:
            lat = futures[cid].result()
        out[cid] = finish(search, cid, c, pruned.report, acc, err, ft_s, lat, **extra)
        del pruned_models[cid]
    return out


def finish(search: RunState, cid: int, c: Candidate, report, acc: float | None,
           err: str | None, ft_s: float, lat: LatencyResult, **extra) -> dict:
    """The candidate's done (or failed) record, journaled and shown; ``extra`` joins it."""
    search.ui.temperature(lat.temperature_c)
    if err is not None or not lat.ok:
        lost = not lat.ok and bool(lat.errors) and lat.attempts > 0
        return _failed(search, cid, c, err or "; ".join(lat.errors), lat, device_lost=lost,
                       **extra)
    s, e = search.space.mac_fractions(c)
    rec = {"type": "candidate", "id": cid, "status": "done", "key": c.key(),
           "encoding": c.to_json(), "summary": summary(c),
           "accuracy": acc, "latency_ms": lat.median_ms,
           "reward": search.reward(acc, lat.median_ms),
           "meets_target": lat.median_ms <= search.target_ms,
           "mac_fraction": [s, e],
           "weights_kept": report.weights_after / max(report.weights_before, 1),
           "finetune_s": ft_s, "latency": search.lat_rec(lat), **extra}
    search.journal.append(rec)
    search.ui.candidate(rec)
    return rec


def _failed(search: RunState, cid: int, c: Candidate, error: str, lat: LatencyResult | None = None,
            device_lost: bool = False, **extra) -> dict:
    rec = {"type": "candidate", "id": cid, "status": "failed", "key": c.key(),
           "encoding": c.to_json(), "summary": summary(c), "error": error,
           "device_lost": device_lost,
           "latency": search.lat_rec(lat) if lat is not None else None, **extra}
    search.journal.append(rec)
    search.ui.candidate(rec)
    return rec


def _to_device(search: RunState, pruned) -> None:
    dev = torch.device(search.cfg.train_device)
    pruned.model.to(dev)
    if dev.type != "cpu":
        pruned.masks = {k: v.to(dev) for k, v in pruned.masks.items()}


def best(records: list[dict], target_ms: float | None = None) -> dict:
    """Phase 2 only: the most accurate candidate meeting the target (``target_ms``, else the
    run's), else the best reward (nothing more is evaluated)."""
    done = [r for r in records if r["status"] == "done" and not estimated(r)]
    if not done:
        raise SearchError("every candidate failed; see the journal's errors")
    ok = [r for r in done if (r["meets_target"] if target_ms is None
                              else r["latency_ms"] <= target_ms)]
    if ok:
        return max(ok, key=lambda r: (r["accuracy"], -r["latency_ms"]))
    return max(done, key=lambda r: r["reward"])


def pick(records: list[dict], target: float) -> dict | None:
    """``choose``'s rule: the most accurate candidate meeting ``target``, one at least
    TARGET_MARGIN under it when there is one; latencies as the records have them (estimates
    too: what re-measuring follows); None if none meets it."""
    ok = [r for r in records if r["status"] == "done" and r["latency_ms"] <= target]
    safe = [r for r in ok if r["latency_ms"] <= target * (1 - TARGET_MARGIN)]
    if safe or ok:
        return max(safe or ok, key=lambda r: (r["accuracy"], -r["latency_ms"]))
    return None


def choose(search: RunState, records: list[dict], target_ms: float | None = None) -> dict:
    """The most accurate candidate meeting the target (``target_ms``, else the run's); one at
    least TARGET_MARGIN under it when there is one, so that measurement noise does not push
    the final model over. Only latencies measured on the device count (not the table's
    estimates)."""
    target = search.target_ms if target_ms is None else target_ms
    got = pick([r for r in records if not estimated(r)], target)
    if got is not None:
        return got
    # nothing met the target: the most pruned candidate does (it was measured)
    search.ui.log("no candidate met the target; taking the most pruned candidate")
    cid = 1 + max((r["id"] for r in records), default=-1)
    done = search.journal.finished_candidates().get(cid)
    if done is not None and done["status"] == "done":
        return done
    rec = _evaluate(search, [(cid, search.floor_cand)], measured=True)[cid]
    if rec["status"] != "done":
        raise SearchError(f"no candidate met the target and the most pruned one failed: "
                          f"{rec.get('error')}")
    records.append(rec)
    return rec


# --- phase 3 ---------------------------------------------------------------------------------
def phase3(search: RunState, chosen: dict, target_ms: float | None = None,
           tag: str = "") -> dict:
    """Prune ``chosen`` again (gradual, ADMM), train the better one, export it. With several
    targets (jcw) once per target: ``tag`` names its journal records, checkpoints and
    ``final/TAG/``."""
    cfg = search.cfg
    at = f"@{tag}" if tag else ""
    cand = Candidate.from_json(chosen["encoding"])
    plan = search.space.plan(cand)
    # the model with its filter types, and a joint candidate's channels already cut: the
    # algorithms below prune to ``plan`` from there
    start, _ = search.space.start(search.base, cand)
    results: dict[str, tuple[float, str]] = {}
    for algo, fn in (("gradual", gradual), ("admm", admm)):
        done = search.journal.phase(f"phase3-{algo}{at}")
        if done is not None:
            results[algo] = (done["accuracy"], done["checkpoint"])
            continue
        search.ui.phase("phase 3", f"{algo} pruning, {cfg.phase3_epochs:g} epoch(s)")
        m = copy.deepcopy(start)
        pruned = fn(m, plan, search.prep.data, cfg.phase3_epochs, search.train_cfg,
                    cfg.seed + 3, gate=search.gate(), lr=cfg.finetune_lr)
        acc = search.accuracy(pruned.model)
        ck = search.save(pruned, f"phase3-{algo}{at}.pt")
        search.journal.append({"type": "phase", "phase": f"phase3-{algo}{at}", "accuracy": acc,
                               "checkpoint": ck})
        search.ui.log(f"phase 3: {algo}: {fmt_metric(acc, cfg.task)}")
        results[algo] = (acc, ck)
    picked = max(results, key=lambda k: results[k][0])
    done = search.journal.phase(f"phase3-final{at}")
    if done is not None:
        pruned = search.load(done["checkpoint"])
        final_acc = done["accuracy"]
    else:
        pruned = search.load(results[picked][1])
        search.ui.phase("phase 3", f"training the {picked} result for {cfg.final_epochs:g} "
                                   f"epoch(s)")
        _to_device(search, pruned)
        train(pruned.model, search.prep.data, cfg.final_epochs, search.train_cfg, cfg.seed + 4,
              after_step=pruned.reapply, gate=search.gate(), lr=cfg.finetune_lr)
        recalibrate_bn(pruned.model, search.prep.data, cfg.train_device, gate=search.gate())
        final_acc = search.accuracy(pruned.model)
        pruned.model.cpu()
        pruned.masks = {k: v.cpu() for k, v in pruned.masks.items()}
        search.journal.append({"type": "phase", "phase": f"phase3-final{at}",
                               "accuracy": final_acc, "algorithm": picked,
                               "checkpoint": search.save(pruned, f"phase3-final{at}.pt")})
    return search.export(cand, plan, pruned, picked, results, final_acc, target_ms, tag)
