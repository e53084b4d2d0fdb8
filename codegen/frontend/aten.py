"""The torch.export front end: the ATen ops of an exported graph, one handler per op.

An exported program's module (``torch.export.load(path).module()``) is an fx graph whose calls
are ATen OpOverloads (``aten.conv2d.default``, ``aten.relu_.default``...) with parameters as
get_attr nodes. Each handler reads the op's arguments by the op's own schema (defaults filled
in) and calls the same ``GraphBuilder`` op builder as the nn.Module front end (``fx.py``), so both
give the same LR. The table is keyed by overload packet (activations: their ``aten`` names in
``codegen.lr.ACTIVATIONS``); anything not in it is refused naming the layer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.fx import Node

from codegen.frontend.builder import GraphBuilder
from codegen.lr import ACTIVATIONS

aten = torch.ops.aten
Handler = Callable[[GraphBuilder, Node, dict[str, Any]], None]


def schema_args(node: Node) -> dict[str, Any]:
    """The op's arguments by schema name, defaults filled in."""
    out: dict[str, Any] = {}
    for i, a in enumerate(node.target._schema.arguments):  # type: ignore[union-attr]
        if i < len(node.args):
            out[a.name] = node.args[i]
        elif a.name in node.kwargs:
            out[a.name] = node.kwargs[a.name]
        else:
            out[a.name] = a.default_value if a.has_default_value() else None
    return out


def handle(cap: GraphBuilder, node: Node) -> None:
    """Capture one ATen call. An in-place op (``relu_``) also rebinds the tensor it wrote, so
    later reads of that tensor see the new value, as they do in torch."""
    op = node.target
    fn = HANDLERS.get(op.overloadpacket)  # type: ignore[union-attr]
    if fn is None:
        raise cap.refuse(node)
    fn(cap, node, schema_args(node))
    first = op._schema.arguments[0] if op._schema.arguments else None  # type: ignore[union-attr]
    if (first is not None and first.alias_info is not None and first.alias_info.is_write
            and isinstance(node.args[0], Node) and cap.names.get(node) is not None):
        cap.names[node.args[0]] = cap.names[node]


def _conv2d(cap: GraphBuilder, node: Node, a: dict[str, Any]) -> None:
    cap.conv(node, a["input"], cap.constant(node, a["weight"]), cap.constant(node, a["bias"]),
             a["stride"], a["padding"], a["dilation"], a["groups"])


def _linear(cap: GraphBuilder, node: Node, a: dict[str, Any]) -> None:
    cap.linear(node, a["input"], cap.constant(node, a["weight"]), cap.constant(node, a["bias"]))


def _batch_norm(cap: GraphBuilder, node: Node, a: dict[str, Any]) -> None:
    if a["training"]:
        raise cap.refuse(node, "batch norm in training mode (batch statistics); call "
                         "model.eval() before torch.export.export")
    shape = cap.shape_of(node)
    if shape is None or len(shape) != 4:
        raise cap.refuse(node, f"batch norm of shape {shape}: only 4-D [N,C,H,W] "
                         "(BatchNorm2d) is supported")
    cap.batchnorm(node, a["input"], *(cap.constant(node, a[k]) for k in
                                      ("weight", "bias", "running_mean", "running_var")),
                  a["eps"])


def _unary(op: str) -> Handler:
    """An activation, or a reshape alias: one tensor in, ``op`` out."""
    def h(cap: GraphBuilder, node: Node, a: dict[str, Any]) -> None:
        cap.emit(node, op, [cap.tensor(node, node.args[0])])
    return h


def _hardtanh(cap: GraphBuilder, node: Node, a: dict[str, Any]) -> None:
    cap.hardtanh(node, a["self"], float(a["min_val"]), float(a["max_val"]))


def _add(cap: GraphBuilder, node: Node, a: dict[str, Any]) -> None:
    if a.get("alpha", 1) != 1:
        raise cap.refuse(node, f"add with alpha={a['alpha']} is not supported")
    cap.add(node, a["self"], a["other"])


def _sub(cap: GraphBuilder, node: Node, a: dict[str, Any]) -> None:
    if a.get("alpha", 1) != 1:
        raise cap.refuse(node, f"sub with alpha={a['alpha']} is not supported")
    cap.sub(node, a["self"], a["other"])


def _mul(cap: GraphBuilder, node: Node, a: dict[str, Any]) -> None:
    cap.mul(node, a["self"], a["other"])


def _max_pool2d(cap: GraphBuilder, node: Node, a: dict[str, Any]) -> None:
    cap.maxpool(node, a["self"], a["kernel_size"], a["stride"], a["padding"], a["dilation"],
                a["ceil_mode"], False)


def _avg_pool2d(cap: GraphBuilder, node: Node, a: dict[str, Any]) -> None:
    cap.avgpool(node, a["self"], a["kernel_size"], a["stride"], a["padding"], a["ceil_mode"],
                a["count_include_pad"], a["divisor_override"])


def _adaptive_avg_pool2d(cap: GraphBuilder, node: Node, a: dict[str, Any]) -> None:
    cap.adaptive(node, a["self"])


def _cat(cap: GraphBuilder, node: Node, a: dict[str, Any]) -> None:
    cap.cat(node)


def _dropout(cap: GraphBuilder, node: Node, a: dict[str, Any]) -> None:
    if a["train"]:
        raise cap.refuse(node, "dropout in training mode; call model.eval() before "
                         "torch.export.export")
    cap.passthrough(node, a["input"])


def _gelu(cap: GraphBuilder, node: Node, a: dict[str, Any]) -> None:
    if a.get("approximate", "none") != "none":
        raise cap.refuse(node, f"gelu(approximate={a['approximate']!r}) is not supported; use "
                         "approximate='none' (the erf form)")
    cap.emit(node, "gelu", [cap.tensor(node, a["self"])])


def _upsample(mode: str) -> Handler:
    def h(cap: GraphBuilder, node: Node, a: dict[str, Any]) -> None:
        sf = a.get("scale_factors")
        cap.interpolate(node, a["input"], a.get("output_size"), sf if sf else None, mode,
                        a.get("align_corners"), False)
    return h


def _conv_transpose2d(cap: GraphBuilder, node: Node, a: dict[str, Any]) -> None:
    cap.conv_transpose(node, a["input"], cap.constant(node, a["weight"]),
                       cap.constant(node, a["bias"]), a["stride"], a["padding"],
                       a["output_padding"], a["groups"], a["dilation"])


def _mean(cap: GraphBuilder, node: Node, a: dict[str, Any]) -> None:
    cap.mean(node, a["self"], a.get("dim"), bool(a.get("keepdim", False)))


def _sum(cap: GraphBuilder, node: Node, a: dict[str, Any]) -> None:
    cap.mean(node, a["self"], a.get("dim"), bool(a.get("keepdim", False)), "sum")


def _permute(cap: GraphBuilder, node: Node, a: dict[str, Any]) -> None:
    cap.permute(node, a["self"], a["dims"])


def _transpose(cap: GraphBuilder, node: Node, a: dict[str, Any]) -> None:
    nd = len(cap.shapes[cap.tensor(node, a["self"])])
    perm = list(range(nd))
    d0, d1 = int(a["dim0"]) % nd, int(a["dim1"]) % nd
    perm[d0], perm[d1] = perm[d1], perm[d0]
    cap.permute(node, a["self"], perm)


def _split(cap: GraphBuilder, node: Node, a: dict[str, Any]) -> None:
    """split (equal parts, the last smaller), split_with_sizes, chunk; parts via getitem."""
    size = cap.shapes[cap.tensor(node, a["self"])][int(a["dim"])]
    if "split_sizes" in a:
        sizes = [int(v) for v in a["split_sizes"]]
    else:
        step = int(a["split_size"]) if "split_size" in a else -(-size // int(a["chunks"]))
        sizes = [min(step, size - o) for o in range(0, size, step)]
    cap.split(node, a["self"], sizes, int(a["dim"]))


def _no_value(cap: GraphBuilder, node: Node, a: dict[str, Any]) -> None:
    cap.names[node] = None  # runtime checks and shape queries: no tensor to compute


HANDLERS: dict[Any, Handler] = {
    aten.conv2d: _conv2d,
    aten.linear: _linear,
    aten.batch_norm: _batch_norm,
    **{getattr(aten, op): _unary(name) for name, act in ACTIVATIONS.items() for op in act.aten},
    aten.hardtanh: _hardtanh, aten.hardtanh_: _hardtanh,
    aten.add: _add, aten.add_: _add,
    aten.mul: _mul, aten.mul_: _mul,
    aten.sub: _sub, aten.sub_: _sub,
    aten.max_pool2d: _max_pool2d,
    aten.avg_pool2d: _avg_pool2d,
    aten.adaptive_avg_pool2d: _adaptive_avg_pool2d,
    aten.flatten: _unary("flatten"),
    aten.view: _unary("reshape"), aten.reshape: _unary("reshape"),
    aten._unsafe_view: _unary("reshape"),
    aten.cat: _cat, aten.concat: _cat,
    aten.dropout: _dropout, aten.feature_dropout: _dropout,
    aten.gelu: _gelu, aten.gelu_: _gelu,
    aten.clamp: lambda cap, node, a: cap.clamp(node, a["self"], a["min"], a["max"]),
    aten.clamp_: lambda cap, node, a: cap.clamp(node, a["self"], a["min"], a["max"]),
    aten.leaky_relu: lambda cap, node, a: cap.leaky_relu(node, a["self"], a["negative_slope"]),
    aten.leaky_relu_: lambda cap, node, a: cap.leaky_relu(node, a["self"],
                                                          a["negative_slope"]),
    aten.prelu: lambda cap, node, a: cap.prelu(node, a["self"], cap.constant(node, a["weight"])),
    aten.upsample_nearest2d: _upsample("nearest"),
    aten.upsample_bilinear2d: _upsample("bilinear"),
    aten.conv_transpose2d: _conv_transpose2d,
    aten.pixel_shuffle: lambda cap, node, a: cap.pixel_shuffle(node, a["self"],
                                                              a["upscale_factor"]),
    aten.pixel_unshuffle: lambda cap, node, a: cap.pixel_shuffle(node, a["self"],
                                                                a["downscale_factor"], True),
    aten.mean: _mean, aten.sum: _sum,
    aten.contiguous: lambda cap, node, a: cap.passthrough(node, a["self"]),
    aten.clone: lambda cap, node, a: cap.passthrough(node, a["self"]),
    aten.permute: _permute, aten.transpose: _transpose,
    aten.split: _split, aten.split_with_sizes: _split, aten.chunk: _split,
    aten.sym_size: _no_value,
    aten._assert_tensor_metadata: _no_value, aten._assert_scalar: _no_value,
    aten._assert_async: _no_value, aten.sym_constrain_range_for_size: _no_value,
}
