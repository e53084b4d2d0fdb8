"""The auto-tuner (codegen/autotune): database keys and files, signature dedupe, GA operators
inside the tuning space, the compile_model(tuning=...) hook (pure Python and cc), a tuning run
through a fake Measurer (cc: codegen's seam, no device), and one tiny tuning run on the local
runner through the host's Session-backed Measurer (host tier). No timing assertions: tests
measure truth, not speed."""

from __future__ import annotations

import json
import os
import random
import re
from dataclasses import replace

import pytest
import torch
import zoo

from codegen import (
    DbLookup,
    Entry,
    HostToolchain,
    MeasureError,
    Measurement,
    Target,
    TuneConfig,
    TuningDB,
    TuningDbError,
    capture,
    compile_model,
    default_point,
    key_string,
    layer_key,
    tunable_space,
    tune_model,
)
from codegen.autotune import ga
from codegen.autotune.tuner import _Recorder
from codegen.passes import fold_bn, fuse_epilogue, pipeline, run_passes

AVX512_TARGET = Target("x86_64", "linux", "x86_64", ("avx2", "fma", "avx512f"))
NEON_TARGET = Target("aarch64", "android", "arm64-v8a", ("asimd",))


def _fused(model, shape):
    """The graph the tuning lookup sees: captured, BN folded, epilogues fused (pre-layout)."""
    return fuse_epilogue(fold_bn(capture(model, (torch.randn(shape),))))


@pytest.fixture(scope="module")
def resnet_graph():
    return _fused(zoo.torchvision_model("resnet18"), (1, 3, 64, 64))


def _conv(g, name):
    return next(la for la in g.steps if la.name == name)


def _entry(key, tuning, default):
    return Entry(key=key, tuning=tuning, median_ms=1.0, default_tuning=default, default_ms=1.1,
                 space={}, layers=["x"])


# ---- keys and signatures -----------------------------------------------------------------------

def test_repeated_blocks_share_a_key_and_everything_else_tells_them_apart(resnet_graph):
    g = resnet_graph
    a, b = _conv(g, "layer1.0.conv1"), _conv(g, "layer1.1.conv1")
    ka = layer_key(a, g, AVX512_TARGET, 1)
    assert ka == layer_key(b, g, AVX512_TARGET, 1)
    assert json.loads(key_string(ka)) == ka  # plain JSON data
    # conv2 of the block has no fused relu: another signature
    assert layer_key(_conv(g, "layer1.0.conv2"), g, AVX512_TARGET, 1) != ka
    assert layer_key(a, g, AVX512_TARGET, 2) != ka  # threads
    assert layer_key(a, g, NEON_TARGET, 1) != ka  # target
    avx2 = replace(AVX512_TARGET, features=("avx2", "fma"))
    assert layer_key(a, g, avx2, 1)["target"]["isa"] == "avx2" != ka["target"]["isa"]
    assert layer_key(replace(a, scheme="pattern", storage="csr"), g, AVX512_TARGET, 1) != ka
    # the shapes, the kernel, stride and padding are in it
    assert ka["inputs"] == [[1, 64, 16, 16]] and ka["weight"] == [64, 64, 3, 3]
    assert ka["attrs"]["stride"] == [1, 1] and ka["attrs"]["padding"] == [1, 1, 1, 1]
    assert ka["epilogue"] == ["relu"]


def test_signatures_are_deduplicated(resnet_graph):
    rec = _Recorder(threads=1)
    run_passes(capture(zoo.torchvision_model("resnet18"), (torch.randn(1, 3, 64, 64),)),
               pipeline(4, HostToolchain().isa(), rec, AVX512_TARGET))
    layers = [n for s in rec.sigs.values() for n in s.layers]
    convs = [la.name for la in resnet_graph.steps if la.op == "conv2d"]
    assert sorted(layers) == sorted(convs)  # every conv once
    assert len(rec.sigs) < len(convs)
    shared = next(s for s in rec.sigs.values() if "layer1.0.conv1" in s.layers)
    assert shared.layers == ["layer1.0.conv1", "layer1.1.conv1"]
    for s in rec.sigs.values():  # the default is a point of the space
        assert ga.in_space(ga.genome(s.default, s.space), s.space)


def test_space_and_default_match_what_the_layout_pass_fills_in(resnet_graph):
    g = resnet_graph
    la = _conv(g, "layer2.0.conv1")
    space = tunable_space(la, g, AVX512_TARGET)
    assert {"oc_tile", "w_tile"} <= set(space)
    laid = run_passes(capture(zoo.torchvision_model("resnet18"), (torch.randn(1, 3, 64, 64),)),
                      pipeline(4, HostToolchain().isa()))
    # only meaningful where the host builds AVX-512 (the target above)
    if HostToolchain().isa().name == "avx512":
        assert _conv(laid, "layer2.0.conv1").tuning == default_point(la, g, AVX512_TARGET)
    fc = next(la for la in g.steps if la.op == "linear")
    assert tunable_space(fc, g, AVX512_TARGET) == {}


# ---- the GA ------------------------------------------------------------------------------------

SPACES = [
    {"oc_tile": (1, 2, 4), "w_tile": tuple(range(1, 17))},
    {"algo": ("direct", "winograd2", "winograd4"), "oc_tile": (1, 2), "w_tile": (1, 2, 3)},
    {"oc_tile": (1,), "w_tile": (1, 2)},  # smaller than the population
]


@pytest.mark.parametrize("space", SPACES)
def test_ga_operators_stay_inside_the_space(space):
    rng = random.Random(0)
    cfg = ga.GaConfig(population=6, mutation=0.9)
    default = {k: v[0] for k, v in space.items()}
    pop = ga.initial_population(space, default, cfg.population, rng)
    assert pop[0] == ga.genome(default, space)
    assert len(set(pop)) == len(pop) == min(6, ga.space_size(space))
    samples: dict = {}
    for _gen in range(8):
        for g in pop:
            assert ga.in_space(g, space)
            samples.setdefault(g, []).append(rng.random())
        for _ in range(50):
            a, b = rng.choice(pop), rng.choice(pop)
            assert ga.in_space(ga.crossover(a, b, rng), space)
            m = ga.mutate(a, space, cfg, rng, force=True)
            assert ga.in_space(m, space) and m != a
        pop = ga.next_generation(pop, samples, space, cfg, rng)
        assert len(set(pop)) == len(pop) == min(6, ga.space_size(space))
    best = ga.ranked(samples)[0]
    assert best in pop  # the elite survives


def test_ga_is_deterministic_given_the_seed():
    space = SPACES[1]
    default = {"algo": "direct", "oc_tile": 1, "w_tile": 3}

    def run(seed):
        rng = ga.rng_for(seed, "sig")
        pop = ga.initial_population(space, default, 5, rng)
        samples = {g: [float(i)] for i, g in enumerate(pop)}
        return pop, ga.next_generation(pop, samples, space, ga.GaConfig(population=5), rng)

    assert run(3) == run(3)
    assert run(3) != run(4)


# ---- the database file -------------------------------------------------------------------------

def test_db_round_trip_and_merge_with_other_writers(tmp_path, resnet_graph):
    g = resnet_graph
    path = tmp_path / "sub" / "tuning.json"
    k1 = layer_key(_conv(g, "layer1.0.conv1"), g, AVX512_TARGET, 1)
    k2 = layer_key(_conv(g, "layer2.0.conv1"), g, AVX512_TARGET, 1)
    db, other = TuningDB(path), TuningDB(path)
    db.put(_entry(k1, {"oc_tile": 4, "w_tile": 7}, {"oc_tile": 2, "w_tile": 14}))
    other.put(_entry(k2, {"oc_tile": 1, "w_tile": 3}, {"oc_tile": 2, "w_tile": 14}))
    again = TuningDB(path)
    assert len(again) == 2  # the second writer kept the first one's entry
    assert again.get(k1).tuning == {"oc_tile": 4, "w_tile": 7}
    assert again.get(k1).key == k1 and again.get(k1).tuned_at
    assert again.get(k2).default_ms == 1.1
    assert json.loads(path.read_text())["format"] == "npas-tuning-db"


def test_a_crash_while_writing_leaves_the_old_file(tmp_path, monkeypatch, resnet_graph):
    g = resnet_graph
    path = tmp_path / "tuning.json"
    k1 = layer_key(_conv(g, "layer1.0.conv1"), g, AVX512_TARGET, 1)
    k2 = layer_key(_conv(g, "layer2.0.conv1"), g, AVX512_TARGET, 1)
    db = TuningDB(path)
    db.put(_entry(k1, {"oc_tile": 4, "w_tile": 7}, {"oc_tile": 2, "w_tile": 14}))
    before = path.read_bytes()

    def crash(*_a):
        raise OSError("power cut")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="power cut"):
        db.put(_entry(k2, {"oc_tile": 1, "w_tile": 3}, {"oc_tile": 2, "w_tile": 14}))
    monkeypatch.undo()
    assert path.read_bytes() == before  # written to a temporary file, renamed last
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tuning.json", "tuning.json.lock"]
    assert len(TuningDB(path)) == 1


def test_an_unreadable_db_says_which_file_and_what_to_do(tmp_path):
    path = tmp_path / "tuning.json"
    path.write_text('{"format": "npas-tuning-db", "version": 1, "entries": [{"ke')
    with pytest.raises(TuningDbError, match=r"tuning\.json is not readable.*--db"):
        TuningDB(path)
    assert len(TuningDB(tmp_path / "missing.json")) == 0  # no file: an empty database


# ---- the lookup hook ---------------------------------------------------------------------------

def test_lookup_answers_entries_and_falls_back_to_defaults(tmp_path, resnet_graph):
    g = resnet_graph
    db = TuningDB(tmp_path / "tuning.json")
    la, other = _conv(g, "layer1.0.conv1"), _conv(g, "layer2.0.conv1")
    db.put(_entry(layer_key(la, g, AVX512_TARGET, 1), {"oc_tile": 4, "w_tile": 7}, {}))
    db.put(_entry(layer_key(other, g, AVX512_TARGET, 1), {"oc_tile": 1, "w_tile": 99}, {}))
    look = db.lookup(threads=1)
    assert isinstance(look, DbLookup)
    assert look(la, g, AVX512_TARGET) == {"oc_tile": 4, "w_tile": 7}
    assert look(_conv(g, "layer1.1.conv1"), g, AVX512_TARGET) == {"oc_tile": 4, "w_tile": 7}
    assert look(other, g, AVX512_TARGET) is None  # w_tile 99 is not legal any more
    assert look(_conv(g, "layer3.0.conv1"), g, AVX512_TARGET) is None  # no entry
    assert db.lookup(threads=4)(la, g, AVX512_TARGET) is None  # tuned for 1 thread only
    fc = next(x for x in g.steps if x.op == "linear")
    assert look(fc, g, AVX512_TARGET) is None
    assert look.hits == ["layer1.0.conv1", "layer1.1.conv1"]
    assert look.misses == ["layer2.0.conv1", "layer3.0.conv1"]


def test_a_db_entry_changes_the_generated_kernel(cc, tmp_path):
    model, x = zoo.small_cnn(), torch.randn(1, 3, 32, 32)
    tc = HostToolchain()
    target = tc.target()
    g = _fused(model, (1, 3, 32, 32))
    stem = _conv(g, "stem")
    default = default_point(stem, g, target)
    w = 4 if default["w_tile"] != 4 else 5
    db = TuningDB(tmp_path / "tuning.json")
    db.put(_entry(layer_key(stem, g, target, 1), {**default, "w_tile": w}, default))
    compile_model(model, (x,), tmp_path / "default", name="d", toolchain=tc)
    look = db.lookup(1)
    compile_model(model, (x,), tmp_path / "tuned", name="t", toolchain=tc, tuning=look)
    src_d = (tmp_path / "default" / "kernels.c").read_text()
    src_t = (tmp_path / "tuned" / "kernels.c").read_text()
    oc = default["oc_tile"]
    want = f"_{oc}x{w}w_relu"
    assert any(v.endswith(want) for v in re.findall(r"\bconv2d_3x3s2_\w+", src_t))
    assert not any(v.endswith(want) for v in re.findall(r"\bconv2d_3x3s2_\w+", src_d))
    assert look.hits == ["stem"]
    # the other layers kept the cost model's choice: their kernels are the same
    others = set(re.findall(r"\b(?:dw)?conv2d_(?!3x3s2_)\w+", src_d))
    assert others == set(re.findall(r"\b(?:dw)?conv2d_(?!3x3s2_)\w+", src_t))


# ---- a real tuning run (host tier) -------------------------------------------------------------

class _FakeMeasurer:
    """A Measurer with no device: every step takes 1 ms plus its tile width in µs (so the
    search has something to prefer), and the n-th measurement fails when asked to."""

    def __init__(self, fail_at: int = -1):
        self.calls = 0
        self.fail_at = fail_at
        self.loaded: set[str] = set()
        self.released: list[str] = []

    def measure(self, bundle, runs, warmup, per_layer):
        self.calls += 1
        self.loaded.add(str(bundle.path))
        if self.calls == self.fail_at:
            raise MeasureError("the fake device failed")
        src = (bundle.path / "kernels.c").read_text()
        widths = [int(w) for w in re.findall(r"_\d+x(\d+)w\b", src)]
        layers = {st.name: [1_000_000 + 1000 * (sum(widths) % 7)] * runs
                  for st in bundle.manifest.steps} if per_layer else {}
        return Measurement([2_000_000] * runs, layers)

    def release(self, bundle):
        self.released.append(str(bundle.path))


def test_the_tuner_measures_only_through_its_measurer(cc, tmp_path):
    model, x = zoo.small_cnn(), torch.randn(1, 3, 32, 32)
    db = TuningDB(tmp_path / "tuning.json")
    cfg = TuneConfig(threads=1, runs=2, warmup=1, ga=ga.GaConfig(population=3, generations=2),
                     compare=True, compare_runs=2, model_name="small")
    fake = _FakeMeasurer(fail_at=2)
    report = tune_model(model, (x,), fake, HostToolchain(), db, cfg)
    # the failed candidate is a recorded failure, not an exception; the search went on
    assert len(report.failures) == 1 and "the fake device failed" in report.failures[0]
    assert report.generations == 2 and report.candidates_measured == fake.calls - 1 - 6
    assert set(fake.released) == fake.loaded  # every bundle it measured was released
    assert len(db) == len(report.signatures) > 0
    assert report.model_default_ms == report.model_tuned_ms == 2.0


@pytest.mark.host
def test_tune_small_cnn_on_the_local_runner(cc, local_runner, tmp_path):
    from host.devices.session import Session
    from host.tune.measurer import SessionMeasurer

    model, x = zoo.small_cnn(), torch.randn(1, 3, 32, 32)
    tc = HostToolchain()
    db = TuningDB(tmp_path / "tuning.json")
    # margin -1: keep the best point even when it is not faster, so the tuned bundle really
    # differs from the default where the search found another point
    cfg = TuneConfig(threads=1, runs=3, warmup=1, ga=ga.GaConfig(population=3, generations=2),
                     margin=-1.0, min_gain_ms=-1.0, compare=False, model_name="small")
    with Session(local_runner) as s:
        report = tune_model(model, (x,), SessionMeasurer(s, 1), tc, db, cfg)
        assert report.failures == []
        assert report.candidates_measured > 2 * 3  # the search's 6, then the finals
        assert report.generations == 2
        g = _fused(model, (1, 3, 32, 32))
        target = tc.target()
        tunable = [la for la in g.steps if tunable_space(la, g, target)]
        keys = {key_string(layer_key(la, g, target, 1)) for la in tunable}
        assert len(report.signatures) == len(keys) and set(db.entries) == keys
        assert all(not sig.from_db and sig.measured >= 1 for sig in report.signatures)
        for e in db.entries.values():
            assert ga.in_space(ga.genome(e.tuning, e.space), e.space)
            assert e.median_ms > 0 and e.default_ms > 0 and e.layers

        look = db.lookup(1)
        bundle = compile_model(model, (x,), tmp_path / "tuned", name="tuned", toolchain=tc,
                               tuning=look)
        assert sorted(look.hits) == sorted(la.name for la in tunable)
        key = s.load(bundle)
        (got,) = s.run(key, [x.numpy()])
        s.unload(key)
        with torch.no_grad():
            want = model(x)
        assert zoo.rel_err(got, want) <= 1e-4

        before = (tmp_path / "tuning.json").read_bytes()
        again = tune_model(model, (x,), SessionMeasurer(s, 1), tc,
                           TuningDB(tmp_path / "tuning.json"), cfg)
    assert again.candidates_measured == 0 and again.generations == 0
    assert all(sig.from_db for sig in again.signatures)
    assert (tmp_path / "tuning.json").read_bytes() == before
