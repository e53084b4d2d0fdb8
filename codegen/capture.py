"""Capture: turn a PyTorch nn.Module into an LR Graph.

torch.fx ``symbolic_trace`` gives the op graph, ``ShapeProp`` on the example inputs gives every
tensor's shape (so the batch size is the example's). Each fx node is looked up in a handler
table by module type, function or method name; anything not in the table is refused with an
``UnsupportedOp`` that names the layer. Dropout and Identity vanish (capture is in eval mode).
"""

from __future__ import annotations

import inspect
import operator
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.fx import GraphModule, Node, symbolic_trace
from torch.fx.passes.shape_prop import ShapeProp

from codegen.lr import SUPPORTED_OPS, CodegenError, Graph, Layer, UnsupportedOp


def capture(module: nn.Module, example_inputs: torch.Tensor | Sequence[torch.Tensor]) -> Graph:
    """Trace ``module`` in eval mode on ``example_inputs`` and return its LR graph."""
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    was_training = module.training
    module.eval()
    try:
        try:
            gm = symbolic_trace(module)
        except Exception as e:  # fx raises many types; the user needs to know which model
            raise CodegenError(f"torch.fx could not trace {type(module).__name__}: {e}. The code "
                               "generator needs a model without data-dependent control flow"
                               ) from e
        with torch.no_grad():
            ShapeProp(gm).propagate(*example_inputs)
        return _Capture(gm).run()
    finally:
        module.train(was_training)


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().to(torch.float32).cpu().numpy().copy()


def _pair(v: Any) -> tuple[int, int]:
    if isinstance(v, (tuple, list)):
        return (int(v[0]), int(v[1])) if len(v) == 2 else (int(v[0]), int(v[0]))
    return (int(v), int(v))


# Signature stubs so functional calls can be read with their defaults filled in.
def _sig_maxpool(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
                 return_indices=False): ...
def _sig_avgpool(input, kernel_size, stride=None, padding=0, ceil_mode=False,
                 count_include_pad=True, divisor_override=None): ...
def _sig_hardtanh(input, min_val=-1.0, max_val=1.0, inplace=False): ...
def _sig_cat(tensors, dim=0): ...
def _sig_add(input, other, alpha=1): ...


def _bind(stub: Callable, node: Node) -> dict[str, Any]:
    b = inspect.signature(stub).bind(*node.args, **node.kwargs)
    b.apply_defaults()
    return dict(b.arguments)


_ACT_MODULES = ((nn.ReLU6, "relu6"), (nn.ReLU, "relu"), (nn.Hardswish, "hardswish"),
                (nn.Hardsigmoid, "hardsigmoid"), (nn.Sigmoid, "sigmoid"))
_ACT_FUNCTIONS = {F.relu: "relu", torch.relu: "relu", F.relu_: "relu", torch.relu_: "relu",
                  F.relu6: "relu6", F.hardswish: "hardswish", F.hardsigmoid: "hardsigmoid",
                  torch.sigmoid: "sigmoid", F.sigmoid: "sigmoid"}
_ACT_METHODS = {"relu": "relu", "relu_": "relu", "sigmoid": "sigmoid", "sigmoid_": "sigmoid"}
_ADD = (operator.add, operator.iadd, torch.add)
_MUL = (operator.mul, operator.imul, torch.mul)
_CAT = (torch.cat, torch.concat, torch.concatenate)


class _Capture:
    def __init__(self, gm: GraphModule) -> None:
        self.gm = gm
        self.modules = dict(gm.named_modules())
        self.layers: list[Layer] = []
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.names: dict[Node, str | None] = {}  # fx node -> tensor name (None: not a tensor)
        self.inputs: list[str] = []
        self.outputs: list[str] = []
        self.calls: dict[str, int] = {}

    # ---- helpers -------------------------------------------------------------------------
    def layer_name(self, node: Node) -> str:
        if node.op == "call_module":
            return str(node.target)
        stack = node.meta.get("nn_module_stack") or {}
        prefix = ""
        if stack:
            last = list(stack.values())[-1]
            prefix = last[0] if isinstance(last, tuple) else list(stack.keys())[-1]
        return f"{prefix}.{node.name}" if prefix else node.name

    def what(self, node: Node) -> str:
        if node.op == "call_module":
            return type(self.modules[node.target]).__name__
        if node.op == "call_method":
            return f"Tensor.{node.target}"
        return getattr(node.target, "__name__", str(node.target))

    def refuse(self, node: Node, why: str | None = None) -> UnsupportedOp:
        why = why or ("not supported by the code generator; supported: "
                      + ", ".join(SUPPORTED_OPS))
        return UnsupportedOp(f'layer "{self.layer_name(node)}" ({self.what(node)}): {why}')

    def tensor(self, node: Node, arg: Any) -> str:
        if not isinstance(arg, Node) or self.names.get(arg) is None:
            raise self.refuse(node, f"operand {arg!r} is not a tensor computed by the model; "
                              "only tensor-tensor forms are supported")
        return self.names[arg]  # type: ignore[return-value]

    def shape_of(self, node: Node) -> tuple[int, ...] | None:
        tm = node.meta.get("tensor_meta")
        if tm is None or not hasattr(tm, "shape"):
            return None
        if tm.dtype != torch.float32:
            raise self.refuse(node, f"dtype {tm.dtype} is not supported; only float32")
        return tuple(int(d) for d in tm.shape)

    def emit(self, node: Node, op: str, inputs: Sequence[str], attrs: dict | None = None,
             params: dict | None = None) -> None:
        out = node.name
        shape = self.shape_of(node)
        if shape is None:
            raise self.refuse(node, "produces no single tensor")
        self.shapes[out] = shape
        self.names[node] = out
        name = self.layer_name(node)
        self.calls[name] = self.calls.get(name, 0) + 1
        if self.calls[name] > 1:  # a module called twice: "rect", then "rect:2"
            name = f"{name}:{self.calls[name]}"
        self.layers.append(Layer(name=name, op=op, inputs=tuple(inputs),
                                 output=out, attrs=attrs or {}, params=params or {}))

    def passthrough(self, node: Node, arg: Any) -> None:
        self.names[node] = self.tensor(node, arg)

    # ---- the walk ------------------------------------------------------------------------
    def run(self) -> Graph:
        for node in self.gm.graph.nodes:
            if node.op == "placeholder":
                self.emit(node, "input", ())
                self.inputs.append(node.name)
            elif node.op == "output":
                outs = node.args[0]
                outs = list(outs) if isinstance(outs, (tuple, list)) else [outs]
                self.outputs = [self.tensor(node, o) for o in outs]
                self.layers.append(Layer(name="output", op="output",
                                         inputs=tuple(self.outputs), output=""))
            elif node.op == "call_module":
                self.module(node, self.modules[node.target])
            elif node.op == "call_function":
                self.function(node)
            elif node.op == "call_method":
                self.method(node)
            elif node.op == "get_attr":
                self.names[node] = None  # a constant; refused if used as a tensor operand
        return Graph(layers=tuple(self.layers), shapes=self.shapes, inputs=tuple(self.inputs),
                     outputs=tuple(self.outputs))

    def module(self, node: Node, m: nn.Module) -> None:
        x = node.args[0] if node.args else None
        if isinstance(m, nn.Conv2d):
            self.conv(node, m)
        elif isinstance(m, nn.Linear):
            self.linear(node, m)
        elif isinstance(m, nn.BatchNorm2d):
            if not m.track_running_stats or m.running_mean is None:
                raise self.refuse(node, "BatchNorm2d without running stats cannot be folded; "
                                  "use track_running_stats=True")
            c = m.num_features
            params = {
                "gamma": _np(m.weight) if m.affine else np.ones(c, np.float32),
                "beta": _np(m.bias) if m.affine else np.zeros(c, np.float32),
                "mean": _np(m.running_mean), "var": _np(m.running_var)}
            self.emit(node, "batchnorm2d", [self.tensor(node, x)], {"eps": float(m.eps)},
                      params)
        elif isinstance(m, (nn.Dropout, nn.Identity)):
            self.passthrough(node, x)
        elif isinstance(m, nn.Hardtanh) and not isinstance(m, nn.ReLU6):
            self.hardtanh(node, x, m.min_val, m.max_val)
        elif any(isinstance(m, t) for t, _ in _ACT_MODULES):
            op = next(o for t, o in _ACT_MODULES if isinstance(m, t))
            self.emit(node, op, [self.tensor(node, x)])
        elif isinstance(m, nn.MaxPool2d):
            self.maxpool(node, x, m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode,
                         m.return_indices)
        elif isinstance(m, nn.AvgPool2d):
            self.avgpool(node, x, m.kernel_size, m.stride, m.padding, m.ceil_mode,
                         m.count_include_pad, m.divisor_override)
        elif isinstance(m, nn.AdaptiveAvgPool2d):
            self.adaptive(node, x)
        elif isinstance(m, nn.Flatten):
            self.emit(node, "flatten", [self.tensor(node, x)])
        else:
            raise self.refuse(node)

    def function(self, node: Node) -> None:
        f = node.target
        a = node.args
        if f in _ACT_FUNCTIONS:
            self.emit(node, _ACT_FUNCTIONS[f], [self.tensor(node, a[0])])
        elif f is F.hardtanh:
            b = _bind(_sig_hardtanh, node)
            self.hardtanh(node, b["input"], b["min_val"], b["max_val"])
        elif f is F.dropout or f is F.dropout2d:
            self.passthrough(node, a[0] if a else node.kwargs["input"])
        elif f in _ADD:
            b = _bind(_sig_add, node)
            if b["alpha"] != 1:
                raise self.refuse(node, f"add with alpha={b['alpha']} is not supported")
            self.add(node, b["input"], b["other"])
        elif f in _MUL:
            self.mul(node, a[0], a[1])
        elif f is F.max_pool2d:
            b = _bind(_sig_maxpool, node)
            self.maxpool(node, b["input"], b["kernel_size"], b["stride"], b["padding"],
                         b["dilation"], b["ceil_mode"], b["return_indices"])
        elif f is F.avg_pool2d:
            b = _bind(_sig_avgpool, node)
            self.avgpool(node, b["input"], b["kernel_size"], b["stride"], b["padding"],
                         b["ceil_mode"], b["count_include_pad"], b["divisor_override"])
        elif f is F.adaptive_avg_pool2d:
            self.adaptive(node, a[0])
        elif f is torch.flatten:
            self.emit(node, "flatten", [self.tensor(node, a[0])])
        elif f is torch.reshape:
            self.emit(node, "reshape", [self.tensor(node, a[0])])
        elif f in _CAT:
            self.cat(node)
        elif f in (getattr, operator.getitem) and self.shape_of(node) is None:
            self.names[node] = None  # e.g. x.shape[0], only usable as a reshape's argument
        else:
            raise self.refuse(node)

    def method(self, node: Node) -> None:
        m = node.target
        x = node.args[0]
        if m in _ACT_METHODS:
            self.emit(node, _ACT_METHODS[m], [self.tensor(node, x)])
        elif m == "size" or (m == "dim" and self.shape_of(node) is None):
            self.names[node] = None
        elif m == "flatten":
            self.emit(node, "flatten", [self.tensor(node, x)])
        elif m in ("view", "reshape"):
            self.emit(node, "reshape", [self.tensor(node, x)])
        elif m == "contiguous":
            self.passthrough(node, x)
        elif m in ("add", "add_"):
            if node.kwargs.get("alpha", 1) != 1:
                raise self.refuse(node, "add with alpha is not supported")
            self.add(node, x, node.args[1])
        elif m in ("mul", "mul_"):
            self.mul(node, x, node.args[1])
        else:
            raise self.refuse(node)

    # ---- op builders ---------------------------------------------------------------------
    def conv(self, node: Node, m: nn.Conv2d) -> None:
        if m.padding_mode != "zeros":
            raise self.refuse(node, f"padding_mode={m.padding_mode!r} is not supported; "
                              "only 'zeros'")
        kh, kw = m.kernel_size
        dh, dw = m.dilation
        if isinstance(m.padding, str):
            if m.padding == "valid":
                pad = (0, 0, 0, 0)
            else:  # 'same': PyTorch puts the odd pixel at the bottom/right
                th, tw = dh * (kh - 1), dw * (kw - 1)
                pad = (th // 2, th - th // 2, tw // 2, tw - tw // 2)
        else:
            ph, pw = m.padding
            pad = (ph, ph, pw, pw)
        bias = _np(m.bias) if m.bias is not None else np.zeros(m.out_channels, np.float32)
        attrs = {"kernel": (kh, kw), "stride": tuple(m.stride), "padding": pad,
                 "dilation": (dh, dw), "groups": m.groups}
        self.emit(node, "conv2d", [self.tensor(node, node.args[0])], attrs,
                  {"weight": _np(m.weight), "bias": bias})

    def linear(self, node: Node, m: nn.Linear) -> None:
        x = node.args[0]
        xs = self.shape_of(x) if isinstance(x, Node) else None
        if xs is None or len(xs) != 2:
            raise self.refuse(node, f"Linear needs a 2-D [batch, features] input, got shape "
                              f"{xs}; flatten first")
        bias = _np(m.bias) if m.bias is not None else np.zeros(m.out_features, np.float32)
        self.emit(node, "linear", [self.tensor(node, x)], {},
                  {"weight": _np(m.weight), "bias": bias})

    def hardtanh(self, node: Node, x: Any, lo: float, hi: float) -> None:
        if (lo, hi) != (0.0, 6.0):
            raise self.refuse(node, f"hardtanh({lo}, {hi}) is not supported; only (0, 6) "
                              "(relu6)")
        self.emit(node, "relu6", [self.tensor(node, x)])

    def add(self, node: Node, a: Any, b: Any) -> None:
        ta, tb = self.tensor(node, a), self.tensor(node, b)
        if self.shapes[ta] != self.shapes[tb]:
            raise self.refuse(node, f"add of shapes {list(self.shapes[ta])} and "
                              f"{list(self.shapes[tb])}: only same-shape adds are supported")
        self.emit(node, "add", [ta, tb])

    def mul(self, node: Node, a: Any, b: Any) -> None:
        ta, tb = self.tensor(node, a), self.tensor(node, b)
        sa, sb = self.shapes[ta], self.shapes[tb]

        def scale_of(x: tuple[int, ...], s: tuple[int, ...]) -> bool:
            return len(x) == 4 and s == (x[0], x[1], 1, 1)

        if scale_of(sa, sb):
            self.emit(node, "mul_channel", [ta, tb])
        elif scale_of(sb, sa):
            self.emit(node, "mul_channel", [tb, ta])
        else:
            raise self.refuse(node, f"mul of shapes {list(sa)} and {list(sb)}: only channel-wise "
                              "[N,C,H,W] * [N,C,1,1] (squeeze-excite) is supported")

    def maxpool(self, node: Node, x: Any, k: Any, s: Any, p: Any, d: Any, ceil: bool,
                return_indices: bool) -> None:
        if return_indices:
            raise self.refuse(node, "return_indices=True is not supported")
        attrs = {"kernel": _pair(k), "stride": _pair(s if s not in (None, []) else k),
                 "padding": _pair(p), "dilation": _pair(d), "ceil_mode": bool(ceil)}
        self.emit(node, "maxpool2d", [self.tensor(node, x)], attrs)

    def avgpool(self, node: Node, x: Any, k: Any, s: Any, p: Any, ceil: bool, cip: bool,
                divisor_override: Any) -> None:
        if divisor_override is not None:
            raise self.refuse(node, "divisor_override is not supported")
        attrs = {"kernel": _pair(k), "stride": _pair(s if s not in (None, []) else k),
                 "padding": _pair(p), "ceil_mode": bool(ceil), "count_include_pad": bool(cip)}
        self.emit(node, "avgpool2d", [self.tensor(node, x)], attrs)

    def adaptive(self, node: Node, x: Any) -> None:
        shape = self.shape_of(node)
        if shape is None or len(shape) != 4:
            raise self.refuse(node, "adaptive average pooling needs a 4-D input")
        self.emit(node, "adaptive_avgpool2d", [self.tensor(node, x)],
                  {"output_size": (shape[2], shape[3])})

    def cat(self, node: Node) -> None:
        b = _bind(_sig_cat, node)
        parts = [self.tensor(node, t) for t in b["tensors"]]
        nd = len(self.shapes[parts[0]])
        if b["dim"] % nd != 1:
            raise self.refuse(node, f"concatenation along dim {b['dim']}: only the channel dim "
                              "(1) is supported")
        self.emit(node, "concat", parts, {"dim": 1})
