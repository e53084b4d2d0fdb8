"""The sparse benchmark's arithmetic and records: solving a mapping's rate for a target
compression, per-layer work and compression, the variant and result records, and pruning a
model with a mapping. No engine runs here; everything but ``prune`` and ``forward_work``
(which run PyTorch) is pure Python.
"""

from __future__ import annotations

import hashlib
import json
import re
import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..common import EngineRun
from .mappings import PruneMapping, layer_kinds

if TYPE_CHECKING:
    import numpy as np
    import torch
    from torch import nn

    from host.pruning.plan import PrunedModel

    from ..engines import Workload

# ---------------------------------------------------------------- pure arithmetic

def targets_for(npas: float, rates: Sequence[float | str]) -> list[tuple[float, bool]]:
    """(compression, is the NPAS rate) per target, ascending; a ratio equal to the NPAS one is
    the NPAS target."""
    got: dict[float, bool] = {}
    for r in rates:
        v = npas if r == "npas" else float(r)
        got[v] = got.get(v, False) or r == "npas" or v == npas
    return sorted(got.items())


@dataclass
class Solved:
    """The rate R that gives a mapping its target compression (or the closest it got)."""

    rate: float
    compression: float
    evaluations: int
    reachable: bool

    def note(self, target: float) -> str:
        if self.reachable:
            return ""
        how = "at most" if self.compression < target else "at least"
        return f"unreachable: this mapping gives {how} {self.compression:.2f}x"


def solve_rate(compression_of: Callable[[float], float], target: float, tol: float = 0.02,
               hi: float = 0.995, max_evals: int = 14) -> Solved:
    """The rate R in [0, hi] whose ``compression_of(R)`` is within ``tol`` (relative) of
    ``target``. The kept fraction 1/compression is close to linear in R for mask schemes and
    a staircase for filter pruning (widths in steps of the vector width), so this is regula
    falsi on it with the Illinois rule (converges on both); it stops at tol/4. Not reachable:
    the closest end, ``reachable`` False."""
    seen: list[tuple[float, float]] = []

    def g(r: float) -> float:
        c = compression_of(r)
        seen.append((r, c))
        return 1.0 / c - 1.0 / target

    def best() -> Solved:
        r, c = min(seen, key=lambda rc: abs(rc[1] / target - 1))
        return Solved(r, c, len(seen), abs(c / target - 1) <= tol)

    lo, glo = 0.0, g(0.0)
    if glo <= 0:  # the fixed rules alone compress enough
        return best()
    up, gup = hi, g(hi)
    if gup > 0:
        return best()
    side = 0
    while len(seen) < max_evals and up - lo > 1e-7:
        r = up - gup * (up - lo) / (gup - glo)
        gr = g(r)
        if abs(seen[-1][1] / target - 1) <= tol / 4:
            break
        if gr > 0:
            lo, glo = r, gr
            if side == 1:
                gup /= 2
            side = 1
        else:
            up, gup = r, gr
            if side == -1:
                glo /= 2
            side = -1
    return best()


@dataclass(frozen=True)
class LayerWork:
    """One Conv2d/Linear at the benchmark input: output positions per filter (× batch), its
    weights and how many of them are non-zero."""

    kind: str  # "conv" or "linear"
    positions: int
    weights: int
    nonzero: int

    @property
    def flops(self) -> int:
        """2 × non-zero multiply-adds."""
        return 2 * self.positions * self.nonzero

    @property
    def dense_flops(self) -> int:
        return 2 * self.positions * self.weights


def work_flops(works: Mapping[str, LayerWork]) -> int:
    return sum(w.flops for w in works.values())


def compression(before: Mapping[str, LayerWork], after: Mapping[str, LayerWork],
                kind: str | None = None) -> float:
    """Weights of the unpruned layers / non-zero weights of the pruned ones (all Conv2d and
    Linear layers, or those of ``kind``)."""
    b = sum(w.weights for w in before.values() if kind in (None, w.kind))
    a = sum(w.nonzero for w in after.values() if kind in (None, w.kind))
    return b / a if a else float("inf")


def sparse_kernel_layers(steps: Iterable, works: Mapping[str, LayerWork]) -> tuple[int, int]:
    """(layers with zeros that got a sparse kernel, layers with zeros): a sparse step counts
    only the non-zero multiply-adds in its ``flops``, a dense one all of them."""
    masked = {n for n, w in works.items() if w.nonzero < w.weights}
    sparse = {s.name for s in steps
              if s.name in masked and s.flops < 0.9 * works[s.name].dense_flops}
    return len(sparse), len(masked)


def speedup(slow_ms: float | None, fast_ms: float | None) -> float | None:
    return slow_ms / fast_ms if slow_ms and fast_ms else None


def fastest(runs: Iterable[EngineRun]) -> EngineRun | None:
    ok = [r for r in runs if r.status == "ok" and r.median_ms is not None]
    return min(ok, key=lambda r: r.median_ms) if ok else None


def step_times(layers: Sequence, names: set[str] | None = None,
               ops: tuple[str, ...] = ()) -> int:
    """Sum of the first sample of the per-layer timings named in ``names`` or whose op is in
    ``ops`` (one run)."""
    return sum(la.samples_ns[0] for la in layers
               if (names is not None and la.name in names) or la.op in ops)


# Steps a bundle has only around sparse layers: zero-padded input planes, and layout changes
# between the dense kernels' blocked NCHW16c and the sparse kernels' plain NCHW.
GLUE_OPS = ("sparse_pad", "to_nchw", "to_nchwxc")


def unstructured_summary(res: dict, policy: str = "auto") -> dict:
    """Medians over runs (ms) of the whole run, the 3x3 conv steps, and those plus the glue
    steps, for the dense bundle and the sparse one of ``policy``; ratios sparse / dense."""
    def med(k: str, *what: str) -> float | None:
        v = [sum(r[w] for w in what) for r in res["runs"].get(k, [])]
        return statistics.median(v) / 1e6 if v else None

    d = {f"{key}_{name}_ms": med(k, *what) for key, k in (("dense", "dense"),
                                                          ("unstructured", policy))
         for name, what in (("conv", ("conv3x3_ns",)), ("conv_glue", ("conv3x3_ns", "glue_ns")),
                            ("total", ("total_ns",)))}
    for name in ("conv", "conv_glue", "total"):
        d[f"{name}_ratio"] = speedup(d[f"unstructured_{name}_ms"], d[f"dense_{name}_ms"])
    return d


# ---------------------------------------------------------------- records

@dataclass
class Variant:
    """One mapping at one target compression, as pruned and compiled."""

    model: str
    mapping: str
    target: float
    npas: bool
    rate: float | None = None
    rules: list[str] = field(default_factory=list)
    compression: float | None = None  # all Conv2d + Linear weights
    conv_compression: float | None = None
    linear_compression: float | None = None
    flop_reduction: float | None = None
    work_flops: int | None = None  # non-zero conv/linear work, 2 × multiply-adds
    manifest_flops: int | None = None  # sum of the bundle's Step.flops (counts the zeros of
    # masked layers the code generator kept dense, and pooling/epilogue work)
    sparse_layers: int = 0  # masked layers that got a sparse kernel
    masked_layers: int = 0
    compile_s: float | None = None
    solve_evaluations: int = 0
    note: str = ""

    @property
    def label(self) -> str:
        return f"ours {self.mapping} {self.target:g}x"

    @property
    def rate_text(self) -> str:
        return f"NPAS {self.target:g}x" if self.npas else f"{self.target:g}x"


@dataclass
class Contestant:
    """An engine with the workload it runs and the output it must give."""

    label: str
    engine: object
    workload: object
    ref: object


@dataclass
class ModelResult:
    model: str
    dense_flops: int
    variants: list[Variant]
    runs: list[EngineRun]  # every contestant at every thread count
    engines_info: dict
    unstructured: dict | None = None
    dense_compile_s: float | None = None


# ---------------------------------------------------------------- pruning

def forward_work(model: nn.Module, x: torch.Tensor) -> tuple[np.ndarray, dict[str, LayerWork]]:
    """PyTorch's output on ``x`` and every Conv2d/Linear's LayerWork (forward hooks)."""
    import torch
    from torch import nn

    works: dict[str, LayerWork] = {}
    hooks = []

    def hook(name):
        def fn(m, _inp, y):
            per = y.numel() // y.shape[1] if isinstance(m, nn.Conv2d) else y.numel() // y.shape[-1]
            works[name] = LayerWork("linear" if isinstance(m, nn.Linear) else "conv", per,
                                    m.weight.numel(), int(torch.count_nonzero(m.weight)))
        return fn

    for name, m in model.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            hooks.append(m.register_forward_hook(hook(name)))
    try:
        with torch.inference_mode():
            y = model(x).numpy()
    finally:
        for h in hooks:
            h.remove()
    return y, works


def prune(model: nn.Module, mapping: PruneMapping, target: float,
          dense: Mapping[str, LayerWork]) -> tuple[Solved, PrunedModel, list[str]]:
    """Solve the mapping's rate for ``target``: (Solved, its PrunedModel, its rule strings)."""
    from torch import nn

    from host.pruning.command import build_plan
    from host.pruning.config import PruningConfig

    kinds = layer_kinds(model)
    cfg = PruningConfig(vector_width=16, pattern_count=8)
    kept: dict = {}

    def compression_of(rate: float) -> float:
        rules = mapping.texts(rate, kinds)
        pruned = build_plan(model, rules, cfg).apply(model)
        after = sum(int((m.weight != 0).sum()) for m in pruned.model.modules()
                    if isinstance(m, (nn.Conv2d, nn.Linear)))
        c = sum(w.weights for w in dense.values()) / after
        if not kept or abs(c / target - 1) < abs(kept["c"] / target - 1):
            kept.update(c=c, pruned=pruned, rules=rules)  # only the best: VGG-16 is 553 MB
        return c

    solved = solve_rate(compression_of, target)
    return solved, kept["pruned"], kept["rules"]


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")


def pruned_cache(w: Workload, rules: Sequence[str]) -> Path:
    """A folder for the other engines' conversions of a pruned model: keyed by the rules and
    the cached base weights they were applied to."""
    st = (w.cache / "weights.pt").stat()
    key = hashlib.sha256(json.dumps([list(rules), st.st_size, st.st_mtime_ns]).encode())
    d = w.cache / f"pruned-{key.hexdigest()[:16]}"
    d.mkdir(exist_ok=True)
    return d
