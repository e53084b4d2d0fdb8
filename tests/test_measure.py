"""Pure-Python tier: the statistics printed by `profile`."""

import numpy as np
import pytest

from host.measure import BenchmarkResult, Stats


def test_stats_match_numpy():
    rng = np.random.default_rng(0)
    samples = [int(x) for x in rng.integers(1_000_000, 9_000_000, size=101)]
    s = Stats.of(samples)
    ms = np.array(samples) / 1e6
    assert s.n == 101
    assert s.median_ms == pytest.approx(np.median(ms))
    assert s.p10_ms == pytest.approx(np.percentile(ms, 10))
    assert s.p90_ms == pytest.approx(np.percentile(ms, 90))
    assert s.mean_ms == pytest.approx(ms.mean())
    assert s.std_ms == pytest.approx(ms.std())
    assert (s.min_ms, s.max_ms) == (pytest.approx(ms.min()), pytest.approx(ms.max()))


def test_stats_single_sample_and_empty():
    assert Stats.of([2_000_000]).p90_ms == pytest.approx(2.0)
    with pytest.raises(ValueError, match="no samples"):
        Stats.of([])


def test_result_to_dict_has_every_sample():
    r = BenchmarkResult(samples_ns=(1, 2, 3), warmup_ns=(9,), init_ns=5, threads=1)
    d = r.to_dict()
    assert d["samples_ns"] == (1, 2, 3) and d["stats"]["n"] == 3
