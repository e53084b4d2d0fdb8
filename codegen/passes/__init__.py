"""The LR passes, in the order they run. Each is ``Graph -> Graph`` and lives in its own file."""

from __future__ import annotations

from collections.abc import Callable

from codegen.lr import Graph
from codegen.passes.fold_bn import fold_bn
from codegen.passes.fuse_epilogue import fuse_epilogue
from codegen.passes.memory_plan import plan_memory

PIPELINE: tuple[Callable[[Graph], Graph], ...] = (fold_bn, fuse_epilogue, plan_memory)


def run_passes(graph: Graph, pipeline: tuple[Callable[[Graph], Graph], ...] = PIPELINE
               ) -> Graph:
    for p in pipeline:
        graph = p(graph)
    return graph


__all__ = ["PIPELINE", "fold_bn", "fuse_epilogue", "plan_memory", "run_passes"]
