"""Host tier: the runner bugs of issue 19 that a longer run found, each as a regression test, and
the faults of its point 4: a runner killed during an upload or a benchmark, a full disk, clock
jumps, a wrong-token client beside a running measurement. Each test checks the runner still
serves afterwards."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import grpc
import pytest
from zoo import small_cnn

from codegen.bundle import artifact_ref, load_bundle
from host.devices.local import LocalRunner, LocalRunnerConfig
from host.devices.session import Session
from host.measure import MeasureConfig
from host.rpc.client import RunnerClient, RunnerError
from host.rpc.convert import kind_to_proto

pytestmark = pytest.mark.host


@pytest.fixture(scope="module")
def bundle(compiled):
    return compiled("small_cnn", small_cnn, (1, 3, 32, 32))[0]


def _runner(runner_binary, store: Path, *args: str, **kw) -> LocalRunner:
    return LocalRunner(LocalRunnerConfig(binary=runner_binary, store=store, extra_args=args,
                                         **kw))


def expect(code: str, match: str, fn, *args, **kwargs) -> RunnerError:
    with pytest.raises(RunnerError) as e:
        fn(*args, **kwargs)
    assert e.value.code == code, str(e.value)
    assert match.lower() in e.value.message.lower(), str(e.value)
    return e.value


def _blob(tmp_path: Path, name: str, size: int, seed: int) -> tuple[Path, str]:
    data = hashlib.sha256(bytes([seed])).digest() * (size // 32 + 1)
    p = tmp_path / name
    p.write_bytes(data[:size])
    return p, hashlib.sha256(data[:size]).hexdigest()


def _chunks(c: RunnerClient, data: bytes, sha: str, size: int | None = None):
    pb = c._pb
    yield pb.UploadChunk(header=pb.ArtifactHeader(kind=kind_to_proto("weights"), sha256=sha,
                                                  size=len(data) if size is None else size))
    for i in range(0, len(data), 64 << 10):
        yield pb.UploadChunk(data=data[i:i + (64 << 10)])


def _temp_files(store: Path) -> list[str]:
    return [p.name for p in store.iterdir() if p.name.startswith(".upload-")]


# ---- (1) the token is checked before a request's body is read ----

def _status_kb(pid: int, key: str) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def test_unauthenticated_bodies_are_not_read(runner_binary, tmp_path):
    """Four 15 MiB requests (under the 16 MiB limit) without the token: the runner refuses each
    on its metadata, before the body is buffered and parsed (VmHWM +53 MB for the four before;
    +6 MB now, about +23 MB for the ASan runner, whose quarantine keeps freed buffers)."""
    from host.rpc.stubs import load
    pb, grpc_mod = load()
    with _runner(runner_binary, tmp_path / "store") as r:
        before_kb = _status_kb(r.pid, "VmHWM")
        channel = grpc.insecure_channel(r.address)
        stub = grpc_mod.RunnerStub(channel)
        for i in range(4):
            req = pb.RunRequest(handle="x", inputs=[pb.Tensor(data=bytes([i]) * (15 << 20))])
            with pytest.raises(grpc.RpcError) as e:
                stub.Run(req, metadata=(("x-npas-token", "wrong"),), timeout=60)
            assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED, e.value
            assert "token" in e.value.details()
        channel.close()
        grown_mb = (_status_kb(r.pid, "VmHWM") - before_kb) / 1024
        assert r.client().device_info().protocol_major == 1
    assert grown_mb < 35, f"VmHWM grew by {grown_mb:.0f} MB"


# ---- (3) a manifest alone must not crash the runner ----

def test_step_symbol_naming_a_data_object_is_refused(runner_binary, bundle, tmp_path):
    """dlsym finds data objects too; calling the ABI version constant as a kernel would crash."""
    with _runner(runner_binary, tmp_path / "store") as r:
        c = r.client(timeout_s=30)
        c.ensure_artifacts(bundle)
        steps = list(bundle.manifest.steps)
        data = dataclasses.replace(steps[0], symbol="npas_kernel_abi_version")
        m = dataclasses.replace(bundle.manifest, steps=(data, *steps[1:]))
        err = expect("INVALID_ARGUMENT", "not a function", c.load_model, m,
                     MeasureConfig(threads=1))
        assert "npas_kernel_abi_version" in err.message
        assert r.alive()
        h = c.load_model(bundle.manifest, MeasureConfig(threads=1)).handle
        assert len(c.benchmark(h, MeasureConfig(runs=2, warmup=0)).samples_ns) == 2
        c.close()


def _step_table(bundle) -> dict[str, list[int]]:
    """The kernel library's npas_step_table, from the bundle's kernels.c."""
    src = (bundle.path / "kernels.c").read_text()
    body = src[src.index("npas_step_table[] ="):].split(";")[0]
    rows = "".join(re.findall(r'"([^"]*)"', body)).split("\\n")
    return {r.split()[0]: [int(v) for v in r.split()[1:]] for r in rows[1:] if r}


def test_a_manifest_that_disagrees_with_its_kernels_is_refused(runner_binary, bundle, tmp_path):
    """The library's step table (what each kernel was generated for) against the manifest,
    read from the file before loading: more work items than a kernel covers, a kernel called
    on a smaller output than it writes, a smaller param than it reads, another input count.
    Each would have the kernel write or read past its buffers; each is INVALID_ARGUMENT naming
    the step and both values, and the runner keeps serving."""
    m = bundle.manifest
    steps = list(m.steps)
    table = _step_table(bundle)
    s0 = steps[0]
    assert table[s0.symbol][0] == s0.work_items  # the table is the manifest's, unchanged
    # another conv kernel that writes more than step 0's output holds
    other = next(s for s in steps if s.op == s0.op and s.symbol != s0.symbol
                 and table[s.symbol][2] > m.tensors[s0.output].nbytes
                 and table[s.symbol][0] >= s0.work_items and len(s.params) == len(s0.params))
    p0 = s0.params[0]
    cases = [
        (dataclasses.replace(s0, work_items=s0.work_items * 1000), "work_items"),
        (dataclasses.replace(s0, symbol=other.symbol), "output's nbytes"),
        (dataclasses.replace(s0, params=(dataclasses.replace(p0, nbytes=p0.nbytes - 64),
                                         *s0.params[1:])), "param 0's nbytes"),
        (dataclasses.replace(s0, inputs=(*s0.inputs, s0.inputs[0])), "input count"),
    ]
    with _runner(runner_binary, tmp_path / "store") as r:
        c = r.client(timeout_s=30)
        c.ensure_artifacts(bundle)
        for step, field in cases:
            bad = dataclasses.replace(m, steps=(step, *steps[1:]))
            err = expect("INVALID_ARGUMENT", field, c.load_model, bad, MeasureConfig(threads=1))
            assert "step 0" in err.message and "step table" in err.message, err.message
            assert r.alive()
        h = c.load_model(m, MeasureConfig(threads=1)).handle
        assert len(c.benchmark(h, MeasureConfig(runs=2, warmup=0)).samples_ns) == 2
        c.close()


def test_a_malformed_step_table_is_refused_and_none_is_unchecked(runner_binary, bundle,
                                                                   tmp_path, cc):
    """A library whose npas_step_table does not parse is refused before loading; a library
    without one (hand-written) loads as before (and here lacks the bundle's kernels)."""
    for table, code, match in [('"npas-step-table 1\\nk 1 2\\n"', "FAILED_PRECONDITION",
                                "npas_step_table, line 2"),
                               (None, "NOT_FOUND", "is not exported")]:
        src = tmp_path / "lib.c"
        src.write_text(
            "#include <stdint.h>\n"
            "__attribute__((visibility(\"default\"))) const uint32_t npas_kernel_abi_version"
            " = 1u;\n" + ("" if table is None else
                          "__attribute__((visibility(\"default\"))) const char "
                          f"npas_step_table[] = {table};\n"))
        so = tmp_path / "lib.so"
        subprocess.run([cc, "-shared", "-fPIC", "-O1", "-o", str(so), str(src)], check=True)
        copy = tmp_path / f"bundle-{code}"
        shutil.copytree(bundle.path, copy)
        lib = copy / bundle.manifest.artifact("kernels").file
        lib.chmod(0o644)
        lib.write_bytes(so.read_bytes())
        arts = tuple(artifact_ref(copy, a.role, a.kind, a.file) for a in bundle.manifest.artifacts)
        b = load_bundle(copy, verify=False)
        b = dataclasses.replace(b, manifest=dataclasses.replace(b.manifest, artifacts=arts))
        with _runner(runner_binary, tmp_path / f"store-{code}") as r:
            c = r.client(timeout_s=30)
            c.ensure_artifacts(b)
            expect(code, match, c.load_model, b.manifest, MeasureConfig(threads=1))
            assert r.alive()
            c.close()


# ---- (6) one budget for all loaded models ----

def _need(bundle, threads: int = 1) -> int:
    m = bundle.manifest
    weights = sum(a.size for a in m.artifacts if a.role == "weights")
    return weights + m.arena_bytes + (m.scratch_bytes_per_thread + 63) // 64 * 64 * threads


def test_loaded_models_share_one_memory_budget(runner_binary, bundle, tmp_path):
    limit = _need(bundle) * 5 // 2
    with _runner(runner_binary, tmp_path / "store", "--max-model-bytes", str(limit)) as r:
        c = r.client(timeout_s=30)
        c.ensure_artifacts(bundle)
        one = MeasureConfig(threads=1)
        handles = [c.load_model(bundle.manifest, one).handle for _ in range(2)]
        err = expect("RESOURCE_EXHAUSTED", "--max-model-bytes", c.load_model, bundle.manifest,
                     one)
        assert str(limit) in err.message and "taken by loaded models" in err.message
        c.unload(handles.pop())
        handles.append(c.load_model(bundle.manifest, one).handle)  # its share came back
        for h in handles:
            c.unload(h)
        c.close()


# ---- (7) the store: eviction waits for data, a bundle's artifacts stay together,
#      stalled uploads time out ----

def test_an_upload_header_alone_evicts_nothing(runner_binary, tmp_path):
    a, sha_a = _blob(tmp_path, "a", 600_000, 1)
    b, sha_b = _blob(tmp_path, "b", 600_000, 2)
    store = tmp_path / "store"
    with _runner(runner_binary, store, "--max-store-bytes", "1000000") as r:
        c = r.client(timeout_s=30)
        c.upload(a, "weights", sha_a, a.stat().st_size)
        # A header that needs a's space, then the stream ends: nothing arrived, nothing evicted.
        with pytest.raises(grpc.RpcError) as e:
            c._stub.UploadArtifact(_chunks(c, b"", sha_b, size=600_000),
                                   metadata=c._metadata, timeout=30)
        assert e.value.code() == grpc.StatusCode.DATA_LOSS
        assert c.missing([sha_a]) == []
        # The data itself makes room.
        c.upload(b, "weights", sha_b, b.stat().st_size)
        assert c.missing([sha_a, sha_b]) == [sha_a]
        assert _temp_files(store) == []
        c.close()


def test_a_store_too_small_for_the_bundle_says_so_instead_of_not_found(runner_binary, bundle,
                                                                         tmp_path):
    """Each artifact fits, the bundle does not: uploading the weights must not evict the kernel
    library uploaded for the same bundle (a load would then fail NOT_FOUND for ever)."""
    sizes = [a.size for a in bundle.manifest.artifacts]
    limit = max(sizes) + min(sizes) // 2
    with _runner(runner_binary, tmp_path / "store", "--max-store-bytes", str(limit)) as r:
        c = r.client(timeout_s=30)
        err = expect("RESOURCE_EXHAUSTED", "bundle", c.ensure_artifacts, bundle)
        assert "--max-store-bytes" in err.message
        assert r.alive() and c.device_info().protocol_major == 1
        c.close()


def test_a_stalled_upload_is_cancelled_and_its_space_freed(runner_binary, tmp_path):
    store = tmp_path / "store"
    a, sha_a = _blob(tmp_path, "a", 900_000, 3)
    with _runner(runner_binary, store, "--max-store-bytes", "1000000",
                 "--upload-idle-timeout-s", "1") as r:
        c = r.client(timeout_s=30)
        release = threading.Event()

        def stalled():
            yield from _chunks(c, a.read_bytes()[:100_000], sha_a, size=900_000)
            release.wait(60)  # the client neither sends nor closes

        try:
            with pytest.raises(grpc.RpcError) as e:
                c._stub.UploadArtifact(stalled(), metadata=c._metadata, timeout=30)
            assert e.value.code() == grpc.StatusCode.CANCELLED, e.value
        finally:
            release.set()
        deadline = time.monotonic() + 20
        while _temp_files(store) and time.monotonic() < deadline:
            time.sleep(0.05)  # the handler's clean-up after the client saw the cancel
        assert _temp_files(store) == []
        # Its reservation is gone: the whole store is free for the same artifact.
        c.upload(a, "weights", sha_a, a.stat().st_size)
        assert "nothing received for 1 s, cancelled" in r.log_path.read_text()
        c.close()


# ---- faults: killed mid-upload, killed mid-benchmark ----

def test_a_runner_sharing_the_store_leaves_a_live_runners_uploads_alone(runner_binary,
                                                                        tmp_path):
    """Two runners on one store (two local runners, a device pool on one host): the second's
    start removes stale temp files only, not an upload the first has in flight (it did: the
    first runner's commit then failed, "cannot move the upload into place")."""
    store = tmp_path / "store"
    a, sha_a = _blob(tmp_path, "a", 2_000_000, 4)
    with _runner(runner_binary, store) as first:
        c = first.client(timeout_s=30)
        started = threading.Event()

        def slow():
            for i, chunk in enumerate(_chunks(c, a.read_bytes(), sha_a)):
                yield chunk
                if i == 2:
                    deadline = time.monotonic() + 10
                    while len(_temp_files(store)) < 3 and time.monotonic() < deadline:
                        time.sleep(0.02)  # the upload's own temp file, beside the two stale
                    started.set()
                    with _runner(runner_binary, store):
                        pass  # the second runner opens the store while the upload is open
        dead = subprocess.Popen(["true"])
        dead.wait()
        (store / f".upload-p{dead.pid}-{sha_a[:16]}-AAAAAA").write_bytes(b"x")  # its owner is gone
        (store / f".upload-{sha_a[:16]}-BBBBBB").write_bytes(b"x")  # the old naming
        c._stub.UploadArtifact(slow(), metadata=c._metadata, timeout=60)
        assert started.is_set() and c.missing([sha_a]) == []
        assert _temp_files(store) == []  # the stale ones went with the second runner's start
        c.close()


def test_runner_killed_during_an_upload_leaves_nothing_half_stored(runner_binary, tmp_path):
    store = tmp_path / "store"
    a, sha_a = _blob(tmp_path, "a", 2_000_000, 4)
    with _runner(runner_binary, store) as r:
        c = r.client(timeout_s=30)

        def dying():
            for i, chunk in enumerate(_chunks(c, a.read_bytes(), sha_a)):
                yield chunk
                if i == 10:
                    os.kill(r.pid, signal.SIGKILL)

        with pytest.raises(grpc.RpcError) as e:
            c._stub.UploadArtifact(dying(), metadata=c._metadata, timeout=30)
        assert e.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
        c.close()
        r.restart()  # same store: the stale temp file goes, the artifact is not there
        assert _temp_files(store) == [] and not (store / sha_a).exists()
        c = r.client(timeout_s=30)
        assert c.missing([sha_a]) == [sha_a]
        c.upload(a, "weights", sha_a, a.stat().st_size)
        assert c.missing([sha_a]) == []
        c.close()


def _cpu_ticks(pid: int) -> int:
    f = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()
    return int(f[11]) + int(f[12])  # utime + stime


def _kill_when_busy(runner: LocalRunner, ticks: int = 30) -> threading.Thread:
    """SIGKILL the runner once it has burnt `ticks` more CPU ticks (a benchmark is running)."""
    pid = runner.pid
    start = _cpu_ticks(pid)

    def watch():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and _cpu_ticks(pid) - start < ticks:
            time.sleep(0.02)
        os.kill(pid, signal.SIGKILL)

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    return t


def test_runner_killed_during_a_benchmark(runner_binary, bundle, tmp_path):
    """A bare client fails clearly (UNAVAILABLE); a Session restarts the runner, reloads and
    gets its measurement."""
    busy = MeasureConfig(runs=5, warmup=1, warmup_min_s=3.0, threads=1)
    with _runner(runner_binary, tmp_path / "store") as r:
        c = r.client(timeout_s=60)
        c.ensure_artifacts(bundle)
        h = c.load_model(bundle.manifest, MeasureConfig(threads=1)).handle
        killer = _kill_when_busy(r)
        expect("UNAVAILABLE", "", c.benchmark, h, busy)
        killer.join()
        c.close()
        r.restart()
        with Session(r) as s:
            key = s.load(bundle, MeasureConfig(threads=1))
            killer = _kill_when_busy(r)
            result = s.benchmark(key, busy)
            killer.join()
            assert s.restarts == 1 and r.alive()
            assert len(result.samples_ns) == 5 and min(result.samples_ns) > 0


# ---- faults: the store's disk full ----

def test_store_disk_full_is_resource_exhausted_naming_the_store(runner_binary, tmp_path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a 2 MiB tmpfs as a full disk")
    got = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)],
                         capture_output=True, text=True)
    if got.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {got.stderr.strip()}")
    try:
        store = mnt / "store"
        big, sha_big = _blob(tmp_path, "big", 3 << 20, 5)
        small, sha_small = _blob(tmp_path, "small.bin", 100_000, 6)
        with _runner(runner_binary, store) as r:
            c = r.client(timeout_s=30)
            err = expect("RESOURCE_EXHAUSTED", "no space left", c.upload, big, "weights",
                         sha_big, big.stat().st_size)
            assert str(store) in err.message
            assert _temp_files(store) == [] and c.missing([sha_big]) == [sha_big]
            c.upload(small, "weights", sha_small, small.stat().st_size)  # still serving
            assert c.missing([sha_small]) == []
            c.close()
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


# ---- faults: clock jumps ----

_JUMPING_CLOCK = r"""
#define _GNU_SOURCE
#include <sys/syscall.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>
/* The wall clock jumps an hour back and forth on every reading; the monotonic one is left.
   The real clock by syscall: no dlsym, which allocates (and under ASan re-enters malloc). */
static unsigned long calls;
int clock_gettime(clockid_t c, struct timespec* ts) {
  int r = (int)syscall(SYS_clock_gettime, c, ts);
  if (r == 0 && (c == CLOCK_REALTIME || c == CLOCK_REALTIME_COARSE))
    ts->tv_sec += (++calls % 2) ? -3600 : 3600;
  return r;
}
int gettimeofday(struct timeval* tv, void* tz) {
  struct timespec ts;
  int r = clock_gettime(CLOCK_REALTIME, &ts);
  if (r == 0 && tv) { tv->tv_sec = ts.tv_sec; tv->tv_usec = ts.tv_nsec / 1000; }
  (void)tz;
  return r;
}
"""


def test_wall_clock_jumps_do_not_change_measurements(runner_binary, bundle, tmp_path, cc):
    src, lib = tmp_path / "jump.c", tmp_path / "libjump.so"
    src.write_text(_JUMPING_CLOCK)
    subprocess.run([cc, "-shared", "-fPIC", "-O1", str(src), "-o", str(lib)], check=True)
    env = dict(os.environ, LD_PRELOAD=str(lib))
    store = tmp_path / "store"
    with _runner(runner_binary, store, env=env) as r:
        c = r.client(timeout_s=60)
        c.ensure_artifacts(bundle)
        # The shim is in effect: the store stamps last use with the (jumping) wall clock.
        kernels = store / bundle.manifest.artifact("kernels").sha256
        assert abs(kernels.stat().st_mtime - time.time()) > 1800
        h = c.load_model(bundle.manifest, MeasureConfig(threads=1)).handle
        res = c.benchmark(h, MeasureConfig(runs=50, warmup=2, threads=1))
        assert len(res.samples_ns) == 50
        assert all(0 < s < 10**9 for s in res.samples_ns), res.samples_ns  # an hour is 3.6e12
        assert all(0 < s < 10**9 for s in res.warmup_ns)
        c.close()


# ---- faults: a stranger beside a running measurement ----

def test_wrong_token_client_during_a_measurement_gets_nothing(runner_binary, bundle, tmp_path):
    with _runner(runner_binary, tmp_path / "store") as r:
        c = r.client(timeout_s=60)
        c.ensure_artifacts(bundle)
        h = c.load_model(bundle.manifest, MeasureConfig(threads=1)).handle
        result: list = []
        t = threading.Thread(target=lambda: result.append(
            c.benchmark(h, MeasureConfig(runs=200, warmup=5, warmup_min_s=1.0))))
        t.start()
        pb = c._pb
        with RunnerClient(r.address, "wrong") as bad:
            calls = [
                ("GetDeviceInfo", pb.DeviceInfoRequest()),
                ("MissingArtifacts", pb.MissingArtifactsRequest(
                    sha256=[a.sha256 for a in bundle.manifest.artifacts])),
                ("Benchmark", pb.BenchmarkRequest(handle=h, runs=1)),
                ("Run", pb.RunRequest(handle=h)),
                ("UnloadModel", pb.UnloadModelRequest(handle=h)),
            ]
            for _ in range(20):
                for rpc, req in calls:
                    expect("UNAUTHENTICATED", "token", bad._call, rpc, req)
            with pytest.raises(grpc.RpcError) as e:
                bad._stub.UploadArtifact(_chunks(bad, b"x", "0" * 64), metadata=bad._metadata,
                                         timeout=10)
            assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
        t.join(60)
        assert result and len(result[0].samples_ns) == 200
        # The model is still there: the stranger's UnloadModel did nothing.
        assert len(c.benchmark(h, MeasureConfig(runs=1, warmup=0)).samples_ns) == 1
        c.unload(h)
        c.close()
