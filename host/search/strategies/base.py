"""What the baseline strategies share: never propose a candidate twice, ignore the prior."""

from __future__ import annotations

from ..space import Candidate, SearchSpace
from .reward import Outcome


class Proposer:
    """The bookkeeping the baselines share: never propose a candidate twice (also one seen in
    a resumed journal), and ignore the prior."""

    def __init__(self, space: SearchSpace) -> None:
        self.space = space
        self.seen: set[str] = set()

    def prior(self, outcomes: list[Outcome]) -> None:
        pass

    def _take(self, c: Candidate, out: list[Candidate]) -> None:
        if c.key() not in self.seen:
            self.seen.add(c.key())
            out.append(c)

    def tell(self, outcomes: list[Outcome]) -> None:
        self.seen.update(o.candidate.key() for o in outcomes)
