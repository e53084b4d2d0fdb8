"""The layer-wise representation (LR): what capture produces and every pass rewrites.

A Graph is a list of Layer records in execution order, plus the shapes of the tensors that flow
between them. A Layer names the source module it came from, its op, its input and output tensor
names, its attributes (kernel, stride, padding...), its parameters (numpy float32), the
element-wise ops fused after it (``epilogue``), and the pruning scheme, storage format and
tuning parameters the emitters will read. Passes return new Layers (``dataclasses.replace``);
they never mutate one in place.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

# Ops the code generator understands. "input"/"output" mark the graph's ends and emit no step;
# ALIAS_OPS are pure reshapes: no step, the output shares the input's buffer.
ACTIVATIONS = ("relu", "relu6", "hardswish", "hardsigmoid", "sigmoid")
ALIAS_OPS = ("flatten", "reshape")
COMPUTE_OPS = ("conv2d", "linear", "batchnorm2d", *ACTIVATIONS, "add", "mul_channel",
               "maxpool2d", "avgpool2d", "adaptive_avgpool2d", "concat")
SUPPORTED_OPS = (*COMPUTE_OPS, *ALIAS_OPS)
GRAPH_OPS = ("input", "output")


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
            s += f" <{self.scheme}/{self.storage}>"
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
