"""The reward a candidate earns, and the record strategies learn from.

    reward = accuracy                                   if latency ≤ target
    reward = accuracy · (latency / target) ** -beta     if latency > target

(MnasNet's soft constraint with the penalty only above the target.) ``beta`` (``--latency-weight``,
default 2) sets how hard an overshoot is punished: at beta = 2 a candidate 10% over the target
keeps 83% of its accuracy as reward, 50% over keeps 44%. Accuracy is the validation accuracy
after the short fine-tune; latency the median of the runner's timed runs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..space import Candidate


@dataclass(frozen=True)
class RewardConfig:
    target_ms: float
    beta: float = 2.0

    def __call__(self, accuracy: float, latency_ms: float) -> float:
        if latency_ms <= self.target_ms:
            return accuracy
        return accuracy * (latency_ms / self.target_ms) ** -self.beta

    def many(self, accuracy: np.ndarray, latency_ms: np.ndarray) -> np.ndarray:
        over = np.maximum(latency_ms / self.target_ms, 1.0)
        return accuracy * over ** -self.beta


@dataclass(frozen=True)
class Outcome:
    """What a strategy is told about one candidate. ``accuracy`` may be None for a latency-only
    observation (the probes); ``reward`` is None when the candidate failed."""

    candidate: Candidate
    accuracy: float | None
    latency_ms: float | None
    reward: float | None

    @property
    def ok(self) -> bool:
        return self.reward is not None
