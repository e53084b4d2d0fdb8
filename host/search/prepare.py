"""Everything a search can check without a device, before a run folder is written: the model
loads (a head adapted to the dataset's classes), the dataset exists, and the model with phase
1's operator replacements is one the code generator can compile."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from codegen import CodegenError, capture

from ..models import ModelSpecError, adapt_head, load_checkpoint, load_model
from ..models.data import Dataset, DataSpecError, check_dataset_spec, load_dataset
from .config import SearchConfig, SearchError
from .ops import replace_ops
from .tasks import example_for


@dataclass
class Prepared:
    """What ``prepare`` checked and loaded, handed to the search so nothing is loaded twice."""

    model_orig: nn.Module  # as loaded (head adapted to the dataset's classes)
    model: nn.Module  # phase 1's replacements applied
    replacements: list
    data: Dataset
    example: torch.Tensor  # what the device times (sr: one low-resolution frame)
    notes: list[str] = field(default_factory=list)
    baseline: dict | None = None  # sr: the bicubic baseline's PSNR and SSIM


def _load_model(cfg: SearchConfig) -> nn.Module:
    spec = cfg.model
    if spec.endswith(".pt2"):
        raise SearchError(f"model {spec}: a torch.export program cannot be fine-tuned; give a "
                          f"torchvision name, MODULE:FACTORY, or a .pt file saved with "
                          f"torch.save(model)")
    if spec.endswith((".pt", ".pth")):
        p = Path(spec)
        if not p.is_file():
            raise SearchError(f"model {spec}: no such file")
        try:
            m = load_checkpoint(p)
        except Exception as e:  # pickle raises many kinds; what matters is the file
            raise SearchError(f"model {spec}: cannot load it with torch.load ({e})") from e
        if isinstance(m, dict):
            raise SearchError(f"model {spec}: holds a state dict, not a model; give the "
                              f"architecture (MODULE:FACTORY or a torchvision name) and "
                              f"--weights {spec}")
        if not isinstance(m, nn.Module):
            raise SearchError(f"model {spec}: holds a {type(m).__name__}, not an nn.Module")
        return m.eval()
    torch.manual_seed(cfg.seed)  # random initialisation is part of the run's determinism
    try:
        m = load_model(spec)
    except ModelSpecError as e:
        raise SearchError(str(e)) from None
    if cfg.weights:
        try:
            sd = torch.load(cfg.weights, map_location="cpu", weights_only=True)
            if isinstance(sd, dict) and "state_dict" in sd:
                sd = sd["state_dict"]
            m.load_state_dict(sd)
        except (OSError, RuntimeError, KeyError, TypeError) as e:
            raise SearchError(f"--weights {cfg.weights}: cannot load into {spec} ({e})") from e
    return m.eval()


def _check_sr_model(model: nn.Module, spec: str) -> None:
    """A ×2 SR model maps [1, 3, h, w] to [1, 3, 2h, 2w]; anything else is refused."""
    x = torch.zeros(1, 3, 8, 8)
    try:
        with torch.no_grad():
            y = model.eval()(x)
    except RuntimeError as e:
        raise SearchError(f"model {spec}: does not run on a 1×3×8×8 image ({e}); --task sr "
                          f"needs a ×2 super-resolution model (RGB in, RGB out)") from None
    if not isinstance(y, torch.Tensor) or tuple(y.shape) != (1, 3, 16, 16):
        shape = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
        raise SearchError(f"model {spec}: maps 1×3×8×8 to {shape}; --task sr needs a ×2 "
                          f"super-resolution model (1×3×8×8 → 1×3×16×16), e.g. "
                          f"host.models.sr:sr_net")


def _first_conv_in(model: nn.Module) -> int | None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            return m.in_channels
    return None


def prepare(cfg: SearchConfig) -> Prepared:
    """Everything that can be checked without a device: model, data, operator support."""
    cfg.validate()
    sr = cfg.task == "sr"
    try:
        if sr:
            from ..models.sr import check_sr_spec

            check_sr_spec(cfg.dataset)
        else:
            check_dataset_spec(cfg.dataset)
    except DataSpecError as e:
        raise SearchError(str(e)) from None
    model = _load_model(cfg)
    notes, baseline = [], None
    try:
        if sr:
            from ..models.sr import load_sr_dataset, sr_scores

            _check_sr_model(model, cfg.model)
            data = load_sr_dataset(cfg.dataset, cfg.image_size)
            baseline = sr_scores(None, data).to_dict()
            notes.append(f"bicubic baseline on {data.name}'s validation images: PSNR (Y) "
                         f"{baseline['psnr']:.2f} dB, SSIM {baseline['ssim']:.4f}")
        else:
            data = load_dataset(cfg.dataset, cfg.image_size, _first_conv_in(model))
    except DataSpecError as e:
        raise SearchError(str(e)) from None
    note = None if sr else adapt_head(model, data.num_classes)
    if note:
        notes.append(note)
    fast, reps = replace_ops(model)
    example = example_for(cfg.task, data, cfg.frame)
    try:
        capture(fast, (example,))
    except CodegenError as e:
        done = ", ".join(f"{r.old}→{r.new}" for r in reps) or "nothing"
        raise SearchError(f"model {cfg.model}: the code generator cannot compile it even after "
                          f"phase 1's replacements ({done}): {e}") from None
    except RuntimeError as e:
        raise SearchError(f"model {cfg.model} does not run on {tuple(example.shape)} inputs "
                          f"from {cfg.dataset}: {e}") from None
    return Prepared(model, fast, reps, data, example, notes, baseline)
