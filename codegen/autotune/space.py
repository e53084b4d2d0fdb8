"""What the tuner searches for a layer on a target, and the key its results are stored under.

``tunable_space`` and ``default_point`` ask the cost model (``codegen.cost``) about the layer
the layout pass will give a blocked output (``vector_conv``): the lookup runs before the
layout pass, so shapes are logical NCHW, and the blocked shape is the layout pass's
``blocked_shape``. ``layer_key`` says everything a kernel's speed depends on that
compile_model fixes (see ``codegen/autotune/db.py``).
"""

from __future__ import annotations

import json
from typing import Any

from codegen.bundle import Target
from codegen.cost import default_tuning, tuning_space, vector_conv
from codegen.isa import VectorIsa, isa_for
from codegen.lr import Graph, Layer
from codegen.passes.layout import blocked_shape


def _jsonable(v: Any) -> Any:
    if isinstance(v, tuple | list):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in sorted(v.items())}
    if hasattr(v, "item"):  # numpy scalars
        return v.item()
    return v


def _vector_out(la: Layer, graph: Graph, target: Target
                ) -> tuple[VectorIsa, tuple[int, ...]] | None:
    """(isa, blocked output shape) when the layout pass will give ``la`` a vectorised conv
    kernel on ``target`` (``cost.vector_conv``), else None."""
    if la.op != "conv2d" or target.arch == "opencl":
        return None
    out = graph.shapes[la.output]
    isa = isa_for(target.arch, target.features)
    if not vector_conv(la, out, isa.floats):
        return None
    return isa, blocked_shape(out, isa.floats)


def tunable_space(la: Layer, graph: Graph, target: Target) -> dict[str, tuple]:
    """The legal values of each of ``la``'s tuning parameters on ``target`` (empty: nothing
    to tune: no vectorised kernel, or a single point)."""
    v = _vector_out(la, graph, target)
    if v is None:
        return {}
    space = tuning_space(la, v[1], v[0])
    if not space or all(len(x) <= 1 for x in space.values()):
        return {}
    return space


def default_point(la: Layer, graph: Graph, target: Target) -> dict[str, Any]:
    """The cost model's choice for ``la`` (what the layout pass fills in)."""
    v = _vector_out(la, graph, target)
    return default_tuning(la, v[1], v[0]) if v is not None else {}


def layer_key(la: Layer, graph: Graph, target: Target, threads: int) -> dict[str, Any]:
    """What a kernel's speed depends on (see the module docstring), as plain JSON data."""
    isa = isa_for(target.arch, target.features) if target.arch != "opencl" else None
    return {
        "op": la.op,
        "inputs": [list(graph.shapes[t]) for t in la.inputs],
        "output": list(graph.shapes[la.output]),
        "weight": list(la.params["weight"].shape) if "weight" in la.params else None,
        "attrs": _jsonable(la.attrs),
        "epilogue": list(la.epilogue),
        "scheme": la.scheme,
        "storage": la.storage,
        "target": {"arch": target.arch, "os": target.os, "abi": target.abi,
                   "features": sorted(target.features), "isa": isa.name if isa else None},
        "threads": threads,
    }


def key_string(key: dict[str, Any]) -> str:
    return json.dumps(key, sort_keys=True, separators=(",", ":"))


def describe_key(key: dict[str, Any]) -> str:
    """A short human name for a key: ``conv2d 3x3s1 64→64 56x56 +relu``."""
    w, out = key.get("weight") or [], key["output"]
    a = key["attrs"]
    if key["op"] == "conv2d" and len(w) == 4:
        kh, kw = a["kernel"]
        sh, sw = a["stride"]
        s = f"s{sh}" if sh == sw else f"s{sh}x{sw}"
        g = f" g{a['groups']}" if a.get("groups", 1) > 1 else ""
        hw = "x".join(str(d) for d in out[2:4])
        text = f"conv2d {kh}x{kw}{s} {w[1] * a.get('groups', 1)}→{w[0]}{g} {hw}"
    else:
        text = f"{key['op']} {out}"
    if key["epilogue"]:
        text += " +" + "+".join(key["epilogue"])
    if key["scheme"] != "dense":
        text += f" <{key['scheme']}/{key['storage']}>"
    return text
