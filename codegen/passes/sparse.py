"""Sparse layers: which pruning scheme a layer's zeros follow, and the storage format (and so
the kernel) that turns them into time saved.

``with_schemes`` records the schemes ``compile_model(schemes=...)`` was given on the captured
layers (``Layer.scheme``); the formats themselves are chosen by ``choose_storage``, with the
density limits and block shapes of the cost model (``codegen/cost.py``). The format names are
``codegen.lr.SPARSE_FORMATS``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

import numpy as np

from codegen.cost import (
    BLOCKED_1X1_MAX_DENSITY,
    FKW_SCHEMES,
    MAX_DENSITY,
    best_tile,
    blocked_1x1_ok,
    fkw_shapes,
    max_density,
    sparse_plan,
    union_entries,
)
from codegen.isa import VectorIsa
from codegen.lr import CodegenError, Graph, Layer, SparseGeometry, SparsePlan
from codegen.quant import is_int8

# The mask schemes the code generator knows (filter/channel pruning gives plain, narrower
# layers and needs nothing here).
SPARSE_SCHEMES = ("unstructured", "pattern", "connectivity", "block", "block_punched")


def with_schemes(graph: Graph, schemes: Mapping[str, str]) -> Graph:
    """``graph`` with ``Layer.scheme`` set for the conv2d/linear layers named in ``schemes``
    (module path -> scheme). Unknown layers or schemes are a CodegenError naming them."""
    by_name = {la.name: la for la in graph.layers if la.op in ("conv2d", "linear")}
    for name, scheme in schemes.items():
        if scheme in ("filter", "channel", "dense"):
            continue
        if scheme not in SPARSE_SCHEMES:
            raise CodegenError(f"layer {name}: unknown pruning scheme {scheme!r}; known: "
                               f"{', '.join(SPARSE_SCHEMES)}")
        if name not in by_name:
            near = [n for n in by_name if name.split(".")[-1] in n][:3]
            raise CodegenError(f"layer {name}: no conv2d or linear layer of that name in the "
                               f"captured model" + (f" (like: {', '.join(near)})" if near
                                                     else ""))
    layers = [replace(la, scheme=schemes[la.name]) if la.name in by_name
              and schemes.get(la.name, "dense") in SPARSE_SCHEMES else la
              for la in graph.layers]
    return graph.with_layers(layers)


# ---- storage choice ----------------------------------------------------------------------------

OVERREAD_SLACK = "overread_floats"  # a sparse conv's reads past its input's last element


SPARSE_POLICIES = ("auto", "always")


def choose_storage(graph: Graph, isa: VectorIsa,
                   fkw_schemes: tuple[str, ...] = FKW_SCHEMES, policy: str = "auto") -> Graph:
    """Give every conv2d (groups 1, dilation 1) and linear layer whose ``scheme`` is sparse a
    sparse storage format when its kernel saves work, and plan its input: convs read their
    input as zero-padded planes, one per stride phase (``sparse_pad`` steps, shared by convs of
    the same geometry), except 1x1 stride-1 unpadded ones, which read it as it is.

    Formats (``Layer.storage``): "csr" (one index list per filter: unstructured), "bcsr" (one
    index list per block of m filters, m > 1: block, block_punched, or any layer whose zeros
    line up that way), "fkw" (filter-kernel-weight, kernels grouped by shape, for the
    ``fkw_schemes``; see ``codegen/emit/sparse``). ``Layer.sparse`` (a ``SparsePlan``)
    records m, the vectors of output positions per work item, the density and how the input
    is read; a layer left dense records why in ``attrs["sparse_skipped"]``. A layer the
    quantization pass ran in int8 gets the int8 block formats instead (``_int8_storage``).
    ``policy`` "auto" keeps the dense kernel where the density limits above say it is faster;
    "always" gives every layer that has a sparse kernel that kernel (tests, measurements of the
    limits)."""
    if policy not in SPARSE_POLICIES:
        raise CodegenError(f"sparse policy {policy!r}: expected one of "
                           f"{', '.join(SPARSE_POLICIES)}")
    forced = policy == "always"
    x = isa.floats
    layers: list[Layer] = []
    shapes = dict(graph.shapes)
    pads: dict[tuple, str] = {}
    for la in graph.layers:
        if la.scheme not in SPARSE_SCHEMES or la.op not in ("conv2d", "linear"):
            layers.append(la)
            continue
        if is_int8(la):
            layers.append(_int8_storage(la, x, forced))
            continue
        w = la.params["weight"]
        nz = w != 0
        density = float(nz.mean())
        if la.op == "linear":
            ob = -(-w.shape[0] // x)
            u = union_entries(nz, x)
            eff = u * x / max(1, ob * x * w.shape[1])
            if eff > MAX_DENSITY[8] and not forced:
                layers.append(replace(la, attrs={**la.attrs, "sparse_skipped":
                              f"blocks of {x} outputs keep {eff:.0%} of the weights"}))
                continue
            layers.append(replace(la, storage="bcsr", tuning={},
                                  sparse=SparsePlan(x, round(density, 4), u)))
            continue
        oc, icg, kh, kw = w.shape
        if blocked_1x1_ok(la):
            u = union_entries(nz, x)
            eff = u * x / max(1, -(-oc // x) * x * icg)
            if eff <= BLOCKED_1X1_MAX_DENSITY:
                hw = graph.shapes[la.output][2] * graph.shapes[la.output][3]
                layers.append(replace(la, storage="bcsr_blocked", tuning={}, sparse=SparsePlan(
                    x, round(density, 4), u, tile=best_tile(hw, min(16, isa.registers - 4)))))
                continue
        if la.attrs["groups"] != 1 or tuple(la.attrs["dilation"]) != (1, 1):
            layers.append(replace(la, attrs={**la.attrs, "sparse_skipped":
                                             "grouped or dilated conv: dense kernels"}))
            continue
        n, c, h, wd = graph.shapes[la.inputs[0]]
        _, _, oh, ow = graph.shapes[la.output]
        s, s2 = la.attrs["stride"]
        pt, pb, pl, pr = la.attrs["padding"]
        direct = s == s2 == 1 and kh == kw == 1 and not any(la.attrs["padding"])
        if s != s2:
            direct = False
        wq = wd if direct else -(-(wd + pl + pr) // s)
        hq = h if direct else -(-(h + pt + pb) // s)
        plane = oh * wq
        m, v, entries = sparse_plan(nz, plane, isa)
        kept = entries * m / w.size
        limit, dense_kind = max_density(la, graph.shapes[la.output], m)
        if kept > limit and not forced:
            layers.append(replace(la, attrs={**la.attrs, "sparse_skipped":
                          f"density {density:.2f} ({kept:.2f} with m={m}) is above "
                          f"{limit}: the dense kernel is faster ({dense_kind})"}))
            continue
        chunk = v * x
        inputs = la.inputs
        if direct:
            geo = SparseGeometry(True, wq, hq, plane, h * wd, ((0, 0),), c * h * wd)
            attrs = {**la.attrs, OVERREAD_SLACK: chunk}
        else:
            phases = tuple(sorted({(ky % s, kx % s) for ky in range(kh) for kx in range(kw)}))
            ps = -(-(hq * wq + chunk + kw) // x) * x
            geo = SparseGeometry(False, wq, hq, plane, ps, phases, c * len(phases) * ps)
            key = (la.inputs[0], s, tuple(la.attrs["padding"]), phases, ps, wq, hq)
            if key not in pads:
                name = f"{la.inputs[0]}_pad{len(pads)}"
                shapes[name] = (n, c, len(phases), ps)
                layers.append(Layer(f"{la.name}.pad", "sparse_pad", (la.inputs[0],), name,
                                    {"stride": s, "padding": tuple(la.attrs["padding"]),
                                     "phases": phases, "Hq": hq, "Wq": wq, "PS": ps}))
                pads[key] = name
            inputs = (pads[key], *la.inputs[1:])
            attrs = la.attrs
        storage = "csr" if m == 1 else "bcsr"
        if m == 1 and la.scheme in fkw_schemes and fkw_shapes(nz) is not None:
            storage = "fkw"
        layers.append(replace(la, inputs=inputs, attrs=attrs, storage=storage, tuning={},
                              sparse=SparsePlan(m, round(density, 4), entries, vectors=v,
                                                geometry=geo)))
    used = {t for la in layers for t in (*la.inputs, la.output)}
    return replace(graph, layers=tuple(layers), plan=None,
                   shapes={k: v for k, v in shapes.items() if k in used})


# An int8 pruned layer gets the block-sparse int8 kernel (``codegen/emit/sparse/q8.py``) when
# its entries, (4 input channels, tap) for a block of x filters, are at most this share of the
# dense int8 kernel's; otherwise the dense int8 kernel runs it. Measured (AVX-512 VNNI, 1
# thread, block-punched 3x3 convs forced sparse against dense int8, side by side, load ~5):
# sparse/dense time 0.32-0.37 at density 0.24, 0.51-0.54 at 0.44, 0.69-0.74 at 0.62, 0.87-0.95
# at 0.81 (128 ch at 28x28, 256 at 14x14); 1x1 256 ch at 14x14 0.79 at 0.61, 0.95 at 0.9.
Q8_CONV_MAX_DENSITY = 0.8
# The Linear's entries gather 4 arbitrary input bytes (4 loads and the shifts per dot product
# where the dense Linear loads one dword). Measured as above, block rows=16: 4096->4096 0.15 at
# 0.1 kept, 0.37 at 0.25, 0.61 at 0.4; 512->1000 0.25, 0.67, 0.96 at 0.4, 1.22 at 0.6.
Q8_LINEAR_MAX_DENSITY = 0.4
Q8_GROUP = 4  # input channels per entry of the int8 formats


def _int8_storage(la: Layer, x: int, forced: bool) -> Layer:
    """An int8 pruned conv or linear: the int8 block-sparse format ("bcsr_blocked" for a conv
    of any kernel size, on blocked uint8 activations; "bcsr" for a linear), m = x filters per
    index list of (4 input channels, tap) entries, or dense int8 with the reason."""
    w = la.params["weight"]
    nz = w != 0
    density = float(nz.mean())
    o = w.shape[0]
    ob = -(-o // x)
    pad = np.zeros((ob * x, *w.shape[1:]), bool)
    pad[:o] = nz
    if la.op == "linear":
        kept = pad.reshape(ob, x, -1).any(1).sum(1)
        entries = int((-(-kept // Q8_GROUP)).sum())
        eff = entries * Q8_GROUP / max(1, ob * w.shape[1])
        limit, storage = Q8_LINEAR_MAX_DENSITY, "bcsr"
    else:
        oc, ic, kh, kw = w.shape
        g = -(-ic // Q8_GROUP)
        grp = np.zeros((ob * x, g * Q8_GROUP, kh, kw), bool)
        grp[:, :ic] = pad
        entries = int(grp.reshape(ob, x, g, Q8_GROUP, kh, kw).any(axis=(1, 3)).sum())
        eff = entries / max(1, ob * g * kh * kw)
        limit, storage = Q8_CONV_MAX_DENSITY, "bcsr_blocked"
    if eff > limit and not forced:
        return replace(la, attrs={**la.attrs, "sparse_skipped":
                                  f"int8: blocks of {x} filters x {Q8_GROUP} channels keep "
                                  f"{eff:.0%} of the dense int8 work (above {limit}): dense "
                                  "int8 kernel"})
    return replace(la, storage=storage, tuning={},
                   sparse=SparsePlan(x, round(density, 4), entries))


def sparse_summary(graph: Graph) -> dict[str, str]:
    """Per layer with a pruning scheme: its storage and shape, or why it stayed dense."""
    out = {}
    for la in graph.layers:
        if la.scheme == "dense":
            continue
        if la.sparse is not None:
            out[la.name] = f"{la.scheme}: {la.storage}, {la.sparse!r}"
        else:
            why = la.attrs.get("sparse_skipped", "no sparse kernel for this target")
            out[la.name] = f"{la.scheme}: dense ({why})"
    return out
