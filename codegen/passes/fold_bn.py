"""Fold each BatchNorm2d into the conv2d before it (eval-mode running stats).

w' = w * gamma / sqrt(var + eps) per output channel, b' = (b - mean) * that + beta, computed in
float64. A BatchNorm that does not directly follow a conv whose output feeds only it is refused
(not kept as a per-channel affine): every CNN we target has conv -> BN, and a refusal is clearer
than a slow extra kernel nobody measured.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from codegen.lr import Graph, Layer, UnsupportedOp


def fold_bn(graph: Graph) -> Graph:
    layers = list(graph.layers)
    for bn in [la for la in layers if la.op == "batchnorm2d"]:
        src = bn.inputs[0]
        conv = next((la for la in layers if la.output == src), None)
        users = [la for la in layers if src in la.inputs]
        if conv is None or conv.op != "conv2d" or conv.epilogue or len(users) != 1 \
                or src in graph.outputs:
            what = "a graph input" if conv is None or conv.op == "input" else \
                f'layer "{conv.name}" ({conv.op}) whose output has {len(users)} consumer(s)'
            raise UnsupportedOp(
                f'layer "{bn.name}" (BatchNorm2d): follows {what}; only a BatchNorm directly '
                "after a conv2d that feeds nothing else can be folded. Move the BatchNorm "
                "after a conv or remove it")
        layers[layers.index(conv)] = _fold(conv, bn)
        layers.remove(bn)
    return graph.with_layers(layers)


def _fold(conv: Layer, bn: Layer) -> Layer:
    p = bn.params
    scale = p["gamma"].astype(np.float64) / np.sqrt(p["var"].astype(np.float64) + bn.attrs["eps"])
    w = conv.params["weight"].astype(np.float64) * scale[:, None, None, None]
    b = (conv.params["bias"].astype(np.float64) - p["mean"]) * scale + p["beta"]
    return replace(conv, output=bn.output,
                   params={"weight": w.astype(np.float32), "bias": b.astype(np.float32)})
