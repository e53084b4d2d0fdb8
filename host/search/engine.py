"""The search engine: one run in one folder, from the checks to the report.

0. Checks before any work (``prepare``, then ``_start`` and ``_probe``): the model loads and is
   trainable, the dataset exists, the model (with phase 1's replacements) compiles, and the
   latency target is reachable — the dense model and the most pruned candidates are compiled
   and measured on the device first.
1-3. The phases (phases.py): operator replacement, the search loop, pruning the chosen
   candidate; then ``export`` compiles, measures and writes the final model with its plan,
   bundle and profile, and ``_finish`` the report.

Every phase leaves a journal record and a checkpoint, so ``resume=True`` skips what is done.
The engine owns the state the phases share (settings, journal, oracle, space, target, live
view) and the helpers they use to train, evaluate and checkpoint.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch
from rich.console import Console
from torch import nn

from ..devices import Device
from ..errors import UserError
from ..measure import MeasureConfig
from ..models import load_checkpoint
from ..models.train import TrainConfig, evaluate
from ..pruning import PruningError
from .config import SearchConfig, SearchError
from .estimates import estimated
from .executors import make_executor
from .executors.gate import FileGate
from .executors.loop import run_async
from .journal import VERSION, Journal
from .live import SearchUI
from .oracle import LatencyOracle, LatencyResult
from .oracle_pool import OraclePool
from .phases import best, choose, phase1, phase2, phase3, summary
from .precision import int8_spec, quantized_accuracy
from .prepare import Prepared, prepare
from .report import write_report
from .space import Candidate, SearchSpace
from .tasks import INFO, sr_final


class Search:
    """One search run in ``run_dir`` on ``device``; ``run()`` returns the summary."""

    def __init__(self, cfg: SearchConfig, run_dir: Path, device: Device | dict[str, Device], *,
                 resume: bool = False, ui: SearchUI | None = None,
                 prepared: Prepared | None = None,
                 oracle_hook: Callable[[str, int], None] | None = None,
                 worker_hook: Callable[[int, int], None] | None = None):
        # several devices (of one model) are a pool: oracle_pool.py
        self.devices = dict(device) if isinstance(device, dict) else {device.name: device}
        self.cfg, self.run_dir = cfg, Path(run_dir)
        self.device = device = next(iter(self.devices.values()))
        self.resume = resume
        self.ui = ui or SearchUI(_null_console(), quiet=True)
        # a runner on this machine's CPU: training pauses while it times (oracle.py)
        self.quiet = threading.Lock() if device.traits.shares_host_cpu else None
        self.executor = None  # executors/: None is this process, in rounds
        self.file_gate: FileGate | None = None
        self.worker_hook = worker_hook  # tests: called as hook(cid, attempt) in a Ray worker
        self.train_cfg = TrainConfig(lr=cfg.lr, batch_size=cfg.batch_size,
                                     device=cfg.train_device,
                                     optimizer=INFO[cfg.task].optimizer)
        self.oracle: LatencyOracle | None = None
        self.journal = Journal(self.run_dir)
        self.t0 = time.perf_counter()
        self.summary: dict = {}
        self.prep = prepared
        self.oracle_hook = oracle_hook  # tests: called as hook(tag, attempt) before a benchmark
        self.supernet = None  # phase 2's estimators (phases.py sets them when asked for)
        self.table = None

    # --- set-up and checks ---------------------------------------------------------------------
    def _start(self) -> None:
        cfg = self.cfg
        torch.set_num_threads(max(1, cfg.train_threads))
        self.ui.phase("checking", f"model {cfg.model}, dataset {cfg.dataset}")
        if self.prep is None:
            self.prep = prepare(cfg)
        self.ui.log(self.prep.data.describe())
        for n in self.prep.notes:
            self.ui.log(n)
        self.executor = make_executor(cfg, on_event=self.ui.log, hook=self.worker_hook)
        if self.executor is not None and self.quiet is not None:
            # the fine-tunes run in worker processes: the pause goes through a file lock
            self.file_gate = FileGate(Path(tempfile.gettempdir())
                                      / f"npas-gate-{os.getpid()}-{id(self):x}.lock")
            self.quiet = self.file_gate.timer()
        self.ui.phase("checking", f"starting the runner on {cfg.device}")
        measure = MeasureConfig(runs=cfg.runs, warmup=cfg.warmup, threads=cfg.threads,
                                pin_big_cores=self.device.traits.pin_big_cores)
        if len(self.devices) == 1:
            self.oracle = LatencyOracle(self.device, self.prep.example, measure,
                                        quiet=self.quiet, on_event=self.ui.log)
        else:
            self.oracle = OraclePool(self.devices, self.prep.example, measure,
                                     quiet=self.quiet, on_event=self.ui.log)
            self.ui.log(f"device pool: {', '.join(self.devices)} ({self.oracle.model})")
        self.oracle.before_benchmark = self.oracle_hook
        info = self.oracle.info
        self.device_desc = f"{info.abi}, {info.cpu_model}, runner {info.runner_version}"
        isa = self.oracle.toolchain.isa()  # channel widths stay multiples of its vectors
        vw = isa.floats if isa is not None else 4
        try:
            self.space = SearchSpace.build(self.prep.model, self.prep.example, cfg.ratios,
                                           cfg.schemes, cfg.filter_types, vector_width=vw,
                                           min_share=cfg.min_share)
        except PruningError as e:
            raise SearchError(str(e)) from None
        self.int8_lanes, self.calibration = 0, []
        if "int8" in cfg.precisions:
            self._offer_int8()
        if self.resume:
            self.oracle.load_cache(self.run_dir / "latency.jsonl")

    def _offer_int8(self) -> None:
        """--precisions with int8: the device's int8 toolchain (refused where it has none),
        the layers offered int8 (on the model as phase 1 will leave it), the calibration."""
        from codegen import CodegenError

        from .ops import replace_ops
        from .precision import calibration_images, offer_int8

        try:
            isa = self.oracle.int8_toolchain().isa()
        except (CodegenError, UserError) as e:
            raise SearchError(f"--precisions {','.join(self.cfg.precisions)}: {self.cfg.device} "
                              f"has no int8 kernels ({e}); search with --precisions fp32") from None
        self.int8_lanes = isa.floats
        fast, _ = replace_ops(self.prep.model_orig.cpu(), int8=True)
        why = offer_int8(self.space, fast, self.prep.example, self.int8_lanes)
        self.calibration = calibration_images(self.prep.data, self.prep.example)
        offered = [ls.name for ls in self.space.layers if ls.int8]
        self.ui.log(f"int8 offered for {', '.join(offered) or 'no layer'}"
                    + "".join(f"; {n} stays fp32: {w}" for n, w in why.items()))

    def _probe(self) -> None:
        """Dense latency and the latency floor (the most pruned candidates), before any
        training; refuse an unreachable target."""
        cfg = self.cfg
        tmp = Path(tempfile.mkdtemp(prefix="npas-probe-"))
        try:
            self.ui.phase("checking", "compiling and measuring the dense model")
            dense = self.oracle.measure("dense", self.prep.model, {}, tmp / "dense",
                                        keep_bundle=False)
            if not dense.ok:
                raise SearchError(f"the dense model does not run on {cfg.device}: "
                                  f"{'; '.join(dense.errors)}")
            self.dense_lat = dense
            self.extremes: list[tuple[Candidate, LatencyResult]] = []
            ext = self.space.extremes()
            if cfg.strategy == "jcw":  # its genes' floor, not the space's
                from .strategies.jcw import JcwEncoding

                ext = JcwEncoding(self.space, cfg.bounds()).floors()
            for i, c in enumerate(ext):
                self.ui.phase("checking", f"measuring the most pruned candidates ({i + 1}/"
                                          f"{len(ext)}): {summary(c)}")
                pruned = self.space.realize(self.prep.model, c)
                r = self.oracle.measure(f"floor{i}", pruned.model, pruned.schemes,
                                        tmp / f"floor{i}", keep_bundle=False,
                                        int8=int8_spec(self.space, c, pruned.model,
                                                       self.calibration))
                if r.ok:
                    self.extremes.append((c, r))
                else:
                    self.ui.log(f"most pruned candidate {i} failed: {'; '.join(r.errors)}")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        if not self.extremes:
            raise SearchError(f"none of the most pruned candidates runs on {cfg.device}")
        self.floor_cand, self.floor = min(self.extremes, key=lambda e: e[1].median_ms)
        header = self.journal.header() if self.resume else None
        if header is not None:
            self.target_ms = float(header["target_ms"])
        elif cfg.latency_ms is not None:
            self.target_ms = float(cfg.latency_ms)
        else:
            self.target_ms = dense.median_ms / cfg.speedup
        self.ui.target_ms = self.target_ms
        self.ui.temperature(dense.temperature_c)
        self.ui.log(f"dense {dense.median_ms:.3f} ms; most pruned {self.floor.median_ms:.3f} ms "
                    f"({summary(self.floor_cand)}); target {self.target_ms:.3f} ms")
        if self.floor.median_ms > self.target_ms and header is None:
            what = (f"--latency-ms {cfg.latency_ms:g}" if cfg.latency_ms is not None
                    else f"--speedup {cfg.speedup:g} (target {self.target_ms:.3f} ms)")
            raise SearchError(
                f"{what} is below what {cfg.device} can reach even at the highest rates: the "
                f"most pruned candidate ({summary(self.floor_cand)}) measures "
                f"{self.floor.median_ms:.3f} ms (dense {dense.median_ms:.3f} ms). Ask for at "
                f"least {self.floor.median_ms * 1.1:.3f} ms, or "
                + ("lower jcw's bounds (--jcw-bounds, now "
                   f"{','.join(f'{v:g}' for v in cfg.jcw_bounds)})" if cfg.strategy == "jcw"
                   else "allow higher rates (--rates)"))

    # --- the run ---------------------------------------------------------------------------------
    def run(self) -> dict:
        """Check, run the phases (continuing the journal's with ``resume``), export, report;
        returns the run's summary."""
        cfg = self.cfg
        if self.resume and self.journal.header() is None:
            raise SearchError(f"--resume {self.run_dir}: no journal there "
                              f"({self.journal.path} is missing or empty)")
        if not self.resume and self.journal.header() is not None:
            raise SearchError(f"{self.run_dir} already holds a search; continue it with "
                              f"--resume {self.run_dir}, or give another --out")
        try:
            self._start()
            self._probe()
        except BaseException:
            self.close()
            raise
        # the checks passed: from here on the run folder holds everything
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "checkpoints").mkdir(exist_ok=True)
        fresh = self.journal.header() is None
        if fresh:
            self.journal.append({"type": "run", "version": VERSION, "config": cfg.to_dict(),
                                 "target_ms": self.target_ms, "device_desc": self.device_desc,
                                 "space": self.space.to_dict()})
            self.journal.append({"type": "probe", "dense": self.lat_rec(self.dense_lat),
                                 "floor": [{"encoding": c.to_json(), "summary":
                                            summary(c), **self.lat_rec(r)}
                                           for c, r in self.extremes]})
        else:
            self.journal.append({"type": "resume"})
        self.oracle.persist(self.run_dir / "latency.jsonl")
        try:
            self.base, p1 = phase1(self)
            self.summary["phase1"] = p1
            records = phase2(self)
            searched = list(records)  # the budget's candidates, before any fallback
            per_target, finished = [], {}
            for t in cfg.targets:  # jcw with several targets: one model per target
                c = best(records, t) if cfg.skip_final else choose(self, records, t)
                if not cfg.skip_final and c["id"] not in finished:
                    finished[c["id"]] = phase3(self, c, t, f"{t:g}ms")
                # a candidate chosen for a looser target too is finished once
                p3t = finished.get(c["id"])
                if p3t is not None and p3t["target_ms"] != t:
                    p3t = {**p3t, "target_ms": t, "meets_target": p3t["final_ms"] <= t}
                per_target.append({"target_ms": t, "chosen": c, "phase3": p3t})
            if per_target:
                self.summary["targets"] = per_target
                chosen, p3 = per_target[0]["chosen"], per_target[0]["phase3"]
            else:
                chosen = best(records) if cfg.skip_final else choose(self, records)
                p3 = None if cfg.skip_final else phase3(self, chosen)
        finally:
            self.close()
        return self._finish(records, chosen, p3, searched)

    def run_async(self, strategy) -> list[dict]:
        """Phase 2 on the executor (executors/loop.py)."""
        return run_async(self, strategy)

    def close(self) -> None:
        """Stop the oracle (runner sessions, compile processes) and the executor."""
        try:
            if self.oracle is not None:
                self.oracle.close()
        finally:
            if self.executor is not None:
                self.executor.close()
            if self.file_gate is not None:
                self.file_gate.remove()
            if isinstance(self.oracle, OraclePool) and self.oracle.lost:
                self.summary["devices_lost"] = [{"device": n, "why": w}
                                                for n, w in self.oracle.lost]

    # --- what the phases use ---------------------------------------------------------------------
    def lat_rec(self, r: LatencyResult, samples: bool = True) -> dict:
        """A latency result as the journal keeps it."""
        d = r.to_record()
        d.pop("bundle_dir", None)
        if not samples:
            d.pop("samples_ns", None)
            d.pop("warmup_ns", None)
        return d

    def gate(self):
        """The lock training steps take (the runner is timing on this CPU), or none."""
        if self.file_gate is not None:
            return self.file_gate.trainer()
        return self.quiet if self.quiet is not None else contextlib.nullcontext()

    def accuracy(self, model: nn.Module) -> float:
        """Validation accuracy (on the training device, paused while the runner times)."""
        return evaluate(model, self.prep.data, self.cfg.train_device, gate=self.gate())

    def save(self, obj, name: str) -> str:
        """Checkpoint ``obj`` atomically; returns its path relative to the run folder."""
        path = self.run_dir / "checkpoints" / name
        tmp = path.with_suffix(".tmp")
        torch.save(obj, tmp)
        tmp.replace(path)
        return str(path.relative_to(self.run_dir))

    def load(self, rel: str):
        """A checkpoint ``save`` wrote (also one written before its classes moved)."""
        return load_checkpoint(self.run_dir / rel)


    # --- the final model -----------------------------------------------------------------------
    def export(self, cand, plan, pruned, picked, results, final_acc,
               target_ms: float | None = None, tag: str = "") -> dict:
        """Phase 3's result compiled, measured (per layer too) and written to ``final/``
        (``final/TAG/`` for one of several targets)."""
        cfg = self.cfg
        target = self.target_ms if target_ms is None else target_ms
        rel = f"final/{tag}" if tag else "final"
        out = self.run_dir / rel
        if out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True)
        self.ui.phase("phase 3", "compiling and measuring the final model on the device")
        model = pruned.model.cpu().eval()
        spec = int8_spec(self.space, cand, model, self.calibration)
        lat = self.oracle.measure("final", model, pruned.schemes, out / "bundle", int8=spec)
        if not lat.ok:
            raise SearchError(f"the final model could not be measured: {'; '.join(lat.errors)}")
        first_ms, remeasured = lat.median_ms, None
        if lat.median_ms > target:
            self.ui.log(f"final model {lat.median_ms:.3f} ms is over the target "
                        f"{target:.3f} ms; measuring once more (noise?)")
            again = self.oracle.measure("final", model, pruned.schemes, out / "bundle",
                                        use_cache=False, int8=spec)
            if again.ok:
                lat, remeasured = again, again.median_ms
        layers = self.oracle.measure("final-layers", model, pruned.schemes,
                                     out / "bundle-layers", per_layer=True, keep_bundle=False,
                                     int8=spec)
        precision = {}
        if spec is not None:  # the final accuracy is the quantized model's
            q_acc, ran = quantized_accuracy(model, self.prep.data, self.prep.example, spec,
                                            self.int8_lanes, pruned.schemes, self.gate())
            precision = {"final_acc_fp32": final_acc, "int8_layers": lat.int8_layers,
                         "int8_layers_reference": list(ran)}
            final_acc = q_acc
        dense_layers = self.oracle.measure("dense-layers", self.base, {},
                                           self.run_dir / "bundles" / "dense-layers",
                                           per_layer=True, keep_bundle=False)
        self.ui.temperature(lat.temperature_c)
        torch.save(model, out / "model.pt")
        torch.save(model.state_dict(), out / "state_dict.pt")
        torch.save(pruned.masks, out / "masks.pt")
        plan.save(out / "plan.json")
        structure = self.space.structure(cand)
        if structure is not None:  # a joint candidate: its channels are cut first
            structure.save(out / "structure.json")
        (out / "candidate.json").write_text(json.dumps({
            "filter_types": self.space.ftypes(cand), "encoding": cand.to_json(),
            "layers": [{"layer": ls.name, "choice": str(c), "precision": c.precision}
                       for ls, c in
                       zip(self.space.layers, cand.choices, strict=True)],
            "note": "apply the filter types (host.search.filters.apply_filter_types) to the "
                    "phase-1 model, then " + ("structure.json (the channels), then "
                                              if structure is not None else "")
                    + "plan.json; model.pt is the result"}, indent=1) + "\n")
        profile = {**self.lat_rec(lat), "per_layer": layers.layers if layers.ok else [],
                   "device": cfg.device, "device_desc": self.device_desc,
                   "target_ms": target}
        (out / "profile.json").write_text(json.dumps(profile, indent=1) + "\n")
        (out / "report.txt").write_text(str(pruned.report) + "\n")
        rec = {"algorithms": {k: v[0] for k, v in results.items()}, "picked": picked,
               "final_acc": final_acc, "final_ms": lat.median_ms, "p10_ms": lat.p10_ms,
               "p90_ms": lat.p90_ms, "first_ms": first_ms, "remeasured_ms": remeasured,
               "meets_target": lat.median_ms <= target, "target_ms": target,
               "final_epochs": cfg.final_epochs, **precision,
               "layers": layers.layers if layers.ok else [],
               "exported": {"PyTorch model": f"{rel}/model.pt",
                            "state dict": f"{rel}/state_dict.pt",
                            "pruning plan": f"{rel}/plan.json",
                            **({"channels cut first": f"{rel}/structure.json"}
                               if structure is not None else {}),
                            "filter types": f"{rel}/candidate.json",
                            "compiled bundle": f"{rel}/bundle/",
                            "profile": f"{rel}/profile.json"}}
        if cfg.task == "sr":  # PSNR and SSIM beside the bicubic baseline, the frame timed
            rec["sr"] = sr_final(model, self.prep.data, self.prep.baseline, cfg.frame)
            profile["sr"] = rec["sr"]
            (out / "profile.json").write_text(json.dumps(profile, indent=1) + "\n")
        self.summary["dense_layers"] = dense_layers.layers if dense_layers.ok else []
        self.journal.append({"type": "phase", "phase": f"phase3@{tag}" if tag else "phase3",
                             **{k: v for k, v in rec.items() if k != "layers"},
                             "latency": self.lat_rec(lat)})
        return rec

    # --- the end ---------------------------------------------------------------------------------
    def _finish(self, records: list[dict], chosen: dict, p3: dict | None,
                searched: list[dict]) -> dict:
        cfg = self.cfg
        cand = Candidate.from_json(chosen["encoding"])
        s = self.summary
        s.update({
            "run_dir": str(self.run_dir), "task": cfg.task, "model": cfg.model,
            "dataset": cfg.dataset, "baseline": self.prep.baseline,
            "input_shape": list(self.prep.example.shape),
            "device": cfg.device, "device_desc": self.device_desc, "strategy": cfg.strategy,
            "seed": cfg.seed, "target_ms": self.target_ms,
            "dense_ms": self.dense_lat.median_ms, "floor_ms": self.floor.median_ms,
            "runs": cfg.runs, "warmup": cfg.warmup, "beta": cfg.latency_weight,
            "finetune_epochs": cfg.finetune_epochs, "chosen": chosen,
            **({"precisions": list(cfg.precisions)} if "int8" in cfg.precisions else {}),
            "layers": [{"name": ls.name, "desc": ls.desc, "choice": str(c),
                        "scheme": c.scheme, "ratio": c.ratio, "precision": c.precision}
                       for ls, c in zip(self.space.layers, cand.choices, strict=True)],
            "phase3": p3, "wall_s": time.perf_counter() - self.t0,
            # over the budget's candidates only (not the fallback taken when none met it)
            "best_meeting_accuracy": max((r["accuracy"] for r in searched
                                          if r["status"] == "done" and r["meets_target"]
                                          and not estimated(r)), default=None),
            "evaluated": len(records),
            "failed": sum(1 for r in records if r["status"] == "failed"),
        })
        if self.oracle is not None and self.device.traits.timing_note:
            s["note"] = self.device.traits.timing_note
        report = write_report(self.run_dir, s, records)
        s["report"] = str(report)
        self.journal.append({"type": "final", "report": str(report),
                             "best_meeting_accuracy": s["best_meeting_accuracy"],
                             "chosen": chosen["id"], "wall_s": s["wall_s"],
                             "final_ms": (p3 or {}).get("final_ms"),
                             "final_acc": (p3 or {}).get("final_acc"),
                             **({"devices_lost": s["devices_lost"]}
                                if s.get("devices_lost") else {})})
        shutil.rmtree(self.run_dir / "bundles", ignore_errors=True)
        return s


def _null_console() -> Console:
    return Console(file=io.StringIO())
