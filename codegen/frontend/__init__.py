"""Capture: turn a PyTorch nn.Module into an LR Graph.

torch.fx ``symbolic_trace`` gives the op graph, ``ShapeProp`` on the example inputs gives every
tensor's shape (so the batch size is the example's). ``builder.GraphBuilder`` walks it and
records one Layer per op through its op builders; each call goes to a front end:

- ``fx.py``: the calls of a traced nn.Module, looked up by module type, function or method name;
- ``aten.py``: the ATen ops of a module that is already an exported graph
  (``torch.export.load(path).module()``: ATen ops, parameters as get_attr nodes), which is not
  traced again; its graph is read directly.

Neither front end imports the other; both call the same op builders, so both paths give the
same LR. Anything not in a front end's tables is refused with an ``UnsupportedOp`` that names
the layer. Layer names come from the source module path in either case: a layer module's path
("layer1.0.conv1"), or for a functional op, its module's path and the op ("layer1.0.add"); a
name used twice gets ":2", ":3".

The package is ``frontend``, not ``capture``, so that ``codegen.capture`` stays the function
the compiler's face exports rather than a module shadowing it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
from torch._ops import OpOverload
from torch.fx import GraphModule, Node, symbolic_trace
from torch.fx.passes.shape_prop import ShapeProp

from codegen.frontend import aten, fx
from codegen.frontend.builder import GraphBuilder
from codegen.lr import CodegenError, Graph


def capture(module: nn.Module, example_inputs: torch.Tensor | Sequence[torch.Tensor]) -> Graph:
    """Trace ``module`` in eval mode on ``example_inputs`` and return its LR graph."""
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    if is_exported(module):
        # Already a graph, frozen at export time (train()/eval() raise on it). Clone the inputs:
        # in-place ATen ops (relu_) would otherwise write into the caller's tensors.
        with torch.no_grad():
            ShapeProp(module).propagate(*(x.clone() for x in example_inputs))
        return GraphBuilder(module, exported=True).run(_call)
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
            try:  # first without ShapeProp, which prints a traceback of any error
                gm(*(x.clone() for x in example_inputs))
            except Exception as e:  # the model's own error on these inputs
                raise _wrong_inputs(module, example_inputs, e) from e
            ShapeProp(gm).propagate(*(x.clone() for x in example_inputs))
        return GraphBuilder(gm).run(_call)
    finally:
        module.train(was_training)


def _wrong_inputs(module: nn.Module, inputs: Sequence[torch.Tensor], e: Exception
                  ) -> CodegenError:
    """A one-line error for a model that fails on the example inputs (a wrong input shape)."""
    root = e.__cause__ or e
    why = (str(root).strip().splitlines() or [type(root).__name__])[0]
    shapes = ", ".join(str(list(x.shape)) for x in inputs)
    return CodegenError(f"{type(module).__name__} cannot run on an input of shape {shapes}: "
                        f"{why}. Give the shape the model takes (--input-shape N,C,H,W, e.g. "
                        "1,3,224,224 for an RGB model)")


def is_exported(module: nn.Module) -> bool:
    """Whether ``module`` is an exported program's graph (its calls are ATen OpOverloads)."""
    return isinstance(module, GraphModule) and any(
        n.op == "call_function" and isinstance(n.target, OpOverload) for n in module.graph.nodes)


def _call(b: GraphBuilder, node: Node) -> None:
    """ATen ops to the export front end, every other call to the fx one (an exported graph
    has a few: its input guards, getitem)."""
    if node.op == "call_function" and isinstance(node.target, OpOverload):
        aten.handle(b, node)
    else:
        fx.handle(b, node)


__all__ = ["GraphBuilder", "capture", "is_exported"]
