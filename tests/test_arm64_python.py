"""arm64 tier: the arm64 Python (scripts/build_arm64_python.sh builds build/arm64-python) runs
host/bench/arm64/guest.py under qemu-aarch64 on models the host converted with the
benchmark's own converters (host/bench/engines.py), and ncnn's and MNN's aarch64 builds give
PyTorch's output: to fp32 accuracy at fp32, to fp16 accuracy at fp16 (where qemu's Cortex-A76
really computes in fp16). qemu's timings mean nothing, so none are asserted."""

from __future__ import annotations

import importlib.util
import json
import subprocess

import numpy as np
import pytest
import torch
from torch import nn

from host.bench.arm64 import pyroot
from host.bench.engines import MnnEngine, NcnnEngine, Workload

pytestmark = pytest.mark.arm64

GUEST_TIMEOUT_S = 120.0
FP32_TOL, FP16_TOL = 1e-4, 3e-2
CASES = [("ncnn", "fp32"), ("ncnn", "fp16"), ("mnn", "fp32"), ("mnn", "fp16")]


def _rel_err(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(got - want).max() / max(float(np.abs(want).max()), 1e-12))


@pytest.fixture(scope="module")
def built():
    try:
        pyroot.find_pyroot()
        pyroot.find_qemu()
    except FileNotFoundError as e:
        pytest.skip(f"arm64 tier: {e}")


@pytest.fixture(scope="module")
def converted(built, tmp_path_factory):
    """A tiny seeded CNN converted to ncnn and MNN on the host, its input and PyTorch's
    output, in one folder."""
    for mod in ("MNN", "pnnx", "onnx"):
        if importlib.util.find_spec(mod) is None:
            pytest.skip(f"arm64 tier: the host package {mod} is missing (the 'bench' extra: "
                        f"scripts/bench.sh installs it)")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
                          nn.Conv2d(8, 8, 3, stride=2), nn.Flatten(),
                          nn.Linear(8 * 7 * 7, 10)).eval()
    x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    folder = tmp_path_factory.mktemp("arm64-python")
    w = Workload("tiny", 16, model, x, folder)
    NcnnEngine().prepare(w)
    MnnEngine().prepare(w)
    with torch.inference_mode():
        want = model(x).numpy()
    np.save(folder / "x.npy", x.numpy())
    return w, want


def _guest(args: list[str]) -> subprocess.CompletedProcess:
    cmd, env = pyroot.guest_command(args)
    return subprocess.run(cmd, env=env, capture_output=True, text=True,
                          timeout=GUEST_TIMEOUT_S)


@pytest.fixture(scope="module")
def outputs(converted):
    """outputs(engine, precision) -> (the JSON line, the output), run once per pair."""
    w, _ = converted
    cache: dict = {}

    def get(engine: str, precision: str):
        if (engine, precision) not in cache:
            model = (["--model", str(w.files["ncnn.param"]), "--weights",
                      str(w.files["ncnn.bin"])] if engine == "ncnn"
                     else ["--model", str(w.files["mnn"])])
            out = w.cache / f"out-{engine}-{precision}.npy"
            p = _guest(["--engine", engine, "--precision", precision, *model,
                        "--input", str(w.cache / "x.npy"), "--output", str(out),
                        "--warmup", "1", "--runs", "2"])
            assert p.returncode == 0, p.stderr[-3000:]
            lines = p.stdout.splitlines()
            assert len(lines) == 1, f"stdout is not one JSON line: {p.stdout!r}"
            cache[engine, precision] = (json.loads(lines[0]), np.load(out))
        return cache[engine, precision]

    return get


@pytest.mark.parametrize("engine, precision", CASES)
def test_guest_output_equals_pytorch(engine, precision, outputs, converted):
    _, want = converted
    info, got = outputs(engine, precision)
    assert info["engine"] == engine and info["precision"] == precision
    assert info["version"] == {"ncnn": "1.0.20250503", "mnn": "3.6.1"}[engine]
    assert info["output_shape"] == list(want.shape) and got.shape == want.shape
    assert got.dtype == np.float32
    tol = FP32_TOL if precision == "fp32" else FP16_TOL
    assert _rel_err(got, want) < tol


@pytest.mark.parametrize("engine", ["ncnn", "mnn"])
def test_fp16_really_computes_in_fp16(engine, outputs):
    """Storage and arithmetic in fp16 round differently from fp32: an equal output would mean
    the fp16 options were ignored (or the emulated core lacks fp16)."""
    _, fp32 = outputs(engine, "fp32")
    _, fp16 = outputs(engine, "fp16")
    assert not np.array_equal(fp16, fp32)


def test_guest_reports_a_missing_model(built, tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((1, 3, 4, 4), np.float32))
    p = _guest(["--engine", "ncnn", "--precision", "fp32", "--model",
                str(tmp_path / "none.param"), "--input", str(tmp_path / "x.npy"),
                "--output", str(tmp_path / "y.npy"), "--warmup", "0", "--runs", "1"])
    assert p.returncode == 1
    assert p.stdout == ""
    assert "ncnn .param not found" in p.stderr and "none.param" in p.stderr


def test_guest_command_places_plugin_args_before_the_program(built):
    plugin = ["-plugin", "/x/libcount.so,out=/tmp/y"]
    cmd, env = pyroot.guest_command(["--runs", "1"], plugin=plugin)
    python = str(pyroot.PYROOT / "usr" / "bin" / "python3.11")
    assert cmd[1:5] == ["-cpu", "cortex-a76", "-L", str(pyroot.PYROOT)]
    assert cmd[5:7] == plugin
    assert cmd[7:] == [python, str(pyroot.GUEST_SCRIPT), "--runs", "1"]
    assert env["PYTHONPATH"] == str(pyroot.PYROOT / "site")
    assert env["PYTHONNOUSERSITE"] == "1" and "PYTHONHOME" not in env


def test_ncnn_per_layer_counts_pair_with_our_steps(converted, tmp_path):
    """count_guest under the plugin: the counted runs, then one inference layer by layer whose
    weighted layers pair with our steps by FLOPs (the tiny CNN's two convs and its Linear)."""
    from host.bench.arm64 import counting
    from host.bench.arm64.run import LayerCount, Record, count_guest, pair_layers

    try:
        counting.find_plugin()
    except counting.CountError as e:
        pytest.skip(f"arm64 tier: {e}")
    w, want = converted
    rec = Record("tiny", "ncnn", "fp32", 16, "ncnn")
    count_guest(rec, [w.files["ncnn.param"], w.files["ncnn.bin"]], w.cache / "x.npy", want,
                tmp_path, runs=2, tolerance=FP32_TOL, timeout_s=GUEST_TIMEOUT_S,
                per_layer=True)
    assert rec.status == "ok" and len(rec.runs) == 2 and rec.counts.total > 0
    # the same work twice; only the allocator's paths differ (tens of instructions)
    assert rec.runs[0].total == pytest.approx(rec.runs[1].total, rel=0.01)
    assert rec.runs[0].by_class["fmla"] == rec.runs[1].by_class["fmla"]
    weighted = [la for la in rec.layers if la.flops]
    assert [la.op for la in weighted] == ["Convolution", "Convolution", "InnerProduct"]
    assert [la.flops for la in weighted] == [2 * 8 * 3 * 9 * 16 * 16, 2 * 8 * 8 * 9 * 7 * 7,
                                             2 * 392 * 10]
    assert all(la.counts.total > 0 for la in rec.layers)
    # our steps of the same work (a fused bias adds one operation per output) pair with them
    ours = [LayerCount(n, op, "", k, f, counting.Counts({"total": 1}))
            for n, op, k, f in (("0", "conv2d", "conv2d_3x3s1_nchw__neon_2xNw",
                                 weighted[0].flops + 8 * 256),
                                ("pool", "maxpool2d", "", 10),
                                ("2", "conv2d", "conv2d_3x3s2_nchw4c__neon_2xNw",
                                 weighted[1].flops + 8 * 49),
                                ("4", "linear", "", weighted[2].flops + 10))]
    assert [p.theirs.name if p.theirs else None for p in pair_layers(ours, rec.layers)] == \
        [la.name for la in weighted]


def test_pairing_keeps_depthwise_apart_from_convs_of_the_same_work():
    from host.bench.arm64 import counting
    from host.bench.arm64.run import LayerCount, pair_layers

    c = counting.Counts({"total": 1})
    theirs = [LayerCount("dw", "ConvolutionDepthWise", "", "", 1000, c),
              LayerCount("pw", "Convolution", "", "", 1000, c)]
    ours = [LayerCount("a.pw", "conv2d", "", "conv2d_1x1s1_nchw4c__neon_2xNw", 1010, c),
            LayerCount("a.dw", "conv2d", "", "dwconv2d_3x3s1_nchw4c__neon_1xNw", 1010, c)]
    assert [p.theirs.name for p in pair_layers(ours, theirs)] == ["pw", "dw"]


def test_ncnn_param_flops_read_each_weighted_layer():
    from host.bench.arm64.run import ncnn_layer_flops

    param = ("7767517\n3 3\nInput in0 0 1 in0\n"
             "Convolution conv_0 1 1 in0 1 0=8 1=3 11=3 5=1 6=216\n"
             "ConvolutionDepthWise dw_0 1 1 1 2 0=8 1=3 6=72 7=8\n"
             "InnerProduct fc 1 1 2 out0 0=10 1=1 2=80\n"
             "Pooling pool 1 1 2 3 0=0 1=2\n")
    assert ncnn_layer_flops(param) == {"conv_0": (432, "Convolution"),
                                       "dw_0": (144, "ConvolutionDepthWise"),
                                       "fc": (160, "InnerProduct")}
