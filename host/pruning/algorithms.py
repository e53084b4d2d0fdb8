"""Pruning algorithms that train: gradual magnitude pruning and ADMM, each ending in the plan
(the search's phase 3 runs both and keeps the better).

Both work on the unshrunk (re-typed) model through ``soft_masks``: the zeros a plan would make
at a given fraction of its rates, as boolean masks over the model's own parameters (filter and
channel rules zero whole channels in every layer of their group — found with the plan's own
L2-norm ranking — instead of removing them; mask rules build their scheme's mask on what is
left). At the end ``PruningPlan.apply`` prunes for real: it ranks by magnitude, finds the
zeros the algorithm made, removes the channels and keeps the masks.

- gradual (Zhu & Gupta 2017): the rates ramp up as r·(1 - (1 - t/T)³) over the first 70% of
  the steps, the masks recomputed 8 times; the rest of the budget trains at the final masks.
- ADMM (Zhang et al. 2018): minimise loss + ρ/2·‖W - Z + U‖² with Z the projection of W + U
  onto the plan's sparsity (``soft_masks`` at full rate) and U the scaled dual, both updated 4
  times over the first 70% of the steps (ρ doubling each time, from ``rho``); then W is hard-
  pruned to the projection of W and the rest of the budget trains with those masks.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn

from ..models.data import Dataset
from ..models.train import TrainConfig, recalibrate_bn, steps_for, train
from .config import PruningError
from .plan import LayerRule, PrunedModel, PruningPlan
from .schemes import get_scheme

RAMP = 0.7  # share of the steps spent ramping (gradual) or in ADMM iterations


def soft_masks(model: nn.Module, plan: PruningPlan, scale: float = 1.0
               ) -> dict[str, torch.Tensor]:
    """Parameter path → bool mask (True: kept) of the zeros ``plan`` at ``scale`` × its rates
    would make on ``model`` (a CPU model; nothing is changed). Rules whose scheme does not
    accept the scaled rate yet (pattern needs ≥ 5/9) are left out at that step."""
    mods = dict(model.named_modules())
    rules = {}
    for name, rule in plan.layers.items():
        rate = rule.rate * scale
        if rate <= 0 or name not in mods:
            continue
        s = get_scheme(name, rule.scheme)
        try:
            s.check(name, mods[name], rate, s.params(name, mods[name], rule.params, plan.config))
        except PruningError:
            continue
        rules[name] = LayerRule(rule.scheme, rate, dict(rule.params))
    return PruningPlan(rules, plan.config).zero_masks(model)


def _apply(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for path, m in masks.items():
            p = model.get_parameter(path)
            p.mul_(m.to(p.device))


def _cpu_masks(model: nn.Module, plan: PruningPlan, scale: float) -> dict[str, torch.Tensor]:
    dev = next(model.parameters()).device
    src = model if dev.type == "cpu" else copy.deepcopy(model).cpu()
    return {k: v.to(dev) for k, v in soft_masks(src, plan, scale).items()}


def gradual(model: nn.Module, plan: PruningPlan, data: Dataset, epochs: float,
            cfg: TrainConfig, seed: int, gate=None, lr: float | None = None,
            updates: int = 8) -> PrunedModel:
    total = steps_for(data, epochs, cfg.batch_size)
    ramp_end = max(1, int(total * RAMP))
    at = {max(1, round(ramp_end * (k + 1) / updates)) for k in range(updates)}
    masks: dict[str, torch.Tensor] = {}

    def on_step(step: int, _total: int) -> None:
        nonlocal masks
        if step in at:
            frac = min(1.0, step / ramp_end)
            masks = _cpu_masks(model, plan, 1.0 - (1.0 - frac) ** 3)
            _apply(model, masks)

    train(model, data, epochs, cfg, seed, after_step=lambda: _apply(model, masks),
          on_step=on_step, gate=gate, lr=lr)
    return _finish(model, plan, data, cfg, gate)


def admm(model: nn.Module, plan: PruningPlan, data: Dataset, epochs: float, cfg: TrainConfig,
         seed: int, gate=None, lr: float | None = None, rho: float = 2e-3,
         iterations: int = 4) -> PrunedModel:
    total = steps_for(data, epochs, cfg.batch_size)
    ramp_end = max(1, int(total * RAMP))
    at = {max(1, round(ramp_end * (k + 1) / iterations)) for k in range(iterations)}
    model.to(cfg.device)
    params = {n: p for n, p in model.named_parameters()
              if n in _cpu_masks(model, plan, 1.0)}
    u = {n: torch.zeros_like(p) for n, p in params.items()}
    z: dict[str, torch.Tensor] = {}
    state = {"rho": rho, "hard": False}
    masks: dict[str, torch.Tensor] = {}

    def project() -> None:
        """Z = Π(W + U): the plan's zeros on W + U."""
        shifted = copy.deepcopy(model)
        with torch.no_grad():
            for n, p in shifted.named_parameters():
                if n in u:
                    p.add_(u[n])
        m = _cpu_masks(shifted, plan, 1.0)
        with torch.no_grad():
            for n, p in shifted.named_parameters():
                if n in u:
                    z[n] = (p * m[n]).detach()

    project()

    def extra(_model: nn.Module) -> torch.Tensor:
        if state["hard"]:
            return torch.zeros((), device=next(iter(params.values())).device)
        return 0.5 * state["rho"] * sum(((params[n] - z[n] + u[n]) ** 2).sum() for n in params)

    def on_step(step: int, _total: int) -> None:
        nonlocal masks
        if state["hard"] or step not in at:
            return
        if step >= ramp_end or step == max(at):
            state["hard"] = True
            masks = _cpu_masks(model, plan, 1.0)
            _apply(model, masks)
            return
        project()
        with torch.no_grad():
            for n, p in params.items():
                u[n].add_(p.detach() - z[n])
        state["rho"] *= 2

    after: Callable[[], None] = lambda: _apply(model, masks) if state["hard"] else None  # noqa: E731
    train(model, data, epochs, cfg, seed, after_step=after, extra_loss=extra, on_step=on_step,
          gate=gate, lr=lr)
    if not state["hard"]:
        _apply(model, _cpu_masks(model, plan, 1.0))
    return _finish(model, plan, data, cfg, gate)


def _finish(model: nn.Module, plan: PruningPlan, data: Dataset, cfg: TrainConfig,
            gate) -> PrunedModel:
    """Prune for real (the plan ranks by magnitude and finds the algorithm's zeros), then
    recompute the BatchNorm statistics of what is left."""
    pruned = plan.apply(model.cpu().eval())
    recalibrate_bn(pruned.model, data, cfg.device, gate=gate)
    pruned.model.cpu()
    return pruned
