"""The search, phase by phase, in one run folder.

0. Checks before any work: the model loads and is trainable, the dataset exists, the model
   (with phase 1's replacements) compiles, and the latency target is reachable — the dense
   model and the most pruned candidates are compiled and measured on the device first.
1. Phase 1: train the model if it came with random weights, replace mobile-unfriendly
   operators, fine-tune briefly; accuracy before and after.
2. Phase 2: the strategy proposes candidates in rounds; each is pruned one-shot and fine-tuned
   for its accuracy on the main thread while the latency oracle compiles and measures it on the
   device on its worker thread; the journal gets a record before and after each.
3. Phase 3: the best candidate meeting the target is pruned again with gradual magnitude
   pruning and with ADMM (a short budget each), the better one trained longer, measured on the
   device and exported with its plan, bundle and profile; then the report.

Every phase leaves a journal record and a checkpoint, so ``resume=True`` skips what is done.
Phase 2 is replayed: the strategy (seeded) is asked again and told the journal's results for
the candidates that finished; only candidates without a result are evaluated.
"""

from __future__ import annotations

import contextlib
import copy
import json
import shutil
import tempfile
import threading
import time
import zlib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
from torch import nn

from ..data import Dataset, DataSpecError, check_dataset_spec, load_dataset
from ..models import ModelSpecError, load_model
from ..pruning import PruningError
from ..train import TrainConfig, evaluate, recalibrate_bn, train
from .algorithms import admm, gradual
from .journal import VERSION, Journal
from .latency import LatencyOracle, LatencyResult, MeasureConfig
from .live import SearchUI
from .ops import replace_ops
from .report import write_report
from .reward import Outcome, RewardConfig
from .space import (
    DEFAULT_RATIOS,
    FILTER_TYPES,
    MASK_SCHEMES,
    STRUCTURAL,
    Candidate,
    SearchSpace,
    apply_filter_types,
    ratio_str,
)
from .strategies import STRATEGIES, make_strategy

DEFAULT_MODEL = "host.search.zoo:digits_cnn"
AUTO_PRETRAIN_EPOCHS = 12.0
MAX_CONSECUTIVE_FAILURES = 3
TARGET_MARGIN = 0.03  # the chosen candidate keeps this much under the target if it can


class SearchError(Exception):
    """A search that cannot start or go on; the message says why and what to do."""


@dataclass
class SearchConfig:
    model: str = DEFAULT_MODEL
    weights: str | None = None
    dataset: str = "digits"
    image_size: int | None = None
    device: str = "local"
    latency_ms: float | None = None
    speedup: float | None = None  # target = dense latency / speedup (when no latency_ms)
    strategy: str = "npas"
    budget: int = 64
    batch: int = 4
    samples: int = 256
    ratios: tuple[float, ...] = DEFAULT_RATIOS
    schemes: tuple[str, ...] = MASK_SCHEMES + STRUCTURAL
    filter_types: tuple[str, ...] = FILTER_TYPES
    min_share: float = 0.005
    latency_weight: float = 2.0
    finetune_epochs: float = 1.0
    pretrain_epochs: float | None = None  # None: AUTO_PRETRAIN_EPOCHS if untrained, else 0
    phase1_epochs: float = 1.0
    phase3_epochs: float = 4.0
    final_epochs: float = 15.0
    lr: float = 0.05
    finetune_lr: float = 0.05
    batch_size: int = 64
    train_device: str = "cpu"
    train_threads: int = 1
    runs: int = 100
    warmup: int = 10
    threads: int = 1
    seed: int = 0
    skip_final: bool = False
    phase1_checkpoint: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> SearchConfig:
        known = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in known}
        for k in ("ratios", "schemes", "filter_types"):
            if k in kw:
                kw[k] = tuple(kw[k])
        return cls(**kw)

    def validate(self) -> None:
        if self.strategy not in STRATEGIES:
            raise SearchError(f"--strategy {self.strategy!r}: known are "
                              f"{', '.join(STRATEGIES)}")
        if self.latency_ms is not None and self.latency_ms <= 0:
            raise SearchError(f"--latency-ms {self.latency_ms}: must be > 0")
        if self.speedup is not None and self.speedup <= 0:
            raise SearchError(f"--speedup {self.speedup}: must be > 0")
        if self.latency_ms is None and self.speedup is None:
            raise SearchError("give the latency target: --latency-ms MS, or --speedup X "
                              "(target = the dense model's measured latency / X)")
        if min(self.budget, self.batch, self.samples, self.runs, self.warmup) < 1:
            raise SearchError("--budget, --batch, --samples, --runs and --warmup must be ≥ 1")
        if self.train_device not in ("cpu", "cuda") and not self.train_device.startswith(
                "cuda:"):
            raise SearchError(f"--train-device {self.train_device!r}: cpu or cuda")
        if self.train_device.startswith("cuda") and not torch.cuda.is_available():
            raise SearchError(f"--train-device {self.train_device}: this torch has no CUDA "
                              f"device (torch {torch.__version__})")
        if min(self.finetune_epochs, self.phase1_epochs, self.phase3_epochs,
               self.final_epochs) < 0:
            raise SearchError("epoch counts must be ≥ 0")


@dataclass
class Prepared:
    model_orig: nn.Module  # as loaded (head adapted to the dataset's classes)
    model: nn.Module  # phase 1's replacements applied
    replacements: list
    data: Dataset
    example: torch.Tensor
    notes: list[str] = field(default_factory=list)


def _load_model(cfg: SearchConfig) -> nn.Module:
    spec = cfg.model
    if spec.endswith(".pt2"):
        raise SearchError(f"model {spec}: a torch.export program cannot be fine-tuned; give a "
                          f"torchvision name, MODULE:FACTORY, or a .pt file saved with "
                          f"torch.save(model)")
    if spec.endswith((".pt", ".pth")):
        p = Path(spec)
        if not p.is_file():
            raise SearchError(f"model {spec}: no such file")
        try:
            m = torch.load(p, map_location="cpu", weights_only=False)
        except Exception as e:  # pickle raises many kinds; what matters is the file
            raise SearchError(f"model {spec}: cannot load it with torch.load ({e})") from e
        if isinstance(m, dict):
            raise SearchError(f"model {spec}: holds a state dict, not a model; give the "
                              f"architecture (MODULE:FACTORY or a torchvision name) and "
                              f"--weights {spec}")
        if not isinstance(m, nn.Module):
            raise SearchError(f"model {spec}: holds a {type(m).__name__}, not an nn.Module")
        return m.eval()
    torch.manual_seed(cfg.seed)  # random initialisation is part of the run's determinism
    try:
        m = load_model(spec)
    except ModelSpecError as e:
        raise SearchError(str(e)) from None
    if cfg.weights:
        try:
            sd = torch.load(cfg.weights, map_location="cpu", weights_only=True)
            if isinstance(sd, dict) and "state_dict" in sd:
                sd = sd["state_dict"]
            m.load_state_dict(sd)
        except (OSError, RuntimeError, KeyError, TypeError) as e:
            raise SearchError(f"--weights {cfg.weights}: cannot load into {spec} ({e})") from e
    return m.eval()


def _first_conv_in(model: nn.Module) -> int | None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            return m.in_channels
    return None


def _adapt_head(model: nn.Module, classes: int) -> str | None:
    """Give the last Linear ``classes`` outputs (a new layer) when it has another count."""
    last = None
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear):
            last = (name, m)
    if last is None or last[1].out_features == classes:
        return None
    name, m = last
    parent_path, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, attr, nn.Linear(m.in_features, classes, bias=m.bias is not None))
    return f"{name}: a new Linear {m.in_features}→{classes} for the dataset's classes " \
           f"(was →{m.out_features})"


def prepare(cfg: SearchConfig) -> Prepared:
    """Everything that can be checked without a device: model, data, operator support."""
    from codegen import CodegenError
    from codegen.capture import capture

    cfg.validate()
    try:
        check_dataset_spec(cfg.dataset)
    except DataSpecError as e:
        raise SearchError(str(e)) from None
    model = _load_model(cfg)
    try:
        data = load_dataset(cfg.dataset, cfg.image_size, _first_conv_in(model))
    except DataSpecError as e:
        raise SearchError(str(e)) from None
    notes = []
    note = _adapt_head(model, data.num_classes)
    if note:
        notes.append(note)
    fast, reps = replace_ops(model)
    example = torch.randn((1, *data.input_shape), generator=torch.Generator().manual_seed(0))
    try:
        capture(fast, (example,))
    except CodegenError as e:
        done = ", ".join(f"{r.old}→{r.new}" for r in reps) or "nothing"
        raise SearchError(f"model {cfg.model}: the code generator cannot compile it even after "
                          f"phase 1's replacements ({done}): {e}") from None
    except RuntimeError as e:
        raise SearchError(f"model {cfg.model} does not run on {tuple(example.shape)} inputs "
                          f"from {cfg.dataset}: {e}") from None
    return Prepared(model, fast, reps, data, example, notes)


def _seed_for(key: str) -> int:
    """The fine-tuning seed of a candidate: from its encoding only, so a candidate scores the
    same whichever strategy or run seed proposes it (comparisons see less noise)."""
    return zlib.crc32(key.encode()) & 0x7FFFFFFF


def _summary(space: SearchSpace, cand: Candidate) -> str:
    return ", ".join(str(c) for c in cand.choices)


class Search:
    def __init__(self, cfg: SearchConfig, run_dir: Path, device, *, resume: bool = False,
                 ui: SearchUI | None = None, shares_cpu: bool = True, toolchain=None,
                 prepared: Prepared | None = None, oracle_hook=None):
        self.cfg, self.run_dir, self.device = cfg, Path(run_dir), device
        self.resume = resume
        self.ui = ui or SearchUI(_null_console(), quiet=True)
        self.shares_cpu = shares_cpu
        self.toolchain = toolchain
        self.quiet = threading.Lock() if shares_cpu else None
        self.train_cfg = TrainConfig(lr=cfg.lr, batch_size=cfg.batch_size,
                                     device=cfg.train_device)
        self.oracle: LatencyOracle | None = None
        self.journal = Journal(self.run_dir)
        self.t0 = time.perf_counter()
        self.summary: dict = {}
        self.prep = prepared
        self.oracle_hook = oracle_hook  # tests: called as hook(tag, attempt) before a benchmark

    # --- set-up and checks ---------------------------------------------------------------------
    def _start(self) -> None:
        from ..cli import _toolchain

        cfg = self.cfg
        torch.set_num_threads(max(1, cfg.train_threads))
        self.ui.phase("checking", f"model {cfg.model}, dataset {cfg.dataset}")
        if self.prep is None:
            self.prep = prepare(cfg)
        self.ui.log(self.prep.data.describe())
        for n in self.prep.notes:
            self.ui.log(n)
        self.ui.phase("checking", f"starting the runner on {cfg.device}")
        self.oracle = LatencyOracle(
            self.device, None, self.prep.example,
            MeasureConfig(runs=cfg.runs, warmup=cfg.warmup, threads=cfg.threads,
                          pin_big_cores=getattr(self.device, "pin_big_cores", False),
                          call_timeout_s=getattr(self.device, "call_timeout_s", 60.0)),
            quiet=self.quiet, on_event=self.ui.log)
        self.oracle.before_benchmark = self.oracle_hook
        info = self.oracle.info
        self.device_desc = f"{info.abi}, {info.cpu_model}, runner {info.runner_version}"
        if self.toolchain is None:
            from types import SimpleNamespace

            self.toolchain = _toolchain(SimpleNamespace(backend="cpu", precision="fp32"), info)
        self.oracle.toolchain = self.toolchain
        isa = getattr(self.toolchain, "isa", None)
        vw = isa().floats if callable(isa) else 4
        try:
            self.space = SearchSpace.build(self.prep.model, self.prep.example, cfg.ratios,
                                           cfg.schemes, cfg.filter_types, vector_width=vw,
                                           min_share=cfg.min_share)
        except PruningError as e:
            raise SearchError(str(e)) from None
        if self.resume:
            self.oracle.load_cache(self.run_dir / "latency.jsonl")

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
            for i, c in enumerate(ext):
                self.ui.phase("checking", f"measuring the most pruned candidates ({i + 1}/"
                                          f"{len(ext)}): {_summary(self.space, c)}")
                pruned = self.space.realize(self.prep.model, c)
                r = self.oracle.measure(f"floor{i}", pruned.model, pruned.schemes,
                                        tmp / f"floor{i}", keep_bundle=False)
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
                    f"({_summary(self.space, self.floor_cand)}); target {self.target_ms:.3f} ms")
        if self.floor.median_ms > self.target_ms and header is None:
            what = (f"--latency-ms {cfg.latency_ms:g}" if cfg.latency_ms is not None
                    else f"--speedup {cfg.speedup:g} (target {self.target_ms:.3f} ms)")
            raise SearchError(
                f"{what} is below what {cfg.device} can reach even at the highest rates: the "
                f"most pruned candidate ({_summary(self.space, self.floor_cand)}) measures "
                f"{self.floor.median_ms:.3f} ms (dense {dense.median_ms:.3f} ms). Ask for at "
                f"least {self.floor.median_ms * 1.1:.3f} ms, or allow higher rates (--rates)")

    # --- the run ---------------------------------------------------------------------------------
    def run(self) -> dict:
        cfg = self.cfg
        if self.resume and self.journal.header() is None:
            raise SearchError(f"--resume {self.run_dir}: no journal there "
                              f"({self.journal.path} is missing or empty)")
        if not self.resume and self.journal.header() is not None:
            raise SearchError(f"{self.run_dir} already holds a search; continue it with "
                              f"--resume {self.run_dir}, or give another --out")
        self._start()
        self._probe()
        # the checks passed: from here on the run folder holds everything
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "checkpoints").mkdir(exist_ok=True)
        fresh = self.journal.header() is None
        if fresh:
            self.journal.append({"type": "run", "version": VERSION, "config": cfg.to_dict(),
                                 "target_ms": self.target_ms, "device_desc": self.device_desc,
                                 "space": self.space.to_dict()})
            self.journal.append({"type": "probe", "dense": self._lat_rec(self.dense_lat),
                                 "floor": [{"encoding": c.to_json(), "summary":
                                            _summary(self.space, c), **self._lat_rec(r)}
                                           for c, r in self.extremes]})
        else:
            self.journal.append({"type": "resume"})
        self.oracle.persist(self.run_dir / "latency.jsonl")
        try:
            self.base, p1 = self._phase1()
            self.summary["phase1"] = p1
            records = self._phase2()
            searched = list(records)  # the budget's candidates, before any fallback
            chosen = self._best(records) if cfg.skip_final else self._choose(records)
            p3 = None if cfg.skip_final else self._phase3(chosen)
        finally:
            self.oracle.close()
        return self._finish(records, chosen, p3, searched)

    def _lat_rec(self, r: LatencyResult, samples: bool = True) -> dict:
        d = r.to_record()
        d.pop("bundle_dir", None)
        if not samples:
            d.pop("samples_ns", None)
            d.pop("warmup_ns", None)
        return d

    def _gate(self):
        return self.quiet if self.quiet is not None else contextlib.nullcontext()

    def _eval(self, model: nn.Module) -> float:
        return evaluate(model, self.prep.data, self.cfg.train_device, gate=self._gate())

    def _save(self, obj, name: str) -> str:
        path = self.run_dir / "checkpoints" / name
        tmp = path.with_suffix(".tmp")
        torch.save(obj, tmp)
        tmp.replace(path)
        return str(path.relative_to(self.run_dir))

    def _load(self, rel: str):
        return torch.load(self.run_dir / rel, map_location="cpu", weights_only=False)

    # --- phase 1 ---------------------------------------------------------------------------------
    def _phase1(self) -> tuple[nn.Module, dict]:
        cfg, data = self.cfg, self.prep.data
        done = self.journal.phase("phase1")
        if done is not None:
            self.ui.phase("phase 1", "done before (resumed)")
            return self._load(done["checkpoint"]).eval(), done
        if cfg.phase1_checkpoint:
            self.ui.phase("phase 1", f"from {cfg.phase1_checkpoint}")
            base = torch.load(cfg.phase1_checkpoint, map_location="cpu", weights_only=False)
            acc = self._eval(base)
            rec = {"acc_before": acc, "acc_replaced": acc, "acc_after": acc, "epochs": 0,
                   "replacements": [], "from": cfg.phase1_checkpoint,
                   "checkpoint": self._save(base, "phase1.pt")}
            self.journal.append({"type": "phase", "phase": "phase1", **rec})
            return base.cpu().eval(), rec
        model = self.prep.model_orig
        pre = self.journal.phase("pretrain")
        pre_epochs = 0.0
        if pre is not None:
            model = self._load(pre["checkpoint"])
            pre_epochs = pre["epochs"]
        else:
            acc0 = self._eval(model)
            pre_epochs = cfg.pretrain_epochs if cfg.pretrain_epochs is not None else (
                AUTO_PRETRAIN_EPOCHS if acc0 < 2.0 / data.num_classes else 0.0)
            if pre_epochs > 0:
                self.ui.phase("phase 1", f"training the model first ({pre_epochs:g} epochs; "
                                         f"accuracy {acc0:.2%}: random weights)")
                train(model, data, pre_epochs, self.train_cfg, cfg.seed, gate=self._gate())
            acc_pre = self._eval(model)
            self.journal.append({"type": "phase", "phase": "pretrain", "epochs": pre_epochs,
                                 "acc_initial": acc0, "accuracy": acc_pre,
                                 "checkpoint": self._save(model.cpu(), "pretrained.pt")})
        acc_before = self._eval(model)
        fast, reps = replace_ops(model.cpu())
        acc_replaced = self._eval(fast)
        epochs = cfg.phase1_epochs if reps else 0.0
        self.ui.phase("phase 1", f"{len(reps)} operator(s) replaced; fine-tuning {epochs:g} "
                                 f"epoch(s)")
        if epochs > 0:
            train(fast, data, epochs, self.train_cfg, cfg.seed + 1, gate=self._gate(),
                  lr=cfg.finetune_lr)
        acc_after = self._eval(fast)
        rec = {"acc_before": acc_before, "acc_replaced": acc_replaced, "acc_after": acc_after,
               "epochs": epochs, "pretrain_epochs": pre_epochs,
               "replacements": [asdict(r) for r in reps],
               "checkpoint": self._save(fast.cpu(), "phase1.pt")}
        self.journal.append({"type": "phase", "phase": "phase1", **rec})
        self.ui.log(f"phase 1: accuracy {acc_before:.2%} → {acc_replaced:.2%} with the "
                    f"replacements → {acc_after:.2%} after fine-tuning")
        return fast.cpu().eval(), rec

    # --- phase 2 ---------------------------------------------------------------------------------
    def _phase2(self) -> list[dict]:
        cfg = self.cfg
        t0 = time.perf_counter()
        self.reward = RewardConfig(self.target_ms, cfg.latency_weight)
        strategy = make_strategy(cfg.strategy, self.space, cfg.seed, self.reward, cfg.samples)
        acc_dense = self.summary["phase1"]["acc_after"]
        dense_c = self.space.dense()
        strategy.prior([Outcome(dense_c, acc_dense, self.dense_lat.median_ms,
                                self.reward(acc_dense, self.dense_lat.median_ms))]
                       + [Outcome(c, None, r.median_ms, None) for c, r in self.extremes])
        finished = self.journal.finished_candidates()
        records: list[dict] = []
        next_id = evaluated = 0
        diverged = False
        consecutive = 0
        self.ui.phase("phase 2", f"{cfg.strategy}, {cfg.budget} candidates, space of "
                                 f"{self.space.size():.3g}")
        self.ui.progress(0, cfg.budget)
        while evaluated < cfg.budget:
            cands = strategy.ask(min(cfg.batch, cfg.budget - evaluated))
            if not cands:
                self.ui.log(f"{cfg.strategy}: nothing left to propose after {evaluated} "
                            f"candidates")
                break
            batch: list[tuple[int, Candidate, dict | None]] = []
            for c in cands:
                rec = finished.get(next_id)
                if rec is not None and rec["key"] != c.key():
                    if not diverged:
                        self.ui.log(f"resume: the strategy's proposal for candidate {next_id} "
                                    f"differs from the journal's; continuing from the journal")
                    diverged = True
                    c = Candidate.from_json(rec["encoding"])
                batch.append((next_id, c, rec))
                next_id += 1
            new = self._evaluate([(i, c) for i, c, rec in batch if rec is None])
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
                            f"--resume {self.run_dir}")
                if i in finished:
                    self.ui.candidate({**rec, "summary": rec.get("summary", "")})
            strategy.tell(outcomes)
            evaluated += len(batch)
            self.ui.progress(evaluated, cfg.budget)
            self.ui.detail = strategy.status()
        self.summary["phase2"] = {"evaluated": evaluated, "seconds": time.perf_counter() - t0,
                                  "strategy_status": strategy.status()}
        return records

    def _evaluate(self, todo: list[tuple[int, Candidate]]) -> dict[int, dict]:
        """Fine-tune on this thread while the oracle compiles and measures on its own."""
        cfg = self.cfg
        out: dict[int, dict] = {}
        pruned_models = {}
        futures = {}
        for cid, c in todo:
            self.journal.append({"type": "candidate", "id": cid, "status": "started",
                                 "key": c.key(), "encoding": c.to_json(),
                                 "strategy": cfg.strategy, "summary": _summary(self.space, c)})
        for cid, c in todo:
            try:
                pruned = self.space.realize(self.base, c)
            except PruningError as e:
                out[cid] = self._failed(cid, c, f"pruning: {e}")
                continue
            pruned_models[cid] = pruned
            futures[cid] = self.oracle.submit(f"c{cid}", copy.deepcopy(pruned.model),
                                              pruned.schemes,
                                              self.run_dir / "bundles" / f"c{cid}")
        for cid, c in todo:
            if cid in out:
                continue
            pruned = pruned_models[cid]
            t0 = time.perf_counter()
            err = None
            try:
                self._to_device(pruned)
                train(pruned.model, self.prep.data, cfg.finetune_epochs, self.train_cfg,
                      _seed_for(c.key()), after_step=pruned.reapply,
                      gate=self._gate(), lr=cfg.finetune_lr)
                recalibrate_bn(pruned.model, self.prep.data, cfg.train_device,
                               gate=self._gate())
                acc = self._eval(pruned.model)
            except RuntimeError as e:
                err, acc = f"fine-tune: {e}", None
            ft_s = time.perf_counter() - t0
            lat: LatencyResult = futures[cid].result()
            self.ui.temperature(lat.temperature_c)
            if err is not None or not lat.ok:
                lost = not lat.ok and bool(lat.errors) and lat.attempts > 0
                out[cid] = self._failed(cid, c, err or "; ".join(lat.errors), lat,
                                        device_lost=lost)
                continue
            s, e = self.space.mac_fractions(c)
            r = pruned.report
            rec = {"type": "candidate", "id": cid, "status": "done", "key": c.key(),
                   "encoding": c.to_json(), "summary": _summary(self.space, c),
                   "accuracy": acc, "latency_ms": lat.median_ms,
                   "reward": self.reward(acc, lat.median_ms),
                   "meets_target": lat.median_ms <= self.target_ms,
                   "mac_fraction": [s, e],
                   "weights_kept": r.weights_after / max(r.weights_before, 1),
                   "finetune_s": ft_s, "latency": self._lat_rec(lat)}
            self.journal.append(rec)
            self.ui.candidate(rec)
            out[cid] = rec
            del pruned_models[cid]
        return out

    def _failed(self, cid: int, c: Candidate, error: str, lat: LatencyResult | None = None,
                device_lost: bool = False) -> dict:
        rec = {"type": "candidate", "id": cid, "status": "failed", "key": c.key(),
               "encoding": c.to_json(), "summary": _summary(self.space, c), "error": error,
               "device_lost": device_lost,
               "latency": self._lat_rec(lat) if lat is not None else None}
        self.journal.append(rec)
        self.ui.candidate(rec)
        return rec

    def _to_device(self, pruned) -> None:
        dev = torch.device(self.cfg.train_device)
        pruned.model.to(dev)
        if dev.type != "cpu":
            pruned.masks = {k: v.to(dev) for k, v in pruned.masks.items()}

    def _best(self, records: list[dict]) -> dict:
        """Phase 2 only: the most accurate candidate meeting the target, else the best
        reward (nothing more is evaluated)."""
        done = [r for r in records if r["status"] == "done"]
        if not done:
            raise SearchError("every candidate failed; see the journal's errors")
        ok = [r for r in done if r["meets_target"]]
        if ok:
            return max(ok, key=lambda r: (r["accuracy"], -r["latency_ms"]))
        return max(done, key=lambda r: r["reward"])

    def _choose(self, records: list[dict]) -> dict:
        """The most accurate candidate meeting the target; one at least TARGET_MARGIN under it
        when there is one, so that measurement noise does not push the final model over."""
        ok = [r for r in records if r["status"] == "done" and r["meets_target"]]
        safe = [r for r in ok if r["latency_ms"] <= self.target_ms * (1 - TARGET_MARGIN)]
        if safe or ok:
            return max(safe or ok, key=lambda r: (r["accuracy"], -r["latency_ms"]))
        # nothing met the target: the most pruned candidate does (it was measured)
        self.ui.log("no candidate met the target; taking the most pruned candidate")
        cid = 1 + max((r["id"] for r in records), default=-1)
        done = self.journal.finished_candidates().get(cid)
        if done is not None and done["status"] == "done":
            return done
        rec = self._evaluate([(cid, self.floor_cand)])[cid]
        if rec["status"] != "done":
            raise SearchError(f"no candidate met the target and the most pruned one failed: "
                              f"{rec.get('error')}")
        records.append(rec)
        return rec

    # --- phase 3 ---------------------------------------------------------------------------------
    def _phase3(self, chosen: dict) -> dict:
        cfg = self.cfg
        cand = Candidate.from_json(chosen["encoding"])
        plan = self.space.plan(cand)
        start = apply_filter_types(self.base, self.space.ftypes(cand))
        results: dict[str, tuple[float, str]] = {}
        for algo, fn in (("gradual", gradual), ("admm", admm)):
            done = self.journal.phase(f"phase3-{algo}")
            if done is not None:
                results[algo] = (done["accuracy"], done["checkpoint"])
                continue
            self.ui.phase("phase 3", f"{algo} pruning, {cfg.phase3_epochs:g} epoch(s)")
            m = copy.deepcopy(start)
            pruned = fn(m, plan, self.prep.data, cfg.phase3_epochs, self.train_cfg,
                        cfg.seed + 3, gate=self._gate(), lr=cfg.finetune_lr)
            acc = self._eval(pruned.model)
            ck = self._save(pruned, f"phase3-{algo}.pt")
            self.journal.append({"type": "phase", "phase": f"phase3-{algo}", "accuracy": acc,
                                 "checkpoint": ck})
            self.ui.log(f"phase 3: {algo}: accuracy {acc:.2%}")
            results[algo] = (acc, ck)
        picked = max(results, key=lambda k: results[k][0])
        done = self.journal.phase("phase3-final")
        if done is not None:
            pruned = self._load(done["checkpoint"])
            final_acc = done["accuracy"]
        else:
            pruned = self._load(results[picked][1])
            self.ui.phase("phase 3", f"training the {picked} result for {cfg.final_epochs:g} "
                                     f"epoch(s)")
            self._to_device(pruned)
            train(pruned.model, self.prep.data, cfg.final_epochs, self.train_cfg, cfg.seed + 4,
                  after_step=pruned.reapply, gate=self._gate(), lr=cfg.finetune_lr)
            recalibrate_bn(pruned.model, self.prep.data, cfg.train_device, gate=self._gate())
            final_acc = self._eval(pruned.model)
            pruned.model.cpu()
            pruned.masks = {k: v.cpu() for k, v in pruned.masks.items()}
            self.journal.append({"type": "phase", "phase": "phase3-final", "accuracy": final_acc,
                                 "algorithm": picked,
                                 "checkpoint": self._save(pruned, "phase3-final.pt")})
        return self._export(cand, plan, pruned, picked, results, final_acc)

    def _export(self, cand, plan, pruned, picked, results, final_acc) -> dict:
        cfg = self.cfg
        out = self.run_dir / "final"
        if out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True)
        self.ui.phase("phase 3", "compiling and measuring the final model on the device")
        model = pruned.model.cpu().eval()
        lat = self.oracle.measure("final", model, pruned.schemes, out / "bundle")
        if not lat.ok:
            raise SearchError(f"the final model could not be measured: {'; '.join(lat.errors)}")
        first_ms, remeasured = lat.median_ms, None
        if lat.median_ms > self.target_ms:
            self.ui.log(f"final model {lat.median_ms:.3f} ms is over the target "
                        f"{self.target_ms:.3f} ms; measuring once more (noise?)")
            again = self.oracle.measure("final", model, pruned.schemes, out / "bundle",
                                        use_cache=False)
            if again.ok:
                lat, remeasured = again, again.median_ms
        layers = self.oracle.measure("final-layers", model, pruned.schemes,
                                     out / "bundle-layers", per_layer=True, keep_bundle=False)
        dense_layers = self.oracle.measure("dense-layers", self.base, {},
                                           self.run_dir / "bundles" / "dense-layers",
                                           per_layer=True, keep_bundle=False)
        self.ui.temperature(lat.temperature_c)
        torch.save(model, out / "model.pt")
        torch.save(model.state_dict(), out / "state_dict.pt")
        torch.save(pruned.masks, out / "masks.pt")
        plan.save(out / "plan.json")
        (out / "candidate.json").write_text(json.dumps({
            "filter_types": self.space.ftypes(cand), "encoding": cand.to_json(),
            "layers": [{"layer": ls.name, "choice": str(c)} for ls, c in
                       zip(self.space.layers, cand.choices, strict=True)],
            "note": "apply the filter types (host.search.space.apply_filter_types) to the "
                    "phase-1 model, then plan.json; model.pt is the result"}, indent=1) + "\n")
        profile = {**self._lat_rec(lat), "per_layer": layers.layers if layers.ok else [],
                   "device": cfg.device, "device_desc": self.device_desc,
                   "target_ms": self.target_ms}
        (out / "profile.json").write_text(json.dumps(profile, indent=1) + "\n")
        (out / "report.txt").write_text(str(pruned.report) + "\n")
        rec = {"algorithms": {k: v[0] for k, v in results.items()}, "picked": picked,
               "final_acc": final_acc, "final_ms": lat.median_ms, "p10_ms": lat.p10_ms,
               "p90_ms": lat.p90_ms, "first_ms": first_ms, "remeasured_ms": remeasured,
               "meets_target": lat.median_ms <= self.target_ms,
               "final_epochs": cfg.final_epochs,
               "layers": layers.layers if layers.ok else [],
               "exported": {"PyTorch model": "final/model.pt",
                            "state dict": "final/state_dict.pt",
                            "pruning plan": "final/plan.json",
                            "filter types": "final/candidate.json",
                            "compiled bundle": "final/bundle/",
                            "profile": "final/profile.json"}}
        self.summary["dense_layers"] = dense_layers.layers if dense_layers.ok else []
        self.journal.append({"type": "phase", "phase": "phase3",
                             **{k: v for k, v in rec.items() if k != "layers"},
                             "latency": self._lat_rec(lat)})
        return rec

    # --- the end ---------------------------------------------------------------------------------
    def _finish(self, records: list[dict], chosen: dict, p3: dict | None,
                searched: list[dict]) -> dict:
        cfg = self.cfg
        cand = Candidate.from_json(chosen["encoding"])
        s = self.summary
        s.update({
            "run_dir": str(self.run_dir), "model": cfg.model, "dataset": cfg.dataset,
            "device": cfg.device, "device_desc": self.device_desc, "strategy": cfg.strategy,
            "seed": cfg.seed, "target_ms": self.target_ms,
            "dense_ms": self.dense_lat.median_ms, "floor_ms": self.floor.median_ms,
            "runs": cfg.runs, "warmup": cfg.warmup, "beta": cfg.latency_weight,
            "finetune_epochs": cfg.finetune_epochs, "chosen": chosen,
            "layers": [{"name": ls.name, "desc": ls.desc, "choice": str(c),
                        "scheme": c.scheme, "ratio": c.ratio}
                       for ls, c in zip(self.space.layers, cand.choices, strict=True)],
            "phase3": p3, "wall_s": time.perf_counter() - self.t0,
            # over the budget's candidates only (not the fallback taken when none met it)
            "best_meeting_accuracy": max((r["accuracy"] for r in searched
                                          if r["status"] == "done" and r["meets_target"]),
                                         default=None),
            "evaluated": len(records),
            "failed": sum(1 for r in records if r["status"] == "failed"),
        })
        if self.oracle is not None and getattr(self.device, "timing_note", ""):
            s["note"] = self.device.timing_note
        report = write_report(self.run_dir, s, records)
        s["report"] = str(report)
        self.journal.append({"type": "final", "report": str(report),
                             "best_meeting_accuracy": s["best_meeting_accuracy"],
                             "chosen": chosen["id"], "wall_s": s["wall_s"],
                             "final_ms": (p3 or {}).get("final_ms"),
                             "final_acc": (p3 or {}).get("final_acc")})
        shutil.rmtree(self.run_dir / "bundles", ignore_errors=True)
        return s


def _null_console():
    import io

    from rich.console import Console

    return Console(file=io.StringIO())


def rates_arg(text: str) -> tuple[float, ...]:
    """'1x,2x,2.5x' or '0.5,0.8' → compression ratios."""
    from ..pruning import parse_rate

    out = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            out.append(round(1.0 / (1.0 - parse_rate(part)), 6))
        except PruningError as e:
            raise SearchError(f"--rates: {e}") from None
    if not out:
        raise SearchError("--rates: give at least one rate, e.g. 2x,3x,5x")
    return tuple(out)


__all__ = ["DEFAULT_MODEL", "Search", "SearchConfig", "SearchError", "prepare", "rates_arg",
           "ratio_str"]
