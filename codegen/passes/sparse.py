"""Sparse layers: which pruning scheme a layer's zeros follow, and the storage format (and so
the kernel) that turns them into time saved.

``with_schemes`` records the schemes ``compile_model(schemes=...)`` was given on the captured
layers (``Layer.scheme``); the formats themselves are chosen by ``choose_storage``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

import numpy as np

from codegen.emit.vec import WINOGRAD, _best_tile, default_algo
from codegen.isa import VectorIsa
from codegen.lr import CodegenError, Graph, Layer

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

# A layer keeps dense storage when its sparse kernel would do more than this fraction of the
# dense layer's multiply-adds (zeros included by the block format): past it the register-blocked
# dense kernels win. ``m`` is the number of filters sharing one index list (1: CSR, more:
# blocks). Measured per layer on the AVX-512 host (1 thread, resnet18/vgg16 layers forced
# sparse, sparse vs dense): stride-2 3x3 convs (direct dense) at density 0.5, m=8: 0.55-0.6 of
# the dense time; at 0.3, m=1: 0.72-0.76.
MAX_DENSITY = {1: 0.40, 2: 0.50, 4: 0.60, 8: 0.65}
# Dense 3x3 stride-1 convs run Winograd, up to 4x fewer multiplies on large images, so there
# the sparse kernel must skip much more; how much depends on the image (Winograd's edge shrinks
# with the tile count). Rows: (least F(4,3) output tiles, limits by m). Measured break-even
# densities (same runs): m=1 0.13-0.15 and m=8 0.22-0.29 at 28x28-224x224 outputs (≥ 49
# tiles), 0.3 and 0.5 at 14x14 (16 tiles), 0.35 and 0.6 at 7x7; limits a little under them.
WINOGRAD_MAX_DENSITY = (
    (49, {1: 0.12, 2: 0.15, 4: 0.18, 8: 0.22}),
    (16, {1: 0.25, 2: 0.32, 4: 0.40, 8: 0.45}),
    (0, {1: 0.33, 2: 0.42, 4: 0.52, 8: 0.58}),
)


def max_density(la: Layer, out_shape: tuple[int, ...], m: int) -> tuple[float, str]:
    """The density (``m``-filter blocks' share of the dense multiply-adds) above which ``la``
    keeps its dense kernel, and which dense kernel that is."""
    algo = la.tuning.get("algo") or default_algo(la, out_shape)
    if algo not in WINOGRAD:
        return MAX_DENSITY[m], "direct"
    oh, ow = out_shape[2:4]
    tiles = -(-oh // 4) * -(-ow // 4)
    limits = next(lim for least, lim in WINOGRAD_MAX_DENSITY if tiles >= least)
    return limits[m], f"Winograd {algo[-1]}x3"


# A 1x1 stride-1 conv whose zeros line up in blocks of x output channels (the block scheme
# with rows = x) runs on blocked NCHW[x]c activations ("bcsr_blocked": one index list of kept
# input channels per block of x outputs, vectorised over those outputs), so no layout change
# separates it from the depthwise convs around it; it keeps its dense kernel above this share
# of the dense multiply-adds. Measured (mobilenet_v2's projection convs block-pruned, forced,
# against the same convs dense, 1 thread): 0.71 of the dense time at density 0.7, 0.57 at 0.5,
# 0.35 at 0.3.
BLOCKED_1X1_MAX_DENSITY = 0.75
MIN_BLOCK_EFFICIENCY = 0.9  # useful multiply-adds / all, for a block format to be chosen
OVERREAD_SLACK = "overread_floats"  # a sparse conv's reads past its input's last element


def _union_entries(nz: np.ndarray, m: int) -> int:
    """Index-list length summed over filter groups of ``m``: positions any filter keeps."""
    oc = nz.shape[0]
    g = -(-oc // m)
    pad = np.zeros((g * m, *nz.shape[1:]), bool)
    pad[:oc] = nz
    return int(pad.reshape(g, m, -1).any(1).sum())


def blocked_1x1_ok(la: Layer) -> bool:
    """A conv the blocked sparse 1x1 kernel can run: 1x1, stride 1, no padding, groups 1."""
    a = la.attrs
    return (tuple(a["kernel"]) == (1, 1) and tuple(a["stride"]) == (1, 1)
            and not any(a["padding"]) and a["groups"] == 1)


def _most_rows(isa: VectorIsa) -> int:
    # m x V accumulators + V input vectors (weights are broadcast from memory: AVX-512's
    # embedded broadcast, NEON's by-element FMA) must fit the registers with V >= 2
    return 8 if isa.registers >= 32 else 4


def _most_vectors(m: int, isa: VectorIsa) -> int:
    return max(1, min(12, (isa.registers - 4) // (m + 1)))


def sparse_plan(nz: np.ndarray, plane: int, isa: VectorIsa) -> tuple[int, int, int]:
    """(m, V, entries) of a sparse conv. m: the most filters per shared index list (a power of
    two) whose zero-filled blocks keep ≥ MIN_BLOCK_EFFICIENCY of the multiply-adds useful:
    every input vector loaded serves m FMAs, and loads, not FMAs, bound these kernels once the
    input planes spill out of L1 (measured on resnet18's 7x7 layers: m=4 x V=4 took 1.6x the
    time of m=8 x V=2, the same FMAs). V: vectors of output positions per work item, the
    least work counting the last chunk's overhang and about one vector's worth of fixed cost
    per chunk (set-up, the store)."""
    nnz = int(nz.sum())
    m, u = 1, nnz
    k = 2
    while k <= _most_rows(isa):
        uk = _union_entries(nz, k)
        if nnz >= MIN_BLOCK_EFFICIENCY * uk * k:
            m, u = k, uk
        k *= 2
    t = -(-plane // isa.floats)
    v = min(range(1, _most_vectors(m, isa) + 1), key=lambda v: (-(-t // v) * (v + 1), -v))
    return m, v, u


FKW_MAX_SHAPES = 64


def fkw_shapes(nz: np.ndarray) -> np.ndarray | None:
    """The distinct kernel shapes (bool [P, kh*kw]) of a layer whose kept kernels all keep the
    same number of positions (pattern pruning: 4; connectivity: all), at most 25 and at most
    FKW_MAX_SHAPES shapes; None when the layer does not look like that (then it is plain CSR)."""
    k = nz.reshape(nz.shape[0] * nz.shape[1], -1)
    kept = k[k.any(1)]
    if not len(kept) or len(set(kept.sum(1).tolist())) != 1 or kept[0].sum() > 25:
        return None
    shapes = np.unique(kept, axis=0)
    return shapes if len(shapes) <= FKW_MAX_SHAPES else None


# Schemes whose layers get FKW rather than CSR. Measured on the AVX-512 host (resnet18, every
# 3x3 conv pattern-pruned to 5.3x, 1 thread, side by side): CSR 17.3-17.8 ms, FKW 19.7-20.1 ms
# (both are bound by one input load per FMA; FKW's four tap bases per kernel cost address
# arithmetic that CSR folds into the load), so pattern layers use CSR here; connectivity's
# 9-tap kernels were even within noise. A phone may rank them differently: pass
# ``fkw_schemes`` to choose.
FKW_SCHEMES = ("connectivity",)


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
    ``fkw_schemes``; see ``codegen/emit/sparse.py``). ``Layer.tuning`` records m, V (vectors of
    output positions per work item), the density and the reason for the choice; a layer left
    dense records why in ``attrs["sparse_skipped"]``. ``policy`` "auto" keeps the dense kernel
    where the density limits above say it is faster; "always" gives every layer that has a
    sparse kernel that kernel (tests, measurements of the limits)."""
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
        w = la.params["weight"]
        nz = w != 0
        density = float(nz.mean())
        if la.op == "linear":
            ob = -(-w.shape[0] // x)
            u = _union_entries(nz, x)
            eff = u * x / max(1, ob * x * w.shape[1])
            if eff > MAX_DENSITY[8] and not forced:
                layers.append(replace(la, attrs={**la.attrs, "sparse_skipped":
                              f"blocks of {x} outputs keep {eff:.0%} of the weights"}))
                continue
            layers.append(replace(la, storage="bcsr", tuning={
                "m": x, "density": round(density, 4), "entries": u}))
            continue
        oc, icg, kh, kw = w.shape
        if blocked_1x1_ok(la):
            u = _union_entries(nz, x)
            eff = u * x / max(1, -(-oc // x) * x * icg)
            if eff <= BLOCKED_1X1_MAX_DENSITY:
                hw = graph.shapes[la.output][2] * graph.shapes[la.output][3]
                layers.append(replace(la, storage="bcsr_blocked", tuning={
                    "m": x, "density": round(density, 4), "entries": u,
                    "W": _best_tile(hw, min(16, isa.registers - 4))}))
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
        geo: dict = {"direct": direct, "Wq": wq, "Hq": hq, "V": v, "plane": plane}
        inputs = la.inputs
        if direct:
            geo.update(PS=h * wd, phases=((0, 0),), XN=c * h * wd)
            attrs = {**la.attrs, "sparse": geo, OVERREAD_SLACK: chunk}
        else:
            phases = tuple(sorted({(ky % s, kx % s) for ky in range(kh) for kx in range(kw)}))
            ps = -(-(hq * wq + chunk + kw) // x) * x
            geo.update(PS=ps, phases=phases, XN=c * len(phases) * ps)
            key = (la.inputs[0], s, tuple(la.attrs["padding"]), phases, ps, wq, hq)
            if key not in pads:
                name = f"{la.inputs[0]}_pad{len(pads)}"
                shapes[name] = (n, c, len(phases), ps)
                layers.append(Layer(f"{la.name}.pad", "sparse_pad", (la.inputs[0],), name,
                                    {"stride": s, "padding": tuple(la.attrs["padding"]),
                                     "phases": phases, "Hq": hq, "Wq": wq, "PS": ps}))
                pads[key] = name
            inputs = (pads[key], *la.inputs[1:])
            attrs = {**la.attrs, "sparse": geo}
        storage = "csr" if m == 1 else "bcsr"
        if m == 1 and la.scheme in fkw_schemes and fkw_shapes(nz) is not None:
            storage = "fkw"
        layers.append(replace(la, inputs=inputs, attrs=attrs, storage=storage,
                              tuning={"m": m, "V": v, "density": round(density, 4),
                                      "entries": entries}))
    used = {t for la in layers for t in (*la.inputs, la.output)}
    return replace(graph, layers=tuple(layers), plan=None,
                   shapes={k: v for k, v in shapes.items() if k in used})


def sparse_summary(graph: Graph) -> dict[str, str]:
    """Per layer with a pruning scheme: its storage and shape, or why it stayed dense."""
    out = {}
    for la in graph.layers:
        if la.scheme == "dense":
            continue
        if la.storage != "dense":
            t = la.tuning
            out[la.name] = (f"{la.scheme}: {la.storage}, m={t['m']}, density "
                            f"{t['density']:.3f}, {t['entries']} index entries")
        else:
            why = la.attrs.get("sparse_skipped", "no sparse kernel for this target")
            out[la.name] = f"{la.scheme}: dense ({why})"
    return out
