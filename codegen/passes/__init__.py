"""The LR passes, in the order they run. Each is ``Graph -> Graph`` and lives in its own file."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from codegen.isa import VectorIsa
from codegen.lr import Graph
from codegen.passes.fold_bn import fold_bn
from codegen.passes.fuse_epilogue import fuse_epilogue
from codegen.passes.layout import block_layout
from codegen.passes.memory_plan import plan_memory

PIPELINE: tuple[Callable[[Graph], Graph], ...] = (fold_bn, fuse_epilogue, plan_memory)


def pipeline(elem_bytes: int = 4, isa: VectorIsa | None = None
             ) -> tuple[Callable[[Graph], Graph], ...]:
    """The pipeline with the memory plan sized for ``elem_bytes``-byte elements; with a CPU
    vector ``isa``, activations are laid out in blocks of its width first."""
    layout = (partial(block_layout, isa=isa),) if isa is not None else ()
    if elem_bytes == 4 and not layout:
        return PIPELINE
    return (fold_bn, fuse_epilogue, *layout, partial(plan_memory, elem_bytes=elem_bytes))


def run_passes(graph: Graph, pipeline: tuple[Callable[[Graph], Graph], ...] = PIPELINE
               ) -> Graph:
    for p in pipeline:
        graph = p(graph)
    return graph


__all__ = ["PIPELINE", "pipeline", "block_layout", "fold_bn", "fuse_epilogue", "plan_memory",
           "run_passes"]
