"""Apply tuning from outside (a tuning database, a tuner's candidate) to the laid-out LR.

``TuningLookup`` is a plain callable ``lookup(layer, graph, target) -> dict | None`` that the
caller of ``compile_model`` passes in (codegen never imports the host, which owns the
database). It runs after the layout pass, so ``graph.shapes`` holds the physical (blocked)
shapes the kernels will see, and before the memory plan, so a tuning choice that changes
buffers could still be planned. A dict is merged over the layer's tuning (the cost model's
defaults, filled in by the layout pass); None keeps the defaults.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from codegen.bundle import Target
from codegen.lr import Graph, Layer

TuningLookup = Callable[[Layer, Graph, Target], "dict[str, Any] | None"]


def apply_tuning(graph: Graph, lookup: TuningLookup, target: Target) -> Graph:
    """Every step whose ``lookup`` answers a dict gets that dict merged over its tuning."""
    layers = []
    for la in graph.layers:
        entry = lookup(la, graph, target) if la.is_step else None
        layers.append(replace(la, tuning={**la.tuning, **entry}) if entry else la)
    return replace(graph, layers=tuple(layers))
