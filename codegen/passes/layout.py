"""Blocked activation layout for the CPU: NCHW[x]c between vectorised layers, NCHW at the edges.

x is the target's vector width in floats (``VectorIsa.floats``). A blocked tensor gets its own
name (``<tensor>_nchw<x>c``) and its physical shape (N, ceil(C/x), H, W, x), so the memory plan
sizes the padding without knowing about layouts. Channels are padded with zero weights (see
``codegen/emit/cpu/pack.py``), so pad lanes never reach a real channel; a conv writes exact zeros
there before its epilogue (an activation with f(0) != 0, e.g. sigmoid, leaves f(0)).

Greedy, in execution order: a conv with a vectorised kernel (``cost.vector_conv``) produces a
blocked tensor (a dense conv reads its input in whatever layout exists, plain for the first layer;
depthwise, grouped and Winograd ones read blocked); pools, activations, add and mul_channel
follow their first input's layout (the other operand is converted), except windowed pools,
which are blocked (the scalar NCHW ones are 10-30x slower: NaN-propagating compares that do
not vectorise; a conversion costs less) unless they are stride-2 max pools on a wide plain
input (a sparse conv's output), which have a vectorised plain kernel; concat is blocked when
every input but the last fills whole blocks. Everything else (linear, flatten, graph outputs,
scalar-fallback convs) reads plain NCHW. A layout a consumer needs and nobody produced comes
from one conversion step (``to_nchwxc``/``to_nchw``), shared by all such consumers. Also fills
each vectorised conv's ``tuning`` with the cost model's defaults (explicit values are kept).
A conv's fused residual (its second input) is read in the layout the conv writes. Sparse convs
read and write plain NCHW, except those whose format reads blocked activations
(``SPARSE_FORMATS[storage].reads_blocked``: "bcsr_blocked" 1x1 convs), blocked like dense convs.
"""

from __future__ import annotations

from dataclasses import replace

from codegen.cost import WINOGRAD, conv_kind, default_tuning, plain_pool_ok, vector_conv
from codegen.isa import VectorIsa
from codegen.lr import OPS, Graph, Layer, reads_blocked

TO_BLOCKED, TO_PLAIN = "to_nchwxc", "to_nchw"
FOLLOW_OPS = tuple(name for name, op in OPS.items() if op.follows_layout)


def blocked_shape(shape: tuple[int, ...], x: int) -> tuple[int, ...]:
    n, c, h, w = shape
    return (n, -(-c // x), h, w, x)


def block_layout(graph: Graph, isa: VectorIsa) -> Graph:
    x = isa.floats
    if x <= 1:
        return graph
    shapes = dict(graph.shapes)
    blocked: dict[str, str] = {}  # logical tensor -> name of its blocked version
    plain: set[str] = set()  # logical tensors whose plain version exists
    out: list[Layer] = []

    def get(t: str, want_blocked: bool, who: Layer) -> str:
        if want_blocked:
            if t not in blocked:
                name = f"{t}_nchw{x}c"
                shapes[name] = blocked_shape(graph.shapes[t], x)
                out.append(Layer(f"{who.name}.{TO_BLOCKED}", TO_BLOCKED, (t,), name,
                                 {"block": x}))
                blocked[t] = name
            return blocked[t]
        if t not in plain:
            out.append(Layer(f"{who.name}.{TO_PLAIN}", TO_PLAIN, (blocked[t],), t, {"block": x}))
            plain.add(t)
        return t

    def four_d(t: str) -> bool:
        return len(graph.shapes[t]) == 4

    for la in graph.layers:
        if la.op == "input":
            out.append(la)
            plain.add(la.output)
            continue
        ins = la.inputs
        make_blocked = False
        reads: tuple[bool, ...] = ()
        if la.op == "conv2d" and four_d(la.output) and reads_blocked(la.storage):
            make_blocked, reads = True, (True,)
        elif la.op == "conv2d" and vector_conv(la, graph.shapes[la.output], x):
            make_blocked = True
            if conv_kind(la, x) == "dense" and la.attrs["groups"] == 1:
                # the plain input is cheaper when it exists and is narrower than a block;
                # Winograd reads blocked input only
                c = graph.shapes[ins[0]][1]
                algo = {**default_tuning(la, blocked_shape(graph.shapes[la.output], x), isa),
                        **la.tuning}.get("algo", "direct")
                reads = (algo in WINOGRAD or la.attrs.get("precision") == "int8"
                         or (ins[0] in blocked and not (ins[0] in plain and c < x)),)
            else:
                reads = (True,)
        elif la.op in FOLLOW_OPS and four_d(la.output) and all(four_d(t) for t in ins):
            make_blocked = (ins[0] in blocked
                            or (la.op in ("maxpool2d", "avgpool2d")
                                and not plain_pool_ok(la, graph.shapes[ins[0]][3], x))
                            or (la.op == "add" and any(t in blocked for t in ins)))
            reads = (make_blocked,) * len(ins)
        elif la.op == "concat" and four_d(la.output) and ins[0] in blocked:
            make_blocked = all(graph.shapes[t][1] % x == 0 for t in ins[:-1])
            reads = (make_blocked,) * len(ins)
        if la.op == "conv2d" and (la.storage == "dense" or reads_blocked(la.storage)):
            # a fused residual (the skip) is read in the layout the conv writes
            reads = (*(reads or (False,)), *(make_blocked,) * (len(ins) - 1))
        if not reads:
            reads = (False,) * len(ins)
        new_ins = tuple(get(t, r, la) for t, r in zip(ins, reads, strict=True))
        if make_blocked:
            name = f"{la.output}_nchw{x}c"
            shapes[name] = blocked_shape(graph.shapes[la.output], x)
            blocked[la.output] = name
            tuning = la.tuning
            if la.op == "conv2d" and la.storage == "dense":
                tuning = {**default_tuning(la, shapes[name], isa), **la.tuning}
            out.append(replace(la, inputs=new_ins, output=name, tuning=tuning))
        else:
            out.append(replace(la, inputs=new_ins))
            if la.op != "output":
                plain.add(la.output)
    # graph outputs are read in NCHW after the last step
    for t in graph.outputs:
        if t not in plain:
            get(t, False, Layer(t, "output", (), ""))
    out = _outputs_last(out)
    used = {t for la in out for t in (*la.inputs, la.output)}
    return replace(graph, layers=tuple(out), shapes={k: v for k, v in shapes.items()
                                                      if k in used}, plan=None)


def _outputs_last(layers: list[Layer]) -> list[Layer]:
    """Keep "output" marker layers after every step (conversions were appended after them)."""
    return [la for la in layers if la.op != "output"] + [la for la in layers if la.op == "output"]
