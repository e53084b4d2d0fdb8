"""host tier: host/bench/ncnn_int8.py turns pnnx's fp32 ncnn model of a tiny CNN (conv, fused
ReLU, depthwise, 1x1, global pool, linear) into ncnn's int8 format: the .param carries
int8_scale_term where ncnn2int8 puts it (102 where a conv feeds a conv), the .bin holds int8
weights with ncnn's tag, per-channel scales and bottom-blob scales, ncnn loads it and runs it
in int8 (its output differs from fp32 by quantization noise only), within a stated bound of
PyTorch. An arm64-tier case runs it in the arm64 Python under qemu too."""

from __future__ import annotations

import importlib.util
import json
import struct
import subprocess

import numpy as np
import pytest
import torch
from torch import nn

from host.bench import ncnn_int8 as q
from host.bench.engines import NcnnEngine, Workload

# int8 against fp32 on this model: cosine at least, max |diff| / max |fp32| at most
COSINE_MIN, REL_ERR_MAX = 0.995, 0.08


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a.ravel() @ b.ravel() / (np.linalg.norm(a) * np.linalg.norm(b)))


def _rel(a: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(a - ref).max() / np.abs(ref).max())


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    for mod in ("ncnn", "pnnx"):
        if importlib.util.find_spec(mod) is None:
            pytest.skip(f"the host package {mod} is missing (the 'bench' extra)")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(),
                          nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.ReLU(),
                          nn.Conv2d(16, 24, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(24, 10)).eval()
    x = torch.randn(1, 3, 20, 20, generator=torch.Generator().manual_seed(1))
    w = Workload("tiny", 20, model, x, tmp_path_factory.mktemp("ncnn-int8"))
    cal = [torch.randn(1, 3, 20, 20, generator=torch.Generator().manual_seed(s)).numpy()
           for s in (2, 3, 4, 5)]
    eng = q.NcnnInt8Engine(cal)
    eng.prepare(w)
    with torch.inference_mode():
        ref = model(x).numpy()
    return w, eng, cal, ref


def test_param_fields(tiny):
    w, _, _, _ = tiny
    layers = {la.name: la for la in q.parse_param(w.files["ncnn-int8.param"].read_text())}
    fp32 = {la.name: la for la in q.parse_param(w.files["ncnn.param"].read_text())}
    terms = {la.type + ("+relu" if la.params.get("9") else ""): la.params.get("8")
             for la in layers.values() if la.type in q.QUANTIZED}
    # conv -> depthwise and depthwise -> 1x1 are fused requantizations (ncnn2int8's rule);
    # the 1x1 feeds a pooling layer and the linear ends the net: dequantized fp32 outputs
    assert terms == {"Convolution+relu": "102", "ConvolutionDepthWise+relu": "101",
                     "Convolution": "2", "InnerProduct": "2"}, terms
    for name, la in layers.items():  # nothing else changed
        assert {k: v for k, v in la.params.items() if k != "8"} == fp32[name].params
        assert (la.type, la.bottoms, la.tops) == (fp32[name].type, fp32[name].bottoms,
                                                  fp32[name].tops)


def test_bin_layout(tiny):
    """The .bin read back in ncnn's load_model order: int8 weights (tag, bytes, padding),
    fp32 bias, weight scales (one per output channel or group), bottom scale, top scale
    where fused; weights dequantize to the fp32 ones within half a step."""
    w, _, cal, _ = tiny
    data = w.files["ncnn-int8.bin"].read_bytes()
    fp32 = q._Reader(w.files["ncnn.bin"].read_bytes())
    pos = 0

    def floats(n: int) -> np.ndarray:
        nonlocal pos
        a = np.frombuffer(data, "<f4", n, pos)
        pos += 4 * n
        return a

    scales = q.calibrate(w.files["ncnn.param"], w.files["ncnn.bin"], cal)
    for la in q.parse_param(w.files["ncnn-int8.param"].read_text()):
        if la.type not in q.QUANTIZED:
            continue
        n_out, size = int(la.params["0"]), int(la.params[q._WSIZE[la.type]])
        ref_w = fp32.tagged(size, la.name)
        ref_b = fp32.raw(n_out)
        assert struct.unpack_from("<I", data, pos)[0] == q.INT8_TAG
        wq = np.frombuffer(data, np.int8, size, pos + 4).astype(np.float32)
        pos += 4 + (size + 3) // 4 * 4
        np.testing.assert_array_equal(floats(n_out), ref_b)
        groups = int(la.params.get("7", n_out))
        ws = floats(groups)
        assert np.abs(wq).max() == 127
        deq = (wq.reshape(groups, -1) / ws[:, None]).ravel()
        step = (1 / ws).repeat(size // groups)
        assert np.all(np.abs(deq - ref_w) <= 0.5 * step + 1e-7)
        assert floats(1)[0] == pytest.approx(scales[la.name], rel=1e-6)
        if int(la.params["8"]) > 100:
            assert floats(1)[0] > 0
    assert pos == len(data)
    assert len(data) < 0.4 * len(w.files["ncnn.bin"].read_bytes())


def test_runs_in_int8(tiny):
    w, eng, _, ref = tiny
    lo = eng.load(w, 1)
    got = lo.infer()
    fp32 = NcnnEngine()
    fp32.prepare(w)
    got32 = fp32.load(w, 1).infer()
    assert _rel(got32, ref) < 1e-4
    # quantization noise is there (ncnn did not fall back to fp32) and small
    assert _rel(got, got32) > 1e-4
    assert _cos(got, ref) >= COSINE_MIN and _rel(got, ref) <= REL_ERR_MAX, \
        (_cos(got, ref), _rel(got, ref))
    lo.close()


def test_cached_and_deterministic(tiny):
    w, _, cal, _ = tiny
    p, b = q.int8_files(w.files["ncnn.param"], w.files["ncnn.bin"], cal)
    assert (p, b) == (w.files["ncnn-int8.param"], w.files["ncnn-int8.bin"])
    text, data, _ = q.convert(w.files["ncnn.param"].read_text(), w.files["ncnn.bin"].read_bytes(),
                              q.calibrate(w.files["ncnn.param"], w.files["ncnn.bin"], cal))
    assert text == p.read_text() and data == b.read_bytes()


def test_weight_rounding():
    w = np.array([0.5, -0.5, 1.0, -0.25, 0.004, 0.0], np.float32)
    s = q.weight_scales(w, 2)  # groups: [0.5 -0.5 1.0] and [-0.25 0.004 0]
    np.testing.assert_allclose(s, [127.0, 508.0])
    # half away from zero, as ncnn's float2int8
    assert q.quantize_weights(w, s).tolist() == [64, -64, 127, -127, 2, 0]


def test_kl_threshold():
    """All mass in the first 200 bins and one outlier far out: KL clips near 200, not at the
    outlier (absmax would keep it)."""
    hist = np.zeros(q.HIST_BINS)
    hist[:200] = np.linspace(1000, 10, 200)
    hist[2000] = 1
    t = q.kl_threshold_bin(hist)
    assert 150 <= t <= 260, t
    assert q.blob_scale(10.0, hist, "kl") > 5 * q.blob_scale(10.0, hist, "absmax")


@pytest.mark.arm64
def test_arm64_guest_int8(tiny):
    """ncnn's aarch64 build runs the same int8 model in the arm64 Python (guest.py --precision
    int8) within the same bound."""
    from host.bench.arm64 import pyroot

    try:
        pyroot.find_pyroot()
        pyroot.find_qemu()
    except FileNotFoundError as e:
        pytest.skip(f"arm64 tier: {e}")
    w, _, _, ref = tiny
    np.save(w.cache / "x.npy", w.example.numpy())
    cmd, env = pyroot.guest_command([
        "--engine", "ncnn", "--precision", "int8", "--model", str(w.files["ncnn-int8.param"]),
        "--weights", str(w.files["ncnn-int8.bin"]), "--input", str(w.cache / "x.npy"),
        "--output", str(w.cache / "y.npy"), "--warmup", "0", "--runs", "1"])
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    assert json.loads(p.stdout.strip().splitlines()[-1])["precision"] == "int8"
    got = np.load(w.cache / "y.npy")
    assert _cos(got, ref) >= COSINE_MIN and _rel(got, ref) <= REL_ERR_MAX, \
        (_cos(got, ref), _rel(got, ref))


def test_bench_int8_peers(tiny):
    """Both ncnn engines are in ``bench int8``'s registry and answer its protocol (load at 1
    and 2 threads, ``run_on`` another input, a sample); ncnn int8 calibrates on the batches
    every int8 engine there uses (``peers.calibration``)."""
    from host.bench import int8 as bench_int8
    from host.bench import peers

    w, _, _, _ = tiny
    names = bench_int8.engine_choices()
    assert "ncnn" in names and "ncnn int8" in names
    eng = q.NcnnInt8Engine()
    eng.prepare(w)
    want = q.int8_files(w.files["ncnn.param"], w.files["ncnn.bin"], peers.calibration(w.shape))
    assert (w.files["ncnn-int8.param"], w.files["ncnn-int8.bin"]) == want
    x = torch.randn(1, 3, 20, 20, generator=torch.Generator().manual_seed(9))
    with torch.inference_mode():
        ref = w.model(x).numpy()
    for cls in (q.NcnnPeer, q.NcnnInt8Engine):
        e = cls()
        e.prepare(w)
        for threads in (1, 2):
            lo = e.load(w, threads)
            try:
                got = e.run_on(x.numpy())
                assert lo.sample_ns() > 0
            finally:
                lo.close()
            if cls is q.NcnnPeer:
                assert _rel(got, ref) < 1e-4
            else:
                assert _cos(got, ref) >= COSINE_MIN and 1e-4 < _rel(got, ref) <= REL_ERR_MAX
