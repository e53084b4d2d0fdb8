"""Search strategies behind one ask/tell interface, one file each, found in ``STRATEGIES``.

``ask(n)`` proposes up to n new candidates (fewer, or none, when the strategy has nothing left
to propose); ``tell(outcomes)`` reports what they scored (accuracy AND latency, not only the
scalar reward, so a multi-objective strategy such as an evolutionary Pareto search fits the same
interface); ``prior(outcomes)`` hands over what was measured before the search (the probes:
latency only, and the dense model's accuracy). A strategy is deterministic given its seed and
what it was told, which is what lets ``--resume`` replay it from the journal.

- ``npas`` (npas/): the RL controller samples, the Bayesian-optimisation filter picks.
- ``random`` (random.py): every layer uniformly among its valid choices.
- ``uniform`` (uniform.py): one scheme and rate for every layer, the grid in a seeded order.
- ``jcw`` (jcw/): per layer a channel ratio and a weight density, NSGA-II (pymoo) with
  survival by latency anchors: one search, a front for several targets.

A new strategy is one file with a class taking ``(space, seed=, reward=, samples=, **options)``
(ignoring the options it does not use: ``**_``) and one row in ``STRATEGIES``. The
reward and the ``Outcome`` record they learn from are in reward.py.
"""

from __future__ import annotations

from typing import Protocol

from ..space import Candidate, SearchSpace
from .jcw import JcwStrategy
from .npas import NpasStrategy
from .random import RandomStrategy
from .reward import Outcome, RewardConfig
from .uniform import UniformStrategy


class Strategy(Protocol):
    name: str

    def prior(self, outcomes: list[Outcome]) -> None: ...
    def ask(self, n: int) -> list[Candidate]: ...
    def tell(self, outcomes: list[Outcome]) -> None: ...
    def status(self) -> str: ...


STRATEGIES = {"npas": NpasStrategy, "random": RandomStrategy, "uniform": UniformStrategy,
              "jcw": JcwStrategy}


def make_strategy(name: str, space: SearchSpace, seed: int, reward: RewardConfig,
                  samples: int = 256, **options) -> Strategy:
    """``options``: what some strategies read (jcw: ``targets``, ``population``,
    ``bounds``); the others ignore them."""
    try:
        cls = STRATEGIES[name]
    except KeyError:
        raise ValueError(f"strategy {name!r}: known are {', '.join(STRATEGIES)}") from None
    return cls(space, seed=seed, reward=reward, samples=samples, **options)
