"""The measuring seam of the auto-tuner: what it asks of a device, as plain records.

A ``Measurer`` times a bundle (TVM's runner seam: ``meta_schedule/runner``); the host provides
one backed by its device Session (``host/tune/measurer.py``), tests may provide their own. It
may keep a bundle loaded between ``measure`` calls (the tuner measures its final bundles in
interleaved rounds) until ``release``. A failed measurement raises ``MeasureError``, which the
tuner records as a failure and goes on.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from codegen.bundle import Bundle


class MeasureError(RuntimeError):
    """A bundle could not be measured (the device failed, the runner died, a step is missing
    from the per-layer timings); the message names what and where."""


@dataclass(frozen=True)
class Measurement:
    """One benchmark: per timed run, the whole model's time, and with ``per_layer`` each step's
    (by step name, one sample per run)."""

    samples_ns: Sequence[int]
    layers: Mapping[str, Sequence[int]] = field(default_factory=dict)


class Measurer(Protocol):
    def measure(self, bundle: Bundle, runs: int, warmup: int, per_layer: bool) -> Measurement:
        """Time ``bundle``: ``warmup`` discarded runs, then ``runs`` timed ones."""
        ...

    def release(self, bundle: Bundle) -> None:
        """``bundle`` will not be measured again (unload it)."""
        ...
