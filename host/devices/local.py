"""The local device: an npas-runner process on this machine, on loopback, with a fresh token.

The runner picks a free port itself (``--listen 127.0.0.1:0``) and prints it on its first
stdout line, so there is no race between choosing a port and binding it. Its artifact store
persists across restarts, so a restarted runner needs no re-upload. The runner's folder (token,
log) and a private store (``scratch_runner``) are held under a lock while their owner lives;
those of an owner killed before it could remove them are removed by the next runner's start
(``reap_orphans``).
"""

from __future__ import annotations

import fcntl
import os
import secrets
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from ..rpc.client import RunnerClient, RunnerError
from . import DeviceSpec, DeviceTraits

REPO_ROOT = Path(__file__).resolve().parents[2]
READY_PREFIX = "NPAS-RUNNER LISTENING "
RUNNER_DIR_PREFIX = "npas-runner-"  # in the temporary folder: the token file and the log


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "npas"


def find_runner_binary(explicit: Path | None = None) -> Path:
    """The host runner: an explicit path, $NPAS_RUNNER (scripts/test.sh points it at the
    sanitizer build for the runner tests), the project's build, or npas-runner on PATH."""
    if not explicit and os.environ.get("NPAS_RUNNER"):
        explicit = Path(os.environ["NPAS_RUNNER"])
    candidates = [explicit] if explicit else [REPO_ROOT / "build" / "host" / "npas-runner"]
    if not explicit and (p := shutil.which("npas-runner")):
        candidates.append(Path(p))
    for c in candidates:
        if c and c.is_file() and os.access(c, os.X_OK):
            return c
    tried = ", ".join(str(c) for c in candidates)
    raise FileNotFoundError(f"npas-runner not found (tried {tried}); build it with "
                            f"scripts/setup.sh")


@dataclass
class LocalRunnerConfig:
    binary: Path | None = None
    store: Path = field(default_factory=lambda: default_cache_dir() / "store-local")
    startup_timeout_s: float = 20.0
    extra_args: tuple[str, ...] = ()
    env: dict[str, str] | None = None  # the runner's environment (default: inherit)
    # Run the binary through this (an emulator: devices/qemu.py); empty runs it directly.
    command_prefix: tuple[str, ...] = ()


class LocalRunner:
    """Start, stop and restart one npas-runner process."""

    name = "local"
    traits = DeviceTraits(shares_host_cpu=True)

    def __init__(self, config: LocalRunnerConfig | None = None):
        self.config = config or LocalRunnerConfig()
        self.binary = find_runner_binary(self.config.binary)
        self._owned = ExitStack()  # the folder and its lock, until close()
        tmp = Path(tempfile.gettempdir())
        reap_orphans(tmp, RUNNER_DIR_PREFIX)
        self._dir = _owned_dir(tmp, RUNNER_DIR_PREFIX, self._owned)
        self._proc: subprocess.Popen | None = None
        self.address = ""
        self.token = ""

    @property
    def log_path(self) -> Path:
        return self._dir / "runner.log"

    def start(self) -> None:
        if self.alive():
            return
        self.token = secrets.token_hex(32)
        token_file = self._dir / "token"
        fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(self.token)
        self.config.store.mkdir(parents=True, exist_ok=True)
        cmd = [*self.config.command_prefix, str(self.binary), "--listen", "127.0.0.1:0",
               "--token-file", str(token_file), "--store", str(self.config.store),
               "--exit-on-stdin-eof", *self.config.extra_args]
        log = open(self.log_path, "ab")
        try:
            # stdin: a pipe only this process writes to; the runner exits when it closes,
            # so a SIGKILLed host does not leave its runner behind
            self._proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log,
                                          stdin=subprocess.PIPE, start_new_session=True,
                                          env=self.config.env)
        finally:
            log.close()
        self.address = self._read_address()

    def _read_address(self) -> str:
        assert self._proc and self._proc.stdout
        line: list[bytes] = []
        reader = threading.Thread(target=lambda: line.append(self._proc.stdout.readline()),
                                  daemon=True)
        reader.start()
        reader.join(self.config.startup_timeout_s)
        text = line[0].decode(errors="replace").strip() if line else ""
        if not text.startswith(READY_PREFIX):
            self.stop()
            raise RunnerError("start", "UNAVAILABLE",
                              f"{self.binary} did not start within "
                              f"{self.config.startup_timeout_s:.0f} s (stdout: {text!r}); "
                              f"log tail:\n{self.log_tail()}")
        return text[len(READY_PREFIX):]

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def stop(self, timeout_s: float = 5.0) -> None:
        p, self._proc = self._proc, None
        if p is None:
            return
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(timeout_s)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for f in (p.stdin, p.stdout):
            if f:
                f.close()

    def restart(self) -> None:
        self.stop()
        self.start()

    def client(self, timeout_s: float = 60.0) -> RunnerClient:
        if not self.alive():
            raise RunnerError("connect", "UNAVAILABLE", "the local runner is not running")
        return RunnerClient(self.address, self.token, timeout_s)

    def before_measure(self, on_event: Callable[[str], None]) -> None:
        pass

    def close(self) -> None:
        self.stop()
        self._owned.close()

    def __enter__(self) -> LocalRunner:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def scratch_runner(binary: Path | None, prefix: str, max_store_bytes: int,
                   stack: ExitStack) -> LocalRunner:
    """A local runner with a private artifact store in the cache folder, removed (with the
    runner) when ``stack`` closes: for work that uploads many distinct bundles (a search's
    candidates, a tuner's variants), which would fill and pollute the shared store. Stores of
    owners that are gone (a SIGKILLed search) are removed first. A missing runner binary
    raises FileNotFoundError."""
    cache = default_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    reap_orphans(cache, prefix)
    store = _owned_dir(cache, prefix, stack)
    runner = LocalRunner(LocalRunnerConfig(
        binary=binary, store=store, extra_args=("--max-store-bytes", str(max_store_bytes))))
    stack.callback(runner.close)
    return runner


def _owned_dir(parent: Path, prefix: str, stack: ExitStack) -> Path:
    """``parent/PREFIXPID-XXXX/``, with ``….lock`` beside it locked (flock) until ``stack``
    closes or this process dies; the lock is taken before the folder exists, so a reaper never
    sees the folder unlocked while its owner lives."""
    fd, lock = tempfile.mkstemp(prefix=f"{prefix}{os.getpid()}-", suffix=".lock", dir=parent)
    fcntl.flock(fd, fcntl.LOCK_EX)
    stack.callback(os.close, fd)
    stack.callback(Path(lock).unlink, missing_ok=True)
    folder = Path(lock[:-len(".lock")])
    folder.mkdir(mode=0o700)
    stack.callback(shutil.rmtree, folder, True)
    return folder


def reap_orphans(parent: Path, prefix: str) -> list[Path]:
    """Remove the folders ``_owned_dir`` made in ``parent`` whose owner is gone (its lock is
    free; without a lock, when the pid in the name is not running); return them."""
    gone = []
    for entry in sorted(parent.glob(prefix + "*")):
        lock = entry if entry.suffix == ".lock" else entry.with_name(entry.name + ".lock")
        folder = lock.with_name(lock.name[:-len(".lock")])
        if entry == lock and folder.exists():
            continue  # handled with its folder
        if lock.exists():
            if not _lock_is_free(lock):
                continue
        elif not _owner_gone(folder.name[len(prefix):]):
            continue
        shutil.rmtree(folder, ignore_errors=True)
        lock.unlink(missing_ok=True)
        if entry == folder:
            gone.append(folder)
    return gone


def _lock_is_free(lock: Path) -> bool:
    try:
        fd = os.open(lock, os.O_RDWR)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)  # releases the lock if we took it


def _owner_gone(name: str) -> bool:
    """``name`` starts with a pid and a dash (``1234-abcd``) and that pid is not running; other
    names (``abcd``: older stores, whose owner is unknown) are kept."""
    pid, dash, _ = name.partition("-")
    if not dash or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False


def from_spec(spec: DeviceSpec, stack: ExitStack) -> LocalRunner:
    """The host runner for ``spec`` (devices/__init__.py's registry): its --store, else a
    private temporary store when ``spec.private_store_bytes`` is set, else the shared one."""
    if spec.store is None and spec.private_store_bytes is not None:
        return scratch_runner(spec.runner, "scratch-store-", spec.private_store_bytes, stack)
    cfg = LocalRunnerConfig(binary=spec.runner)
    if spec.store is not None:
        cfg.store = spec.store
    runner = LocalRunner(cfg)
    stack.callback(runner.close)
    return runner
