"""Counting one engine on one model under qemu-aarch64: ours through the arm64 runner, ncnn and
MNN through guest.py in the arm64 Python. Every engine's output is checked against PyTorch
before its counts are kept; every result is a Record, also when the engine failed.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from host.console import err

from ..common import max_rel_error
from . import counting
from .counting import CountError, Counts

# The CPU the arm64 bundles are compiled for: what QEMU_CPU (a Cortex-A76) reports to a kernel
# as /proc/cpuinfo Features, as DeviceInfo.cpu_features would on a phone with that core.
A76_FEATURES = ("asimd", "asimddp", "asimdhp", "fphp")


@dataclass(frozen=True)
class LayerCount:
    """One step of our bundle in one counted inference."""

    name: str  # the module path the step computes
    op: str
    symbol: str  # the step's exported function
    kernels: str  # the kernel variants it calls (kernel_variants)
    flops: int  # 2 x multiply-adds (the manifest's)
    counts: Counts

    @property
    def fmla_floor(self) -> int:
        """FMLA instructions the step needs at 4 fp32 lanes, one multiply-add each, for its
        direct-convolution work: what the vector MAC count is compared with (Winograd and
        sparse kernels go below it)."""
        return self.flops // 8


@dataclass
class Record:
    """One (model, engine, precision) and what counting it gave."""

    model: str
    engine: str  # "ours", "ncnn", "mnn"
    precision: str  # "fp32", "fp16", "int8"
    input_size: int
    label: str  # "ours", "ours block-punched 5.3x", "ncnn", ...
    status: str = "ok"  # "ok", "wrong" (counted, output off), "unavailable", "failed"
    note: str = ""
    version: str = ""
    max_rel_err: float | None = None
    top1: bool | None = None  # the output's argmax is PyTorch fp32's
    compression: float | None = None  # sparse bundles: weights before / after pruning
    runs: list[Counts] = field(default_factory=list)
    layers: list[LayerCount] = field(default_factory=list)

    @property
    def counts(self) -> Counts | None:
        return counting.typical(self.runs) if self.runs else None

    def to_json(self) -> dict:
        c = self.counts
        return {
            "model": self.model, "engine": self.engine, "precision": self.precision,
            "input_size": self.input_size, "label": self.label, "status": self.status,
            "note": self.note, "version": self.version, "compression": self.compression,
            "qemu_cpu": counting.QEMU_CPU, "threads": 1,
            "instructions_per_inference": c.total if c else None,
            "mac_instructions_per_inference": c.mac if c else None,
            "by_class": dict(c.by_class) if c else None,
            "runs_instructions": [r.total for r in self.runs],
            "max_rel_err": self.max_rel_err, "top1_same_as_fp32": self.top1,
            "layers": [{"name": layer.name, "op": layer.op, "symbol": layer.symbol,
                        "kernels": layer.kernels,
                        "flops": layer.flops, "instructions": layer.counts.total,
                        "mac_instructions": layer.counts.mac,
                        "by_class": dict(layer.counts.by_class)} for layer in self.layers],
        }


def check(rec: Record, out: np.ndarray, ref: np.ndarray, tolerance: float) -> None:
    """Set the record's error, and status "wrong" when over ``tolerance``."""
    rec.max_rel_err = max_rel_error(out, ref)
    rec.top1 = bool(np.argmax(out) == np.argmax(ref))
    if rec.max_rel_err > tolerance:
        rec.status = "wrong"
        rec.note = (f"output differs from PyTorch (max rel err {rec.max_rel_err:.2e} > "
                    f"{tolerance:g}); counted all the same")


# ---------------------------------------------------------------- ours

class CountingRunner:
    """The arm64 runner under qemu-aarch64 on QEMU_CPU with the counting plugin and
    ``--count-markers``, and a Session on it, for the life of ``stack``."""

    def __init__(self, stack: ExitStack, log_dir: Path):
        from host.devices.local import LocalRunnerConfig, default_cache_dir
        from host.devices.qemu import QemuArm64Runner
        from host.devices.session import Session

        self.log = log_dir / "ours.counts"
        runner = QemuArm64Runner(
            LocalRunnerConfig(store=default_cache_dir() / "store-qemu-arm64",
                              startup_timeout_s=QemuArm64Runner.STARTUP_TIMEOUT_S,
                              extra_args=("--count-markers",)),
            qemu_args=("-cpu", counting.QEMU_CPU, *counting.plugin_args(self.log)))
        stack.callback(runner.close)
        self.session = stack.enter_context(Session(runner, call_timeout_s=3600,
                                                   on_event=err.print))

    def _marks(self, skip: int = 0) -> list[counting.Mark]:
        return counting.read_marks(self.log, skip) if self.log.exists() else []

    def count(self, rec: Record, bundle, x: np.ndarray, ref: np.ndarray, runs: int,
              tolerance: float) -> None:
        """Load ``bundle`` on one thread, check one output, then count ``runs`` inferences
        after one untimed one, step by step (per-layer marks: the steps' counts add up to
        the inference's but for the input copy)."""
        from host.measure import MeasureConfig

        key = self.session.load(bundle, MeasureConfig(threads=1))
        try:
            check(rec, self.session.run(key, [x])[0], ref, tolerance)
            skip = len(self._marks())
            self.session.benchmark(key, MeasureConfig(threads=1, runs=runs, warmup=1,
                                                      per_layer=True))
            marks = self._marks(skip)
        finally:
            self.session.unload(key)
        rec.runs = counting.runs_of(marks)
        if len(rec.runs) != runs:
            raise CountError(f"{len(rec.runs)} counted inferences in {self.log}, expected "
                             f"{runs}: is the runner built with --count-markers?")
        per_run = counting.steps_of(marks)
        steps = bundle.manifest.steps
        typical = rec.runs.index(rec.counts)
        if len(per_run) != runs or len(per_run[typical]) != len(steps):
            raise CountError(f"per-layer marks for {len(per_run[typical]) if per_run else 0} "
                             f"steps, the bundle has {len(steps)}")
        source = bundle.path / "kernels.c"
        variants = kernel_variants(source.read_text()) if source.is_file() else {}
        rec.layers = [LayerCount(s.name, s.op, s.symbol, variants.get(s.symbol, ""), s.flops, c)
                      for s, c in zip(steps, per_run[typical], strict=True)]


_STEP_FN = re.compile(r"^NPAS_EXPORT void (npas_step_\w+)\(.*?^}$", re.M | re.S)
_KERNEL_CALL = re.compile(r"\b([a-z0-9]+(?:_[a-z0-9]+)*__[a-z0-9]+(?:_[a-z0-9]+)*)\(")


def kernel_variants(source: str) -> dict[str, str]:
    """Per step function of a generated kernels.c, the kernel variants it calls (the emitter
    names them ``<kernel>__<isa>_<blocking>``), blocking sizes folded: conv1 ->
    ``conv2d_7x7s2_nchw__neon_2xNw_relu``. Empty for a step that is all inline code."""
    out: dict[str, str] = {}
    for m in _STEP_FN.finditer(source):
        names = dict.fromkeys(re.sub(r"_(\d+)x\d+([wt])(?=_|$)", r"_\1xN\2", k)
                              for k in _KERNEL_CALL.findall(m.group(0)))
        out[m.group(1)] = " + ".join(names)
    return out


def arm64_toolchain(precision: str = "fp32"):
    """Our arm64 toolchain for the counted Cortex-A76: fp32, fp16 (NEON FP16 arithmetic) or
    int8 (SDOT)."""
    from codegen import toolchain_for

    return toolchain_for("cpu", precision, abi="arm64-v8a", features=A76_FEATURES)


# ---------------------------------------------------------------- ncnn and MNN in the guest

GUEST_ENGINES = {"ncnn": "ncnn", "mnn": "MNN"}  # guest.py's name: engines.py's class name


def count_guest(rec: Record, files: Sequence[Path], x_file: Path, ref: np.ndarray,
                work: Path, runs: int, tolerance: float, timeout_s: float,
                per_layer: bool = False) -> None:
    """Run guest.py for ``rec.engine``/``rec.precision`` on the converted ``files`` (model,
    then weights for ncnn) under the plugin: one untimed inference, then ``runs`` counted,
    then (``per_layer``, ncnn) one more counted layer by layer into ``rec.layers``."""
    from . import pyroot

    stem = f"{rec.engine}-{rec.precision}"
    log, y_file = work / f"{stem}.counts", work / f"{stem}.out.npy"
    args = ["--engine", rec.engine, "--precision", rec.precision, "--model", str(files[0]),
            *(["--weights", str(files[1])] if len(files) > 1 else []),
            "--input", str(x_file), "--output", str(y_file), "--warmup", "1",
            "--runs", str(runs), "--threads", "1", *(["--per-layer"] if per_layer else [])]
    cmd, env = pyroot.guest_command(args, plugin=list(counting.plugin_args(log)))
    try:
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise CountError(f"guest.py {stem} ran over {timeout_s:.0f} s") from None
    if p.returncode != 0:
        tail = " | ".join(p.stderr.strip().splitlines()[-4:])
        raise CountError(f"guest.py {stem} failed (exit {p.returncode}): {tail}")
    try:
        info = json.loads(p.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        raise CountError(f"guest.py {stem} printed no result line: {p.stdout[-300:]!r}") \
            from None
    rec.version = str(info.get("version", ""))
    check(rec, np.load(y_file), ref, tolerance)
    marks = counting.read_marks(log)
    rec.runs = counting.runs_of(marks)[:runs]  # a per-layer inference comes after these
    if len(rec.runs) != runs:
        raise CountError(f"{len(rec.runs)} counted inferences in {log}, expected {runs}")
    if per_layer:
        steps = counting.steps_of(marks)[-1]
        layers = info.get("layers") or []
        if len(steps) != len(layers):
            raise CountError(f"{len(steps)} layer marks for {len(layers)} ncnn layers")
        work_of = ncnn_layer_flops(files[0].read_text())
        rec.layers = [LayerCount(la["name"], la["type"], "", la["type"],
                                 work_of.get(la["name"], (0, 0))[0] * _plane(la), c)
                      for la, c in zip(layers, steps, strict=True)]


def _plane(layer: dict) -> int:
    """Output positions of a conv layer (1 for InnerProduct), from its first top's shape."""
    _, h, w = layer["shapes"][0]
    return 1 if layer["type"] == "InnerProduct" else h * w


# the weight_data_size key of each weighted layer type in an ncnn .param
_NCNN_WEIGHTS = {"Convolution": "6", "ConvolutionDepthWise": "6", "InnerProduct": "2"}


def ncnn_layer_flops(param: str) -> dict[str, tuple[int, str]]:
    """Per weighted layer of an ncnn .param: (2 x weights, type): its FLOPs per output
    position, which times the positions is the same count as a Step's ``flops``."""
    out: dict[str, tuple[int, str]] = {}
    for line in param.splitlines()[2:]:
        parts = line.split()
        if len(parts) < 4 or parts[0] not in _NCNN_WEIGHTS:
            continue
        kv = dict(p.split("=", 1) for p in parts if "=" in p)
        size = kv.get(_NCNN_WEIGHTS[parts[0]])
        if size and size.isdigit():
            out[parts[1]] = (2 * int(size), parts[0])
    return out


@dataclass(frozen=True)
class LayerPair:
    """One of our conv/linear steps and the ncnn layer with the same work."""

    ours: LayerCount
    theirs: LayerCount | None


_NCNN_KIND = {"Convolution": "conv", "ConvolutionDepthWise": "depthwise",
              "InnerProduct": "linear"}


def _our_kind(step: LayerCount) -> str:
    if step.op == "linear":
        return "linear"
    return "depthwise" if step.kernels.startswith("dwconv2d") else "conv"


def pair_layers(ours: Sequence[LayerCount], theirs: Sequence[LayerCount]) -> list[LayerPair]:
    """Our weighted steps in order, each with the unpaired ncnn layer of the same kind (conv,
    depthwise, linear) whose FLOPs are closest below its own, within 12 % (the first of
    equals). Names differ (pnnx numbers layers), work does not; a Step's FLOPs also count its
    fused epilogue, one to three operations per output, so ncnn's may only be smaller."""
    free = [t for t in theirs if t.flops]
    pairs = []
    for o in ours:
        if o.op not in ("conv2d", "linear") or not o.flops:
            continue
        kind = _our_kind(o)
        fits = [t for t in free if _NCNN_KIND.get(t.op) == kind
                and 0.88 * o.flops <= t.flops <= o.flops]
        t = min(fits, key=lambda t: o.flops - t.flops) if fits else None
        if t is not None:
            free.remove(t)
        pairs.append(LayerPair(o, t))
    return pairs


def save_input(x: np.ndarray, work: Path) -> Path:
    path = work / "input.npy"
    tmp = path.with_name(f".input.{os.getpid()}.npy")
    np.save(tmp, np.ascontiguousarray(x, dtype=np.float32))
    os.replace(tmp, path)
    return path
