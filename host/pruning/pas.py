"""Pruning-as-Search (PaS): every layer's width learned by gradient descent in one training run.

One learnable scalar per channel of every prunable channel group (``graph.DependencyGraph``:
channels tied across residual adds, concat, BatchNorm and depthwise convs share one mask), 1 at
the start, binarised in the forward pass (``w > 0.5``) with a straight-through gradient. The
mask multiplies the group's channels where they are read: at the input of every consumer (a
conv or Linear; after flatten, each channel's features), so a masked channel is invisible to
the rest of the model exactly as if it had been removed, whatever the activations between,
identity paths of residual adds included. The loss is
the task's plus α·((MACs − target) / dense MACs)², with MACs counted from the binary masks
(differentiable through the straight-through estimator). Afterwards the masked channels are
removed physically by the filter-pruning machinery (``handlers.shrink``), each group's width
rounded to the vector width (by mask value), and the narrower model is fine-tuned.

Frozen groups (the model's input and output, reshapes the graph cannot follow) get no mask.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from . import handlers
from .config import PruningError
from .graph import DependencyGraph, Group

DEFAULT_ALPHA = 5.0  # the PaS paper's code for ResNet/MobileNet


def binarize(w: torch.Tensor) -> torch.Tensor:
    """``w > 0.5`` forward, the identity's gradient backward (straight-through)."""
    return w + ((w > 0.5).to(w.dtype) - w).detach()


@dataclass
class _LayerMacs:
    """A conv/Linear's multiply-adds as a function of its groups' kept channels: ``per`` MACs
    per (output channel × input channel / groups); ``out``/``ins``: (group id or None, size)
    for the channels of each side (None: fixed)."""

    per: int
    out: list[tuple[int | None, int]]
    ins: list[tuple[int | None, int]]
    depthwise: bool = False


class ChannelMasks:
    """The masks of ``model``'s prunable groups, their hooks and their MAC count."""

    def __init__(self, model: nn.Module, example: torch.Tensor):
        self.graph = DependencyGraph(model)
        self.groups: dict[int, Group] = {g.id: g for g in self.graph.groups
                                         if not g.frozen and g.producers and g.size > 1
                                         # its masks act per output channel of a producer
                                         and all(m.inner == 1 for m in g.producers)}
        if not self.groups:
            raise PruningError(f"{type(model).__name__}: no channel group can be pruned (every "
                               f"group is frozen: {self.graph})")
        self.logits = nn.ParameterDict({str(i): nn.Parameter(torch.ones(g.size))
                                        for i, g in self.groups.items()})
        mods = dict(model.named_modules())
        # consumer → [(offset, group id, features per channel)]
        self._where: dict[str, list[tuple[int, int, int]]] = {}
        for g in self.groups.values():
            for mem in g.members:
                if mem.role == "in":
                    self._where.setdefault(mem.layer, []).append((mem.offset, g.id, mem.inner))
        self._layers = self._mac_terms(model, mods, example)
        self.dense_macs = float(self.macs(hard=False, dense=True))
        self._handles: list = []

    # --- MACs -------------------------------------------------------------------------------
    def _mac_terms(self, model, mods, example) -> dict[str, _LayerMacs]:
        spatial: dict[str, int] = {}
        hooks = [m.register_forward_hook(lambda m, i, o, n=n: spatial.__setitem__(
                     n, o.shape[2] * o.shape[3] if o.dim() == 4 else 1))
                 for n, m in mods.items() if isinstance(m, (nn.Conv2d, nn.Linear))]
        try:
            with torch.no_grad():
                model.eval()(example)
        finally:
            for h in hooks:
                h.remove()
        sides: dict[tuple[str, str], list[tuple[int, int, int]]] = {}
        for g in self.groups.values():
            for mem in g.members:
                sides.setdefault((mem.layer, mem.role), []).append((g.id, g.size, mem.inner))
        # a RepVGG block's 1x1 branch is merged into its 3x3 conv before compiling: the phone
        # never runs it, so its MACs are not counted
        from .repvgg import RepBlock

        merged_away = {f"{n}.conv1" if n else "conv1" for n, m in mods.items()
                       if isinstance(m, RepBlock)}
        terms = {}
        for name, m in mods.items():
            if name not in spatial or name in merged_away:
                continue
            if isinstance(m, nn.Linear):
                per, o_all, i_all, dw = 1, m.out_features, m.in_features, False
            else:
                dw = m.groups > 1 and m.groups == m.in_channels == m.out_channels
                per = m.kernel_size[0] * m.kernel_size[1] * spatial[name]
                o_all, i_all = m.out_channels, m.in_channels // m.groups
            if dw:
                th = sides.get((name, "through"), [])
                out = [(gid, size) for gid, size, _ in th]
                rest = o_all - sum(s for _, s in out)
                terms[name] = _LayerMacs(per, out + ([(None, rest)] if rest else []), [],
                                         depthwise=True)
                continue
            out = [(gid, size) for gid, size, _ in sides.get((name, "out"), [])]
            ins = [(gid, size * inner) for gid, size, inner in sides.get((name, "in"), [])]
            o_rest = o_all - sum(s for _, s in out)
            i_rest = i_all - sum(s for _, s in ins)
            terms[name] = _LayerMacs(per, out + ([(None, o_rest)] if o_rest else []),
                                     ins + ([(None, i_rest)] if i_rest else []))
        return terms

    def kept(self, gid: int, hard: bool = True) -> torch.Tensor:
        w = self.logits[str(gid)]
        return (binarize(w) if hard else torch.ones_like(w)).sum()

    def layer_work(self, kept) -> dict[str, tuple]:
        """Per conv/Linear: (MACs with ``kept(gid)`` channels of each group, dense MACs);
        ``kept`` returns a tensor (differentiable) or a number."""
        def side(parts, dense: bool):
            total = 0.0
            for gid, size in parts:
                if gid is None or dense:
                    total = total + size
                else:  # `size / group size`: features per channel (Linear after flatten)
                    total = total + kept(gid) * (size / self.groups[gid].size)
            return total
        out = {}
        for name, t in self._layers.items():
            now = t.per * side(t.out, False) * (1 if t.depthwise else side(t.ins, False))
            dense = t.per * side(t.out, True) * (1 if t.depthwise else side(t.ins, True))
            out[name] = (now, dense)
        return out

    def macs(self, hard: bool = True, dense: bool = False) -> torch.Tensor:
        """MACs of one inference with the current binary masks (``dense``: with none)."""
        work = self.layer_work(lambda gid: self.kept(gid, hard))
        return torch.as_tensor(sum(d if dense else n for n, d in work.values()),
                               dtype=torch.float32)

    def macs_for(self, kept: dict[int, int]) -> float:
        """MACs with ``kept[gid]`` channels of each group (plain numbers, no masks)."""
        return float(sum(n for n, _ in self.layer_work(kept.__getitem__).values()))

    def cost(self, table=None) -> torch.Tensor:
        """What the penalty steers, as a fraction of the dense model's: MACs, or with a
        ``LatencyTable`` the latency it predicts from each layer's work."""
        if table is None:
            return self.macs() / self.dense_macs
        return table.predict(self.layer_work(lambda gid: self.kept(gid))) / table.dense_ms

    def cost_for(self, kept: dict[int, int], table=None) -> float:
        if table is None:
            return self.macs_for(kept) / self.dense_macs
        return float(table.predict(self.layer_work(kept.__getitem__))) / table.dense_ms

    def penalty(self, target_fraction: float, alpha: float, table=None) -> torch.Tensor:
        return alpha * (self.cost(table) - target_fraction) ** 2

    # --- hooks ------------------------------------------------------------------------------
    def attach(self, model: nn.Module) -> ChannelMasks:
        """Multiply every consumer's input channels by their groups' masks."""
        self.detach()
        mods = dict(model.named_modules())
        for name, parts in self._where.items():
            self._handles.append(mods[name].register_forward_pre_hook(self._hook(parts)))
        return self

    def _hook(self, parts: list[tuple[int, int, int]]) -> Callable:
        parts = sorted(parts)

        def hook(_m, inputs):
            x = inputs[0]
            c = x.shape[1]
            pieces, at = [], 0
            for off, gid, inner in parts:
                if off * inner > at:
                    pieces.append(x.new_ones(off * inner - at))
                m = binarize(self.logits[str(gid)])
                pieces.append(m.repeat_interleave(inner) if inner > 1 else m)
                at = (off + m.numel()) * inner
            if at < c:
                pieces.append(x.new_ones(c - at))
            v = torch.cat(pieces)
            return (x * v.view(1, c, *([1] * (x.dim() - 2))), *inputs[1:])
        return hook

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    # --- removing ---------------------------------------------------------------------------
    def widths(self, vector_width: int = 1, target: float | None = None, table=None
               ) -> dict[int, list[int]]:
        """Group id → the channels kept: those the mask keeps, by mask value, each count
        rounded to a multiple of ``vector_width`` (at least one vector, at most the group).
        Rounding starts at the nearest multiple; with ``target`` (a fraction of the dense
        cost: MACs, or the latency ``table`` predicts) it then moves one group at a time by one
        vector while that brings the cost closer to the target (the masks' count is what
        training reached; rounding must not undo it)."""
        n = {}
        for gid, g in self.groups.items():
            k = int((self.logits[str(gid)].detach() > 0.5).sum())
            if vector_width > 1 and g.size > vector_width:
                k = min(self._choices(gid, vector_width), key=lambda c: (abs(c - k), -c))
            n[gid] = max(1, min(g.size, k))
        if target is not None and vector_width > 1:
            while True:
                best, gap = None, abs(self.cost_for(n, table) - target)
                for gid in n:
                    ch = self._choices(gid, vector_width)
                    i = ch.index(n[gid]) if n[gid] in ch else None
                    for j in ((i - 1, i + 1) if i is not None else ()):
                        if 0 <= j < len(ch):
                            trial = {**n, gid: ch[j]}
                            d = abs(self.cost_for(trial, table) - target)
                            if d < gap - 1e-9:
                                best, gap = trial, d
                if best is None:
                    break
                n = best
        out = {}
        for gid, k in n.items():
            order = torch.argsort(self.logits[str(gid)].detach(), descending=True, stable=True)
            out[gid] = sorted(order[:k].tolist())
        return out

    def _choices(self, gid: int, vector_width: int) -> list[int]:
        size = self.groups[gid].size
        if size <= vector_width:
            return [size]
        return sorted({*range(vector_width, size + 1, vector_width), size})

    def shrink(self, model: nn.Module, vector_width: int = 1, target: float | None = None,
               table=None) -> nn.Module:
        """A copy of ``model`` (without hooks) with every group cut to ``widths``."""
        keep = self.widths(vector_width, target, table)
        removed = {gid: sorted(set(range(self.groups[gid].size)) - set(k))
                   for gid, k in keep.items()}
        pruned = copy.deepcopy(model)
        for m in pruned.modules():
            m._forward_hooks.clear()
        self._silence(pruned, keep)
        handlers.shrink(pruned, self.graph.removed_positions(removed))
        return pruned.eval()

    def _silence(self, model: nn.Module, keep: dict[int, list[int]]) -> None:
        """Zero the consumers' weights that read a kept channel whose mask is off (rounding
        up to the vector width keeps some): the shrunk model then computes exactly what the
        masked one did, and fine-tuning starts from the accuracy the search reached instead of
        from channels the rest of the model learned to ignore."""
        off = {gid: [c for c in k if float(self.logits[str(gid)].detach()[c]) <= 0.5]
               for gid, k in keep.items()}
        mods = dict(model.named_modules())
        with torch.no_grad():
            for (layer, role), pos in self.graph.removed_positions(off).items():
                m = mods[layer]
                if role != "in" or not pos or not isinstance(m, (nn.Conv2d, nn.Linear)):
                    continue
                if isinstance(m, nn.Conv2d) and m.groups != 1:
                    continue  # a grouped conv's inputs are not one dimension of its weight
                m.weight[:, pos] = 0


@dataclass
class PasConfig:
    target: float  # MACs (or latency, with a table) kept, a fraction of the dense model's
    epochs: float = 3.0
    alpha: float = DEFAULT_ALPHA
    lr: float = 0.05
    mask_lr: float = 0.5  # SGD with momentum 0.5 on the mask scalars
    warmup: float = 0.5  # the MAC target falls linearly from dense to `target` over this part
    freeze: float = 0.75  # then the widths are fixed (rounded) and the weights train on alone
    balance: float = 0.0  # 0: the penalty's push per mask ∝ its channel's cost; 1: equal
    batch_size: int = 64
    vector_width: int = 16
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        if not 0 < self.target < 1:
            raise PruningError(f"PaS target {self.target}: the MACs to keep must be a fraction "
                               f"in (0, 1) of the dense model's")
        if self.epochs <= 0 or self.alpha <= 0 or self.lr <= 0 or self.mask_lr <= 0:
            raise PruningError("PaS epochs, alpha, lr and mask_lr must be positive")
        if not 0 <= self.balance <= 1:
            raise PruningError(f"PaS balance {self.balance}: need 0 (push by cost) .. 1 "
                               f"(equal push)")
        if not 0 <= self.warmup <= self.freeze <= 1:
            raise PruningError(f"PaS warmup {self.warmup} and freeze {self.freeze}: need "
                               f"0 <= warmup <= freeze <= 1 (fractions of the training steps)")


@dataclass
class PasResult:
    model: nn.Module  # narrower, not fine-tuned
    masks: ChannelMasks
    macs_dense: float
    macs_masked: float  # the binary masks' at the end of training
    macs_pruned: float  # after rounding to the vector width
    widths: dict[str, int] = field(default_factory=dict)  # group's first producer → kept
    seconds: float = 0.0
    steps: int = 0
    history: list[tuple[int, float, float]] = field(default_factory=list)  # step, loss, cost
    masked_cost: float = 0.0  # the cost (fraction of dense) of the masks at the end
    cost: float = 0.0  # after rounding
    predicted_ms: float | None = None  # the latency table's prediction for the result


def count_macs(model: nn.Module, example: torch.Tensor) -> float:
    """Multiply-adds of ``model`` on ``example`` (Conv2d and Linear; RepVGG blocks as the 3×3
    conv they merge into)."""
    from .repvgg import RepBlock

    skip = {id(m.conv1) for m in model.modules() if isinstance(m, RepBlock)}
    total = 0

    def hook(m, i, o):
        nonlocal total
        if isinstance(m, nn.Linear):
            total += m.in_features * m.out_features
        else:
            total += (m.in_channels // m.groups) * m.out_channels * m.kernel_size[0] \
                * m.kernel_size[1] * o.shape[2] * o.shape[3]
    hs = [m.register_forward_hook(hook) for m in model.modules()
          if isinstance(m, (nn.Conv2d, nn.Linear)) and id(m) not in skip]
    try:
        with torch.no_grad():
            model.eval()(example)
    finally:
        for h in hs:
            h.remove()
    return float(total)


def search_widths(model: nn.Module, data, cfg: PasConfig,
                  on_step: Callable[[int, int, float, float], None] | None = None,
                  table=None) -> PasResult:
    """Train ``model`` (in place) with channel masks and the penalty for ``cfg.epochs``
    epochs of ``data.train`` (a host.models.data.Dataset); return the narrower model. The
    penalty steers the MACs, or with ``table`` (a ``LatencyTable`` measured on the device)
    the predicted latency, to ``cfg.target`` of the dense model's."""
    from ..models.data import batches
    from ..models.train import steps_for

    example = torch.zeros(1, *data.input_shape)
    masks = ChannelMasks(model, example)
    masks.attach(model)
    total = steps_for(data, cfg.epochs, cfg.batch_size)
    dev = torch.device(cfg.device)
    model.to(dev).train()
    masks.logits.to(dev)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=0.9, weight_decay=5e-4)
    # SGD, not Adam: Adam's per-coordinate scaling gives every channel the same step and the
    # masks of a group fall below 0.5 together; SGD keeps the task gradient's ranking
    mopt = torch.optim.SGD(masks.logits.parameters(), lr=cfg.mask_lr, momentum=0.5)
    g = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    res_hist: list[tuple[int, float, float]] = []
    step, t0 = 0, time.perf_counter()
    keep: dict[int, list[int]] | None = None
    masked = masked_cost = 0.0
    while step < total:
        for x, y in batches(data.train, cfg.batch_size, g):
            if keep is None and step >= cfg.freeze * total:
                masked, masked_cost, keep = _freeze(masks, cfg, table)
            for group in opt.param_groups:
                group["lr"] = 0.5 * cfg.lr * (1 + math.cos(math.pi * step / total))
            x, y = x.to(dev), y.to(dev)
            # the target comes down gradually: at full strength from the first step, the
            # penalty's uniform push makes a group's masks cross 0.5 together and overshoot
            goal = 1.0 - (1.0 - cfg.target) * min(1.0, step / max(1.0, cfg.warmup * total))
            task = F.cross_entropy(model(x), y)
            pen = masks.penalty(goal, cfg.alpha, table)
            loss = task + pen
            opt.zero_grad(set_to_none=True)
            mopt.zero_grad(set_to_none=True)
            if cfg.balance and keep is None:
                _balanced_backward(masks, task, pen, cfg.balance)
            else:
                loss.backward()
            opt.step()
            if keep is None:
                mopt.step()
            with torch.no_grad():
                for p in masks.logits.values():
                    p.clamp_(0.0, 1.0)
            step += 1
            with torch.no_grad():
                frac = float(masks.cost(table))
            res_hist.append((step, float(loss.detach()), frac))
            if on_step is not None:
                on_step(step, total, float(loss.detach()), frac)
            if step >= total:
                break
    model.eval()
    if keep is None:
        masked, masked_cost, keep = _freeze(masks, cfg, table)
    masks.detach()
    pruned = masks.shrink(model, cfg.vector_width, cfg.target, table)
    widths = {masks.groups[gid].producers[0].layer: len(k) for gid, k in keep.items()}
    final = masks.cost_for({gid: len(k) for gid, k in keep.items()}, table)
    return PasResult(pruned, masks, masks.dense_macs, masked, count_macs(pruned, example),
                     widths, time.perf_counter() - t0, total, res_hist,
                     masked_cost=masked_cost, cost=final,
                     predicted_ms=final * table.dense_ms if table is not None else None)


def _balanced_backward(masks: ChannelMasks, task: torch.Tensor, pen: torch.Tensor,
                       balance: float) -> None:
    """Backward with the penalty's gradient on each group's masks rescaled towards the mean
    push: ``g · (ḡ / g)^balance``."""
    params = list(masks.logits.values())
    gp = torch.autograd.grad(pen, params, retain_graph=True, allow_unused=True)
    task.backward()
    mags = [(float(g.abs().mean()), g.numel()) for g in gp if g is not None]
    total = sum(n for _, n in mags)
    mean = sum(m * n for m, n in mags) / total if total else 0.0
    for p, g in zip(params, gp, strict=True):
        if g is None:
            continue
        m = float(g.abs().mean())
        scaled = g * (mean / m) ** balance if m > 0 else g
        p.grad = scaled if p.grad is None else p.grad + scaled


def _freeze(masks: ChannelMasks, cfg: PasConfig, table) -> tuple[float, float, dict]:
    """End the search: the masks' MACs and cost as trained, then every group's width rounded
    to the vector width (towards the target) and the masks set to exactly those channels (1
    kept, 0 not), so that the steps left train the weights for the model that will be
    compiled: rounding at the very end would switch channels on or off that the rest of the
    model never trained with."""
    with torch.no_grad():
        masked, masked_cost = float(masks.macs()), float(masks.cost(table))
        keep = masks.widths(cfg.vector_width, cfg.target, table)
        for gid, k in keep.items():
            w = masks.logits[str(gid)]
            w.zero_()
            w[k] = 1.0
    for p in masks.logits.values():
        p.requires_grad_(False)
    return masked, masked_cost, keep
