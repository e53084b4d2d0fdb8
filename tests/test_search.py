"""npas-host search: the space (valid choices, guards, repair, re-typed filters), phase 1's
operator replacement, the strategies behind ask/tell, the controller and the Bayesian filter,
the reward, the journal, the datasets and phase 3's masks (pure Python); then on the local
runner (host tier): bad arguments refused before any work, a search end to end with its
journal and exports, a runner killed in the middle of candidates, and a search killed and
resumed without evaluating a finished candidate twice. No timing assertions."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from procs import descendants, wait_gone
from torch import nn

from host.models.data import (
    HARD_COPIES,
    HARD_SEEDS,
    DataSpecError,
    batches,
    distort_digits,
    load_dataset,
)
from host.models.zoo import DigitsNet, digits_tiny
from host.pruning import PruningPlan
from host.pruning.algorithms import soft_masks
from host.search.filters import apply_filter_types, make_filter
from host.search.journal import Journal
from host.search.ops import replace_ops
from host.search.space import Candidate, LayerChoice, SearchSpace
from host.search.strategies import STRATEGIES, make_strategy
from host.search.strategies.npas.bo import BayesFilter
from host.search.strategies.npas.controller import Controller
from host.search.strategies.reward import Outcome, RewardConfig

REPO = Path(__file__).resolve().parents[1]
TINY = "host.models.zoo:digits_tiny"


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one torch thread


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model, _ = replace_ops(digits_tiny())
    x = torch.randn(1, 1, 8, 8)
    return model.eval(), x, SearchSpace.build(model, x, vector_width=8)


# --- the space ----------------------------------------------------------------------------------
def test_space_offers_only_valid_choices(tiny):
    model, x, space = tiny
    names = [ls.name for ls in space.layers]
    assert names == ["stem.0", "b1.0", "b2.0", "b3.0", "b4.0"]
    assert set(space.skipped) == {"se.fc1", "se.fc2", "fc"}
    stem = space.layers[0]
    assert list(stem.options) == ["keep"], "the stem (1 input channel) keeps its filter type"
    b1 = space.layers[1]
    assert set(b1.options) == {"keep", "1x1", "dwpw"}
    assert "pattern" not in b1.options["keep"][2.0], "pattern removes at least 5/9 (2.25x)"
    assert "pattern" in b1.options["keep"][2.5]
    assert "block" not in b1.options["keep"][5.0], "block needs a GEMM-like (1x1) layer"
    assert "block" in b1.options["1x1"][5.0] and "block" in b1.options["dwpw"][5.0]
    assert "block_punched" not in b1.options["1x1"][5.0]
    b4 = space.layers[4]
    assert list(b4.options) == ["keep"] and "block" in b4.options["keep"][2.0]
    assert "channel" not in stem.options["keep"][5.0], "the model input cannot lose channels"
    for ls in space.layers:
        for per in ls.options.values():
            assert per[1.0] == ("none",)


def test_random_candidates_apply_and_keep_guards(tiny):
    model, x, space = tiny
    rng = np.random.default_rng(0)
    vw = space.config.vector_width
    for _ in range(25):
        c = space.random(rng)
        assert all(ls.valid(ch) for ls, ch in zip(space.layers, c.choices, strict=True))
        pruned = space.realize(model, c)
        assert pruned.model(x).shape == (1, 10)
        for name, m in pruned.model.named_modules():
            if isinstance(m, nn.Conv2d) and m.groups == 1:
                assert m.out_channels % vw == 0 or m.out_channels == 10, name
                assert m.out_channels >= min(vw, 10)
        for path, mask in pruned.masks.items():
            assert mask.any(), f"{path}: a layer was emptied"


def test_repair_resolves_two_rules_on_one_channel_group(tiny):
    model, x, space = tiny
    dense = LayerChoice()
    # b1's filters and b2's input channels are the same group: 2x and 3x cannot both hold
    c = Candidate((dense, LayerChoice("keep", "filter", 2.0), LayerChoice("keep", "channel", 3.0),
                   dense, dense))
    with pytest.raises(Exception, match="prunes the same channels"):
        space.plan(c).apply(model)
    fixed = space.repair(c)
    assert fixed.choices[1] == LayerChoice("keep", "filter", 2.0)
    assert fixed.choices[2] == LayerChoice("keep", "unstructured", 3.0)
    assert space.realize(model, fixed).model(x).shape == (1, 10)
    other = Candidate((dense, LayerChoice("keep", "filter", 2.0), dense,
                       LayerChoice("keep", "channel", 2.0), dense))
    assert space.repair(other) == other, "rules on different groups are kept"


def test_candidate_json_roundtrip_and_encoding(tiny):
    _, _, space = tiny
    c = space.random(np.random.default_rng(3))
    back = Candidate.from_json(json.loads(json.dumps(c.to_json())))
    assert back == c and back.key() == c.key()
    f = space.features(c)
    assert f.shape == space.features(space.dense()).shape and np.isfinite(f).all()
    s, e = space.mac_fractions(space.dense())
    assert s == pytest.approx(1.0) and e == pytest.approx(1.0)
    s, e = space.mac_fractions(c)
    assert 0 < e <= s <= 1.0 + 1e-9
    assert space.mac_fractions(space.extremes()[0])[0] < 0.1


def test_cheaper_filters_start_from_the_original_weights():
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 16, 3, padding=1)
    # a kernel that is exactly rank 1 per input channel: depthwise ⊗ pointwise reproduces it
    dw, pw = torch.randn(8, 9), torch.randn(16, 8)
    with torch.no_grad():
        conv.weight.copy_((pw[:, :, None] * dw[None]).reshape(16, 8, 3, 3))
    x = torch.randn(2, 8, 10, 10)
    sep = make_filter(conv, "dwpw")
    assert isinstance(sep, nn.Sequential) and sep[0].groups == 8
    torch.testing.assert_close(sep(x), conv(x), rtol=1e-4, atol=1e-4)
    one = make_filter(conv, "1x1")
    flat = torch.randn(2, 8, 1, 1).expand(2, 8, 10, 10)  # locally constant input
    torch.testing.assert_close(one(flat)[:, :, 4:6, 4:6], conv(flat)[:, :, 4:6, 4:6],
                               rtol=1e-4, atol=1e-4)
    strided = nn.Conv2d(8, 16, 3, stride=2, padding=1)
    assert make_filter(strided, "1x1")(x).shape == strided(x).shape
    model = apply_filter_types(DigitsNet((16, 32, 32, 32)), {"b1.0": "dwpw", "b3.0": "1x1"})
    assert isinstance(model.b1[0], nn.Sequential) and model.b3[0].kernel_size == (1, 1)


# --- phase 1 --------------------------------------------------------------------------------------
class _Mobileish(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.act = nn.GELU()
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        x = F.silu(self.conv(x))
        x = self.act(x) * F.adaptive_avg_pool2d(x, 1).sigmoid()
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def test_phase1_replaces_modules_and_functional_calls():
    from codegen import capture

    m = _Mobileish().eval()
    x = torch.randn(1, 3, 8, 8)
    # SiLU and GELU compile natively now; phase 1 still replaces them for speed
    assert {"silu", "gelu"} <= {la.op for la in capture(m, (x,)).layers}
    fast, reps = replace_ops(m)
    assert {(r.old, r.new) for r in reps} == {("GELU", "Hardswish"), ("silu", "hardswish"),
                                             (".sigmoid()", "hardsigmoid")}
    assert isinstance(m.act, nn.GELU), "the original is left alone"
    graph = capture(fast, (x,))
    ops = {la.op for la in graph.layers}
    assert {"hardswish", "hardsigmoid"} <= ops and "sigmoid" not in ops
    assert fast(x).shape == (1, 4)
    assert dict(fast.named_modules()).keys() >= {"conv", "fc"}, "module paths are kept"


# --- strategies -----------------------------------------------------------------------------------
def _synthetic(space: SearchSpace, c: Candidate) -> tuple[float, float]:
    """Accuracy that punishes pruning the stem and b4, latency from the MAC estimate."""
    hurt = 0.12 * np.log10(c.choices[0].ratio) + 0.12 * np.log10(c.choices[4].ratio) \
        + 0.02 * sum(np.log10(ch.ratio) for ch in c.choices[1:4])
    return 0.98 - hurt, 1.0 * space.mac_fractions(c)[1] + 0.02


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_strategies_share_ask_tell_and_are_deterministic(tiny, name):
    _, _, space = tiny
    reward = RewardConfig(0.25)

    def run(seed):
        s = make_strategy(name, space, seed, reward, samples=64)
        s.prior([Outcome(space.dense(), 0.98, 1.02, reward(0.98, 1.02))])
        keys = []
        for _ in range(3):
            cands = s.ask(3)
            assert 0 < len(cands) <= 3
            outs = []
            for c in cands:
                assert all(ls.valid(ch) for ls, ch in zip(space.layers, c.choices, strict=True))
                acc, lat = _synthetic(space, c)
                outs.append(Outcome(c, acc, lat, reward(acc, lat)))
            s.tell(outs)
            keys += [c.key() for c in cands]
            assert isinstance(s.status(), str)
        return keys

    a, b = run(1), run(1)
    assert a == b, "the same seed and the same results give the same proposals"
    assert len(set(a)) == len(a), "nothing is proposed twice"
    assert run(2) != a
    if name == "uniform":
        for k in a:
            choices = Candidate.from_json([p.split("/") for p in k.split("|")]).choices
            ratios = {c.ratio for c in choices}
            assert len(ratios) == 1 and all(c.ftype == "keep" for c in choices)


def test_npas_beats_random_on_a_synthetic_problem(tiny):
    """With the same evaluation budget, the controller + Bayesian filter find a better
    candidate than random sampling on an objective with a clear structure (seeds fixed)."""
    _, _, space = tiny
    reward = RewardConfig(0.3)
    best = {}
    for name in ("npas", "random"):
        scores = []
        for seed in range(3):
            s = make_strategy(name, space, seed, reward, samples=128)
            top = 0.0
            for _ in range(6):
                outs = []
                for c in s.ask(4):
                    acc, lat = _synthetic(space, c)
                    outs.append(Outcome(c, acc, lat, reward(acc, lat)))
                    top = max(top, reward(acc, lat))
                s.tell(outs)
            scores.append(top)
        best[name] = float(np.mean(scores))
    assert best["npas"] > best["random"], best


def test_controller_update_raises_the_probability_of_rewarded_candidates(tiny):
    _, _, space = tiny
    ctl = Controller(space, seed=0, lr=0.05)
    gen = torch.Generator().manual_seed(0)
    good, bad = ctl.sample(2, gen)
    before = ctl.log_prob([good, bad]).detach()
    for _ in range(5):
        ctl.update([good, bad], [0.9, 0.1])
    after = ctl.log_prob([good, bad]).detach()
    assert after[0] > before[0] and after[1] < before[1]
    assert torch.isfinite(after).all()


def test_bayes_filter_prefers_what_the_data_says(tiny):
    _, _, space = tiny
    reward = RewardConfig(10.0)  # latency never matters here
    rng = np.random.default_rng(0)
    seen = [space.random(rng) for _ in range(24)]
    obs = [Outcome(c, 0.98 - 0.3 * np.log10(c.choices[0].ratio), 1.0, None) for c in seen]
    obs = [Outcome(o.candidate, o.accuracy, 1.0, reward(o.accuracy, 1.0)) for o in obs]
    pool = [space.random(rng) for _ in range(60)]
    picks = BayesFilter(space, reward, seed=0).pick(pool, obs, 4)
    assert len(set(picks)) == 4
    picked = np.mean([np.log10(pool[i].choices[0].ratio) for i in picks])
    assert picked < np.mean([np.log10(c.choices[0].ratio) for c in pool])


def test_strategy_registry_names_match_and_each_has_its_own_module():
    for name, cls in STRATEGIES.items():
        assert cls.name == name
        assert cls.__module__.startswith(f"host.search.strategies.{name}"), cls.__module__


def test_scheme_lists_follow_the_pruning_table():
    """The search's scheme lists are SCHEMES split by ``structural``, in SCHEMES' order; the
    mask schemes are the ones codegen has sparse kernels for."""
    import codegen
    from host.pruning import SCHEMES
    from host.search.space import MASK_SCHEMES, SCHEME_ORDER, STRUCTURAL

    assert SCHEME_ORDER == ("none", *SCHEMES)
    assert set(STRUCTURAL) == {n for n, s in SCHEMES.items() if s.structural}
    assert set(MASK_SCHEMES) | set(STRUCTURAL) == set(SCHEMES)
    assert set(MASK_SCHEMES) == set(codegen.SPARSE_SCHEMES)


def test_search_command_defaults_are_the_config_defaults():
    import argparse

    from host.search import SearchConfig
    from host.search.command import config_from_args, register

    ap = argparse.ArgumentParser()
    register(ap.add_subparsers(dest="command"))
    assert config_from_args(ap.parse_args(["search", "--speedup", "2"])) == \
        SearchConfig(speedup=2.0)


def test_reward_penalises_only_above_the_target():
    r = RewardConfig(target_ms=2.0, beta=2.0)
    assert r(0.9, 1.0) == 0.9 and r(0.9, 2.0) == 0.9
    assert r(0.9, 4.0) == pytest.approx(0.9 / 4)
    np.testing.assert_allclose(r.many(np.array([0.9, 0.9]), np.array([1.0, 4.0])),
                               [0.9, 0.9 / 4])


# --- journal, data, phase 3 masks -------------------------------------------------------------
def test_journal_appends_and_survives_a_torn_line(tmp_path):
    j = Journal(tmp_path)
    cand = {"type": "candidate", "id": 0, "key": "keep/unstructured/2",
            "encoding": [["keep", "unstructured", 2.0]]}
    j.append({"type": "run", "config": {"seed": 1}, "target_ms": 2.0})
    j.append({**cand, "status": "started", "samples": np.arange(3)})
    j.append({**cand, "status": "done", "accuracy": 0.5, "latency_ms": 1.0, "reward": 0.5,
              "meets_target": True})
    with open(j.path, "a") as f:
        f.write('{"type": "candidate", "id": 1, "sta')  # killed mid-write
    assert j.header()["config"] == {"seed": 1}
    assert [r["status"] for r in j.records()[1:]] == ["started", "done"]
    assert j.records()[1]["samples"] == [0, 1, 2]
    assert set(j.finished_candidates()) == {0}


def test_digits_split_is_deterministic_and_disjoint():
    a, b = load_dataset("digits"), load_dataset("digits", image_size=8, channels=3)
    assert len(a.train) + len(a.val) == 1797 and a.input_shape == (1, 16, 16)
    assert torch.equal(a.val.y, b.val.y)
    x, y = next(batches(b.train, 5, shuffle=False))
    assert x.shape == (5, 3, 8, 8) and y.shape == (5,)
    tr = {tuple(t.flatten().tolist()) for t in a.train.x}
    assert not any(tuple(t.flatten().tolist()) in tr for t in a.val.x[:50])


def test_digits_hard_is_deterministic_keeps_the_split_and_is_harder():
    a, b = load_dataset("digits-hard"), load_dataset("digits-hard", image_size=8, channels=3)
    plain = load_dataset("digits")
    ct, cv = HARD_COPIES
    assert (len(a.train), len(a.val)) == (ct * len(plain.train), cv * len(plain.val))
    assert torch.equal(a.val.y, plain.val.y.repeat(cv))
    again = load_dataset("digits-hard")
    assert torch.equal(a.train.x, again.train.x) and torch.equal(a.val.x, again.val.x)
    x, _ = next(batches(b.val, 4, shuffle=False))
    assert x.shape == (4, 3, 8, 8) and a.input_shape == (1, 16, 16)
    # every drawing is distorted (no copy of another), and the validation drawings come from
    # the validation digits: the split is the plain digits' one
    first, second = a.train.x[:len(plain.train)], a.train.x[len(plain.train):2 * len(plain.train)]
    assert (first - second).abs().amax(dim=(1, 2, 3)).min() > 0.1
    assert torch.equal(a.val.x, distort_digits(plain.val.x / 16.0, cv, HARD_SEEDS[1]))
    # harder: a nearest-centroid classifier on the raw pixels scores far less than on digits
    def centroid_acc(d):
        xt, xv = d.train.x.flatten(1).float(), d.val.x.flatten(1).float()
        cent = torch.stack([xt[d.train.y == c].mean(0) for c in range(10)])
        return float((torch.cdist(xv, cent).argmin(1) == d.val.y).float().mean())
    assert centroid_acc(plain) > 0.85 and centroid_acc(a) < 0.5


def test_cifar10_and_imagefolder_load(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": rng.integers(0, 255, (4, 3072), dtype=np.uint8),
                         b"labels": list(range(4))}, f)
    d = load_dataset(f"cifar10:{tmp_path}")
    assert (len(d.train), len(d.val), d.input_shape) == (20, 4, (3, 32, 32))
    x, _ = next(batches(d.train, 8))
    assert x.dtype == torch.float32 and x.shape == (8, 3, 32, 32)
    from PIL import Image

    for cls in ("cat", "dog"):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        for i in range(5):
            Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(
                tmp_path / "imgs" / cls / f"{i}.png")
    d = load_dataset(f"imagefolder:{tmp_path / 'imgs'}", image_size=16)
    assert d.num_classes == 2 and len(d.train) + len(d.val) == 10
    x, y = next(batches(d.val, 4, shuffle=False))
    assert x.shape[1:] == (3, 16, 16)


@pytest.mark.parametrize("spec,msg", [
    ("cifar10:/nonexistent/cifar", "does not exist"),
    ("imagefolder:/nonexistent/imgs", "does not exist"),
    ("mnist", "expected digits, digits-hard, cifar10:PATH or imagefolder:PATH"),
    ("digits-hard:/x", "expected digits, digits-hard"),
    ("cifar10:", "give the folder"),
])
def test_dataset_errors_name_the_spec(spec, msg):
    with pytest.raises(DataSpecError, match=msg):
        load_dataset(spec)


def test_soft_masks_make_the_zeros_the_plan_finds(tiny):
    model, x, space = tiny
    c = space.repair(Candidate((LayerChoice(), LayerChoice("keep", "filter", 2.0),
                                LayerChoice("keep", "pattern", 3.0),
                                LayerChoice("dwpw", "unstructured", 5.0),
                                LayerChoice("keep", "channel", 2.0))))
    m = apply_filter_types(model, space.ftypes(c))
    plan = space.plan(c)
    masks = soft_masks(m, plan)
    with torch.no_grad():
        for path, mask in masks.items():
            m.get_parameter(path).mul_(mask)
    zeroed_filters = (~masks["b1.0.weight"]).flatten(1).all(1).sum().item()
    assert zeroed_filters == 16, "32 filters at 2x with vector width 8: 16 go"
    pruned = plan.apply(m)
    assert pruned.model.b1[0].out_channels == 16
    # the masks the plan builds on the shrunk layers keep no weight the soft masks removed
    assert float((pruned.model.b3[0][1].weight == 0).float().mean()) >= 0.79
    assert soft_masks(m, plan, scale=0.0) == {}


# --- host tier: the search on the local runner ------------------------------------------------
TINY_ARGS = ["--model", TINY, "--image-size", "8", "--pretrain-epochs", "1",
             "--phase1-epochs", "0.2", "--finetune-epochs", "0.2", "--phase3-epochs", "0.2",
             "--final-epochs", "0.2", "--samples", "32", "--runs", "20", "--warmup", "2",
             "--schemes", "unstructured,filter,channel", "--filter-types", "keep,dwpw"]


def _tiny_config(**kw):
    from host.search import SearchConfig

    base = dict(model=TINY, image_size=8, pretrain_epochs=1.0, phase1_epochs=0.2,
                finetune_epochs=0.2, phase3_epochs=0.2, final_epochs=0.2, samples=32, runs=20,
                warmup=2, schemes=("unstructured", "filter", "channel"),
                filter_types=("keep", "dwpw"), speedup=1.5, budget=6, batch=2)
    base.update(kw)
    return SearchConfig(**base)


def _run_cli(capsys, *argv) -> tuple[int, str, str]:
    from host.cli import main

    rc = main(list(argv))
    o, e = capsys.readouterr()
    return rc, o, e


@pytest.mark.parametrize("argv,msg", [
    (["--model", "no_such_net"], "model 'no_such_net': not a torchvision classification model"),
    (["--dataset", "cifar10:/nonexistent/cifar"], "/nonexistent/cifar does not exist"),
    (["--dataset", "imagefolder:/nonexistent/x"], "/nonexistent/x does not exist"),
    (["--model", "no.such.module:factory"], "cannot import 'factory' from 'no.such.module'"),
])
def test_bad_arguments_are_refused_before_any_work(capsys, tmp_path, argv, msg):
    out = tmp_path / "run"
    rc, _, err = _run_cli(capsys, "search", "--speedup", "2", "--out", str(out), *argv)
    assert rc == 2
    assert msg in " ".join(err.split())
    assert not out.exists(), "nothing was written"


@pytest.mark.host
def test_unreachable_latency_target_is_refused_before_training(capsys, tmp_path,
                                                               runner_binary):
    out = tmp_path / "run"
    rc, _, err = _run_cli(capsys, "search", *TINY_ARGS, "--latency-ms", "0.00001", "--out",
                          str(out), "--no-live")
    text = " ".join(err.split())
    assert rc == 2, err
    assert "--latency-ms 1e-05 is below what local can reach even at the highest rates" in text
    assert "most pruned candidate" in text and "Ask for at least" in text
    assert "training the model first" not in text
    assert not out.exists()


@pytest.mark.host
def test_search_end_to_end_journal_and_exports(tmp_path, fresh_runner):
    from codegen.bundle import load_bundle
    from host.search import Search

    run = tmp_path / "run"
    s = Search(_tiny_config(budget=4), run, fresh_runner).run()
    recs = Journal(run).records()
    assert recs[0]["type"] == "run" and recs[0]["config"]["budget"] == 4
    assert recs[1]["type"] == "probe" and len(recs[1]["dense"]["samples_ns"]) == 20
    cands = [r for r in recs if r["type"] == "candidate"]
    for cid in range(4):
        mine = [r for r in cands if r["id"] == cid]
        assert [r["status"] for r in mine] == ["started", "done"], mine
        started, done = mine
        assert started["encoding"] == done["encoding"]
        assert recs.index(started) < recs.index(done)
        lat = done["latency"]
        assert len(lat["samples_ns"]) == 20 and len(lat["warmup_ns"]) == 2
        assert lat["telemetry_after"] is not None and lat["content_hash"]
        assert done["latency_ms"] == pytest.approx(np.median(lat["samples_ns"]) / 1e6)
        assert 0.0 <= done["accuracy"] <= 1.0
        assert done["meets_target"] == (done["latency_ms"] <= s["target_ms"])
    assert [r["phase"] for r in recs if r["type"] == "phase"] == [
        "pretrain", "phase1", "phase3-gradual", "phase3-admm", "phase3-final", "phase3"]
    assert recs[-1]["type"] == "final"
    p3 = s["phase3"]
    assert p3["meets_target"] == (p3["final_ms"] <= s["target_ms"])
    final = run / "final"
    assert load_bundle(final / "bundle").manifest.steps
    plan = PruningPlan.load(final / "plan.json")
    model = torch.load(final / "model.pt", weights_only=False)
    assert model(torch.randn(1, 1, 8, 8)).shape == (1, 10)
    assert set(json.loads((final / "candidate.json").read_text())) >= {"filter_types",
                                                                       "encoding"}
    assert plan.layers or s["chosen"]["summary"].count("dense") == 5
    prof = json.loads((final / "profile.json").read_text())
    assert len(prof["samples_ns"]) == 20 and prof["per_layer"]
    report = (run / "report.md").read_text()
    for png in ("accuracy_vs_latency", "layers", "per_layer_latency"):
        assert (run / "plots" / f"{png}.png").stat().st_size > 1000
    assert "## Phase 3" in report and f"{s['target_ms']:.3f} ms" in report


@pytest.mark.host
def test_runner_killed_mid_candidate_and_lost_device(tmp_path, fresh_runner):
    """c1: the runner is killed right before its measurement: the session restarts it and
    the candidate is measured. c2: killed again and the device cannot be restarted for a
    while: c2 is recorded as failed, and the search goes on (c3 restarts the runner)."""
    from host.rpc.client import RunnerError
    from host.search import Search

    state = {"tag": None, "kills": 0}
    real_restart = fresh_runner.restart

    def kill() -> None:
        os.kill(fresh_runner.pid, signal.SIGKILL)
        fresh_runner._proc.wait()
        state["kills"] += 1

    def hook(tag: str, attempt: int) -> None:
        state["tag"] = tag
        if tag in ("c1", "c2") and attempt == 0:
            kill()

    def restart() -> None:
        if state["tag"] == "c2":
            raise RunnerError("restart", "UNAVAILABLE", "the device is gone (test)")
        real_restart()

    fresh_runner.restart = restart
    run = tmp_path / "run"
    s = Search(_tiny_config(budget=5, skip_final=True), run, fresh_runner,
               oracle_hook=hook).run()
    assert state["kills"] == 2
    done = Journal(run).finished_candidates()
    assert sorted(done) == [0, 1, 2, 3, 4]
    assert done[1]["status"] == "done" and done[1]["latency"]["restarts"] >= 1
    assert done[2]["status"] == "failed" and done[2]["device_lost"]
    assert "the device is gone (test)" in done[2]["error"]
    assert all(done[i]["status"] == "done" for i in (0, 3, 4))
    assert s["failed"] == 1 and s["evaluated"] == 5
    assert fresh_runner.alive()


@pytest.mark.host
def test_resume_after_kill_evaluates_no_finished_candidate_twice(tmp_path, runner_binary):
    run, store = tmp_path / "run", tmp_path / "store"
    cmd = [sys.executable, "-m", "host.cli", "search", *TINY_ARGS, "--speedup", "1.5",
           "--budget", "6", "--batch", "2", "--skip-final", "--out", str(run), "--no-live",
           "--store", str(store), "--runner", str(runner_binary)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    log = open(tmp_path / "first.log", "w")
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=log, env=env)
    journal = Journal(run)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            if len([r for r in journal.finished_candidates().values()]) >= 2:
                break
            time.sleep(0.05)  # polling a file for a condition, not waiting for time to pass
        assert proc.poll() is None, (tmp_path / "first.log").read_text()
        below = descendants(proc.pid)
        assert any("spawn_main" in cmd for cmd in below.values()), below  # the compiler
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        left = wait_gone(below, 30)
        assert not left, f"outlived the SIGKILLed search: {[below[i] for i in left]}"
    finally:
        log.close()
        _kill_runners_using(store)
    before = journal.finished_candidates()
    assert 2 <= len(before) < 6
    assert "final" not in {r["type"] for r in journal.records()}
    r = subprocess.run([sys.executable, "-m", "host.cli", "search", "--resume", str(run),
                        "--no-live", "--store", str(store), "--runner", str(runner_binary)],
                       cwd=REPO, capture_output=True, text=True, env=env, timeout=300)
    _kill_runners_using(store)
    assert r.returncode == 0, r.stderr
    recs = journal.records()
    cands = [x for x in recs if x["type"] == "candidate"]
    finished = [x["id"] for x in cands if x["status"] in ("done", "failed")]
    assert sorted(finished) == list(range(6)), "every candidate finished exactly once"
    resumed_at = next(i for i, x in enumerate(recs) if x["type"] == "resume")
    restarted = {x["id"] for x in recs[resumed_at:] if x.get("status") == "started"}
    assert not restarted & set(before), "a finished candidate was started again"
    assert restarted == set(range(6)) - set(before), "the unfinished ones were evaluated"
    # the replayed strategy proposed the same candidates the journal has
    assert "differs from the journal" not in r.stderr
    assert recs[-1]["type"] == "final"
    assert "report:" in r.stdout


def _kill_runners_using(store: Path) -> None:
    """Runners the killed search left behind (it could not stop them): found by their store,
    which only this test's runners use, and ended by pid."""
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmdline = (d / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if str(store).encode() in cmdline and any(b"npas-runner" in c for c in cmdline):
            try:
                os.kill(int(d.name), signal.SIGKILL)
            except ProcessLookupError:
                pass
