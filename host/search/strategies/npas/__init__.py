"""The NPAS strategy (strategy.py): an RL controller (controller.py) samples candidates, a
Bayesian-optimisation filter (bo.py) picks the few to evaluate."""

from .strategy import NpasStrategy

__all__ = ["NpasStrategy"]
