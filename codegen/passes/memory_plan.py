"""Static memory plan: every activation buffer gets a fixed offset in one arena.

Lifetimes are intervals over the step order, inclusive at both ends, so a step's inputs and its
output never share bytes (kernels read inputs while writing the output). Graph inputs are live
from step 0, graph outputs to the end. Reshape aliases (flatten/reshape) share their source's
buffer and extend its lifetime. Offsets: greedy first-fit, biggest buffer first, 64-byte
aligned. ``peak_bytes`` is the largest sum of simultaneously live buffers (a lower bound for any
plan), reported next to ``arena_bytes`` so the plan's waste is visible.
"""

from __future__ import annotations

from dataclasses import replace

from codegen.lr import Graph, MemoryPlan, numel

ALIGN = 64


def align(n: int, a: int = ALIGN) -> int:
    return (n + a - 1) // a * a


def plan_memory(graph: Graph, elem_bytes: int = 4, fp32_ends: bool = False) -> Graph:
    """Plan the arena for tensors of ``elem_bytes`` per element (4: float32, 2: float16);
    with ``fp32_ends``, the graph's inputs and outputs take 4 bytes per element whatever
    ``elem_bytes`` is (fp16 CPU graphs, ``codegen/passes/precision.py``)."""
    steps = graph.steps
    end = len(steps)  # graph outputs live through the last step, and past it
    index = {la.output: i for i, la in enumerate(steps)}
    tensors = [t for la in graph.layers if la.op != "output" for t in [la.output]]
    root = {t: graph.alias_root(t) for t in tensors}
    roots = list(dict.fromkeys(root.values()))
    life = {r: [index.get(r, 0), index.get(r, 0)] for r in roots}
    for i, la in enumerate(steps):
        for t in la.inputs:
            life[root[t]][1] = max(life[root[t]][1], i)
    for t in graph.outputs:
        life[root[t]][1] = end
    wide = set(graph.inputs) | set(graph.outputs) if fp32_ends else set()
    size = {r: align(numel(graph.shapes[r]) * (4 if r in wide else elem_bytes)) for r in roots}
    for r in roots:  # an int8 graph's uint8 tensors (codegen/passes/quantize.py)
        if r in graph.quant:
            size[r] = align(numel(graph.shapes[r]))

    offsets: dict[str, int] = {}
    for r in sorted(roots, key=lambda r: (-size[r], life[r][0])):
        lo, hi = life[r]
        busy = sorted((offsets[o], offsets[o] + size[o]) for o in offsets
                      if life[o][0] <= hi and lo <= life[o][1])
        off = 0
        for b0, b1 in busy:
            if off + size[r] <= b0:
                break
            off = max(off, b1)
        offsets[r] = off
    arena = max((offsets[r] + size[r] for r in roots), default=0)
    # sparse convs may read (and drop) a few vectors past their input's end
    arena += align(max((la.attrs.get("overread_floats", 0) for la in steps), default=0)
                   * elem_bytes)

    peak, peak_step, peak_set = 0, 0, ()
    for s in range(end + 1):
        live = tuple(r for r in roots if life[r][0] <= s <= life[r][1])
        total = sum(size[r] for r in live)
        if total > peak:
            peak, peak_step, peak_set = total, s, live
    plan = MemoryPlan(offsets={t: offsets[root[t]] for t in tensors},
                      lifetimes={r: (life[r][0], life[r][1]) for r in roots},
                      arena_bytes=arena, peak_bytes=peak, peak_step=peak_step,
                      peak_tensors=peak_set)
    return replace(graph, plan=plan)


def buffer_size(graph: Graph, tensor: str, elem_bytes: int = 4) -> int:
    """Bytes reserved for ``tensor``'s buffer (its alias root's, 64-byte aligned)."""
    return align(numel(graph.shapes[graph.alias_root(tensor)]) * elem_bytes)
