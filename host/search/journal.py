"""The run's journal: JSON lines, appended and fsync'ed one record at a time.

A candidate gets a ``started`` record (its encoding) before anything is done with it, then one
``done`` or ``failed`` record (accuracy, every latency sample, telemetry, errors). A crash or a
kill loses at most the candidates in flight; ``--resume`` reads the journal back, skips what
finished and re-evaluates what only started. A torn last line (killed mid-write) is ignored.

Record types: ``run`` (the settings, first line), ``probe`` (latency floor and dense model),
``phase`` (phase results, checkpoints), ``candidate``, ``resume``, ``final``. A measured
candidate's record carries its latency result's fields, among them ``upload_bytes`` and
``upload_s`` (what its bundle sent over the link, and how long that took). Reading checks
the fields ``--resume`` uses (``RECORD_FIELDS``); a journal that is JSON but not a journal is a
``JournalError`` naming the line and the field.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path, PurePosixPath

from .config import SearchError

JOURNAL_NAME = "journal.jsonl"
VERSION = 1

_NUMBER = (int, float)
# type → field → what it must be; fields a record lacks are not checked except ``_REQUIRED``
RECORD_FIELDS: dict[str, dict[str, tuple[type, ...]]] = {
    "run": {"config": (dict,), "target_ms": _NUMBER, "version": (int,)},
    "phase": {"phase": (str,), "checkpoint": (str,), "accuracy": _NUMBER},
    "candidate": {"id": (int,), "status": (str,), "key": (str,), "encoding": (list,),
                  "accuracy": _NUMBER, "latency_ms": _NUMBER, "reward": _NUMBER,
                  "meets_target": (bool,), "summary": (str,), "error": (str,),
                  "device_lost": (bool,), "upload_bytes": (int,), "upload_s": _NUMBER},
}
_REQUIRED = {"run": ("config", "target_ms"), "phase": ("phase",),
             "candidate": ("id", "status", "key", "encoding")}
_DONE_REQUIRED = ("accuracy", "latency_ms", "reward", "meets_target")


class JournalError(SearchError):
    """A journal line that is JSON but not a journal record; the message names line and field."""


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
        """Every record, checked (``RECORD_FIELDS``); lines that are not JSON are skipped (a
        line torn by a kill)."""
        if not self.path.is_file():
            return []
        out = []
        try:
            data = self.path.read_bytes()
        except OSError as e:
            raise JournalError(f"{self.path}: cannot be read ({e.strerror})") from None
        for n, line in enumerate(data.splitlines(), 1):
            try:
                rec = json.loads(line.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
                continue
            out.append(_checked(rec, f"{self.path} line {n}"))
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


def _checked(rec: object, where: str) -> dict:
    def bad(what: str) -> JournalError:
        return JournalError(f"{where}: {what}; the journal was edited or damaged: fix that "
                            f"line or start a new run (--out)")

    if not isinstance(rec, dict) or not isinstance(rec.get("type"), str):
        raise bad(f"{str(rec)[:80]} is not a journal record (a JSON object with a 'type')")
    kind = rec["type"]
    need = _REQUIRED.get(kind, ())
    if kind == "candidate" and rec.get("status") == "done":
        need += _DONE_REQUIRED
    for k in need:
        if k not in rec:
            raise bad(f"a {kind!r} record without {k!r}")
    for k, types in RECORD_FIELDS.get(kind, {}).items():
        v = rec.get(k)
        if k in rec and (not isinstance(v, types) or (isinstance(v, bool) and bool not in types)
                         or (isinstance(v, float) and v != v)):
            raise bad(f"{kind} field {k!r} = {str(v)[:80]} must be "
                      f"{' or '.join(t.__name__ for t in types)}")
    if kind == "candidate":
        if rec["id"] < 0:
            raise bad(f"candidate id {rec['id']} must be ≥ 0")
        for row in rec["encoding"]:
            # a 6th entry: the layer's precision (--precisions), when it is not fp32
            if not (isinstance(row, list) and len(row) in (3, 5, 6) and isinstance(row[0], str)
                    and isinstance(row[1], str) and isinstance(row[2], _NUMBER)
                    and not isinstance(row[2], bool)
                    and (len(row) == 3 or (isinstance(row[3], str)
                                           and isinstance(row[4], _NUMBER)
                                           and not isinstance(row[4], bool)))
                    and (len(row) < 6 or row[5] in ("fp32", "int8"))):
                raise bad(f"candidate encoding row {str(row)[:80]} must be [filter type, "
                          f"scheme, ratio] or, joint (jcw), [..., mask scheme, density], and "
                          f"then a precision (fp32, int8)")
    ck = rec.get("checkpoint") if kind == "phase" else None
    if ck is not None and (PurePosixPath(ck).is_absolute() or ".." in PurePosixPath(ck).parts):
        raise bad(f"checkpoint {ck[:80]!r} must be a path inside the run folder")
    return rec


def _default(o):
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, (set, tuple)):
        return list(o)
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
