"""int8 where there are int8 kernels, float32 elsewhere, and the conversions between them.

``quantize_int8`` (after epilogue fusion, before the layout pass) calibrates every tensor's
range on the calibration batches (``codegen.quant.calibrate``: min/max, or percentiles), marks
the layers that run in int8 (``attrs["precision"] = "int8"``: conv2d with groups 1 or
depthwise, and linear, whose fused epilogue is at most a residual add then ReLU/ReLU6, dense or
pruned with a block scheme (``INT8_SPARSE_SCHEMES``: the sparse pass then picks the int8
block-sparse kernel or the dense int8 one); and, where an input comes from an int8 layer
(``FOLLOW_INT8``), max and average pools (the global one too), add, concat, squeeze-excite's
``mul_channel``, reshapes and the activations as lookup tables) and gives the uint8 tensors
their ``QParams`` (``Graph.quant``).
A conv's or linear's epilogue activation without an int8 form (hardswish, sigmoid, ...) is
split off first (``split_tables``): the int8 conv writes the pre-activation tensor, a table
step the rest. Every other layer stays float32 (the reason is in ``fp32_layers``): a
mixed-precision graph. Conversions go only where precision changes: an int8 layer that reads a
float32 tensor gets a ``quantize`` step (one per tensor, ``<t>_q8``); an int8 layer whose
output only float32 layers (or the caller) read writes float32 itself (its requantization
dequantizes instead: no step); one read both ways writes uint8 (``<t>_q8``) and a
``dequantize`` step restores ``<t>``. The graph's inputs and outputs stay float32.

``fuse_conversions`` (after the layout pass) names the blocked copies of uint8 tensors in
``Graph.quant`` and fuses a conversion with the layout change beside it: ``quantize`` then
``to_nchwxc`` becomes one ``quantize`` writing blocked uint8 (the graph input's), ``to_nchw``
then ``dequantize`` one reading blocked, and so on; the kernels take any of the four layout
pairs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from codegen.cost import conv_kind
from codegen.lr import ALIAS_OPS, OPS, CodegenError, Graph, Layer
from codegen.quant import (
    INT8_ACTIVATIONS,
    LUT_OPS,
    POOL_OPS,
    calibrate,
    is_int8,
    qparams_from_range,
)

Q8 = "_q8"
# Pruning schemes whose layers run in int8: the block-sparse int8 kernels
# (``codegen/emit/sparse/q8.py``; ``choose_storage`` gives them one where it saves work, the
# dense int8 kernel otherwise). Unstructured, pattern and connectivity layers keep their
# float32 sparse kernels: their kept weights rarely fill the 4-channel groups of an int8 entry.
INT8_SPARSE_SCHEMES = ("block", "block_punched")


# Ops with int8 kernels that run in int8 where an input comes from an int8 layer (never
# around a float32 one: that would only add conversions): pools, add, concat, mul_channel (an
# SE block's x * gate), the activations as lookup tables (``codegen.quant.LUT_OPS``), and
# reshapes (a uint8 alias of a uint8 tensor).
FOLLOW_INT8 = ("maxpool2d", *POOL_OPS, "add", "concat", "mul_channel", *LUT_OPS, *ALIAS_OPS)


def _table_start(la: Layer) -> int:
    """Where ``la``'s epilogue stops being one an int8 kernel fuses: the activations from
    there on become a lookup-table step after it (``len(la.epilogue)``: none)."""
    for k, e in enumerate(la.epilogue):
        if e in LUT_OPS and "add" not in la.epilogue[k:]:
            return k
    return len(la.epilogue)


def _follow_reason(la: Layer) -> str | None:
    """Why a ``FOLLOW_INT8`` op cannot run in int8 even after an int8 layer (None: it can)."""
    if la.op in LUT_OPS:
        bad = "add" in la.epilogue
    elif la.op == "add":
        bad = len(la.inputs) != 2 or any(e not in INT8_ACTIVATIONS for e in la.epilogue)
    else:
        bad = bool(la.epilogue)
    if bad:
        return f"epilogue {'+'.join(la.epilogue)} (no int8 kernel fuses it after {la.op})"
    return None


def int8_reason(la: Layer, lanes: int) -> str | None:
    """Why ``la`` has no int8 kernel (None: it has one). A conv's or linear's hardswish,
    sigmoid, ... epilogue does not stop it: the pass runs those as a lookup table after it."""
    if la.op in FOLLOW_INT8:
        if la.op == "maxpool2d" and not la.epilogue:
            return "an int8 max pool needs an int8 layer before it"
        return _follow_reason(la) or f"an int8 {la.op} needs an int8 layer before it"
    if la.op not in ("conv2d", "linear"):
        return f"no int8 kernel for {la.op}"
    if (la.storage != "dense" or la.scheme != "dense") and la.scheme not in INT8_SPARSE_SCHEMES:
        return (f"pruned ({la.scheme}): sparse + int8 is built for "
                f"{' and '.join(INT8_SPARSE_SCHEMES)} pruning; its float32 sparse kernel runs")
    if la.scheme != "dense" and la.op == "conv2d" and la.attrs["groups"] != 1:
        return f"pruned ({la.scheme}) grouped conv: sparse kernels are float32"
    if la.op == "conv2d" and conv_kind(la, lanes) not in ("dense", "depthwise"):
        return "grouped conv whose groups are not whole vectors"
    if la.op == "conv2d" and la.attrs["groups"] > 1 and conv_kind(la, lanes) == "dense":
        return "grouped conv (int8 has groups 1 and depthwise)"
    fused = la.epilogue[:_table_start(la)]
    acts = [e for e in fused if e != "add"]
    bad = [e for e in acts if e not in INT8_ACTIVATIONS]
    if bad or "add" in fused[1:] or (la.op == "linear" and "add" in fused):
        return (f"epilogue {'+'.join(la.epilogue)} (int8 fuses a residual, then ReLU/ReLU6; "
                "a lookup table the activations after them)")
    return None


def split_tables(graph: Graph, lanes: int, keep_fp32: Sequence[str] = ()) -> Graph:
    """Each conv/linear that runs in int8 with activations its int8 kernel does not fuse
    (hardswish, sigmoid, ...) writes ``<t>_pre`` and a lookup-table step (``<layer>.<act>``,
    the op the first such activation, the rest its epilogue) writes ``<t>``."""
    out, shapes = [], dict(graph.shapes)
    for la in graph.layers:
        k = _table_start(la) if la.op in ("conv2d", "linear") else len(la.epilogue)
        if (k == len(la.epilogue) or la.name in keep_fp32
                or int8_reason(la, lanes) is not None):
            out.append(la)
            continue
        pre = la.output + "_pre"
        shapes[pre] = graph.shapes[la.output]
        out.append(replace(la, output=pre, epilogue=la.epilogue[:k]))
        out.append(Layer(f"{la.name}.{la.epilogue[k]}", la.epilogue[k], (pre,), la.output,
                         epilogue=la.epilogue[k + 1:]))
    if len(out) == len(graph.layers):
        return graph
    return replace(graph, layers=tuple(out), shapes=shapes, plan=None)


def quantize_int8(graph: Graph, calibration: Sequence[Sequence[np.ndarray]], lanes: int,
                  keep_fp32: Sequence[str] = (), method: str = "minmax") -> Graph:
    """The mixed int8/float32 graph (see the module doc); ``lanes`` is the vector width
    (channels per block); layers named in ``keep_fp32`` stay float32; ``method``: how
    activation ranges are calibrated (``codegen.quant.calibrate``: "minmax",
    "percentile:P")."""
    unknown = sorted(set(keep_fp32) - {la.name for la in graph.layers})
    if unknown:
        steps = [la.name for la in graph.layers if la.is_step]
        raise CodegenError(f"keep in float32: no layer named {', '.join(map(repr, unknown))}; "
                           f"the model's layers are {', '.join(steps[:8])}"
                           f"{', ...' if len(steps) > 8 else ''}")
    graph = split_tables(graph, lanes, keep_fp32)
    ranges = calibrate(graph, calibration, method)
    int8 = {la.name for la in graph.layers
            if la.name not in keep_fp32 and int8_reason(la, lanes) is None}
    # pools, add, concat, tables and reshapes of a uint8 tensor stay uint8 (to a fixed point:
    # a pool after a pool)
    producer = {la.output: la for la in graph.layers}
    changed = True
    while changed:
        changed = False
        for la in graph.layers:
            if (la.op in FOLLOW_INT8 and la.name not in int8 and la.name not in keep_fp32
                    and _follow_reason(la) is None
                    and any(producer[t].name in int8 for t in la.inputs if t in producer)):
                int8.add(la.name)
                changed = True
    consumers: dict[str, list[Layer]] = {}
    for la in graph.layers:
        for t in la.inputs:
            consumers.setdefault(t, []).append(la)

    def wants_u8(t: str) -> bool:
        return any(c.name in int8 for c in consumers.get(t, ()))

    def wants_f32(t: str) -> bool:
        return t in graph.outputs or any(c.name not in int8 for c in consumers.get(t, ()))

    shapes, quant = dict(graph.shapes), {}
    u8_name: dict[str, str] = {}  # float32 tensor -> its uint8 version
    out: list[Layer] = []
    pending: list[Layer] = []

    def add_u8(t: str) -> str:
        name = t + Q8
        shapes[name] = graph.shapes[t]
        quant[name] = qparams_from_range(*ranges[t])
        u8_name[t] = name
        return name

    for la in graph.layers:
        if la.op == "input":
            out.append(la)
            if wants_u8(la.output):
                q = add_u8(la.output)
                pending.append(Layer(f"{la.output}.quantize", "quantize", (la.output,), q))
            continue
        if la.op != "output" and pending:
            out += pending
            pending = []
        if la.name in int8:
            ins = []
            for t in la.inputs:
                if t not in u8_name:  # a float32 tensor: quantized once, before its first use
                    out.append(Layer(f"{t}.quantize", "quantize", (t,), add_u8(t)))
                ins.append(u8_name[t])
            y = la.output
            attrs = {**la.attrs, "precision": "int8"}
            if la.op == "conv2d" and conv_kind(la, lanes) == "depthwise":
                attrs["overread_floats"] = 16  # q8.dw_dot loads pixels past its input
            if la.op in ("maxpool2d", *ALIAS_OPS) or wants_u8(y):
                qy = add_u8(y)
                # a max pool and a reshape write their input's quantization, a concat its
                # inputs' when they share one (a copy)
                if la.op in ("maxpool2d", *ALIAS_OPS) or (
                        la.op == "concat" and len({quant[t] for t in ins}) == 1):
                    quant[qy] = quant[ins[0]]
                out.append(replace(la, inputs=tuple(ins), output=qy, attrs=attrs))
                if wants_f32(y):
                    out.append(Layer(f"{y}.dequantize", "dequantize", (qy,), y))
            else:
                out.append(replace(la, inputs=tuple(ins), attrs=attrs))
            continue
        out.append(la)
    out += pending
    return replace(graph, layers=tuple(out), shapes=shapes, quant=quant, plan=None)


def fp32_layers(graph: Graph, lanes: int, keep_fp32: Sequence[str] = ()) -> dict[str, str]:
    """The steps of a quantized graph that run in float32, and why (conversions left out)."""
    out = {}
    for la in graph.steps:
        if is_int8(la) or OPS[la.op].kind == "internal":
            continue
        out[la.name] = ("kept in float32 (asked)" if la.name in keep_fp32
                        else int8_reason(la, lanes) or "its input is float32")
    return out


def fuse_conversions(graph: Graph, lanes: int) -> Graph:
    """After the layout pass: ``Graph.quant`` for the blocked copies, and each ``quantize`` /
    ``dequantize`` fused with a layout conversion it alone reads or feeds (see the doc)."""
    suffix = f"_nchw{lanes}c"
    quant = dict(graph.quant)
    for t in graph.shapes:
        if t.endswith(suffix) and t[:-len(suffix)] in graph.quant:
            quant[t] = graph.quant[t[:-len(suffix)]]
    layers = list(graph.layers)

    def users(t: str) -> list[Layer]:
        return [la for la in layers if t in la.inputs]

    def fuse_once() -> bool:
        for conv in ("quantize", "dequantize"):
            for la in layers:
                if la.op != conv:
                    continue
                # the layout conversion before it, read by it alone
                prev = next((p for p in layers if p.output == la.inputs[0]), None)
                if (prev is not None and prev.op in ("to_nchwxc", "to_nchw")
                        and users(prev.output) == [la] and prev.output not in graph.outputs):
                    layers[layers.index(la)] = replace(la, inputs=prev.inputs)
                    layers.remove(prev)
                    return True
                # the layout conversion after it, its only reader
                nxt = users(la.output)
                if (len(nxt) == 1 and nxt[0].op in ("to_nchwxc", "to_nchw")
                        and la.output not in graph.outputs):
                    layers[layers.index(la)] = replace(la, output=nxt[0].output)
                    layers.remove(nxt[0])
                    return True
        return False

    while fuse_once():
        pass
    g = replace(graph, quant=quant).with_layers(layers)
    used = set(g.shapes)
    return narrow_inputs(replace(g, quant={k: v for k, v in quant.items() if k in used}))


NARROW = 4  # channels per pixel block of a narrow int8 input (a multiple of every group)


def narrow_inputs(graph: Graph) -> Graph:
    """A uint8 tensor of at most NARROW channels that a ``quantize`` step writes blocked and
    only dense int8 convs read (the stem's image) is blocked by NARROW channels instead of a
    whole vector: its conv then runs NARROW channels per tap, not x (3 of 16 useful on
    AVX-512: the stem took 28% of resnet18's int8 time)."""
    layers, shapes, quant = list(graph.layers), dict(graph.shapes), dict(graph.quant)
    for i, la in enumerate(layers):
        t = la.output
        if (la.op != "quantize" or len(shapes[t]) != 5 or t in graph.outputs
                or shapes[t][4] <= NARROW):
            continue
        readers = [r for r in layers if t in r.inputs]
        src = shapes[la.inputs[0]]
        c = src[1] if len(src) == 4 else None  # a blocked source's real channels are unknown
        if (c is None or c > NARROW or shapes[t][1] != 1 or not readers
                or any(r.op != "conv2d" or not is_int8(r) or r.inputs[0] != t
                       or r.attrs["groups"] != 1 for r in readers)):
            continue
        n, _, h, w, _ = shapes[t]
        name = f"{t}_narrow{NARROW}c"
        shapes[name] = (n, 1, h, w, NARROW)
        quant[name] = quant[t]
        layers = [replace(r, inputs=tuple(name if x == t else x for x in r.inputs))
                  if t in r.inputs else r for r in layers]
        layers[i] = replace(la, output=name)
    if layers == list(graph.layers):
        return graph
    g = replace(graph, shapes=shapes, quant=quant, plan=None).with_layers(layers)
    return replace(g, quant={k: v for k, v in quant.items() if k in g.shapes})
