"""float32 at a reduced-precision graph's ends: where an fp16 CPU graph meets the caller.

An fp16 CPU bundle (``NEON_FP16``) stores every activation in half precision except the graph's
inputs and outputs, which stay float32: the runner's CPU backend, and the host session, pass
model inputs and outputs as float32, and the caller gets the dtype it gave. The conversion is
fused where a step already touches the tensor: a layout conversion (``to_nchwxc`` reading an
input, ``to_nchw`` writing an output) converts while it copies; anywhere else a ``cast`` step
(element-wise, plain layout) is inserted: ``<t>_f16`` from input ``t``, output ``t`` from
``<t>_f16``. Runs after the layout pass (which decides what reads and writes the ends) and
before the memory plan (``plan_memory(fp32_ends=True)`` sizes the ends at 4 bytes).
"""

from __future__ import annotations

from dataclasses import replace

from codegen.lr import Graph, Layer

CAST = "cast"
F16 = "_f16"


def fp32_ends(graph: Graph) -> Graph:
    """Insert the casts an fp16 graph needs at its inputs and outputs (see the module doc)."""
    layers = list(graph.layers)
    shapes = dict(graph.shapes)
    for t in graph.inputs:
        users = [la for la in layers if t in la.inputs and la.op not in ("to_nchwxc", "output")]
        if not users:
            continue
        h = t + F16
        shapes[h] = shapes[t]
        users_set = {id(la) for la in users}
        layers = [replace(la, inputs=tuple(h if x == t else x for x in la.inputs))
                  if id(la) in users_set else la for la in layers]
        at = next(i for i, la in enumerate(layers) if la.op != "input")
        layers.insert(at, Layer(f"{t}.{CAST}", CAST, (t,), h, {"dtype": "float16"}))
    casts = []
    for t in graph.outputs:
        i = next((i for i, la in enumerate(layers) if la.output == t), None)
        read_inside = any(t in la.inputs for la in layers if la.op != "output")
        if i is None or layers[i].op == "input" or (layers[i].op == "to_nchw"
                                                    and not read_inside):
            continue  # written in float32 by its layout conversion (or a graph input)
        h = t + F16
        shapes[h] = shapes[t]
        layers[i] = replace(layers[i], output=h)
        layers = [replace(la, inputs=tuple(h if x == t else x for x in la.inputs))
                  if la.op != "output" else la for la in layers]
        casts.append(Layer(f"{t}.{CAST}", CAST, (h,), t, {"dtype": "float32"}))
    steps = [la for la in layers if la.op != "output"]
    ends = [la for la in layers if la.op == "output"]
    return replace(graph, layers=(*steps, *casts, *ends), shapes=shapes, plan=None)

