"""Fuse an activation into the epilogue of the conv2d, linear or add that produces its input.

Only when that input has exactly one consumer (the activation) and is not a graph output, so no
one else needs the pre-activation value. Chains (conv -> relu -> sigmoid) fuse repeatedly; a
ReLU after a residual add becomes the add's epilogue.
"""

from __future__ import annotations

from dataclasses import replace

from codegen.lr import ACTIVATIONS, Graph

FUSABLE_PRODUCERS = ("conv2d", "linear", "add")


def fuse_epilogue(graph: Graph) -> Graph:
    layers = list(graph.layers)
    changed = True
    while changed:
        changed = False
        for act in layers:
            if act.op not in ACTIVATIONS:
                continue
            src = act.inputs[0]
            prod = next((la for la in layers if la.output == src), None)
            users = [la for la in layers if src in la.inputs]
            if prod is None or prod.op not in FUSABLE_PRODUCERS or len(users) != 1 \
                    or src in graph.outputs:
                continue
            layers[layers.index(prod)] = replace(prod, output=act.output,
                                                 epilogue=prod.epilogue + (act.op,))
            layers.remove(act)
            changed = True
            break
    return graph.with_layers(layers)
