"""Pure-Python tier of the dense benchmark: arguments, order, ratios, tables. No engine runs."""

import numpy as np
import pytest

from host.bench.common import BenchArgError, EngineRun, gflops, max_rel_error, rotated
from host.bench.dense import parse_args, ratio_to_fastest, ratios, table_rows, tuned_bundle


def test_arguments_parsed_and_deduplicated():
    a = parse_args(["--models", "resnet18, vgg16,resnet18", "--threads", "2,1,2",
                    "--runs", "5", "--engines", "ours,ncnn"])
    assert a.models == ("resnet18", "vgg16")
    assert a.threads == (2, 1)
    assert (a.runs, a.engines) == (5, ("ours", "ncnn"))


@pytest.mark.parametrize("argv, match", [
    (["--threads", "0"], "≥ 1"),
    (["--threads", "one"], "comma-separated"),
    (["--runs", "0"], "--runs"),
    (["--warmup", "-1"], "--warmup"),
    (["--input-size", "16"], "--input-size"),
    (["--models", ","], "at least one model"),
    (["--engines", "ours,TensorRT"], "unknown TensorRT"),
    (["--tolerance", "0"], "--tolerance"),
])
def test_bad_arguments_name_the_option(argv, match):
    with pytest.raises(BenchArgError, match=match):
        parse_args(argv)


def test_round_robin_rotates_so_every_engine_leads():
    engines = ["ours", "PyTorch", "MNN"]
    firsts = [rotated(engines, rep)[0] for rep in range(3)]
    assert firsts == engines
    assert sorted(rotated(engines, 4)) == sorted(engines)
    assert rotated([], 3) == []


def test_ratio_to_the_fastest_available():
    assert ratio_to_fastest(30.0, {"ONNX Runtime": 10.0, "PyTorch": 20.0}) == \
        ("ONNX Runtime", 3.0)
    assert ratio_to_fastest(30.0, {"ONNX Runtime": None, "PyTorch": 60.0}) == ("PyTorch", 0.5)
    assert ratio_to_fastest(30.0, {"MNN": None, "ncnn": None}) is None
    assert ratio_to_fastest(None, {"MNN": 1.0}) is None


def test_ratios_ignore_engines_that_were_not_ok():
    runs = [EngineRun("m", 1, "ours", "ok", samples_ns=[40_000_000]),
            EngineRun("m", 1, "PyTorch", "ok", samples_ns=[20_000_000]),
            EngineRun("m", 1, "ONNX Runtime", "wrong", rel_err=0.5, samples_ns=[1_000_000]),
            EngineRun("m", 1, "ncnn", "ok", samples_ns=[80_000_000, 80_000_000]),
            EngineRun("m", 1, "MNN", "unavailable", "not installed")]
    r = ratios(runs)["ours"]
    assert r["frameworks"] == ("PyTorch", pytest.approx(2.0))
    assert r["mobile"] == ("ncnn", pytest.approx(0.5))


def test_table_rows_gflops_and_peak_fraction():
    runs = [EngineRun("m", 2, "ours", "ok", samples_ns=[10_000_000, 20_000_000, 30_000_000]),
            EngineRun("m", 2, "MNN", "unavailable", "no wheel")]
    ok, missing = table_rows(runs, flops=4_000_000_000, peak_gflops=800.0)
    assert ok.median_ms == pytest.approx(20.0)
    assert ok.gflops == pytest.approx(200.0)  # 4 GFLOP in 20 ms
    assert ok.peak_fraction == pytest.approx(0.25)
    assert (missing.median_ms, missing.gflops, missing.detail) == (None, None, "no wheel")
    assert gflops(None, 5.0) is None and gflops(10, 0.0) is None


def test_max_rel_error():
    ref = np.array([[1.0, -4.0, 2.0]], dtype=np.float32)
    assert max_rel_error(ref.copy(), ref) == 0.0
    assert max_rel_error(ref + np.float32(0.04), ref) == pytest.approx(0.01)
    assert max_rel_error(ref.reshape(3), ref) == 0.0  # same values, other shape: accepted
    assert max_rel_error(np.zeros(4), ref) == float("inf")
    assert max_rel_error(np.array([[np.nan, 0, 0]]), ref) == float("inf")


def test_no_tuned_column_without_a_tuning_database(tmp_path):
    assert tuned_bundle(None, 1, tmp_path / "no-such-db.json", tmp_path / "out") is None
