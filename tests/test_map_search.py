"""The search-based scheme mapper (host/pruning/map_search.py): the space built from the rule
mapper's choices, the local search under the knee's latency, then `npas-host map --search` on
the host runner with real accuracy feedback (host tier)."""

from __future__ import annotations

import json

import pytest
from test_map import map_net

from host.cli import main
from host.pruning.config import PruningConfig, PruningError
from host.pruning.map_search import MapSearchConfig, MapSpace, search
from host.pruning.mapping import GEMM, LADDERS, decide
from host.pruning.plan import PruningPlan

RATE = 0.8


def _choices():
    n = len(GEMM)
    # conv: each rung 0.1 ms faster; k5: each rung 0.3 ms faster; pw: flat; fc: flat
    rung_ms = [{"conv": 1.0 - 0.1 * i, "pw": 0.5, "k5": 2.0 - 0.3 * i, "fc": 0.1}
               for i in range(n)]
    dense = {"stem": 0.2, "conv": 2.0, "dw": 0.1, "pw": 1.0, "k5": 4.0, "fc": 0.2}
    return decide(map_net(), RATE, rung_ms, dense, tolerance=0.5)


def _accuracy(plan: PruningPlan) -> float:
    """A made-up accuracy: the conv layer gains a lot from finer blocks, k5 loses little from
    coarser ones, so the best plan under the knee's latency trades one for the other."""
    idx = {}
    for layer in ("conv", "k5"):
        r = plan.layers[layer]
        labels = [x.label for x in LADDERS["kxk"]]
        rung = next(x for x in LADDERS["kxk"] if x.scheme == r.scheme
                    and dict(x.params) == dict(r.params))
        idx[layer] = labels.index(rung.label)
    return 0.9 - 0.05 * idx["conv"] - 0.005 * idx["k5"]


def test_space_holds_the_timed_rungs_that_fit_and_starts_at_the_knee():
    choices = _choices()
    space = MapSpace(map_net(), RATE, choices)
    by = {c.layer: c for c in choices}
    assert "stem" not in space.layers and "dw" not in space.layers  # kept dense
    for name, opts, g in zip(space.layers, space.options, space.knee, strict=True):
        assert g in opts
        assert [LADDERS[by[name].kind][i].label for i in opts] == list(by[name].rung_ms)
    k5 = space.layers.index("k5")
    assert all(LADDERS["kxk"][i].scheme != "pattern" for i in space.options[k5])  # 5x5
    assert space.predicted_ms(space.knee) == pytest.approx(
        sum(by[n].rung_ms[by[n].rung] for n in space.layers))
    plan = space.plan(space.knee, PruningConfig())
    assert {n: (r.scheme, r.params) for n, r in plan.layers.items()} == {
        c.layer: (c.scheme, c.params) for c in choices if c.scheme}


def test_search_trades_rungs_under_the_limit_deterministically():
    space = MapSpace(map_net(), RATE, _choices())
    cfg = MapSearchConfig(budget=25, seed=3)
    a = search(space, _accuracy, cfg, PruningConfig())
    b = search(space, _accuracy, cfg, PruningConfig())
    assert [e.genome for e in a.history] == [e.genome for e in b.history]  # per seed
    assert len(a.history) <= cfg.budget
    assert len({e.genome for e in a.history}) == len(a.history)  # never twice
    assert a.history[0].genome == space.knee == a.knee.genome
    assert a.best.feasible and a.best.predicted_ms <= a.limit_ms + 1e-12
    assert a.limit_ms == pytest.approx(space.predicted_ms(space.knee))
    assert a.best.accuracy > a.knee.accuracy  # conv finer, k5 coarser
    conv, k5 = space.layers.index("conv"), space.layers.index("k5")
    assert a.best.genome[conv] < a.knee.genome[conv]
    assert a.best.genome[k5] > a.knee.genome[k5]
    moved = {c.layer: c for c in a.choices}
    assert moved["conv"].why.startswith("searched:") and "instead of" in moved["conv"].why


def test_search_config_refuses_bad_values():
    for kw in ({"budget": 0}, {"slack": -0.1}, {"slack": 2}, {"finetune_epochs": -1}):
        with pytest.raises(PruningError):
            MapSearchConfig(**kw)


def test_search_needs_a_dataset(capsys):
    assert main(["map", "test_map:map_net", "--search", "4"]) == 2
    assert "--dataset" in capsys.readouterr().err


@pytest.mark.host
def test_map_search_command_measures_accuracy_and_the_searched_plan(capsys, runner_binary,
                                                                     tmp_path):
    plan_path = tmp_path / "out" / "net.map.json"  # its folder does not exist yet
    rc = main(["map", "test_map:map_net", "--input-shape", "1,3,16,16", "--rate", "0.75",
               "--runs", "3", "--warmup", "1", "--rounds", "1", "-o", str(plan_path),
               "--json", "--store", str(tmp_path / "s"), "--dataset", "digits",
               "--pretrain-epochs", "0.1", "--finetune-epochs", "0.02", "--search", "3"])
    d = json.loads(capsys.readouterr().out)
    assert rc == 0
    e2e = d["end_to_end_ms"]
    assert list(e2e)[-2:] == ["mapped", "searched"] and all(v > 0 for v in e2e.values())
    assert set(d["accuracy"]) == set(e2e) - {"dense"}
    assert all(0 <= a <= 1 for a in d["accuracy"].values())
    s = d["search"]
    assert 1 <= len(s["history"]) <= 3 and s["best"]["feasible"]
    assert s["best"]["predicted_ms"] <= s["limit_ms"] + 1e-9
    assert d["accuracy"]["searched"] == s["best"]["accuracy"] >= s["knee"]["accuracy"]
    # the plan written is the searched one, and it replays
    plan = PruningPlan.load(plan_path)
    layers = {x["layer"]: x for x in d["layers"]}
    for name, rule in plan.layers.items():
        assert rule.scheme == layers[name]["scheme"]
        assert layers[name]["rung"] == s["best"]["rungs"].get(name, layers[name]["rung"])
    assert plan.apply(map_net()).report.rows
