"""Host tier: the Android app's JNI library, built for the host from the same CMakeLists.txt and
driven by a real JVM (tests/jni/.../NativeRunner.java: start, status, restart, refusals; and a
`serve` mode that this process talks gRPC to, as the host talks to the app on a phone).
The APK itself cannot be built here (no Android SDK or NDK); this is the closest check of the
native half of the app."""

from __future__ import annotations

import dataclasses
import json
import queue
import shutil
import statistics
import subprocess
import threading
import time
from pathlib import Path

import pytest

from host.measure import MeasureConfig, percentile

pytestmark = pytest.mark.host

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "build" / "jni-host"
LINE_TIMEOUT_S = 60.0


def _jdk() -> Path | None:
    javac = shutil.which("javac")
    if not javac:
        return None
    home = Path(javac).resolve().parents[1]
    return home if (home / "include" / "jni.h").is_file() else None


def _run(cmd: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{' '.join(cmd)} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


@pytest.fixture(scope="module")
def jni_harness(tmp_path_factory) -> tuple[Path, Path]:
    """(libnpas_runner_jni.so built for the host, the compiled NativeRunner.java classes)."""
    jdk = _jdk()
    if jdk is None:
        pytest.skip("no JDK with jni.h (javac) on this machine")
    gen = ["-G", "Ninja"] if shutil.which("ninja") else []
    _run(["cmake", "-S", "android_app/src/main/cpp", "-B", str(BUILD), *gen,
          "-DCMAKE_BUILD_TYPE=Release", "-DNPAS_BUILD_JNI=ON", "-DNPAS_BUILD_HOST_RUNNER=OFF",
          "-DNPAS_BUILD_TESTS=OFF", f"-DJAVA_HOME={jdk}"])
    _run(["cmake", "--build", str(BUILD), "--target", "npas_runner_jni"])
    lib = BUILD / "jni" / "libnpas_runner_jni.so"
    classes = tmp_path_factory.mktemp("classes")
    _run(["javac", "-d", str(classes), "tests/jni/dev/npas/runner/NativeRunner.java"])
    return lib, classes


def test_jni_library_runs_in_a_jvm(jni_harness, tmp_path):
    lib, classes = jni_harness
    readelf = _run(["readelf", "-d", str(lib)]).stdout
    assert "libnpas_runner_jni.so" in readelf  # the soname Android's loader needs
    r = _run(["java", "-cp", str(classes), "dev.npas.runner.NativeRunner", str(lib),
              str(tmp_path / "store")], timeout=120)
    assert r.stdout.strip().splitlines()[-1].endswith("0 failed")


class _Lines:
    """A child's stdout lines, read on a thread so every wait has a timeout."""

    def __init__(self, stream):
        self._q: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, args=(stream,), daemon=True).start()

    def _pump(self, stream) -> None:
        for line in stream:
            self._q.put(line.rstrip("\n"))
        self._q.put(None)

    def expect(self, key: str, timeout_s: float = LINE_TIMEOUT_S) -> str:
        """The value of the next `KEY value` line; fails on end of output or timeout."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                line = self._q.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                pytest.fail(f"no '{key}' line from the JVM within {timeout_s:.0f} s")
            if line is None:
                pytest.fail(f"the JVM ended before printing '{key}'")
            k, _, value = line.partition(" ")
            if k == key:
                return value


def test_status_shows_the_last_benchmark_made_over_grpc(jni_harness, compiled, tmp_path):
    # gRPC and torch: needed by this test only.
    from zoo import small_cnn

    from host.rpc.client import RunnerClient, RunnerError

    lib, classes = jni_harness
    bundle, _, _ = compiled("small", small_cnn, (1, 3, 32, 32))
    # A name that needs escaping: quote, backslash, control character, non-ASCII, non-BMP.
    name = 'small "q" \\ \t é 🙂'
    manifest = dataclasses.replace(bundle.manifest, name=name)
    stderr = (tmp_path / "jvm-stderr.txt").open("w")
    jvm = subprocess.Popen(
        ["java", "-cp", str(classes), "dev.npas.runner.NativeRunner", str(lib),
         str(tmp_path / "store"), "serve"],
        cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, text=True)
    try:
        lines = _Lines(jvm.stdout)
        token = lines.expect("TOKEN")
        before = json.loads(lines.expect("STATUS"))
        port = int(lines.expect("PORT"))
        assert before["running"] is True and before["last_measurement"] is None

        with RunnerClient(f"127.0.0.1:{port}", token, timeout_s=60.0) as client:
            client.ensure_artifacts(bundle)
            loaded = client.load_model(manifest, MeasureConfig(threads=2))
            started_ms = time.time() * 1000
            result = client.benchmark(loaded.handle, MeasureConfig(runs=7, warmup=2),
                                      timeout_s=120.0)
            ended_ms = time.time() * 1000
            # A benchmark that fails leaves the record alone.
            with pytest.raises(RunnerError):
                client.benchmark(loaded.handle, MeasureConfig(runs=10**9, warmup=2))

        jvm.stdin.write("done\n")
        jvm.stdin.flush()
        status = json.loads(lines.expect("STATUS"))
        stopped = json.loads(lines.expect("STOPPED"))
        assert jvm.wait(timeout=LINE_TIMEOUT_S) == 0
    finally:
        if jvm.poll() is None:
            jvm.kill()
            jvm.wait(timeout=10)
        stderr.close()

    m = status["last_measurement"]
    assert m is not None, f"status after a benchmark has no last measurement: {status}"
    assert m["model"] == name
    assert (m["backend"], m["threads"], m["runs"], m["warmup"]) == ("cpu", loaded.threads, 7, 2)
    samples = sorted(result.samples_ns)
    assert len(samples) == 7
    assert m["min_ns"] == samples[0]
    assert m["median_ns"] == statistics.median(samples)
    assert abs(m["p90_ns"] - percentile(samples, 90)) <= 0.5
    assert started_ms - 1000 <= m["finished_unix_ms"] <= ended_ms + 1000
    # The record outlives the server, so the app still shows it after a stop.
    assert stopped["running"] is False and stopped["last_measurement"] == m
