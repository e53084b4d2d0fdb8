"""Training pauses while a runner on the same CPU times, across processes: a file lock.

In-process, a threading.Lock does this (engine.py). With Ray the training runs in worker
processes, so the gate is a pair of ``flock`` locks in a file the driver names: trainers take
the room shared for each training step (several workers train at once), a runner's timed runs
take it exclusively. A turnstile lock in front gives the runner priority: once it waits, no new
training step starts, so trainers that keep overlapping cannot starve it. The locks are
node-local (a path in /tmp), which is what matters: a worker on another node shares no CPU
with this runner, and nobody there takes the exclusive side.
"""

from __future__ import annotations

import fcntl
import os
import threading
from pathlib import Path


class FileGate:
    """``trainer()`` and ``timer()`` give context managers; ``path`` is the room's lock file
    (the turnstile is ``path`` + ``.turn``). Picklable: a worker opens the files itself."""

    def __init__(self, path: str | Path):
        self.path = str(path)
        self._local = threading.local()

    def __getstate__(self) -> dict:
        return {"path": self.path}

    def __setstate__(self, state: dict) -> None:
        self.path = state["path"]
        self._local = threading.local()

    def _fds(self) -> tuple[int, int]:
        fds = getattr(self._local, "fds", None)
        if fds is None:
            flags = os.O_RDWR | os.O_CREAT
            fds = (os.open(self.path + ".turn", flags, 0o600), os.open(self.path, flags, 0o600))
            self._local.fds = fds
        return fds

    def trainer(self) -> _Hold:
        return _Hold(self, exclusive=False)

    def timer(self) -> _Hold:
        return _Hold(self, exclusive=True)

    def remove(self) -> None:
        for p in (self.path, self.path + ".turn"):
            Path(p).unlink(missing_ok=True)


class _Hold:
    def __init__(self, gate: FileGate, exclusive: bool):
        self.gate, self.exclusive = gate, exclusive

    def __enter__(self) -> _Hold:
        turn, room = self.gate._fds()
        fcntl.flock(turn, fcntl.LOCK_EX)
        try:
            fcntl.flock(room, fcntl.LOCK_EX if self.exclusive else fcntl.LOCK_SH)
        finally:
            if not self.exclusive:  # a timer keeps the turnstile: no new step starts
                fcntl.flock(turn, fcntl.LOCK_UN)
        return self

    def __exit__(self, *exc) -> None:
        turn, room = self.gate._fds()
        fcntl.flock(room, fcntl.LOCK_UN)
        if self.exclusive:
            fcntl.flock(turn, fcntl.LOCK_UN)
