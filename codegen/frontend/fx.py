"""The nn.Module front end: a module traced by torch.fx (``symbolic_trace``), its calls read
by module type, function or method name and turned into the builder's ops. Activations come
from ``codegen.lr.ACTIVATIONS`` (their modules, functions and methods); anything else not in
the tables below is refused with an ``UnsupportedOp`` that names the layer. Dropout and
Identity vanish (capture is in eval mode).
"""

from __future__ import annotations

import inspect
import operator

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.fx import Node

from codegen.frontend.builder import GraphBuilder, bind
from codegen.lr import ACTIVATIONS


# Signature stubs so functional calls can be read with their defaults filled in.
def _sig_maxpool(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
                 return_indices=False): ...
def _sig_avgpool(input, kernel_size, stride=None, padding=0, ceil_mode=False,
                 count_include_pad=True, divisor_override=None): ...
def _sig_hardtanh(input, min_val=-1.0, max_val=1.0, inplace=False): ...
def _sig_add(input, other, alpha=1): ...
def _sig_mean(input, dim=None, keepdim=False, dtype=None): ...
def _sig_transpose(input, dim0, dim1): ...
def _sig_chunk(input, chunks, dim=0): ...
def _sig_split(input, split_size_or_sections, dim=0): ...
def _sig_gelu(input, approximate="none"): ...
def _sig_clamp(input, min=None, max=None): ...
def _sig_leaky(input, negative_slope=0.01, inplace=False): ...
def _sig_interpolate(input, size=None, scale_factor=None, mode="nearest", align_corners=None,
                     recompute_scale_factor=None, antialias=False): ...
def _sig_stochastic_depth(input, p, mode, training=True): ...


def _is_stochastic_depth(f) -> bool:
    """torchvision.ops.stochastic_depth (EfficientNet, ConvNeXt: a leaf of torch.fx's trace)."""
    return (getattr(f, "__name__", "") == "stochastic_depth"
            and getattr(f, "__module__", "").startswith("torchvision."))


_ACT_MODULES = tuple((t, name) for name, act in ACTIVATIONS.items() for t in act.modules)
_ACT_FUNCTIONS = {f: name for name, act in ACTIVATIONS.items() for f in act.functions}
_ACT_METHODS = {m: name for name, act in ACTIVATIONS.items() for m in act.methods}
_ADD = (operator.add, operator.iadd, torch.add)
_MUL = (operator.mul, operator.imul, torch.mul)
_SUB = (operator.sub, operator.isub, torch.sub)
_CAT = (torch.cat, torch.concat, torch.concatenate)
_IN_PLACE = (operator.iadd, operator.imul, operator.isub)


def handle(b: GraphBuilder, node: Node) -> None:
    """Capture one call of a traced module (or a non-ATen call of an exported graph). An
    in-place call also rebinds the tensor it wrote, so later reads see the new value."""
    if node.op == "call_module":
        if b.exported and str(node.target).startswith("_guards"):
            b.names[node] = None  # export's input checks: nothing to compute
        else:
            module(b, node, b.modules[node.target])
    elif node.op == "call_function":
        function(b, node)
    else:
        method(b, node)
    if _writes_first_arg(b, node):
        b.names[node.args[0]] = b.names[node]


def _writes_first_arg(b: GraphBuilder, node: Node) -> bool:
    """An in-place call (``y.relu_()``, ``nn.ReLU(inplace=True)``): later reads of its
    operand see the result, as in torch. (``aten.handle`` does this for ATen ops.)"""
    if not node.args or not isinstance(node.args[0], Node) or b.names.get(node) is None:
        return False
    if node.op == "call_module":
        return getattr(b.modules[node.target], "inplace", False) is True
    name = str(node.target) if node.op == "call_method" else \
        getattr(node.target, "__name__", "")
    if (name.endswith("_") and not name.endswith("__")) or node.target in _IN_PLACE:
        return True
    try:
        bound = inspect.signature(node.target).bind(*node.args, **node.kwargs)
    except (TypeError, ValueError):
        return False
    return bound.arguments.get("inplace") is True


def module(b: GraphBuilder, node: Node, m: nn.Module) -> None:
    x = node.args[0] if node.args else None
    if isinstance(m, nn.Conv2d):
        if m.padding_mode != "zeros":
            raise b.refuse(node, f"padding_mode={m.padding_mode!r} is not supported; "
                           "only 'zeros'")
        b.conv(node, x, m.weight, m.bias, m.stride, m.padding, m.dilation, m.groups)
    elif isinstance(m, nn.Linear):
        b.linear(node, x, m.weight, m.bias)
    elif isinstance(m, nn.BatchNorm2d):
        b.batchnorm(node, x, m.weight if m.affine else None,
                    m.bias if m.affine else None,
                    m.running_mean if m.track_running_stats else None,
                    m.running_var if m.track_running_stats else None, m.eps)
    elif isinstance(m, (nn.Dropout, nn.Identity)):
        b.passthrough(node, x)
    elif isinstance(m, nn.Hardtanh) and not isinstance(m, nn.ReLU6):
        b.hardtanh(node, x, m.min_val, m.max_val)
    elif isinstance(m, nn.GELU) and m.approximate != "none":
        raise b.refuse(node, f"GELU(approximate={m.approximate!r}) is not supported; "
                       "use approximate='none' (the erf form)")
    elif any(isinstance(m, t) for t, _ in _ACT_MODULES):
        op = next(o for t, o in _ACT_MODULES if isinstance(m, t))
        b.emit(node, op, [b.tensor(node, x)])
    elif isinstance(m, nn.MaxPool2d):
        b.maxpool(node, x, m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode,
                  m.return_indices)
    elif isinstance(m, nn.AvgPool2d):
        b.avgpool(node, x, m.kernel_size, m.stride, m.padding, m.ceil_mode,
                  m.count_include_pad, m.divisor_override)
    elif isinstance(m, nn.AdaptiveAvgPool2d):
        b.adaptive(node, x)
    elif isinstance(m, nn.Flatten):
        b.emit(node, "flatten", [b.tensor(node, x)])
    elif isinstance(m, nn.LeakyReLU):
        b.leaky_relu(node, x, m.negative_slope)
    elif isinstance(m, nn.PReLU):
        b.prelu(node, x, m.weight)
    elif isinstance(m, nn.Upsample):
        b.interpolate(node, x, m.size, m.scale_factor, m.mode, m.align_corners,
                      m.recompute_scale_factor)
    elif isinstance(m, nn.ConvTranspose2d):
        if m.padding_mode != "zeros":
            raise b.refuse(node, f"padding_mode={m.padding_mode!r} is not supported")
        b.conv_transpose(node, x, m.weight, m.bias, m.stride, m.padding, m.output_padding,
                         m.groups, m.dilation)
    elif isinstance(m, (nn.PixelShuffle, nn.PixelUnshuffle)):
        inverse = isinstance(m, nn.PixelUnshuffle)
        b.pixel_shuffle(node, x, m.downscale_factor if inverse else m.upscale_factor, inverse)
    else:
        raise b.refuse(node)


def function(b: GraphBuilder, node: Node) -> None:
    f = node.target
    a = node.args
    if f is operator.getitem and a and isinstance(a[0], Node) and a[0] in b.parts:
        b.part(node, a[0], a[1])
    elif f is torch._assert or (getattr(f, "__module__", None) in ("_operator", "operator")
                                and b.shape_of(node) is None
                                and not any(n in b.parts for n in node.all_input_nodes)):
        b.names[node] = None  # shape arithmetic and checks: nothing to compute
    elif f is F.gelu and bind(_sig_gelu, node)["approximate"] != "none":
        raise b.refuse(node, "gelu(approximate='tanh') is not supported; use "
                       "approximate='none' (the erf form)")
    elif f in _ACT_FUNCTIONS:
        b.emit(node, _ACT_FUNCTIONS[f], [b.tensor(node, a[0])])
    elif f is F.hardtanh:
        args = bind(_sig_hardtanh, node)
        b.hardtanh(node, args["input"], args["min_val"], args["max_val"])
    elif _is_stochastic_depth(f):
        args = bind(_sig_stochastic_depth, node)
        if args["training"]:
            raise b.refuse(node, "stochastic depth in training mode; call model.eval()")
        b.passthrough(node, args["input"])  # eval mode: the identity
    elif f is F.dropout or f is F.dropout2d:
        b.passthrough(node, a[0] if a else node.kwargs["input"])
    elif f in _ADD:
        args = bind(_sig_add, node)
        if args["alpha"] != 1:
            raise b.refuse(node, f"add with alpha={args['alpha']} is not supported")
        b.add(node, args["input"], args["other"])
    elif f in _MUL:
        b.mul(node, a[0], a[1])
    elif f in _SUB:
        args = bind(_sig_add, node)
        if args["alpha"] != 1:
            raise b.refuse(node, f"sub with alpha={args['alpha']} is not supported")
        b.sub(node, args["input"], args["other"])
    elif f is F.max_pool2d:
        args = bind(_sig_maxpool, node)
        b.maxpool(node, args["input"], args["kernel_size"], args["stride"], args["padding"],
                  args["dilation"], args["ceil_mode"], args["return_indices"])
    elif f is F.avg_pool2d:
        args = bind(_sig_avgpool, node)
        b.avgpool(node, args["input"], args["kernel_size"], args["stride"], args["padding"],
                  args["ceil_mode"], args["count_include_pad"], args["divisor_override"])
    elif f is F.adaptive_avg_pool2d:
        b.adaptive(node, a[0])
    elif f is torch.flatten:
        b.emit(node, "flatten", [b.tensor(node, a[0])])
    elif f is torch.reshape:
        b.emit(node, "reshape", [b.tensor(node, a[0])])
    elif f in _CAT:
        b.cat(node)
    elif f in (torch.clamp, torch.clip, torch.clamp_):
        args = bind(_sig_clamp, node)
        b.clamp(node, args["input"], args["min"], args["max"])
    elif f is F.leaky_relu:
        args = bind(_sig_leaky, node)
        b.leaky_relu(node, args["input"], args["negative_slope"])
    elif f is F.interpolate:
        args = bind(_sig_interpolate, node)
        if args["antialias"]:
            raise b.refuse(node, "interpolate with antialias=True is not supported")
        b.interpolate(node, args["input"], args["size"], args["scale_factor"], args["mode"],
                      args["align_corners"], args["recompute_scale_factor"])
    elif f in (F.pixel_shuffle, F.pixel_unshuffle):
        b.pixel_shuffle(node, a[0], a[1], f is F.pixel_unshuffle)
    elif f in (torch.mean, torch.sum):
        args = bind(_sig_mean, node)
        b.mean(node, args["input"], args["dim"], args["keepdim"],
               "sum" if f is torch.sum else "mean")
    elif f is torch.transpose:
        _transpose(b, node, bind(_sig_transpose, node))
    elif f is torch.permute:
        b.permute(node, a[0], a[1] if len(a) == 2 else a[1:])
    elif f is torch.chunk:
        _chunk(b, node, bind(_sig_chunk, node))
    elif f is torch.split:
        _split(b, node, bind(_sig_split, node))
    elif f in (getattr, operator.getitem) and b.shape_of(node) is None:
        b.names[node] = None  # e.g. x.shape[0], only usable as a reshape's argument
    else:
        raise b.refuse(node)


def method(b: GraphBuilder, node: Node) -> None:
    m = node.target
    x = node.args[0]
    if m in _ACT_METHODS:
        b.emit(node, _ACT_METHODS[m], [b.tensor(node, x)])
    elif m == "size" or (m == "dim" and b.shape_of(node) is None):
        b.names[node] = None
    elif m == "flatten":
        b.emit(node, "flatten", [b.tensor(node, x)])
    elif m in ("view", "reshape"):
        b.emit(node, "reshape", [b.tensor(node, x)])
    elif m == "contiguous":
        b.passthrough(node, x)
    elif m in ("add", "add_"):
        if node.kwargs.get("alpha", 1) != 1:
            raise b.refuse(node, "add with alpha is not supported")
        b.add(node, x, node.args[1])
    elif m in ("mul", "mul_"):
        b.mul(node, x, node.args[1])
    elif m in ("sub", "sub_"):
        if node.kwargs.get("alpha", 1) != 1:
            raise b.refuse(node, "sub with alpha is not supported")
        b.sub(node, x, node.args[1])
    elif m in ("clamp", "clamp_", "clip", "clip_"):
        args = bind(_sig_clamp, node)
        b.clamp(node, x, args["min"], args["max"])
    elif m in ("mean", "sum"):
        args = bind(_sig_mean, node)
        b.mean(node, x, args["dim"], args["keepdim"], m)
    elif m == "transpose":
        _transpose(b, node, bind(_sig_transpose, node))
    elif m == "permute":
        rest = node.args[1:]
        b.permute(node, x, rest[0] if len(rest) == 1 and isinstance(rest[0], (tuple, list))
                  else rest or node.kwargs.get("dims", ()))
    elif m == "chunk":
        _chunk(b, node, bind(_sig_chunk, node))
    elif m == "split":
        _split(b, node, bind(_sig_split, node))
    else:
        raise b.refuse(node)


def _transpose(b: GraphBuilder, node: Node, args: dict) -> None:
    x = args["input"]
    nd = len(b.shapes[b.tensor(node, x)])
    perm = list(range(nd))
    d0, d1 = args["dim0"] % nd, args["dim1"] % nd
    perm[d0], perm[d1] = perm[d1], perm[d0]
    b.permute(node, x, perm)


def _chunk(b: GraphBuilder, node: Node, args: dict) -> None:
    x, k, dim = args["input"], int(args["chunks"]), int(args["dim"])
    size = b.shapes[b.tensor(node, x)][dim]
    step = -(-size // k)  # torch.chunk: equal parts of ceil(size / k), the last one smaller
    b.split(node, x, [min(step, size - s) for s in range(0, size, step)], dim)


def _split(b: GraphBuilder, node: Node, args: dict) -> None:
    x, s, dim = args["input"], args["split_size_or_sections"], int(args["dim"])
    size = b.shapes[b.tensor(node, x)][dim]
    sizes = [int(v) for v in s] if isinstance(s, (list, tuple)) else \
        [min(int(s), size - o) for o in range(0, size, int(s))]
    b.split(node, x, sizes, dim)
