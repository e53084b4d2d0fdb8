"""jcw's estimators: the weight-sharing supernet (its sub-network is the pruned model; training
reaches only the weights a sub-network keeps; deterministic per seed; scoring is realize +
BatchNorm recalibration + validation) and the per-layer latency table by width and density."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch.func import functional_call

from host.models.data import load_digits
from host.models.train import TrainConfig, evaluate, recalibrate_bn
from host.models.zoo import digits_tiny
from host.pruning.latency_table import DensityTable, LatencyTable, layer_macs
from host.search import SearchConfig
from host.search.ops import replace_ops
from host.search.space import SearchSpace
from host.search.strategies.jcw import JcwBounds, JcwEncoding
from host.search.supernet import Supernet, _subset, subnet_masks

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one torch thread


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model, _ = replace_ops(digits_tiny())
    x = torch.randn(1, 1, 8, 8)
    return model.eval(), SearchSpace.build(model, x, vector_width=8)


@pytest.fixture(scope="module")
def data():
    return load_digits(8)


def _cands(space, n, seed=0):
    """jcw candidates (channels and densities at their low bounds too) and plain ones of the
    space (block, pattern, ... masks; filter and channel pruning) with kept filter types."""
    enc = JcwEncoding(space, JcwBounds(0.1, 0.3, 0.3, 0.3))
    rng = np.random.default_rng(seed)
    out = [enc.decode(enc.xl)] + [enc.decode(rng.integers(enc.xl, enc.xu + 1))
                                  for _ in range(n)]
    while len(out) < 2 * n:
        c = space.random(rng)
        if all(ch.ftype == "keep" for ch in c.choices):
            out.append(c)
    return out


def test_supernet_subnetwork_equals_the_pruned_model(tiny, data):
    """For the same choices, the supernet's sub-network (masks applied on the fly) computes
    what the physically pruned model (space.realize) computes, in eval and in train mode,
    before and after the supernet has trained (the ranking follows the weights)."""
    model, space = tiny
    cfg = SearchConfig(finetune_lr=0.05, jcw_bounds=(0.1, 0.3, 0.3, 0.3))
    net = Supernet(space, model, data, cfg, TrainConfig(batch_size=32), bounds=cfg.bounds())
    x = torch.randn(16, 1, 8, 8)
    cands = _cands(space, 12)
    assert any(c.joint for c in cands) and any(not c.joint for c in cands)
    for trained in (False, True):
        if trained:
            net.train_first(0.3, seed=1)
        for c in cands:
            pruned = space.realize(net.model, c)
            assert pruned.model is not net.model
            for train_mode in (False, True):
                pruned.model.train(train_mode)
                net.model.train(train_mode)
                with torch.no_grad():
                    want = pruned.model(x)
                    got = net.forward(x, c)
                torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
            # really a smaller model: the cuts are not zeros in it
            if space.structure(c) is not None or any(ch.scheme == "filter"
                                                     for ch in c.choices):
                assert sum(p.numel() for p in pruned.model.parameters()) < sum(
                    p.numel() for p in net.model.parameters())
    net.model.eval()


def test_supernet_step_trains_only_the_kept_weights(tiny):
    model, space = tiny
    net_model = copy.deepcopy(model).train()
    c = next(c for c in _cands(space, 6, seed=3) if c.joint)
    masks = subnet_masks(space, net_model, c)
    assert masks and any((~m).any() for m in masks.values())
    params = dict(net_model.named_parameters())
    over = {k: params[k] * m for k, m in masks.items()}
    out = functional_call(net_model, over, (torch.randn(8, 1, 8, 8),))
    out.square().sum().backward()
    for k, m in masks.items():
        g = params[k].grad
        assert g is not None and bool((g[~m] == 0).all()), k
        assert bool((g[m] != 0).any()), k


def test_supernet_training_is_deterministic_and_scores_without_finetuning(tiny, data):
    model, space = tiny
    cfg = SearchConfig(finetune_lr=0.05)
    tc = TrainConfig(batch_size=32)
    cands = _cands(space, 3, seed=5)

    def trained():
        net = Supernet(space, model, data, cfg, tc)
        net.train_first(0.2, seed=2)
        net.train_round(1, cands, 5, seed=2)
        return net

    a, b = trained(), trained()
    for (k, p), (_, q) in zip(a.model.state_dict().items(), b.model.state_dict().items(),
                              strict=True):
        assert torch.equal(p, q), k
    assert not torch.equal(a.model.state_dict()["b1.0.weight"], model.state_dict()["b1.0.weight"])
    c = cands[1]
    acc, err = a.score(c)
    assert err is None and 0.0 <= acc <= 1.0
    # the same as realize + BatchNorm recomputed + validation, by hand
    pruned = space.realize(a.model, c)
    recalibrate_bn(pruned.model, _subset(data, 512))
    assert acc == evaluate(pruned.model, data)
    assert a.cost["scored"] == 1 and a.cost["train_steps"] > 0 and a.cost["rounds"] == 1
    assert a.per_candidate_s() > 0
    with pytest.raises(ValueError, match="filter types"):
        from dataclasses import replace

        bad = replace(c, choices=(replace(c.choices[0], ftype="dwpw"), *c.choices[1:]))
        subnet_masks(space, a.model, bad)


# --- the latency table by width and density ---------------------------------------------------
def _level(scale):
    return LatencyTable({"a": [(0.25, 0.1 * scale), (1.0, 0.4 * scale)],
                         "b": [(0.5, 0.2 * scale), (1.0, 0.4 * scale)]}, 0.05)


def test_density_table_interpolates_width_then_density():
    t = DensityTable({1.0: _level(1.0), 0.9: _level(1.5), 0.3: _level(0.5)})
    assert t.dense_ms == pytest.approx(0.05 + 0.8)
    assert t.layer_ms("a", 1.0) == pytest.approx(0.4)
    assert t.layer_ms("a", 0.625) == pytest.approx(0.25)  # halfway in the work fraction
    # a mask at any density under 1 uses the sparse levels (0.95 is past the 0.9 level)
    assert t.layer_ms("a", 1.0, 0.9) == pytest.approx(0.6)
    assert t.layer_ms("a", 1.0, 0.6) == pytest.approx(0.4)  # halfway between 0.3 and 0.9
    assert t.layer_ms("a", 1.0, 0.95) == pytest.approx(0.6 + 0.05 * (0.6 - 0.2) / 0.6)
    assert t.layer_ms("a", 1.0, 0.1) == pytest.approx(0.2 - 0.2 * 0.4 / 0.6)  # extended
    assert DensityTable({0.9: _level(3.0), 0.3: _level(0.25)}).layer_ms("a", 1.0, 0.1) == 0.0
    got = t.predict({"a": (50, 100), "b": (100, 100), "gone": (1, 1)}, {"b": 0.3})
    assert got == pytest.approx(0.05 + t.layer_ms("a", 0.5) + 0.2)
    back = DensityTable.from_dict(t.to_dict())
    assert back.predict({"a": (30, 100)}, {"a": 0.5}) == pytest.approx(
        t.predict({"a": (30, 100)}, {"a": 0.5}))


def test_density_table_predicts_a_realized_candidate(tiny):
    """predict_model reads the pruned model's widths and its masks' densities."""
    model, space = tiny
    dense = layer_macs(model)
    names = list(dense)
    levels = {d: LatencyTable({n: [(0.25, 0.25 * d), (1.0, 1.0 * d)] for n in names}, 0.0)
              for d in (1.0, 0.6, 0.3)}
    t = DensityTable(levels)
    c = next(c for c in _cands(space, 6, seed=7) if c.joint)
    pruned = space.realize(model, c)
    now = layer_macs(pruned.model)
    dens = {k.removesuffix(".weight"): float(m.float().mean()) for k, m in pruned.masks.items()}
    want = sum(t.layer_ms(n, now[n] / dense[n], dens.get(n, 1.0)) for n in names)
    assert t.predict_model(pruned.model, pruned.masks, dense) == pytest.approx(want)
    assert t.predict_model(pruned.model, pruned.masks, dense) < t.dense_ms
