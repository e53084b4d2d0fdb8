"""The rule-based scheme mapper (`npas-host map`): its rules per layer kind and its knee choice
without a device, then the whole command on the host runner (host tier)."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from host.cli import main
from host.pruning.config import PruningConfig
from host.pruning.mapping import (
    GEMM,
    KXK,
    LADDERS,
    choose,
    decide,
    fits,
    layer_kind,
    prunable_layers,
    rung_plan,
)
from host.pruning.plan import PruningPlan


class MapNet(nn.Module):
    """Every kind the mapper knows: a stem, k×k and 1x1 convs, a depthwise conv, a 5x5 conv
    (no pattern) and a Linear, wide enough for blocks."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.conv = nn.Conv2d(16, 32, 3, padding=1)
        self.dw = nn.Conv2d(32, 32, 3, padding=1, groups=32)
        self.pw = nn.Conv2d(32, 32, 1)
        self.k5 = nn.Conv2d(32, 32, 5, padding=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = torch.relu(self.conv(x))
        x = torch.relu(self.pw(self.dw(x)))
        x = torch.relu(self.k5(x))
        return self.fc(torch.flatten(self.pool(x), 1))


def map_net() -> nn.Module:
    torch.manual_seed(0)
    return MapNet().eval()


def test_layer_kinds():
    assert prunable_layers(map_net()) == {"stem": "stem", "conv": "kxk", "dw": "grouped",
                                          "pw": "1x1", "k5": "kxk", "fc": "linear"}
    assert layer_kind(nn.Conv2d(8, 8, 3, groups=2)) == "grouped"
    assert layer_kind(nn.Conv2d(5, 8, 1)) == "1x1"


def test_ladders_go_from_unstructured_to_larger_blocks():
    assert GEMM[0].scheme == KXK[0].scheme == "unstructured"
    rows = [dict(r.params)["rows"] for r in GEMM[1:]]
    assert rows == sorted(rows) and len(set(rows)) == len(rows)
    areas = [dict(r.params)["filters"] * dict(r.params)["channels"] for r in KXK[2:]]
    assert areas == sorted(areas)
    assert len(GEMM) == len(KXK)


def test_pattern_fits_3x3_at_rates_it_reaches():
    pat = KXK[1]
    assert fits(pat, nn.Conv2d(8, 8, 3), 0.8)
    assert not fits(pat, nn.Conv2d(8, 8, 3), 0.5)  # pattern alone removes 5/9
    assert not fits(pat, nn.Conv2d(8, 8, 5), 0.8)


def test_rung_plans_give_each_kind_its_rung():
    m = map_net()
    cfg = PruningConfig()
    p1 = rung_plan(m, 1, 0.8, cfg).layers
    assert set(p1) == {"conv", "pw", "k5", "fc"}  # stem and depthwise stay dense
    assert p1["conv"].scheme == "pattern" and p1["k5"].scheme == "unstructured"
    assert p1["pw"].scheme == "block" and p1["pw"].params == {"rows": 2}
    last = rung_plan(m, len(KXK) - 1, 0.8, cfg).layers
    assert last["conv"].scheme == "block_punched" and last["conv"].params == dict(KXK[-1].params)
    assert last["fc"].params == {"rows": 32}


def test_knee_is_the_finest_rung_near_the_most_regular():
    t = [1.0, 0.8, 0.6, 0.42, 0.41, 0.40]
    i, why = choose("1x1", t, dense_ms=1.0, rate=0.8, tolerance=0.10)
    assert i == 3 and "most regular" in why and "finer block 4 rows" in why
    assert choose("1x1", t, dense_ms=1.0, rate=0.8, tolerance=0.0)[0] == 5
    assert choose("1x1", t, dense_ms=1.0, rate=0.8, tolerance=1.0)[0] == 1


def test_knee_is_measured_against_the_fastest_rung_when_the_ladder_is_not_monotone():
    # VGG-16's features.2 at 224: unstructured 10.6 ms, 8x4 blocks faster than 16x4 (13.1 ms);
    # against the most regular rung unstructured would pass as "within 10 %"
    t = [10.6, 10.5, 10.4, 8.7, 8.0, 13.1]
    i, why = choose("kxk", t, dense_ms=None, rate=0.8, tolerance=0.10)
    assert i == 3 and "the fastest, " in why and f"{KXK[4].label}" in why


def test_knee_stops_at_the_structured_estimate():
    # the dense layer 2.5 ms at rate 0.8: a narrower dense layer would take 0.5 ms, so
    # anything within 10 % of 0.5 is as good as regularity gets
    i, why = choose("kxk", [1.0, 0.9, 0.54, 0.45, 0.41, 0.40], dense_ms=2.5, rate=0.8)
    assert i == 2 and "structured" in why


def test_knee_skips_rungs_that_do_not_fit_or_were_not_timed():
    t = [1.0, 0.30, None, 0.5, 0.5, 0.5]
    fit = [True, False, True, True, True, True]
    assert choose("kxk", t, None, 0.8, fit=fit)[0] == 3
    with pytest.raises(ValueError):
        choose("kxk", [None] * 6, None, 0.8)


def test_slower_than_dense_is_said():
    _, why = choose("1x1", [3.0, 2.5, 2.2, 2.1, 2.0, 2.0], dense_ms=1.5, rate=0.8)
    assert "not faster than dense" in why


def test_decide_maps_every_layer_and_says_why_dense():
    m = map_net()
    n = len(GEMM)
    rung_ms = [{"conv": 1.0 - 0.1 * i, "pw": 0.5, "k5": 2.0 - 0.3 * i, "fc": 0.1}
               for i in range(n)]
    dense = {"stem": 0.2, "conv": 2.0, "dw": 0.1, "pw": 1.0, "k5": 4.0, "fc": 0.2}
    choices = {c.layer: c for c in decide(m, 0.8, rung_ms, dense)}
    assert choices["stem"].rung == "dense" and "stem" in choices["stem"].why
    assert choices["dw"].rung == "dense" and "depthwise" in choices["dw"].why
    assert choices["pw"].scheme == "unstructured"  # no rung faster: the finest
    assert choices["k5"].scheme == "block_punched"
    assert "pattern" not in choices["k5"].rung_ms  # 5x5: pattern never fits
    assert set(choices["conv"].rung_ms) == {r.label for r in LADDERS["kxk"]}


@pytest.mark.host
def test_map_command_writes_a_plan_that_replays(capsys, runner_binary, tmp_path):
    plan_path = tmp_path / "net.map.json"
    rc = main(["map", "test_map:map_net", "--input-shape", "1,3,16,16", "--rate", "0.75",
               "--runs", "3", "--warmup", "1", "-o", str(plan_path), "--json",
               "--store", str(tmp_path / "s")])
    d = json.loads(capsys.readouterr().out)
    assert rc == 0
    e2e = d["end_to_end_ms"]
    assert list(e2e)[0] == "dense" and list(e2e)[-1] == "mapped"
    assert len(e2e) == len(GEMM) + 2 and all(v > 0 for v in e2e.values())
    assert set(d["compression"]) == set(e2e)
    layers = {x["layer"]: x for x in d["layers"]}
    assert layers["dw"]["rung"] == layers["stem"]["rung"] == "dense"
    for name in ("conv", "pw", "k5", "fc"):
        x = layers[name]
        assert x["rung"] in {r.label for r in LADDERS[x["kind"]]}, x
        assert x["rung_ms"] and x["dense_ms"] > 0 and x["why"]
    saved = json.loads((tmp_path / "net.map.profile.json").read_text())
    assert saved["layers"] == d["layers"]
    # the plan replays: the same weights on a fresh model, and the rate on every mapped layer
    plan = PruningPlan.load(plan_path)
    assert set(plan.layers) == {"conv", "pw", "k5", "fc"}
    a, b = plan.apply(map_net()), plan.apply(map_net())
    for (n, p), (_, q) in zip(a.model.state_dict().items(), b.model.state_dict().items(),
                              strict=True):
        assert torch.equal(p, q), n
    for row in plan.report(map_net()).rows:
        assert row.achieved == pytest.approx(0.75, abs=0.05), row
    assert d["compression"]["mapped"] > 1.5


def test_map_refuses_bad_rates(capsys):
    for bad in ("0", "1.5", "fast"):
        assert main(["map", "test_map:map_net", "--rate", bad]) == 2
        assert "--rate" in capsys.readouterr().err


def test_slow_models_get_fewer_runs_within_bounds():
    from host.pruning.map_command import MIN_RUNS, runs_for

    assert runs_for(1.0, 2.0, 30) == 30  # fast: capped at --runs
    assert runs_for(100.0, 2.0, 30) == 20  # VGG-like: about two seconds
    assert runs_for(1000.0, 2.0, 30) == MIN_RUNS  # very slow: never below the floor
    assert runs_for(1000.0, 2.0, 3) == 3  # ... unless --runs asks for fewer
    assert runs_for(0.0, 2.0, 30) == 30
