"""The cost model: every decision the passes make about a layer, and the space the tuner searches.

Which kernel family a conv gets (``conv_kind``, ``vector_conv``), the algorithm (direct or
Winograd F(m, 3): ``default_algo``, ``conv_algo``), its accumulator tile (``tuning_space``,
``default_tuning``, ``best_tile``), whether a pool has a plain-layout kernel
(``plain_pool_ok``), and for pruned layers when a sparse kernel beats the dense one
(``MAX_DENSITY``, ``WINOGRAD_MAX_DENSITY``, ``max_density``), how many filters share an index
list (``sparse_plan``) and whether a layer's kernels fit the FKW format (``fkw_shapes``).

The passes (``codegen/passes``) call these to decide, and record the decisions on the layers
(``Layer.tuning``, ``Layer.storage``); the emitters read the records and call these only to
fill in what a record leaves unset. The constants say where they were measured.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from codegen.isa import VectorIsa
from codegen.lr import CodegenError, Layer

# ---- which conv kernel, and its tuning space -----------------------------------------------------

WINOGRAD = {"winograd2": 2, "winograd4": 4, "winograd6": 6}  # algo -> output tile m (m x m)


def conv_kind(la: Layer, x: int) -> str | None:
    """"dense" (channels per group a multiple of x, or groups 1), "depthwise", or None (the
    scalar kernel on plain NCHW)."""
    oc, icg = la.params["weight"].shape[:2]
    g = la.attrs["groups"]
    if g == 1:
        return "dense"
    if icg == 1 and oc == g:
        return "depthwise"
    if icg % x == 0 and (oc // g) % x == 0:
        return "dense"
    return None


def vector_conv(la: Layer, out_shape: tuple[int, ...], x: int) -> bool:
    """Whether ``la`` is a dense-storage conv with a vectorised kernel at vector width ``x``:
    the layout pass gives it a blocked (NCHW[x]c) output and fills in its tuning, and the
    tuner searches its ``tuning_space``. ``out_shape`` is the logical (NCHW) output."""
    return (la.op == "conv2d" and len(out_shape) == 4 and la.storage == "dense" and x > 1
            and conv_kind(la, x) is not None)


def _max_w(isa: VectorIsa, oc_tile: int, plain_input: bool = False) -> int:
    # accumulators + one weight vector per oc block + a broadcast register; multiplying by
    # lanes keeps a weight vector per oc block and input lane + one input vector, and two
    # registers spare: with 2 x 11 accumulators clang's allocator shuffled 40 vector moves
    # per tap through the loop (3x3s2 conv on arm64); 2 x 10 has none
    # A plain (NCHW) input (the first conv: fewer channels than a block) keeps one weight
    # vector per oc block, not one per lane: at fp16, where a lane-set is 8 vectors, the
    # by-lane budget left resnet18's 7x7 stem 6 columns a tile and half its instructions
    # outside the FMAs (29.3 M for 14.5 M FMLA). Only fp16 uses this so far (fp32 NEON keeps
    # its measured tiles).
    if isa.by_lane and plain_input and isa.elem_bytes == 2:
        return max(1, min(16, (isa.registers - oc_tile - 4) // oc_tile))
    if isa.by_lane:
        return max(1, min(16, (isa.registers - oc_tile * isa.floats - 3) // oc_tile))
    return max(1, min(16, (isa.registers - oc_tile - 1) // oc_tile))


def tuning_space(la: Layer, out_shape: tuple[int, ...], isa: VectorIsa) -> dict[str, tuple]:
    """Legal values of each tuning parameter of ``la``'s vectorised kernel (empty: none).
    ``algo``: "direct" or a Winograd variant (3x3 stride-1 dense convs); ``oc_tile`` x
    ``w_tile`` is the accumulator tile: oc blocks x output columns (direct) or x tiles
    (Winograd's per-point GEMM)."""
    if la.op != "conv2d" or len(out_shape) != 5:
        return {}
    ocb = out_shape[1]
    dw = conv_kind(la, isa.floats) == "depthwise"
    ocs = (1,) if dw or la.attrs["groups"] > 1 else tuple(t for t in (1, 2, 4) if ocb % t == 0
                                and _max_w(isa, t) * t <= isa.registers - t - 1)
    algos = ("direct", *winograd_algos(isa)) if winograd_ok(la) else ("direct",)
    return {"algo": algos, "oc_tile": ocs, "w_tile": tuple(range(1, _max_w(isa, 1) + 1))}


# fp16 (NEON FP16) Winograd: F(4,3) and F(2,3), chosen as at fp32; no F(6,3) (the worst
# conditioned). The per-point GEMM accumulates in fp16 and the output transform amplifies its
# rounding errors by its coefficients (F(4,3)'s A^T has an 8). Measured under qemu (max error
# / max |output|): one random 3x3 conv, F(2,3) 1.9e-3 (ic 27) to 4.8e-3 (ic 256), direct
# 3.6e-3 to 1.35e-2 (fp16 sums of ic * 9 terms), F(4,3) 4.2e-2 to 8.9e-2. Whole models, whose
# pools and classifiers average that noise: resnet18 at 224 as the arm64 benchmark has it
# (BatchNorm recalibrated), F(4,3) 2.3e-2 for 138.7 M instructions, F(2,3) only 8.3e-3 for
# 181.6 M (both before ``_load_share``'s oc tiles, which took F(4,3) to 133.2 M, and the asm
# GEMM with exact remainders and the shared-term transforms, 123.9 M), direct only
# 1.4e-2, ncnn's fp16 3.9e-2 for 131.8 M; top-1 kept by all. F(4,3)
# is the default because it is within the precision people take from fp16 engines; for the
# accurate choice set FP16_WINOGRAD = ("winograd2",).
FP16_WINOGRAD = ("winograd4", "winograd2")


def winograd_algos(isa: VectorIsa | None) -> tuple[str, ...]:
    """The Winograd variants offered at ``isa``'s precision."""
    return FP16_WINOGRAD if isa is not None and isa.elem_bytes == 2 else tuple(WINOGRAD)


def default_algo(la: Layer, out_shape: tuple[int, ...], isa: VectorIsa | None = None) -> str:
    """Winograd for 3x3 stride-1 convs with at least 8 input channels: the largest of F(4,3),
    F(2,3) that gives an image at least 4 tiles (fewer leave the per-point GEMM one tile wide:
    weight-bandwidth bound), else direct. Measured per layer shape on the AVX-512 host (1
    thread): F(4,3) beats direct 2-3x from 56x56 down to 7x7 and F(2,3) at 14x14 and below;
    at 4x4 only F(2,3) wins (256 ch: 1.04 vs 1.42 ms direct, 2.2 F(4,3)), at 2x2 direct wins
    (5x); F(6,3) is within noise of F(4,3) at 28x28-224x224, slower below, less accurate."""
    if not winograd_ok(la) or la.params["weight"].shape[1] < 8:
        return "direct"
    oh, ow = out_shape[2:4]
    for algo in ("winograd4", "winograd2"):
        if algo not in winograd_algos(isa):
            continue
        m = WINOGRAD[algo]
        if -(-oh // m) * -(-ow // m) >= 4:
            return algo
    return "direct"


def best_tile(total: int, most: int) -> int:
    """The tile width with the least work per item (tiles cost their width plus a fixed
    overhead; the remainder is a tile too)."""
    best, best_cost = 1, float("inf")
    for w in range(1, most + 1):
        cost = (total // w) * (w + 3) + (total % w + 3 if total % w else 0)
        if cost <= best_cost:
            best, best_cost = w, cost
    return best


def default_tuning(la: Layer, out_shape: tuple[int, ...], isa: VectorIsa) -> dict[str, Any]:
    """The cost model: the algorithm (``default_algo``); the largest oc tile (fewer broadcasts
    per FMA) that leaves enough work items for a few threads (Winograd splits work by tiles, so
    up to 2 there), then the column (tile) count with the least work per output column (tile).
    At fp16 the oc tile with the fewest loads per FMA instead (``_load_share``; measured on
    resnet18 at 224 under qemu: 138.7 M -> 133.7 M instructions), and Winograd's tile count
    by ``_exact_width`` (its GEMM runs the last tiles as wide as they are)."""
    space = tuning_space(la, out_shape, isa)
    if not space:
        return {}
    n, ocb, oh, ow, _ = out_shape
    algo = default_algo(la, out_shape, isa)
    # the layout pass gives a dense conv with fewer input channels than a block its plain input
    plain = la.attrs["groups"] == 1 and la.params["weight"].shape[1] < isa.floats
    if algo in WINOGRAD:
        m = WINOGRAD[algo]
        tiles = -(-oh // m) * -(-ow // m)
        ocs = [t for t in space["oc_tile"] if t <= 2]
        if isa.elem_bytes == 2:
            ocs = [min(ocs, key=lambda t: _load_share(isa, t, _even(tiles, _max_w(isa, t))))]
            oc_tile = max(ocs)
            return {"algo": algo, "oc_tile": oc_tile,
                    "w_tile": _exact_width(isa, tiles, oc_tile)}
        oc_tile = max(ocs)
        return {"algo": algo, "oc_tile": oc_tile, "w_tile": _even(tiles, _max_w(isa, oc_tile))}
    ocs = [t for t in space["oc_tile"] if t <= 2 and (t == 1 or n * ocb // t * oh >= 32)]
    if isa.elem_bytes == 2 and not plain:
        def cols(t: int) -> int:  # a row narrower than the tile is one tile of its width
            return min(ow, best_tile(ow, _max_w(isa, t)))
        ocs = [min(ocs, key=lambda t: _load_share(isa, t, cols(t)))]
    oc_tile = max(ocs)
    return {"algo": algo, "oc_tile": oc_tile,
            "w_tile": best_tile(ow, _max_w(isa, oc_tile, plain))}


def _even(total: int, most: int) -> int:
    """The fewest register tiles of at most ``most`` over ``total``, evened out."""
    return -(-total // -(-total // most))


def _exact_width(isa: VectorIsa, tiles: int, oc_tile: int) -> int:
    """The fp16 Winograd GEMM's tile count: its last tiles run a GEMM as wide as they are
    (``emit/cpu/winograd.py``), so the width with the fewest instructions over ``tiles``, a
    chunk of w tiles costing X * oc_tile * w FMAs, 2 * oc_tile weight loads, ceil(w / 4)
    input loads and about 3 of loop, per input channel block."""
    def cost(w: int) -> int:
        return isa.floats * oc_tile * w + 2 * oc_tile + -(-w // 4) + 3
    return min(range(1, min(tiles, _max_w(isa, oc_tile)) + 1),
               key=lambda w: ((tiles // w) * cost(w) + (cost(tiles % w) if tiles % w else 0),
                              -w))


def _load_share(isa: VectorIsa, oc_tile: int, w: int) -> float:
    """Vector loads per FMA of a by-lane micro-kernel: X weight vectors per oc block and one
    input vector per column, for oc_tile * w * X FMAs. At fp16 (X = 8) a 1 x 16 tile loads 19%
    as often as it multiplies, 2 x 6 (the register limit with 16 weight vectors) 23%; fp32
    NEON keeps its measured choice (the largest oc tile)."""
    return (oc_tile * isa.floats + w) / (oc_tile * w * isa.floats)


def winograd_ok(la: Layer) -> bool:
    """Whether F(m, 3) computes ``la``: a dense 3x3 conv, stride 1, dilation 1, groups 1."""
    return (la.op == "conv2d" and tuple(la.params["weight"].shape[2:]) == (3, 3)
            and tuple(la.attrs["stride"]) == (1, 1) and tuple(la.attrs["dilation"]) == (1, 1)
            and la.attrs["groups"] == 1)


def conv_algo(la: Layer, out_shape: tuple[int, ...], in_shape: tuple[int, ...],
              isa: VectorIsa) -> str:
    """The algorithm ``la``'s kernel uses: its tuning's ``algo`` (the cost model's default when
    unset); Winograd needs a blocked input, so a plain one (first layers) falls back to direct."""
    algo = {**default_tuning(la, out_shape, isa), **la.tuning}.get("algo", "direct")
    if algo not in WINOGRAD or len(in_shape) != 5 or not winograd_ok(la):
        return "direct"
    if algo not in winograd_algos(isa):
        raise CodegenError(f'layer "{la.name}": tuning algo {algo!r} is not offered at '
                           f"{isa.precision} ({', '.join(winograd_algos(isa))} only, see "
                           "codegen.cost.FP16_WINOGRAD); use one of "
                           f"{('direct', *winograd_algos(isa))}")
    return algo


def plain_pool_ok(la: Layer, in_width: int, x: int) -> bool:
    """A max pool ``maxpool2d_plain_s2`` runs on plain NCHW: stride 2, dilation 1, a window
    of at most 3 wide, an input at least 4 vectors wide (narrower ones go mostly column by
    column: vgg16's 28-wide pool took 0.94 ms so, 0.27 ms with its layout conversions and
    the blocked kernel)."""
    a = la.attrs
    return (la.op == "maxpool2d" and tuple(a["stride"]) == (2, 2)
            and tuple(a["dilation"]) == (1, 1) and a["kernel"][1] <= 3 and in_width >= 4 * x)


# ---- sparse storage: when a pruned layer's sparse kernel wins ------------------------------------

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


def union_entries(nz: np.ndarray, m: int) -> int:
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
        uk = union_entries(nz, k)
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
