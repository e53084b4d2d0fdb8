"""A phase-2 candidate's accuracy: the same steps whether they run on the driver's main thread
(phases.py, in rounds) or in a Ray worker (executors/ray_cluster.py)."""

from __future__ import annotations

import zlib

import torch

from ..models.train import TrainConfig, evaluate, recalibrate_bn, train
from .config import SearchConfig
from .space import Candidate


def _seed_for(key: str) -> int:
    """The fine-tuning seed of a candidate: from its encoding only, so a candidate scores the
    same whichever strategy or run seed proposes it (comparisons see less noise)."""
    return zlib.crc32(key.encode()) & 0x7FFFFFFF


def finetune(pruned, c: Candidate, data, cfg: SearchConfig, train_cfg: TrainConfig,
             gate) -> tuple[float | None, str | None]:
    """A candidate's accuracy: fine-tuned with its masks held (seeded by the candidate),
    BatchNorm recalibrated, validated; (accuracy, None) or (None, the error)."""
    try:
        dev = torch.device(cfg.train_device)
        pruned.model.to(dev)
        if dev.type != "cpu":
            pruned.masks = {k: v.to(dev) for k, v in pruned.masks.items()}
        train(pruned.model, data, cfg.finetune_epochs, train_cfg, _seed_for(c.key()),
              after_step=pruned.reapply, gate=gate, lr=cfg.finetune_lr)
        recalibrate_bn(pruned.model, data, cfg.train_device, gate=gate)
        return evaluate(pruned.model, data, cfg.train_device, gate=gate), None
    except RuntimeError as e:
        return None, f"fine-tune: {e}"
