"""Compact weight blobs (bundle format 2, issue 18 part 4): a Winograd layer ships its raw 3x3
weights and the manifest's prepare steps rebuild the transformed layout at load time.

Tiers: the codegen checks run the prepare kernels in-process (ctypes) and compare with the
full compile-time transform; ``host`` loads compact bundles into the real runner (outputs vs
PyTorch, refusals, upload bytes in ``profile --json`` and in the oracle's results); ``arm64``
does the same on the static arm64 runner under qemu-aarch64, fp32 and fp16."""

from __future__ import annotations

import ctypes
import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from ctypes_exec import run_bundle, weight_buffer
from torch import nn
from zoo import rel_err

from codegen import compile_model, cost
from codegen.bundle import (
    MANIFEST_NAME,
    BundleError,
    ParamRef,
    PrepareStep,
    load_bundle,
)
from codegen.emit.cpu.pack import winograd_transform
from codegen.emit.cpu.winograd import winograd_matrices
from host.cli import main
from host.devices.session import Session
from host.measure import MeasureConfig
from host.rpc.client import RunnerError


def _net() -> nn.Module:
    """Direct (plain-input stem, 1x1), Winograd (3x3 s1, awkward channel counts) and linear
    layers, so the blob interleaves copies and prepared params."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 20, 3, padding=1), nn.ReLU(),
        nn.Conv2d(20, 33, 3, padding=1), nn.ReLU(),
        nn.Conv2d(33, 17, 1), nn.ReLU(),
        nn.Conv2d(17, 24, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(24, 10)).eval()


X = torch.randn((1, 3, 16, 16), generator=torch.Generator().manual_seed(1))


def _force(algo: str):
    def lookup(la, graph, target):
        return {"algo": algo} if cost.winograd_ok(la) else None
    return lookup


def _pair(tmp_path: Path, algo: str | None = None, toolchain=None):
    """The same model compiled compact and as every param is read (format 1's blob)."""
    kw = {"tuning": _force(algo) if algo else None, "toolchain": toolchain}
    new = compile_model(_net(), (X,), tmp_path / f"compact-{algo}", name="net", **kw)
    old = compile_model(_net(), (X,), tmp_path / f"full-{algo}", name="net",
                        compact_weights=False, **kw)
    return new, old


@pytest.mark.parametrize("algo", ["winograd2", "winograd4", "winograd6"])
def test_prepare_steps_write_exactly_the_weights_the_full_transform_wrote(tmp_path, algo):
    new, old = _pair(tmp_path, algo)
    m = new.manifest
    kernels = [p for p in m.prepare if p.symbol]
    assert len(kernels) >= 2 and all(f"winograd{algo[-1]}" in p.symbol for p in kernels)
    assert old.manifest.prepare == () and old.manifest.weights_bytes == \
        old.file("weights").stat().st_size
    # the kernels read the same layout at the same offsets either way
    assert [s.params for s in m.steps] == [s.params for s in old.manifest.steps]
    assert m.weights_bytes == old.manifest.weights_bytes
    assert m.shipped_weights_bytes < m.weights_bytes
    buf = weight_buffer(new, ctypes.CDLL(str(new.file("kernels"))))
    assert bytes(buf) == old.file("weights").read_bytes()
    out_new, out_old = run_bundle(new, [X.numpy()]), run_bundle(old, [X.numpy()])
    assert np.array_equal(out_new[0], out_old[0])
    with torch.no_grad():
        assert rel_err(out_new[0], _net()(X).numpy()) <= 1e-4


def test_the_transform_is_the_einsum_it_replaced():
    """winograd_transform (the prepare kernels' order of operations) against the einsum the
    compile-time transform was before: within one float32 rounding."""
    w = np.random.default_rng(0).standard_normal((7, 5, 3, 3)).astype(np.float32)
    for m in (2, 4, 6):
        _, g, _ = winograd_matrices(m)
        gm = np.array([[float(v) for v in row] for row in g])
        want = np.einsum("ak,oikl,bl->abio", gm, w.astype(np.float64), gm)
        got = winograd_transform(w, m).transpose(0, 1, 3, 2)
        assert np.all(np.abs(got - want) <= np.spacing(np.abs(want).astype(np.float32)))


def test_blob_holds_raw_weights_once(tmp_path):
    new, _ = _pair(tmp_path, "winograd4")
    m = new.manifest
    net = _net()
    for p in m.prepare:
        if p.symbol:  # the raw float32 weights of the layer, once
            assert p.src.nbytes == 4 * net[int(p.name)].weight.numel() < p.dst.nbytes
    copies = [p for p in m.prepare if not p.symbol]
    assert all(p.src.nbytes == p.dst.nbytes for p in copies)
    report = json.loads((new.path / "report.json").read_text())
    assert report["weights_bytes"] == m.shipped_weights_bytes
    assert report["loaded_weights_bytes"] == m.weights_bytes


def _edit(bundle, change) -> Path:
    d = json.loads((bundle.path / MANIFEST_NAME).read_text())
    change(d)
    d.pop("content_hash")
    (bundle.path / MANIFEST_NAME).write_text(json.dumps(d))
    return bundle.path


def _kernel_step(d: dict) -> dict:
    return next(p for p in d["prepare"] if p["symbol"])


BAD = [
    ("dst past the buffer", lambda d: _kernel_step(d)["dst"].update(offset=d["weights_bytes"]),
     "past weights_bytes"),
    ("src past the blob", lambda d: _kernel_step(d)["src"].update(nbytes=1 << 40),
     "past the weight blob's"),
    ("unaligned", lambda d: _kernel_step(d)["dst"].update(offset=8), "not a multiple of 64"),
    ("overlap", lambda d: d["prepare"].append(dict(d["prepare"][0])), "overlaps"),
    ("uncovered param", lambda d: d["prepare"].pop(), "not inside one prepare step's dst"),
    ("copy sizes", lambda d: next(p for p in d["prepare"] if not p["symbol"])["dst"].update(
        nbytes=next(p for p in d["prepare"] if not p["symbol"])["src"]["nbytes"] + 4),
     "a copy needs equal sizes"),
    ("no prepare, wrong size", lambda d: d.update(prepare=[]), "the weight buffer is the blob"),
    ("symbol", lambda d: _kernel_step(d).update(symbol="9x"), "C identifier"),
    ("work items", lambda d: _kernel_step(d).update(work_items=0), "work_items"),
    ("shrunk buffer", lambda d: d.update(weights_bytes=d["weights_bytes"] - 64),
     "past weights_bytes"),
]


@pytest.mark.parametrize("change,names", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_host_refuses_inconsistent_sizes_and_prepare_steps(tmp_path, change, names):
    new, _ = _pair(tmp_path, "winograd4")
    with pytest.raises(BundleError) as e:
        load_bundle(_edit(new, change), verify=False)
    assert names in str(e.value)


# ---- the real runner ----

def _mutated_manifest(m, **kw):
    return replace(m, **kw).with_hash()


@pytest.mark.host
def test_runner_loads_a_compact_bundle_equal_to_pytorch_and_refuses_bad_ones(
        tmp_path, local_runner, cc):
    new, old = _pair(tmp_path)
    with torch.no_grad():
        want = _net()(X).numpy()
    with Session(local_runner) as s:
        for b in (new, old):
            key = s.load(b, MeasureConfig(threads=2))
            (got,) = s.run(key, [X.numpy()])
            assert rel_err(got, want) <= 1e-4
            s.unload(key)
        m = new.manifest
        k = next(i for i, p in enumerate(m.prepare) if p.symbol)
        bad_step = replace(m.prepare[k], dst=replace(m.prepare[k].dst,
                                                     offset=m.weights_bytes))
        cases = [
            (_mutated_manifest(m, weights_bytes=m.weights_bytes - 64), "past weights_bytes"),
            (_mutated_manifest(m, prepare=(*m.prepare[:k], bad_step, *m.prepare[k + 1:])),
             "past weights_bytes"),
            (_mutated_manifest(m, prepare=m.prepare[:-1]), "not inside one prepare step's dst"),
            (_mutated_manifest(m, prepare=(*m.prepare, m.prepare[0])), "overlaps"),
            (_mutated_manifest(m, prepare=()), "the weight buffer is the blob"),
            (_mutated_manifest(m, prepare=(*m.prepare[:k], replace(
                m.prepare[k], src=ParamRef(m.prepare[k].src.offset, 1 << 40)),
                *m.prepare[k + 1:])), "past the weight blob's"),
            (_mutated_manifest(m, prepare=(*m.prepare[:k], replace(
                m.prepare[k], symbol="npas_no_such_prepare"), *m.prepare[k + 1:])),
             "npas_no_such_prepare"),
        ]
        for manifest, text in cases:
            with pytest.raises(RunnerError) as e:
                s.client.load_model(manifest, MeasureConfig())
            assert e.value.code in ("INVALID_ARGUMENT", "NOT_FOUND"), e.value
            assert text in str(e.value), str(e.value)
        # a prepare step's record survives the proto round trip (the runner used it above)
        assert isinstance(m.prepare[k], PrepareStep) and m.prepare[k].work_items >= 1


@pytest.mark.host
def test_memory_budget_counts_the_loaded_buffer_not_the_shipped_blob(tmp_path, runner_binary,
                                                                     cc):
    """--max-model-bytes and the memory check count the weight buffer (plus the larger of the
    blob, held while the prepare steps run, and arena + scratch), not what was uploaded."""
    from host.devices.local import LocalRunner, LocalRunnerConfig

    new, _ = _pair(tmp_path, "winograd4")
    m = new.manifest
    running = m.arena_bytes + (m.scratch_bytes_per_thread + 63) // 64 * 64
    need = m.weights_bytes + max(m.shipped_weights_bytes, running)
    assert m.shipped_weights_bytes + running < need - 64
    for limit, ok in ((need - 64, False), (need, True)):
        with LocalRunner(LocalRunnerConfig(binary=runner_binary, store=tmp_path / f"s{limit}",
                                           extra_args=("--max-model-bytes", str(limit)))) as r:
            c = r.client(timeout_s=30)
            c.ensure_artifacts(new)
            if ok:
                c.unload(c.load_model(m, MeasureConfig(threads=1)).handle)
            else:
                with pytest.raises(RunnerError) as e:
                    c.load_model(m, MeasureConfig(threads=1))
                assert e.value.code == "RESOURCE_EXHAUSTED", e.value
                assert f"needs {need} bytes" in e.value.message, e.value.message
                assert f"weights {m.weights_bytes}" in e.value.message
            c.close()


@pytest.mark.host
def test_profile_json_reports_upload_bytes_and_time(tmp_path, capsys, runner_binary, cc):
    new, _ = _pair(tmp_path, "winograd4")
    store = str(tmp_path / "store")
    args = ["profile", str(new.path), "--runs", "3", "--warmup", "1", "--store", store]
    assert main([*args, "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    m = new.manifest
    assert d["upload_bytes"] == d["artifact_bytes"] == sum(a.size for a in m.artifacts)
    assert d["upload_s"] > 0
    assert d["weights_shipped_bytes"] == m.shipped_weights_bytes < d["weights_loaded_bytes"] \
        == m.weights_bytes
    assert main([*args, "--json"]) == 0  # the same store: nothing to send
    d = json.loads(capsys.readouterr().out)
    assert d["upload_bytes"] == 0 and d["upload_s"] == 0
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "upload: none (the runner had every artifact)" in out and "shipped" in out


@pytest.mark.host
def test_oracle_results_and_journal_rows_carry_upload_bytes(tmp_path, fresh_runner, cc):
    from host.search.journal import Journal
    from host.search.oracle import LatencyOracle

    oracle = LatencyOracle(fresh_runner, X, MeasureConfig(runs=2, warmup=1))
    try:
        r = oracle.measure("net", _net(), {}, tmp_path / "b")
    finally:
        oracle.close()
    assert r.ok and r.upload_bytes > 0 and r.upload_s > 0
    assert 0 < r.weights_shipped_bytes < r.weights_loaded_bytes
    j = Journal(tmp_path)
    j.append({"type": "candidate", "id": 0, "status": "done", "key": "k", "encoding": [],
              "accuracy": 0.5, "latency_ms": r.median_ms, "reward": 0.1, "meets_target": True,
              **r.to_record()})
    row = j.finished_candidates()[0]
    assert row["upload_bytes"] == r.upload_bytes and row["upload_s"] == r.upload_s
    bad = Journal(tmp_path / "x")
    (tmp_path / "x").mkdir()
    bad.append({"type": "candidate", "id": 0, "status": "started", "key": "k",
                "encoding": [], "upload_bytes": "12"})
    with pytest.raises(Exception, match="upload_bytes"):
        bad.records()


# ---- arm64: the static runner phones get, under qemu-aarch64 ----

@pytest.mark.arm64
@pytest.mark.parametrize("precision,tol", [("fp32", 1e-4), ("fp16", 1.5e-2)])
def test_static_arm64_runner_runs_compact_bundles_equal_to_pytorch(tmp_path_factory, precision,
                                                                  tol):
    from codegen.toolchain import Arm64AndroidToolchain
    from host.devices.local import LocalRunnerConfig
    from host.devices.qemu_static import QemuArm64StaticRunner

    if not shutil.which("clang") or not shutil.which("ld.lld"):
        pytest.skip("arm64 tier: clang and lld are needed")
    tmp = tmp_path_factory.mktemp("cw-arm64")
    tc = Arm64AndroidToolchain(precision=precision) if precision == "fp16" else \
        Arm64AndroidToolchain()
    new, old = _pair(tmp, "winograd4", tc)
    assert any(p.symbol for p in new.manifest.prepare)
    assert new.manifest.shipped_weights_bytes < old.manifest.shipped_weights_bytes
    with torch.no_grad():
        want = _net()(X).numpy()
    try:
        runner = QemuArm64StaticRunner(LocalRunnerConfig(store=tmp / "store",
                                                         startup_timeout_s=120.0))
    except FileNotFoundError as e:
        pytest.skip(f"arm64 static tier: {e}")
    with runner, Session(runner, call_timeout_s=300.0) as s:
        outs = []
        for b in (new, old):
            key = s.load(b, MeasureConfig(threads=2))
            (got,) = s.run(key, [X.numpy()])
            outs.append(got)
            assert rel_err(got, want) <= tol
            s.unload(key)
    assert np.array_equal(outs[0], outs[1])  # the same weights, the same floats


@pytest.mark.host
def test_a_search_journal_records_each_candidates_upload(tmp_path, fresh_runner):
    """A real (tiny) search: the probe and every measured candidate's journal row carry the
    bytes its bundle sent and how long that took."""
    from test_search import _tiny_config

    from host.search import Search
    from host.search.journal import Journal

    run = tmp_path / "run"
    Search(_tiny_config(budget=2), run, fresh_runner).run()
    recs = Journal(run).records()
    probe = next(r for r in recs if r["type"] == "probe")["dense"]
    assert probe["upload_bytes"] > 0 and probe["upload_s"] > 0
    done = [r for r in recs if r["type"] == "candidate" and r["status"] == "done"]
    assert len(done) == 2
    for r in done:
        lat = r["latency"]
        assert isinstance(lat["upload_bytes"], int) and lat["upload_bytes"] >= 0
        assert (lat["upload_s"] > 0) == (lat["upload_bytes"] > 0)
        assert 0 < lat["weights_shipped_bytes"] <= lat["weights_loaded_bytes"]
