"""Phones through adb. No phone is reachable from the development machines, so:

- against adbutils' real client and a real adb server (adbutils starts one): listing with no
  phone, and a serial that is not there;
- at adbutils' boundary (marked ``adb_boundary``): PhoneRunner drives a stand-in for
  adbutils' client whose "phone" runs the real host runner on loopback, so starting with a
  token, forwarding, stopping, cooling down and a phone that vanishes mid-run are exercised
  with the real runner behind them; what only a real phone can show is left to the ``phone``
  tier at the bottom, skipped without one.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import time
from pathlib import Path

import adbutils
import pytest
import torch
from adbutils._proto import AdbDeviceInfo, ShellReturn
from zoo import rel_err, small_cnn

from host.devices import phone as phone_module
from host.devices import qemu_static
from host.devices.adb import list_phones
from host.devices.phone import (
    APP_PACKAGE,
    EM_AARCH64,
    REMOTE_BINARY,
    REMOTE_DIR,
    PhoneConfig,
    PhoneError,
    PhoneRunner,
    check_arm64_executable,
    install,
)
from host.devices.session import Session
from host.measure import MeasureConfig
from host.rpc.client import RunnerError


def _adb_server_up() -> bool:
    try:
        adbutils.AdbClient(socket_timeout=5).server_version()
        return True
    except Exception:
        return False


# ---- the real adb server, no phone ----

def test_listing_without_a_phone_is_not_an_error():
    phones, note = list_phones()
    if phones:
        pytest.skip("a phone is attached; this test is for machines without one")
    assert note


def test_missing_serial_is_a_clear_error_and_fast():
    if not _adb_server_up():
        pytest.skip("no adb server could be reached or started")
    runner = PhoneRunner(PhoneConfig(serial="NPAS-NO-SUCH-PHONE"))
    t0 = time.monotonic()
    with pytest.raises(PhoneError, match="no device with serial 'NPAS-NO-SUCH-PHONE'"):
        runner.start()
    assert time.monotonic() - t0 < 10


def test_unreachable_adb_server():
    runner = PhoneRunner(PhoneConfig(serial="X", adb_port=9, adb_timeout_s=2))
    with pytest.raises(PhoneError, match="adb server"):
        runner.start()


def test_binary_for_the_wrong_architecture_is_refused(runner_binary):
    with pytest.raises(PhoneError, match="not an arm64 ELF"):
        check_arm64_executable(runner_binary)


# ---- at adbutils' boundary: a stand-in phone that runs the real host runner ----

class FakePhone:
    """Implements the part of adbutils.AdbDevice that PhoneRunner uses. Its `am
    start-foreground-service` starts the real host runner on the requested loopback port."""

    def __init__(self, serial: str, runner_binary: Path, store: Path):
        self.serial = serial
        self.binary, self.store = runner_binary, store
        self.proc: subprocess.Popen | None = None
        self.temps = [30.0]
        self.commands: list[str] = []
        self.forwards: dict[int, int] = {}

    def shell2(self, cmd: str, timeout=None, **_):
        self.commands.append(cmd)
        argv = shlex.split(cmd)
        if argv[:3] == ["pm", "list", "packages"]:
            return ShellReturn(cmd, 0, f"package:{APP_PACKAGE}\n")
        if argv[:2] == ["am", "start-foreground-service"]:
            token = argv[argv.index("token") + 1]
            port = argv[argv.index("port") + 1]
            tf = self.store.parent / "token"
            tf.write_text(token)
            self.proc = subprocess.Popen(
                [str(self.binary), "--listen", f"127.0.0.1:{port}", "--token-file", str(tf),
                 "--store", str(self.store)], stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL)
            return ShellReturn(cmd, 0, "Starting service: Intent { ... }")
        if argv[:2] == ["am", "stopservice"]:
            self.kill()
            return ShellReturn(cmd, 0, "Stopping service")
        return ShellReturn(cmd, 1, f"/system/bin/sh: {argv[0]}: not found")

    def shell(self, cmd, timeout=None, **_):
        if cmd == "dumpsys battery":
            t = self.temps.pop(0) if len(self.temps) > 1 else self.temps[0]
            return f"Current Battery Service state:\n  temperature: {int(t * 10)}\n"
        return self.shell2(cmd).output

    def forward_port(self, remote) -> int:
        self.forwards[int(remote)] = int(remote)  # the "phone" is this machine: no relay
        return int(remote)

    def forward_remove(self, local, raise_non_found=True):
        self.forwards.pop(int(str(local).split(":")[1]), None)

    def kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class FakeAdb:
    def __init__(self, phone: FakePhone):
        self.phone, self.attached = phone, True

    def list(self):
        return [AdbDeviceInfo(self.phone.serial, "device")] if self.attached else []

    def device(self, serial):
        assert serial == self.phone.serial
        return self.phone


@pytest.fixture()
def fake(runner_binary, tmp_path):
    phone = FakePhone("R58M00FAKE", runner_binary, tmp_path / "store")
    yield phone, FakeAdb(phone)
    phone.kill()


@pytest.mark.adb_boundary
def test_phone_runner_starts_app_with_token_and_forwards(fake, compiled):
    phone, adb = fake
    runner = PhoneRunner(PhoneConfig(serial=phone.serial, startup_timeout_s=20), adb)
    bundle, model, x = compiled("small_cnn", small_cnn, (1, 3, 32, 32))
    with Session(runner) as s:
        assert runner.mode == "app" and runner.address.startswith("127.0.0.1:")
        start = next(c for c in phone.commands if c.startswith("am start-foreground-service"))
        assert runner.token in start and "dev.npas.runner/.RunnerService" in start
        key = s.load(bundle)
        assert len(s.benchmark(key, MeasureConfig(runs=3, warmup=1)).samples_ns) == 3
    runner.close()
    assert any(c.startswith("am stopservice") for c in phone.commands)
    assert not phone.forwards and phone.proc.poll() is not None


@pytest.mark.adb_boundary
def test_hot_phone_is_cooled_before_timing(fake):
    phone, adb = fake
    phone.temps = [45.0, 42.5, 38.0]
    cfg = PhoneConfig(serial=phone.serial, max_temp_c=40.0, cool_poll_s=0.01)
    events: list[str] = []
    PhoneRunner(cfg, adb).before_measure(events.append)
    assert len(events) == 2 and "45.0 °C" in events[0]


@pytest.mark.adb_boundary
def test_phone_that_vanishes_mid_run_gives_clear_error_without_hang(fake, compiled):
    phone, adb = fake
    runner = PhoneRunner(PhoneConfig(serial=phone.serial, startup_timeout_s=20), adb)
    bundle, _, x = compiled("small_cnn", small_cnn, (1, 3, 32, 32))
    with Session(runner, call_timeout_s=10) as s:
        key = s.load(bundle)
        adb.attached = False  # unplugged: adb no longer lists it, the runner is gone
        phone.kill()
        t0 = time.monotonic()
        with pytest.raises((PhoneError, RunnerError)) as e:
            s.run(key, [x.numpy()])
        assert time.monotonic() - t0 < 30
        assert "R58M00FAKE" in str(e.value)


@pytest.mark.adb_boundary
def test_no_runner_installed_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr(qemu_static, "STATIC_ARM64_RUNNER", tmp_path / "no-static-runner")

    class Bare(FakePhone):
        def shell2(self, cmd, timeout=None, **_):
            return ShellReturn(cmd, 1, "")

    phone = Bare("R58M00BARE", Path("/nonexistent"), tmp_path)
    with pytest.raises(PhoneError, match="npas-host install --device R58M00BARE"):
        PhoneRunner(PhoneConfig(serial=phone.serial), FakeAdb(phone)).start()


# ---- at adbutils' boundary: the standalone runner, pushed and run from /data/local/tmp ----

class FakeShellPhone(FakePhone):
    """A phone without the app: ``push`` writes into a folder standing for REMOTE_DIR, and
    the runner started there runs through ``launcher`` (``qemu-aarch64`` alone, no sysroot,
    for the static arm64 runner: a bare kernel is all a phone gives it)."""

    def __init__(self, serial: str, root: Path, abi: str = "arm64-v8a",
                 launcher: tuple[str, ...] = ()):
        super().__init__(serial, Path("/nonexistent"), root / "store")
        self.root, self.abi, self.launcher = root, abi, launcher
        self.pushed: list[tuple[Path, str]] = []

    def _local(self, remote: str) -> Path:
        assert remote.startswith(REMOTE_DIR), remote
        return self.root / remote[len(REMOTE_DIR):].lstrip("/")

    def push(self, src: str, dst: str, **_):
        self.pushed.append((Path(src), dst))
        self._local(dst).write_bytes(Path(src).read_bytes())

    def _exec(self, cmd: str, argv: list[str], **kw) -> ShellReturn:
        try:
            r = subprocess.run([*self.launcher, str(self._local(REMOTE_BINARY)), *argv],
                               capture_output=True, text=True, timeout=120, cwd=self.root, **kw)
        except OSError as e:  # what a kernel that refuses the file says
            return ShellReturn(cmd, 126, f"{REMOTE_BINARY}: {e}")
        return ShellReturn(cmd, r.returncode, r.stdout + r.stderr)

    def shell2(self, cmd: str, timeout=None, **_):
        self.commands.append(cmd)
        argv = shlex.split(cmd)
        binary = self._local(REMOTE_BINARY)
        if argv[:3] == ["pm", "list", "packages"]:
            return ShellReturn(cmd, 0, "")
        if argv == ["getprop", "ro.product.cpu.abi"]:
            return ShellReturn(cmd, 0, f"{self.abi}\n")
        if argv[:2] in (["mkdir", "-p"], ["chmod", "755"]):
            self.root.mkdir(parents=True, exist_ok=True)
            if argv[0] == "chmod":
                binary.chmod(0o755)
            return ShellReturn(cmd, 0, "")
        if argv[:2] == ["test", "-x"]:
            return ShellReturn(cmd, 0 if binary.is_file() else 1, "")
        if cmd.endswith("./npas-runner --version"):
            return self._exec(cmd, ["--version"])
        if "nohup" in cmd:
            token = re.search(r"echo (\S+) > token", cmd).group(1)
            port = re.search(r"--listen 127\.0\.0\.1:(\d+)", cmd).group(1)
            (self.root / "token").write_text(token)
            (self.root / "token").chmod(0o600)
            log = open(self.root / "runner.log", "wb")
            self.proc = subprocess.Popen(
                [*self.launcher, str(binary), "--listen", f"127.0.0.1:{port}", "--token-file",
                 "token", "--store", "store"], cwd=self.root, stdout=log, stderr=log)
            log.close()
            return ShellReturn(cmd, 0, "")
        if argv[:2] == ["pkill", "-f"]:
            self.kill()
            return ShellReturn(cmd, 0, "")
        if argv[:1] == ["tail"]:
            return ShellReturn(cmd, 0, (self.root / "runner.log").read_text())
        return ShellReturn(cmd, 1, f"/system/bin/sh: {argv[0]}: not found")


@pytest.fixture()
def static_arm64(tmp_path):
    """(static runner, qemu-aarch64, an arm64 small_cnn bundle with its model and input)."""
    import shutil

    from codegen import compile_model
    from codegen.toolchain import Arm64AndroidToolchain
    from host.devices.qemu_static import find_static_arm64_runner

    try:
        binary = find_static_arm64_runner()
    except FileNotFoundError as e:
        pytest.skip(f"arm64 static tier: {e}")
    qemu = shutil.which("qemu-aarch64")
    if not qemu or not shutil.which("clang") or not shutil.which("ld.lld"):
        pytest.skip("arm64 static tier: qemu-aarch64, clang and lld are needed "
                    "(scripts/build_arm64.sh)")
    model = small_cnn()
    x = torch.randn((1, 3, 32, 32), generator=torch.Generator().manual_seed(1))
    bundle = compile_model(model, (x,), tmp_path / "bundle", name="small_cnn",
                           toolchain=Arm64AndroidToolchain())
    return binary, qemu, bundle, model, x


def _fake_arm64_elf(path: Path) -> Path:
    """An ELF header that says arm64 and nothing that runs."""
    head = bytearray(64)
    head[:4] = b"\x7fELF"
    head[18:20] = EM_AARCH64.to_bytes(2, "little")
    path.write_bytes(bytes(head))
    return path


@pytest.mark.adb_boundary
def test_install_refuses_a_phone_that_is_not_arm64(tmp_path, monkeypatch):
    monkeypatch.setattr(phone_module, "find_static_arm64_runner",
                        lambda: _fake_arm64_elf(tmp_path / "npas-runner"))
    phone = FakeShellPhone("EMULATOR-X86", tmp_path / "phone", abi="x86_64")
    with pytest.raises(PhoneError, match="EMULATOR-X86's ABI .* is x86_64, not arm64-v8a"):
        install(PhoneConfig(serial=phone.serial), adb=FakeAdb(phone))
    assert not phone.pushed and not any("chmod" in c for c in phone.commands)


@pytest.mark.adb_boundary
def test_install_without_a_static_runner_says_how_to_build_it(tmp_path, monkeypatch):
    monkeypatch.setattr(qemu_static, "STATIC_ARM64_RUNNER", tmp_path / "missing")
    phone = FakeShellPhone("R58M00NOBIN", tmp_path / "phone")
    with pytest.raises(PhoneError, match="scripts/build_arm64.sh.*--apk PATH or --binary"):
        install(PhoneConfig(serial=phone.serial), adb=FakeAdb(phone))
    assert not phone.pushed


@pytest.mark.adb_boundary
def test_a_pushed_runner_the_phone_cannot_run_is_reported(tmp_path, monkeypatch):
    monkeypatch.setattr(phone_module, "find_static_arm64_runner",
                        lambda: _fake_arm64_elf(tmp_path / "npas-runner"))
    phone = FakeShellPhone("R58M00NOEXEC", tmp_path / "phone")
    with pytest.raises(PhoneError, match="was pushed to R58M00NOEXEC but does not run there "
                                         r"\(exit 126.*use the app"):
        install(PhoneConfig(serial=phone.serial), adb=FakeAdb(phone))


@pytest.mark.adb_boundary
def test_install_pushes_the_static_runner_and_profile_uses_it(static_arm64, tmp_path):
    binary, qemu, bundle, model, x = static_arm64
    phone = FakeShellPhone("R58M00STATIC", tmp_path / "phone", launcher=(qemu,))
    adb = FakeAdb(phone)
    try:
        runner = install(PhoneConfig(serial=phone.serial, startup_timeout_s=120), adb=adb)
        assert runner.mode == "binary" and "arm64, static" in runner.version
        assert phone.pushed == [(binary, REMOTE_BINARY)]
        assert (tmp_path / "phone" / "npas-runner").read_bytes() == binary.read_bytes()
        assert runner.client(timeout_s=120).device_info().abi == "arm64-v8a"
        runner.stop()
        assert phone.proc.poll() is not None
        # profile/search open the phone in auto mode: no app, so the pushed runner
        again = PhoneRunner(PhoneConfig(serial=phone.serial, startup_timeout_s=120), adb)
        with Session(again, call_timeout_s=120) as s:
            key = s.load(bundle)
            (got,) = s.run(key, [x.numpy()])
            result = s.benchmark(key, MeasureConfig(runs=2, warmup=1))
        again.close()
        assert again.mode == "binary" and len(phone.pushed) == 1
        with torch.no_grad():
            want = model(x)
        assert rel_err(got, want) <= 1e-4 and len(result.samples_ns) == 2
    finally:
        phone.kill()


@pytest.mark.adb_boundary
def test_first_start_on_a_phone_with_no_runner_pushes_the_static_one(static_arm64,
                                                                      tmp_path):
    binary, qemu, _, _, _ = static_arm64
    phone = FakeShellPhone("R58M00BARE2", tmp_path / "phone", launcher=(qemu,))
    runner = PhoneRunner(PhoneConfig(serial=phone.serial, startup_timeout_s=120),
                         FakeAdb(phone))
    try:
        runner.start()
        assert runner.mode == "binary" and phone.pushed == [(binary, REMOTE_BINARY)]
        assert "getprop ro.product.cpu.abi" in phone.commands
    finally:
        runner.close()
        phone.kill()


# ---- a real phone ----

@pytest.mark.phone
def test_profile_on_an_attached_phone(capsys):
    """What a phone user runs on a fresh clone (README, "arm64 and phones"): `scripts/setup.sh`,
    then `npas-host profile --device SERIAL MODEL`, which pushes the static runner itself."""
    phones, note = list_phones()
    ready = [p for p in phones if p.state == "device" and p.abi == "arm64-v8a"]
    if not ready:
        pytest.skip(f"phone tier: no arm64 phone attached ({note or 'none ready'})")
    from host.cli import main
    rc = main(["profile", "--device", ready[0].serial, "zoo:small_cnn", "--input-shape",
               "1,3,32,32", "--runs", "10", "--json"])
    assert rc == 0
