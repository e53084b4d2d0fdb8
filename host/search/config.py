"""The settings of one search (``SearchConfig``), written once: the command line builds its
options and defaults from this record, and the journal stores it so ``--resume`` continues
with the same settings."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch

from ..measure import MeasureConfig
from ..pruning import PruningError, parse_rate
from .filters import FILTER_TYPES
from .space import DEFAULT_RATIOS, MASK_SCHEMES, STRUCTURAL
from .strategies import STRATEGIES

DEFAULT_MODEL = "host.models.zoo:digits_cnn"
AUTO_PRETRAIN_EPOCHS = 12.0
SEARCH_STORE_BYTES = 2 << 30  # a local runner's private store: candidates differ in weights


class SearchError(Exception):
    """A search that cannot start or go on; the message says why and what to do."""


@dataclass
class SearchConfig:
    model: str = DEFAULT_MODEL
    weights: str | None = None
    dataset: str = "digits"
    image_size: int | None = None
    device: str = "local"
    latency_ms: float | None = None
    speedup: float | None = None  # target = dense latency / speedup (when no latency_ms)
    strategy: str = "npas"
    budget: int = 64
    batch: int = 4
    samples: int = 256
    ratios: tuple[float, ...] = DEFAULT_RATIOS
    schemes: tuple[str, ...] = MASK_SCHEMES + STRUCTURAL
    filter_types: tuple[str, ...] = FILTER_TYPES
    min_share: float = 0.005
    latency_weight: float = 2.0
    finetune_epochs: float = 1.0
    pretrain_epochs: float | None = None  # None: AUTO_PRETRAIN_EPOCHS if untrained, else 0
    phase1_epochs: float = 1.0
    phase3_epochs: float = 4.0
    final_epochs: float = 15.0
    lr: float = 0.05
    finetune_lr: float = 0.05
    batch_size: int = 64
    train_device: str = "cpu"
    train_threads: int = 1
    runs: int = MeasureConfig.runs
    warmup: int = MeasureConfig.warmup
    threads: int = 1  # not MeasureConfig's 0 (all big cores): training uses the other core
    seed: int = 0
    skip_final: bool = False
    phase1_checkpoint: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> SearchConfig:
        """The config a journal recorded (keys this version does not know are dropped)."""
        known = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in known}
        for k in ("ratios", "schemes", "filter_types"):
            if k in kw:
                kw[k] = tuple(kw[k])
        return cls(**kw)

    def validate(self) -> None:
        if self.strategy not in STRATEGIES:
            raise SearchError(f"--strategy {self.strategy!r}: known are "
                              f"{', '.join(STRATEGIES)}")
        if self.latency_ms is not None and self.latency_ms <= 0:
            raise SearchError(f"--latency-ms {self.latency_ms}: must be > 0")
        if self.speedup is not None and self.speedup <= 0:
            raise SearchError(f"--speedup {self.speedup}: must be > 0")
        if self.latency_ms is None and self.speedup is None:
            raise SearchError("give the latency target: --latency-ms MS, or --speedup X "
                              "(target = the dense model's measured latency / X)")
        if min(self.budget, self.batch, self.samples, self.runs, self.warmup) < 1:
            raise SearchError("--budget, --batch, --samples, --runs and --warmup must be ≥ 1")
        if self.train_device not in ("cpu", "cuda") and not self.train_device.startswith(
                "cuda:"):
            raise SearchError(f"--train-device {self.train_device!r}: cpu or cuda")
        if self.train_device.startswith("cuda") and not torch.cuda.is_available():
            raise SearchError(f"--train-device {self.train_device}: this torch has no CUDA "
                              f"device (torch {torch.__version__})")
        if min(self.finetune_epochs, self.phase1_epochs, self.phase3_epochs,
               self.final_epochs) < 0:
            raise SearchError("epoch counts must be ≥ 0")


def rates_arg(text: str) -> tuple[float, ...]:
    """'1x,2x,2.5x' or '0.5,0.8' → compression ratios."""
    out = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            out.append(round(1.0 / (1.0 - parse_rate(part)), 6))
        except PruningError as e:
            raise SearchError(f"--rates: {e}") from None
    if not out:
        raise SearchError("--rates: give at least one rate, e.g. 2x,3x,5x")
    return tuple(out)
