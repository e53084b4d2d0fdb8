"""Host tier: a search killed with SIGKILL (which runs no cleanup) leaves nothing behind: its
compile process and multiprocessing's resource tracker exit, and its private artifact store and
its runner's folder are removed by the next start of a private store and a runner."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from contextlib import ExitStack
from pathlib import Path

import pytest
from procs import descendants, wait_gone

from host.devices.local import reap_orphans, scratch_runner

pytestmark = pytest.mark.host
REPO = Path(__file__).resolve().parents[1]

COMPILE_HOST = """
import os, time
from host.search.oracle import compile_pool
pool = compile_pool()
print(pool.submit(os.getpid).result(), flush=True)
time.sleep(600)
"""

STORE_HOST = """
import sys, time
from contextlib import ExitStack
from pathlib import Path
from host.devices.local import scratch_runner
r = scratch_runner(Path(sys.argv[1]), "scratch-store-", 1 << 20, ExitStack())
print(r.config.store, r.log_path.parent, flush=True)
time.sleep(600)
"""


def _host(code: str, *args: str, env: dict | None = None) -> tuple[subprocess.Popen, str]:
    p = subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE,
                         text=True, cwd=REPO, env=env)
    return p, p.stdout.readline().strip()


def test_the_compile_process_and_resource_tracker_die_with_a_sigkilled_host():
    host, worker = _host(COMPILE_HOST)
    try:
        below = descendants(host.pid)
        assert int(worker) in {pid for pid, _ in below}, below
        assert any("resource_tracker" in cmd for cmd in below.values()), below
        host.send_signal(signal.SIGKILL)
        host.wait()
        left = wait_gone(below, 30)
        assert not left, f"outlived the SIGKILLed host: {[below[i] for i in left]}"
    finally:
        host.kill()
        host.stdout.close()


def test_a_private_store_of_a_killed_owner_is_removed_by_the_next_start(
        runner_binary, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    host, printed = _host(STORE_HOST, str(runner_binary),
                          env={**os.environ, "XDG_CACHE_HOME": str(cache)})
    killed, runner_dir = printed.split(" ")
    try:
        assert Path(killed).is_dir() and Path(killed).parent == cache / "npas"
        assert Path(runner_dir).is_dir()
        host.send_signal(signal.SIGKILL)
        host.wait()
    finally:
        host.kill()
        host.stdout.close()
    assert Path(killed).is_dir() and Path(runner_dir).is_dir()  # its owner could not remove them
    old = cache / "npas" / "scratch-store-abcd1234"  # an older npas's store: owner unknown
    old.mkdir()
    with ExitStack() as mine:
        live = scratch_runner(runner_binary, "scratch-store-", 1 << 20, mine).config.store
        assert not Path(killed).exists() and not Path(killed + ".lock").exists()
        assert not Path(runner_dir).exists() and not Path(runner_dir + ".lock").exists()
        assert live.is_dir() and old.is_dir()
        assert reap_orphans(cache / "npas", "scratch-store-") == []  # its owner lives
        assert live.is_dir()
    assert not live.exists() and not live.with_name(live.name + ".lock").exists()
    assert old.is_dir()
