"""Rule-based pruning-scheme mapping: which scheme and which block size each layer gets.

Rules pick the regularity a layer's kind allows (``LADDERS``: from the finest, unstructured,
to the most regular, large blocks); the block size is then read off a latency profile measured
on the device: every rung of the ladder is compiled for all layers of its kind at once (one
bundle per rung) and timed per layer. A layer takes the *knee*: the finest rung whose time is
within ``tolerance`` of what regularity can buy, that is of the larger of the fastest rung's
time (the fastest the sparse kernels get: usually the most regular rung) and the structured
estimate (the dense layer's time × (1 − rate): a physically narrower layer). Finer blocks
keep more accuracy, so the knee stops where more regularity stops paying. Layers the rules
keep dense (depthwise/grouped convs, a stem with ≤ 4 input channels) say why.

The measuring is ``host/pruning/map_command.py``; this module is the rules and the choice, with
no device, so they are tested alone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

from torch import nn

from .config import PruningConfig
from .plan import LayerRule, PruningPlan
from .schemes import PATTERN_MIN_RATE


@dataclass(frozen=True)
class Rung:
    """One regularity: a scheme and its block parameters; ``label`` names it in tables."""

    scheme: str
    params: tuple[tuple[str, int], ...] = ()

    @property
    def label(self) -> str:
        p = dict(self.params)
        if self.scheme == "block":
            return f"block {p['rows']} rows"
        if self.scheme == "block_punched":
            return f"block_punched {p['filters']}x{p['channels']}"
        return self.scheme

    def rule(self, rate: float) -> LayerRule:
        return LayerRule(self.scheme, rate, dict(self.params))


# The ladders, finest first. GEMM-like layers (1x1 convs, Linear): blocks of `rows` output rows
# share the removed columns. k×k convs: pattern (3x3 only) then blocks of filters × channels
# sharing removed kernel positions. Both ladders have the same length: rung i of each goes
# into the same bundle.
GEMM = (Rung("unstructured"), *(Rung("block", (("rows", r),)) for r in (2, 4, 8, 16, 32)))
KXK = (Rung("unstructured"), Rung("pattern"),
       *(Rung("block_punched", (("filters", f), ("channels", c)))
         for f, c in ((2, 1), (4, 2), (8, 4), (16, 4))))
LADDERS = {"1x1": GEMM, "linear": GEMM, "kxk": KXK}
assert len(GEMM) == len(KXK)

DEFAULT_TOLERANCE = 0.10
STEM_MAX_CHANNELS = 4


def layer_kind(m: nn.Module) -> str:
    """"linear", "1x1", "kxk", "grouped" (groups > 1: depthwise and grouped convs) or "stem"
    (a conv reading ≤ STEM_MAX_CHANNELS channels: the image)."""
    if isinstance(m, nn.Linear):
        return "linear"
    if m.groups != 1:
        return "grouped"
    if m.in_channels <= STEM_MAX_CHANNELS:
        return "stem"
    return "1x1" if tuple(m.kernel_size) == (1, 1) else "kxk"


KEPT_DENSE = {
    "grouped": "grouped/depthwise conv: few weights, bound by memory, not by multiply-adds: "
               "sparse storage would save no time (kept dense)",
    "stem": f"stem (≤ {STEM_MAX_CHANNELS} input channels): few weights, and every later layer "
            f"sees its errors (kept dense)",
}


def prunable_layers(model: nn.Module) -> dict[str, str]:
    """Every Conv2d and Linear of ``model`` → its kind, in module order."""
    return {n: layer_kind(m) for n, m in model.named_modules()
            if isinstance(m, (nn.Conv2d, nn.Linear))}


def fits(rung: Rung, module: nn.Module, rate: float) -> bool:
    """Whether ``rung`` applies to ``module`` at ``rate`` (pattern: 3x3 kernels, rate ≥ 5/9)."""
    if rung.scheme == "pattern":
        return tuple(module.kernel_size) == (3, 3) and rate >= PATTERN_MIN_RATE - 1e-9
    return True


def rung_plan(model: nn.Module, i: int, rate: float, cfg: PruningConfig) -> PruningPlan:
    """Rung ``i`` of every mapped layer's ladder (unstructured where it does not fit)."""
    mods = dict(model.named_modules())
    layers = {}
    for name, kind in prunable_layers(model).items():
        if kind in LADDERS:
            rung = LADDERS[kind][i]
            layers[name] = (rung if fits(rung, mods[name], rate) else Rung("unstructured")
                            ).rule(rate)
    return PruningPlan(layers, cfg)


@dataclass
class LayerChoice:
    """What the mapper decided for one layer, with the times (ms, medians) behind it."""

    layer: str
    kind: str
    rung: str  # the chosen rung's label, or "dense"
    why: str
    dense_ms: float | None = None
    rung_ms: dict[str, float] = field(default_factory=dict)  # label → time, finest first
    scheme: str = ""
    params: dict = field(default_factory=dict)


def choose(kind: str, times: Sequence[float | None], dense_ms: float | None, rate: float,
           tolerance: float = DEFAULT_TOLERANCE, fit: Sequence[bool] | None = None
           ) -> tuple[int, str]:
    """The knee of one layer: (rung index, why). ``times[i]``: the layer's time at rung i of
    its ladder (None: not measured or the rung does not fit), ``dense_ms`` the dense layer's."""
    ladder = LADDERS[kind]
    ok = [(i, t) for i, t in enumerate(times)
          if t is not None and (fit is None or fit[i])]
    if not ok:
        raise ValueError(f"no rung of the {kind} ladder was timed")
    # what regularity can buy: the fastest rung timed, usually the most regular one; a ladder
    # is not always monotone (VGG-16's first 3x3 layers ran 16x4 blocks slower than 8x4 ones)
    j, coarse = min(ok, key=lambda it: (it[1], -it[0]))
    structured = dense_ms * (1.0 - rate) if dense_ms is not None else None
    base, what = coarse, ("the most regular" if j == ok[-1][0]
                          else f"the fastest, {ladder[j].label}")
    if structured is not None and structured > base:
        base, what = structured, "structured est."
    bar = base * (1.0 + tolerance)
    i, t = next((i, t) for i, t in ok if t <= bar)
    finer = [(j, u) for j, u in ok if j < i]
    why = f"{t:.3f} ms ≤ {1 + tolerance:.2f} × {base:.3f} ({what})"
    if finer:
        j, u = finer[-1]
        why += f"; finer {ladder[j].label}: {u:.3f}"
    if dense_ms is not None and t >= dense_ms:
        why += f"; not faster than dense ({dense_ms:.3f}) at this rate"
    return i, why


@dataclass
class MapResult:
    """The mapper's output: the plan, every layer's choice and the profile behind it."""

    model: str
    rate: float
    tolerance: float
    choices: list[LayerChoice]
    plan: PruningPlan
    end_to_end_ms: dict[str, float] = field(default_factory=dict)  # bundle label → median
    compression: dict[str, float] = field(default_factory=dict)  # bundle label → weights x
    device: dict = field(default_factory=dict)
    device_s: float = 0.0  # uploads, loads and runs that chose the plan
    compare_device_s: float = 0.0  # the side-by-side comparison's
    compile_s: float = 0.0
    accuracy: dict[str, float] = field(default_factory=dict)  # bundle label → validated
    search: dict | None = None  # the search-based mapper's record (map_search.py)

    def to_dict(self) -> dict:
        return {"model": self.model, "rate": self.rate, "tolerance": self.tolerance,
                "ladders": {k: [r.label for r in v] for k, v in LADDERS.items()},
                "layers": [asdict(c) for c in self.choices],
                "end_to_end_ms": self.end_to_end_ms, "compression": self.compression,
                "accuracy": self.accuracy, "search": self.search,
                "device": self.device, "device_s": round(self.device_s, 2),
                "compare_device_s": round(self.compare_device_s, 2),
                "compile_s": round(self.compile_s, 1)}


def mapped_plan(choices: Sequence[LayerChoice], rate: float, cfg: PruningConfig
                ) -> PruningPlan:
    return PruningPlan({c.layer: LayerRule(c.scheme, rate, dict(c.params)) for c in choices
                        if c.scheme}, cfg)


def decide(model: nn.Module, rate: float, layer_ms: Sequence[Mapping[str, float]],
           dense: Mapping[str, float], tolerance: float = DEFAULT_TOLERANCE
           ) -> list[LayerChoice]:
    """Every prunable layer's choice from the per-layer times of each rung's bundle
    (``layer_ms[i]``: module path → median ms) and of the dense bundle."""
    mods = dict(model.named_modules())
    out = []
    for name, kind in prunable_layers(model).items():
        if kind not in LADDERS:
            out.append(LayerChoice(name, kind, "dense", KEPT_DENSE[kind], dense.get(name)))
            continue
        ladder = LADDERS[kind]
        fit = [fits(r, mods[name], rate) for r in ladder]
        times = [ms.get(name) for ms in layer_ms]
        if all(t is None for t in times):
            out.append(LayerChoice(name, kind, "dense", "no step of its own in the bundle "
                                   "(fused or folded away): nothing to time", dense.get(name)))
            continue
        i, why = choose(kind, times, dense.get(name), rate, tolerance, fit)
        rung = ladder[i]
        out.append(LayerChoice(name, kind, rung.label, why, dense.get(name),
                               {r.label: t for r, t, f in zip(ladder, times, fit, strict=True)
                                if t is not None and f},
                               rung.scheme, dict(rung.params)))
    return out
