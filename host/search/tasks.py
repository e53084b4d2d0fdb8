"""What a search optimises, per task (``--task classify|sr``): the model and data it starts
from, the metric the strategies maximise (the records' ``accuracy`` field holds it), how the
latency example is shaped, when a model counts as untrained, and what the report adds.

``classify``: top-1 accuracy, cross-entropy (host/models/train.py), the dataset's image size.
``sr``: ×2 super-resolution (host/models/sr.py): PSNR in dB on the Y channel, L1 loss,
trained on patches but timed at the output frame ``--frame`` (default 1280×720: a
640×360 input), SSIM and the bicubic baseline reported beside it. The phases, journal, resume,
strategies and oracle are the same for both.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..models.data import Dataset

TASKS = ("classify", "sr")
DEFAULT_FRAME = (1280, 720)  # sr: the output frame latency is measured at (width, height)


@dataclass(frozen=True)
class TaskInfo:
    name: str
    model: str  # the default --model
    dataset: str  # the default --dataset
    metric: str  # what the records' "accuracy" is, in words
    optimizer: str  # TrainConfig.optimizer
    lr: float  # the default --lr and --finetune-lr
    finetune_lr: float
    batch_size: int


INFO = {
    "classify": TaskInfo("classify", "host.models.zoo:digits_cnn", "digits", "accuracy",
                         "sgd", 0.05, 0.05, 64),
    # EDSR's recipe at this scale: Adam, batches of 16 patches
    "sr": TaskInfo("sr", "host.models.sr:sr_net", "photos", "PSNR (Y)", "adam", 2e-3, 1e-3, 16),
}


def fmt_metric(v: float | None, task: str = "classify") -> str:
    """A metric value as the reports print it: 93.50 % or 31.82 dB."""
    if v is None:
        return "-"
    return f"{v:.2f} dB" if task == "sr" else f"{v:.2%}"


def example_for(task: str, data: Dataset, frame: tuple[int, ...]) -> torch.Tensor:
    """The input the device times: the dataset's image size (classify), or the
    low-resolution input of one output frame (sr)."""
    g = torch.Generator().manual_seed(0)
    if task == "sr":
        w, h = frame or DEFAULT_FRAME
        return torch.randn((1, 3, h // 2, w // 2), generator=g)
    return torch.randn((1, *data.input_shape), generator=g)


def untrained(task: str, metric: float, data: Dataset, baseline: dict | None) -> bool:
    """Whether phase 1 should train the model first (``--pretrain-epochs auto``): near-chance
    accuracy, or (sr) no better than the bicubic baseline."""
    if task == "sr":
        return baseline is not None and metric <= baseline["psnr"]
    return metric < 2.0 / data.num_classes


def sr_final(model: torch.nn.Module, data: Dataset, baseline: dict, frame: tuple[int, ...],
             device: str = "cpu", gate=None) -> dict:
    """The final SR model's scores beside the bicubic baseline's, and the frame timed."""
    from ..models.sr import sr_scores

    sc = sr_scores(model, data, device, gate=gate)
    w, h = frame or DEFAULT_FRAME
    return {"psnr": sc.psnr, "ssim": sc.ssim, "bicubic_psnr": baseline["psnr"],
            "bicubic_ssim": baseline["ssim"], "gain_db": sc.psnr - baseline["psnr"],
            "frame": f"{w}x{h}", "input": f"{w // 2}x{h // 2}"}
