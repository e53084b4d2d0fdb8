"""Host tier: the runner's use of the OS the way a phone allows it. The CPU topology comes from
sysfs (possible/online lists, cpufreq limits, cpu_capacity, frequency domains, MIDR), fed
here as a real directory tree the test writes (a Snapdragon-855-like phone: 4 little, 3 mid,
1 prime core, one of the little ones hot-unplugged) and read by the real runner through
--sysfs-root. Files it may not read (an SELinux denial on a phone; here mode 000, with the
runner dropped to an unprivileged user when the tests run as root) are named as missing and
the measurement goes on; cores the OS refuses to pin to are reported at the load and the
threads run unpinned. Listening needs no name service: numeric addresses only."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from zoo import small_cnn

from host.devices.local import READY_PREFIX
from host.measure import MeasureConfig
from host.rpc.client import RunnerClient

pytestmark = pytest.mark.host

NOBODY = 65534
# cpu: (max kHz, capacity, domain, MIDR, current kHz)
LITTLE = (1785600, 356, "0-3", "0x00000000411fd050")
MID = (2419200, 1024, "4-6", "0x00000000413fd0b0")
PRIME = (2841600, 1024, "7", "0x00000000413fd0b0")
CPUS = [LITTLE] * 4 + [MID] * 3 + [PRIME]
ZONES = [("cpu-0-0-usr", "41000"), ("battery", "30500"), ("gpuss-0", None), ("skin", "35000")]


def _write(path: Path, text: str, denied: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")
    if denied:
        path.chmod(0)


def make_fake_sysfs(root: Path) -> None:
    """The tree a phone's /sys shows, with some reads denied: cpu5's cpuinfo_max_freq (its
    scaling_max_freq still says), cpu6's current frequency, thermal zone 2's temperature."""
    cpu = root / "devices/system/cpu"
    _write(cpu / "possible", "0-7")
    _write(cpu / "present", "0-7")
    _write(cpu / "online", "0-2,4-7")
    for i, (max_khz, capacity, domain, midr) in enumerate(CPUS):
        d = cpu / f"cpu{i}"
        _write(d / "cpufreq/cpuinfo_max_freq", str(max_khz), denied=i == 5)
        _write(d / "cpufreq/scaling_max_freq", str(max_khz))
        _write(d / "cpufreq/scaling_cur_freq", str(max_khz - 1000 * i), denied=i == 6)
        _write(d / "cpufreq/related_cpus", domain)
        _write(d / "cpu_capacity", str(capacity))
        _write(d / "regs/identification/midr_el1", midr)
    # zone 3 is named thermal_zone10: it sorts after thermal_zone2
    for n, (kind, temp) in zip((0, 1, 2, 10), ZONES, strict=True):
        z = root / f"class/thermal/thermal_zone{n}"
        _write(z / "type", kind)
        _write(z / "temp", temp or "52000", denied=temp is None)


@contextmanager
def started_runner(binary: Path, *args: str, launcher: tuple[str, ...] = ()
                   ) -> Iterator[tuple[RunnerClient, list[str], Path]]:
    """npas-runner with ``args`` on a free loopback port, through ``launcher`` (an emulator)
    if given: (client, the lines it logged, its token file). As root it runs as an
    unprivileged user, so that mode 000 files deny its reads."""
    work = Path(tempfile.mkdtemp(prefix="npas-os-test-"))
    try:
        work.chmod(0o755)
        token = secrets.token_hex(16)
        (work / "token").write_text(token)
        (work / "token").chmod(0o600)
        (work / "store").mkdir()
        prefix: list[str] = []
        if os.geteuid() == 0:
            for p in (work / "token", work / "store"):
                os.chown(p, NOBODY, NOBODY)
            prefix = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
            # the checkout may sit under a folder only root can enter (a CI clone in a
            # mktemp -d): the unprivileged user runs a copy in the work folder
            binary = Path(shutil.copy2(binary, work / binary.name))
        proc = subprocess.Popen(
            [*prefix, *launcher, str(binary), "--listen", "127.0.0.1:0", "--token-file",
             str(work / "token"), "--store", str(work / "store"), "--exit-on-stdin-eof",
             *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=open(work / "log", "w"), text=True)
        log: list[str] = []
        try:
            line = proc.stdout.readline()
            assert line.startswith(READY_PREFIX), (line, (work / "log").read_text())
            client = RunnerClient(line[len(READY_PREFIX):].strip(), token, 60)
            try:
                yield client, log, work / "token"
            finally:
                client.close()
        finally:
            proc.terminate()
            proc.wait(timeout=10)
            log.extend((work / "log").read_text().splitlines())
    finally:
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture()
def fake_sysfs(tmp_path_factory) -> Path:
    root = Path(tempfile.mkdtemp(prefix="npas-sysfs-"))
    root.chmod(0o755)
    make_fake_sysfs(root)
    for d, _, _ in os.walk(root):
        Path(d).chmod(0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)


def test_topology_telemetry_and_denied_reads_from_a_fake_sysfs(fake_sysfs, runner_binary,
                                                                compiled):
    bundle, _, _ = compiled("small_cnn", small_cnn, (1, 3, 32, 32))
    check_fake_phone(runner_binary, (), fake_sysfs, bundle)


def test_profile_says_what_the_device_would_not_let_it_read(fake_sysfs, runner_binary,
                                                            capsys):
    from host.cli import main

    with started_runner(runner_binary, "--sysfs-root", str(fake_sysfs)) as (client, _, token):
        argv = ["profile", "zoo:small_cnn", "--input-shape", "1,3,32,32", "--address",
                client.address, "--token-file", str(token), "--runs", "2", "--warmup", "1"]
        assert main([*argv, "--json"]) == 0
        d = json.loads(capsys.readouterr().out)
        assert main(argv) == 0
        table = capsys.readouterr().out
    assert "cpu5 cpufreq/cpuinfo_max_freq: Permission denied" in " ".join(d["device_missing"])
    assert "cpu6 scaling_cur_freq: Permission denied" in d["telemetry_after"]["missing"]
    assert len(d["samples_ns"]) == 2  # measured all the same
    assert "not readable on the device" in table and "cpu6 scaling_cur_freq" in table


def static_arm64() -> tuple[Path, str]:
    from host.devices.qemu import find_qemu
    from host.devices.qemu_static import find_static_arm64_runner

    try:
        return find_static_arm64_runner(), find_qemu()
    except FileNotFoundError as e:
        pytest.skip(f"arm64 static tier: {e}")


@pytest.mark.arm64
def test_the_static_arm64_runner_reads_the_fake_phone_too(fake_sysfs, tmp_path_factory):
    """The binary a phone gets (static glibc, arm64, under plain qemu-aarch64): the same
    topology, denials and refused pinning, with arm64 kernels."""
    from codegen import compile_model
    from codegen.toolchain import Arm64AndroidToolchain

    if not shutil.which("clang") or not shutil.which("ld.lld"):
        pytest.skip("arm64 tier: clang and lld are needed (scripts/build_arm64.sh)")
    binary, qemu = static_arm64()
    import torch

    out = tmp_path_factory.mktemp("os-arm64-bundle")
    out.chmod(0o755)
    bundle = compile_model(small_cnn(), (torch.randn(1, 3, 32, 32),), out, name="os_arm64",
                           toolchain=Arm64AndroidToolchain())
    check_fake_phone(binary, (qemu,), fake_sysfs, bundle)


def check_fake_phone(binary: Path, launcher: tuple[str, ...], fake_sysfs: Path, bundle) -> None:
    with started_runner(binary, "--sysfs-root", str(fake_sysfs),
                        launcher=launcher) as (client, log, _):
        info = client.device_info()
        client.ensure_artifacts(bundle)
        loaded = client.load_model(bundle.manifest, MeasureConfig(threads=2, pin_big_cores=True))
        r = client.benchmark(loaded.handle, MeasureConfig(runs=3, warmup=1))
    assert info.protocol_minor >= 3
    cores = {c.id: c for c in info.cores}
    assert sorted(cores) == list(range(8))
    assert [cores[i].max_freq_khz for i in range(8)] == [c[0] for c in CPUS]  # cpu5: scaling_
    assert [cores[i].capacity for i in range(8)] == [c[1] for c in CPUS]
    assert [cores[i].cluster for i in range(8)] == [0, 0, 0, 0, 4, 4, 4, 7]
    assert [i for i in range(8) if cores[i].offline] == [3]
    assert [i for i in range(8) if cores[i].is_big] == [7]  # the prime core alone
    assert info.default_threads == 1
    assert info.cpu_model == "4x Cortex-A76 + 4x Cortex-A55"  # from MIDR_EL1, not cpuinfo
    assert any(m.startswith("cpu5 cpufreq/cpuinfo_max_freq: Permission denied")
               for m in info.missing), info.missing

    # telemetry: what could be read is there, the denied reads are named, the runs happened
    assert len(r.samples_ns) == 3 and r.first_run_ns > 0
    for t in (r.telemetry_before, r.telemetry_after):
        assert t.core_freq_khz == {i: CPUS[i][0] - 1000 * i for i in range(8) if i != 6}
        assert list(t.thermal_millicelsius) == ["cpu-0-0-usr", "battery", "skin"]
        assert t.thermal_millicelsius["battery"] == 30500
        assert "cpu6 scaling_cur_freq: Permission denied" in t.missing
        assert "thermal_zone2 (gpuss-0) temp: Permission denied" in t.missing

    # pinned to the big core (cpu 7): where this machine has no cpu 7 the OS refuses, the
    # load says so and the threads run unpinned (the benchmark above still ran)
    assert loaded.cpu_affinity == (7, 7)
    if 7 not in os.sched_getaffinity(0):
        assert "cpu 7: Invalid argument" in loaded.affinity_note
        assert any("pinning refused" in line for line in log), log


def test_a_bare_sysfs_tree_still_gives_cores(runner_binary, tmp_path):
    """A malformed possible list, no cpufreq, no thermal zones (a VM, a locked-down phone):
    the present list is used, every core counts as big, the malformed file is named."""
    root = Path(tempfile.mkdtemp(prefix="npas-sysfs-bare-"))
    try:
        _write(root / "devices/system/cpu/possible", "0-3,x")
        _write(root / "devices/system/cpu/present", "0-1")
        for d, _, _ in os.walk(root):
            Path(d).chmod(0o755)
        with started_runner(runner_binary, "--sysfs-root", str(root)) as (client, _, _):
            info = client.device_info()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    assert [(c.id, c.is_big, c.max_freq_khz, c.offline) for c in info.cores] == [
        (0, True, 0, False), (1, True, 0, False)]
    assert info.default_threads == 2
    assert any("cpu possible: not a CPU list ('0-3,x')" in m for m in info.missing), info.missing


def test_a_missing_sysfs_root_is_a_usage_error(runner_binary, tmp_path):
    r = subprocess.run([str(runner_binary), "--sysfs-root", str(tmp_path / "nope"),
                        "--token-file", "t", "--store", "s"], capture_output=True, text=True)
    assert r.returncode == 2 and "--sysfs-root" in r.stderr and "not a directory" in r.stderr


def test_listen_needs_no_name_service(runner_binary, tmp_path):
    """localhost is mapped to 127.0.0.1 by the runner itself; a name is refused, never
    resolved (a static runner on a phone has no glibc NSS to resolve it with)."""
    token = tmp_path / "t"
    token.write_text("abc")
    token.chmod(0o600)
    base = [str(runner_binary), "--token-file", str(token), "--store", str(tmp_path / "s")]
    p = subprocess.Popen([*base, "--listen", "localhost:0"], stdout=subprocess.PIPE, text=True,
                         stderr=subprocess.DEVNULL)
    try:
        assert p.stdout.readline().startswith(READY_PREFIX + "127.0.0.1:")
    finally:
        p.terminate()
        p.wait(timeout=10)
    r = subprocess.run([*base, "--listen", "runner.example:0", "--allow-remote"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 1 and "not a numeric address" in r.stderr


@pytest.mark.skipif(not shutil.which("strace"), reason="strace not installed")
def test_starting_on_localhost_opens_no_nss_file(runner_binary, tmp_path):
    """What a phone lacks is never touched: no nsswitch.conf, no libnss_*, no hosts file."""
    trace = tmp_path / "trace"
    opened = _opened_files(["strace", "-f", "-e", "trace=openat,open", "-o", str(trace),
                            str(runner_binary)], tmp_path, lambda _err: trace.read_text())
    _no_nss(opened)


@pytest.mark.arm64
def test_the_static_arm64_runner_opens_no_nss_file(tmp_path):
    """The same for the static glibc binary phones get, under qemu-aarch64 -strace (which
    logs the guest's system calls to stderr), through a whole session: upload, load (dlopen
    of the kernels), a pinned benchmark with per-layer times. Nothing under /etc is read."""
    from codegen import compile_model
    from codegen.toolchain import Arm64AndroidToolchain

    if not shutil.which("clang") or not shutil.which("ld.lld"):
        pytest.skip("arm64 tier: clang and lld are needed (scripts/build_arm64.sh)")
    binary, qemu = static_arm64()
    import torch

    bundle = compile_model(small_cnn(), (torch.randn(1, 3, 32, 32),), tmp_path / "b",
                           name="nss_arm64", toolchain=Arm64AndroidToolchain())

    def session(client: RunnerClient) -> None:
        client.ensure_artifacts(bundle)
        m = client.load_model(bundle.manifest, MeasureConfig(threads=2, pin_big_cores=True))
        r = client.benchmark(m.handle, MeasureConfig(runs=2, warmup=1, per_layer=True))
        assert len(r.samples_ns) == 2 and r.peak_rss_bytes > 0

    opened = _opened_files([qemu, "-strace", str(binary)], tmp_path, lambda err: err, session)
    _no_nss(opened)
    assert '"/etc/' not in opened


def _opened_files(command: list[str], tmp_path: Path, trace_of, during=None) -> str:
    """Start ``command`` (a traced runner) on localhost:0, call ``during(client)`` if given,
    stop it by closing its stdin, and return its trace (``trace_of(stderr)``)."""
    token = tmp_path / "t"
    token.write_text("abc")
    token.chmod(0o600)
    log = tmp_path / "stderr"
    with open(log, "w") as err:
        p = subprocess.Popen([*command, "--token-file", str(token), "--store",
                              str(tmp_path / "s"), "--listen", "localhost:0",
                              "--exit-on-stdin-eof"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err,
                             text=True)
        try:
            line = p.stdout.readline()
            assert line.startswith(READY_PREFIX + "127.0.0.1:"), log.read_text()[-2000:]
            if during is not None:
                with RunnerClient(line[len(READY_PREFIX):].strip(), "abc", 300) as client:
                    during(client)
        finally:
            p.stdin.close()  # the runner exits on its stdin's end, then the tracer does
            p.wait(timeout=60)
    return trace_of(log.read_text())


def _no_nss(opened: str) -> None:
    assert "openat" in opened
    for name in ("nsswitch.conf", "libnss_", "/etc/hosts", "resolv.conf", "gai.conf"):
        assert name not in opened, name
