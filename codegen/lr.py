"""The layer-wise representation (LR): what capture produces and every pass rewrites.

A Graph is a list of Layer records in execution order, plus the shapes of the tensors that flow
between them. A Layer names the source module it came from, its op, its input and output tensor
names, its attributes (kernel, stride, padding...), its parameters (numpy float32), the
element-wise ops fused after it (``epilogue``), and the pruning scheme, storage format (with
the sparse pass's ``SparsePlan``) and tuning parameters the emitters will read. Passes return
new Layers (``dataclasses.replace``); they never mutate one in place.

The vocabulary is three tables, one row per entry, which capture, the passes, the emitters and
the reference executor all read: ``ACTIVATIONS`` (an activation's C and vector bodies, its
torch semantics and the torch forms captured as it), ``OPS`` (an op's kind, the params its
kernel reads, whether it follows its input's layout, its reference) and ``SPARSE_FORMATS``
(what the passes know of a storage format; ``codegen.emit.sparse.FORMATS`` emits it).
``tests/test_codegen_tables.py`` checks that every row is complete.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# ---- the vocabulary: activations, ops and storage formats, one row each ------------------------

@dataclass(frozen=True)
class Activation:
    """An element-wise activation, with what every stage needs of it: capture maps the torch
    forms below to it, the emitters render its bodies (as a step and fused into an epilogue),
    the reference executor runs ``torch_fn``. A new activation is one row of ``ACTIVATIONS``."""

    c_body: str  # body of ``float npas_<name>(float v)``; "{exp}" is the language's exp
    vec_body: str  # body of ``vf npas_v_<name>(vf v)`` (CPU vector kernels); "{lanes}": x
    torch_fn: Callable[[torch.Tensor], torch.Tensor]
    modules: tuple[type[nn.Module], ...] = ()  # nn.Module classes captured as it
    functions: tuple[Callable[..., Any], ...] = ()  # functional forms captured as it
    methods: tuple[str, ...] = ()  # Tensor methods captured as it
    aten: tuple[str, ...] = ()  # ATen overload packets (torch.export graphs) captured as it


# In C source order: a body may call the ones above it (hardswish calls relu6).
ACTIVATIONS: dict[str, Activation] = {
    "relu": Activation(
        "return v < 0.0f ? 0.0f : v;", "return (vf)((vi)v & ~(v < (vf){}));", F.relu,
        (nn.ReLU,), (F.relu, torch.relu, F.relu_, torch.relu_), ("relu", "relu_"),
        ("relu", "relu_")),
    "relu6": Activation(
        "return v < 0.0f ? 0.0f : (v > 6.0f ? 6.0f : v);",
        "v = npas_v_relu(v);\nconst vf six = (vf){} + 6.0f;\nreturn npas_vsel(v > six, six, v);",
        F.relu6, (nn.ReLU6,), (F.relu6,), (), ("relu6",)),
    "hardswish": Activation(
        "return v * npas_relu6(v + 3.0f) / 6.0f;",
        "return v * npas_v_relu6(v + 3.0f) * (1.0f / 6.0f);", F.hardswish, (nn.Hardswish,),
        (F.hardswish,), (), ("hardswish", "hardswish_")),
    "hardsigmoid": Activation(
        "return npas_relu6(v + 3.0f) / 6.0f;", "return npas_v_relu6(v + 3.0f) * (1.0f / 6.0f);",
        F.hardsigmoid, (nn.Hardsigmoid,), (F.hardsigmoid,), (),
        ("hardsigmoid", "hardsigmoid_")),
    "sigmoid": Activation(
        "if (v >= 0.0f) return 1.0f / (1.0f + {exp}(-v));\n  const float e = {exp}(v);\n"
        "  return e / (1.0f + e);",
        "for (int l = 0; l < {lanes}; ++l) v[l] = npas_sigmoid(v[l]);\nreturn v;",
        torch.sigmoid, (nn.Sigmoid,), (torch.sigmoid, F.sigmoid), ("sigmoid", "sigmoid_"),
        ("sigmoid", "sigmoid_")),
    # ---- defined only in sources whose steps use them (see BASE_ACTIVATIONS) ----
    "silu": Activation(
        "return v * npas_sigmoid(v);",
        "for (int l = 0; l < {lanes}; ++l) v[l] = npas_silu(v[l]);\nreturn v;",
        F.silu, (nn.SiLU,), (F.silu,), (), ("silu", "silu_")),
    # erf by Abramowitz and Stegun 7.1.26 (|error| <= 1.5e-7), on |v| / sqrt(2)
    "gelu": Activation(
        "const float z = (v < 0.0f ? -v : v) * 0.70710678118654752f;\n"
        "  const float t = 1.0f / (1.0f + 0.3275911f * z);\n"
        "  const float p = t * (0.254829592f + t * (-0.284496736f + t * (1.421413741f"
        "\n    + t * (-1.453152027f + t * 1.061405429f))));\n"
        "  const float e = 1.0f - p * {exp}(-z * z);\n"
        "  return 0.5f * v * (1.0f + (v < 0.0f ? -e : e));",
        "for (int l = 0; l < {lanes}; ++l) v[l] = npas_gelu(v[l]);\nreturn v;",
        F.gelu, (nn.GELU,), (F.gelu,), (), ("gelu", "gelu_")),
    # x tanh(softplus(x)) = x n / (n + 2) with n = e^x (e^x + 2); x itself past 20 (float)
    "mish": Activation(
        "if (v > 20.0f) return v;\n  const float e = {exp}(v);\n  const float n = e * (e + 2.0f);"
        "\n  return v * n / (n + 2.0f);",
        "for (int l = 0; l < {lanes}; ++l) v[l] = npas_mish(v[l]);\nreturn v;",
        F.mish, (nn.Mish,), (F.mish,), (), ("mish", "mish_")),
}
# Defined in every generated source (the rows before silu): later rows are defined only in a
# source whose steps use them, so adding a row leaves every existing bundle byte-identical.
BASE_ACTIVATIONS = ("relu", "relu6", "hardswish", "hardsigmoid", "sigmoid")


def used_activations(graph: Graph) -> tuple[str, ...]:
    """The activations a graph's sources define: the base ones and those its steps use, in
    table order (a body may call the ones above it)."""
    used = {e for la in graph.layers for e in (la.op, *la.epilogue)}
    return tuple(a for a in ACTIVATIONS if a in BASE_ACTIVATIONS or a in used)

BINARY = {"add": torch.add, "sub": torch.sub, "mul": torch.mul}  # the "binary" op's functions
Reference = Callable[["Layer", list[torch.Tensor], tuple[int, ...]], torch.Tensor]


@dataclass(frozen=True)
class OpDef:
    """An op of the LR. ``kind``: "graph" (the graph's ends: no step), "alias" (a pure
    reshape: no step, the output shares the input's buffer), "compute" (a step capture
    produces), "internal" (a step only the passes insert: layout conversions, sparse padding).
    """

    kind: str
    params: tuple[str, ...] = ()  # the params its kernel reads, in order
    follows_layout: bool = False  # on the CPU it takes its first input's layout (blocked or not)
    emitted: bool = True  # has kernels (False: folded away by a pass before emitting)
    reference: Reference | None = None  # (layer, inputs, output shape) -> output, with torch


def _conv2d(la: Layer, xs: list[torch.Tensor], shape: tuple[int, ...]) -> torch.Tensor:
    a, p = la.attrs, la.params
    pt, pb, pl, pr = a["padding"]
    return F.conv2d(F.pad(xs[0], (pl, pr, pt, pb)), torch.from_numpy(p["weight"]),
                    torch.from_numpy(p["bias"]), a["stride"], 0, a["dilation"], a["groups"])


def _batchnorm2d(la: Layer, xs: list[torch.Tensor], shape: tuple[int, ...]) -> torch.Tensor:
    p = {k: torch.from_numpy(v) for k, v in la.params.items()}
    return F.batch_norm(xs[0], p["mean"], p["var"], p["gamma"], p["beta"], False, 0.0,
                        la.attrs["eps"])


def _maxpool2d(la: Layer, xs: list[torch.Tensor], shape: tuple[int, ...]) -> torch.Tensor:
    a = la.attrs
    return F.max_pool2d(xs[0], a["kernel"], a["stride"], a["padding"], a["dilation"],
                        a["ceil_mode"])


def _avgpool2d(la: Layer, xs: list[torch.Tensor], shape: tuple[int, ...]) -> torch.Tensor:
    a = la.attrs
    return F.avg_pool2d(xs[0], a["kernel"], a["stride"], a["padding"], a["ceil_mode"],
                        a["count_include_pad"])


def _interpolate(la: Layer, xs: list[torch.Tensor], shape: tuple[int, ...]) -> torch.Tensor:
    a = la.attrs  # as the model called it: the size, or the scale factor torch maps with
    sf = a["scale_factor"]
    return F.interpolate(xs[0], size=None if sf else shape[2:], scale_factor=sf, mode=a["mode"],
                         align_corners=a["align_corners"])


def _conv_transpose2d(la: Layer, xs: list[torch.Tensor], shape: tuple[int, ...]
                      ) -> torch.Tensor:
    a, p = la.attrs, la.params
    y = F.conv_transpose2d(xs[0], torch.from_numpy(p["weight"]), torch.from_numpy(p["bias"]),
                           a["stride"], a["padding"], a["output_padding"], 1, a["dilation"])
    return y


def _activation(fn: Callable[[torch.Tensor], torch.Tensor]) -> Reference:
    return lambda la, xs, shape: fn(xs[0])


def _reshape(la: Layer, xs: list[torch.Tensor], shape: tuple[int, ...]) -> torch.Tensor:
    return xs[0].reshape(shape)


# In the order error messages list them.
OPS: dict[str, OpDef] = {
    "conv2d": OpDef("compute", ("weight", "bias"), reference=_conv2d),
    "linear": OpDef("compute", ("weight", "bias"), reference=lambda la, xs, shape: F.linear(
        xs[0], torch.from_numpy(la.params["weight"]), torch.from_numpy(la.params["bias"]))),
    "batchnorm2d": OpDef("compute", emitted=False, reference=_batchnorm2d),
    **{name: OpDef("compute", follows_layout=True, reference=_activation(act.torch_fn))
       for name, act in ACTIVATIONS.items()},
    # element-wise with parameters (plain layout, a step of their own: never fused)
    "clamp": OpDef("compute", reference=lambda la, xs, shape: torch.clamp(
        xs[0], la.attrs["min"], la.attrs["max"])),
    "leaky_relu": OpDef("compute", reference=lambda la, xs, shape: F.leaky_relu(
        xs[0], la.attrs["slope"])),
    "prelu": OpDef("compute", ("weight",), reference=lambda la, xs, shape: F.prelu(
        xs[0], torch.from_numpy(la.params["weight"]))),
    "add": OpDef("compute", follows_layout=True, reference=lambda la, xs, shape: xs[0] + xs[1]),
    # add/sub/mul of two tensors of one rank with broadcasting (a per-channel vector); plain
    "binary": OpDef("compute", reference=lambda la, xs, shape: BINARY[la.attrs["fn"]](*xs)),
    "mul_channel": OpDef("compute", follows_layout=True,
                         reference=lambda la, xs, shape: xs[0] * xs[1]),
    "maxpool2d": OpDef("compute", follows_layout=True, reference=_maxpool2d),
    "avgpool2d": OpDef("compute", follows_layout=True, reference=_avgpool2d),
    "adaptive_avgpool2d": OpDef("compute", follows_layout=True, reference=lambda la, xs, shape:
                                F.adaptive_avg_pool2d(xs[0], la.attrs["output_size"])),
    # nearest (src = floor(dst * scale)) or bilinear (align_corners both ways) resizing of H, W
    "interpolate": OpDef("compute", reference=_interpolate),
    "conv_transpose2d": OpDef("compute", ("weight", "bias"), reference=_conv_transpose2d),
    "concat": OpDef("compute", reference=lambda la, xs, shape: torch.cat(xs, dim=1)),
    # a copy in another dim order (channel shuffle's transpose); plain layout
    "permute": OpDef("compute", reference=lambda la, xs, shape:
                     xs[0].permute(la.attrs["perm"]).contiguous()),
    # channels [start, start + size) (chunk/split along channels); plain layout
    "slice": OpDef("compute", reference=lambda la, xs, shape:
                   xs[0].narrow(1, la.attrs["start"], la.attrs["size"]).contiguous()),
    "flatten": OpDef("alias", reference=_reshape),
    "reshape": OpDef("alias", reference=_reshape),
    "input": OpDef("graph"),
    "output": OpDef("graph"),
    "sparse_pad": OpDef("internal"),
    "to_nchwxc": OpDef("internal"),
    "to_nchw": OpDef("internal"),
    "cast": OpDef("internal"),  # float32 <-> float16 at an fp16 graph's ends
    # float32 <-> uint8 where an int8 graph's precision changes (codegen/quant.py)
    "quantize": OpDef("internal", follows_layout=True),
    "dequantize": OpDef("internal", follows_layout=True),
}

ALIAS_OPS = tuple(n for n, o in OPS.items() if o.kind == "alias")
COMPUTE_OPS = tuple(n for n, o in OPS.items() if o.kind == "compute")
SUPPORTED_OPS = (*COMPUTE_OPS, *ALIAS_OPS)  # what capture accepts
GRAPH_OPS = tuple(n for n, o in OPS.items() if o.kind == "graph")


@dataclass(frozen=True)
class SparseFormat:
    """What the passes know of a sparse storage format (``Layer.storage``); how it is packed
    and emitted is ``codegen.emit.sparse.FORMATS``, keyed by the same names."""

    ops: tuple[str, ...]  # the ops that have a kernel in this format
    reads_blocked: bool  # reads and writes NCHW[x]c activations (else plain NCHW)
    doc: str


SPARSE_FORMATS = {
    "csr": SparseFormat(("conv2d",), False, "one index list per filter (unstructured)"),
    "bcsr": SparseFormat(("conv2d", "linear"), False,
                         "one index list per block of m filters (block, block_punched)"),
    "fkw": SparseFormat(("conv2d",), False, "kernels grouped by shape (pattern, connectivity)"),
    "bcsr_blocked": SparseFormat(("conv2d",), True,
                                 "1x1 convs: one index list per block of x outputs"),
}


def reads_blocked(storage: str) -> bool:
    """Whether a layer with this storage reads and writes blocked activations like a dense
    vectorised conv (False for "dense" itself: that is the layout pass's decision)."""
    fmt = SPARSE_FORMATS.get(storage)
    return fmt is not None and fmt.reads_blocked


@dataclass(frozen=True)
class SparseGeometry:
    """How a sparse conv on plain NCHW reads its input: one flat plane per input channel and
    stride phase (see ``codegen/emit/sparse``)."""

    direct: bool  # reads its input as it is (1x1, stride 1, unpadded): no sparse_pad step
    wq: int  # row stride of a plane: the padded width over the stride
    hq: int  # rows of a plane
    plane: int  # output positions computed per filter, oh * wq (padding columns dropped)
    ps: int  # floats per plane (its data, then zeros)
    phases: tuple[tuple[int, int], ...]  # the stride phases (a, b) the kernel reads
    xn: int  # input floats per batch image


@dataclass(frozen=True)
class SparsePlan:
    """What the sparse pass decided for a layer it gave a sparse storage format (the emitters
    read it): index lists, their length, and the work-item shape."""

    m: int  # filters (outputs) that share one index list
    density: float  # share of the weights that are non-zero
    entries: int  # index-list entries, summed over the lists
    vectors: int = 0  # vectors of output positions per work item (convs on planes)
    tile: int = 0  # output positions per work item ("bcsr_blocked")
    geometry: SparseGeometry | None = None  # convs on planes

    def __repr__(self) -> str:
        return f"m={self.m}, density {self.density:.3f}, {self.entries} index entries"


class CodegenError(ValueError):
    """The code generator cannot handle this model; the message names the layer and the fix."""


class UnsupportedOp(CodegenError):
    """A layer uses an op (or an op variant) the code generator does not support."""


@dataclass(frozen=True, eq=False)
class Layer:
    name: str  # source module path, e.g. "layer1.0.conv1"
    op: str
    inputs: tuple[str, ...]
    output: str
    attrs: dict[str, Any] = field(default_factory=dict)
    params: dict[str, np.ndarray] = field(default_factory=dict)
    epilogue: tuple[str, ...] = ()
    scheme: str = "dense"
    storage: str = "dense"
    tuning: dict[str, Any] = field(default_factory=dict)
    sparse: SparsePlan | None = None  # set with a sparse storage format

    @property
    def is_step(self) -> bool:
        """Whether this layer becomes a kernel call (aliases and graph ends do not)."""
        return self.op not in ALIAS_OPS and self.op not in GRAPH_OPS

    def __repr__(self) -> str:
        attrs = ", ".join(f"{k}={v}" for k, v in self.attrs.items())
        params = ", ".join(f"{k}{list(v.shape)}" for k, v in self.params.items())
        s = f"{self.name}: {self.op}({', '.join(self.inputs)}) -> {self.output}"
        if attrs:
            s += f" [{attrs}]"
        if params:
            s += f" {{{params}}}"
        if self.epilogue:
            s += f" +{'+'.join(self.epilogue)}"
        if self.scheme != "dense" or self.storage != "dense":
            s += f" <{self.scheme}/{self.storage}{f': {self.sparse!r}' if self.sparse else ''}>"
        return s

    __str__ = __repr__


@dataclass(frozen=True)
class MemoryPlan:
    """Static arena plan: one offset per tensor buffer (aliases share their source's)."""

    offsets: dict[str, int]  # tensor name -> byte offset in the arena
    lifetimes: dict[str, tuple[int, int]]  # buffer root -> (first step, last step), inclusive
    arena_bytes: int  # highest byte the plan uses (64-byte aligned)
    peak_bytes: int  # largest sum of simultaneously live buffers: a lower bound for any plan
    peak_step: int  # step index where that happens
    peak_tensors: tuple[str, ...]  # the buffers live there

    def __repr__(self) -> str:
        return (f"MemoryPlan(arena={self.arena_bytes} B, peak live={self.peak_bytes} B at step "
                f"{self.peak_step}: {', '.join(self.peak_tensors)})")


@dataclass(frozen=True)
class Graph:
    layers: tuple[Layer, ...]
    shapes: dict[str, tuple[int, ...]]  # tensor name -> shape (float32, C order)
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    plan: MemoryPlan | None = None
    # the uint8 tensors of an int8 graph and their quantization (codegen.quant.QParams)
    quant: dict[str, Any] = field(default_factory=dict)

    @property
    def steps(self) -> tuple[Layer, ...]:
        return tuple(la for la in self.layers if la.is_step)

    def producer(self, tensor: str) -> Layer | None:
        for la in self.layers:
            if la.output == tensor:
                return la
        return None

    def consumers(self, tensor: str) -> list[Layer]:
        return [la for la in self.layers if tensor in la.inputs]

    def alias_root(self, tensor: str) -> str:
        """The tensor whose buffer ``tensor`` lives in (itself unless it is a reshape)."""
        la = self.producer(tensor)
        while la is not None and la.op in ALIAS_OPS:
            tensor = la.inputs[0]
            la = self.producer(tensor)
        return tensor

    def with_layers(self, layers: list[Layer] | tuple[Layer, ...]) -> Graph:
        used = {t for la in layers for t in (*la.inputs, la.output)}
        shapes = {k: v for k, v in self.shapes.items() if k in used}
        return replace(self, layers=tuple(layers), shapes=shapes, plan=None)

    def __repr__(self) -> str:
        lines = [f"Graph(inputs={list(self.inputs)}, outputs={list(self.outputs)})"]
        for la in self.layers:
            lines.append(f"  {la!r} :: {list(self.shapes.get(la.output, ()))}")
        if self.plan is not None:
            lines.append(f"  {self.plan!r}")
        return "\n".join(lines)

    __str__ = __repr__


def numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n
