"""A phone as a device: the runner on it, started and reached through adb (adbutils).

Two ways the runner can live on a phone:
- the runner app (`dev.npas.runner`, android_app/): a foreground service in its own process,
  started with `am start-foreground-service ... --es token T --ei port P`;
- the standalone executable in /data/local/tmp/npas: by default the static arm64 runner this
  checkout builds (build/arm64-static/npas-runner: no loader, no libraries, no GPU backend),
  pushed by `npas-host install --device SERIAL` or by the first start on a phone that has
  neither runner; or one the user built (`npas-host install --binary PATH`).
The app is preferred when installed. Either way it listens on the phone's loopback only; the
host reaches it through `adb forward tcp:LOCAL tcp:PORT`, and every call carries a fresh token.
Before timing, the session waits until the phone has cooled below a threshold.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import adbutils

from ..rpc.client import RunnerClient, RunnerError
from . import DeviceSpec, DeviceTraits
from .adb import battery_temp_c
from .qemu_static import find_static_arm64_runner

APP_PACKAGE = "dev.npas.runner"
APP_SERVICE = f"{APP_PACKAGE}/.RunnerService"
REMOTE_DIR = "/data/local/tmp/npas"
REMOTE_BINARY = f"{REMOTE_DIR}/npas-runner"
EM_AARCH64 = 183
ARM64_ABI = "arm64-v8a"


class PhoneError(RuntimeError):
    """Something about the phone or adb, said so the user can act on it."""


@dataclass
class PhoneConfig:
    serial: str
    adb_host: str = "127.0.0.1"
    adb_port: int = 5037
    mode: str = "auto"  # "app", "binary", or "auto": the app if installed, else the binary
    device_port: int = 0  # the runner's port on the phone; 0: pick one at random
    startup_timeout_s: float = 30.0
    max_temp_c: float = 40.0  # battery temperature to wait for before timing
    cool_timeout_s: float = 300.0
    cool_poll_s: float = 10.0
    adb_timeout_s: float = 20.0
    pin_big_cores: bool = True  # pin the pool to the big cores unless told otherwise


class PhoneRunner:
    def __init__(self, config: PhoneConfig, adb: adbutils.AdbClient | None = None):
        self.config = config
        self.name = config.serial
        self.traits = DeviceTraits(pin_big_cores=config.pin_big_cores)
        self.adb = adb or adbutils.AdbClient(host=config.adb_host, port=config.adb_port,
                                             socket_timeout=config.adb_timeout_s)
        self.address = ""
        self.token = ""
        self.mode = ""
        self.version = ""  # the pushed binary's --version line, when this runner pushed it
        self._local_port = 0

    # -- adb --
    def device(self) -> adbutils.AdbDevice:
        """The phone, or a PhoneError naming what adb sees instead."""
        try:
            items = self.adb.list()
        except (adbutils.AdbError, OSError) as e:
            raise PhoneError(f"adb server at {self.config.adb_host}:{self.config.adb_port} "
                             f"not reachable ({e}); start it with `adb start-server`") from e
        states = {it.serial: it.state for it in items}
        serial = self.config.serial
        if serial not in states:
            seen = ", ".join(f"{s} ({st})" for s, st in states.items()) or "none"
            raise PhoneError(f"no device with serial {serial!r} (adb sees: {seen})")
        if states[serial] != "device":
            raise PhoneError(f"device {serial} is {states[serial]!r}; unlock it and accept "
                             f"the USB debugging prompt")
        return self.adb.device(serial)

    def _shell(self, dev: adbutils.AdbDevice, cmd: str) -> tuple[int, str]:
        try:
            r = dev.shell2(cmd, timeout=self.config.adb_timeout_s)
        except (adbutils.AdbError, adbutils.AdbTimeout, OSError) as e:
            raise PhoneError(f"device {self.config.serial}: `{cmd}` failed: {e}") from e
        return r.returncode, str(r.output)

    def _has_app(self, dev) -> bool:
        rc, out = self._shell(dev, f"pm list packages {APP_PACKAGE}")
        return rc == 0 and f"package:{APP_PACKAGE}" in out.split()

    def _has_binary(self, dev) -> bool:
        return self._shell(dev, f"test -x {REMOTE_BINARY}")[0] == 0

    def abi(self, dev: adbutils.AdbDevice) -> str:
        """The phone's primary ABI (ro.product.cpu.abi), e.g. arm64-v8a."""
        rc, out = self._shell(dev, "getprop ro.product.cpu.abi")
        return out.strip() if rc == 0 else ""

    def push_binary(self, dev: adbutils.AdbDevice, binary: Path) -> str:
        """Push ``binary`` (an arm64 executable) to REMOTE_BINARY once the phone's ABI is
        checked to be arm64-v8a, make it executable and run its ``--version`` there; returns
        that line. A phone whose kernel refuses it gets a PhoneError with what it said."""
        abi = self.abi(dev)
        if abi != ARM64_ABI:
            raise PhoneError(f"{self.config.serial}'s ABI (ro.product.cpu.abi) is "
                             f"{abi or 'unreadable'}, not {ARM64_ABI}; the standalone runner "
                             f"is built for {ARM64_ABI} only: use the app built for this ABI "
                             f"(android_app/README.md)")
        check_arm64_executable(binary)
        self._shell(dev, f"mkdir -p {REMOTE_DIR}")
        try:
            dev.push(str(binary), REMOTE_BINARY)
        except (adbutils.AdbError, OSError) as e:
            raise PhoneError(f"pushing {binary} to {self.config.serial} failed: {e}") from e
        self._shell(dev, f"chmod 755 {REMOTE_BINARY}")
        rc, out = self._shell(dev, f"cd {REMOTE_DIR} && ./npas-runner --version")
        if rc != 0 or not out.startswith("npas-runner "):
            raise PhoneError(f"{binary} was pushed to {self.config.serial} but does not run "
                             f"there (exit {rc}: {out.strip() or 'no output'}); a static glibc "
                             f"build may not suit this kernel: use the app "
                             f"(android_app/README.md)")
        return out.strip()

    # -- lifecycle --
    def start(self) -> None:
        dev = self.device()
        mode = self.config.mode
        if mode == "auto":
            mode = "app" if self._has_app(dev) else "binary" if self._has_binary(dev) else ""
        if not mode:
            try:
                static = find_static_arm64_runner()
            except FileNotFoundError as e:
                raise PhoneError(f"no NPAS runner on {self.config.serial}: install it with "
                                 f"`npas-host install --device {self.config.serial}` (the "
                                 f"static arm64 runner; {e}), `--apk PATH` or "
                                 f"`--binary PATH`") from None
            self.version = self.push_binary(dev, static)
            mode = "binary"
        self.mode = mode
        self.token = secrets.token_hex(32)
        port = self.config.device_port or 20000 + secrets.randbelow(30000)
        if mode == "app":
            # the ongoing notification needs this on Android 13+; harmless where granted
            self._shell(dev, f"pm grant {APP_PACKAGE} android.permission.POST_NOTIFICATIONS")
            rc, out = self._shell(dev, f"am start-foreground-service -n {APP_SERVICE} "
                                       f"--es token {self.token} --ei port {port}")
            if rc != 0 or "Error" in out:
                raise PhoneError(f"could not start {APP_SERVICE}: {out.strip()}")
        else:
            cmd = (f"cd {REMOTE_DIR} && umask 077 && echo {self.token} > token && "
                   f"(nohup {REMOTE_BINARY} --listen 127.0.0.1:{port} --token-file token "
                   f"--store store > runner.log 2>&1 &)")
            rc, out = self._shell(dev, cmd)
            if rc != 0:
                raise PhoneError(f"could not start {REMOTE_BINARY}: {out.strip()}")
        try:
            self._local_port = dev.forward_port(port)
        except adbutils.AdbError as e:
            raise PhoneError(f"adb forward to port {port} on {self.config.serial}: {e}") from e
        self.address = f"127.0.0.1:{self._local_port}"
        self._wait_answering(dev)

    def _wait_answering(self, dev) -> None:
        deadline = time.monotonic() + self.config.startup_timeout_s
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                with RunnerClient(self.address, self.token) as c:
                    c.device_info(timeout_s=2.0)
                return
            except RunnerError as e:
                last = e
                time.sleep(0.5)
        log = ""
        if self.mode == "binary":
            log = self._shell(dev, f"tail -n 20 {REMOTE_DIR}/runner.log")[1]
        raise PhoneError(f"the runner on {self.config.serial} did not answer within "
                         f"{self.config.startup_timeout_s:.0f} s ({last}); {log}".strip())

    def stop(self) -> None:
        try:
            dev = self.device()
        except PhoneError:
            return  # the phone is gone: nothing left to stop
        if self.mode == "app":
            self._shell(dev, f"am stopservice -n {APP_SERVICE}")
        elif self.mode == "binary":
            self._shell(dev, f"pkill -f {REMOTE_BINARY} || true")
        if self._local_port:
            try:
                dev.forward_remove(f"tcp:{self._local_port}", raise_non_found=False)
            except adbutils.AdbError:
                pass
            self._local_port = 0

    def restart(self) -> None:
        self.stop()
        self.start()

    def client(self, timeout_s: float = 60.0) -> RunnerClient:
        if not self.address:
            raise PhoneError(f"the runner on {self.config.serial} is not started")
        return RunnerClient(self.address, self.token, timeout_s)

    def close(self) -> None:
        self.stop()

    # -- measurement hygiene --
    def before_measure(self, on_event: Callable[[str], None]) -> None:
        """Wait until the battery is below max_temp_c (phones throttle when hot)."""
        dev = self.device()
        deadline = time.monotonic() + self.config.cool_timeout_s
        while True:
            t = battery_temp_c(dev)
            if t is None or t <= self.config.max_temp_c:
                return
            if time.monotonic() > deadline:
                on_event(f"{self.config.serial}: still {t:.1f} °C after "
                         f"{self.config.cool_timeout_s:.0f} s; measuring anyway")
                return
            on_event(f"{self.config.serial}: {t:.1f} °C > {self.config.max_temp_c:.1f} °C, "
                     f"cooling down")
            time.sleep(self.config.cool_poll_s)


def from_spec(spec: DeviceSpec, stack: ExitStack) -> PhoneRunner:
    """The phone whose adb serial is ``spec.name`` (devices/__init__.py's registry)."""
    phone = PhoneRunner(PhoneConfig(serial=spec.name, max_temp_c=spec.max_temp_c,
                                    pin_big_cores=spec.pin_big_cores))
    stack.callback(phone.close)
    return phone


def check_arm64_executable(path: Path) -> None:
    head = path.read_bytes()[:20]
    if head[:4] != b"\x7fELF" or int.from_bytes(head[18:20], "little") != EM_AARCH64:
        raise PhoneError(f"{path} is not an arm64 ELF executable; build the standalone "
                         f"runner for arm64-v8a (android_app/README.md)")


def install(config: PhoneConfig, apk: Path | None = None, binary: Path | None = None,
            adb: adbutils.AdbClient | None = None) -> PhoneRunner:
    """Install the app or push a standalone runner (``binary``, by default this checkout's
    static arm64 runner), then start it once to check it answers. Returns the started runner
    (the caller stops it)."""
    if apk is not None and binary is not None:
        raise PhoneError("give at most one of --apk PATH or --binary PATH")
    if apk is None and binary is None:
        try:
            binary = find_static_arm64_runner()
        except FileNotFoundError as e:
            raise PhoneError(f"{e} (or give --apk PATH or --binary PATH)") from None
    runner = PhoneRunner(config, adb)
    dev = runner.device()
    if apk is not None:
        if not apk.is_file():
            raise PhoneError(f"--apk {apk}: no such file")
        try:
            dev.install(str(apk), nolaunch=True, silent=True)
        except adbutils.AdbError as e:
            raise PhoneError(f"installing {apk} on {config.serial} failed: {e}") from e
        config.mode = "app"
    else:
        assert binary is not None
        if not binary.is_file():
            raise PhoneError(f"--binary {binary}: no such file")
        runner.version = runner.push_binary(dev, binary)
        config.mode = "binary"
    runner.start()
    return runner
