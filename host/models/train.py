"""Training and evaluation: the one loop every phase of the search uses.

``train`` runs a given number of epochs (a fraction is fine: 0.3 epochs = 30% of the batches)
of SGD with momentum and a cosine learning-rate decay, calling ``after_step`` after every
optimizer step (``PrunedModel.reapply`` keeps pruned weights at zero) and adding
``extra_loss(model)`` to the loss (ADMM's proximal term). Every step runs inside ``gate`` when
one is given: the search holds that lock while the local runner measures, so training on the
same CPU does not disturb the timings. Deterministic for a given ``seed``: batch order and
torch's RNG are seeded here.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .data import Dataset, batches


@dataclass
class TrainConfig:
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 64
    device: str = "cpu"  # "cpu" or "cuda"
    label_smoothing: float = 0.0
    optimizer: str = "sgd"  # or "adam" (super-resolution: SGD hardly moves an L1 loss)


def make_optimizer(params, cfg: TrainConfig, lr: float) -> torch.optim.Optimizer:
    """SGD with momentum and weight decay, or Adam (no decay) when ``cfg`` asks for it."""
    params = [p for p in params if p.requires_grad]
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=lr)
    return torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


@dataclass
class TrainResult:
    steps: int
    seconds: float
    last_loss: float


def steps_for(data: Dataset, epochs: float, batch_size: int) -> int:
    per_epoch = math.ceil(len(data.train) / batch_size)
    return max(1, round(epochs * per_epoch)) if epochs > 0 else 0


def train(model: nn.Module, data: Dataset, epochs: float, cfg: TrainConfig, seed: int,
          after_step: Callable[[], None] | None = None,
          extra_loss: Callable[[nn.Module], torch.Tensor] | None = None,
          on_step: Callable[[int, int], None] | None = None,
          gate: contextlib.AbstractContextManager | None = None,
          lr: float | None = None) -> TrainResult:
    """Train ``model`` in place (on ``cfg.device``) for ``epochs`` epochs of ``data.train``.
    ``on_step(step, total)`` is called after each step (phase 3 prunes on a schedule)."""
    total = steps_for(data, epochs, cfg.batch_size)
    t0 = time.perf_counter()
    if total == 0:
        return TrainResult(0, 0.0, float("nan"))
    dev = torch.device(cfg.device)
    model.to(dev).train()
    base_lr = cfg.lr if lr is None else lr
    opt = make_optimizer(model.parameters(), cfg, base_lr)
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    step, loss_v = 0, float("nan")
    gate = gate if gate is not None else contextlib.nullcontext()
    while step < total:
        for x, y in batches(data.train, cfg.batch_size, g):
            for group in opt.param_groups:
                group["lr"] = 0.5 * base_lr * (1 + math.cos(math.pi * step / total))
            with gate:
                x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
                loss = task_loss(data, model(x), y, cfg.label_smoothing)
                if extra_loss is not None:
                    loss = loss + extra_loss(model)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if after_step is not None:
                    after_step()
            loss_v = float(loss.detach())
            step += 1
            if on_step is not None:
                on_step(step, total)
            if step >= total:
                break
    model.eval()
    return TrainResult(total, time.perf_counter() - t0, loss_v)


def task_loss(data: Dataset, out: torch.Tensor, y: torch.Tensor,
              label_smoothing: float = 0.0) -> torch.Tensor:
    """The training loss of ``data``'s task: cross-entropy (classify), L1 (sr)."""
    if data.task == "sr":
        from .sr import sr_loss

        return sr_loss(out, y)
    return F.cross_entropy(out, y, label_smoothing=label_smoothing)


@torch.no_grad()
def evaluate(model: nn.Module, data: Dataset, device: str = "cpu", batch_size: int = 256,
             gate: contextlib.AbstractContextManager | None = None) -> float:
    """Top-1 accuracy on ``data.val`` (eval mode; the model is left in eval mode); for an
    SR dataset the PSNR in dB (Y channel, sr.py): higher is better either way."""
    if data.task == "sr":
        from .sr import sr_scores

        return sr_scores(model, data, device, gate=gate).psnr
    dev = torch.device(device)
    model.to(dev).eval()
    correct = seen = 0
    gate = gate if gate is not None else contextlib.nullcontext()
    for x, y in batches(data.val, batch_size, shuffle=False):
        with gate:
            pred = model(x.to(dev)).argmax(1).cpu()
        correct += int((pred == y).sum())
        seen += len(y)
    return correct / max(seen, 1)


@torch.no_grad()
def recalibrate_bn(model: nn.Module, data: Dataset, device: str = "cpu", batch_size: int = 256,
                   gate: contextlib.AbstractContextManager | None = None) -> None:
    """Recompute every BatchNorm's running statistics over ``data.train`` (a cumulative
    average, in train mode, no gradients). Pruning changes layer outputs abruptly; the running
    averages lag behind for many steps and an eval-mode model then scores far below what it
    does in train mode."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    dev = torch.device(device)
    model.to(dev).train()
    gate = gate if gate is not None else contextlib.nullcontext()
    try:
        for x, _ in batches(data.train, batch_size, shuffle=False):
            with gate:
                model(x.to(dev))
    finally:
        for m, mom in zip(bns, saved, strict=True):
            m.momentum = mom
        model.eval()
