"""Fuse element-wise work into the epilogue of the layer that produces its input.

Activations fuse into the conv2d, linear or add that produces their input; a residual ``add``
(``conv(x) + skip``) fuses into the conv2d: the conv gains the skip tensor as its second input
and the epilogue step ``"add"`` (out = act(conv + bias + skip)). Only when the producer's
output has exactly one consumer and is not a graph output, so no one else needs the
intermediate value. Chains (conv -> add -> relu) fuse repeatedly.

The fused conv takes the add's place in the layer order (the skip may be computed after the
conv's input). The memory plan keeps the skip alive until then; a step's inputs never share
bytes with its output, so the conv never writes over the skip.
"""

from __future__ import annotations

from dataclasses import replace

from codegen.lr import ACTIVATIONS, Graph, Layer

FUSABLE_PRODUCERS = ("conv2d", "linear", "add")


def fuse_epilogue(graph: Graph) -> Graph:
    layers = list(graph.layers)
    while _fuse_one_activation(graph, layers) or _fuse_one_residual(graph, layers):
        pass
    return graph.with_layers(layers)


def _sole_producer(graph: Graph, layers: list[Layer], src: str, user: Layer) -> Layer | None:
    """The layer producing ``src`` when ``user`` is its only consumer and it is no output."""
    prod = next((la for la in layers if la.output == src), None)
    users = [la for la in layers if src in la.inputs]
    if prod is None or users != [user] or src in graph.outputs:
        return None
    return prod


def _fuse_one_activation(graph: Graph, layers: list[Layer]) -> bool:
    for act in layers:
        if act.op not in ACTIVATIONS:
            continue
        prod = _sole_producer(graph, layers, act.inputs[0], act)
        if prod is None or prod.op not in FUSABLE_PRODUCERS:
            continue
        layers[layers.index(prod)] = replace(prod, output=act.output,
                                             epilogue=prod.epilogue + (act.op,))
        layers.remove(act)
        return True
    return False


def _fuse_one_residual(graph: Graph, layers: list[Layer]) -> bool:
    for add in layers:
        if add.op != "add" or len(add.inputs) != 2 or add.inputs[0] == add.inputs[1]:
            continue
        for k in (0, 1):
            src, skip = add.inputs[k], add.inputs[1 - k]
            conv = _sole_producer(graph, layers, src, add)
            # the skip is added right after the bias, before any activation; same shape only
            if conv is None or conv.op != "conv2d" or conv.epilogue or len(conv.inputs) != 1 \
                    or graph.shapes[src] != graph.shapes[skip]:
                continue
            fused = replace(conv, inputs=(*conv.inputs, skip), output=add.output,
                            epilogue=("add", *add.epilogue))
            layers[layers.index(add)] = fused
            layers.remove(conv)
            return True
    return False
