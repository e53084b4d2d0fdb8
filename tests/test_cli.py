"""Host tier: the npas-host command, end to end, as a user runs it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from host.cli import main

pytestmark = pytest.mark.host

SMALL = ["zoo:small_cnn", "--input-shape", "1,3,32,32"]


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    rc = main(list(argv))
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def test_profile_json_returns_every_sample(capsys, runner_binary, tmp_path):
    rc, out, _ = run_cli(capsys, "profile", "--device", "local", *SMALL, "--runs", "20",
                         "--warmup", "2", "--json", "--store", str(tmp_path / "s"))
    assert rc == 0
    d = json.loads(out)
    assert len(d["samples_ns"]) == 20 and len(d["warmup_ns"]) == 2
    assert d["stats"]["n"] == 20 and d["stats"]["min_ms"] <= d["stats"]["median_ms"]
    assert d["device"] == "local" and d["content_hash"]


def test_compile_then_profile_bundle_table(capsys, runner_binary, tmp_path):
    bundle = tmp_path / "b"
    rc, out, _ = run_cli(capsys, "compile", *SMALL, "-o", str(bundle))
    assert rc == 0 and (bundle / "manifest.json").is_file()
    assert "steps" in out
    rc, out, _ = run_cli(capsys, "profile", str(bundle), "--runs", "5", "--per-layer",
                         "--threads", "2", "--store", str(tmp_path / "s"))
    assert rc == 0
    assert "median ms" in out and "per layer" in out and "2 thread(s)" in out


def test_tampered_bundle_is_refused(capsys, runner_binary, tmp_path):
    bundle = tmp_path / "b"
    assert run_cli(capsys, "compile", *SMALL, "-o", str(bundle))[0] == 0
    with open(bundle / "weights.bin", "r+b") as f:
        f.write(b"\x00\x01\x02\x03")
    rc, _, err = run_cli(capsys, "profile", str(bundle), "--runs", "2")
    assert rc == 2 and "modified" in err


@pytest.mark.parametrize("argv,message", [
    (["profile", "no_such_model"], "not a torchvision"),
    (["profile", *SMALL, "--runs", "0"], "--runs"),
    (["profile", *SMALL, "--device", "R58M1234XYZ"], "R58M1234XYZ"),
    (["profile", *SMALL, "--address", "127.0.0.1:1"], "--token-file"),
    (["compile", "torch.nn:ELU", "--input-shape", "1,3,8,8", "-o", "out-bundle"], 'layer "elu"'),
])
def test_bad_arguments_exit_2_with_a_clear_message(capsys, argv, message, tmp_path,
                                                  monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc, _, err = run_cli(capsys, *argv)
    assert rc == 2
    assert message in err


def test_unreachable_address_fails_fast(capsys, tmp_path):
    token = tmp_path / "t"
    token.write_text("abc")
    rc, _, err = run_cli(capsys, "profile", *SMALL, "--address", "127.0.0.1:9",
                         "--token-file", str(token), "--runs", "2")
    assert rc == 2 and "not reachable" in err


def test_devices_lists_local_without_phone(capsys, runner_binary):
    rc, out, _ = run_cli(capsys, "devices", "--json")
    assert rc == 0
    d = json.loads(out)
    local = d["devices"][0]
    assert local["device"] == "local"
    assert local["info"]["protocol_major"] == 1 and local["info"]["cores"]


def test_entry_point_installed():
    exe = shutil.which("npas-host", path=str(__import__("pathlib").Path(sys.executable).parent))
    assert exe, "npas-host console script missing from the venv"
    r = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "npas-host" in r.stdout


def test_main_job_resnet18_json_has_100_samples(capsys, runner_binary, tmp_path):
    """The issue's acceptance check, at full size: `profile --device local resnet18 --json`."""
    rc, out, _ = run_cli(capsys, "profile", "--device", "local", "resnet18", "--json",
                         "--warmup", "2", "--store", str(tmp_path / "s"))
    assert rc == 0
    d = json.loads(out)
    assert len(d["samples_ns"]) == 100 and d["runs"] == 100
    assert d["gflop"] > 3.5  # ResNet-18 at 224x224: 1.8 GMAC


def test_threads_zero_is_resolved_by_the_runner(capsys, runner_binary, tmp_path):
    """--threads 0: the model gets DeviceInfo.default_threads, the number the host also uses
    for the tuning-database lookup (one rule, in the runner)."""
    from host.devices.local import LocalRunner, LocalRunnerConfig

    with LocalRunner(LocalRunnerConfig(binary=runner_binary, store=tmp_path / "s")) as r:
        info = r.client().device_info()
    assert info.default_threads >= 1
    rc, out, _ = run_cli(capsys, "profile", *SMALL, "--threads", "0", "--runs", "2",
                         "--warmup", "1", "--json", "--store", str(tmp_path / "s"))
    assert rc == 0 and json.loads(out)["threads"] == info.default_threads
