"""PruningPlan: the recorded, replayable decision — per layer a scheme, its parameters and a
rate — and what applying it gives (PrunedModel) and says (PlanReport).

A plan holds no weights or masks: ``apply`` scores the given model (magnitudes) and decides
again, deterministically (ties broken by index), so the same plan on a fresh copy of the same
model gives identical weights. Structural rules (filter, channel) are applied first and shrink
the layers; mask rules then act on the (possibly shrunk) weights they find.

A plan may also say which layers run in int8 (the search's per-layer precision): a layer
rule's ``precision`` and the plan's ``precision`` rules (``"LAYERS=PRECISION"``, fnmatch
patterns over module paths, later rules win; a layer rule's own precision wins over them).
``compile --plan`` compiles such a plan with the int8 toolchain, every conv/linear the plan
leaves at fp32 kept float32 (``keep_fp32``). A plan without precisions writes and reads as
before.
"""

from __future__ import annotations

import copy
import fnmatch
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from . import handlers
from .config import PruningConfig, PruningError, describe, parse_rate
from .graph import DependencyGraph, Group
from .schemes import SCHEMES, get_scheme

PLAN_VERSION = 1
PRECISIONS = ("fp32", "int8")  # what a layer of a plan may run in (CPU bundles)


@dataclass
class LayerRule:
    scheme: str
    rate: float
    params: dict = field(default_factory=dict)
    precision: str | None = None  # None: the plan's precision rules (else fp32) decide

    def to_dict(self) -> dict:
        d = asdict(self)
        if self.precision is None:  # as plans were before precisions
            d.pop("precision")
        return d


def check_precision(where: str, precision: object) -> str:
    if precision not in PRECISIONS:
        raise PruningError(f"{where}: precision {str(precision)[:40]!r}; known precisions are "
                           f"{', '.join(PRECISIONS)}")
    return str(precision)


def parse_precision_rule(text: str) -> tuple[str, str]:
    """'LAYERS=PRECISION' (e.g. 'b3.*=int8', '*=fp32') → (pattern, precision)."""
    layers, eq, prec = str(text).partition("=")
    if not eq or not layers.strip():
        raise PruningError(f"precision rule {str(text)[:80]!r}: expected LAYERS=PRECISION, "
                           f"e.g. 'b3.*=int8' ({', '.join(PRECISIONS)})")
    return layers.strip(), check_precision(f"precision rule {text!r}", prec.strip())


def keep_count(channels: int, rate: float, vector_width: int) -> int:
    """Channels kept when removing ``rate`` of ``channels``: the nearest width that is a multiple
    of the vector width (or the full width), never below the vector width; a layer already
    no wider than the vector width is left alone (ties: keep more)."""
    if channels <= vector_width:
        return channels
    want = channels * (1.0 - rate)
    widths = sorted({*range(vector_width, channels + 1, vector_width), channels})
    return min(widths, key=lambda k: (abs(k - want), -k))


@dataclass
class LayerReport:
    layer: str
    scheme: str
    params: dict
    requested: float | None
    achieved: float
    weights_before: int
    weights_after: int
    note: str = ""


@dataclass
class PlanReport:
    rows: list[LayerReport]

    def row(self, layer: str) -> LayerReport:
        return next(r for r in self.rows if r.layer == layer)

    @property
    def weights_before(self) -> int:
        return sum(r.weights_before for r in self.rows)

    @property
    def weights_after(self) -> int:
        return sum(r.weights_after for r in self.rows)

    def to_dict(self) -> dict:
        return {"layers": [asdict(r) for r in self.rows]}

    def __str__(self) -> str:
        lines = [f"{'layer':28} {'scheme':14} {'asked':>6} {'got':>6} {'weights':>19}  params"]
        for r in self.rows:
            asked = "" if r.requested is None else f"{r.requested:.3f}"
            p = " ".join(f"{k}={v}" for k, v in r.params.items())
            lines.append(f"{r.layer:28} {r.scheme:14} {asked:>6} {r.achieved:6.3f} "
                         f"{r.weights_before:>9}→{r.weights_after:<9}  {p} {r.note}".rstrip())
        b, a = self.weights_before, self.weights_after
        lines.append(f"total: {b} → {a} weights ({b / max(a, 1):.2f}x)")
        return "\n".join(lines)


class PrunedModel:
    """The pruned copy (``model``), the masks of the mask schemes (``masks``: parameter path →
    bool tensor; ``reapply()`` after an optimizer step keeps pruned weights at zero), the removed
    channels of each structural group, and the report."""

    def __init__(self, model: nn.Module, masks: dict[str, torch.Tensor],
                 removed: dict[tuple[str, str], list[int]], report: PlanReport):
        self.model, self.masks, self.removed, self.report = model, masks, removed, report

    @property
    def schemes(self) -> dict[str, str]:
        """Module path -> mask scheme of every masked layer: what ``compile_model(schemes=...)``
        reads to pick each layer's sparse storage (structural layers are plain dense ones)."""
        return {name.rsplit(".", 1)[0]: row.scheme for name in self.masks
                for row in self.report.rows if row.layer == name.rsplit(".", 1)[0]}

    def reapply(self) -> None:
        with torch.no_grad():
            for name, mask in self.masks.items():
                self.model.get_parameter(name).mul_(mask)

    def __call__(self, *args, **kwargs):
        return self.model(*args, **kwargs)

    def __repr__(self) -> str:
        r = self.report
        return (f"PrunedModel({type(self.model).__name__}: {r.weights_before} → "
                f"{r.weights_after} weights in {len(r.rows)} layers, {len(self.masks)} masks)")


def _weights(m: nn.Module) -> int:
    return m.weight.numel() if getattr(m, "weight", None) is not None else 0


@dataclass
class PruningPlan:
    layers: dict[str, LayerRule] = field(default_factory=dict)
    config: PruningConfig = field(default_factory=PruningConfig)
    precision: list[str] = field(default_factory=list)  # "LAYERS=PRECISION" rules, in order

    # --- record ---------------------------------------------------------------------------
    def to_dict(self) -> dict:
        d = {"version": PLAN_VERSION, "config": self.config.to_dict(),
             "layers": {k: v.to_dict() for k, v in self.layers.items()}}
        if self.precision:
            d["precision"] = list(self.precision)
        return d

    # --- precision ------------------------------------------------------------------------
    def precisions(self, model: nn.Module) -> dict[str, str]:
        """Every Conv2d/Linear of ``model`` (module path) → the precision the plan gives it
        (fp32 where nothing says otherwise)."""
        rules = [parse_precision_rule(r) for r in self.precision]
        out = {}
        for name, m in model.named_modules():
            if not isinstance(m, nn.Conv2d | nn.Linear):
                continue
            p = "fp32"
            for pat, prec in rules:
                if fnmatch.fnmatchcase(name, pat):
                    p = prec
            rule = self.layers.get(name)
            out[name] = rule.precision if rule is not None and rule.precision else p
        return out

    @property
    def has_precision(self) -> bool:
        return bool(self.precision) or any(r.precision for r in self.layers.values())

    def int8_layers(self, model: nn.Module) -> tuple[str, ...]:
        """The conv/linear layers the plan runs in int8 (() for a float32 plan)."""
        if not self.has_precision:
            return ()
        return tuple(n for n, p in self.precisions(model).items() if p == "int8")

    @classmethod
    def from_dict(cls, d: dict) -> PruningPlan:
        """The plan ``to_dict`` wrote; anything else is a PruningError naming the field."""
        if not isinstance(d, dict):
            raise PruningError(f"a pruning plan is a JSON object, got {str(d)[:80]}")
        if d.get("version") != PLAN_VERSION or isinstance(d.get("version"), bool):
            raise PruningError(f"pruning plan version {d.get('version')!r}: this npas-host "
                               f"reads version {PLAN_VERSION}")
        raw_layers, raw_config = d.get("layers", {}), d.get("config", {})
        if not isinstance(raw_layers, dict) or not isinstance(raw_config, dict):
            raise PruningError("a pruning plan's 'layers' and 'config' are JSON objects")
        layers = {}
        for name, r in raw_layers.items():
            if not isinstance(r, dict) or not isinstance(r.get("scheme"), str) \
                    or not isinstance(r.get("params", {}), dict) \
                    or not isinstance(r.get("rate"), str | int | float) \
                    or isinstance(r.get("rate"), bool):
                raise PruningError(f"pruning plan layer {name!r}: {str(r)[:80]} is not "
                                   f'{{"scheme": NAME, "rate": RATE, "params": {{...}}}}')
            get_scheme(name, r["scheme"])
            prec = r.get("precision")
            if prec is not None:
                check_precision(f"pruning plan layer {name!r}", prec)
            layers[name] = LayerRule(r["scheme"], parse_rate(r["rate"]), dict(r.get("params", {})),
                                     prec)
        rules = d.get("precision", [])
        if not isinstance(rules, list):
            raise PruningError(f"a pruning plan's 'precision' is a list of 'LAYERS=PRECISION' "
                               f"rules, got {str(rules)[:80]}")
        for rule in rules:
            parse_precision_rule(rule)
        known = {"vector_width", "pattern_count"}
        for k, v in raw_config.items():
            if k not in known or isinstance(v, bool) or not isinstance(v, int):
                raise PruningError(f"pruning plan config {k!r} = {str(v)[:80]}: the config "
                                   f"holds the integers {', '.join(sorted(known))}")
        return cls(layers, PruningConfig(**raw_config), [str(x) for x in rules])

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    @classmethod
    def from_json(cls, text: str) -> PruningPlan:
        return cls.from_dict(json.loads(text))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json() + "\n")

    @classmethod
    def load(cls, path: str | Path) -> PruningPlan:
        try:
            return cls.from_json(Path(path).read_bytes().decode("utf-8"))
        except PruningError as e:
            raise PruningError(f"pruning plan {path}: {e}") from None
        except (OSError, ValueError, RecursionError) as e:  # ValueError: JSON, UTF-8
            raise PruningError(f"pruning plan {path}: not a pruning plan ({e})") from None

    def __repr__(self) -> str:
        rules = ", ".join(f"{k}: {v.scheme} {v.rate:.3g}" for k, v in self.layers.items())
        return f"PruningPlan(vw={self.config.vector_width}, {rules})"

    # --- building -------------------------------------------------------------------------
    @classmethod
    def uniform(cls, model: nn.Module, scheme: str, rate: float | str,
                config: PruningConfig | None = None, params: dict | None = None,
                only: list[str] | None = None, skipped: dict[str, str] | None = None
                ) -> PruningPlan:
        """One scheme and rate on every layer (or those in ``only``) it applies to; the
        layers it does not apply to are left out, each with the reason in ``skipped``."""
        cfg = config or PruningConfig()
        r, s = parse_rate(rate), get_scheme("*", scheme)
        graph = DependencyGraph(model) if s.structural else None
        layers = {}
        for name, m in model.named_modules():
            if not isinstance(m, (nn.Conv2d, nn.Linear)) or (only and name not in only):
                continue
            try:
                p = s.params(name, m, params or {}, cfg)
                s.check(name, m, r, p)
                if graph is not None:
                    graph.out_group(name) if scheme == "filter" else graph.in_groups(name)
            except PruningError as e:
                if skipped is not None:
                    skipped[name] = str(e)
                continue
            layers[name] = LayerRule(scheme, r, dict(params or {}))
        return cls(layers, cfg)

    # --- applying -------------------------------------------------------------------------
    def _resolve(self, model: nn.Module) -> dict[str, tuple]:
        mods = dict(model.named_modules())
        out = {}
        for name in [n for n in mods if n in self.layers]:
            rule = self.layers[name]
            s = get_scheme(name, rule.scheme)
            m = mods[name]
            p = s.params(name, m, rule.params, self.config)
            s.check(name, m, rule.rate, p)
            out[name] = (s, p, rule.rate)
        missing = [n for n in self.layers if n not in mods]
        if missing:
            close = [n for n in mods if missing[0].split(".")[-1] in n][:3]
            hint = f"; layers like it: {', '.join(close)}" if close else ""
            raise PruningError(f"layer {missing[0]}: no such module in "
                               f"{type(model).__name__}{hint}")
        return out

    def _structural(self, model, rules) -> tuple[dict, dict[str, float], DependencyGraph | None]:
        todo = {n: v for n, v in rules.items() if v[0].structural}
        if not todo:
            return {}, {}, None
        graph = DependencyGraph(model)
        mods = graph.modules
        asked: dict[int, tuple[str, str, float, Group]] = {}
        for name, (s, _, rate) in todo.items():
            groups = [graph.out_group(name)] if s.name == "filter" else graph.in_groups(name)
            for g in groups:
                prev = asked.get(g.id)
                if prev and (prev[1], prev[2]) != (s.name, rate):
                    raise PruningError(
                        f"{describe(name, mods[name])}: {s.name} {rate:.3f} prunes the same "
                        f"channels ({g}) as {prev[0]}'s {prev[1]} {prev[2]:.3f}; channels "
                        f"tied by a residual add or a BN are pruned once: give one rule")
                asked.setdefault(g.id, (name, s.name, rate, g))
        pruned: dict[int, list[int]] = {}
        for gid, (_, scheme, rate, g) in sorted(asked.items()):
            score = self._group_scores(g, scheme, mods)
            k = keep_count(g.size, rate, self.config.vector_width)
            order = torch.argsort(score, stable=True)
            pruned[gid] = sorted(order[:g.size - k].tolist())
        achieved = {}
        for name, (s, _, _) in todo.items():
            groups = [graph.out_group(name)] if s.name == "filter" else graph.in_groups(name)
            total = sum(g.size for g in groups)
            achieved[name] = sum(len(pruned[g.id]) for g in groups) / total
        return graph.removed_positions(pruned), achieved, graph

    @staticmethod
    def _group_scores(g: Group, scheme: str, mods: dict[str, nn.Module]) -> torch.Tensor:
        """Per channel: summed L2 norm of the producers' filters (filter) or of the consumers'
        input slices (channel)."""
        score = torch.zeros(g.size, dtype=torch.float64)
        members = g.producers if scheme == "filter" else g.consumers
        for mem in members:
            w = mods[mem.layer].weight.detach().double()
            if mem.role == "out":  # ``inner`` filters per channel before a PixelShuffle
                rows = w.reshape(w.shape[0], -1)
                sl = rows[mem.offset * mem.inner:(mem.offset + g.size) * mem.inner]
                score += sl.reshape(g.size, -1).norm(dim=1)
            else:
                cols = w.transpose(0, 1).reshape(w.shape[1], -1)  # [in, rest]
                sl = cols[mem.offset * mem.inner:(mem.offset + g.size) * mem.inner]
                score += sl.reshape(g.size, -1).norm(dim=1)
        return score

    def apply(self, model: nn.Module) -> PrunedModel:
        """Prune a deep copy of ``model`` (the original is left as it is)."""
        model = copy.deepcopy(model)
        rules = self._resolve(model)
        mods = dict(model.named_modules())
        before = {n: _weights(m) for n, m in mods.items() if isinstance(m, (nn.Conv2d,
                                                                           nn.Linear))}
        removed, achieved, _ = self._structural(model, rules)
        handlers.shrink(model, removed)
        masks: dict[str, torch.Tensor] = {}
        rows: list[LayerReport] = []
        for name, (s, p, rate) in rules.items():
            m = mods[name]
            if s.structural:
                rows.append(LayerReport(name, s.name, p, rate, achieved[name], before[name],
                                        _weights(m)))
                continue
            s.check(name, m, rate, p)  # the shape may have changed by a structural rule
            with torch.no_grad():
                mask = s.mask(m.weight, rate, p)
                m.weight.mul_(mask)
            masks[f"{name}.weight"] = mask
            kept = int(mask.sum())
            note = "" if m.weight.numel() == before[name] else "(after shrinking)"
            rows.append(LayerReport(name, s.name, p, rate, 1 - kept / mask.numel(),
                                    before[name], kept, note))
        touched = {layer for layer, _ in removed}
        for name in before:
            if name in touched and name not in rules:
                rows.append(LayerReport(name, "(follows)", {}, None,
                                        1 - _weights(mods[name]) / before[name], before[name],
                                        _weights(mods[name])))
        order = list(mods)
        rows.sort(key=lambda r: order.index(r.layer))
        return PrunedModel(model, masks, removed, PlanReport(rows))

    def zero_masks(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """Parameter path → bool mask (True: kept) of every weight and bias ``apply`` would
        remove or zero, as zeros in ``model``'s own shapes (structural rules zero the channels
        ``apply`` would cut, ranked the same way; mask rules mask what is left). ``model`` is
        not changed. Gradual and ADMM pruning (host/pruning/algorithms.py) steer towards these."""
        resolved = self._resolve(model)
        removed, _, _ = self._structural(model, resolved)
        mods = dict(model.named_modules())
        masks: dict[str, torch.Tensor] = {}

        def zero(path: str, dim: int, idx: list[int]) -> None:
            p = model.get_parameter(path)
            m = masks.setdefault(path, torch.ones_like(p, dtype=torch.bool))
            m.index_fill_(dim, torch.tensor(idx, dtype=torch.long, device=p.device), False)

        for (layer, role), idx in removed.items():
            m = mods[layer]
            if role == "in":
                zero(f"{layer}.weight", 1, idx)
                continue
            if getattr(m, "weight", None) is not None:
                zero(f"{layer}.weight", 0, idx)
            if getattr(m, "bias", None) is not None:
                zero(f"{layer}.bias", 0, idx)
        for name, (s, p, rate) in resolved.items():
            if s.structural:
                continue
            w = mods[name].weight.detach()
            path = f"{name}.weight"
            current = masks.get(path)
            mask = s.mask(w * current if current is not None else w, rate, p)
            masks[path] = mask if current is None else mask & current
        return masks

    def report(self, model: nn.Module) -> PlanReport:
        return self.apply(model).report

    def masked_reference(self, model: nn.Module) -> nn.Module:
        """A copy of ``model`` with the structural decisions as zeros instead of removed
        channels (and the mask rules applied): the same outputs as ``apply(model).model``."""
        pruned = self.apply(model)
        ref = copy.deepcopy(model)
        rules = self._resolve(ref)
        removed, _, _ = self._structural(ref, rules)
        handlers.zero(ref, removed)
        if any(not v[0].structural for v in rules.values()) and removed:
            raise PruningError("masked_reference: a plan mixing structural and mask rules "
                               "has no unshrunk equivalent (masks are built on shrunk weights)")
        mods = dict(ref.named_modules())
        with torch.no_grad():
            for name, mask in pruned.masks.items():
                mods[name.rsplit(".", 1)[0]].weight.mul_(mask)
        return ref


def schemes_help() -> str:
    return "\n".join(f"{n}: {s.doc}" for n, s in SCHEMES.items())
