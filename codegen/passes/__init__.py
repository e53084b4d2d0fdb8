"""The LR passes, in the order they run. Each is ``Graph -> Graph`` and lives in its own file."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from codegen.lr import Graph
from codegen.passes.fold_bn import fold_bn
from codegen.passes.fuse_epilogue import fuse_epilogue
from codegen.passes.memory_plan import plan_memory

PIPELINE: tuple[Callable[[Graph], Graph], ...] = (fold_bn, fuse_epilogue, plan_memory)


def pipeline(elem_bytes: int = 4) -> tuple[Callable[[Graph], Graph], ...]:
    """The pipeline with the memory plan sized for ``elem_bytes``-byte elements."""
    if elem_bytes == 4:
        return PIPELINE
    return (fold_bn, fuse_epilogue, partial(plan_memory, elem_bytes=elem_bytes))


def run_passes(graph: Graph, pipeline: tuple[Callable[[Graph], Graph], ...] = PIPELINE
               ) -> Graph:
    for p in pipeline:
        graph = p(graph)
    return graph


__all__ = ["PIPELINE", "pipeline", "fold_bn", "fuse_epilogue", "plan_memory", "run_passes"]
