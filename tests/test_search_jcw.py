"""jcw: the genes (bounds, snapping), joint candidates (two-step pruning), anchor-based
survival, determinism per seed; the host tier runs it end to end with several targets and
resumes it after a kill without evaluating a finished candidate again."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from host.models.zoo import digits_tiny
from host.pruning import PruningPlan, keep_count
from host.search.journal import Journal
from host.search.ops import replace_ops
from host.search.space import Candidate, SearchSpace
from host.search.strategies import make_strategy
from host.search.strategies.jcw.encoding import JcwEncoding
from host.search.strategies.jcw.selection import anchor_objectives, anchor_select
from host.search.strategies.reward import Outcome, RewardConfig

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one torch thread


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model, _ = replace_ops(digits_tiny())
    x = torch.randn(1, 1, 8, 8)
    return model.eval(), x, SearchSpace.build(model, x, vector_width=8)


def _synthetic(space: SearchSpace, c: Candidate) -> tuple[float, float]:
    """Accuracy falls with what is removed (the stem and b4 hurt most); latency follows the
    effective multiply-adds."""
    s, e = space.mac_fractions(c)
    hurt = 0.3 * (1 - e) ** 2 + 0.05 * np.log10(1 / max(c.choices[0].density, 0.1))
    return 0.98 - hurt, 1.0 * e + 0.02


def _drive(space, seed, rounds=6, n=4, targets=(0.3, 0.5)):
    reward = RewardConfig(min(targets))
    s = make_strategy("jcw", space, seed, reward, targets=targets, population=8)
    s.prior([Outcome(space.dense(), 0.98, 1.02, reward(0.98, 1.02))])
    asked = []
    for _ in range(rounds):
        cands = s.ask(n)
        outs = []
        for c in cands:
            acc, lat = _synthetic(space, c)
            outs.append(Outcome(c, acc, lat, reward(acc, lat)))
        s.tell(outs)
        asked += cands
    return s, asked


# --- the genes --------------------------------------------------------------------------------
def test_genes_have_jcw_bounds_and_snap_to_canonical_tenths(tiny):
    _, _, space = tiny
    enc = JcwEncoding(space)
    chan = {g.layer: g for g in enc.genes if g.kind == "channels"}
    dens = {g.layer: g for g in enc.genes if g.kind == "density"}
    assert chan[0].lo == 8, "the first layer keeps ≥ 0.8 of its channels"
    # b2's output is multiplied by the squeeze-excite branch: a group with two producers,
    # pruned like a residual layer
    assert chan[2].lo == 9
    assert chan[1].lo == 5 and chan[3].lo == 5
    assert set(dens) == set(range(5)) and all(g.lo == 3 for g in dens.values())
    assert all(hi == 10 for hi in enc.xu)
    rng = np.random.default_rng(0)
    for _ in range(200):
        v = enc.snap(rng.uniform(-5, 20, enc.n_var))
        assert v.dtype.kind == "i" and (v >= enc.xl).all() and (v <= enc.xu).all()
        assert (enc.snap(v) == v).all(), "snapping is idempotent"
        c = enc.decode(v)
        for j, g in enumerate(enc.genes):
            ch = c.choices[g.layer]
            if g.kind == "channels":
                kept = keep_count(g.size, 1 - v[j] / 10, 8)
                assert (ch.scheme == "filter") == (kept < g.size)
                # the canonical gene is the largest ratio with that width
                assert all(keep_count(g.size, 1 - t / 10, 8) != kept
                           for t in range(v[j] + 1, 11))
                if ch.scheme == "filter":  # the ratio records the real width
                    assert g.size / ch.ratio == pytest.approx(kept, abs=1e-4)
            else:
                d = ch.density if ch.joint else (1 / ch.ratio if ch.scheme == "unstructured"
                                                 else 1.0)
                assert d == pytest.approx(v[j] / 10, abs=1e-6) and d >= 0.3 - 1e-9
        assert all(ls.valid(ch) for ls, ch in zip(space.layers, c.choices, strict=True))
    # two channel genes that give the same width are one gene value (duplicates are found)
    g = chan[1]  # 32 channels at vector width 8: 0.9 keeps all 32, 0.8 and 0.7 keep 24
    j = enc.genes.index(g)
    v = enc.xu.copy()
    v[j] = 9
    assert enc.snap(v)[j] == 10 and enc.decode(v) == space.dense()
    v[j], w = 7, v.copy()
    w[j] = 8
    assert (enc.snap(v) == enc.snap(w)).all() and enc.decode(v).key() == enc.decode(w).key()


def test_joint_candidate_is_narrowed_then_masked(tiny):
    model, x, space = tiny
    enc = JcwEncoding(space)
    v = enc.xu.copy()
    for j, g in enumerate(enc.genes):
        if g.layer == 1:
            v[j] = 5 if g.kind == "channels" else 4
    c = enc.decode(v)
    b1 = c.choices[1]
    assert b1.joint and b1.scheme == "filter" and b1.ratio == 2.0, "32 → 16 channels"
    assert b1.mask == "unstructured" and b1.density == pytest.approx(0.4)
    row = json.loads(json.dumps(c.to_json()))
    assert Candidate.from_json(row) == c and Candidate.from_json(row).key() == c.key()
    assert str(b1) == "filter 2x + unstructured 40%"
    pruned = space.realize(model, c)
    conv = dict(pruned.model.named_modules())["b1.0"]
    assert conv.out_channels == 16, "half of b1's 32 filters cut"
    assert dict(pruned.model.named_modules())["b2.0"].in_channels == 16
    mask = pruned.masks["b1.0.weight"]
    assert mask.shape == conv.weight.shape
    assert mask.float().mean().item() == pytest.approx(0.4, abs=0.01)
    assert pruned.schemes == {"b1.0": "unstructured"}
    assert pruned.model(x).shape == (1, 10)
    # the same as the two plans applied by hand
    first = space.structure(c)
    assert set(first.layers) == {"b1.0"} and first.layers["b1.0"].scheme == "filter"
    by_hand = space.plan(c).apply(first.apply(model).model)
    with torch.no_grad():
        assert torch.equal(by_hand.model(x), pruned.model(x))
    s, e = space.mac_fractions(c)
    assert e < s < 1.0
    assert space.structure(space.dense()) is None, "plain candidates keep one plan"


def test_journal_accepts_joint_rows_and_rejects_bad_ones(tmp_path):
    j = Journal(tmp_path)
    j.append({"type": "candidate", "id": 0, "status": "started", "key": "k",
              "encoding": [["keep", "filter", 2.0, "unstructured", 0.4], ["keep", "none", 1]]})
    assert j.records()[0]["encoding"][0][4] == 0.4
    j.append({"type": "candidate", "id": 1, "status": "started", "key": "k",
              "encoding": [["keep", "filter", 2.0, "unstructured"]]})
    with pytest.raises(Exception, match="mask scheme, density"):
        j.records()


# --- anchors ------------------------------------------------------------------------------------
def test_anchor_selection_keeps_members_near_every_anchor():
    """A pool whose accuracy is cheapest at one latency: the survivors still include the
    member nearest each anchor, and every anchor's own front leads its picks."""
    rng = np.random.default_rng(1)
    lat = np.concatenate([rng.uniform(0.9, 1.0, 40), rng.uniform(0.05, 0.9, 20)])
    loss = 0.3 / lat ** 0.2 + rng.uniform(0, 0.05, len(lat))  # slower is more accurate
    F = np.column_stack([loss, lat])
    anchors = [0.1, 0.3, 0.6, 1.0]
    chosen, rank, crowd = anchor_select(F, anchors, 12)
    assert len(chosen) == len(set(chosen)) == 12
    for a in anchors:
        nearest = int(np.argmin(np.abs(np.log(lat / a))))
        assert nearest in chosen, f"the member nearest {a} ms was dropped"
    picked = np.log(lat[chosen])
    for a in anchors:
        assert np.min(np.abs(picked - np.log(a))) <= np.min(np.abs(np.log(lat / a))) + 1e-12
    assert rank.shape == (60,) and (rank >= 0).all() and crowd.shape == (60,)
    # plain non-dominated sorting on (loss, latency) would keep the slow cluster's front
    from pymoo.util.nds.non_dominated_sorting import NonDominatedSorting
    front = NonDominatedSorting().do(F, only_non_dominated_front=True)
    G = anchor_objectives(F, 0.1)
    assert set(front) != set(chosen) and G[chosen, 1].min() == G[:, 1].min()


# --- the strategy -------------------------------------------------------------------------------
def test_jcw_is_deterministic_per_seed_and_never_repeats(tiny):
    model, x, space = tiny
    s1, a = _drive(space, 3)
    _, b = _drive(space, 3)
    _, c = _drive(space, 4)
    keys = [k.key() for k in a]
    assert keys == [k.key() for k in b], "the same seed and results give the same proposals"
    assert keys != [k.key() for k in c]
    assert len(set(keys)) == len(keys), "nothing is proposed twice"
    assert space.dense().key() not in keys, "the dense model (the prior) is not re-evaluated"
    assert s1.generations >= 3 and "generation" in s1.status()
    assert any(ch.joint for cand in a for ch in cand.choices)
    for cand in a[:6]:
        assert space.realize(model, cand).model(x).shape == (1, 10)


def test_jcw_replayed_from_results_proposes_the_same(tiny):
    """What --resume does: a fresh strategy told the journal's results in the same order
    proposes what the first one did next (nothing random outside pymoo's seeded generator)."""
    _, _, space = tiny
    reward = RewardConfig(0.3)
    first = make_strategy("jcw", space, 5, reward, targets=(0.3,), population=8)
    log = []
    for _ in range(4):
        cands = first.ask(3)
        outs = [Outcome(c, *_synthetic(space, c), 0.5) for c in cands]
        first.tell(outs)
        log.append(outs)
    np.random.seed(123)  # other code using numpy's global generator changes nothing
    torch.manual_seed(9)
    again = make_strategy("jcw", space, 5, reward, targets=(0.3,), population=8)
    for outs in log:
        assert [c.key() for c in again.ask(3)] == [o.candidate.key() for o in outs]
        again.tell(outs)
    assert [c.key() for c in again.ask(3)] == [c.key() for c in first.ask(3)]


def test_jcw_covers_several_targets_on_a_synthetic_problem(tiny):
    """After a few generations the measured set has members near every target (the anchors
    keep them), not only where accuracy is cheapest."""
    _, _, space = tiny
    targets = (0.25, 0.45, 0.7)
    s, asked = _drive(space, 0, rounds=10, targets=targets)
    lat = np.array([_synthetic(space, c)[1] for c in asked])
    for t in targets:
        assert (np.abs(np.log(lat / t)) < 0.25).any(), (t, sorted(lat))
    front = s.front()
    assert front and all(b[2] >= a[2] for a, b in zip(front, front[1:], strict=False))


def test_several_targets_need_jcw():
    from host.search import SearchConfig, SearchError
    from host.search.config import targets_arg

    assert targets_arg("0.05, 0.02,0.03") == (0.02, 0.03, 0.05)
    with pytest.raises(SearchError, match="milliseconds"):
        targets_arg("0.02,fast")
    with pytest.raises(SearchError, match="several targets need --strategy jcw"):
        SearchConfig(latency_ms=0.02, targets=(0.02, 0.03)).validate()
    SearchConfig(latency_ms=0.02, targets=(0.02, 0.03), strategy="jcw").validate()


def test_search_command_reads_several_targets():
    import argparse

    from host.search import SearchConfig
    from host.search.command import config_from_args, register

    ap = argparse.ArgumentParser()
    register(ap.add_subparsers(dest="command"))
    cfg = config_from_args(ap.parse_args(["search", "--strategy", "jcw", "--latency-ms",
                                          "0.05,0.02,0.03", "--population", "8"]))
    assert cfg == SearchConfig(strategy="jcw", latency_ms=0.02, targets=(0.02, 0.03, 0.05),
                               population=8)
    one = config_from_args(ap.parse_args(["search", "--latency-ms", "0.02"]))
    assert one.latency_ms == 0.02 and one.targets == ()


def test_tiny_model_widths_stay_vector_multiples(tiny):
    model, x, space = tiny
    _, asked = _drive(space, 1, rounds=3)
    for cand in asked:
        pruned = space.realize(model, cand)
        for name, m in pruned.model.named_modules():
            if isinstance(m, nn.Conv2d) and m.groups == 1:
                assert m.out_channels % 8 == 0 or m.out_channels == 10, name
        for path, mask in pruned.masks.items():
            assert mask.any(), path
    assert isinstance(PruningPlan, type)


def test_initial_population_has_a_joint_and_a_channels_only_ladder(tiny):
    """Where masks buy little latency, the fastest models are narrow dense ones: the first
    generation holds a channels-only ladder (no masks) beside the joint one."""
    _, _, space = tiny
    enc = JcwEncoding(space)
    dens = np.array([g.kind == "density" for g in enc.genes])
    chan = enc.ladder(3, channels_only=True)
    assert len(chan) == 3 and (chan[:, dens] == 10).all()
    assert (chan[0, ~dens] == enc.snap(enc.xl)[~dens]).all(), "from the channels' floor"
    assert not (chan == enc.xu).all(axis=1).any(), "the unpruned end is the joint ladder's"
    widths = chan[:, ~dens].sum(axis=1)  # (snapped: two levels may give one width)
    assert (np.diff(widths) >= 0).all() and widths[0] < widths[-1]
    joint = enc.ladder(3)
    assert (joint[0] == enc.snap(enc.xl)).all() and (joint[-1] == enc.xu).all()
    s = make_strategy("jcw", space, 0, RewardConfig(0.3), targets=(0.3,), population=8)
    first = {tuple(ind.X) for ind in s.algo.ask()}
    assert {tuple(r) for r in chan[:2]} <= first and tuple(enc.snap(enc.xl)) in first
