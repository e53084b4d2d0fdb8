"""Search-based pruning-scheme mapping: each layer's block size searched with accuracy and
latency feedback, inside the scheme family the rules give its kind.

The rule-based mapper (``mapping.py``) fixes each layer's family (its kind's ladder: pattern and
block-punched blocks for k×k convs, row blocks for 1x1 convs and Linear) and takes the knee of
the measured profile. The knee looks at latency only; finer blocks keep more accuracy, but how
much differs per layer. This search keeps the families and searches the rung (the block size)
of every mapped layer:

- **latency** of a candidate: the sum over the mapped layers of each layer's time at its rung,
  read off the profile the ladder's bundles gave on the device (one profile serves every
  candidate; the chosen plan is compiled and measured end to end on the device afterwards);
- **accuracy**: the plan applied to the trained model, fine-tuned with its masks held for a
  short budget, BatchNorm recalibrated, validated. Every candidate fine-tunes with the same
  seed (common random numbers: the comparison between two plans is not drowned by the noise
  of two different shuffles);
- the **limit**: the knee's predicted latency × (1 + ``slack``). A candidate over it is
  infeasible. The search starts at the knee and moves one or two layers one rung at a time
  (finer or coarser), a (1 + λ) local search over ``budget`` evaluations, deterministic per
  seed, never evaluating a plan twice. The best feasible plan wins; ties go to the faster.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from torch import nn

from .config import PruningConfig, PruningError
from .mapping import LADDERS, LayerChoice, fits, mapped_plan
from .plan import LayerRule, PruningPlan

DEFAULT_BUDGET = 12
DEFAULT_SLACK = 0.0
OFFSPRING = 3  # candidates per step of the local search


@dataclass(frozen=True)
class MapSearchConfig:
    budget: int = DEFAULT_BUDGET  # plans evaluated for accuracy, the knee's included
    slack: float = DEFAULT_SLACK  # latency limit: the knee's predicted × (1 + slack)
    finetune_epochs: float = 0.5
    seed: int = 0

    def __post_init__(self) -> None:
        if self.budget < 1:
            raise PruningError(f"map search budget {self.budget}: at least 1 plan (the knee)")
        if not 0 <= self.slack <= 1:
            raise PruningError(f"map search slack {self.slack}: a fraction in [0, 1]")
        if self.finetune_epochs < 0:
            raise PruningError("map search fine-tune epochs must be ≥ 0")


@dataclass
class Evaluated:
    genome: tuple[int, ...]  # rung index per mapped layer (``MapSpace.layers`` order)
    predicted_ms: float
    accuracy: float
    feasible: bool


@dataclass
class MapSearchResult:
    best: Evaluated
    knee: Evaluated
    limit_ms: float
    history: list[Evaluated] = field(default_factory=list)
    seconds: float = 0.0
    choices: list[LayerChoice] = field(default_factory=list)  # the best plan's, per layer

    def to_dict(self, space: MapSpace) -> dict:
        def row(e: Evaluated) -> dict:
            return {"rungs": space.labels(e.genome), "predicted_ms": round(e.predicted_ms, 4),
                    "accuracy": e.accuracy, "feasible": e.feasible}
        return {"limit_ms": round(self.limit_ms, 4), "seconds": round(self.seconds, 1),
                "knee": row(self.knee), "best": row(self.best),
                "history": [row(e) for e in self.history]}


class MapSpace:
    """The mapped layers and, per layer, the rungs of its ladder that fit and were timed."""

    def __init__(self, model: nn.Module, rate: float, choices: Sequence[LayerChoice]):
        mods = dict(model.named_modules())
        self.rate = rate
        self.base = list(choices)
        self.layers: list[str] = []
        self.options: list[list[int]] = []  # per layer: ladder indices, finest first
        self.times: list[dict[int, float]] = []
        self.kinds: list[str] = []
        start = []
        for c in choices:
            if not c.scheme or c.kind not in LADDERS:
                continue
            ladder = LADDERS[c.kind]
            opts = [i for i, r in enumerate(ladder)
                    if fits(r, mods[c.layer], rate) and r.label in c.rung_ms]
            labels = [r.label for r in ladder]
            if c.rung not in labels or labels.index(c.rung) not in opts:
                continue
            self.layers.append(c.layer)
            self.kinds.append(c.kind)
            self.options.append(opts)
            self.times.append({i: c.rung_ms[ladder[i].label] for i in opts})
            start.append(labels.index(c.rung))
        if not self.layers:
            raise PruningError("no mapped layer has two or more timed rungs: nothing to search")
        self.knee = tuple(start)

    def predicted_ms(self, genome: Sequence[int]) -> float:
        return float(sum(t[i] for t, i in zip(self.times, genome, strict=True)))

    def labels(self, genome: Sequence[int]) -> dict[str, str]:
        return {n: LADDERS[k][i].label
                for n, k, i in zip(self.layers, self.kinds, genome, strict=True)}

    def plan(self, genome: Sequence[int], cfg: PruningConfig) -> PruningPlan:
        rules = {c.layer: LayerRule(c.scheme, self.rate, dict(c.params)) for c in self.base
                 if c.scheme}
        for n, k, i in zip(self.layers, self.kinds, genome, strict=True):
            rules[n] = LADDERS[k][i].rule(self.rate)
        return PruningPlan(rules, cfg)

    def choices(self, genome: Sequence[int]) -> list[LayerChoice]:
        """The base choices with the searched layers moved to their rungs (why: searched)."""
        at = dict(zip(self.layers, zip(self.kinds, genome, strict=True), strict=True))
        out = []
        for c in self.base:
            if c.layer not in at:
                out.append(c)
                continue
            kind, i = at[c.layer]
            r = LADDERS[kind][i]
            why = ("searched: the knee kept" if r.label == c.rung
                   else f"searched: {r.label} instead of the knee's {c.rung} "
                        f"({c.rung_ms[r.label]:.3f} vs {c.rung_ms[c.rung]:.3f} ms)")
            out.append(LayerChoice(c.layer, c.kind, r.label, why, c.dense_ms, c.rung_ms,
                                   r.scheme, dict(r.params)))
        return out

    def neighbours(self, genome: tuple[int, ...], rng: np.random.Generator
                   ) -> tuple[int, ...]:
        """One or two layers moved one rung (finer or coarser) among the rungs they have."""
        g = list(genome)
        movable = [j for j, o in enumerate(self.options) if len(o) > 1]
        if not movable:
            return genome
        for j in rng.choice(movable, size=min(len(movable), int(rng.integers(1, 3))),
                            replace=False):
            opts = self.options[j]
            k = opts.index(g[j])
            steps = [d for d in (-1, 1) if 0 <= k + d < len(opts)]
            g[j] = opts[k + int(rng.choice(steps))]
        return tuple(g)


def plan_accuracy(model: nn.Module, plan: PruningPlan, data, epochs: float, seed: int,
                  train_cfg=None) -> float:
    """``plan`` applied to a copy of ``model``, fine-tuned with its masks held for ``epochs``,
    BatchNorm recalibrated, validated on ``data.val``."""
    from ..models.train import TrainConfig, evaluate, recalibrate_bn, train

    pruned = plan.apply(copy.deepcopy(model))
    if epochs > 0:
        train(pruned.model, data, epochs, train_cfg or TrainConfig(), seed,
              after_step=pruned.reapply)
    recalibrate_bn(pruned.model, data)
    return evaluate(pruned.model, data)


def search(space: MapSpace, accuracy: Callable[[PruningPlan], float], cfg: MapSearchConfig,
           pcfg: PruningConfig, on_eval: Callable[[int, Evaluated], None] | None = None
           ) -> MapSearchResult:
    """The (1 + λ) local search from the knee; ``accuracy(plan)`` scores a plan."""
    t0 = time.perf_counter()
    rng = np.random.default_rng(cfg.seed)
    limit = space.predicted_ms(space.knee) * (1.0 + cfg.slack)
    seen: dict[tuple[int, ...], Evaluated] = {}

    def evaluate(g: tuple[int, ...]) -> Evaluated:
        ms = space.predicted_ms(g)
        e = Evaluated(g, ms, float(accuracy(space.plan(g, pcfg))), ms <= limit + 1e-12)
        seen[g] = e
        if on_eval is not None:
            on_eval(len(seen), e)
        return e

    def better(a: Evaluated, b: Evaluated) -> bool:
        if a.feasible != b.feasible:
            return a.feasible
        if not a.feasible:  # both over the limit: the nearer
            return a.predicted_ms < b.predicted_ms
        return (a.accuracy, -a.predicted_ms) > (b.accuracy, -b.predicted_ms)

    knee = evaluate(space.knee)
    best = knee
    stale = 0
    while len(seen) < cfg.budget and stale < 20:
        kids = []
        for _ in range(OFFSPRING * 4):
            if len(kids) == OFFSPRING or len(seen) + len(kids) >= cfg.budget:
                break
            g = space.neighbours(best.genome, rng)
            if g not in seen and g not in kids:
                kids.append(g)
        if not kids:
            stale += 1
            continue
        for g in kids:
            e = evaluate(g)
            if better(e, best):
                best = e
    return MapSearchResult(best, knee, limit, list(seen.values()),
                           time.perf_counter() - t0, space.choices(best.genome))


def searched_plan(space: MapSpace, result: MapSearchResult, cfg: PruningConfig
                  ) -> PruningPlan:
    return mapped_plan(space.choices(result.best.genome), space.rate, cfg)

