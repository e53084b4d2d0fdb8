"""Host tier: compiled models run on the real runner over gRPC and match PyTorch."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from zoo import rel_err, run_on_runner, small_cnn, torchvision_model

from host.devices.remote import RemoteRunner
from host.devices.session import Session
from host.measure import MeasureConfig
from host.rpc.client import RunnerError

pytestmark = pytest.mark.host

MODELS = {
    "small_cnn": (small_cnn, (1, 3, 32, 32)),
    "small_cnn_b2": (small_cnn, (2, 3, 29, 31)),
    "resnet18": (lambda: torchvision_model("resnet18"), (1, 3, 64, 64)),
    "mobilenet_v2": (lambda: torchvision_model("mobilenet_v2"), (1, 3, 64, 64)),
    "vgg16": (lambda: torchvision_model("vgg16"), (1, 3, 32, 32)),
}


@pytest.mark.parametrize("key", list(MODELS))
@pytest.mark.parametrize("threads", [1, 2])
def test_runner_output_equals_pytorch(key, threads, compiled, local_runner):
    factory, shape = MODELS[key]
    bundle, model, x = compiled(key, factory, shape)
    with torch.no_grad():
        want = model(x).numpy()
    got = run_on_runner(local_runner, bundle, x, threads)
    assert got.shape == want.shape
    assert rel_err(got, want) <= 1e-4


def test_benchmark_returns_every_sample(compiled, local_runner):
    bundle, _, _ = compiled("small_cnn", *MODELS["small_cnn"])
    with Session(local_runner) as s:
        h = s.load(bundle, MeasureConfig(threads=1, runs=100, warmup=3, per_layer=True))
        r = s.benchmark(h)
    assert len(r.samples_ns) == 100 and all(v > 0 for v in r.samples_ns)
    assert len(r.warmup_ns) == 3
    assert r.init_ns > 0
    assert [layer.name for layer in r.layers] == [st.name for st in bundle.manifest.steps]
    assert all(len(layer.samples_ns) == 100 for layer in r.layers)
    # per-layer times cannot exceed the whole run they were taken in
    per_run_sum = np.sum([layer.samples_ns for layer in r.layers], axis=0)
    assert np.all(per_run_sum <= np.array(r.samples_ns) * 1.01 + 1000)
    assert r.telemetry_before is not None and r.telemetry_before.timestamp_ns > 0


def test_second_upload_sends_no_bytes(compiled, fresh_runner):
    bundle, _, _ = compiled("small_cnn", *MODELS["small_cnn"])
    client = fresh_runner.client()
    total = sum(a.size for a in bundle.manifest.artifacts)
    assert client.ensure_artifacts(bundle) == total
    assert client.ensure_artifacts(bundle) == 0
    assert client.missing([a.sha256 for a in bundle.manifest.artifacts]) == []


def test_runner_killed_mid_session_is_restarted(compiled, fresh_runner):
    bundle, model, x = compiled("small_cnn", *MODELS["small_cnn"])
    with torch.no_grad():
        want = model(x).numpy()
    with Session(fresh_runner, call_timeout_s=20) as s:
        h = s.load(bundle)
        first_pid = fresh_runner.pid
        fresh_runner._proc.kill()  # the runner dies between two calls of the session
        fresh_runner._proc.wait()
        t0 = time.monotonic()
        (got,) = s.run(h, [x.numpy()])
        assert time.monotonic() - t0 < 30
        assert s.restarts == 1 and fresh_runner.pid != first_pid
        assert rel_err(got, want) <= 1e-4
        assert len(s.benchmark(h, MeasureConfig(runs=5, warmup=1)).samples_ns) == 5


def test_runner_that_cannot_be_restarted_fails_clearly(compiled, fresh_runner):
    bundle, _, x = compiled("small_cnn", *MODELS["small_cnn"])
    remote = RemoteRunner(fresh_runner.address, fresh_runner.token)
    with Session(remote, call_timeout_s=5) as s:
        h = s.load(bundle)
        fresh_runner.stop()
        t0 = time.monotonic()
        with pytest.raises(RunnerError) as e:
            s.run(h, [x.numpy()])
        assert time.monotonic() - t0 < 15
        assert e.value.code == "UNAVAILABLE" and "cannot be restarted" in str(e.value)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (exited, not yet reaped by init) counts as gone
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (OSError, IndexError):
        return False


def test_runner_exits_when_its_host_is_sigkilled(runner_binary, tmp_path):
    """The runner dies with the process that started it, even one killed with SIGKILL (which
    runs no cleanup): it watches the stdin pipe that only its parent holds."""
    code = ("import sys, time\n"
            "from pathlib import Path\n"
            "from host.devices.local import LocalRunner, LocalRunnerConfig\n"
            "cfg = LocalRunnerConfig(binary=Path(sys.argv[1]), store=Path(sys.argv[2]))\n"
            "r = LocalRunner(cfg)\n"
            "r.start()\n"
            "print(r.pid, flush=True)\n"
            "time.sleep(600)\n")
    host = subprocess.Popen([sys.executable, "-c", code, str(runner_binary),
                             str(tmp_path / "store")], stdout=subprocess.PIPE, text=True,
                            cwd=Path(__file__).resolve().parents[1])
    try:
        pid = int(host.stdout.readline())
        assert _pid_alive(pid)
        host.send_signal(signal.SIGKILL)
        host.wait()
        deadline = time.monotonic() + 15
        while _pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _pid_alive(pid), "the runner outlived its SIGKILLed host"
    finally:
        host.kill()
        host.stdout.close()
