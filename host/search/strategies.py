"""Search strategies behind one ask/tell interface.

``ask(n)`` proposes up to n new candidates (fewer, or none, when the strategy has nothing left
to propose); ``tell(outcomes)`` reports what they scored (accuracy AND latency, not only the
scalar reward, so a multi-objective strategy such as an evolutionary Pareto search fits the same
interface); ``prior(outcomes)`` hands over what was measured before the search (the probes:
latency only, and the dense model's accuracy). A strategy is deterministic given its seed and
what it was told, which is what lets ``--resume`` replay it from the journal.

- ``npas``: the RL controller (controller.py) samples a pool, the Bayesian-optimisation filter
  (bo.py) picks the few to evaluate, their rewards train the controller.
- ``random``: every layer uniformly among its valid choices.
- ``uniform``: one scheme and rate for every layer, the grid in a seeded random order.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch

from .bo import BayesFilter
from .controller import Controller
from .reward import Outcome, RewardConfig
from .space import Candidate, SearchSpace


class Strategy(Protocol):
    name: str

    def prior(self, outcomes: list[Outcome]) -> None: ...
    def ask(self, n: int) -> list[Candidate]: ...
    def tell(self, outcomes: list[Outcome]) -> None: ...
    def status(self) -> str: ...


class RandomStrategy:
    name = "random"

    def __init__(self, space: SearchSpace, seed: int = 0, **_):
        self.space = space
        self.rng = np.random.default_rng([seed, 1])
        self.seen: set[str] = set()

    def prior(self, outcomes: list[Outcome]) -> None:
        pass

    def ask(self, n: int) -> list[Candidate]:
        out: list[Candidate] = []
        for _ in range(200 * n):
            if len(out) == n:
                break
            c = self.space.random(self.rng)
            if c.key() not in self.seen:
                self.seen.add(c.key())
                out.append(c)
        return out

    def tell(self, outcomes: list[Outcome]) -> None:
        self.seen.update(o.candidate.key() for o in outcomes)

    def status(self) -> str:
        return f"{len(self.seen)} proposed"


class UniformStrategy:
    name = "uniform"

    def __init__(self, space: SearchSpace, seed: int = 0, **_):
        self.space = space
        grid = space.uniform_grid()
        order = np.random.default_rng([seed, 2]).permutation(len(grid))
        self.grid = [grid[i] for i in order]
        self.next = 0
        self.seen: set[str] = set()

    def prior(self, outcomes: list[Outcome]) -> None:
        pass

    def ask(self, n: int) -> list[Candidate]:
        out: list[Candidate] = []
        while len(out) < n and self.next < len(self.grid):
            c = self.space.uniform(*self.grid[self.next])
            self.next += 1
            if c.key() not in self.seen:
                self.seen.add(c.key())
                out.append(c)
        return out

    def tell(self, outcomes: list[Outcome]) -> None:
        self.seen.update(o.candidate.key() for o in outcomes)

    def status(self) -> str:
        return f"grid {self.next}/{len(self.grid)}"


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
        self.observed: list[Outcome] = []
        self.priors: list[Outcome] = []
        self.seen: set[str] = set()
        self.rounds = 0
        self.last_pool = 0

    def prior(self, outcomes: list[Outcome]) -> None:
        self.priors.extend(outcomes)
        self.seen.update(o.candidate.key() for o in outcomes if o.accuracy is not None)

    def ask(self, n: int) -> list[Candidate]:
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
        self.last_pool = len(pool)
        picks = self.bo.pick(pool, self.priors + self.observed, n, self.rounds)
        self.rounds += 1
        chosen = [pool[i] for i in picks]
        self.seen.update(c.key() for c in chosen)
        return chosen

    def tell(self, outcomes: list[Outcome]) -> None:
        self.observed.extend(outcomes)
        self.seen.update(o.candidate.key() for o in outcomes)
        ok = [o for o in outcomes if o.ok]
        if ok:
            self.controller.update([o.candidate for o in ok], [float(o.reward) for o in ok])

    def status(self) -> str:
        b = self.controller.baseline
        return (f"round {self.rounds}, pool {self.last_pool}, controller updates "
                f"{self.controller.updates}" + (f", baseline {b:.3f}" if b is not None else ""))


STRATEGIES = {"npas": NpasStrategy, "random": RandomStrategy, "uniform": UniformStrategy}


def make_strategy(name: str, space: SearchSpace, seed: int, reward: RewardConfig,
                  samples: int = 256) -> Strategy:
    try:
        cls = STRATEGIES[name]
    except KeyError:
        raise ValueError(f"strategy {name!r}: known are {', '.join(STRATEGIES)}") from None
    return cls(space, seed=seed, reward=reward, samples=samples)
