"""Host tier: the runner's artifact store evicts least-recently-used artifacts when an upload
would go over --max-store-bytes, keeps the artifacts of loaded models, and only refuses an
upload when what loaded models pin leaves no room; an artifact corrupted on disk is found before
it is used, removed, and re-uploaded by the host's session."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from zoo import small_cnn

from host.devices.local import LocalRunner, LocalRunnerConfig
from host.devices.session import Session
from host.measure import MeasureConfig
from host.rpc.client import RunnerError

pytestmark = pytest.mark.host


@pytest.fixture(scope="module")
def bundles(compiled):
    # Same code, different weights: the kernel library is shared, each weight blob is its own.
    return [compiled(f"store_cnn_{seed}", lambda s=seed: small_cnn(seed=s), (1, 3, 32, 32))
            for seed in range(4)]


def test_uploads_past_the_store_limit_evict_the_least_recently_used(runner_binary, bundles,
                                                                    tmp_path):
    arts = [b.manifest.artifacts for b, _, _ in bundles]
    per_bundle = [sum(a.size for a in aa) for aa in arts]
    shas = [{a.sha256 for a in aa} for aa in arts]
    shared = set.intersection(*shas)
    own = [s - shared for s in shas]
    own_bytes = [sum(a.size for a in aa if a.sha256 in o) for aa, o in zip(arts, own, strict=True)]
    shared_bytes = per_bundle[0] - own_bytes[0]
    # Room for the shared artifacts and about two bundles' own ones, not for all four.
    limit = shared_bytes + max(own_bytes) * 5 // 2
    assert sum(per_bundle) > limit and all(o for o in own)

    cfg = LocalRunnerConfig(binary=runner_binary, store=tmp_path / "store",
                            extra_args=("--max-store-bytes", str(limit)))
    with LocalRunner(cfg) as runner:
        c = runner.client(timeout_s=30)
        b0, model0, x0 = bundles[0]
        c.ensure_artifacts(b0)
        loaded = c.load_model(b0.manifest)
        for b, _, _ in bundles[1:]:
            c.ensure_artifacts(b)  # never RESOURCE_EXHAUSTED: older artifacts make room
            assert c.missing([a.sha256 for a in b.manifest.artifacts]) == []

        # bundle 1's weights were the least recently used unpinned artifact: evicted, and
        # reported missing again; the loaded model's artifacts stayed.
        assert set(c.missing(sorted(own[1]))) == own[1]
        assert c.missing(sorted(shas[0])) == []
        y = c.run(loaded.handle, b0.manifest, [x0.numpy()])[0]
        np.testing.assert_allclose(y, model0(x0).detach().numpy(), rtol=1e-3, atol=1e-3)

        # An evicted bundle comes back with a plain re-upload.
        c.ensure_artifacts(bundles[1][0])
        assert c.missing([a.sha256 for a in arts[1]]) == []
        assert c.missing(sorted(shas[0])) == []

        # Nothing fits beside what loaded models pin: the error says so.
        big = tmp_path / "big"
        big.write_bytes(b"\x01" * (limit - shared_bytes - own_bytes[0] + 1))
        sha = hashlib.sha256(big.read_bytes()).hexdigest()
        with pytest.raises(RunnerError) as e:
            c.upload(big, arts[0][0].kind, sha, big.stat().st_size)
        assert e.value.code == "RESOURCE_EXHAUSTED", str(e.value)
        assert "pinned by loaded models" in e.value.message
        assert c.missing(sorted(shas[0])) == []
        c.unload(loaded.handle)
        c.close()
        assert "evicted least recently used" in runner.log_path.read_text()


def _corrupt(path, offset: int, data: bytes) -> None:
    """Overwrite bytes in place (same size), as a failing disk or a stray writer would."""
    path.chmod(0o644)
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)
    path.chmod(0o444)


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_corrupted_artifacts_are_detected_removed_and_reuploaded(runner_binary, bundles,
                                                                 tmp_path):
    bundle, model, x = bundles[0]
    want = model(x).detach().numpy()
    kernels = bundle.manifest.artifact("kernels")
    weights = bundle.manifest.artifact("weights")
    store = tmp_path / "store"
    cfg = LocalRunnerConfig(binary=runner_binary, store=store)

    def profile(runner) -> tuple[np.ndarray, Session]:
        with Session(runner) as s:
            key = s.load(bundle, MeasureConfig(threads=1))
            (got,) = s.run(key, [x.numpy()])
        return got, s

    with LocalRunner(cfg) as runner:
        got, _ = profile(runner)
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3)

    # Between two runner processes: the library's code becomes ud2/illegal bytes throughout
    # (loading it would die of SIGILL), the weights get garbage in the middle.
    lib, blob = store / kernels.sha256, store / weights.sha256
    _corrupt(lib, 64, b"\x0f\x0b" * ((kernels.size - 64) // 2))
    _corrupt(blob, weights.size // 2, b"\xff" * 64)
    with LocalRunner(cfg) as runner:
        got, s = profile(runner)
        assert s.restarts == 0 and runner.alive()
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3)
        assert _sha(lib) == kernels.sha256 and _sha(blob) == weights.sha256
        assert "was corrupted in the store" in runner.log_path.read_text()

        # While the runner runs, after it verified the files once: a change is still seen.
        _corrupt(blob, 0, b"\x00" * 256)
        got, s = profile(runner)
        assert s.restarts == 0 and runner.alive()
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3)
        assert _sha(blob) == weights.sha256

        # Without the session's retry the load says what happened and names the artifact.
        _corrupt(lib, 64, b"\x0f\x0b" * 64)
        c = runner.client(timeout_s=30)
        with pytest.raises(RunnerError) as e:
            c.load_model(bundle.manifest, MeasureConfig(threads=1))
        assert e.value.code == "NOT_FOUND", str(e.value)
        assert kernels.sha256 in e.value.message and "corrupted" in e.value.message
        assert c.missing([kernels.sha256]) == [kernels.sha256]
        c.close()
