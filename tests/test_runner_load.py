"""Host tier: concurrent clients on one runner (every call answered, none failed) and 1,000
load/unload cycles without memory growth past warm-up beyond a stated bound: what
``npas-host bench load`` measures, bounded for CI."""

from __future__ import annotations

import shutil

import pytest
from zoo import small_cnn

from host.bench.reliability import cycles_lines, percentile, run_cycles, run_load
from host.devices.local import LocalRunner, LocalRunnerConfig

pytestmark = pytest.mark.host

# Growth of the runner's RSS from cycle 100 to 1,000 that counts as a leak: 1,000 cycles
# leaking one model's weights (~40 KB here) or its arena each would be tens of MB.
LEAK_BOUND_MB = 4.0


@pytest.fixture(scope="module")
def bundle(compiled):
    return compiled("small_cnn", small_cnn, (1, 3, 32, 32))[0]


def test_concurrent_clients_get_every_call_answered(runner_binary, bundle, tmp_path):
    with LocalRunner(LocalRunnerConfig(binary=runner_binary, store=tmp_path / "store")) as r:
        report = run_load(r, bundle, clients=6, seconds=3.0, work=tmp_path)
        assert r.alive()
    assert sum(report.errors.values()) == 0, report.first_errors
    assert set(report.calls) == {"GetDeviceInfo", "MissingArtifacts", "UploadArtifact",
                                 "Benchmark"}
    assert all(len(v) > 0 for v in report.calls.values())
    assert report.rss_before_kb > 0 and report.hwm_kb >= report.rss_before_kb
    assert "0 errors" in report.lines()[0]


def test_load_unload_cycles_do_not_leak(runner_binary, bundle, tmp_path):
    with LocalRunner(LocalRunnerConfig(binary=runner_binary, store=tmp_path / "store")) as r:
        samples = run_cycles(r, bundle, cycles=1000, every=100)
    print("\n".join(cycles_lines(samples, warm=100)))
    at_100 = dict(samples)[100]
    grown_mb = (samples[-1][1] - at_100) / 1024
    assert samples[-1][0] == 1000
    assert grown_mb < LEAK_BOUND_MB, f"RSS grew {grown_mb:.1f} MB from cycle 100 to 1000"


def test_heap_figures_tell_retention_from_a_leak(runner_binary, bundle, tmp_path):
    """``bench load --cycles N --heap``: malloc's bytes in use (through gdb and glibc's
    malloc_stats) stay flat over load/unload cycles once warm, and malloc_trim gives back
    memory the allocator kept (RSS after the trim is not above RSS before it)."""
    if shutil.which("gdb") is None:
        pytest.skip("--heap needs gdb")
    if "asan" in str(runner_binary):
        pytest.skip("the ASan runner's malloc is ASan's, not glibc's")
    with LocalRunner(LocalRunnerConfig(binary=runner_binary, store=tmp_path / "store")) as r:
        samples = run_cycles(r, bundle, cycles=60, every=20, heap=True)
    print("\n".join(cycles_lines(samples, warm=20)))
    assert all(len(s) == 4 for s in samples)
    by_cycle = {s[0]: s for s in samples}
    in_use_grown_kb = by_cycle[60][3] - by_cycle[20][3]
    assert in_use_grown_kb < 256, f"malloc in use grew {in_use_grown_kb} kB from cycle 20 to 60"
    assert all(0 < s[3] <= s[2] for s in samples)  # in use within the resident set
    assert all(s[2] <= s[1] + 1024 for s in samples)  # a trim gives back, or keeps the same


def test_percentile_is_nearest_rank():
    assert percentile([3.0, 1.0, 2.0], 0.5) == 2.0
    assert percentile(list(map(float, range(101))), 0.99) == 99.0
