"""The LR passes, in the order they run. Each is ``Graph -> Graph`` and lives in its own file."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from codegen.bundle import Target
from codegen.isa import VectorIsa
from codegen.lr import Graph
from codegen.passes.fold_bn import fold_bn
from codegen.passes.fuse_epilogue import fuse_epilogue
from codegen.passes.layout import block_layout
from codegen.passes.memory_plan import plan_memory
from codegen.passes.precision import fp32_ends
from codegen.passes.quantize import fuse_conversions, quantize_int8
from codegen.passes.sparse import choose_storage
from codegen.passes.tune import TuningLookup, apply_tuning

PIPELINE: tuple[Callable[[Graph], Graph], ...] = (fold_bn, fuse_epilogue, plan_memory)


def pipeline(elem_bytes: int = 4, isa: VectorIsa | None = None,
             tuning: TuningLookup | None = None, target: Target | None = None,
             sparse: str = "auto", int8: Callable[[Graph], Graph] | None = None
             ) -> tuple[Callable[[Graph], Graph], ...]:
    """The pipeline with the memory plan sized for ``elem_bytes``-byte elements; with a CPU
    vector ``isa``, activations are laid out in blocks of its width first; with a ``tuning``
    lookup (and the ``target`` it is asked about), its answers are set before the layout (which
    fills in the cost model's defaults for the rest). ``sparse``: the sparse pass's policy
    ("auto" or "always", see ``choose_storage``). An fp16 ISA (``NEON_FP16``) keeps the
    graph's inputs and outputs in float32 (``fp32_ends``). ``int8``: the quantization pass
    (``partial(quantize_int8, calibration=..., lanes=isa.floats)``), run after epilogue
    fusion; the layout's conversions then fuse with its (``fuse_conversions``)."""
    if int8 is not None:
        if isa is None:
            raise ValueError("pipeline(int8=...) needs the vector isa")
        return (fold_bn, fuse_epilogue, int8, *tune_pass(tuning, target),
                partial(choose_storage, isa=isa, policy=sparse), partial(block_layout, isa=isa),
                partial(fuse_conversions, lanes=isa.floats), plan_memory)
    layout = ((partial(choose_storage, isa=isa, policy=sparse), partial(block_layout, isa=isa))
              if isa is not None else ())
    if isa is not None and isa.elem_bytes != 4:
        layout = (*layout, fp32_ends)
        return (fold_bn, fuse_epilogue, *tune_pass(tuning, target), *layout,
                partial(plan_memory, elem_bytes=isa.elem_bytes, fp32_ends=True))
    tune = tune_pass(tuning, target)
    if elem_bytes == 4 and not layout and not tune:
        return PIPELINE
    return (fold_bn, fuse_epilogue, *tune, *layout,
            partial(plan_memory, elem_bytes=elem_bytes))


def tune_pass(tuning: TuningLookup | None, target: Target | None
              ) -> tuple[Callable[[Graph], Graph], ...]:
    if tuning is not None and target is None:
        raise ValueError("pipeline(tuning=...) needs the target the lookup is asked about")
    return (partial(apply_tuning, lookup=tuning, target=target),) if tuning is not None else ()


def run_passes(graph: Graph, pipeline: tuple[Callable[[Graph], Graph], ...] = PIPELINE
               ) -> Graph:
    for p in pipeline:
        graph = p(graph)
    return graph


__all__ = ["PIPELINE", "TuningLookup", "apply_tuning", "block_layout", "fold_bn",
           "fp32_ends", "fuse_conversions", "fuse_epilogue", "pipeline", "plan_memory",
           "quantize_int8", "run_passes"]
