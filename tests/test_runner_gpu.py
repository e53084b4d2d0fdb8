"""OpenCL tier: the runner's GPU backend, through the real runner (PoCL here).

Output equality with torch for the GPU emitter's models is in test_codegen_opencl.py; this
file covers the profile command and the failures a user can meet."""

from __future__ import annotations

import dataclasses
import json
import os
import statistics

import pytest
from zoo import small_cnn

from codegen import OpenClToolchain, compile_model
from codegen.bundle import artifact_ref
from host.cli import main
from host.devices.local import LocalRunner, LocalRunnerConfig
from host.devices.session import Session
from host.measure import MeasureConfig
from host.rpc.client import RunnerError

pytestmark = pytest.mark.opencl


@pytest.fixture(scope="module")
def gpu_runner(local_runner):
    info = local_runner.client().device_info()
    if not any(p.devices for p in info.opencl_platforms):
        pytest.skip(f"opencl tier: the runner sees no OpenCL device ({info.opencl_status})")
    return local_runner


def _gpu_bundle(tmp_path, name="small_gpu", precision="fp32"):
    import torch
    x = torch.randn(1, 3, 32, 32)
    return compile_model(small_cnn(), x, tmp_path / name, name=name,
                         toolchain=OpenClToolchain(precision=precision))


def test_profile_gpu_resnet18_100_samples_and_layers_add_up(capsys, gpu_runner, tmp_path):
    """The issue's acceptance check at full size."""
    rc = main(["profile", "--device", "local", "--backend", "gpu", "resnet18", "--json",
               "--per-layer", "--warmup", "1", "--store", str(tmp_path / "s")])
    out = capsys.readouterr().out
    assert rc == 0
    d = json.loads(out)
    assert d["backend"] == "gpu" and len(d["samples_ns"]) == 100
    layers = d["layers"]
    assert len(layers) >= 20 and all(len(la["samples_ns"]) == 100 for la in layers)
    share = statistics.median(sum(la["samples_ns"][i] for la in layers) / d["samples_ns"][i]
                              for i in range(100))
    assert 0.9 <= share <= 1.1


def test_kernel_that_fails_to_build_names_it(gpu_runner, tmp_path):
    b = _gpu_bundle(tmp_path)
    src = b.file("opencl")
    text = src.read_text()
    victim = b.manifest.steps[2].symbol
    head, sig, body = text.partition(f"__kernel void {victim}(")
    src.write_text(head + sig + body.replace("{", "{ undeclared_thing = 1;", 1))
    arts = tuple(artifact_ref(b.path, a.role, a.kind, a.file) for a in b.manifest.artifacts)
    broken = dataclasses.replace(b, manifest=dataclasses.replace(b.manifest, artifacts=arts))
    with Session(gpu_runner) as s:
        with pytest.raises(RunnerError) as e:
            s.load(broken, MeasureConfig(backend="gpu"))
        assert e.value.code == "FAILED_PRECONDITION"
        assert victim in e.value.message and "undeclared_thing" in e.value.message
        # still serving: the intact bundle loads and runs
        good = _gpu_bundle(tmp_path, "good")
        key = s.load(good, MeasureConfig(backend="gpu"))
        assert len(s.benchmark(key, MeasureConfig(runs=3, warmup=1)).samples_ns) == 3


def test_work_items_and_local_size_past_the_device_are_refused(gpu_runner, tmp_path):
    """Issue 19 (3): work_items of 2^40 passed validation and tripped an assertion in the
    OpenCL driver (PoCL); a local_size over the device's work-group size reached the enqueue.
    Both are INVALID_ARGUMENT at LoadModel now, and the runner keeps serving."""
    b = _gpu_bundle(tmp_path)
    steps = list(b.manifest.steps)
    wg = 1 << 20  # over any device's work-group size (PoCL's CPU device: 4096)
    cases = [(dataclasses.replace(steps[0], work_items=1 << 40, local_size=0), "work_items"),
             (dataclasses.replace(steps[0], work_items=4 * wg, local_size=wg),
              "work-group size")]
    with Session(gpu_runner) as s:
        for step, match in cases:
            bad = dataclasses.replace(b, manifest=dataclasses.replace(
                b.manifest, steps=(step, *steps[1:])))
            with pytest.raises(RunnerError) as e:
                s.load(bad, MeasureConfig(backend="gpu"))
            assert e.value.code == "INVALID_ARGUMENT", e.value
            assert match in e.value.message, e.value.message
        key = s.load(b, MeasureConfig(backend="gpu"))
        assert len(s.benchmark(key, MeasureConfig(runs=2, warmup=0)).samples_ns) == 2


def test_fp16_bundle_on_a_device_without_fp16(gpu_runner, tmp_path):
    info = gpu_runner.client().device_info()
    exts = {e for p in info.opencl_platforms for d in p.devices for e in d.extensions}
    if "cl_khr_fp16" in exts:
        pytest.skip("this OpenCL device supports cl_khr_fp16")
    b = _gpu_bundle(tmp_path, "half", precision="fp16")
    with Session(gpu_runner) as s:
        with pytest.raises(RunnerError) as e:
            s.load(b, MeasureConfig(backend="gpu"))
    assert e.value.code == "FAILED_PRECONDITION" and "cl_khr_fp16" in e.value.message


def test_device_without_opencl(runner_binary, tmp_path):
    empty = tmp_path / "no-icds"
    empty.mkdir()
    env = {**os.environ, "OCL_ICD_VENDORS": str(empty)}
    cfg = LocalRunnerConfig(binary=runner_binary, store=tmp_path / "store", env=env)
    with LocalRunner(cfg) as runner, Session(runner) as s:
        assert not runner.client().device_info().opencl_platforms
        with pytest.raises(RunnerError) as e:
            s.load(_gpu_bundle(tmp_path), MeasureConfig(backend="gpu"))
        assert e.value.code == "FAILED_PRECONDITION" and "no OpenCL device" in e.value.message
        # the CPU path on the same runner is unaffected
        import torch
        cpu = compile_model(small_cnn(), torch.randn(1, 3, 32, 32), tmp_path / "cpu", "cpu")
        key = s.load(cpu)
        assert len(s.benchmark(key, MeasureConfig(runs=2, warmup=1)).samples_ns) == 2


def test_backend_mismatch_is_a_cli_error(capsys, gpu_runner, tmp_path):
    b = _gpu_bundle(tmp_path)
    rc = main(["profile", str(b.path), "--backend", "cpu", "--runs", "2"])
    assert rc == 2 and "GPU bundle" in capsys.readouterr().err
