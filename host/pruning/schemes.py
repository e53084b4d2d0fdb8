"""Pruning schemes: what each one removes, where it applies, and its magnitude-based mask.

One table, ``SCHEMES``, keyed by scheme name, drives validation, mask building and the tests.
A scheme removes whole *units* (a weight, a column segment of a row block, a kernel position in
a filter×channel block, a kernel); it ranks units by L2 norm (ties: lower index first) and
removes them in that order while doing so brings the removed weight count closer to
``rate × weights``. So the achieved count is within half of one unit of the request; for
unstructured pruning (unit = 1 weight) it is round(rate × weights) exactly. One unit is always
kept: no scheme empties a layer.

Two schemes are structural (``filter``, ``channel``): they do not build masks here; they name a
channel group of the model's dependency graph (graph.py), which is physically shrunk.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from .config import PruningConfig, PruningError, describe

PATTERN_KEPT = 4  # positions kept per 3x3 kernel by pattern pruning (centre + 3)
PATTERN_MIN_RATE = 5 / 9  # what pattern pruning alone removes


def _remove_units(scores: torch.Tensor, sizes: torch.Tensor, target: float) -> torch.Tensor:
    """Units to remove (bool, like ``scores``): lowest score first (ties: lower flat index),
    taking a unit while that brings the removed weight count closer to ``target``; at least
    one unit is kept."""
    flat_s, flat_n = scores.flatten(), sizes.flatten()
    order = torch.argsort(flat_s, stable=True)
    removed = torch.zeros_like(flat_s, dtype=torch.bool)
    n_units = flat_s.numel()
    if bool((flat_n == flat_n[0]).all()):  # equal units: closed form
        s = float(flat_n[0])
        k = max(0, math.ceil(target / s - 0.5)) if target > 0 else 0
        removed[order[:min(k, n_units - 1)]] = True
        return removed.view_as(scores)
    done, sizes_sorted = 0.0, flat_n[order].tolist()
    for pos, (idx, s) in enumerate(zip(order.tolist(), sizes_sorted, strict=True)):
        if pos == n_units - 1:
            break
        if done + s / 2 < target:
            removed[idx] = True
            done += s
    return removed.view_as(scores)


@dataclass
class Scheme:
    """One pruning scheme: parameters with defaults, a validity rule and a mask builder."""

    name: ClassVar[str]
    structural: ClassVar[bool] = False
    defaults: dict = field(default_factory=dict)
    doc: ClassVar[str] = ""

    def params(self, layer: str, m: nn.Module, given: dict, cfg: PruningConfig) -> dict:
        """The full parameter set for a layer (defaults filled in, unknown keys refused)."""
        p = self.default_params(cfg)
        for k, v in given.items():
            if k not in p:
                known = ", ".join(p) or "none"
                raise PruningError(f"{describe(layer, m)}: {self.name} pruning has no parameter "
                                   f"{k!r} (parameters: {known})")
            if not isinstance(v, int) or v < 1:
                raise PruningError(f"{describe(layer, m)}: {self.name} parameter {k}={v!r} "
                                   f"must be a positive integer")
            p[k] = v
        return p

    def default_params(self, cfg: PruningConfig) -> dict:
        return dict(self.defaults)

    def check(self, layer: str, m: nn.Module, rate: float, params: dict) -> None:
        """Raise PruningError naming the layer when the scheme does not apply to it."""
        if not isinstance(m, (nn.Conv2d, nn.Linear)):
            raise PruningError(f"{describe(layer, m)}: {self.name} pruning applies to Conv2d "
                               f"and Linear layers only")

    def mask(self, w: torch.Tensor, rate: float, params: dict) -> torch.Tensor:
        """Bool tensor shaped like ``w``: True where the weight is kept."""
        raise NotImplementedError

    def unit_weights(self, w: torch.Tensor, params: dict) -> int:
        """The largest unit in weights: the achieved count is within half of it."""
        return 1

    def __repr__(self) -> str:
        p = ", ".join(f"{k}={v}" for k, v in self.defaults.items())
        return f"{self.name}({p})"


def _need_conv(self: Scheme, layer: str, m: nn.Module, what: str) -> nn.Conv2d:
    if not isinstance(m, nn.Conv2d):
        raise PruningError(f"{describe(layer, m)}: {self.name} pruning needs {what}")
    return m


class Unstructured(Scheme):
    name = "unstructured"
    doc = "any weight of a Conv2d or Linear; unit = one weight (exact: round(rate × weights))"

    def mask(self, w, rate, params):
        a = w.detach().abs().flatten()
        rm = _remove_units(a, torch.ones_like(a), rate * a.numel())
        return ~rm.view_as(w)


class Block(Scheme):
    name = "block"
    doc = ("GEMM-like layers (1x1 conv, Linear): the [out, in] matrix in blocks of `rows` output "
           "rows; inside each block whole columns are removed, blocks differ; unit = a column "
           "of one block (`rows` weights)")

    def __init__(self):
        super().__init__(defaults={"rows": 16})

    def check(self, layer, m, rate, params):
        super().check(layer, m, rate, params)
        if isinstance(m, nn.Conv2d) and (m.kernel_size != (1, 1) or m.groups != 1):
            kh, kw = m.kernel_size
            raise PruningError(f"{describe(layer, m)}: block pruning needs a GEMM-like layer "
                               f"(1x1 conv without groups, Linear), got {kh}x{kw}"
                               f"{f' with groups={m.groups}' if m.groups > 1 else ''}; use "
                               f"block_punched or pattern for k×k convs")

    def _scores(self, w, r):
        o, i = w.shape[0], w[0].numel()
        nb = -(-o // r)
        sq = torch.zeros(nb * r, i, dtype=w.dtype)
        sq[:o] = w.detach().reshape(o, i) ** 2
        rows = torch.full((nb,), r)
        rows[-1] = o - (nb - 1) * r
        return sq.view(nb, r, i).sum(1), rows[:, None].expand(nb, i)

    def mask(self, w, rate, params):
        r = params["rows"]
        scores, sizes = self._scores(w, r)
        rm = _remove_units(scores, sizes, rate * w.numel())
        o = w.shape[0]
        return ~rm.repeat_interleave(r, 0)[:o].reshape(w.shape)

    def unit_weights(self, w, params):
        return min(params["rows"], w.shape[0])


class BlockPunched(Scheme):
    name = "block_punched"
    doc = ("k×k convs: blocks of `filters` output × `channels` input channels; inside a block "
           "the same kernel positions are removed in all its filters and channels; unit = one "
           "position of one block (filters × channels weights)")

    def __init__(self):
        super().__init__(defaults={"filters": 16, "channels": 4})

    def check(self, layer, m, rate, params):
        c = _need_conv(self, layer, m, "a k×k Conv2d")
        if c.kernel_size == (1, 1) or c.groups != 1:
            kh, kw = c.kernel_size
            why = f"groups={c.groups}" if c.groups != 1 else f"a {kh}x{kw} kernel"
            raise PruningError(f"{describe(layer, m)}: block_punched pruning needs a k×k conv "
                               f"(k > 1) without groups, got {why}; use block for 1x1 convs, "
                               f"pattern or connectivity for grouped ones")

    def mask(self, w, rate, params):
        bf, bc = params["filters"], params["channels"]
        o, i, kh, kw = w.shape
        nbo, nbi = -(-o // bf), -(-i // bc)
        sq = torch.zeros(nbo * bf, nbi * bc, kh * kw, dtype=w.dtype)
        sq[:o, :i] = (w.detach() ** 2).reshape(o, i, kh * kw)
        scores = sq.view(nbo, bf, nbi, bc, kh * kw).sum((1, 3))
        fo = torch.full((nbo,), bf)
        fo[-1] = o - (nbo - 1) * bf
        ci = torch.full((nbi,), bc)
        ci[-1] = i - (nbi - 1) * bc
        sizes = (fo[:, None] * ci[None, :])[:, :, None].expand_as(scores)
        rm = _remove_units(scores, sizes, rate * w.numel())
        full = rm.repeat_interleave(bf, 0).repeat_interleave(bc, 1)[:o, :i]
        return ~full.reshape(w.shape)

    def unit_weights(self, w, params):
        return min(params["filters"], w.shape[0]) * min(params["channels"], w.shape[1])


class Connectivity(Scheme):
    name = "connectivity"
    doc = "Conv2d: whole kernels (one filter × one input channel) removed; unit = one kernel"

    def check(self, layer, m, rate, params):
        _need_conv(self, layer, m, "a Conv2d (it removes whole kernels)")

    def mask(self, w, rate, params):
        k = w.shape[2] * w.shape[3]
        scores = (w.detach() ** 2).sum((2, 3))
        rm = _remove_units(scores, torch.full_like(scores, k), rate * w.numel())
        return (~rm)[:, :, None, None].expand(w.shape).clone()

    def unit_weights(self, w, params):
        return w.shape[2] * w.shape[3]


class Pattern(Scheme):
    name = "pattern"
    doc = ("3x3 convs: every kept kernel keeps exactly 4 positions (the centre + 3) from a set "
           "of `patterns` shapes, the most frequent top-4 magnitude shapes of the layer; each "
           "kernel takes the pattern that keeps most of its energy. Pattern alone removes 5/9; "
           "the rest of the rate removes whole kernels (connectivity): with K kernels and c of "
           "them removed, 5K + 4c weights go, c chosen as close as possible to the rate (rate "
           "≥ 5/9; within 2 weights)")

    def default_params(self, cfg):
        return {"patterns": cfg.pattern_count}

    def check(self, layer, m, rate, params):
        c = _need_conv(self, layer, m, "a 3x3 Conv2d")
        if c.kernel_size != (3, 3):
            kh, kw = c.kernel_size
            raise PruningError(f"{describe(layer, m)}: pattern pruning needs a 3x3 kernel, "
                               f"got {kh}x{kw}")
        if rate < PATTERN_MIN_RATE - 1e-9:
            raise PruningError(f"{describe(layer, m)}: pattern pruning removes at least 5/9 "
                               f"(0.556) of a 3x3 layer's weights; rate {rate:.3f} asks for "
                               f"less: use a rate ≥ 0.556 (2.25x) or another scheme")

    @staticmethod
    def pattern_set(w: torch.Tensor, count: int) -> torch.Tensor:
        """[P, 9] bool: the ``count`` most frequent top-4 shapes (centre forced), most
        frequent first (ties: smaller bit code first)."""
        a = w.detach().abs().reshape(-1, 9).clone()
        a[:, 4] = float("inf")
        # rank of each position in its kernel: larger first, ties by lower position
        ai, aj = a[:, :, None], a[:, None, :]
        rank = ((aj > ai) | ((aj == ai) & torch.ones(9, 9, dtype=torch.bool).tril(-1))).sum(2)
        codes = ((rank < PATTERN_KEPT).long() << torch.arange(9)).sum(1)
        uniq, counts = torch.unique(codes, return_counts=True)
        order = sorted(range(len(uniq)), key=lambda j: (-int(counts[j]), int(uniq[j])))[:count]
        bits = torch.tensor([int(uniq[j]) for j in order])
        return ((bits[:, None] >> torch.arange(9)) & 1).bool()

    def mask(self, w, rate, params):
        pats = self.pattern_set(w, params["patterns"])
        sq = (w.detach() ** 2).reshape(-1, 9)
        energy = sq @ pats.T.to(sq.dtype)  # [K, P]
        best = torch.argmax(energy, dim=1)  # first maximum: lower pattern index wins ties
        keep = pats[best]  # [K, 9]
        n_k = keep.shape[0]
        kept_energy = energy.gather(1, best[:, None]).squeeze(1)
        extra = rate * w.numel() - (9 - PATTERN_KEPT) * n_k
        rm = _remove_units(kept_energy, torch.full_like(kept_energy, PATTERN_KEPT), extra)
        keep[rm] = False
        return keep.view(w.shape)

    def unit_weights(self, w, params):
        return PATTERN_KEPT


class Filter(Scheme):
    name = "filter"
    structural = True
    doc = ("output channels of a Conv2d/Linear, removed physically with every layer that "
           "shares them (BN, depthwise, residual adds, concat, Linear after flatten); rate = "
           "fraction of the channel group removed, kept width rounded to the vector width")


class Channel(Scheme):
    name = "channel"
    structural = True
    doc = ("input channels of a Conv2d/Linear: the channel groups feeding it are shrunk "
           "physically, ranked by the L2 norm of the input slices of all their consumers")


SCHEMES: dict[str, Scheme] = {s.name: s for s in (
    Unstructured(), Block(), BlockPunched(), Connectivity(), Pattern(), Filter(), Channel())}


def get_scheme(layer: str, name: str) -> Scheme:
    try:
        return SCHEMES[name]
    except KeyError:
        raise PruningError(f"layer {layer}: unknown pruning scheme {name!r}; known: "
                           f"{', '.join(SCHEMES)}") from None
