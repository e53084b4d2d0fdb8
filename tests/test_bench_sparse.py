"""The sparse benchmark: mappings, rate solving, work and compression arithmetic, result rows
(pure Python), and one small run on the local runner (host)."""

import json
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from host.bench.common import BenchArgError, EngineRun
from host.bench.sparse.cli import parse_args, parse_rates
from host.bench.sparse.mappings import MAPPINGS, Rule, layer_kinds
from host.bench.sparse.tables import headline, result_rows
from host.bench.sparse.work import (
    LayerWork,
    ModelResult,
    Variant,
    compression,
    forward_work,
    prune,
    solve_rate,
    sparse_kernel_layers,
    step_times,
    targets_for,
    unstructured_summary,
    work_flops,
)
from host.models import load_model
from host.pruning.command import build_plan
from host.pruning.config import PruningConfig

# ---------------------------------------------------------------- arguments


def test_rates_parsed_and_targets_merge_the_npas_rate():
    assert parse_rates("npas, 3x,10,3") == ("npas", 3.0, 10.0)
    assert targets_for(5.3, ("npas", 3.0, 10.0)) == [(3.0, False), (5.3, True), (10.0, False)]
    assert targets_for(2.0, ("npas", 2.0)) == [(2.0, True)]  # the same target once


@pytest.mark.parametrize("argv, match", [
    (["--rates", "fast"], "neither 'npas'"),
    (["--rates", "1.0x"], "1.1x..100x"),
    (["--rates", ","], "at least one"),
    (["--models", "resnet50"], "no pruning mapping for resnet50"),
    (["--engines", "ours"], "unknown ours"),
    (["--unstructured", "1"], "--unstructured"),
    (["--runs", "0"], "--runs"),
])
def test_bad_arguments_name_the_option(argv, match):
    with pytest.raises(BenchArgError, match=match):
        parse_args(argv)


def test_engines_none_means_ours_only():
    assert parse_args(["--engines", "none"]).engines == ()
    assert parse_args([]).engines == ("ONNX Runtime", "MNN", "ncnn")


# ---------------------------------------------------------------- mappings


def test_rule_texts_substitute_the_rate_and_keep_only_1x1_convs():
    kinds = {"features.1.conv.0.0": "grouped", "features.2.conv.0.0": "1x1",
             "features.2.conv.1.0": "grouped", "features.2.conv.2": "1x1", "fc": "linear"}
    r = Rule("features.*.conv.*", "block", "R", "rows=16", only_1x1=True)
    assert r.texts(0.25, kinds) == ["features.2.conv.0.0=block:0.250000:rows=16",
                                    "features.2.conv.2=block:0.250000:rows=16"]
    assert Rule("conv1", "block_punched", "2x").texts(0.9, kinds) == ["conv1=block_punched:2x"]
    assert "(1x1 only)" in str(r)


def test_every_mapping_prunes_the_layers_it_names():
    cfg = PruningConfig(16, 8)
    for model_name, mappings in MAPPINGS.items():
        model = load_model(model_name)
        kinds = layer_kinds(model)
        for m in mappings:
            plan = build_plan(model, m.texts(0.5, kinds), cfg)
            assert plan.layers, (model_name, m.name)
            if model_name == "vgg16":  # every conv and linear, the first conv at 2x
                assert set(plan.layers) == set(kinds)
                assert plan.layers["features.0"].rate == pytest.approx(0.5)
                assert plan.layers["classifier.0"].scheme == "block"
            if model_name == "resnet18":
                assert plan.layers["layer2.0.downsample.0"].scheme == "block"
                assert plan.layers["layer2.0.conv1"].scheme == "block_punched"
                assert "fc" not in plan.layers
            if m.name == "filter (structured)":  # expansions only: not features.1's depthwise
                assert "features.1.conv.0.0" not in plan.layers
                assert all(kinds[n] == "1x1" for n in plan.layers)


@pytest.mark.parametrize("model_name, mapping", [("resnet18", 0), ("mobilenet_v2", 0)])
def test_rate_solved_for_the_npas_compression_within_two_percent(model_name, mapping):
    model = load_model(model_name).eval()
    m = MAPPINGS[model_name][mapping]
    _, dense = forward_work(model, torch.randn(1, 3, 32, 32))
    solved, pruned, rules = prune(model, m, m.npas, dense)
    assert solved.reachable
    _, works = forward_work(pruned.model, torch.randn(1, 3, 32, 32))
    assert compression(dense, works) == pytest.approx(m.npas, rel=0.02)
    assert solved.compression == pytest.approx(compression(dense, works))
    assert any(f"{solved.rate:.6f}" in r for r in rules)


# ---------------------------------------------------------------- solving


def test_solve_rate_linear_kept_fraction():
    solved = solve_rate(lambda r: 1 / (1 - r), 5.0)  # unstructured everywhere
    assert solved.reachable and solved.rate == pytest.approx(0.8, abs=0.01)
    assert solved.evaluations <= 4


def test_solve_rate_staircase_and_fixed_part():
    def stairs(r):  # 16-channel steps of a 256-wide layer next to a fixed dense part
        kept = max(16, round(256 * (1 - r) / 16) * 16)
        return 1000 / (500 + kept * 2)
    solved = solve_rate(stairs, 1.5)
    assert solved.reachable
    assert solved.compression == pytest.approx(1.5, rel=0.02)


def test_solve_rate_unreachable_says_how_far_it_got():
    solved = solve_rate(lambda r: 1 / (0.5 + 0.5 * (1 - r)), 3.0)  # at most ~2x
    assert not solved.reachable
    assert solved.compression < 2.0
    assert "at most 1.99x" in solved.note(3.0)
    already = solve_rate(lambda r: 4.0 + r, 2.0)  # the fixed rules alone overshoot
    assert already.rate == 0.0 and not already.reachable and "at least" in already.note(2.0)


# ---------------------------------------------------------------- work and compression


def test_forward_work_counts_positions_and_nonzero_weights():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.Flatten(),
                          nn.Linear(8 * 4 * 4, 10))
    with torch.no_grad():
        model[0].weight[:4] = 0
    y, works = forward_work(model, torch.randn(2, 3, 8, 8))
    assert y.shape == (2, 10)
    assert works["0"] == LayerWork("conv", 2 * 4 * 4, 8 * 27, 4 * 27)
    assert works["2"] == LayerWork("linear", 2, 1280, 1280)
    assert works["0"].flops == 2 * 32 * 108 and works["0"].dense_flops == 2 * 32 * 216
    assert work_flops(works) == works["0"].flops + works["2"].flops


def test_compression_over_all_layers_and_by_kind():
    dense = {"c": LayerWork("conv", 10, 100, 100), "fc": LayerWork("linear", 1, 900, 900)}
    pruned = {"c": LayerWork("conv", 10, 100, 25), "fc": LayerWork("linear", 1, 900, 100)}
    assert compression(dense, pruned) == pytest.approx(1000 / 125)
    assert compression(dense, pruned, "conv") == pytest.approx(4.0)
    assert compression(dense, pruned, "linear") == pytest.approx(9.0)
    # a filter-pruned (narrower) layer counts its remaining weights
    shrunk = {"c": LayerWork("conv", 10, 50, 50), "fc": LayerWork("linear", 1, 900, 900)}
    assert compression(dense, shrunk) == pytest.approx(1000 / 950)


def test_sparse_kernel_layers_from_step_flops():
    works = {"a": LayerWork("conv", 100, 1000, 200), "b": LayerWork("conv", 100, 1000, 300),
             "c": LayerWork("conv", 100, 1000, 1000)}
    steps = [SimpleNamespace(name="a.pad", flops=0),
             SimpleNamespace(name="a", flops=2 * 100 * 200 + 100),  # sparse, + epilogue
             SimpleNamespace(name="b", flops=2 * 100 * 1000 + 100),  # kept dense
             SimpleNamespace(name="c", flops=2 * 100 * 1000)]
    assert sparse_kernel_layers(steps, works) == (1, 2)


# ---------------------------------------------------------------- results


def _run(engine, ms, status="ok", threads=1):
    return EngineRun("m", threads, engine, status, samples_ns=[int(ms * 1e6)] * 3,
                     rel_err=1e-6)


def test_result_rows_speedups_fastest_engine_and_headline():
    a = Variant("m", "filter", 1.8, True, work_flops=2_000_000_000)
    b = Variant("m", "block", 1.8, True, work_flops=1_000_000_000)
    c = Variant("m", "block", 3.0, False, note="unreachable: this mapping gives at most 2.5x")
    runs = [_run("ours dense", 10.0), _run(a.label, 5.0), _run(b.label, 4.0),
            _run("ONNX Runtime", 20.0), _run("MNN", 12.0), _run("ncnn", 30.0, "wrong"),
            _run("ncnn on block 1.8x", 11.0), _run("ours dense", 99.0, threads=2)]
    res = ModelResult("m", 4_000_000_000, [a, b, c], runs, {})
    rows = result_rows(res, 1, ("ONNX Runtime", "MNN", "ncnn"))
    ra, rb, rc = rows
    assert (ra.engine, ra.engine_ms) == ("MNN", pytest.approx(12.0))
    assert ra.vs_dense == pytest.approx(2.0) and ra.vs_engine == pytest.approx(2.4)
    assert ra.gflops == pytest.approx(400.0)  # 2 GFLOP of non-zero work in 5 ms
    assert (rb.engine, rb.vs_engine) == ("ncnn (pruned)", pytest.approx(11.0 / 4.0))
    assert rc.sparse_ms is None and rc.vs_dense is None and "unreachable" in rc.detail
    assert headline(res.variants, {r.engine: r for r in runs if r.threads == 1}) is b
    # a faster bundle with a wrong output (timed with --time-wrong) heads only when none is right
    by = {r.engine: r for r in runs if r.threads == 1}
    by[b.label] = _run(b.label, 1.0, "wrong")
    assert headline(res.variants, by) is a
    by[a.label] = _run(a.label, 2.0, "wrong")
    assert headline(res.variants, by) is b


def test_unstructured_summary_and_step_times():
    layer = SimpleNamespace
    layers = [layer(name="x", op="conv2d", samples_ns=(5,)),
              layer(name="x.pad", op="sparse_pad", samples_ns=(7,)),
              layer(name="z", op="conv2d", samples_ns=(11,))]
    assert step_times(layers, {"x", "z"}) == 16
    assert step_times(layers, ops=("sparse_pad",)) == 7
    runs = {"dense": [{"total_ns": 20e6, "conv3x3_ns": 16e6, "glue_ns": 0}] * 3,
            "auto": [{"total_ns": 14e6, "conv3x3_ns": 8e6, "glue_ns": 2e6}] * 3,
            "always": [{"total_ns": 18e6, "conv3x3_ns": 12e6, "glue_ns": 2e6}] * 3}
    assert unstructured_summary({"runs": runs}, "always")["conv_ratio"] == pytest.approx(0.75)
    s = unstructured_summary({"runs": runs})
    assert s["conv_ratio"] == pytest.approx(0.5)
    assert s["conv_glue_ratio"] == pytest.approx(10 / 16)
    assert s["total_ratio"] == pytest.approx(0.7)
    assert s["unstructured_conv_glue_ms"] == pytest.approx(10.0)


# ---------------------------------------------------------------- host


@pytest.mark.host
def test_small_run_checks_outputs_and_writes_every_sample(runner_binary, cc, tmp_path):
    from host.bench.sparse.cli import main

    out = tmp_path / "sparse.json"
    rc = main(["--models", "resnet18", "--input-size", "32", "--runs", "2", "--warmup", "1",
               "--threads", "1", "--rates", "npas", "--engines", "none",
               "--cache", str(tmp_path / "cache"), "--runner", str(runner_binary),
               "--json", str(out)])
    assert rc == 0
    rec = json.loads(out.read_text())
    (model,) = rec["models"]
    (v,) = model["variants"]
    assert v["npas"] and v["compression"] == pytest.approx(5.3, rel=0.02)
    assert v["sparse_layers"] == v["masked_layers"] == 20
    runs = {r["engine"]: r for r in model["results"]}
    assert runs["ours dense"]["status"] == "ok"
    sparse = runs[v["label"]]
    assert sparse["status"] == "ok" and sparse["rel_err"] <= 1e-3
    assert len(sparse["samples_ns"]) == 2
    u = model["unstructured"]
    # at 32x32 inputs the Winograd layers are small: the cost model keeps them all sparse too
    assert u["sparse_layers"] == {"auto": 16, "always": 16}
    assert u["threads"]["1"]["rel_err"] <= 1e-3
    assert u["summary"]["1"]["auto"]["unstructured_conv_ms"] > 0
    assert u["summary"]["1"]["always"]["unstructured_conv_ms"] > 0
