"""Helpers of space.py: the multiply-adds of every Conv2d/Linear, and a joint candidate's two
pruning steps merged into one PrunedModel."""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from ..pruning import SCHEMES, PlanReport, PrunedModel, keep_count

# The scheme lists follow host/pruning's SCHEMES table (its order too: the controller's
# vocabulary and the features depend on it); codegen's SPARSE_SCHEMES are the mask schemes.
MASK_SCHEMES = tuple(name for name, s in SCHEMES.items() if not s.structural)
STRUCTURAL = tuple(name for name, s in SCHEMES.items() if s.structural)


def layer_macs(model: nn.Module, example: torch.Tensor) -> dict[str, int]:
    """Multiply-adds of every Conv2d/Linear for one forward pass on ``example``."""
    macs: dict[str, int] = {}
    hooks = []
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            def conv_hook(mod, _inp, out, name=name):
                kh, kw = mod.kernel_size
                macs[name] = (out.numel() * (mod.in_channels // mod.groups) * kh * kw)
            hooks.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            def lin_hook(mod, _inp, out, name=name):
                macs[name] = out.numel() * mod.in_features
            hooks.append(m.register_forward_hook(lin_hook))
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(example)
    finally:
        model.train(was)
        for h in hooks:
            h.remove()
    return macs


def merge_stages(narrowed: PrunedModel, masked: PrunedModel) -> PrunedModel:
    """A joint candidate's two steps as one PrunedModel: the second step's model and masks,
    the first's removed channels, one report row per layer (a masked layer's row counts its
    weights from before the narrowing)."""
    first = {r.layer: r for r in narrowed.report.rows}
    rows = []
    for r in masked.report.rows:
        before = first.pop(r.layer, None)
        if before is not None:
            r = replace(r, weights_before=before.weights_before,
                        note=f"after {before.scheme} {before.achieved:.2f}")
        rows.append(r)
    rows += first.values()
    order = [r.layer for r in narrowed.report.rows] + [r.layer for r in masked.report.rows]
    rows.sort(key=lambda r: order.index(r.layer))
    return PrunedModel(masked.model, masked.masks, narrowed.removed, PlanReport(rows))


def mac_fractions(space, cand) -> tuple[float, float]:
    """``SearchSpace.mac_fractions`` (see there)."""
    keep: dict[int, float] = {}
    chosen = {ls.name: c for ls, c in zip(space.layers, cand.choices, strict=True)}
    for ls, c in zip(space.layers, cand.choices, strict=True):
        if c.scheme in STRUCTURAL:
            for g in space._claims[ls.name][c.scheme]:
                size = space._group_size[g]
                keep.setdefault(g, keep_count(size, c.rate, space.config.vector_width)
                                / size)
    s_total = e_total = 0.0
    for name, (mac, kernel, out_ch, gr) in space._all.items():
        if gr.through is not None:
            k_in = k_out = 1.0
            k_through = keep.get(gr.through, 1.0)
        else:
            k_through = 1.0
            k_out = keep.get(gr.out, 1.0) if gr.out is not None else 1.0
            sz = [space._group_size[g] for g in gr.ins]
            k_in = (sum(keep.get(g, 1.0) * z for g, z in zip(gr.ins, sz, strict=True))
                    / sum(sz)) if sz else 1.0
        c = chosen.get(name)
        ftype = c.ftype if c is not None else "keep"
        dens = (1.0 if c is None else 1.0 / c.ratio if c.scheme in MASK_SCHEMES
                else c.density)
        kk = kernel[0] * kernel[1]
        base = mac * k_through
        if ftype == "1x1":
            s = base * k_in * k_out / kk
            e = s * dens
        elif ftype == "dwpw":
            dw = base * k_in / out_ch
            pw = base * k_in * k_out / kk
            s, e = dw + pw, dw + pw * dens
        else:
            s = base * k_in * k_out
            e = s * dens
        s_total += s
        e_total += e
    return s_total / space.total_macs, e_total / space.total_macs
