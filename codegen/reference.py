"""Reference executor: run an LR Graph layer by layer with torch ops, no compiler involved.

It checks capture and the passes (BN folding, epilogue fusion) against the original module in
the pure-Python test tier; the emitted kernels are checked against torch separately. What each
op computes is its ``reference`` in ``codegen.lr.OPS`` (activations: ``ACTIVATIONS[a].torch_fn``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from codegen.lr import ACTIVATIONS, OPS, Graph


def run_reference(graph: Graph, inputs: Sequence[np.ndarray | torch.Tensor]) -> list[np.ndarray]:
    """Execute ``graph`` on ``inputs`` (in ``graph.inputs`` order); return its outputs."""
    env: dict[str, torch.Tensor] = {}
    for name, x in zip(graph.inputs, inputs, strict=True):
        env[name] = torch.as_tensor(np.asarray(x, dtype=np.float32))
    with torch.no_grad():
        for la in graph.layers:
            if la.op in ("input", "output"):
                continue
            op = OPS.get(la.op)
            if op is None or op.reference is None:
                raise NotImplementedError(f"reference executor has no {la.op}")
            y = op.reference(la, [env[t] for t in la.inputs], graph.shapes[la.output])
            for e in la.epilogue:
                # "add": a fused residual, the layer's second input
                y = y + env[la.inputs[1]] if e == "add" else ACTIVATIONS[e].torch_fn(y)
            env[la.output] = y
    return [env[t].numpy() for t in graph.outputs]
