"""Fold each BatchNorm2d into the conv2d before it (eval-mode running stats); any other
BatchNorm (after a concat, a pool, an input: DenseNet's) becomes a per-channel affine step.

w' = w * gamma / sqrt(var + eps) per output channel, b' = (b - mean) * that + beta, computed in
float64. A BatchNorm that does not directly follow a conv whose output feeds only it is kept as
y = x * scale + shift per channel, written as a depthwise 1x1 conv2d (weight = scale, bias =
shift): every emitter already has fast kernels for it, and the activation after it fuses into
its epilogue like after any conv.
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
            if len(graph.shapes[src]) != 4:
                raise UnsupportedOp(f'layer "{bn.name}" (BatchNorm2d): input of shape '
                                    f"{list(graph.shapes[src])}; only 4-D [N,C,H,W]")
            layers[layers.index(bn)] = _affine(bn)
            continue
        layers[layers.index(conv)] = _fold(conv, bn)
        layers.remove(bn)
    return graph.with_layers(layers)


def _scale(bn: Layer) -> np.ndarray:
    p = bn.params
    return p["gamma"].astype(np.float64) / np.sqrt(p["var"].astype(np.float64) + bn.attrs["eps"])


def _affine(bn: Layer) -> Layer:
    """The BatchNorm as a depthwise 1x1 conv2d: x * scale + (beta - mean * scale)."""
    p, scale = bn.params, _scale(bn)
    c = scale.shape[0]
    shift = p["beta"].astype(np.float64) - p["mean"] * scale
    attrs = {"kernel": (1, 1), "stride": (1, 1), "padding": (0, 0, 0, 0), "dilation": (1, 1),
             "groups": c}
    return replace(bn, op="conv2d", attrs=attrs,
                   params={"weight": scale.reshape(c, 1, 1, 1).astype(np.float32),
                           "bias": shift.astype(np.float32)})


def _fold(conv: Layer, bn: Layer) -> Layer:
    p, scale = bn.params, _scale(bn)
    w = conv.params["weight"].astype(np.float64) * scale[:, None, None, None]
    b = (conv.params["bias"].astype(np.float64) - p["mean"]) * scale + p["beta"]
    return replace(conv, output=bn.output,
                   params={"weight": w.astype(np.float32), "bias": b.astype(np.float32)})
