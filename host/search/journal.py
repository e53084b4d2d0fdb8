"""The run's journal: JSON lines, appended and fsync'ed one record at a time.

A candidate gets a ``started`` record (its encoding) before anything is done with it, then one
``done`` or ``failed`` record (accuracy, every latency sample, telemetry, errors). A crash or a
kill loses at most the candidates in flight; ``--resume`` reads the journal back, skips what
finished and re-evaluates what only started. A torn last line (killed mid-write) is ignored.

Record types: ``run`` (the settings, first line), ``probe`` (latency floor and dense model),
``phase`` (phase results, checkpoints), ``candidate``, ``resume``, ``final``.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

JOURNAL_NAME = "journal.jsonl"
VERSION = 1


class Journal:
    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / JOURNAL_NAME
        self._lock = threading.Lock()

    def append(self, record: dict) -> dict:
        record = {"t": round(time.time(), 3), **record}
        line = json.dumps(record, separators=(",", ":"), default=_default) + "\n"
        with self._lock, open(self.path, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
        return record

    def records(self) -> list[dict]:
        if not self.path.is_file():
            return []
        out = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line torn by a kill
        return out

    def header(self) -> dict | None:
        recs = self.records()
        return recs[0] if recs and recs[0].get("type") == "run" else None

    def finished_candidates(self) -> dict[int, dict]:
        """id → the last done/failed record of every finished candidate."""
        out: dict[int, dict] = {}
        for r in self.records():
            if r.get("type") == "candidate" and r.get("status") in ("done", "failed"):
                out[int(r["id"])] = r
        return out

    def phase(self, phase: str) -> dict | None:
        found = None
        for r in self.records():
            if r.get("type") == "phase" and r.get("phase") == phase:
                found = r
        return found


def _default(o):
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, (set, tuple)):
        return list(o)
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
