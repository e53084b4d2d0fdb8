"""Compiler-free tier: property-based fuzzing (hypothesis) of the parsers that read what users
and devices hand us: bundle manifests, pruning plans, the search journal and latency cache read
on --resume, and the tuning database. Each gets mutations of a real file and arbitrary bytes;
the only exception allowed is the parser's own error (BundleError, PruningError, SearchError,
TuningDbError; the cache skips what it cannot use), and what a parser accepts must be usable
(a manifest converts to the runner's proto). The examples on the properties are regressions:
those marked "found" are what hypothesis found in the parsers before they checked types, the
others the issue's reports and the same bugs' kin."""

from __future__ import annotations

import copy
import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from test_bundle_check import write_bundle

from codegen import Entry, TuningDB, TuningDbError
from codegen.bundle import MANIFEST_NAME, BundleError, Manifest, load_bundle
from host.pruning.plan import LayerRule, PruningConfig, PruningError, PruningPlan
from host.rpc.convert import manifest_to_proto
from host.search.config import SearchConfig, SearchError
from host.search.journal import JOURNAL_NAME, Journal
from host.search.oracle import LatencyResult, read_cache
from host.search.space import Candidate

FUZZ = settings(max_examples=250, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow])
WORK = Path(tempfile.mkdtemp(prefix="npas-fuzz-"))

# any JSON value: the scalars a mutation puts in, and small nested lists and objects
SCALARS = (st.none() | st.booleans() | st.integers() | st.integers(-2, 2 ** 64 + 2)
           | st.floats() | st.text(max_size=12) | st.sampled_from(
               ["", "..", "/etc/passwd", "../x", "float16", "opencl", "weights", "kernels",
                "opencl_source", "\ud800", "a" * 64, "-DX", "done", "failed", "run", "phase"]))
JSON = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)


def _paths(v: object, prefix: tuple = ()) -> list[tuple]:
    """Every place in a JSON value: key paths to each nested value."""
    out = [prefix]
    if isinstance(v, dict):
        for k, x in v.items():
            out += _paths(x, (*prefix, k))
    elif isinstance(v, list):
        for i, x in enumerate(v):
            out += _paths(x, (*prefix, i))
    return out


@st.composite
def mutated(draw, base: object) -> object:
    """``base`` with one to three changes: a value replaced, a key or item deleted, a key
    added, a list item duplicated."""
    v = copy.deepcopy(base)
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(_paths(v)))
        if not path:
            v = draw(JSON) if draw(st.integers(0, 9)) == 0 else v
            continue
        parent = v
        for k in path[:-1]:
            parent = parent[k]
        last, how = path[-1], draw(st.sampled_from(["set", "set", "drop", "add", "dup"]))
        if how == "set":
            parent[last] = draw(JSON)
        elif how == "drop":
            del parent[last]
        elif how == "add" and isinstance(parent, dict):
            parent[draw(st.text(max_size=8))] = draw(JSON)
        elif how == "dup" and isinstance(parent, list):
            parent.append(copy.deepcopy(parent[last]))
    return v


def _write(name: str, data: bytes | str) -> Path:
    p = WORK / name
    p.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8", "surrogatepass"))
    return p


# ---- bundle manifests ----

BUNDLE = write_bundle(WORK / "bundle")
MANIFEST = json.loads((BUNDLE.path / MANIFEST_NAME).read_text())


@FUZZ
@given(mutated(MANIFEST))
@example({**MANIFEST, "arena_bytes": -1})  # `ValueError: Value out of range` in the proto
@example({**MANIFEST, "artifacts": [{**MANIFEST["artifacts"][0], "kind": "elf"},
                                    MANIFEST["artifacts"][1]]})  # KeyError in kind_to_proto
@example({**MANIFEST, "artifacts": [{**MANIFEST["artifacts"][0], "file": "/etc/passwd"},
                                    MANIFEST["artifacts"][1]]})
@example({**MANIFEST, "name": "\ud800"})  # cannot be encoded for the proto
@example({**MANIFEST, "scratch_bytes_per_thread": None})  # found: TypeError in the proto
def test_manifest_from_dict_accepts_only_what_the_runner_can_take(d):
    try:
        m = Manifest.from_dict(d)
    except BundleError:
        return
    manifest_to_proto(m).SerializeToString()  # what the host sends: no ValueError/KeyError
    assert all("/" not in a.file and a.file not in (".", "..") for a in m.artifacts)


@FUZZ
@given(st.one_of(mutated(MANIFEST).map(lambda d: json.dumps(d).encode("utf-8",
                                                                       "surrogatepass")),
                 st.binary(max_size=200), JSON.map(json.dumps)))
@example(b"[" * 50_000)  # RecursionError in json.loads
@example(b"\xff{}")  # UnicodeDecodeError
def test_load_bundle_raises_only_bundle_errors(data):
    folder = WORK / "fuzz-bundle"
    folder.mkdir(exist_ok=True)
    for f in ("libm.so", "weights.bin"):
        (folder / f).write_bytes((BUNDLE.path / f).read_bytes())
    _write("fuzz-bundle/" + MANIFEST_NAME, data)
    try:
        load_bundle(folder)
    except BundleError:
        pass


# ---- pruning plans ----

PLAN = PruningPlan({"features.0": LayerRule("unstructured", 0.5),
                    "features.3": LayerRule("pattern", 0.8, {"patterns": 4})},
                   PruningConfig(vector_width=8)).to_dict()


@FUZZ
@given(st.one_of(mutated(PLAN), JSON))
@example({**PLAN, "layers": []})  # AttributeError: 'list' has no attribute 'items'
@example([])  # AttributeError: 'list' object has no attribute 'get'
@example({**PLAN, "config": {"vector_width": "8"}})  # TypeError comparing str and int
@example({**PLAN, "layers": {"a": {"scheme": "nope", "rate": 0.5}}})  # unknown scheme, late
@example({**PLAN, "layers": {"a": {"rate": 0.5}}})  # found: KeyError 'scheme'
@example({**PLAN, "config": None})  # found: TypeError (None is not a mapping)
def test_pruning_plan_from_dict_raises_only_pruning_errors(d):
    try:
        plan = PruningPlan.from_dict(d)
    except PruningError:
        return
    for rule in plan.layers.values():
        assert isinstance(rule.params, dict) and 0 <= rule.rate < 1


@FUZZ
@given(st.one_of(st.binary(max_size=100), JSON.map(json.dumps)))
@example(b"\xff\xfe")  # UnicodeDecodeError escaped PruningPlan.load
@example(b"[" * 50_000)
def test_pruning_plan_load_raises_only_pruning_errors(data):
    with pytest.raises(PruningError):
        PruningPlan.load(_write("plan.json", data))


def test_a_saved_plan_loads_back():
    PruningPlan.from_dict(PLAN).save(WORK / "good-plan.json")
    assert PruningPlan.load(WORK / "good-plan.json").to_dict() == PLAN


# ---- the search journal (--resume) ----

ENCODING = [["keep", "unstructured", 2.0], ["1x1", "block", 5.0]]
JOURNAL = [
    {"t": 1.0, "type": "run", "version": 1, "config": SearchConfig(latency_ms=2.0).to_dict(),
     "target_ms": 2.0, "device_desc": "local", "space": {}},
    {"t": 1.1, "type": "probe", "dense": {"median_ms": 3.0}, "floor": []},
    {"t": 1.2, "type": "phase", "phase": "phase1", "acc_after": 0.9, "checkpoint": "c/p1.pt"},
    {"t": 1.3, "type": "candidate", "id": 0, "status": "started", "key": "k0",
     "encoding": ENCODING, "strategy": "npas", "summary": "s"},
    {"t": 1.4, "type": "candidate", "id": 0, "status": "done", "key": "k0",
     "encoding": ENCODING, "summary": "s", "accuracy": 0.8, "latency_ms": 1.5, "reward": 0.8,
     "meets_target": True},
    {"t": 1.5, "type": "candidate", "id": 1, "status": "failed", "key": "k1",
     "encoding": ENCODING, "error": "boom", "device_lost": False, "latency": None},
]


def _resume(lines: list[bytes]) -> None:
    """What --resume reads from a journal, in the order it reads it."""
    run = WORK / "run"
    run.mkdir(exist_ok=True)
    (run / JOURNAL_NAME).write_bytes(b"\n".join(lines) + b"\n")
    j = Journal(run)
    header = j.header()
    if header is not None:
        SearchConfig.from_dict(header["config"])
        float(header["target_ms"])
    for rec in j.finished_candidates().values():
        Candidate.from_json(rec["encoding"]).key()
        if rec["status"] == "done":
            assert isinstance(rec["meets_target"], bool)
            float(rec["accuracy"]), float(rec["latency_ms"]), float(rec["reward"])
    for phase in ("phase1", "pretrain", "phase3-final"):
        done = j.phase(phase)
        if done is not None and "checkpoint" in done:
            assert not Path(done["checkpoint"]).is_absolute()


def _lines(records: list) -> list[bytes]:
    return [json.dumps(r).encode("utf-8", "surrogatepass") for r in records]


@FUZZ
@given(st.one_of(mutated(JOURNAL).map(lambda rs: _lines(rs) if isinstance(rs, list)
                                      else _lines([rs])),
                 st.lists(st.binary(max_size=40), max_size=5),
                 st.lists(JSON, max_size=5).map(_lines)))
@example(_lines([5]))  # AttributeError: 'int' object has no attribute 'get'
@example(_lines([{**JOURNAL[4], "id": "zero"}]))  # ValueError in int(r["id"])
@example(_lines([{**JOURNAL[4], "encoding": [["keep"]]}]))  # ValueError unpacking a row
@example(_lines([{**JOURNAL[0], "config": {"ratios": 5}}]))  # TypeError in tuple(5)
@example(_lines([{**JOURNAL[5], "encoding": None}]))  # found: TypeError iterating None
@example(_lines([{k: v for k, v in JOURNAL[5].items() if k != "encoding"}]))  # found: KeyError
@example(_lines([JOURNAL[0]]) + [b"\xff\xfe torn"])  # UnicodeDecodeError reading the file
def test_resume_reads_a_journal_or_raises_a_search_error(lines):
    try:
        _resume(lines)
    except SearchError:
        pass


def test_a_real_journal_resumes_and_a_torn_line_is_skipped():
    lines = _lines(JOURNAL) + [b'{"type": "candidate", "id": 2, "sta']
    _resume(lines)
    j = Journal(WORK / "run")
    assert sorted(j.finished_candidates()) == [0, 1]
    assert j.header()["target_ms"] == 2.0 and j.phase("phase1")["checkpoint"] == "c/p1.pt"


def test_a_journal_that_is_not_one_names_the_line():
    with pytest.raises(SearchError, match=r"line 2: .*'id' = zero must be int"):
        _resume(_lines([JOURNAL[0], {**JOURNAL[4], "id": "zero"}]))
    with pytest.raises(SearchError, match="inside the run folder"):
        _resume(_lines([{**JOURNAL[2], "checkpoint": "/etc/passwd"}]))


# ---- the tuning database ----

DB_PATH = WORK / "tuning.json"
TuningDB(DB_PATH).put(Entry(key={"op": "conv2d", "output": [1, 8, 4, 4]},
                            tuning={"algo": "direct", "oc_tile": 2}, median_ms=0.5,
                            default_tuning={"algo": "direct", "oc_tile": 1}, default_ms=0.7,
                            space={"oc_tile": [1, 2]}, layers=["features.0"], runs=10))
DB = json.loads(DB_PATH.read_text())


@FUZZ
@given(st.one_of(mutated(DB).map(lambda d: json.dumps(d).encode("utf-8", "surrogatepass")),
                 st.binary(max_size=100), JSON.map(json.dumps)))
@example(b"\xff{}")  # UnicodeDecodeError escaped TuningDB
@example(b"[" * 50_000)  # RecursionError
@example(json.dumps({**DB, "entries": [{**DB["entries"][0], "tuning": [1]}]}).encode())
def test_tuning_db_reads_or_raises_a_tuning_db_error(data):
    path = _write("fuzz-tuning.json", data)
    try:
        db = TuningDB(path)
    except TuningDbError:
        return
    for e in db.entries.values():  # what the tuner and compile's lookup use
        assert db.get(e.key) is e
        assert isinstance(e.speedup, float | int)
        assert all(isinstance(k, str) for k in e.tuning) and isinstance(e.space, dict)
        assert all(isinstance(v, list) for v in e.space.values())


# ---- the latency cache (latency.jsonl, read on --resume) ----

CACHED = {"key": "ab:r100:w10:t1", "result": {
    "ok": True, "median_ms": 1.5, "content_hash": "ab", "samples_ns": [1500000, 1600000],
    "warmup_ns": [2000000], "init_ns": 5, "threads": 1, "telemetry_before": None,
    "telemetry_after": {"thermal_millicelsius": {"cpu": 45000}}, "layers": [],
    "compile_s": 0.5, "measure_s": 0.2, "cached": False, "restarts": 0, "attempts": 1,
    "errors": []}}


@FUZZ
@given(st.one_of(mutated(CACHED).map(lambda d: [d]), st.lists(JSON, max_size=4)),
       st.binary(max_size=30))
@example([{**CACHED, "result": {**CACHED["result"], "median_ms": "fast"}}], b"")
@example([{**CACHED, "result": {**CACHED["result"], "telemetry_after": {
    "thermal_millicelsius": [1]}}}], b"")  # AttributeError in temperature_c
@example([[CACHED]], b"\xff")  # TypeError: list indices; UnicodeDecodeError
def test_the_latency_cache_keeps_only_usable_measurements(records, garbage):
    path = WORK / "latency.jsonl"
    path.write_bytes(b"\n".join([*_lines(records), garbage]) + b"\n")
    for r in read_cache(path).values():
        lat = LatencyResult.from_record(r)
        # what the search reads from a cached result
        assert lat.ok and isinstance(lat.median_ms + 0, float | int)
        assert lat.temperature_c is None or lat.temperature_c + 0 == lat.temperature_c
        assert lat.p10_ms is None or lat.p10_ms <= lat.p90_ms


def test_a_good_cache_line_is_kept():
    path = WORK / "latency.jsonl"
    path.write_bytes(b"\n".join(_lines([CACHED])) + b'\n{"key": "torn", "res')
    assert read_cache(path) == {CACHED["key"]: CACHED["result"]}
