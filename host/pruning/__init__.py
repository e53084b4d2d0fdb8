"""Pruning: schemes (schemes.py), channel dependencies (graph.py), per-layer handlers
(handlers.py) and the replayable plan (plan.py). Rates are fractions of weights removed
("5x" = 0.8); see config.py."""

from .config import PruningConfig, PruningError, describe, parse_rate
from .graph import DependencyGraph, Group, Member
from .plan import LayerReport, LayerRule, PlanReport, PrunedModel, PruningPlan, keep_count
from .schemes import SCHEMES, Scheme, get_scheme

__all__ = ["SCHEMES", "DependencyGraph", "Group", "LayerReport", "LayerRule", "Member",
           "PlanReport", "PrunedModel", "PruningConfig", "PruningError", "PruningPlan", "Scheme",
           "describe", "get_scheme", "keep_count", "parse_rate"]
