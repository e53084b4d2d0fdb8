"""Phase 1: replace operators that are slow on phones (or that the code generator lacks) by
mobile-friendly ones, before any pruning is searched.

Module layers are swapped in place (SiLU → Hardswish, Sigmoid → Hardsigmoid, ...); functional
calls in ``forward`` (``F.silu(x)``, ``x.sigmoid()``) are rewritten in the model's torch.fx
graph, which keeps every module path, so pruning plans and layer names still match. GELU and
Mish become Hardswish (x·hardsigmoid(x), the piecewise-linear member of the same family; the
brief fine-tune that follows absorbs the difference), LeakyReLU and ELU become ReLU.

With int8 among the search's precisions (``replace_ops(model, int8=True)``) SiLU, GELU and Mish
become ReLU instead: int8 kernels fuse ReLU/ReLU6 only (``codegen.quant.INT8_ACTIVATIONS``),
and a conv whose epilogue is a Hardswish would stay float32, leaving nothing to quantize.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import fx, nn

MODULES: dict[type, type] = {nn.SiLU: nn.Hardswish, nn.Sigmoid: nn.Hardsigmoid,
                             nn.GELU: nn.Hardswish, nn.Mish: nn.Hardswish,
                             nn.LeakyReLU: nn.ReLU, nn.ELU: nn.ReLU}
FUNCTIONS = {F.silu: F.hardswish, torch.sigmoid: F.hardsigmoid, F.sigmoid: F.hardsigmoid,
             F.gelu: F.hardswish, F.mish: F.hardswish, F.leaky_relu: F.relu, F.elu: F.relu}
METHODS = {"sigmoid": F.hardsigmoid, "sigmoid_": F.hardsigmoid}
# int8 in the search: the unbounded smooth ones become ReLU (what int8 kernels fuse)
INT8_MODULES = {**MODULES, nn.SiLU: nn.ReLU, nn.GELU: nn.ReLU, nn.Mish: nn.ReLU}
INT8_FUNCTIONS = {**FUNCTIONS, F.silu: F.relu, F.gelu: F.relu, F.mish: F.relu}


@dataclass(frozen=True)
class Replacement:
    where: str  # module path, or the fx node's name for a functional call
    old: str
    new: str


def _name(f) -> str:
    return getattr(f, "__name__", str(f))


def replace_ops(model: nn.Module, int8: bool = False) -> tuple[nn.Module, list[Replacement]]:
    """A copy of ``model`` with the slow operators replaced, and what was replaced (``int8``:
    the int8-friendly table)."""
    modules = INT8_MODULES if int8 else MODULES
    functions = INT8_FUNCTIONS if int8 else FUNCTIONS
    model = copy.deepcopy(model)
    done: list[Replacement] = []
    for name, m in list(model.named_modules()):
        for child_name, child in list(m.named_children()):
            new = modules.get(type(child))
            if new is None:
                continue
            path = f"{name}.{child_name}" if name else child_name
            setattr(m, child_name, new())
            done.append(Replacement(path, type(child).__name__, new.__name__))
    try:
        gm = fx.symbolic_trace(model)
    except Exception:  # untraceable models keep their functional calls; capture names them
        return model, done
    changed = False
    for node in gm.graph.nodes:
        if node.op == "call_function" and node.target in functions:
            new_f = functions[node.target]
            done.append(Replacement(node.name, _name(node.target), _name(new_f)))
            node.target = new_f
            node.args, node.kwargs = node.args[:1], {}
            changed = True
        elif node.op == "call_method" and node.target in METHODS:
            new_f = METHODS[node.target]
            done.append(Replacement(node.name, f".{node.target}()", _name(new_f)))
            node.op, node.target = "call_function", new_f
            node.args, node.kwargs = node.args[:1], {}
            changed = True
    if not changed:
        return model, done
    gm.graph.lint()
    gm.recompile()
    return gm.eval(), done
