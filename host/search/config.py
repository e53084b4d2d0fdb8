"""The settings of one search (``SearchConfig``), written once: the command line builds its
options and defaults from this record, and the journal stores it so ``--resume`` continues
with the same settings."""

from __future__ import annotations

import types
import typing
from dataclasses import asdict, dataclass, fields

import torch

from ..measure import MeasureConfig
from ..pruning import PruningError, parse_rate
from .filters import FILTER_TYPES
from .precision import PRECISIONS
from .space import DEFAULT_RATIOS, MASK_SCHEMES, STRUCTURAL
from .strategies import STRATEGIES
from .strategies.jcw import JcwBounds
from .tasks import INFO, TASKS

DEFAULT_MODEL = "host.models.zoo:digits_cnn"
AUTO_PRETRAIN_EPOCHS = 12.0
EXECUTORS = ("local", "ray")
EVALUATORS = ("finetune", "supernet")
LATENCY_SOURCES = ("device", "table")
SEARCH_STORE_BYTES = 2 << 30  # a local runner's private store: candidates differ in weights


class SearchError(Exception):
    """A search that cannot start or go on; the message says why and what to do."""


@dataclass
class SearchConfig:
    task: str = "classify"  # or "sr" (tasks.py): what the metric, data and latency input are
    frame: tuple[int, ...] = ()  # sr: the output frame (width, height) timed; () 1280x720
    model: str = DEFAULT_MODEL
    weights: str | None = None
    dataset: str = "digits"
    image_size: int | None = None
    device: str = "local"
    latency_ms: float | None = None  # with several targets (jcw): the tightest
    targets: tuple[float, ...] = ()  # jcw: every target of --latency-ms A,B,C (sorted)
    speedup: float | None = None  # target = dense latency / speedup (when no latency_ms)
    strategy: str = "npas"
    budget: int = 64
    batch: int = 4
    samples: int = 256
    population: int = 16  # jcw: NSGA-II's population (a generation's offspring too)
    # jcw: lower bounds kept (channels, first layer, residual layers, weight density)
    jcw_bounds: tuple[float, ...] = (0.5, 0.8, 0.9, 0.3)
    # phase 2's accuracy: "finetune" (one-shot pruning + a short fine-tune per candidate) or
    # "supernet" (weight sharing: supernet.py; scored without fine-tuning)
    evaluator: str = "finetune"
    supernet_epochs: float = 4.0  # supernet: the first training (sandwich-sampled)
    supernet_steps: int = 20  # supernet: retraining steps per round (generation, or batch)
    # phase 2's latency: "device" (every candidate compiled and measured) or "table" (a
    # per-layer table measured on the device first estimates it; the front is re-measured)
    latency: str = "device"
    time_budget_s: float | None = None  # phase 2 stops asking when the run has taken this long
    ratios: tuple[float, ...] = DEFAULT_RATIOS
    schemes: tuple[str, ...] = MASK_SCHEMES + STRUCTURAL
    filter_types: tuple[str, ...] = FILTER_TYPES
    # per-layer precisions to choose from (precision.py); ("fp32",): precision not searched
    precisions: tuple[str, ...] = ("fp32",)
    min_share: float = 0.005
    latency_weight: float = 2.0
    finetune_epochs: float = 1.0
    pretrain_epochs: float | None = None  # None: AUTO_PRETRAIN_EPOCHS if untrained, else 0
    phase1_epochs: float = 1.0
    phase3_epochs: float = 4.0
    final_epochs: float = 15.0
    lr: float | None = None  # None: the task's (tasks.INFO: SGD 0.05; sr: Adam 2e-3)
    finetune_lr: float | None = None  # None: the task's (0.05; sr 1e-3)
    batch_size: int | None = None  # None: the task's (64; sr 16)
    train_device: str = "cpu"
    train_threads: int = 1
    runs: int = MeasureConfig.runs
    warmup: int = MeasureConfig.warmup
    threads: int = 1  # not MeasureConfig's 0 (all big cores): training uses the other core
    seed: int = 0
    # where phase 2's fine-tunes run: "local" (this process, the default) or "ray" (tasks on
    # a Ray cluster: ``ray_address``'s, else a local one of ``workers`` worker processes)
    executor: str = "local"
    workers: int = 0  # ray: candidates evaluated at once (0: one per CPU of the cluster)
    ray_address: str | None = None
    skip_final: bool = False
    phase1_checkpoint: str | None = None

    def __post_init__(self) -> None:
        info = INFO.get(self.task)
        if info is not None:
            self.lr = info.lr if self.lr is None else self.lr
            self.finetune_lr = info.finetune_lr if self.finetune_lr is None else self.finetune_lr
            self.batch_size = info.batch_size if self.batch_size is None else self.batch_size

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> SearchConfig:
        """The config a journal recorded (keys this version does not know are dropped); a
        value of the wrong type is a SearchError naming it."""
        if not isinstance(d, dict):
            raise SearchError(f"the journal's config is {str(d)[:80]}, not a JSON object; "
                              f"start a new run (--out)")
        hints = typing.get_type_hints(cls)
        kw = {}
        for f in fields(cls):
            if f.name in d:
                kw[f.name] = _typed(f.name, d[f.name], hints[f.name])
        return cls(**kw)

    def validate(self) -> None:
        if self.task not in TASKS:
            raise SearchError(f"--task {self.task!r}: known are {', '.join(TASKS)}")
        if self.frame and (len(self.frame) != 2 or min(self.frame) <= 0
                           or any(v % 2 for v in self.frame)):
            raise SearchError(f"--frame {'x'.join(map(str, self.frame))}: WIDTHxHEIGHT, both "
                              f"positive and even")
        if self.strategy not in STRATEGIES:
            raise SearchError(f"--strategy {self.strategy!r}: known are "
                              f"{', '.join(STRATEGIES)}")
        if self.latency_ms is not None and self.latency_ms <= 0:
            raise SearchError(f"--latency-ms {self.latency_ms}: must be > 0")
        if len(self.targets) > 1 and self.strategy != "jcw":
            raise SearchError(f"--latency-ms {','.join(f'{t:g}' for t in self.targets)}: "
                              f"several targets need --strategy jcw (one search, a front "
                              f"for every target); {self.strategy} takes one")
        if self.population < 4:
            raise SearchError(f"--population {self.population}: must be ≥ 4")
        try:
            self.bounds()
        except ValueError as e:
            raise SearchError(str(e)) from None
        if any(p not in PRECISIONS for p in self.precisions) or "fp32" not in self.precisions:
            raise SearchError(f"--precisions {','.join(self.precisions)}: choose among "
                              f"{', '.join(PRECISIONS)}, fp32 included (e.g. fp32,int8)")
        if "int8" in self.precisions and (self.task != "classify" or self.evaluator != "finetune"
                                          or self.latency != "device"
                                          or self.executor != "local"):
            raise SearchError("--precisions with int8 scores each candidate on its quantized "
                              "model after the fine-tune: it needs --task classify, --evaluator "
                              "finetune, --latency device and --executor local")
        if self.evaluator not in EVALUATORS:
            raise SearchError(f"--evaluator {self.evaluator!r}: known are "
                              f"{', '.join(EVALUATORS)}")
        if self.latency not in LATENCY_SOURCES:
            raise SearchError(f"--latency {self.latency!r}: known are "
                              f"{', '.join(LATENCY_SOURCES)}")
        if self.executor != "local" and (self.evaluator != "finetune"
                                         or self.latency != "device"):
            raise SearchError("--evaluator supernet and --latency table run in this process: "
                              "use them with --executor local")
        if self.supernet_epochs < 0 or self.supernet_steps < 0:
            raise SearchError("--supernet-epochs and --supernet-steps must be ≥ 0")
        if self.time_budget_s is not None and self.time_budget_s <= 0:
            raise SearchError(f"--time-budget {self.time_budget_s}: seconds, > 0")
        if self.executor not in EXECUTORS:
            raise SearchError(f"--executor {self.executor!r}: known are {', '.join(EXECUTORS)}")
        if self.workers < 0:
            raise SearchError(f"--workers {self.workers}: must be ≥ 1 (or 0: one per CPU of "
                              f"the Ray cluster)")
        if self.executor == "local" and (self.workers > 1 or self.ray_address):
            raise SearchError("--workers and --ray-address are for --executor ray; the local "
                              "executor evaluates one candidate at a time in this process")
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

    def bounds(self) -> JcwBounds:
        """jcw's gene bounds."""
        return JcwBounds.parse(self.jcw_bounds)

    def device_names(self) -> list[str]:
        """``device`` as a list: 'local,local' is a pool of two host runners."""
        return [d.strip() for d in self.device.split(",") if d.strip()] or ["local"]


def _typed(name: str, v: object, hint: object) -> object:
    """``v`` as the field's type (a JSON list for a tuple), or a SearchError."""
    union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    args = typing.get_args(hint) if union else (hint,)
    if type(None) in args and v is None:
        return None
    base = next(a for a in args if a is not type(None))
    if typing.get_origin(base) is tuple and isinstance(v, list | tuple):
        elem = typing.get_args(base)[0]
        return tuple(_typed(f"{name}[{i}]", x, elem) for i, x in enumerate(v))
    ok = (isinstance(v, bool) if base is bool else
          isinstance(v, int | float) and not isinstance(v, bool) and v == v if base is float
          else isinstance(v, int) and not isinstance(v, bool) if base is int
          else isinstance(v, base) if isinstance(base, type) else False)
    if not ok:
        raise SearchError(f"the journal's config: {name} = {str(v)[:80]} is not "
                          f"{getattr(base, '__name__', base)}; fix the journal's first line "
                          f"or start a new run (--out)")
    return float(v) if base is float else v


def targets_arg(text: str) -> tuple[float, ...]:
    """'0.02' or '0.02,0.03,0.05' → latency targets in ms, sorted."""
    try:
        out = sorted({float(p) for p in text.split(",") if p.strip()})
    except ValueError:
        raise SearchError(f"--latency-ms {text!r}: milliseconds, or several separated by "
                          f"commas (0.02,0.03,0.05)") from None
    if not out or out[0] <= 0:
        raise SearchError(f"--latency-ms {text!r}: give targets > 0 ms")
    return tuple(out)


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
