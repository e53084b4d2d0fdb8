"""Reference executor: run an LR Graph layer by layer with torch ops, no compiler involved.

It checks capture and the passes (BN folding, epilogue fusion) against the original module in
the pure-Python test tier; the emitted kernels are checked against torch separately.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from codegen.lr import Graph, Layer

ACT = {"relu": F.relu, "relu6": F.relu6, "hardswish": F.hardswish,
       "hardsigmoid": F.hardsigmoid, "sigmoid": torch.sigmoid}


def run_reference(graph: Graph, inputs: Sequence[np.ndarray | torch.Tensor]) -> list[np.ndarray]:
    """Execute ``graph`` on ``inputs`` (in ``graph.inputs`` order); return its outputs."""
    env: dict[str, torch.Tensor] = {}
    for name, x in zip(graph.inputs, inputs, strict=True):
        env[name] = torch.as_tensor(np.asarray(x, dtype=np.float32))
    with torch.no_grad():
        for la in graph.layers:
            if la.op in ("input", "output"):
                continue
            y = _layer(la, [env[t] for t in la.inputs], graph.shapes[la.output])
            for e in la.epilogue:
                # "add": a fused residual, the layer's second input
                y = y + env[la.inputs[1]] if e == "add" else ACT[e](y)
            env[la.output] = y
    return [env[t].numpy() for t in graph.outputs]


def _layer(la: Layer, xs: list[torch.Tensor], shape: tuple[int, ...]) -> torch.Tensor:
    a, p = la.attrs, {k: torch.from_numpy(v) for k, v in la.params.items()}
    x = xs[0]
    if la.op == "conv2d":
        pt, pb, pl, pr = a["padding"]
        return F.conv2d(F.pad(x, (pl, pr, pt, pb)), p["weight"], p["bias"], a["stride"], 0,
                        a["dilation"], a["groups"])
    if la.op == "linear":
        return F.linear(x, p["weight"], p["bias"])
    if la.op == "batchnorm2d":
        return F.batch_norm(x, p["mean"], p["var"], p["gamma"], p["beta"], False, 0.0,
                            a["eps"])
    if la.op in ACT:
        return ACT[la.op](x)
    if la.op == "add":
        return x + xs[1]
    if la.op == "mul_channel":
        return x * xs[1]
    if la.op == "maxpool2d":
        return F.max_pool2d(x, a["kernel"], a["stride"], a["padding"], a["dilation"],
                            a["ceil_mode"])
    if la.op == "avgpool2d":
        return F.avg_pool2d(x, a["kernel"], a["stride"], a["padding"], a["ceil_mode"],
                            a["count_include_pad"])
    if la.op == "adaptive_avgpool2d":
        return F.adaptive_avg_pool2d(x, a["output_size"])
    if la.op in ("flatten", "reshape"):
        return x.reshape(shape)
    if la.op == "concat":
        return torch.cat(xs, dim=1)
    raise NotImplementedError(f"reference executor has no {la.op}")
