"""Timing compiled models on a device, for the commands that compare a few models (``map``,
``pas``): compile each once (bundles kept until the caller's folder goes), time them per layer,
or whole and side by side in rotated rounds so that a changing machine load falls on all alike.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import replace
from pathlib import Path

from ..measure import MeasureConfig


def layer_times(layers) -> dict[str, float]:
    """Module path → median ms of its step(s) (a step's name is its module path; layout
    conversions the code generator adds for a layer are named ``PATH.to_nchw`` and alike)."""
    acc: dict[str, float] = {}
    for la in layers:
        acc[la.name] = acc.get(la.name, 0.0) + la.median_ms
    return acc


def for_layer(times: dict[str, float], names) -> dict[str, float]:
    return {n: sum(t for k, t in times.items() if k == n or k.startswith(n + "."))
            for n in names if any(k == n or k.startswith(n + ".") for k in times)}


class BundleTimer:
    """Compiles models with ``toolchain`` into ``tmp`` and times them on ``session``;
    ``progress``/``task``: a rich progress bar and the task whose text says what it does."""

    def __init__(self, session, toolchain, example, tmp: Path, progress, task,
                 cfg: MeasureConfig):
        self.session, self.toolchain, self.example, self.tmp = session, toolchain, example, tmp
        self.progress, self.task, self.cfg = progress, task, cfg
        self.bundles: dict = {}
        self.samples: dict[str, list[int]] = {}
        self.device_s = self.compile_s = 0.0

    def _say(self, text: str) -> None:
        self.progress.update(self.task, description=text)

    def compile(self, label: str, model, schemes, step: str = ""):
        from codegen import compile_model

        self._say(f"{step} compiling {label}".strip())
        t0 = time.perf_counter()
        slug = "".join(c if c.isalnum() else "_" for c in label)
        self.bundles[label] = compile_model(model, self.example, self.tmp / slug,
                                            name=slug, toolchain=self.toolchain,
                                            schemes=schemes)
        self.compile_s += time.perf_counter() - t0
        return self.bundles[label]

    def _bench(self, label: str, cfg: MeasureConfig):
        t0 = time.perf_counter()
        key = self.session.load(self.bundles[label], cfg)
        try:
            return self.session.benchmark(key)
        finally:
            self.session.unload(key)
            self.device_s += time.perf_counter() - t0

    def per_layer(self, label: str, step: str = "") -> dict[str, float]:
        """The bundle's per-layer medians (module path → ms)."""
        self._say(f"{step} timing {label} per layer: {self.cfg.warmup} warm-up + "
                  f"{self.cfg.runs} runs".strip())
        return layer_times(self._bench(label, replace(self.cfg, per_layer=True)).layers)

    def side_by_side(self, rounds: int, labels: list[str] | None = None) -> dict[str, float]:
        """Every bundle (or ``labels``) again, whole runs only, in ``rounds`` rotated rounds of
        runs/rounds each; label → median ms over all its samples."""
        labels = list(self.bundles) if labels is None else labels
        cfg = replace(self.cfg, per_layer=False, runs=max(1, self.cfg.runs // rounds))
        for r in range(rounds):
            k = r % len(labels)
            for j, label in enumerate(labels[k:] + labels[:k]):
                self._say(f"side by side, round {r + 1}/{rounds}: {label} "
                          f"({j + 1}/{len(labels)})")
                self.samples.setdefault(label, []).extend(self._bench(label, cfg).samples_ns)
        return {label: round(statistics.median(self.samples[label]) / 1e6, 4)
                for label in labels}
