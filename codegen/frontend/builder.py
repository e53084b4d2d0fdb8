"""The LR graph builder both capture front ends share: the walk over an fx graph, tensor naming,
layer names from the source module path, refusals that name the layer, and one builder per LR
op (``conv``, ``linear``, ...) that checks what the code generator supports and records a Layer.

A front end (``fx.py`` for traced nn.Modules, ``aten.py`` for torch.export graphs) reads a
call's arguments in its own terms and calls these builders, so both give the same LR.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch._ops import OpOverload
from torch.fx import GraphModule, Node

from codegen.lr import SUPPORTED_OPS, Graph, Layer, UnsupportedOp


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


def bind(stub: Callable, node: Node) -> dict[str, Any]:
    """A call's arguments by the parameter names of ``stub``, defaults filled in."""
    b = inspect.signature(stub).bind(*node.args, **node.kwargs)
    b.apply_defaults()
    return dict(b.arguments)


def _sig_cat(tensors, dim=0): ...


# What a user can do about an op the code generator refuses, by the refused call's name.
_NORM = ("; the code generator has no LayerNorm/GroupNorm: a CNN with BatchNorm2d in its place "
         "compiles (retrain it), else this model is not supported")
_ATTENTION = ("; attention (transformer blocks: ViT, Swin, MaxViT) is not supported by the code "
              "generator; use a convolutional model")
HINTS = {"LayerNorm": _NORM, "LayerNorm2d": _NORM, "layer_norm": _NORM, "GroupNorm": _NORM,
         "group_norm": _NORM, "MultiheadAttention": _ATTENTION,
         "scaled_dot_product_attention": _ATTENTION, "softmax": _ATTENTION,
         "Softmax": _ATTENTION, "matmul": _ATTENTION, "bmm": _ATTENTION,
         "Tanh": "; replace it with Sigmoid or ReLU6 in the model (not done by search phase 1)",
         "tanh": "; replace it with Sigmoid or ReLU6 in the model (not done by search phase 1)",
         "ELU": "; replace it with ReLU (search phase 1 does this)",
         "elu": "; replace it with ReLU (search phase 1 does this)",
         "hardtanh": "; only hardtanh(0, 6) (ReLU6) is supported"}


def _summary(refused: list[UnsupportedOp]) -> UnsupportedOp:
    """One error for every refusal of a model: one line per op and reason, with its layers."""
    if len(refused) == 1:
        return refused[0]
    groups: dict[tuple[str, str], list[str]] = {}
    supported = "; supported: " + ", ".join(SUPPORTED_OPS)
    for e in refused:
        key = (getattr(e, "what", ""), getattr(e, "why", str(e)).replace(supported, ""))
        groups.setdefault(key, []).append(getattr(e, "layer", "?"))
    lines = []
    for (what, why), layers in groups.items():
        names = ", ".join(f'"{la}"' for la in layers[:4])
        more = f" and {len(layers) - 4} more" if len(layers) > 4 else ""
        lines.append(f"layer{'s' if len(layers) > 1 else ''} {names}{more} ({what}): {why}")
    return UnsupportedOp(f"{len(refused)} unsupported ops in {len(groups)} kind(s); each must "
                         "be fixed or replaced:\n  " + "\n  ".join(lines)
                         + f"\nThe code generator supports {', '.join(SUPPORTED_OPS)}")


def _hint(what: str) -> str:
    """What to do about a refused call (``GraphBuilder.what``), or nothing."""
    key = what.split(":", 1)[0]
    key = key.split(".")[1] if key.startswith("aten.") else key.rsplit(".", 1)[-1]
    return HINTS.get(key, HINTS.get(key.rstrip("_"), ""))


class GraphBuilder:
    """The LR of one fx graph, built node by node (see the module docstring)."""

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
        self.parts: dict[Node, tuple[str, list[tuple[int, int]]]] = {}  # chunk/split results

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
        what = self.what(node)
        why = why or (f"not supported by the code generator{_hint(what)}; supported: "
                      + ", ".join(SUPPORTED_OPS))
        e = UnsupportedOp(f'layer "{self.layer_name(node)}" ({what}): {why}')
        e.layer, e.what, e.why = self.layer_name(node), what, why  # for the summary in run
        return e

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
    def run(self, call: Callable[[GraphBuilder, Node], None]) -> Graph:
        """Walk the graph: inputs and outputs here, every call through ``call`` (the front
        end that knows the call's kind), constants as non-tensors."""
        refused: list[UnsupportedOp] = []  # every refusal, in graph order
        failed: set[Node] = set()  # refused non-tensor results and what depends on them
        for node in self.gm.graph.nodes:
            if any(a in failed for a in node.all_input_nodes):
                failed.add(node)
                continue
            try:
                self._node(node, call)
            except UnsupportedOp as e:
                refused.append(e)
                tm = node.meta.get("tensor_meta")
                if hasattr(tm, "shape"):  # go on as if it had computed its tensor: later
                    self.names[node] = node.name  # refusals are reported too
                    self.shapes[node.name] = tuple(int(d) for d in tm.shape)
                else:
                    failed.add(node)
        if refused:
            raise _summary(refused)
        return Graph(layers=tuple(self.layers), shapes=self.shapes, inputs=tuple(self.inputs),
                     outputs=tuple(self.outputs))

    def _node(self, node: Node, call: Callable[[GraphBuilder, Node], None]) -> None:
        if node.op == "placeholder":
            self.emit(node, "input", ())
            self.inputs.append(node.name)
        elif node.op == "output":
            outs = node.args[0]
            outs = list(outs) if isinstance(outs, (tuple, list)) else [outs]
            self.outputs = [self.tensor(node, o) for o in outs]
            self.layers.append(Layer(name="output", op="output",
                                     inputs=tuple(self.outputs), output=""))
        elif node.op in ("call_module", "call_function", "call_method"):
            call(self, node)
        elif node.op == "get_attr":
            self.names[node] = None  # a constant; refused if used as a tensor operand

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

    def clamp(self, node: Node, x: Any, lo: Any, hi: Any) -> None:
        if any(isinstance(v, Node) for v in (lo, hi)):
            raise self.refuse(node, "clamp with tensor bounds: only number bounds are "
                              "supported")
        if (lo, hi) == (0, 6) or (lo, hi) == (0.0, 6.0):
            self.emit(node, "relu6", [self.tensor(node, x)])
        else:
            self.emit(node, "clamp", [self.tensor(node, x)],
                      {"min": None if lo is None else float(lo),
                       "max": None if hi is None else float(hi)})

    def leaky_relu(self, node: Node, x: Any, slope: float) -> None:
        self.emit(node, "leaky_relu", [self.tensor(node, x)], {"slope": float(slope)})

    def prelu(self, node: Node, x: Any, weight: torch.Tensor) -> None:
        t = self.tensor(node, x)
        c = self.shapes[t][1] if len(self.shapes[t]) > 1 else 1
        if weight.numel() not in (1, c):
            raise self.refuse(node, f"PReLU with {weight.numel()} slopes for {c} channels")
        self.emit(node, "prelu", [t], {}, {"weight": _np(weight).reshape(-1)})

    def add(self, node: Node, a: Any, b: Any) -> None:
        ta, tb = self.tensor(node, a), self.tensor(node, b)
        if self.shapes[ta] != self.shapes[tb]:
            self.broadcast(node, "add", ta, tb)
        else:
            self.emit(node, "add", [ta, tb])

    def broadcast(self, node: Node, fn: str, ta: str, tb: str) -> None:
        """add/sub/mul of two tensors of one rank whose dims match or are 1 (a "binary")."""
        sa, sb = self.shapes[ta], self.shapes[tb]
        if len(sa) != len(sb) or any(x != y and 1 not in (x, y)
                                     for x, y in zip(sa, sb, strict=True)):
            raise self.refuse(node, f"{fn} of shapes {list(sa)} and {list(sb)}: only same-rank "
                              "operands whose dims match or are 1 (broadcasting) are supported")
        self.emit(node, "binary", [ta, tb], {"fn": fn})

    def sub(self, node: Node, a: Any, b: Any) -> None:
        self.broadcast(node, "sub", self.tensor(node, a), self.tensor(node, b))

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
            self.broadcast(node, "mul", ta, tb)

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

    def interpolate(self, node: Node, x: Any, size: Any, scale_factor: Any, mode: str,
                    align_corners: bool | None, recompute: bool | None) -> None:
        t = self.tensor(node, x)
        if len(self.shapes[t]) != 4 or mode not in ("nearest", "bilinear"):
            raise self.refuse(node, f"interpolate mode {mode!r} of a {len(self.shapes[t])}-D "
                              "tensor: only 'nearest' and 'bilinear' of [N,C,H,W] are "
                              "supported")
        sf = None
        if scale_factor is not None and not recompute:  # torch maps with 1/scale_factor
            sf = (float(scale_factor),) * 2 if isinstance(scale_factor, (int, float)) \
                else tuple(float(v) for v in scale_factor)
        attrs = {"mode": mode, "align_corners": bool(align_corners) if mode == "bilinear"
                 else None, "scale_factor": sf}
        self.emit(node, "interpolate", [t], attrs)

    def conv_transpose(self, node: Node, x: Any, weight: torch.Tensor,
                       bias: torch.Tensor | None, stride: Any, padding: Any,
                       output_padding: Any, groups: int, dilation: Any) -> None:
        if weight.dim() != 4 or int(groups) != 1:
            raise self.refuse(node, f"transposed convolution with groups={groups} and a "
                              f"{weight.dim()}-D weight: only 2-D with groups=1 is supported")
        b = _np(bias) if bias is not None else np.zeros(weight.shape[1], np.float32)
        attrs = {"kernel": tuple(int(k) for k in weight.shape[2:]), "stride": _pair(stride),
                 "padding": _pair(padding), "output_padding": _pair(output_padding),
                 "dilation": _pair(dilation)}
        self.emit(node, "conv_transpose2d", [self.tensor(node, x)], attrs,
                  {"weight": _np(weight), "bias": b})

    def pixel_shuffle(self, node: Node, x: Any, r: int, inverse: bool = False) -> None:
        """Depth-to-space (or back): a reshape, a permute and a reshape, as torch defines it."""
        t = self.tensor(node, x)
        n, c, h, w = self.shapes[t]
        r = int(r)
        if inverse:
            mid, perm = (n, c, h // r, r, w // r, r), (0, 1, 3, 5, 2, 4)
        else:
            mid, perm = (n, c // (r * r), r, r, h, w), (0, 1, 4, 2, 5, 3)
        name = self.layer_name(node, "pixel_unshuffle" if inverse else "pixel_shuffle")
        split, moved = f"{node.name}_split", f"{node.name}_moved"
        self.shapes[split] = mid
        self.shapes[moved] = tuple(mid[p] for p in perm)
        self.layers += [Layer(f"{name}.reshape", "reshape", (t,), split),
                        Layer(name, "permute", (split,), moved, {"perm": perm})]
        self.emit(node, "reshape", [moved])

    def mean(self, node: Node, x: Any, dims: Any, keepdim: bool, op: str = "mean") -> None:
        """A mean over the spatial dims of [N,C,H,W]: a global average pool (then a reshape
        to [N,C] without ``keepdim``). A ``sum`` (``op``) is the mean times H·W: the pool,
        then a per-channel affine step (BatchNorm's, scale H·W) that writes the sum."""
        t = self.tensor(node, x)
        shape = self.shapes[t]
        dims = [dims] if isinstance(dims, int) else list(dims or ())
        if len(shape) != 4 or sorted(d % 4 for d in dims) != [2, 3]:
            raise self.refuse(node, f"{op} over dims {dims} of shape {list(shape)}: only the "
                              "spatial dims (2, 3) of a 4-D [N,C,H,W] tensor are supported")
        pooled = f"{node.name}_pool"
        self.shapes[pooled] = (shape[0], shape[1], 1, 1)
        self.layers.append(Layer(self.layer_name(node, op), "adaptive_avgpool2d", (t,),
                                 pooled, {"output_size": (1, 1)}))
        if op == "sum":
            c, area = shape[1], float(shape[2] * shape[3])
            summed = f"{node.name}_sum"
            self.shapes[summed] = self.shapes[pooled]
            self.layers.append(Layer(self.layer_name(node, "sum") + ".scale", "batchnorm2d",
                                     (pooled,), summed, {"eps": 0.0},
                                     {"gamma": np.full(c, area, np.float32),
                                      "beta": np.zeros(c, np.float32),
                                      "mean": np.zeros(c, np.float32),
                                      "var": np.ones(c, np.float32)}))
            pooled = summed
        if keepdim:
            self.names[node] = pooled
        else:
            self.emit(node, "reshape", [pooled])

    def permute(self, node: Node, x: Any, perm: Sequence[int]) -> None:
        t = self.tensor(node, x)
        nd = len(self.shapes[t])
        perm = tuple(int(p) % nd for p in perm)
        if sorted(perm) != list(range(nd)):
            raise self.refuse(node, f"permutation {list(perm)} of a {nd}-D tensor")
        if perm[0] != 0:
            raise self.refuse(node, f"permutation {list(perm)} moves the batch dim: only "
                              "permutations that keep dim 0 are supported")
        if perm == tuple(range(nd)):
            self.passthrough(node, x)
        else:
            self.emit(node, "permute", [t], {"perm": perm})

    def split(self, node: Node, x: Any, sizes: Sequence[int], dim: int) -> None:
        """``chunk``/``split`` along channels: the parts are ``slice`` steps, made when a
        ``getitem`` reads one (``part``)."""
        t = self.tensor(node, x)
        shape = self.shapes[t]
        if dim % len(shape) != 1:
            raise self.refuse(node, f"split along dim {dim}: only the channel dim (1) is "
                              "supported")
        starts = [sum(sizes[:k]) for k in range(len(sizes))]
        self.parts[node] = (t, list(zip(starts, sizes, strict=True)))
        self.names[node] = None

    def part(self, node: Node, whole: Node, k: int) -> None:
        t, parts = self.parts[whole]
        start, size = parts[k]
        self.emit(node, "slice", [t], {"dim": 1, "start": int(start), "size": int(size)})

    def cat(self, node: Node) -> None:
        b = bind(_sig_cat, node)
        parts = [self.tensor(node, t) for t in b["tensors"]]
        nd = len(self.shapes[parts[0]])
        if b["dim"] % nd != 1:
            raise self.refuse(node, f"concatenation along dim {b['dim']}: only the channel dim "
                              "(1) is supported")
        self.emit(node, "concat", parts, {"dim": 1})
