"""``npas``: the RL controller proposes, the Bayesian-optimisation filter picks.

First an initial design of homogeneous candidates spread over the estimated cost; then the RL
controller (controller.py) samples a pool, to which the one-layer moves around the best
candidates so far are added; the Bayesian-optimisation filter (bo.py) picks the few to
evaluate; their rewards train the controller, and between evaluations the controller also
trains on the models' expected reward for fresh samples of its own.
"""

from __future__ import annotations

import numpy as np
import torch

from ...space import Candidate, LayerChoice, SearchSpace
from ..reward import Outcome, RewardConfig
from .bo import N_INIT, BayesFilter
from .controller import Controller


class NpasStrategy:
    name = "npas"

    def __init__(self, space: SearchSpace, seed: int = 0, reward: RewardConfig | None = None,
                 samples: int = 256, **_):
        if reward is None:
            raise ValueError("npas needs the reward function")
        self.space = space
        self.controller = Controller(space, seed=seed)
        self.gen = torch.Generator().manual_seed(seed)
        self.rng = np.random.default_rng([seed, 3])
        self.bo = BayesFilter(space, reward, seed=seed)
        self.samples = samples
        self.incumbents = 3
        self.surrogate_steps = 8
        self.surrogate_batch = 128
        self.observed: list[Outcome] = []
        self.priors: list[Outcome] = []
        self.seen: set[str] = set()
        self.rounds = 0
        self.last_pool = 0

    def prior(self, outcomes: list[Outcome]) -> None:
        self.priors.extend(outcomes)
        self.seen.update(o.candidate.key() for o in outcomes if o.accuracy is not None)

    def ask(self, n: int) -> list[Candidate]:
        self.bo.fit(self.priors + self.observed)
        if self.bo.n_acc < N_INIT:
            return self._initial_design(n)
        pool: list[Candidate] = []
        keys: set[str] = set()
        for _ in range(4):
            for c in self.controller.sample(self.samples, self.gen):
                c = self.space.repair(c)
                k = c.key()
                if k not in self.seen and k not in keys:
                    keys.add(k)
                    pool.append(c)
            if len(pool) >= 8 * n:
                break
        for _ in range(50 * n):  # a controller that has converged still gets a choice
            if len(pool) >= 4 * n:
                break
            c = self.space.random(self.rng)
            if c.key() not in self.seen and c.key() not in keys:
                keys.add(c.key())
                pool.append(c)
        for c in self._neighbours():
            if c.key() not in self.seen and c.key() not in keys:
                keys.add(c.key())
                pool.append(c)
        self.last_pool = len(pool)
        picks = self.bo.pick(pool, self.priors + self.observed, n, self.rounds)
        self.rounds += 1
        chosen = [pool[i] for i in picks]
        self.seen.update(c.key() for c in chosen)
        return chosen

    def _initial_design(self, n: int) -> list[Candidate]:
        """Before the models have accuracies to learn from: homogeneous candidates (one filter
        type, scheme and rate on every layer), for each (filter type, scheme) family the rate
        whose latency the model fitted to the probes expects closest to the target (pruning
        costs accuracy, so the family's best guess is the lightest rate that meets it; the
        probes are far from the target, so "closest" on either side also teaches the latency
        model where the boundary is). Families that keep the filter type come first."""
        families: dict[tuple[str, str, str], tuple[float, Candidate]] = {}
        target = self.bo.reward.target_ms
        # with precision in the space, each family also in int8 (where its layers offer it)
        precisions = self.space.precisions if self.space.int8 else ("fp32",)
        for ft in ("keep", "dwpw", "1x1"):
            for scheme, ratio in self.space.uniform_grid():
                for p in precisions:
                    c = self.space.homogeneous(ft, scheme, ratio, p)
                    if c.key() in self.seen:
                        continue
                    ms = float(np.exp(self.bo.lat.predict(self.space.features(c)[None])[0][0]))
                    gap = abs(np.log(ms / target))
                    best = families.get((ft, scheme, p))
                    if best is None or gap < best[0]:
                        families[(ft, scheme, p)] = (gap, c)
        order = {"keep": 0, "dwpw": 1, "1x1": 2}
        chosen: list[Candidate] = []
        for k in sorted(families, key=lambda k: (order[k[0]], families[k][0])):
            c = families[k][1]
            if len(chosen) < n and c.key() not in {x.key() for x in chosen}:
                chosen.append(c)
        self.rounds += 1
        self.last_pool = len(families)
        self.seen.update(c.key() for c in chosen)
        return chosen

    def _neighbours(self) -> list[Candidate]:
        """Every candidate one layer away from the best evaluated ones (the acquisition is
        maximised over the controller's samples and these local moves together: the
        controller explores, the moves refine what already works)."""
        best = sorted((o for o in self.observed if o.ok), key=lambda o: -o.reward)
        out: list[Candidate] = []
        for o in best[:self.incumbents]:
            base = list(o.candidate.choices)
            for i, ls in enumerate(self.space.layers):
                for ft, per in ls.options.items():
                    for r, schemes in per.items():
                        for sc in schemes:
                            for p in ls.precisions(ft, sc):
                                ch = LayerChoice(ft, sc, r, precision=p)
                                if ch != base[i]:
                                    out.append(self.space.repair(
                                        Candidate(tuple(base[:i] + [ch] + base[i + 1:]))))
        return out

    def tell(self, outcomes: list[Outcome]) -> None:
        self.observed.extend(outcomes)
        self.seen.update(o.candidate.key() for o in outcomes)
        ok = [o for o in outcomes if o.ok]
        if ok:
            self.controller.update([o.candidate for o in ok], [float(o.reward) for o in ok])
        # between evaluations the controller also learns from the models: fresh samples
        # scored by their expected reward, so the next pool comes from where the models
        # (measurements so far) point, not from the whole space
        self.bo.fit(self.priors + self.observed)
        if self.bo.n_acc >= N_INIT:
            for k in range(self.surrogate_steps):
                cands = [self.space.repair(c) for c in self.controller.sample(
                    self.surrogate_batch, self.gen)]
                r = self.bo.expected_reward(cands, self.rounds * 100 + k)
                self.controller.update_predicted(cands, r.tolist())

    def status(self) -> str:
        b = self.controller.baseline
        return (f"round {self.rounds}, pool {self.last_pool}, controller updates "
                f"{self.controller.updates}" + (f", baseline {b:.3f}" if b is not None else ""))
