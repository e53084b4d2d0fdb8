"""The measuring loop of the auto-tuner: a genetic algorithm per layer signature, every
candidate timed on the target device's runner, the winners written to the tuning database.

One candidate bundle is the WHOLE model, in which every signature being tuned takes the genes
of its own individual i of generation g: one benchmark with per-layer timing then scores all
signatures at once (P bundles per generation, whatever the number of signatures). A signature's
time in a run is the mean of its layers' times in that run; its score in a benchmark is the
median over the runs. Signatures already in the database (for this target and thread count,
searched over the same space) are not tuned again: their entries are used in the candidates.

The machine is noisy (phones throttle, workstations are shared), so nothing is decided on one
sample: elites are re-measured every generation, the default and the best ``finalists`` of each
signature are measured again at the end in interleaved rounds, and a point replaces the default
only when its median beats the default's by ``margin``. Failures (a candidate that does not
compile, a runner that dies) are recorded and the search goes on.

The device is behind a ``Measurer`` (``codegen/autotune/measurer.py``): the tuner compiles and
measures through it and never sees the host, its sessions or its RPC.
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from codegen.autotune import ga
from codegen.autotune.db import Entry, TuningDB
from codegen.autotune.measurer import MeasureError, Measurement, Measurer
from codegen.autotune.space import (
    default_point,
    describe_key,
    key_string,
    layer_key,
    tunable_space,
)
from codegen.bundle import Bundle, Target
from codegen.compile import compile_model
from codegen.frontend import capture
from codegen.lr import CodegenError, Graph, Layer
from codegen.passes import TuningLookup, pipeline, run_passes
from codegen.toolchain import CToolchain


@dataclass(frozen=True)
class TuneConfig:
    threads: int = 1
    runs: int = 10  # timed runs per candidate benchmark
    warmup: int = 2
    ga: ga.GaConfig = field(default_factory=ga.GaConfig)
    seed: int = 0
    time_budget_s: float | None = None  # for the search; the final re-measurement comes after
    finalists: int = 3  # best points per signature measured again against the default
    final_runs: int | None = None  # runs per final benchmark (default: 2 x runs)
    final_rounds: int = 2  # interleaved rounds over the final bundles (order reversed each)
    margin: float = 0.03  # a point must beat the default's median by this much to be kept
    min_gain_ms: float = 0.0005  # ... and by at least this much time (timer resolution)
    compare: bool = True  # measure the whole model with and without the database at the end
    compare_runs: int = 20  # runs per round of that comparison (3 interleaved rounds)
    retune: bool = False  # tune signatures that the database already has
    model_name: str = "model"
    device: str = ""  # the device's CPU, stored with each entry for people


@dataclass
class SignatureStatus:
    """One layer signature: what the search knows about it so far."""

    key: dict[str, Any]
    description: str
    layers: list[str]
    space: dict[str, tuple]
    default: dict[str, Any]
    from_db: bool = False  # found in the database: not tuned this time
    best: dict[str, Any] = field(default_factory=dict)
    best_ms: float = float("inf")
    default_ms: float = float("inf")
    measured: int = 0  # distinct points measured
    kept: bool = False  # the best beat the default by the margin

    @property
    def speedup(self) -> float:
        return self.default_ms / self.best_ms if 0 < self.best_ms < float("inf") else 1.0


@dataclass
class TuneReport:
    signatures: list[SignatureStatus]
    candidates_measured: int  # benchmarks of candidate bundles (search + finals)
    generations: int
    seconds: float
    failures: list[str] = field(default_factory=list)
    model_default_ms: float | None = None  # whole model, cost-model defaults
    model_tuned_ms: float | None = None  # whole model, with the database


class TuneProgress:
    """What the tuner tells its caller; the CLI draws it with rich. Methods do nothing here."""

    def stage(self, text: str, done: int, total: int) -> None:
        pass

    def generation(self, gen: int, generations: int, sigs: Sequence[SignatureStatus]) -> None:
        pass

    def note(self, text: str) -> None:
        pass


class _Recorder:
    """A lookup that answers nothing and notes every tunable layer's key and defaults."""

    def __init__(self, threads: int):
        self.threads = threads
        self.sigs: dict[str, SignatureStatus] = {}

    def __call__(self, la: Layer, graph: Graph, target: Target) -> None:
        space = tunable_space(la, graph, target)
        if not space:
            return None
        key = layer_key(la, graph, target, self.threads)
        k = key_string(key)
        if k not in self.sigs:
            default = default_point(la, graph, target)
            self.sigs[k] = SignatureStatus(key, describe_key(key), [], space,
                                           {n: default.get(n, space[n][0]) for n in space})
        self.sigs[k].layers.append(la.name)
        return None


class _Assign:
    """A lookup that gives each signature in ``genes`` its genome, and asks ``fallback``
    (the database) about the rest."""

    def __init__(self, genes: dict[str, ga.Genome], threads: int, fallback=None):
        self.genes, self.threads, self.fallback = genes, threads, fallback

    def __call__(self, la: Layer, graph: Graph, target: Target) -> dict[str, Any] | None:
        if not tunable_space(la, graph, target):
            return None
        g = self.genes.get(key_string(layer_key(la, graph, target, self.threads)))
        if g is not None:
            return ga.as_dict(g)
        return self.fallback(la, graph, target) if self.fallback else None


def per_run_ms(result: Measurement, layers: Sequence[str]) -> list[float]:
    """Per run, the mean time in ms of ``layers`` (steps of one signature)."""
    by_name = result.layers
    missing = [n for n in layers if n not in by_name]
    if missing:
        raise MeasureError(f"per-layer timings lack steps {missing[:3]}; got "
                           f"{list(by_name)[:5]}...")
    cols = [by_name[n] for n in layers]
    return [sum(c[r] for c in cols) / len(cols) / 1e6 for r in range(len(cols[0]))]


def tune_model(module: torch.nn.Module, example_inputs: Sequence[torch.Tensor],
               measurer: Measurer, toolchain: CToolchain, db: TuningDB, cfg: TuneConfig,
               progress: TuneProgress | None = None) -> TuneReport:
    """Tune every layer signature of ``module`` that ``db`` lacks, measuring with ``measurer``
    (on a runner with ``cfg.threads`` threads) with ``toolchain``'s kernels; write each result
    to ``db``. See the module docs."""
    progress = progress or TuneProgress()
    t0 = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="npas-tune-"))
    report = TuneReport([], 0, 0, 0.0)
    try:
        _Tuner(module, tuple(example_inputs), measurer, toolchain, db, cfg, progress, work,
               report, t0).run()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report.seconds = round(time.perf_counter() - t0, 1)
    return report


class _Tuner:
    def __init__(self, module, inputs, measurer: Measurer, toolchain, db, cfg, progress, work,
                 report, t0):
        self.module, self.inputs, self.measurer = module, inputs, measurer
        self.toolchain, self.db, self.cfg, self.progress = toolchain, db, cfg, progress
        self.work, self.report, self.t0 = work, report, t0
        self.n_bundles = 0

    # -- building and measuring ---------------------------------------------------------------

    def compile(self, lookup: TuningLookup | None, tag: str) -> Bundle:
        self.n_bundles += 1
        out = self.work / f"{self.n_bundles:04d}-{tag}"
        return compile_model(self.module, self.inputs, out, name=f"{self.cfg.model_name}_tune",
                             toolchain=self.toolchain, tuning=lookup)

    def measure(self, bundle: Bundle, runs: int) -> Measurement:
        try:
            return self.measurer.measure(bundle, runs, self.cfg.warmup, per_layer=True)
        finally:
            self.measurer.release(bundle)
            shutil.rmtree(bundle.path, ignore_errors=True)

    def over_budget(self) -> bool:
        b = self.cfg.time_budget_s
        return b is not None and time.perf_counter() - self.t0 > b

    # -- the search ---------------------------------------------------------------------------

    def run(self) -> None:
        cfg = self.cfg
        self.progress.stage("finding the layer signatures", 0, 1)
        rec = _Recorder(cfg.threads)
        target = self.toolchain.target()
        run_passes(capture(self.module, self.inputs),
                   pipeline(self.toolchain.language().elem_bytes, self.toolchain.isa(), rec,
                            target))
        sigs = rec.sigs
        self.report.signatures = list(sigs.values())
        todo: dict[str, SignatureStatus] = {}
        for k, s in sigs.items():
            e = self.db.get(s.key)
            if e is not None and not cfg.retune and e.space == _lists(s.space):
                s.from_db, s.best, s.best_ms, s.default_ms = True, e.tuning, e.median_ms, \
                    e.default_ms
                s.kept = e.tuning != e.default_tuning
            else:
                todo[k] = s
        if todo:
            samples = self.search(todo)
            self.finals(todo, samples)
        else:
            self.progress.note(f"all {len(sigs)} signatures are in {self.db.path}: nothing to "
                               f"tune")
        if cfg.compare and sigs:
            self.compare()

    def search(self, todo: dict[str, SignatureStatus]) -> dict[str, dict[ga.Genome, list]]:
        cfg, gcfg = self.cfg, self.cfg.ga
        rngs = {k: ga.rng_for(cfg.seed, k) for k in todo}
        pops = {k: ga.initial_population(s.space, s.default, gcfg.population, rngs[k])
                for k, s in todo.items()}
        samples: dict[str, dict[ga.Genome, list[float]]] = {k: {} for k in todo}
        fallback = self.db.lookup(cfg.threads)
        total = gcfg.generations * gcfg.population
        for gen in range(gcfg.generations):
            width = max(len(p) for p in pops.values())
            for i in range(width):
                if self.over_budget():
                    self.progress.note(f"time budget of {cfg.time_budget_s:.0f} s spent in "
                                       f"generation {gen + 1}; going to the final "
                                       f"re-measurement")
                    self.report.generations = gen  # complete generations
                    return samples
                self.progress.stage(f"generation {gen + 1}/{gcfg.generations}, individual "
                                    f"{i + 1}/{width}", gen * gcfg.population + i, total)
                genes = {k: p[i % len(p)] for k, p in pops.items()}
                try:
                    res = self.measure(self.compile(_Assign(genes, cfg.threads, fallback),
                                                    f"g{gen}i{i}"), cfg.runs)
                except (CodegenError, MeasureError) as e:
                    self.report.failures.append(f"generation {gen + 1} individual {i + 1}: {e}")
                    continue
                self.report.candidates_measured += 1
                for k, s in todo.items():
                    med = statistics.median(per_run_ms(res, s.layers))
                    samples[k].setdefault(genes[k], []).append(med)
            for k, s in todo.items():
                self._update(s, samples[k])
            self.report.generations = gen + 1
            self.progress.generation(gen + 1, gcfg.generations, list(todo.values()))
            if gen + 1 < gcfg.generations:
                pops = {k: ga.next_generation(pops[k], samples[k], todo[k].space, gcfg,
                                              rngs[k]) for k in todo}
        return samples

    def _update(self, s: SignatureStatus, samples: dict[ga.Genome, list[float]]) -> None:
        s.measured = len(samples)
        d = ga.genome(s.default, s.space)
        s.default_ms = ga.fitness(samples, d)
        best = ga.ranked(samples)[0] if samples else d
        s.best, s.best_ms = ga.as_dict(best), ga.fitness(samples, best)

    def finals(self, todo: dict[str, SignatureStatus],
               samples: dict[str, dict[ga.Genome, list[float]]]) -> None:
        """The default and each signature's best few, measured again side by side; the
        winner goes to the database (written after each signature)."""
        cfg = self.cfg
        defaults = {k: ga.genome(s.default, s.space) for k, s in todo.items()}
        finalists = {k: [defaults[k]] + [g for g in ga.ranked(samples[k])
                                         if g != defaults[k]][:cfg.finalists]
                     for k in todo}
        width = max(len(f) for f in finalists.values())
        bundles = []
        fallback = self.db.lookup(cfg.threads)
        for j in range(width):
            genes = {k: f[j] if j < len(f) else defaults[k] for k, f in finalists.items()}
            try:
                bundles.append((genes, self.compile(_Assign(genes, cfg.threads, fallback),
                                                    f"final{j}")))
            except CodegenError as e:
                self.report.failures.append(f"final bundle {j}: {e}")
        runs = cfg.final_runs or 2 * cfg.runs
        final: dict[str, dict[ga.Genome, list[float]]] = {k: {} for k in todo}
        try:
            steps = cfg.final_rounds * len(bundles)
            for r in range(cfg.final_rounds):
                order = bundles if r % 2 == 0 else bundles[::-1]
                for n, (genes, b) in enumerate(order):
                    self.progress.stage(f"final re-measurement: round {r + 1}/"
                                        f"{cfg.final_rounds}, bundle {n + 1}/{len(order)}",
                                        r * len(bundles) + n, steps)
                    try:
                        res = self.measurer.measure(b, runs, cfg.warmup, per_layer=True)
                    except MeasureError as e:
                        self.report.failures.append(f"final round {r + 1}: {e}")
                        continue
                    self.report.candidates_measured += 1
                    for k, s in todo.items():
                        final[k].setdefault(genes[k], []).extend(per_run_ms(res, s.layers))
        finally:
            for _, b in bundles:
                self.measurer.release(b)
        for k, s in todo.items():
            fk = final[k]
            d = defaults[k]
            if d not in fk:  # the final measurement failed: keep nothing
                self.report.failures.append(f"{s.description}: no final measurement of the "
                                            f"default; not written to the database")
                continue
            s.default_ms = statistics.median(fk[d])
            best = min(fk, key=lambda g: statistics.median(fk[g]))
            best_ms = statistics.median(fk[best])
            s.kept = (best != d and best_ms <= s.default_ms * (1 - cfg.margin)
                      and s.default_ms - best_ms >= cfg.min_gain_ms)
            if not s.kept:
                best, best_ms = d, s.default_ms
            s.best, s.best_ms = ga.as_dict(best), best_ms
            self.db.put(Entry(key=s.key, tuning=s.best, median_ms=round(best_ms, 6),
                              default_tuning=dict(s.default),
                              default_ms=round(s.default_ms, 6), space=_lists(s.space),
                              layers=list(s.layers), model=cfg.model_name, runs=runs,
                              candidates=len(samples[k]), device=cfg.device))

    def compare(self) -> None:
        """The whole model with the cost model's defaults and with the database, measured in
        3 interleaved rounds; medians of all runs."""
        cfg = self.cfg
        pair = [("default", self.compile(None, "default")),
                ("tuned", self.compile(self.db.lookup(cfg.threads), "tuned"))]
        bundles = dict(pair)
        got: dict[str, list[int]] = {"default": [], "tuned": []}
        try:
            for r in range(3):
                for name in (("default", "tuned") if r % 2 == 0 else ("tuned", "default")):
                    self.progress.stage(f"whole model, default vs tuned: round {r + 1}/3",
                                        r, 3)
                    res = self.measurer.measure(bundles[name], cfg.compare_runs, cfg.warmup,
                                                per_layer=False)
                    got[name].extend(res.samples_ns)
        finally:
            for b in bundles.values():
                self.measurer.release(b)
        self.report.model_default_ms = statistics.median(got["default"]) / 1e6
        self.report.model_tuned_ms = statistics.median(got["tuned"]) / 1e6


def _lists(space: dict[str, Sequence]) -> dict[str, list]:
    return {k: list(v) for k, v in sorted(space.items())}

