"""Pure-Python tier: the command registry, the shared arguments and the device and measurement
contracts (no runner, no compiler)."""

from __future__ import annotations

import argparse
import importlib
from contextlib import ExitStack
from pathlib import Path
from types import ModuleType

import pytest

from host.commands.args import add_device_args, add_measure_args, device_spec
from host.devices import KINDS, DeviceSpec, DeviceTraits, device_kind, open_device
from host.errors import UserError
from host.measure import MeasureConfig, runner_threads

ROOT = Path(__file__).resolve().parents[1]


def _device_args(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    p.add_argument("--device")
    add_device_args(p)
    add_measure_args(p)
    return p.parse_args(list(argv))


def test_every_registered_command_has_register_and_run():
    from host.cli import COMMANDS, build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert set(sub.choices) == set(COMMANDS)
    for module in COMMANDS.values():
        mod = importlib.import_module(module)
        assert isinstance(mod, ModuleType)
        assert callable(mod.register) and callable(mod.run), module


def test_no_host_module_imports_the_cli():
    host = ROOT / "host"
    cli_import = {host: "from .cli import", **{d: "from ..cli import" for d in host.iterdir()}}
    offenders = [str(p.relative_to(ROOT)) for p in host.rglob("*.py") if p.name != "cli.py"
                 and ("from host.cli import" in p.read_text()
                      or cli_import.get(p.parent, "\0") in p.read_text())]
    assert offenders == []


def test_measure_defaults_are_the_records():
    args = _device_args()
    assert args.runs == MeasureConfig.runs and args.warmup is None
    assert DeviceTraits().default_warmup == MeasureConfig.warmup
    assert args.max_temp == DeviceSpec.max_temp_c


def test_device_spec_reads_flags_and_token(tmp_path):
    token = tmp_path / "token"
    token.write_text("secret\n")
    spec = device_spec(_device_args("--address", "127.0.0.1:5", "--token-file", str(token),
                                    "--no-pin", "--max-temp", "35"))
    assert spec == DeviceSpec(name="local", address="127.0.0.1:5", token="secret",
                              max_temp_c=35.0, pin_big_cores=False)
    assert device_spec(_device_args("--device", "R58M"), "qemu-arm64").name == "qemu-arm64"
    assert device_spec(_device_args(), private_store_bytes=7).private_store_bytes == 7


@pytest.mark.parametrize("argv,message", [
    (["--address", "127.0.0.1:5"], "--address needs --token-file"),
    (["--address", "127.0.0.1:5", "--token-file", "/no/such/token"], "/no/such/token"),
])
def test_device_spec_errors_are_user_errors(argv, message):
    with pytest.raises(UserError, match=message):
        device_spec(_device_args(*argv))


@pytest.mark.parametrize("spec,kind", [
    (DeviceSpec(), "local"),
    (DeviceSpec(name="qemu-arm64"), "qemu-arm64"),
    (DeviceSpec(name="qemu-arm64-static"), "qemu-arm64-static"),
    (DeviceSpec(name="R58M1234XYZ"), "phone"),
    (DeviceSpec(name="qemu-arm64", address="h:1", token="t"), "remote"),
])
def test_the_registry_picks_the_kind(spec, kind):
    assert device_kind(spec).name == kind
    assert {k.name for k in KINDS} == {"local", "qemu-arm64", "qemu-arm64-static", "phone",
                                       "remote"}


def test_every_kind_module_opens_a_device():
    for kind in KINDS:
        mod = importlib.import_module(f"host.devices.{kind.module}")
        assert callable(mod.from_spec), kind


def test_remote_device_and_its_traits():
    with ExitStack() as stack:
        dev = open_device(DeviceSpec(address="127.0.0.1:9", token="t"), stack)
        assert dev.name == "remote" and dev.traits == DeviceTraits()
        dev.before_measure(lambda _m: None)
        with pytest.raises(UserError, match="--token-file"):
            open_device(DeviceSpec(address="127.0.0.1:9"), stack)


def test_a_missing_runner_binary_is_a_user_error(tmp_path):
    with ExitStack() as stack, pytest.raises(UserError, match="npas-runner not found"):
        open_device(DeviceSpec(runner=tmp_path / "nope"), stack)


class _Info:
    def __init__(self, default_threads: int):
        self.default_threads, self.runner_version = default_threads, "0.x"


def test_threads_zero_is_what_the_runner_says():
    assert runner_threads(3, _Info(8)) == 3
    assert runner_threads(0, _Info(4)) == 4
    with pytest.raises(UserError, match="--threads N"):
        runner_threads(0, _Info(0))


def _install_args(*argv: str) -> argparse.Namespace:
    from host.commands import install

    p = argparse.ArgumentParser()
    install.register(p.add_subparsers(dest="cmd"))
    return p.parse_args(["install", *argv])


def test_install_without_apk_or_binary_means_the_static_runner():
    args = _install_args("--device", "R58M1234XYZ")
    assert (args.device, args.apk, args.binary) == ("R58M1234XYZ", None, None)
    with pytest.raises(SystemExit):
        _install_args("--device", "R58M1234XYZ", "--apk", "a.apk", "--binary", "b")


def _compile_cli(capsys, *argv: str) -> tuple[int, str]:
    from host.cli import main

    rc = main(["compile", *argv])
    return rc, capsys.readouterr().err


def test_compile_with_a_wrong_input_shape_says_so_in_one_error(capsys, tmp_path):
    """One channel for an RGB model: an error naming the shape and the fix, no traceback, and
    no bundle folder left behind."""
    out = tmp_path / "b"
    rc, err = _compile_cli(capsys, "zoo:small_cnn", "--input-shape", "1,1,32,32", "-o", str(out))
    assert rc != 0 and "Traceback" not in err
    text = " ".join(err.split())
    assert "SmallCNN cannot run on an input of shape [1, 1, 32, 32]" in text
    assert "--input-shape N,C,H,W" in text
    assert not out.exists()


def test_a_refused_model_leaves_no_bundle_folder(capsys, tmp_path):
    out = tmp_path / "refused"
    rc, err = _compile_cli(capsys, "torch.nn:ELU", "--input-shape", "1,3,8,8", "-o", str(out))
    assert rc != 0 and '"elu" (elu): not supported by the code generator; replace it with ' \
        "ReLU" in " ".join(err.split())
    assert not out.exists()
