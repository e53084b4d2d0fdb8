"""The tuner's ``codegen.Measurer`` on a host device Session: how `npas-host tune` measures.

A bundle is loaded (uploading what the runner lacks) on its first measurement with the thread
count being tuned for, kept loaded for the next ones (the tuner's final rounds measure the
same bundles again), and unloaded on ``release``. Runner failures become
``codegen.MeasureError``, which the tuner records and goes on from.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch

from codegen import (
    Bundle,
    CToolchain,
    MeasureError,
    Measurement,
    TuneConfig,
    TuneProgress,
    TuneReport,
    TuningDB,
    tune_model,
)

from ..devices.session import Session
from ..measure import MeasureConfig
from ..rpc.client import RunnerError


class SessionMeasurer:
    """``codegen.Measurer`` backed by ``session``, loading models with ``threads`` threads."""

    def __init__(self, session: Session, threads: int):
        self.session = session
        self.load_config = MeasureConfig(threads=threads)
        self._keys: dict[str, str] = {}  # bundle folder -> the session's key

    def measure(self, bundle: Bundle, runs: int, warmup: int, per_layer: bool) -> Measurement:
        try:
            key = self._keys.get(str(bundle.path))
            if key is None:
                key = self._keys[str(bundle.path)] = self.session.load(bundle, self.load_config)
            res = self.session.benchmark(key, replace(self.load_config, runs=runs, warmup=warmup,
                                                           per_layer=per_layer))
        except RunnerError as e:
            raise MeasureError(str(e)) from e
        return Measurement(res.samples_ns, {la.name: la.samples_ns for la in res.layers})

    def release(self, bundle: Bundle) -> None:
        key = self._keys.pop(str(bundle.path), None)
        if key is not None:
            self.session.unload(key)


def tune_on_session(module: torch.nn.Module, example_inputs: Sequence[torch.Tensor],
                    session: Session, toolchain: CToolchain, db: TuningDB, cfg: TuneConfig,
                    progress: TuneProgress | None = None) -> TuneReport:
    """``codegen.tune_model`` measuring on ``session``'s device with ``cfg.threads`` threads."""
    return tune_model(module, example_inputs, SessionMeasurer(session, cfg.threads), toolchain,
                      db, cfg, progress)
