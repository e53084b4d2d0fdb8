"""Host tier: the Android app's JNI library, built for the host from the same CMakeLists.txt and
driven by a real JVM (tests/jni/.../NativeRunner.java: start, status, restart, refusals).
The APK itself cannot be built here (no Android SDK or NDK); this is the closest check of the
native half of the app."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.host

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "build" / "jni-host"


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


def test_jni_library_runs_in_a_jvm(tmp_path):
    jdk = _jdk()
    if jdk is None:
        pytest.skip("no JDK with jni.h (javac) on this machine")
    gen = ["-G", "Ninja"] if shutil.which("ninja") else []
    _run(["cmake", "-S", "android_app/src/main/cpp", "-B", str(BUILD), *gen,
          "-DCMAKE_BUILD_TYPE=Release", "-DNPAS_BUILD_JNI=ON", "-DNPAS_BUILD_HOST_RUNNER=OFF",
          "-DNPAS_BUILD_TESTS=OFF", f"-DJAVA_HOME={jdk}"])
    _run(["cmake", "--build", str(BUILD), "--target", "npas_runner_jni"])
    lib = BUILD / "jni" / "libnpas_runner_jni.so"
    readelf = _run(["readelf", "-d", str(lib)]).stdout
    assert "libnpas_runner_jni.so" in readelf  # the soname Android's loader needs
    classes = tmp_path / "classes"
    _run(["javac", "-d", str(classes), "tests/jni/dev/npas/runner/NativeRunner.java"])
    r = _run(["java", "-cp", str(classes), "dev.npas.runner.NativeRunner", str(lib),
              str(tmp_path / "store")], timeout=120)
    assert r.stdout.strip().splitlines()[-1].endswith("0 failed")
