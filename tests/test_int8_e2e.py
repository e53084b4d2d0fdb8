"""int8 end to end on the host runner (--device local): the CLI's --precision int8 and
--calibration, a mixed-precision model and ResNet-18 run by the real runner over gRPC (on 2
threads: work split across the pool gives the same bytes as one thread in-process), and the
int8 model's top-1 agrees with the float32 model's."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ctypes_exec import run_bundle
from zoo import run_on_runner, torchvision_model

from codegen import HostToolchain, compile_model, load_bundle

pytestmark = pytest.mark.host


def _compile_cli(capsys, *argv: str) -> tuple[int, str, str]:
    from host.cli import main

    rc = main(["compile", *argv])
    cap = capsys.readouterr()
    return rc, " ".join(cap.out.split()), " ".join(cap.err.split())


def test_compile_int8_with_user_calibration_runs_on_the_runner(capsys, tmp_path, local_runner):
    shape = (1, 3, 32, 32)
    g = torch.Generator().manual_seed(3)
    cal = tmp_path / "cal.npy"
    np.save(cal, torch.randn((3, *shape), generator=g).numpy())
    out = tmp_path / "b"
    rc, text, err = _compile_cli(capsys, "zoo:small_cnn", "--input-shape", "1,3,32,32",
                                 "-o", str(out), "--precision", "int8", "--calibration",
                                 str(cal), "--no-tuning-db", "--keep-fp32", "dw")
    assert rc == 0, err
    # the layers without an int8 kernel are named, with the reason, and stay float32
    assert "in float32:" in text and "se.mul_channel" not in text  # int8 now
    assert "grouped: grouped conv" in text and "dw: kept in float32 (asked)" in text
    bundle = load_bundle(out)
    assert "_qs8__" in (out / "kernels.c").read_text()
    x = torch.randn(shape, generator=g)
    got = run_on_runner(local_runner, bundle, x, threads=2)
    (want,) = run_bundle(bundle, [x.numpy()])
    assert np.array_equal(got, want)
    from zoo import small_cnn

    with torch.no_grad():
        fp32 = small_cnn()(x).numpy()
    assert np.abs(got - fp32).max() <= 0.05 * np.abs(fp32).max()


def test_keep_fp32_of_an_unknown_layer_is_refused(capsys, tmp_path):
    rc, _, err = _compile_cli(capsys, "zoo:small_cnn", "--input-shape", "1,3,32,32",
                              "-o", str(tmp_path / "b"), "--precision", "int8",
                              "--keep-fp32", "nope")
    assert rc != 0 and "Traceback" not in err
    assert "no layer named 'nope'" in err and "stem" in err


def test_calibration_of_the_wrong_shape_is_refused(capsys, tmp_path):
    cal = tmp_path / "cal.npy"
    np.save(cal, np.zeros((2, 3, 16, 16), np.float32))
    rc, _, err = _compile_cli(capsys, "zoo:small_cnn", "--input-shape", "1,3,32,32",
                              "-o", str(tmp_path / "b"), "--precision", "int8",
                              "--calibration", str(cal))
    assert rc != 0 and "Traceback" not in err
    assert "--calibration" in err and "shape [2, 3, 16, 16]" in err
    assert "[k, 1, 3, 32, 32]" in err


def test_int8_resnet18_top1_agrees_with_fp32_on_the_runner(tmp_path, local_runner):
    model = torchvision_model("resnet18")
    shape = (1, 3, 64, 64)
    g = torch.Generator().manual_seed(5)
    cal = [[torch.randn(shape, generator=g)] for _ in range(4)]
    xs = [torch.randn(shape, generator=g) for _ in range(4)]
    bundle = compile_model(model, xs[0], tmp_path / "r18",
                           toolchain=HostToolchain(precision="int8"), calibration=cal)
    ops = [s.op for s in bundle.manifest.steps]
    # at the input only: the global pool before the fc runs in int8 too
    assert ops.count("quantize") == 1 and "dequantize" not in ops
    agree = 0
    for x in xs:
        got = run_on_runner(local_runner, bundle, x, threads=2)
        (inproc,) = run_bundle(bundle, [x.numpy()])
        assert np.array_equal(got, inproc)
        with torch.no_grad():
            fp32 = model(x).numpy()
        cos = float((got * fp32).sum() / np.linalg.norm(got) / np.linalg.norm(fp32))
        assert cos > 0.999
        agree += int(got.argmax() == fp32.argmax())
    assert agree == len(xs)
