"""Where phase 2's candidates are evaluated.

- ``local`` (the default): in this process, in rounds of ``--batch``, each candidate fine-tuned
  on the main thread while the latency oracle compiles and measures it on its own thread
  (phases.py's loop; unchanged).
- ``ray``: each candidate's fine-tune is a Ray task (ray_cluster.py) and phase 2 runs
  asynchronously (loop.py): the strategy is asked for as many candidates as there are free
  workers, a finished candidate is told at once and the next asked. Latency is measured by
  the driver's oracle (one device, or a pool of devices of one model: oracle_pool.py)
  meanwhile. The driver alone writes the journal, in the order it asked and told, which is
  what ``--resume`` replays.

``gate.py``: training pauses across processes while a runner on the same CPU times.
"""

from __future__ import annotations

from typing import Protocol

from ..space import Candidate


class Executor(Protocol):
    """Evaluates candidates' accuracy somewhere; ``capacity`` of them at once."""

    capacity: int
    desc: str

    def start(self, shared) -> None: ...
    def submit(self, cid: int, cand: Candidate) -> None: ...
    def wait(self, timeout_s: float) -> list[tuple[int, dict]]: ...
    def close(self) -> None: ...


def make_executor(cfg, on_event=None, hook=None) -> Executor | None:
    """None for the in-process default; else the executor ``cfg.executor`` names (which may
    refuse: Ray not installed, a cluster that cannot be reached)."""
    if cfg.executor == "local":
        return None
    from .ray_cluster import RayExecutor

    return RayExecutor(cfg, on_event=on_event, hook=hook)
