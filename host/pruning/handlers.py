"""Per-layer handlers: how one layer type loses channels physically (``keep``) or only in value
(``zero``, the masked-but-unshrunk reference), for each role a layer plays in a channel group.

Roles (graph.Member): "out" — the layer's own filters; "in" — its input channels; "through" —
channels it passes one-to-one (BatchNorm, depthwise conv).
"""

from __future__ import annotations

import torch
from torch import nn


def _sub(p: torch.Tensor | None, idx: torch.Tensor, dim: int) -> nn.Parameter | None:
    if p is None:
        return None
    return nn.Parameter(p.detach().index_select(dim, idx).clone(), requires_grad=p.requires_grad)


class ConvHandler:
    def keep(self, m: nn.Conv2d, role: str, idx: torch.Tensor) -> None:
        if role == "in":
            m.weight = _sub(m.weight, idx, 1)
            m.in_channels = len(idx)
            return
        m.weight = _sub(m.weight, idx, 0)
        if m.bias is not None:
            m.bias = _sub(m.bias, idx, 0)
        m.out_channels = len(idx)
        if role == "through":  # depthwise: one channel per group
            m.in_channels = m.groups = len(idx)

    def zero(self, m: nn.Conv2d, role: str, rm: torch.Tensor) -> None:
        with torch.no_grad():
            if role == "in":
                m.weight[:, rm] = 0
            elif role == "out":
                m.weight[rm] = 0
                if m.bias is not None:
                    m.bias[rm] = 0


class LinearHandler:
    def keep(self, m: nn.Linear, role: str, idx: torch.Tensor) -> None:
        if role == "in":
            m.weight = _sub(m.weight, idx, 1)
            m.in_features = len(idx)
        else:
            m.weight = _sub(m.weight, idx, 0)
            if m.bias is not None:
                m.bias = _sub(m.bias, idx, 0)
            m.out_features = len(idx)

    def zero(self, m: nn.Linear, role: str, rm: torch.Tensor) -> None:
        with torch.no_grad():
            if role == "in":
                m.weight[:, rm] = 0
            else:
                m.weight[rm] = 0
                if m.bias is not None:
                    m.bias[rm] = 0


class BatchNormHandler:
    def keep(self, m: nn.modules.batchnorm._BatchNorm, role: str, idx: torch.Tensor) -> None:
        if m.affine:
            m.weight = _sub(m.weight, idx, 0)
            m.bias = _sub(m.bias, idx, 0)
        if m.track_running_stats:
            m.running_mean = m.running_mean.index_select(0, idx).clone()
            m.running_var = m.running_var.index_select(0, idx).clone()
        m.num_features = len(idx)

    def zero(self, m, role: str, rm: torch.Tensor) -> None:
        pass  # removed channels are read only by zeroed consumer weights


HANDLERS = {nn.Conv2d: ConvHandler(), nn.Linear: LinearHandler(),
            nn.BatchNorm1d: BatchNormHandler(), nn.BatchNorm2d: BatchNormHandler()}


def handler(m: nn.Module):
    for t, h in HANDLERS.items():
        if isinstance(m, t):
            return h
    raise TypeError(f"no pruning handler for {type(m).__name__}")


def dim_size(m: nn.Module, role: str) -> int:
    if isinstance(m, nn.Linear):
        return m.in_features if role == "in" else m.out_features
    if isinstance(m, nn.Conv2d):
        return m.in_channels if role == "in" else m.out_channels
    return m.num_features


def shrink(model: nn.Module, removed: dict[tuple[str, str], list[int]]) -> None:
    """Physically remove ``removed[(layer, role)]`` indices from each layer's dimension."""
    mods = dict(model.named_modules())
    for (layer, role), rm in removed.items():
        m = mods[layer]
        gone = set(rm)
        idx = torch.tensor([i for i in range(dim_size(m, role)) if i not in gone],
                           dtype=torch.long)
        handler(m).keep(m, role, idx)


def zero(model: nn.Module, removed: dict[tuple[str, str], list[int]]) -> None:
    """The masked-but-unshrunk equivalent of ``shrink``: same outputs, original shapes."""
    mods = dict(model.named_modules())
    for (layer, role), rm in removed.items():
        m = mods[layer]
        handler(m).zero(m, role, torch.tensor(rm, dtype=torch.long))
