"""Capture: turn a PyTorch nn.Module into an LR Graph.

torch.fx ``symbolic_trace`` gives the op graph, ``ShapeProp`` on the example inputs gives every
tensor's shape (so the batch size is the example's). Each fx node is looked up in a handler
table by module type, function or method name; anything not in the table is refused with an
``UnsupportedOp`` that names the layer. Dropout and Identity vanish (capture is in eval mode).

A module that is already an exported graph (``torch.export.load(path).module()``: ATen ops,
parameters as get_attr nodes) is not traced again; its graph is read directly and its ATen ops
go through the table in ``codegen/capture_aten.py``, which calls the same op builders, so both
paths give the same LR. Layer names come from the source module path in either case: a layer
module's path ("layer1.0.conv1"), or for a functional op, its module's path and the op
("layer1.0.add"); a name used twice gets ":2", ":3".
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
from torch._ops import OpOverload
from torch.fx import GraphModule, Node, symbolic_trace
from torch.fx.passes.shape_prop import ShapeProp

from codegen import capture_aten
from codegen.lr import SUPPORTED_OPS, CodegenError, Graph, Layer, UnsupportedOp


def capture(module: nn.Module, example_inputs: torch.Tensor | Sequence[torch.Tensor]) -> Graph:
    """Trace ``module`` in eval mode on ``example_inputs`` and return its LR graph."""
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    if is_exported(module):
        # Already a graph, frozen at export time (train()/eval() raise on it). Clone the inputs:
        # in-place ATen ops (relu_) would otherwise write into the caller's tensors.
        with torch.no_grad():
            ShapeProp(module).propagate(*(x.clone() for x in example_inputs))
        return _Capture(module, exported=True).run()
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
            ShapeProp(gm).propagate(*(x.clone() for x in example_inputs))
        return _Capture(gm).run()
    finally:
        module.train(was_training)


def is_exported(module: nn.Module) -> bool:
    """Whether ``module`` is an exported program's graph (its calls are ATen OpOverloads)."""
    return isinstance(module, GraphModule) and any(
        n.op == "call_function" and isinstance(n.target, OpOverload) for n in module.graph.nodes)


def _is_layer_module(kind: Any) -> bool:
    """Whether an nn_module_stack entry's class is one torch.fx would keep as a leaf call_module
    (torch.nn's own layers, not containers): its ops take the module's path as layer name."""
    qual = kind if isinstance(kind, str) else f"{kind.__module__}.{kind.__qualname__}"
    return (qual.startswith(("torch.nn.", "torch.ao.nn."))
            and qual.rsplit(".", 1)[-1] not in ("Sequential", "ModuleList", "ModuleDict"))


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
_IN_PLACE = (operator.iadd, operator.imul)


class _Capture:
    def __init__(self, gm: GraphModule, exported: bool = False) -> None:
        self.gm = gm
        self.exported = exported
        self.modules = dict(gm.named_modules())
        self.layers: list[Layer] = []
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.names: dict[Node, str | None] = {}  # fx node -> tensor name (None: not a tensor)
        self.inputs: list[str] = []
        self.outputs: list[str] = []
        self.calls: dict[str, int] = {}

    # ---- helpers -------------------------------------------------------------------------
    def layer_name(self, node: Node, op: str | None = None) -> str:
        """The source module path; for a functional op, its module's path and ``op`` (not the
        fx node name: that differs between symbolic_trace and torch.export)."""
        if node.op == "call_module":
            return str(node.target)
        if node.op == "placeholder":
            return node.name
        stack = node.meta.get("nn_module_stack") or {}
        prefix, kind = "", None
        if stack:
            last = list(stack.values())[-1]
            prefix, kind = last if isinstance(last, tuple) else (list(stack.keys())[-1], None)
        if prefix and kind is not None and _is_layer_module(kind):
            return prefix  # an exported graph's op that is a layer module's whole call
        op = op or self.op_label(node)
        return f"{prefix}.{op}" if prefix else op

    def op_label(self, node: Node) -> str:
        t = node.target
        if isinstance(t, OpOverload):
            return t.overloadpacket.__name__.rstrip("_")
        return str(t) if node.op == "call_method" else getattr(t, "__name__", str(t))

    def what(self, node: Node) -> str:
        if node.op == "call_module":
            return type(self.modules[node.target]).__name__
        if node.op == "call_method":
            return f"Tensor.{node.target}"
        if isinstance(node.target, OpOverload):
            stack = node.meta.get("nn_module_stack") or {}
            last = list(stack.values())[-1] if stack else None
            if isinstance(last, tuple) and _is_layer_module(last[1]):
                kind = last[1] if isinstance(last[1], str) else last[1].__qualname__
                return f"{kind.rsplit('.', 1)[-1]}: {node.target}"
            return str(node.target)
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
        name = self.layer_name(node, op)
        self.calls[name] = self.calls.get(name, 0) + 1
        if self.calls[name] > 1:  # a module called twice: "rect", then "rect:2"
            name = f"{name}:{self.calls[name]}"
        self.layers.append(Layer(name=name, op=op, inputs=tuple(inputs),
                                 output=out, attrs=attrs or {}, params=params or {}))

    def passthrough(self, node: Node, arg: Any) -> None:
        self.names[node] = self.tensor(node, arg)

    def constant(self, node: Node, arg: Any) -> torch.Tensor | None:
        """A parameter or buffer operand of an exported graph's op (a get_attr node)."""
        if arg is None:
            return None
        if not isinstance(arg, Node) or arg.op != "get_attr":
            raise self.refuse(node, f"operand {arg!r} is computed by the model; only stored "
                              "parameters are supported as weights")
        value = self.gm
        for part in str(arg.target).split("."):
            value = getattr(value, part)
        return value  # type: ignore[return-value]

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
                if self.exported and str(node.target).startswith("_guards"):
                    self.names[node] = None  # export's input checks: nothing to compute
                else:
                    self.module(node, self.modules[node.target])
            elif node.op == "call_function":
                if isinstance(node.target, OpOverload):
                    capture_aten.handle(self, node)
                else:
                    self.function(node)
            elif node.op == "call_method":
                self.method(node)
            if node.op in ("call_module", "call_function", "call_method") and \
                    not isinstance(node.target, OpOverload) and self._writes_first_arg(node):
                self.names[node.args[0]] = self.names[node]
            elif node.op == "get_attr":
                self.names[node] = None  # a constant; refused if used as a tensor operand
        return Graph(layers=tuple(self.layers), shapes=self.shapes, inputs=tuple(self.inputs),
                     outputs=tuple(self.outputs))

    def _writes_first_arg(self, node: Node) -> bool:
        """An in-place call (``y.relu_()``, ``nn.ReLU(inplace=True)``): later reads of its
        operand see the result, as in torch. (capture_aten does this for ATen ops.)"""
        if not node.args or not isinstance(node.args[0], Node) or self.names.get(node) is None:
            return False
        if node.op == "call_module":
            return getattr(self.modules[node.target], "inplace", False) is True
        name = str(node.target) if node.op == "call_method" else \
            getattr(node.target, "__name__", "")
        if (name.endswith("_") and not name.endswith("__")) or node.target in _IN_PLACE:
            return True
        try:
            bound = inspect.signature(node.target).bind(*node.args, **node.kwargs)
        except (TypeError, ValueError):
            return False
        return bound.arguments.get("inplace") is True

    def module(self, node: Node, m: nn.Module) -> None:
        x = node.args[0] if node.args else None
        if isinstance(m, nn.Conv2d):
            if m.padding_mode != "zeros":
                raise self.refuse(node, f"padding_mode={m.padding_mode!r} is not supported; "
                                  "only 'zeros'")
            self.conv(node, x, m.weight, m.bias, m.stride, m.padding, m.dilation, m.groups)
        elif isinstance(m, nn.Linear):
            self.linear(node, x, m.weight, m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            self.batchnorm(node, x, m.weight if m.affine else None,
                           m.bias if m.affine else None,
                           m.running_mean if m.track_running_stats else None,
                           m.running_var if m.track_running_stats else None, m.eps)
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
    def conv(self, node: Node, x: Any, weight: torch.Tensor, bias: torch.Tensor | None,
             stride: Any, padding: Any, dilation: Any, groups: int) -> None:
        if weight.dim() != 4:
            raise self.refuse(node, f"convolution with a {weight.dim()}-D weight: only 2-D "
                              "convolutions are supported")
        kh, kw = (int(k) for k in weight.shape[2:])
        dh, dw = _pair(dilation)
        if isinstance(padding, str):
            if padding == "valid":
                pad = (0, 0, 0, 0)
            else:  # 'same': PyTorch puts the odd pixel at the bottom/right
                th, tw = dh * (kh - 1), dw * (kw - 1)
                pad = (th // 2, th - th // 2, tw // 2, tw - tw // 2)
        else:
            ph, pw = _pair(padding)
            pad = (ph, ph, pw, pw)
        b = _np(bias) if bias is not None else np.zeros(weight.shape[0], np.float32)
        attrs = {"kernel": (kh, kw), "stride": _pair(stride), "padding": pad,
                 "dilation": (dh, dw), "groups": int(groups)}
        self.emit(node, "conv2d", [self.tensor(node, x)], attrs,
                  {"weight": _np(weight), "bias": b})

    def linear(self, node: Node, x: Any, weight: torch.Tensor,
               bias: torch.Tensor | None) -> None:
        xs = self.shape_of(x) if isinstance(x, Node) else None
        if xs is None or len(xs) != 2:
            raise self.refuse(node, f"Linear needs a 2-D [batch, features] input, got shape "
                              f"{xs}; flatten first")
        b = _np(bias) if bias is not None else np.zeros(weight.shape[0], np.float32)
        self.emit(node, "linear", [self.tensor(node, x)], {},
                  {"weight": _np(weight), "bias": b})

    def batchnorm(self, node: Node, x: Any, gamma: torch.Tensor | None,
                  beta: torch.Tensor | None, mean: torch.Tensor | None,
                  var: torch.Tensor | None, eps: float) -> None:
        if mean is None or var is None:
            raise self.refuse(node, "BatchNorm2d without running stats cannot be folded; "
                              "use track_running_stats=True")
        c = int(mean.shape[0])
        params = {"gamma": _np(gamma) if gamma is not None else np.ones(c, np.float32),
                  "beta": _np(beta) if beta is not None else np.zeros(c, np.float32),
                  "mean": _np(mean), "var": _np(var)}
        self.emit(node, "batchnorm2d", [self.tensor(node, x)], {"eps": float(eps)}, params)

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
