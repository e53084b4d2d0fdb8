"""Apply tuning from outside (a tuning database, a tuner's candidate) to the laid-out LR.

``TuningLookup`` is a plain callable ``lookup(layer, graph, target) -> dict | None`` that the
caller of ``compile_model`` passes in (the tuning database's ``DbLookup`` or the tuner's
candidates, ``codegen/autotune``; the passes know neither). It runs after epilogue fusion
and BEFORE the layout pass, because tuning decides layouts (a Winograd conv reads blocked
input): ``graph.shapes`` are still logical NCHW, and the layout pass fills in the cost model's
defaults only for what the lookup left unset. A dict is merged over the layer's tuning; None
keeps the defaults.
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
