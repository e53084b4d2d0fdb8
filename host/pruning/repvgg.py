"""RepVGG-style structural reparameterisation: a 3×3 conv trained as three branches (3×3 + BN,
1×1 + BN, and BN alone when the shapes allow an identity), merged into one 3×3 conv with a bias
for compilation, so the phone runs a plain conv while training saw a multi-branch block.

``to_repvgg(model)`` turns every 3×3 stride-1/2 conv (padding 1, dilation 1, groups 1) that a
``nn.Sequential`` follows with a BatchNorm into a ``RepBlock`` (its 3×3 branch starts from the
original conv and BN, the 1×1 branch at zero, the identity BN with zero scale, so the model's
function is unchanged at first); ``merge_repvgg(model)`` replaces every block by its merged
conv. Exact in eval mode: the merged conv equals the block to float rounding.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn


def _fuse(weight: torch.Tensor, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """A bias-free conv's ``weight`` followed by ``bn`` (eval) as (weight, bias)."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return weight * scale.reshape(-1, 1, 1, 1), bn.bias - bn.running_mean * scale


class RepBlock(nn.Module):
    """BN(conv3x3(x)) + BN(conv1x1(x)) [+ BN(x) when in == out channels and stride 1]."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv3 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.conv1 = nn.Conv2d(cin, cout, 1, stride, 0, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.bn_id = nn.BatchNorm2d(cout) if cin == cout and stride == 1 else None

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, bn: nn.BatchNorm2d) -> RepBlock:
        """A block computing what ``bn(conv(x))`` computes (the extra branches start at 0)."""
        b = cls(conv.in_channels, conv.out_channels, conv.stride[0])
        with torch.no_grad():
            w, bias = conv.weight, conv.bias
            b.conv3.weight.copy_(w)
            b.bn3.load_state_dict(bn.state_dict())
            if bias is not None:  # fold the conv's bias into the BN's mean
                b.bn3.running_mean.sub_(bias)
            nn.init.zeros_(b.conv1.weight)
            if b.bn_id is not None:
                nn.init.zeros_(b.bn_id.weight)
        return b

    def forward(self, x):
        y = self.bn3(self.conv3(x)) + self.bn1(self.conv1(x))
        return y + self.bn_id(x) if self.bn_id is not None else y

    @torch.no_grad()
    def merged(self) -> nn.Conv2d:
        """One 3×3 conv (with a bias) equal to the block in eval mode."""
        w3, b3 = _fuse(self.conv3.weight, self.bn3)
        w1, b1 = _fuse(self.conv1.weight, self.bn1)
        w, b = w3 + F.pad(w1, (1, 1, 1, 1)), b3 + b1
        if self.bn_id is not None:
            c = self.conv3.in_channels
            eye = torch.zeros(c, c, 3, 3, dtype=w.dtype)
            eye[torch.arange(c), torch.arange(c), 1, 1] = 1.0
            wi, bi = _fuse(eye, self.bn_id)
            w, b = w + wi, b + bi
        conv = nn.Conv2d(self.conv3.in_channels, self.conv3.out_channels, 3,
                         self.conv3.stride, 1, bias=True)
        conv.weight.copy_(w)
        conv.bias.copy_(b)
        return conv


def _eligible(conv: nn.Module) -> bool:
    return (isinstance(conv, nn.Conv2d) and conv.kernel_size == (3, 3)
            and conv.padding == (1, 1) and conv.dilation == (1, 1) and conv.groups == 1
            and conv.stride[0] == conv.stride[1] and conv.stride[0] in (1, 2)
            and conv.padding_mode == "zeros")


def to_repvgg(model: nn.Module) -> tuple[nn.Module, list[str]]:
    """A copy of ``model`` with every eligible conv + BN pair of a ``nn.Sequential`` trained
    as a RepBlock (the BN becomes an Identity); returns it and the blocks' module paths."""
    model = copy.deepcopy(model)
    done = []
    for path, seq in list(model.named_modules()):
        if not isinstance(seq, nn.Sequential):
            continue
        keys = list(seq._modules)
        for a, b in zip(keys, keys[1:], strict=False):
            conv, bn = seq._modules[a], seq._modules[b]
            if _eligible(conv) and isinstance(bn, nn.BatchNorm2d) \
                    and bn.num_features == conv.out_channels and bn.affine \
                    and bn.track_running_stats:
                seq._modules[a] = RepBlock.from_conv(conv, bn)
                seq._modules[b] = nn.Identity()
                done.append(f"{path}.{a}" if path else a)
    return model.train(model.training), done


def merge_repvgg(model: nn.Module) -> nn.Module:
    """``model`` (in place) with every RepBlock replaced by its merged 3×3 conv; eval mode."""
    model.eval()
    for parent in list(model.modules()):
        for name, child in list(parent._modules.items()):
            if isinstance(child, RepBlock):
                parent._modules[name] = child.merged()
    return model
