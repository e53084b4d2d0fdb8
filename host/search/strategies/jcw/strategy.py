"""``jcw``: joint channel and weight pruning searched by NSGA-II (pymoo) with latency anchors.

After "Joint Channel and Weight Pruning for Model Acceleration on Mobile Devices" (arXiv
2110.08013): per layer a channel ratio and a weight density (encoding.py), pymoo's NSGA-II
with its SBX crossover and polynomial mutation on the genes (rounded to tenths, then snapped to
canonical widths), its binary tournament, its duplicate elimination, and survival by
non-dominated sorting on (loss, distance to each latency anchor) (selection.py). The anchors
are the latency targets (10 % under each) plus points spread geometrically between the fastest
and the slowest latency measured so far (the probes: the dense model and the genes' floor),
so one search keeps a front that serves every target.

pymoo's own ask/tell drives the generations: ``ask(n)`` hands out the current generation's
offspring a few at a time, and when every one of them has been told, the generation goes back
to pymoo (survival) and the next is mated. An offspring whose candidate was measured before
(in an earlier generation, or the dense model) gets its known objectives at once and costs no
evaluation. Everything random comes from pymoo's generator, seeded once: the same seed and the
same results give the same proposals, which is what ``--resume`` replays.
"""

from __future__ import annotations

import math

import numpy as np
from pymoo.algorithms.moo.nsga2 import NSGA2
from pymoo.core.duplicate import DefaultDuplicateElimination
from pymoo.core.problem import Problem
from pymoo.core.repair import Repair
from pymoo.core.termination import NoTermination
from pymoo.operators.crossover.sbx import SBX
from pymoo.operators.mutation.pm import PM
from pymoo.operators.repair.rounding import RoundingRepair

from ...space import Candidate, SearchSpace
from ..reward import Outcome, RewardConfig
from .encoding import JcwBounds, JcwEncoding
from .selection import AnchorSurvival

POPULATION = 16  # JCW uses 64; a 64-candidate budget gets four generations of 16
SPREAD_ANCHORS = 4  # anchors besides the targets, from the fastest to the slowest measured
# a target's anchor sits this much under it: members that land on the anchor must still meet
# the target when measured again (on the main job, plain anchors at the targets left most of
# their neighbours 1-2 % over them)
UNDER_TARGET = 0.1
FAILED_MS = 1e6  # a failed candidate's latency (with loss 1: dominated by everything)
MAX_IDLE_GENERATIONS = 25  # generations in a row with nothing new: the search has converged


class _Snap(Repair):
    def __init__(self, enc: JcwEncoding) -> None:
        super().__init__()
        self.enc = enc

    def _do(self, problem, X, **kwargs):
        return np.array([self.enc.snap(x) for x in X], dtype=int)


class JcwStrategy:
    name = "jcw"

    def __init__(self, space: SearchSpace, seed: int = 0, reward: RewardConfig | None = None,
                 targets: tuple[float, ...] = (), population: int = POPULATION,
                 bounds: JcwBounds | None = None, **_):
        self.space = space
        self.enc = JcwEncoding(space, bounds)
        t = tuple(targets) or ((reward.target_ms,) if reward is not None else ())
        self.targets = tuple(sorted(float(x) for x in t))
        self.population = max(4, int(population))
        rng = np.random.default_rng([seed, 15])
        # the initial population: a joint ladder and a channels-only one (homogeneous, spread
        # over latency from the genes' floor), the rest random
        levels = max(2, self.population // 4)
        ladder = np.vstack([self.enc.ladder(levels),
                            self.enc.ladder(levels, channels_only=True)])
        ladder = np.unique(ladder, axis=0)[:self.population]
        rand = rng.integers(self.enc.xl, self.enc.xu + 1,
                            size=(self.population - len(ladder), self.enc.n_var))
        self.problem = Problem(n_var=self.enc.n_var, n_obj=2, xl=self.enc.xl, xu=self.enc.xu,
                               vtype=int)
        self.algo = NSGA2(
            pop_size=self.population, sampling=np.vstack([ladder, rand]),
            crossover=SBX(prob=0.9, eta=15, vtype=float, repair=RoundingRepair()),
            mutation=PM(eta=20, vtype=float, repair=RoundingRepair()),
            survival=AnchorSurvival(self.anchors), repair=_Snap(self.enc),
            eliminate_duplicates=DefaultDuplicateElimination(), seed=seed)
        self.algo.termination = NoTermination()
        self.algo.setup(self.problem)
        self.algo.tournament_type = "comp_by_rank_and_crowding"
        self.known: dict[str, tuple[float, float]] = {}  # key -> (loss, latency ms)
        self.lat_range: list[float] = []  # every latency measured: the anchors' span
        self.generation = None  # the pymoo Population being evaluated
        self.keys: list[str] = []
        self.queue: list[int] = []
        self.fresh: list[int] = []  # the generation's offspring that need an evaluation
        self.waiting: set[str] = set()
        self.generations = 0
        self.free = 0  # offspring measured before: objectives known, no evaluation

    # --- anchors ------------------------------------------------------------------------------
    def anchors(self) -> list[float]:
        lats = [x for x in self.lat_range if 0 < x < FAILED_MS]
        spread: list[float] = []
        if lats and max(lats) > min(lats):
            spread = np.geomspace(min(lats), max(lats), SPREAD_ANCHORS).tolist()
        out = sorted({*(t * (1 - UNDER_TARGET) for t in self.targets), *spread})
        return out or ([float(np.median(lats))] if lats else [1.0])

    # --- the protocol -----------------------------------------------------------------------
    def prior(self, outcomes: list[Outcome]) -> None:
        for o in outcomes:
            if o.latency_ms is not None:
                self.lat_range.append(float(o.latency_ms))
            if o.accuracy is not None and o.latency_ms is not None:
                self.known[o.candidate.key()] = (1.0 - o.accuracy, float(o.latency_ms))

    def ask(self, n: int) -> list[Candidate]:
        out: list[Candidate] = []
        idle = 0
        while len(out) < n:
            if not self.queue:
                if self.waiting or idle >= MAX_IDLE_GENERATIONS:
                    break
                if not self._next_generation():
                    break
                idle += 0 if self.queue else 1
                continue
            i = self.queue.pop(0)
            self.waiting.add(self.keys[i])
            out.append(self.enc.decode(self.generation[i].X))
        return out

    def tell(self, outcomes: list[Outcome]) -> None:
        for o in outcomes:
            k = o.candidate.key()
            self.waiting.discard(k)
            if o.ok and o.accuracy is not None and o.latency_ms is not None:
                self.known[k] = (1.0 - o.accuracy, float(o.latency_ms))
                self.lat_range.append(float(o.latency_ms))
            else:
                self.known[k] = (1.0, FAILED_MS)

    def offspring(self) -> list[Candidate]:
        """The current generation's candidates that need an evaluation (what a supernet
        retrains on before scoring them)."""
        return [self.enc.decode(self.generation[i].X) for i in self.fresh]

    def status(self) -> str:
        return (f"generation {self.generations}, population {self.population}, "
                f"{len(self.known)} known, {self.free} repeats free, anchors "
                + ", ".join(f"{a:.3g}" for a in self.anchors()) + " ms")

    # --- generations --------------------------------------------------------------------------
    def _next_generation(self) -> bool:
        """Hand the finished generation back to pymoo and mate the next; False if pymoo has
        nothing more to offer."""
        if self.generation is not None:
            self.generation.set("F", np.array([self.known[k] for k in self.keys]))
            self.algo.tell(infills=self.generation)
        pop = self.algo.ask()
        if pop is None or len(pop) == 0:
            return False
        self.generations += 1
        self.generation = pop
        self.keys = [self.enc.decode(ind.X).key() for ind in pop]
        fresh: set[str] = set()
        self.queue = []
        for i, k in enumerate(self.keys):
            if k in self.known:
                self.free += 1
            elif k not in fresh:  # (duplicate elimination compares genes; keys are equal
                fresh.add(k)      # whenever the models are)
                self.queue.append(i)
        self.fresh = list(self.queue)
        # a repeat within the generation takes the objectives of its first copy when told
        return True

    def front(self) -> list[tuple[str, float, float]]:
        """The current population's non-dominated members on (loss, latency)."""
        from pymoo.util.nds.non_dominated_sorting import NonDominatedSorting

        items = [(k, *v) for k, v in self.known.items() if v[1] < FAILED_MS]
        if not items:
            return []
        F = np.array([[loss, math.log(ms)] for _, loss, ms in items])
        idx = NonDominatedSorting().do(F, only_non_dominated_front=True)
        return sorted((items[i] for i in idx), key=lambda t: t[2])
