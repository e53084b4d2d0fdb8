"""host tier: the int8 benchmark's peers (host/bench/peers.py) on a tiny CNN (conv + ReLU,
depthwise, residual add, max pool, global pool, Linear): each converts it, loads at 1 and 2
threads, runs it on seeded inputs other than the workload's example, and agrees with PyTorch
float32: the float32 engines within 1e-4 of max |fp32| (max abs difference), the int8 ones by
cosine similarity at least 0.99 (their outputs differ by quantization noise only). Skipped,
with the reason, where the engine's package is not installed (pyproject's bench extra).

The pure part (no package needed): the registry, --engines, and ours / the fastest int8 peer.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
from torch import nn

from host.bench import int8 as bench_int8
from host.bench import peers
from host.bench.common import BenchArgError, EngineRun
from host.bench.engines import Workload
from host.models import example_inputs

FP32_MAX_DIFF = 1e-4  # of max |fp32 output|
INT8_MIN_COSINE = 0.99


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.pw = nn.Conv2d(16, 16, 1)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        y = torch.relu(self.conv(x))
        y = torch.relu(self.pw(self.dw(y)) + y)
        y = self.pool(y).mean((2, 3))
        return self.fc(y)


PACKAGES = {
    peers.ExecuTorchEngine: ("executorch", "torchao"),
    peers.ExecuTorchInt8Engine: ("executorch", "torchao"),
    peers.OpenVinoEngine: ("openvino", "onnx"),
    peers.OpenVinoInt8Engine: ("openvino", "nncf", "onnx"),
    peers.MnnInt8Engine: ("MNN", "onnx"),
}


@pytest.fixture(scope="module")
def workload(tmp_path_factory) -> Workload:
    torch.manual_seed(0)
    model = Tiny().eval()
    (x,) = example_inputs((1, 3, 24, 24))
    return Workload("tiny", 24, model, x, tmp_path_factory.mktemp("int8-peers"))


@pytest.mark.host
@pytest.mark.parametrize("cls", list(PACKAGES), ids=lambda c: c.name)
def test_peer_loads_runs_and_agrees_with_fp32(cls, workload):
    missing = [m for m in PACKAGES[cls] if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"{cls.name}: {', '.join(missing)} not installed (pyproject's bench extra)")
    eng = cls()
    assert eng.prepare(workload)  # says what it converted with
    xs = [example_inputs(workload.shape, seed=300 + i)[0] for i in range(3)]
    with torch.inference_mode():
        refs = [workload.model(x).numpy() for x in xs]
    for threads in (1, 2):
        lo = eng.load(workload, threads)
        try:
            outs = [eng.run_on(x.numpy()) for x in xs]
            assert lo.sample_ns() > 0
            with torch.inference_mode():
                example_ref = workload.model(workload.example).numpy()
            same = np.abs(lo.infer().reshape(example_ref.shape) - example_ref).max()
        finally:
            lo.close()
        for o, r in zip(outs, refs, strict=True):
            assert o.shape == r.shape or o.size == r.size
            o = o.reshape(r.shape)
            if cls.name.endswith("int8"):
                cos = float(o.ravel() @ r.ravel() / (np.linalg.norm(o) * np.linalg.norm(r)))
                assert cos >= INT8_MIN_COSINE, f"{cls.name}, {threads} threads: cosine {cos}"
                assert not np.array_equal(o, r)  # really quantized, not the fp32 graph
            else:
                diff = float(np.abs(o - r).max() / np.abs(r).max())
                assert diff <= FP32_MAX_DIFF, f"{cls.name}, {threads} threads: {diff}"
        scale = np.abs(example_ref).max()
        assert same <= (0.2 if cls.name.endswith("int8") else FP32_MAX_DIFF) * scale


def test_every_int8_engine_and_its_fp32_twin_is_registered():
    names = bench_int8.engine_choices()
    for want in ("ours fp32", "ours int8", "ONNX Runtime", "ONNX Runtime int8", "ExecuTorch",
                 "ExecuTorch int8", "OpenVINO", "OpenVINO int8", "MNN int8"):
        assert want in names
    assert len(set(names)) == len(names)


def test_unknown_engine_is_refused_with_the_choices():
    with pytest.raises(BenchArgError, match="choose from ours fp32, ours int8"):
        bench_int8.main(["--engines", "ours int8,TensorRT"])


def _run(engine: str, *ms: float) -> EngineRun:
    return EngineRun("m", 1, engine, "ok", samples_ns=[int(m * 1e6) for m in ms])


def test_ours_against_the_fastest_int8_peer_only():
    runs = {"ours int8": _run("ours int8", 4, 5, 6), "ours fp32": _run("ours fp32", 1, 1, 1),
            "OpenVINO": _run("OpenVINO", 2, 2, 2),  # fp32: not an int8 peer
            "ExecuTorch int8": _run("ExecuTorch int8", 8, 10, 12),
            "MNN int8": _run("MNN int8", 9, 10, 11), "OpenVINO int8": EngineRun(
                "m", 1, "OpenVINO int8", "unavailable", "no package")}
    name, median, p10 = bench_int8.versus_fastest_int8(runs)
    assert name in ("ExecuTorch int8", "MNN int8")  # equal medians: either is the fastest
    assert median == pytest.approx(0.5)
    assert bench_int8.versus_fastest_int8({"ours int8": runs["ours int8"]}) is None


def test_every_int8_engine_calibrates_on_the_same_batches():
    a, b = peers.calibration((1, 3, 8, 8)), bench_int8.calibration((1, 3, 8, 8))
    assert len(a) == len(peers.CALIBRATION_SEEDS) > 1
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not np.array_equal(a[0], a[1])
