"""``uniform``: one scheme and rate for every layer, the grid in a seeded random order (a
baseline); with precision in the space, each grid point also in int8 (where layers offer it)."""

from __future__ import annotations

import numpy as np

from ..space import Candidate, SearchSpace
from .base import Proposer


class UniformStrategy(Proposer):
    name = "uniform"

    def __init__(self, space: SearchSpace, seed: int = 0, **_):
        super().__init__(space)
        grid = [(s, r) for s, r in space.uniform_grid()]
        if space.int8:
            grid = [(s, r, p) for s, r in grid for p in space.precisions]
        order = np.random.default_rng([seed, 2]).permutation(len(grid))
        self.grid = [grid[i] for i in order]
        self.next = 0

    def ask(self, n: int) -> list[Candidate]:
        out: list[Candidate] = []
        while len(out) < n and self.next < len(self.grid):
            self._take(self.space.uniform(*self.grid[self.next]), out)
            self.next += 1
        return out

    def status(self) -> str:
        return f"grid {self.next}/{len(self.grid)}"
