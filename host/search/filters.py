"""Filter types, the first decision per layer: keep a k×k convolution, or replace it with a
cheaper filter initialised from its weights — "1x1" (a pointwise conv) or "dwpw" (depthwise k×k
+ pointwise 1×1). Which layers may change type, and the model transform itself.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

FILTER_TYPES = ("keep", "1x1", "dwpw")
STEM_MAX_IN = 4  # convs reading ≤ this many channels (the image) keep their filter type


def _parent(model: nn.Module, path: str) -> tuple[nn.Module, str]:
    parent_path, _, attr = path.rpartition(".")
    return (model.get_submodule(parent_path) if parent_path else model), attr


def _pointwise_padding(m: nn.Conv2d) -> tuple[int, int] | None:
    """The padding that gives a 1×1 conv (same stride) the output size of ``m``, if any."""
    if isinstance(m.padding, str):
        return (0, 0) if m.padding == "same" and m.stride == (1, 1) else None
    pads = []
    for p, d, k in zip(m.padding, m.dilation, m.kernel_size, strict=True):
        twice = 2 * p - d * (k - 1)
        if twice < 0 or twice % 2:
            return None
        pads.append(twice // 2)
    return pads[0], pads[1]


def filter_type_valid(m: nn.Module, ftype: str) -> bool:
    if ftype == "keep":
        return True
    if not isinstance(m, nn.Conv2d) or m.groups != 1 or m.kernel_size == (1, 1):
        return False
    if m.in_channels <= STEM_MAX_IN:
        return False
    return ftype == "dwpw" or _pointwise_padding(m) is not None


def make_filter(m: nn.Conv2d, ftype: str) -> nn.Module:
    """The cheaper filter for ``m``, initialised from its weights.

    1x1: the kernel's taps summed (exact where the input is locally constant).
    dwpw: per input channel i, the best rank-1 split of W[:, i] (out × k²) by SVD into a
    depthwise kernel (k²) and a pointwise column (out): W ≈ pw[:, i] ⊗ dw[i]."""
    w = m.weight.detach()
    bias = m.bias is not None
    if ftype == "1x1":
        p = _pointwise_padding(m)
        assert p is not None
        new = nn.Conv2d(m.in_channels, m.out_channels, 1, stride=m.stride, padding=p,
                        bias=bias)
        with torch.no_grad():
            new.weight.copy_(w.sum((2, 3), keepdim=True))
            if bias:
                new.bias.copy_(m.bias.detach())
        return new.to(w.device)
    o, i, kh, kw = w.shape
    dw = nn.Conv2d(i, i, (kh, kw), stride=m.stride, padding=m.padding, dilation=m.dilation,
                   groups=i, bias=False)
    pw = nn.Conv2d(i, o, 1, bias=bias)
    mats = w.permute(1, 0, 2, 3).reshape(i, o, kh * kw).double()  # [in, out, k²]
    u, s, vh = torch.linalg.svd(mats, full_matrices=False)
    root = s[:, 0].sqrt()  # split the singular value evenly: similar magnitudes on both sides
    with torch.no_grad():
        dw.weight.copy_((vh[:, 0, :] * root[:, None]).reshape(i, 1, kh, kw).float())
        pw.weight.copy_((u[:, :, 0] * root[:, None]).T.reshape(o, i, 1, 1).float())
        if bias:
            pw.bias.copy_(m.bias.detach())
    return nn.Sequential(dw, pw).to(w.device)


def apply_filter_types(model: nn.Module, ftypes: dict[str, str]) -> nn.Module:
    """A copy of ``model`` with the named layers re-typed (dwpw layers become a Sequential:
    ``name.0`` depthwise, ``name.1`` pointwise)."""
    model = copy.deepcopy(model)
    for name, ft in ftypes.items():
        if ft == "keep":
            continue
        parent, attr = _parent(model, name)
        setattr(parent, attr, make_filter(getattr(parent, attr), ft))
    return model
