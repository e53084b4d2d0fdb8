"""A per-layer latency table measured on the device, differentiable in the layers' widths: what
lets PaS steer measured latency instead of MACs.

The model is compiled at a few uniform widths (filter pruning of every prunable group to 100 %,
75 %, 50 %, 25 % of its channels, rounded to the vector width) and each bundle is timed per
layer. A conv or Linear layer's point is (work, ms): its multiply-adds at that width over its
dense ones, and its measured time (its own step plus the layout conversions made for it). The
prediction for a layer interpolates its points linearly in the work (the first or last
segment extended outside them, never below zero); steps that are no conv or Linear (pools,
conversions of their own) are a constant. Linear in the work fraction, the prediction is
differentiable in the kept channel counts, which is what the PaS penalty needs.

Per-layer timing has a cost of its own per step (the runner reads the clock around every
step), which on layers of microseconds is a large share: the digits CNN's steps summed to
0.61 ms where the whole model ran in 0.38. ``measure_table`` therefore also times every
bundle whole and takes that difference, spread evenly over the bundle's steps, off every
step (``remove_timer_cost``), so small layers are not over-priced against large ones.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence

import torch
from torch import nn

FRACTIONS = (1.0, 0.75, 0.5, 0.25)


class LatencyTable:
    def __init__(self, points: Mapping[str, Sequence[tuple[float, float]]], other_ms: float):
        self.points: dict[str, list[tuple[float, float]]] = {}
        for name, pts in points.items():
            by_u: dict[float, list[float]] = {}
            for u, ms in pts:
                by_u.setdefault(round(float(u), 6), []).append(float(ms))
            pts = sorted((u, statistics.median(v)) for u, v in by_u.items())
            # less work never takes longer: a noisy point below a narrower one's time is
            # raised to it, so no segment has a negative slope that would push widths up
            for k in range(1, len(pts)):
                if pts[k][1] < pts[k - 1][1]:
                    pts[k] = (pts[k][0], pts[k - 1][1])
            self.points[name] = pts
        self.other_ms = float(other_ms)
        self.dense_ms = self.other_ms + sum(self.interp(n, 1.0) for n in self.points)
        self.timer_cost_ms = 0.0  # per step, taken off by measure_table

    def interp(self, name: str, u):
        """``name``'s predicted ms at work fraction ``u`` (a float or a tensor)."""
        pts = self.points[name]
        if len(pts) == 1:
            return pts[0][1] * u / pts[0][0] if pts[0][0] > 0 else pts[0][1] + 0 * u
        uf = float(u.detach()) if isinstance(u, torch.Tensor) else float(u)
        i = next((k for k in range(1, len(pts)) if uf <= pts[k][0]), len(pts) - 1)
        (u0, m0), (u1, m1) = pts[i - 1], pts[i]
        v = m0 + (u - u0) * ((m1 - m0) / (u1 - u0))
        return torch.clamp(v, min=0.0) if isinstance(v, torch.Tensor) else max(0.0, v)

    def predict(self, work: Mapping[str, tuple]):
        """The whole model's ms for per-layer (MACs now, dense MACs); layers not in the table
        count nothing (their own steps were fused away)."""
        total = self.other_ms
        for name, (now, dense) in work.items():
            # a RepVGG block's 3x3 branch is the conv it merges into (the table was measured
            # on the plain model)
            key = name if name in self.points else name.removesuffix(".conv3")
            if key in self.points and dense:
                total = total + self.interp(key, now / dense)
        return total if isinstance(total, torch.Tensor) else torch.tensor(total)

    def to_dict(self) -> dict:
        return {"points": self.points, "other_ms": self.other_ms, "dense_ms": self.dense_ms,
                "timer_cost_ms": self.timer_cost_ms}


def layer_macs(model: nn.Module) -> dict[str, int]:
    """Per conv/Linear: multiply-adds per output position (so widths compare at equal sizes)."""
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear):
            out[name] = m.in_features * m.out_features
        elif isinstance(m, nn.Conv2d):
            out[name] = (m.in_channels // m.groups) * m.out_channels * m.kernel_size[0] \
                * m.kernel_size[1]
    return out


def remove_timer_cost(times: Mapping[str, float], whole_ms: float, names: Sequence[str]
                      ) -> tuple[dict[str, float], float, float]:
    """(per layer of ``names``: its steps' ms less the timer's cost, the other steps' ms
    likewise, the cost per step): the per-step cost is the per-layer sum's excess over the
    whole run, ``whole_ms``, spread evenly over the steps (none if the sum is not above it);
    no step's time goes below a tenth of what was measured."""
    steps = len(times)
    c = max(0.0, (sum(times.values()) - whole_ms) / steps) if steps else 0.0
    fixed = {k: max(0.1 * t, t - c) for k, t in times.items()}
    mine = {}
    for n in names:
        own = [k for k in fixed if k == n or k.startswith(n + ".")]
        if own:
            mine[n] = sum(fixed[k] for k in own)
    other = sum(fixed.values()) - sum(mine.values())
    return mine, other, c


def measure_table(model: nn.Module, timer, vector_width: int,
                  fractions: Sequence[float] = FRACTIONS, rounds: int = 3) -> LatencyTable:
    """Compile ``model`` at each width fraction with ``timer`` (a BundleTimer), time it per
    layer and whole (``rounds`` rotated rounds), and take the per-step timing cost off
    (``remove_timer_cost``): the table. Widths the dependency graph cannot change keep their
    size (their work stays 1)."""
    from .config import PruningConfig
    from .plan import PruningPlan

    dense_macs = layer_macs(model)
    names = list(dense_macs)
    points: dict[str, list[tuple[float, float]]] = {n: [] for n in names}
    other = 0.0
    measured = []
    for f in fractions:
        m = model if f >= 1.0 else PruningPlan.uniform(
            model, "filter", 1.0 - f, PruningConfig(vector_width)).apply(model).model
        label = f"table {f:g}"
        timer.compile(label, m, {}, f"[latency table {fractions.index(f) + 1}/{len(fractions)}]")
        measured.append((f, label, layer_macs(m), timer.per_layer(label)))
    whole = timer.side_by_side(rounds, [label for _, label, _, _ in measured])
    costs = []
    for f, label, now, times in measured:
        mine, rest, c = remove_timer_cost(times, whole[label], names)
        costs.append(c)
        for n, ms in mine.items():
            points[n].append((now[n] / dense_macs[n], ms))
        if f >= 1.0:
            other = rest
    table = LatencyTable({n: p for n, p in points.items() if p}, other)
    table.timer_cost_ms = statistics.median(costs) if costs else 0.0
    return table


# --- by width and weight density (jcw's estimates) -------------------------------------------
DENSITIES = (1.0, 0.9, 0.6, 0.3)


class DensityTable:
    """A per-layer table by channel width and weight density, measured on the device: one
    ``LatencyTable`` per density level. Level 1.0 holds the dense kernels; the levels below
    hold the sparse kernels the code generator picks for an unstructured mask (at any density
    under 1, so 0.95 reads the sparse levels, never the dense one). Within a level a layer's time
    is interpolated in its work fraction (in × out channels kept: its shape), between levels
    linearly in the density (extended past the ends, never below zero); each time is the
    layer's own step with its fused epilogue (BatchNorm, activation) and the layout
    conversions made for it. Steps that are no conv or Linear count the dense level's constant.
    """

    def __init__(self, levels: Mapping[float, LatencyTable]):
        if not levels:
            raise ValueError("a density table needs at least one level")
        self.levels = {float(d): t for d, t in sorted(levels.items())}
        top = self.levels[max(self.levels)]
        self.other_ms = top.other_ms
        self.dense_ms = top.dense_ms
        self.sparse = [d for d in self.levels if d < 1.0]

    def layer_ms(self, name: str, u: float, density: float = 1.0) -> float:
        """``name``'s predicted ms at work fraction ``u`` and weight density ``density``."""
        if density >= 1.0 or not self.sparse:
            return float(self.levels[max(self.levels)].interp(name, u))
        if len(self.sparse) == 1:
            return float(self.levels[self.sparse[0]].interp(name, u))
        ds = self.sparse
        i = next((k for k in range(1, len(ds)) if density <= ds[k]), len(ds) - 1)
        d0, d1 = ds[i - 1], ds[i]
        m0 = float(self.levels[d0].interp(name, u))
        m1 = float(self.levels[d1].interp(name, u))
        return max(0.0, m0 + (density - d0) * (m1 - m0) / (d1 - d0))

    def predict(self, work: Mapping[str, tuple], density: Mapping[str, float]) -> float:
        """The whole model's ms for per-layer (MACs now, dense MACs) and per-layer weight
        density (a layer not in ``density`` is dense)."""
        total = self.other_ms
        top = self.levels[max(self.levels)]
        for name, (now, dense) in work.items():
            if name in top.points and dense:
                total += self.layer_ms(name, now / dense, density.get(name, 1.0))
        return total

    def predict_model(self, model: nn.Module, masks: Mapping[str, torch.Tensor],
                      dense_macs: Mapping[str, int]) -> float:
        """``predict`` for a pruned model (narrowed layers) and its masks (parameter path →
        bool mask, as ``PrunedModel.masks``)."""
        now = layer_macs(model)
        work = {n: (now[n], dense_macs[n]) for n in now if n in dense_macs}
        dens = {k.removesuffix(".weight"): float(m.float().mean()) for k, m in masks.items()}
        return self.predict(work, dens)

    def to_dict(self) -> dict:
        return {"levels": {f"{d:g}": t.to_dict() for d, t in self.levels.items()},
                "dense_ms": self.dense_ms}

    @classmethod
    def from_dict(cls, d: dict) -> DensityTable:
        return cls({float(k): LatencyTable(v["points"], v["other_ms"])
                    for k, v in d["levels"].items()})


def measure_density_table(model: nn.Module, time_layers, vector_width: int,
                          masked: Sequence[str], fractions: Sequence[float] = FRACTIONS,
                          densities: Sequence[float] = DENSITIES) -> DensityTable:
    """Compile and time ``model`` at each uniform width fraction × weight density:
    ``time_layers(label, model, schemes)`` compiles a model on the device and returns its
    per-layer times (module path → ms; ``layer_times``); ``masked``: the layers an unstructured
    mask may go on (the others stay dense at every level). Widths the dependency graph cannot
    change keep their size."""
    from .config import PruningConfig
    from .plan import PruningPlan
    from .timing import for_layer

    dense_macs = layer_macs(model)
    names = list(dense_macs)
    levels = {}
    for d in densities:
        points: dict[str, list[tuple[float, float]]] = {n: [] for n in names}
        other = 0.0
        for f in fractions:
            m = model if f >= 1.0 else PruningPlan.uniform(
                model, "filter", 1.0 - f, PruningConfig(vector_width)).apply(model).model
            schemes: dict[str, str] = {}
            if d < 1.0:
                pm = PruningPlan.uniform(m, "unstructured", 1.0 - d, PruningConfig(vector_width),
                                         only=list(masked)).apply(m)
                m, schemes = pm.model, pm.schemes
            times = time_layers(f"table w{f:g} d{d:g}", m, schemes)
            mine = for_layer(times, names)
            now = layer_macs(m)
            for n, ms in mine.items():
                points[n].append((now[n] / dense_macs[n], ms))
            if f >= 1.0:
                other = sum(times.values()) - sum(mine.values())
        levels[d] = LatencyTable({n: p for n, p in points.items() if p}, other)
    return DensityTable(levels)
