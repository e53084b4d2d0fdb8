"""``random``: every layer uniformly among its valid choices (a baseline)."""

from __future__ import annotations

import numpy as np

from ..space import Candidate, SearchSpace
from .base import Proposer


class RandomStrategy(Proposer):
    name = "random"

    def __init__(self, space: SearchSpace, seed: int = 0, **_):
        super().__init__(space)
        self.rng = np.random.default_rng([seed, 1])

    def ask(self, n: int) -> list[Candidate]:
        out: list[Candidate] = []
        for _ in range(200 * n):
            if len(out) == n:
                break
            self._take(self.space.random(self.rng), out)
        return out

    def status(self) -> str:
        return f"{len(self.seen)} proposed"
