"""The int8 graph of a model without compiling it: what a search scores a quantized candidate on.

``quantized_graph`` runs the passes ``compile_model`` runs up to and including the quantization
(capture, the pruning schemes, fold BN, fuse epilogues, ``quantize_int8`` with the same
calibration and ``keep_fp32``), so ``run_quantized`` on it (``codegen.quant.run_int8_reference``)
gives what the int8 bundle computes, bit for bit. ``int8_offers`` asks the quantization pass
(``int8_reason``) which conv/linear layers could run int8 under each pruning scheme, so a
search offers int8 only where the pass would give it (when sparse + int8 kernels cover more
schemes, the answer follows without changes on the caller's side).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace

import numpy as np
import torch

from codegen.frontend import capture
from codegen.lr import Graph
from codegen.passes.fold_bn import fold_bn
from codegen.passes.fuse_epilogue import fuse_epilogue
from codegen.passes.quantize import int8_reason, quantize_int8
from codegen.passes.sparse import with_schemes
from codegen.quant import is_int8, run_int8_reference


def _fused(module: torch.nn.Module, example_inputs, schemes: Mapping[str, str] | None) -> Graph:
    graph = capture(module, example_inputs)
    if schemes:
        graph = with_schemes(graph, schemes)
    return fuse_epilogue(fold_bn(graph))


def quantized_graph(module: torch.nn.Module,
                    example_inputs: torch.Tensor | Sequence[torch.Tensor],
                    calibration: Sequence[Sequence[np.ndarray | torch.Tensor]], lanes: int,
                    keep_fp32: Sequence[str] = (),
                    schemes: Mapping[str, str] | None = None,
                    calibration_method: str = "minmax") -> Graph:
    """``module``'s LR graph after the quantization pass, as ``compile_model`` with an int8
    toolchain of vector width ``lanes`` (and ``calibration_method``) builds it (before the
    layout pass)."""
    batches = [[np.asarray(t.detach().cpu() if isinstance(t, torch.Tensor) else t, np.float32)
                for t in b] for b in calibration]
    return quantize_int8(_fused(module, example_inputs, schemes), batches, lanes,
                         tuple(keep_fp32), calibration_method)


def run_quantized(graph: Graph, inputs: Sequence[np.ndarray | torch.Tensor]
                  ) -> list[np.ndarray]:
    """``quantized_graph``'s outputs for ``inputs``: what the int8 kernels compute."""
    return run_int8_reference(graph, inputs)


def int8_layer_names(graph: Graph) -> tuple[str, ...]:
    """The conv/linear layers of a quantized graph that run in int8."""
    return tuple(la.name for la in graph.layers
                 if la.op in ("conv2d", "linear") and is_int8(la))


def int8_offers(module: torch.nn.Module, example_inputs: torch.Tensor | Sequence[torch.Tensor],
                lanes: int, schemes: Sequence[str] = ("dense",)
                ) -> dict[str, dict[str, str | None]]:
    """Per conv/linear layer (module path), per pruning scheme in ``schemes`` ("dense" for an
    unpruned or filter/channel-narrowed layer, else a ``SPARSE_SCHEMES`` name): why the
    quantization pass would keep it float32, None where it would run it in int8."""
    graph = _fused(module, example_inputs, None)
    out: dict[str, dict[str, str | None]] = {}
    for la in graph.layers:
        if la.op not in ("conv2d", "linear"):
            continue
        out[la.name] = {s: int8_reason(replace(la, scheme=s), lanes) for s in schemes}
    return out
