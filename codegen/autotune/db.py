"""The tuning database: the best tuning found for a layer signature on a target, on disk.

A key says everything a kernel's speed depends on that compile_model fixes: the op, the
logical (NCHW) shapes of its inputs and output, the weight shape, the attributes
(kernel, stride, padding, dilation, groups), the fused epilogue, the pruning scheme and storage,
the target (arch, OS, ABI, CPU features, vector ISA: which also fixes the channel block) and
the runner's thread count. Logical shapes, because the lookup runs before the layout pass
(tuning decides layouts: a Winograd conv reads blocked input). Layers with
equal keys (resnet18 repeats its blocks) share one entry, so nothing is tuned twice.

On disk a JSON file (default ``~/.cache/npas/tuning.json``), one entry per line::

    {"format": "npas-tuning-db", "version": 1, "entries": [
    {"key": {...}, "tuning": {"algo": "direct", "oc_tile": 2, "w_tile": 7}, "median_ms": ...,
     "default_tuning": {...}, "default_ms": ..., "space": {...}, "layers": [...], ...},
    ...]}

Every write re-reads the file under an advisory lock, merges, writes a temporary file in the
same folder, fsyncs it and renames it over the old one, so a crash leaves either the old or
the new file, and two tuners writing at once lose nothing.
"""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from codegen.autotune.space import key_string, layer_key, tunable_space
from codegen.bundle import Target
from codegen.lr import Graph, Layer

FORMAT = "npas-tuning-db"
VERSION = 1


class TuningDbError(RuntimeError):
    """The database file cannot be read; the message names the file and the fix."""


def default_db_path() -> Path:
    """``$XDG_CACHE_HOME/npas/tuning.json`` (``~/.cache`` without it): the cache folder the
    host's runner store also uses (``host.devices.local.default_cache_dir``; codegen does not
    import the host)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "npas" / "tuning.json"


@dataclass
class Entry:
    key: dict[str, Any]
    tuning: dict[str, Any]  # the best point; equal to default_tuning when nothing beat it
    median_ms: float  # its median in the final re-measurement
    default_tuning: dict[str, Any]
    default_ms: float  # the default's median in the same re-measurement
    space: dict[str, list] = field(default_factory=dict)  # what was searched
    layers: list[str] = field(default_factory=list)  # where it was found
    model: str = ""
    runs: int = 0
    candidates: int = 0  # points measured
    device: str = ""  # the device's CPU, for people
    tuned_at: str = ""

    @property
    def speedup(self) -> float:
        return self.default_ms / self.median_ms if self.median_ms > 0 else 1.0


class TuningDB:
    """The entries of one database file; ``put`` writes through to disk at once."""

    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path is not None else default_db_path()
        self.entries: dict[str, Entry] = self._read()

    def __len__(self) -> int:
        return len(self.entries)

    def _read(self) -> dict[str, Entry]:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return {}
        except OSError as e:
            raise TuningDbError(f"tuning database {self.path}: {e.strerror}") from None
        try:
            d = json.loads(data.decode("utf-8"))
            if not isinstance(d, dict) or d.get("format") != FORMAT:
                raise ValueError(f"format {_get(d, 'format')!r}, expected {FORMAT!r}")
            if d.get("version") != VERSION or isinstance(d.get("version"), bool):
                raise ValueError(f"version {d.get('version')!r}; this npas reads {VERSION}")
            if not isinstance(d.get("entries"), list):
                raise ValueError("'entries' is not a list")
            entries = [_entry(i, e) for i, e in enumerate(d["entries"])]
            return {key_string(e.key): e for e in entries}
        except (ValueError, TypeError, KeyError, AttributeError, RecursionError) as e:
            raise TuningDbError(f"tuning database {self.path} is not readable ({e}); move it "
                                f"away or pass another --db") from None

    def get(self, key: dict[str, Any]) -> Entry | None:
        return self.entries.get(key_string(key))

    def put(self, entry: Entry) -> None:
        """Add or replace ``entry`` and write the file (merging what others wrote since)."""
        if not entry.tuned_at:
            entry.tuned_at = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        k = key_string(entry.key)
        with self._locked():
            self.entries = {**self._read(), k: entry}
            self._write()

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(self.path.name + ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _write(self) -> None:
        head = json.dumps({"format": FORMAT, "version": VERSION})[:-1]
        lines = [json.dumps(asdict(e), separators=(",", ":"))
                 for _, e in sorted(self.entries.items())]
        text = head + ', "entries": [\n' + ",\n".join(lines) + "\n]}\n"
        fd, tmp = tempfile.mkstemp(prefix=self.path.name + ".", suffix=".tmp",
                                   dir=self.path.parent)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        dfd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    def lookup(self, threads: int) -> DbLookup:
        """The ``compile_model(tuning=...)`` hook for a runner with ``threads`` threads."""
        return DbLookup(self, threads)


def _get(d: object, k: str) -> object:
    return d.get(k) if isinstance(d, dict) else None


_ENTRY_TYPES: dict[str, tuple[type, ...]] = {
    "key": (dict,), "tuning": (dict,), "median_ms": (int, float), "default_tuning": (dict,),
    "default_ms": (int, float), "space": (dict,), "layers": (list,), "model": (str,),
    "runs": (int,), "candidates": (int,), "device": (str,), "tuned_at": (str,)}


def _entry(i: int, e: object) -> Entry:
    """Entry ``i`` of the file, each field of its type (``put`` wrote it), or a ValueError."""
    if not isinstance(e, dict):
        raise ValueError(f"entry {i} is not a JSON object")
    for k, v in e.items():
        types = _ENTRY_TYPES.get(k)
        if types is None:
            raise ValueError(f"entry {i} has an unknown field {k!r}")
        if not isinstance(v, types) or isinstance(v, bool):
            raise ValueError(f"entry {i}: {k} = {str(v)[:80]} is not "
                             f"{' or '.join(t.__name__ for t in types)}")
    if not all(isinstance(x, str) for x in e.get("layers", [])) or \
            not all(isinstance(x, list) for x in e.get("space", {}).values()):
        raise ValueError(f"entry {i}: 'layers' must be names and 'space' lists of values")
    return Entry(**e)


class DbLookup:
    """``lookup(layer, graph, target)``: the database's tuning for that layer, or None (the
    cost model's defaults). An entry whose values the current code generator no longer
    accepts is skipped. Records which layers it answered (``hits``) and which tunable layers
    had no entry (``misses``)."""

    def __init__(self, db: TuningDB, threads: int):
        self.db, self.threads = db, threads
        self.hits: list[str] = []
        self.misses: list[str] = []

    def __call__(self, la: Layer, graph: Graph, target: Target) -> dict[str, Any] | None:
        space = tunable_space(la, graph, target)
        if not space:
            return None
        entry = self.db.get(layer_key(la, graph, target, self.threads))
        if entry is None or not all(k in space and v in space[k]
                                    for k, v in entry.tuning.items()):
            self.misses.append(la.name)
            return None
        self.hits.append(la.name)
        return dict(entry.tuning)
