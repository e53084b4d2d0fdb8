"""Phase 2 on an executor (Ray), asynchronously: ask for as many candidates as there are free
workers, tell each result the moment both its fine-tune and its measurement are in, ask again.

For every candidate the driver journals ``started`` (with the number of the ``ask`` call that
proposed it) before anything runs, realizes it, hands its model to the latency oracle (one
device or a pool) and its encoding to the executor. When both are back it journals ``done`` or
``failed`` (with the fine-tune's attempts: a worker lost mid-evaluation is a restart) and tells
the strategy. The journal's order is therefore the exact order of asks and tells, and
``--resume`` replays it (``schedule``): asked again in the same groups, told the same results in
the same order, so a seeded strategy proposes the same candidates; those that had started but
not finished are evaluated again, nothing finished is. Completion order depends on timing, so
two runs of a strategy that learns from results (npas, jcw) may differ; ``random`` and
``uniform`` propose the same candidates whatever they are told.
"""

from __future__ import annotations

import concurrent.futures
import copy
import time
from dataclasses import dataclass

from ...pruning import PruningError
from ..config import SearchError
from ..journal import Journal
from ..oracle import LatencyResult
from ..phases import MAX_CONSECUTIVE_FAILURES, RunState, _failed, finish, summary
from ..space import Candidate
from ..strategies.reward import Outcome
from .ray_cluster import Shared

POLL_S = 0.5  # how often the live view is refreshed while nothing finishes


def schedule(journal: Journal) -> tuple[list[tuple], dict[int, dict], dict[int, dict]]:
    """From the journal: the asks and tells in the order they happened (``("ask", ids)``,
    ``("tell", id)``), each candidate's first ``started`` record and its result record."""
    ops: list[tuple] = []
    started: dict[int, dict] = {}
    finished: dict[int, dict] = {}
    recs = [r for r in journal.records() if r.get("type") == "candidate"]
    asked = {int(r["id"]) for r in recs if r["status"] == "started" and "ask" in r}
    if recs and not asked:
        raise SearchError(f"{journal.path}: phase 2 was searched in rounds (--executor "
                          f"local); continue it with --executor local")
    for r in recs:
        cid = int(r["id"])
        if cid not in asked:  # not phase 2's (the fallback choose() evaluates after it)
            continue
        if r["status"] == "started" and cid not in started:
            started[cid] = r
            if ops and ops[-1][0] == "ask" and ops[-1][2] == r["ask"]:
                ops[-1][1].append(cid)
            else:
                ops.append(("ask", [cid], r["ask"]))
        elif r["status"] in ("done", "failed") and cid not in finished:
            finished[cid] = r
            ops.append(("tell", cid, None))
    return ops, started, finished


def _outcome(c: Candidate, rec: dict) -> Outcome:
    if rec["status"] == "done":
        return Outcome(c, rec["accuracy"], rec["latency_ms"], rec["reward"])
    return Outcome(c, None, None, None)


@dataclass
class _Flight:
    cand: Candidate
    report: object
    latency: concurrent.futures.Future
    ask: int
    result: dict | None = None


def run_async(search: RunState, strategy) -> list[dict]:
    """Phase 2's candidates (records in id order) evaluated on ``search.executor``."""
    cfg, ex, ui = search.cfg, search.executor, search.ui
    ex.start(Shared(base=search.base, data=search.prep.data, space=search.space, cfg=cfg,
                    train_cfg=search.train_cfg, gate=search.file_gate))
    ui.log(f"executor: {ex.desc}")
    ops, started, finished = schedule(search.journal)
    records: dict[int, dict] = {}
    cands: dict[int, Candidate] = {}
    diverged = False
    asks = 0
    for op in ops:  # replay a stopped run: the same asks and tells
        if op[0] == "ask":
            got = strategy.ask(len(op[1]))
            asks = max(asks, op[2])
            for i, cid in enumerate(op[1]):
                c = got[i] if i < len(got) else None
                if c is None or c.key() != started[cid]["key"]:
                    if not diverged:
                        ui.log(f"resume: the strategy's proposal for candidate {cid} differs "
                               f"from the journal's; continuing from the journal")
                    diverged = True
                    c = Candidate.from_json(started[cid]["encoding"])
                cands[cid] = c
        else:
            rec = finished[op[1]]
            records[op[1]] = rec
            strategy.tell([_outcome(cands[op[1]], rec)])
            ui.candidate({**rec, "summary": rec.get("summary", "")})
    flights: dict[int, _Flight] = {}
    state = {"consecutive": 0, "strategy_s": 0.0}  # the driver's time in ask and tell

    def tell(cid: int, c: Candidate, rec: dict) -> None:
        records[cid] = rec
        t0 = time.perf_counter()
        strategy.tell([_outcome(c, rec)])
        state["strategy_s"] += time.perf_counter() - t0
        if rec["status"] == "done":
            state["consecutive"] = 0
        elif rec.get("device_lost"):
            state["consecutive"] += 1
            if state["consecutive"] >= MAX_CONSECUTIVE_FAILURES:
                raise SearchError(
                    f"the device is lost: {state['consecutive']} candidates in a row could not "
                    f"be measured ({rec.get('error')}). Reconnect it and continue with "
                    f"--resume {search.run_dir}")
        ui.progress(len(records), cfg.budget)

    def launch(cid: int, c: Candidate, ask: int) -> None:
        try:
            pruned = search.space.realize(search.base, c)
        except PruningError as e:
            tell(cid, c, _failed(search, cid, c, f"pruning: {e}"))
            return
        fut = search.oracle.submit(f"c{cid}", copy.deepcopy(pruned.model), pruned.schemes,
                                   search.run_dir / "bundles" / f"c{cid}")
        ex.submit(cid, c)
        flights[cid] = _Flight(c, pruned.report, fut, ask)

    def start_record(cid: int, c: Candidate, ask: int, again: bool = False) -> None:
        search.journal.append({"type": "candidate", "id": cid, "status": "started",
                               "key": c.key(), "encoding": c.to_json(),
                               "strategy": cfg.strategy, "summary": summary(c), "ask": ask,
                               **({"again": True} if again else {})})

    again = [cid for cid in sorted(cands) if cid not in records]
    if again:
        ui.log(f"resume: {len(again)} candidate(s) had started but not finished: "
               f"{', '.join(f'c{i}' for i in again)}; evaluating them again")
    for cid in again:
        start_record(cid, cands[cid], started[cid]["ask"], again=True)
    for cid in again:
        launch(cid, cands[cid], started[cid]["ask"])
    next_id = max(started, default=-1) + 1
    ui.progress(len(records), cfg.budget)
    starved = False  # the strategy had nothing to propose until it hears more
    try:
        while True:
            free = ex.capacity - len(flights)
            if free > 0 and next_id < cfg.budget and not starved:
                t0 = time.perf_counter()
                got = strategy.ask(min(free, cfg.budget - next_id))
                state["strategy_s"] += time.perf_counter() - t0
                if got:
                    asks += 1
                    ids = list(range(next_id, next_id + len(got)))
                    next_id += len(got)
                    for cid, c in zip(ids, got, strict=True):
                        start_record(cid, c, asks)
                    for cid, c in zip(ids, got, strict=True):
                        launch(cid, c, asks)
                    continue
                starved = True
                if not flights:
                    ui.log(f"{cfg.strategy}: nothing left to propose after {next_id} "
                           f"candidates")
                    break
            if not flights:
                if next_id >= cfg.budget:
                    break
                continue
            _wait(ex, flights)
            for cid in sorted(flights):
                f = flights[cid]
                if f.result is None or not f.latency.done():
                    continue
                del flights[cid]
                tell(cid, f.cand, _record(search, cid, f))
                starved = False
            ui.detail = (f"{strategy.status()}; {len(flights)} in flight on "
                         f"{ex.capacity} workers")
    finally:
        for f in flights.values():
            f.latency.cancel()
    search.summary["phase2_strategy_s"] = state["strategy_s"]
    return [records[i] for i in sorted(records)]


def _wait(ex, flights: dict[int, _Flight]) -> None:
    """Until a fine-tune or a measurement finishes (or POLL_S)."""
    if ex.pending:
        for cid, res in ex.wait(POLL_S):
            if cid in flights:
                flights[cid].result = res
        return
    waiting = [f.latency for f in flights.values() if not f.latency.done()]
    if waiting:
        concurrent.futures.wait(waiting, timeout=POLL_S,
                                return_when=concurrent.futures.FIRST_COMPLETED)


def _record(search: RunState, cid: int, f: _Flight) -> dict:
    res = f.result or {}
    lat: LatencyResult = f.latency.result()
    extra = {"ask": f.ask, "worker": res.get("worker")}
    lost = res.get("lost") or []
    if lost:
        extra.update(eval_restarts=len(lost), lost_workers=lost)
        where = ", ".join(f"pid {w['pid']} on node {w['node']}" for w in lost)
        search.ui.log(f"c{cid}: its fine-tune lost its worker ({where}) and was retried; "
                      f"attempt {res.get('attempt')} finished on "
                      f"{(res.get('worker') or {}).get('pid')}")
    return finish(search, cid, f.cand, f.report, res.get("accuracy"), res.get("error"),
                  float(res.get("finetune_s", 0.0)), lat, **extra)
