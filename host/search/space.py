"""Phase 2's search space: per prunable layer a filter type, a pruning scheme and a rate.

A ``Candidate`` is one ``LayerChoice`` per searched layer (in module order): the filter type
("keep"; for a k×k convolution "1x1" or "dwpw" = depthwise k×k + pointwise 1×1, initialised
from the original weights), the scheme (``host/pruning`` names, "none" when not pruned) and the
compression ratio (1x = not pruned, 5x = 80% of the weights removed). Only valid choices are
offered: each scheme's own ``check`` on the (re-typed) layer, and for filter/channel pruning a
channel group the dependency graph can shrink and that the rate actually narrows (widths stay
multiples of the vector width, at least one vector wide: ``keep_count``; of the rates that
keep the same widths only the lowest is offered). ``repair`` resolves
two structural rules asking different things of one channel group (the later layer falls back
to unstructured pruning at its rate), so every candidate turns into a plan that applies.

jcw's candidates (strategies/jcw/) are finer: filter pruning at any ratio, unstructured at any
density, and both on one layer (a ``LayerChoice`` with a ``mask`` and ``density``); a plan holds
one rule per layer, so such a candidate is cut to its widths first (``structure``) and masked
after (``plan``).

Layers with a negligible share of the model's multiply-adds (squeeze-excite 1×1s on 1×1 maps,
a small classifier) are not searched: they cannot buy latency and only add dimensions.

Precision (``--precisions fp32,int8``, off by default) is a fourth per-layer choice: int8 is
offered for a (filter type, scheme) of a layer only where codegen's quantization pass would run
that layer in int8 (``codegen.int8_offers``; precision.py). A choice's key and JSON row carry
the precision only when it is not fp32, so old journals (and searches without precisions)
read and replay as before.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch import nn

from ..pruning import (
    SCHEMES,
    DependencyGraph,
    LayerRule,
    PrunedModel,
    PruningConfig,
    PruningError,
    PruningPlan,
    describe,
    keep_count,
)
from .filters import FILTER_TYPES, apply_filter_types, filter_type_valid, make_filter
from .space_parts import MASK_SCHEMES, STRUCTURAL, layer_macs, mac_fractions, merge_stages

__all__ = ["MASK_SCHEMES", "STRUCTURAL", "Candidate", "LayerChoice", "LayerSpace", "SearchSpace",
           "layer_macs", "merge_stages"]

SCHEME_ORDER = ("none", *MASK_SCHEMES, *STRUCTURAL)
FALLBACK = "unstructured"  # fits every Conv2d/Linear: where a choice that cannot apply goes
COARSE_MASKS = tuple(s for s in MASK_SCHEMES if s != FALLBACK)  # units of several weights
DEFAULT_RATIOS = (1.0, 2.0, 2.5, 3.0, 5.0, 7.0, 10.0)


def ratio_str(r: float) -> str:
    return f"{r:g}x"


@dataclass(frozen=True)
class LayerChoice:
    ftype: str = "keep"
    scheme: str = "none"
    ratio: float = 1.0  # compression ratio; the fraction removed is 1 - 1/ratio
    # joint channel + weight pruning (jcw): a structural ``scheme`` narrows the layer, then
    # ``mask`` keeps ``density`` of the weights left; "none" for every other strategy
    mask: str = "none"
    density: float = 1.0
    precision: str = "fp32"  # or "int8" (--precisions): the layer's kernels

    @property
    def rate(self) -> float:
        return 1.0 - 1.0 / self.ratio

    @property
    def joint(self) -> bool:
        return self.mask != "none"

    def __str__(self) -> str:
        ft = "" if self.ftype == "keep" else f"{self.ftype} "
        q = "" if self.precision == "fp32" else f" {self.precision}"
        if self.scheme == "none":
            return f"{ft}dense{q}".strip()
        also = f" + {self.mask} {self.density:.0%}" if self.joint else ""
        return f"{ft}{self.scheme} {ratio_str(self.ratio)}{also}{q}"

    def _key(self) -> str:
        k = f"{self.ftype}/{self.scheme}/{self.ratio:g}"
        k = f"{k}/{self.mask}/{self.density:g}" if self.joint else k
        return k if self.precision == "fp32" else f"{k}@{self.precision}"

    def _json(self) -> list:
        row = [self.ftype, self.scheme, self.ratio]
        if self.precision != "fp32":
            return [*row, self.mask, self.density, self.precision]
        return [*row, self.mask, self.density] if self.joint else row


@dataclass(frozen=True)
class Candidate:
    choices: tuple[LayerChoice, ...]

    def key(self) -> str:
        return "|".join(c._key() for c in self.choices)

    @property
    def joint(self) -> bool:
        """Some layer is both narrowed and masked: realized in two steps (``structure``,
        then ``plan``)."""
        return any(c.joint for c in self.choices)

    def to_json(self) -> list[list]:
        return [c._json() for c in self.choices]

    @staticmethod
    def from_json(rows: list) -> Candidate:
        out = []
        for row in rows:  # [f, s, r], [f, s, r, mask, density], or those and a precision
            f, s, r, *joint = row
            m, d, *q = joint if joint else ("none", 1.0)
            out.append(LayerChoice(str(f), str(s), float(r), str(m), float(d),
                                   str(q[0]) if q else "fp32"))
        return Candidate(tuple(out))

    @property
    def int8(self) -> bool:
        return any(c.precision == "int8" for c in self.choices)


@dataclass
class LayerSpace:
    """One searched layer: its shape, cost and valid choices (ftype → ratio → schemes)."""

    name: str
    desc: str
    kernel: tuple[int, int]
    in_ch: int
    out_ch: int
    macs: int
    options: dict[str, dict[float, tuple[str, ...]]]
    # --precisions with int8: per filter type, the schemes under which the layer can run int8
    int8: dict[str, frozenset[str]] = field(default_factory=dict)

    def precisions(self, ftype: str, scheme: str) -> tuple[str, ...]:
        """The precisions offered for ``ftype`` and ``scheme`` ("fp32" alone, or also int8)."""
        return ("fp32", "int8") if scheme in self.int8.get(ftype, ()) else ("fp32",)

    def target(self, ftype: str) -> str:
        """The module a scheme acts on once the filter type is applied."""
        return f"{self.name}.1" if ftype == "dwpw" else self.name

    def offered(self, c: LayerChoice) -> bool:
        """One of the discrete choices the space offers (what npas, random, uniform pick)."""
        return (not c.joint and c.scheme in self.options.get(c.ftype, {}).get(c.ratio, ())
                and c.precision in self.precisions(c.ftype, c.scheme))

    def valid(self, c: LayerChoice) -> bool:
        """Offered, or one of jcw's finer choices: filter/channel at any ratio ≥ 1 and
        unstructured at any density where the layer is offered them, also together."""
        if self.offered(c):
            return True
        if c.precision not in self.precisions(c.ftype, c.mask if c.joint else c.scheme):
            return False  # a joint layer's kernel is its mask's
        per = self.options.get(c.ftype, {})

        def somewhere(scheme: str) -> bool:
            return any(scheme in ss for ss in per.values())

        fine = (c.scheme in STRUCTURAL or c.scheme == FALLBACK) and somewhere(c.scheme) \
            and c.ratio >= 1.0
        if c.joint:
            return fine and c.scheme in STRUCTURAL and c.mask == FALLBACK \
                and somewhere(c.mask) and 0.0 < c.density <= 1.0
        return fine


@dataclass
class _Groups:
    """Where a conv/linear layer sits in the channel groups (ids), sizes by id."""

    out: int | None = None
    ins: tuple[int, ...] = ()
    through: int | None = None


@dataclass
class SearchSpace:
    layers: list[LayerSpace]
    ratios: tuple[float, ...]
    config: PruningConfig
    total_macs: int
    skipped: dict[str, str] = field(default_factory=dict)  # layer -> why it is not searched
    # every conv/linear layer: dense MACs, kernel, out channels, groups it touches
    _all: dict[str, tuple[int, tuple[int, int], int, _Groups]] = field(default_factory=dict)
    _group_size: dict[int, int] = field(default_factory=dict)
    _claims: dict[str, dict[str, tuple[int, ...]]] = field(default_factory=dict)
    # (layer, structural scheme, ratio) -> the compression the kept widths really give
    _effective: dict[tuple[str, str, float], float] = field(default_factory=dict)
    precisions: tuple[str, ...] = ("fp32",)  # --precisions: what a layer may run in

    @property
    def int8(self) -> bool:
        """Some layer is offered int8 (precision is searched)."""
        return any(ls.int8 for ls in self.layers)

    # --- building -------------------------------------------------------------------------
    @classmethod
    def build(cls, model: nn.Module, example: torch.Tensor,
              ratios: tuple[float, ...] = DEFAULT_RATIOS,
              schemes: tuple[str, ...] = MASK_SCHEMES + STRUCTURAL,
              ftypes: tuple[str, ...] = FILTER_TYPES, vector_width: int = 16,
              pattern_count: int = 8, min_share: float = 0.005) -> SearchSpace:
        for s in schemes:
            if s not in SCHEMES:
                raise PruningError(f"scheme {s!r}: known schemes are {', '.join(SCHEMES)}")
        for f in ftypes:
            if f not in FILTER_TYPES:
                raise PruningError(f"filter type {f!r}: known are {', '.join(FILTER_TYPES)}")
        ratios = tuple(sorted({1.0, *(float(r) for r in ratios)}))
        if ratios[0] < 1.0:
            raise PruningError(f"compression ratios must be ≥ 1x; got {ratios}")
        cfg = PruningConfig(vector_width=vector_width, pattern_count=pattern_count)
        macs = layer_macs(model, example)
        total = sum(macs.values()) or 1
        mods = dict(model.named_modules())
        try:
            graph = DependencyGraph(model)
        except PruningError:
            graph = None
        groups: dict[str, _Groups] = {n: _Groups() for n in macs}
        sizes: dict[int, int] = {}
        frozen: set[int] = set()
        if graph is not None:
            for g in graph.groups:
                sizes[g.id] = g.size
                if g.frozen:
                    frozen.add(g.id)
                for mem in g.members:
                    gr = groups.get(mem.layer)
                    if gr is None:
                        continue
                    if mem.role == "out":
                        gr.out = g.id
                    elif mem.role == "in" and g.id not in gr.ins:
                        gr.ins = (*gr.ins, g.id)
                    elif mem.role == "through":
                        gr.through = g.id
        space = cls([], ratios, cfg, total, _group_size=sizes)
        for name, mac in macs.items():
            m = mods[name]
            kernel = m.kernel_size if isinstance(m, nn.Conv2d) else (1, 1)
            out_ch = m.out_channels if isinstance(m, nn.Conv2d) else m.out_features
            space._all[name] = (mac, tuple(kernel), out_ch, groups[name])
        for name, m in mods.items():
            if name not in macs:
                continue
            if macs[name] / total < min_share:
                space.skipped[name] = (f"{macs[name] / total:.2%} of the multiply-adds "
                                       f"(< {min_share:.1%})")
                continue
            gr = groups[name]
            claims = {
                "filter": (gr.out,) if gr.out is not None and gr.out not in frozen else (),
                "channel": gr.ins if gr.ins and not (set(gr.ins) & frozen) else (),
            }
            options: dict[str, dict[float, tuple[str, ...]]] = {}
            for ft in ftypes:
                if not filter_type_valid(m, ft):
                    continue
                target = m if ft == "keep" else (
                    make_filter(m, ft) if ft == "1x1" else make_filter(m, ft)[1])
                per: dict[float, tuple[str, ...]] = {}
                widths_seen: set[tuple[str, tuple[int, ...]]] = set()
                for r in ratios:
                    if r == 1.0:
                        per[r] = ("none",)
                        continue
                    ok = []
                    for sc in schemes:
                        if not cls._scheme_ok(sc, name, target, 1 - 1 / r, cfg, claims, sizes):
                            continue
                        if sc in STRUCTURAL:
                            # rates that keep the same widths are the same model: offer the
                            # lowest, and remember what it really removes
                            gids = claims[sc]
                            kept = tuple(keep_count(sizes[g], 1 - 1 / r, vector_width)
                                         for g in gids)
                            if (sc, kept) in widths_seen:
                                continue
                            widths_seen.add((sc, kept))
                            space._effective[(name, sc, r)] = (
                                sum(sizes[g] for g in gids) / sum(kept))
                        ok.append(sc)
                    if ok:
                        per[r] = tuple(sorted(ok, key=SCHEME_ORDER.index))
                options[ft] = per
            in_ch = m.in_channels if isinstance(m, nn.Conv2d) else m.in_features
            out_ch = m.out_channels if isinstance(m, nn.Conv2d) else m.out_features
            kernel = m.kernel_size if isinstance(m, nn.Conv2d) else (1, 1)
            space.layers.append(LayerSpace(name, describe(name, m), tuple(kernel), in_ch,
                                           out_ch, macs[name], options))
            space._claims[name] = claims
        if not space.layers:
            raise PruningError(f"{type(model).__name__}: no Conv2d/Linear layer to search")
        return space

    @staticmethod
    def _scheme_ok(s: str, name: str, target: nn.Module, rate: float, cfg: PruningConfig,
                   claims: dict[str, tuple[int, ...]], sizes: dict[int, int]) -> bool:
        scheme = SCHEMES[s]
        if scheme.structural:
            gids = claims[s]
            if not gids:
                return False
            # the rate must narrow something (a group at the vector width stays as it is)
            return any(keep_count(sizes[g], rate, cfg.vector_width) < sizes[g] for g in gids)
        try:
            p = scheme.params(name, target, {}, cfg)
            scheme.check(name, target, rate, p)
        except PruningError:
            return False
        return True

    # --- candidates -----------------------------------------------------------------------
    def dense(self) -> Candidate:
        return Candidate(tuple(LayerChoice() for _ in self.layers))

    def _fallback(self, ls: LayerSpace, c: LayerChoice) -> LayerChoice:
        schemes = ls.options.get(c.ftype, {}).get(c.ratio, ())
        for s in (FALLBACK, *MASK_SCHEMES):
            if s in schemes:
                c = replace(c, scheme=s)
                break
        else:
            c = replace(c, scheme="none", ratio=1.0)
        # the fallback scheme may not run in int8: then the layer runs in float32
        return c if c.precision in ls.precisions(c.ftype, c.scheme) else replace(
            c, precision="fp32")

    def repair(self, cand: Candidate) -> Candidate:
        """Make two structural rules on one channel group agree: a later layer whose
        filter/channel rule asks something else of a group already claimed falls back to
        unstructured pruning at its rate (PruningPlan refuses such pairs)."""
        if len(cand.choices) != len(self.layers):
            raise PruningError(f"candidate has {len(cand.choices)} layer choices; the space "
                               f"has {len(self.layers)} layers")
        claims: dict[int, tuple[str, float]] = {}
        out = []
        for ls, c in zip(self.layers, cand.choices, strict=True):
            if not ls.valid(c):
                raise PruningError(f"{ls.desc}: {c} is not in the search space")
            if c.scheme in STRUCTURAL:
                gids = self._claims[ls.name][c.scheme]
                want = (c.scheme, c.ratio)
                if any(claims.get(g, want) != want for g in gids):
                    c = self._fallback(ls, c)
                else:
                    for g in gids:
                        claims[g] = want
            out.append(c)
        return Candidate(tuple(out))

    def random(self, rng: np.random.Generator) -> Candidate:
        """Uniform per layer: a filter type, then a rate, then a scheme valid for both."""
        out = []
        for ls in self.layers:
            fts = list(ls.options)
            ft = fts[rng.integers(len(fts))]
            rs = list(ls.options[ft])
            r = rs[rng.integers(len(rs))]
            ss = ls.options[ft][r]
            s = ss[rng.integers(len(ss))]
            ps = ls.precisions(ft, s)
            p = ps[rng.integers(len(ps))] if len(ps) > 1 else "fp32"
            out.append(LayerChoice(ft, s, r, precision=p))
        return self.repair(Candidate(tuple(out)))

    def uniform(self, scheme: str, ratio: float, precision: str = "fp32") -> Candidate:
        """Every layer the same scheme and rate, filter types kept; a layer the scheme does not
        fit takes unstructured pruning at the same rate."""
        return self.homogeneous("keep", scheme, ratio, precision)

    def homogeneous(self, ftype: str, scheme: str, ratio: float,
                    precision: str = "fp32") -> Candidate:
        """The same choice on every layer where it fits: the filter type where the layer can
        take it (else keep), the scheme at that rate (else unstructured, else dense), the
        precision where that choice offers it (else fp32)."""
        out = []
        for ls in self.layers:
            ft = ftype if ftype in ls.options else "keep"
            c = self._canonical(ls, LayerChoice(ft, scheme, ratio))
            if not ls.offered(c):
                c = self._fallback(ls, c) if ratio in ls.options[ft] else LayerChoice()
            if precision in ls.precisions(c.ftype, c.scheme):
                c = replace(c, precision=precision)
            out.append(c)
        return self.repair(Candidate(tuple(out)))

    def _canonical(self, ls: LayerSpace, c: LayerChoice) -> LayerChoice:
        """A structural choice at a rate not offered because a lower one keeps the same
        widths: that lower rate."""
        if c.scheme not in STRUCTURAL or ls.offered(c):
            return c
        gids = self._claims[ls.name][c.scheme]
        vw = self.config.vector_width

        def kept(r: float) -> tuple[int, ...]:
            return tuple(keep_count(self._group_size[g], 1 - 1 / r, vw) for g in gids)

        for r, schemes in ls.options.get(c.ftype, {}).items():
            if c.scheme in schemes and kept(r) == kept(c.ratio):
                return LayerChoice(c.ftype, c.scheme, r, precision=c.precision)
        return c

    def uniform_grid(self) -> list[tuple[str, float]]:
        """Every (scheme, ratio) that fits at least one layer unchanged."""
        grid = []
        for s in SCHEME_ORDER[1:]:
            for r in self.ratios[1:]:
                if any(ls.offered(LayerChoice("keep", s, r)) for ls in self.layers):
                    grid.append((s, r))
        return grid

    def _cheapest(self, pick_scheme) -> Candidate:
        """Per layer, the filter type and rate that cost least, with the scheme
        ``pick_scheme(layer, ftype, ratio)`` chooses (None: skip that option)."""
        out: list[LayerChoice] = []
        for i, ls in enumerate(self.layers):
            best, best_cost = LayerChoice(), (math.inf,)
            for ft, per in ls.options.items():
                for r, schemes in per.items():
                    s = pick_scheme(ls, ft, r, schemes)
                    if s is None:
                        continue
                    c = LayerChoice(ft, s, r)
                    trial = [*out, c, *(LayerChoice() for _ in self.layers[i + 1:])]
                    fixed = self.repair(Candidate(tuple(trial)))
                    structural, effective = self.mac_fractions(fixed)
                    cost = (round(effective, 12), round(structural, 12), -r)
                    if cost < best_cost:
                        best, best_cost = fixed.choices[i], cost
            out.append(best)
        return self.repair(Candidate(tuple(out)))

    def extremes(self) -> list[Candidate]:
        """The most pruned candidates: structural pruning at the highest rates with the
        cheapest filter types, and for each mask scheme in the space, that scheme at its
        highest rate wherever it fits. The latency floor the target is checked against."""
        def structural(ls, ft, r, schemes):
            st = [s for s in schemes if s in STRUCTURAL]
            return st[0] if st else (schemes[0] if r == 1.0 else None)

        found = [self._cheapest(structural)]
        present = {s for ls in self.layers for per in ls.options.values()
                   for ss in per.values() for s in ss if s in MASK_SCHEMES}
        for mask in sorted(present, key=SCHEME_ORDER.index):
            def pick(ls, ft, r, schemes, mask=mask):
                if mask in schemes:
                    return mask
                if any(mask in ss for ss in ls.options[ft].values()):
                    return None  # the scheme fits this layer: only at its own rates
                return structural(ls, ft, r, schemes)
            found.append(self._cheapest(pick))
        out, seen = [], set()
        for c in found:
            if c.key() not in seen:
                seen.add(c.key())
                out.append(c)
        return out

    # --- turning a candidate into a model ---------------------------------------------------
    def ftypes(self, cand: Candidate) -> dict[str, str]:
        return {ls.name: c.ftype for ls, c in zip(self.layers, cand.choices, strict=True)
                if c.ftype != "keep"}

    def plan(self, cand: Candidate) -> PruningPlan:
        """The pruning plan of ``cand`` for the model with its filter types applied, or for a
        joint candidate the mask rules for the model ``structure`` has narrowed."""
        rules = {}
        for ls, c in zip(self.layers, cand.choices, strict=True):
            if c.scheme != "none" and not (cand.joint and c.scheme in STRUCTURAL):
                rules[ls.target(c.ftype)] = LayerRule(c.scheme, c.rate, {})
            if c.joint:
                rules[ls.target(c.ftype)] = LayerRule(c.mask, 1.0 - c.density, {})
        # the int8 layers (the rest fp32): what compile --plan replays
        int8 = [f"{n}=int8" for ls, c in zip(self.layers, cand.choices, strict=True)
                if c.precision == "int8"
                for n in ((f"{ls.name}.0", f"{ls.name}.1") if c.ftype == "dwpw"
                          else (ls.target(c.ftype),))]
        return PruningPlan(rules, copy.deepcopy(self.config), int8)

    def structure(self, cand: Candidate) -> PruningPlan | None:
        """A joint candidate's first step: its structural rules alone (a plan holds one rule
        per layer, and a joint layer has two); None for any other candidate."""
        if not cand.joint:
            return None
        rules = {ls.target(c.ftype): LayerRule(c.scheme, c.rate, {})
                 for ls, c in zip(self.layers, cand.choices, strict=True)
                 if c.scheme in STRUCTURAL}
        return PruningPlan(rules, copy.deepcopy(self.config))

    def start(self, model: nn.Module, cand: Candidate) -> tuple[nn.Module, PrunedModel | None]:
        """What ``plan(cand)`` applies to: ``model`` re-typed, and for a joint candidate also
        narrowed by ``structure(cand)`` (returned too: its removed channels and report)."""
        typed = apply_filter_types(model, self.ftypes(cand))
        first = self.structure(cand)
        if first is None:
            return typed, None
        narrowed = first.apply(typed)
        return narrowed.model, narrowed

    def realize(self, model: nn.Module, cand: Candidate) -> PrunedModel:
        """``model`` re-typed and pruned (one-shot magnitude) as ``cand`` says."""
        start, narrowed = self.start(model, cand)
        pruned = self.plan(cand).apply(start)
        return pruned if narrowed is None else merge_stages(narrowed, pruned)

    # --- cost estimate and encoding (what the Bayesian-optimisation filter sees) -------------
    def mac_fractions(self, cand: Candidate) -> tuple[float, float]:
        """(structural, effective) multiply-adds of ``cand`` over the dense model's: filter
        types and filter/channel shrinking (followed through the channel groups), then also
        counting only the weights mask schemes keep. An estimate; latency is measured."""
        return mac_fractions(self, cand)

    def features(self, cand: Candidate) -> np.ndarray:
        """A compact numeric encoding, built so that a sum of per-layer effects is easy to
        fit: per layer log10 of the ratio, the same for structural and for coarse-grained mask
        schemes (block, block-punched, connectivity, pattern) only, and the filter type; then
        the estimated MAC fractions and their logs (what latency mostly follows)."""
        rows: list[float] = []
        for ls, c in zip(self.layers, cand.choices, strict=True):
            lr = math.log10(self._effective.get((ls.name, c.scheme, c.ratio), c.ratio))
            rows += [lr, lr * (c.scheme in STRUCTURAL),
                     lr * (c.scheme in COARSE_MASKS),
                     float(c.ftype == "1x1"), float(c.ftype == "dwpw")]
        s, e = self.mac_fractions(cand)
        rows += [s, e, math.log10(s), math.log10(e)]
        # how much of the model changed, whatever the layer: what accuracy follows first
        share = [ls.macs / self.total_macs for ls in self.layers]
        rows += [sum(w * math.log10(self._effective.get((ls.name, c.scheme, c.ratio), c.ratio))
                     for w, ls, c in zip(share, self.layers, cand.choices, strict=True)),
                 sum(w * (c.ftype == "1x1") for w, c in zip(share, cand.choices, strict=True)),
                 sum(w * (c.ftype == "dwpw") for w, c in zip(share, cand.choices, strict=True))]
        if self.int8:  # precision searched: per layer int8 or not, and the int8 share of MACs
            q = [float(c.precision == "int8") for c in cand.choices]
            rows += [*q, sum(w * x for w, x in zip(share, q, strict=True))]
        return np.asarray(rows, dtype=np.float64)

    def size(self) -> float:
        """How many candidates the space holds (before repair)."""
        n = 1.0
        for ls in self.layers:
            n *= sum(len(ls.precisions(ft, s)) for ft, per in ls.options.items()
                     for ss in per.values() for s in ss)
        return n

    def to_dict(self) -> dict:
        return {"ratios": list(self.ratios), "config": self.config.to_dict(),
                "total_macs": self.total_macs, "skipped": self.skipped,
                "layers": [{"name": ls.name, "desc": ls.desc, "macs": ls.macs,
                            "options": {ft: {ratio_str(r): list(ss) for r, ss in per.items()}
                                        for ft, per in ls.options.items()},
                            **({"int8": {ft: sorted(ss, key=SCHEME_ORDER.index)
                                         for ft, ss in ls.int8.items()}} if ls.int8 else {})}
                           for ls in self.layers]}
