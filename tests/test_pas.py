"""PaS (host/pruning/pas.py): straight-through masks, masked models equal their shrunk ones on
residual, concat and depthwise graphs, MAC counting, width rounding, and a short real search."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from zoo import small_cnn, torchvision_model

from host.pruning.config import PruningError
from host.pruning.pas import ChannelMasks, PasConfig, binarize, count_macs, search_widths


def test_binarize_is_a_step_forward_and_the_identity_backward():
    w = torch.tensor([0.2, 0.5, 0.51, 0.9], requires_grad=True)
    b = binarize(w)
    assert b.tolist() == [0.0, 0.0, 1.0, 1.0]
    (b * torch.tensor([1.0, 2.0, 3.0, 4.0])).sum().backward()
    assert w.grad.tolist() == [1.0, 2.0, 3.0, 4.0]


class CatNet(nn.Module):
    """Two branches concatenated along channels, a BN after the concat, a Linear after flatten."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(3, 6, 1)
        self.bn = nn.BatchNorm2d(14)
        self.c = nn.Conv2d(14, 10, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(10)
        self.fc = nn.Linear(10 * 4 * 4, 5)

    def forward(self, x):
        x = torch.relu(self.bn(torch.cat([self.a(x), self.b(x)], 1)))
        x = torch.relu(self.bn2(self.c(x)))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 4), 1))


def _random_bn(model: nn.Module, seed: int) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.randn(c, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(c, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(c, generator=g) * 0.2)
    return model.eval()


MODELS = {
    "resnet18 (residual groups)": lambda: torchvision_model("resnet18"),
    "mobilenet_v2 (depthwise + residual)": lambda: torchvision_model("mobilenet_v2"),
    "concat + BN after it + flatten→Linear": lambda: _random_bn(CatNet(), 1),
    "small_cnn (SE, concat, grouped)": lambda: small_cnn(),
    "RepVGG blocks (3x3 + 1x1 + identity branches)": lambda: _repvgg_digits(),
}


def _repvgg_digits() -> nn.Module:
    from host.models.zoo import DigitsNet
    from host.pruning.repvgg import RepBlock, to_repvgg

    torch.manual_seed(0)
    m, _ = to_repvgg(_random_bn(DigitsNet(in_channels=3), 2))
    for blk in m.modules():
        if isinstance(blk, RepBlock):
            nn.init.normal_(blk.conv1.weight, std=0.1)
            if blk.bn_id is not None:
                blk.bn_id.weight.data.fill_(0.5)
    return m.eval()


@pytest.mark.parametrize("name", list(MODELS))
def test_masked_model_equals_the_shrunk_one(name):
    torch.manual_seed(0)
    model = MODELS[name]().eval()
    x = torch.randn(2, 3, 32, 32)
    masks = ChannelMasks(model, x[:1])
    assert masks.dense_macs == count_macs(model, x[:1])
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in masks.logits.values():
            keep = torch.rand(p.shape, generator=g) > 0.4
            keep[0] = True  # never an empty group
            p.copy_(keep.float() * 0.9 + 0.05)
    masks.attach(model)
    with torch.no_grad():
        want = model(x)
    masks.detach()
    shrunk = masks.shrink(model, vector_width=1)
    with torch.no_grad():
        got = shrunk(x)
        plain = model(x)  # the hooks are gone: the original model is back to dense
    assert sum(p.numel() for p in shrunk.parameters()) < sum(p.numel()
                                                            for p in model.parameters())
    assert (got - want).abs().max() <= 1e-4 * want.abs().max()
    assert not torch.allclose(plain, want)
    assert float(masks.macs().detach()) == pytest.approx(count_macs(shrunk, x[:1]), rel=1e-9)
    if "RepVGG" in name:  # shrunk blocks still merge into plain convs
        from host.pruning.repvgg import merge_repvgg

        with torch.no_grad():
            merged = merge_repvgg(shrunk)(x)
        assert (merged - want).abs().max() <= 1e-4 * want.abs().max()


def test_frozen_groups_get_no_mask_and_a_model_with_none_is_refused():
    m = torchvision_model("resnet18")
    masks = ChannelMasks(m, torch.randn(1, 3, 32, 32))
    assert all(not g.frozen for g in masks.groups.values())
    assert all(g.size != 1000 for g in masks.groups.values())  # the output is frozen

    class OnlyLinear(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 3)

        def forward(self, x):
            return self.fc(x)
    with pytest.raises(PruningError, match="no channel group"):
        ChannelMasks(OnlyLinear(), torch.randn(1, 4))


def test_widths_round_to_the_vector_width_towards_the_target():
    m = torchvision_model("resnet18")
    x = torch.randn(1, 3, 32, 32)
    masks = ChannelMasks(m, x)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in masks.logits.values():
            p.copy_(torch.rand(p.shape, generator=g))
    exact = masks.macs_for({gid: int((masks.logits[str(gid)] > 0.5).sum())
                            for gid in masks.groups})
    near = masks.widths(16)
    toward = masks.widths(16, target=exact / masks.dense_macs)
    for w in (near, toward):
        for gid, kept in w.items():
            size = masks.groups[gid].size
            assert len(kept) % 16 == 0 or len(kept) == size
    def gap(w):
        return abs(masks.macs_for({k: len(v) for k, v in w.items()}) - exact)
    assert gap(toward) <= gap(near)
    # the kept channels are those with the largest mask values
    gid = next(iter(toward))
    v = masks.logits[str(gid)].detach()
    kept = toward[gid]
    dropped = sorted(set(range(len(v))) - set(kept))
    if dropped:
        assert v[kept].min() >= v[dropped].max()


def test_config_refuses_bad_targets():
    for bad in (0.0, 1.0, 1.5):
        with pytest.raises(PruningError, match="fraction"):
            PasConfig(target=bad)


def test_a_short_search_narrows_the_model_and_counts_what_it_made():
    from host.models.data import load_dataset
    from host.models.zoo import digits_tiny

    torch.manual_seed(0)
    data = load_dataset("digits")
    model = digits_tiny()
    r = search_widths(model, data, PasConfig(target=0.4, epochs=1.0, vector_width=4,
                                             mask_lr=1.0))
    assert r.steps == len(r.history) > 0
    assert r.history[-1][2] < 1.0  # the penalty made the masks close channels
    x = torch.zeros(1, *data.input_shape)
    assert r.macs_pruned == count_macs(r.model, x) < r.macs_dense
    assert r.model(torch.randn(2, *data.input_shape)).shape == (2, 10)
    assert all(v % 4 == 0 for v in r.widths.values())
    # the widths were fixed (rounded) before the last quarter of training: the masks are
    # exactly the kept channels, and the shrunk model computes what the masked one did (no
    # channel switched on or off after the weights last trained)
    for gid, g in r.masks.groups.items():
        v = r.masks.logits[str(gid)].detach()
        assert set(v.tolist()) <= {0.0, 1.0}
        layer = g.producers[0].layer
        if layer in r.widths:
            assert int(v.sum()) == r.widths[layer]
    xs = torch.randn(8, *data.input_shape)
    with torch.no_grad():
        r.masks.attach(model.eval())
        want = model(xs)
        r.masks.detach()
        got = r.model(xs)
    assert (got - want).abs().max() <= 1e-4 * want.abs().max()


def test_rounding_up_silences_channels_the_masks_switched_off():
    from host.models.zoo import digits_tiny

    torch.manual_seed(1)
    m = _random_bn(digits_tiny(), 1).eval()
    x = torch.randn(4, 1, 16, 16)
    masks = ChannelMasks(m, x[:1])
    with torch.no_grad():  # a few channels off per group, fewer than one vector of 4
        for p in masks.logits.values():
            p[:: max(2, p.numel() // 2)] = 0.0
        masks.attach(m)
        want = m(x)
        masks.detach()
    keep = masks.widths(4)
    assert any(float(masks.logits[str(gid)].detach()[k].min()) == 0.0 for gid, k in keep.items())
    with torch.no_grad():
        got = masks.shrink(m, 4)(x)
    assert (got - want).abs().max() <= 1e-4 * want.abs().max()


@pytest.mark.parametrize("balance", [0.0, 0.5, 1.0])
def test_balance_rescales_the_penalty_push_between_groups_only(balance):
    from host.pruning.pas import _balanced_backward

    m = small_cnn()
    masks = ChannelMasks(m, torch.randn(1, 3, 16, 16)).attach(m)
    params = list(masks.logits.values())
    pen = masks.penalty(0.3, 5.0)
    plain = [g.clone() for g in torch.autograd.grad(pen, params, retain_graph=True)]
    _balanced_backward(masks, torch.zeros((), requires_grad=True), pen, balance)
    mean = (sum(float(g.abs().sum()) for g in plain) / sum(g.numel() for g in plain))
    pushes = []
    for g, p in zip(plain, params, strict=True):
        # the penalty's gradient is one value per group (every channel of it costs the same)
        assert torch.allclose(g, g.mean().expand_as(g))
        want = g * (mean / float(g.abs().mean())) ** balance
        assert torch.allclose(p.grad, want, rtol=1e-5)
        pushes.append(float(p.grad.abs().mean()))
    spread = max(pushes) / min(pushes)
    if balance == 1.0:
        assert spread == pytest.approx(1.0, rel=1e-5)
    else:
        assert spread > 1.5  # small_cnn's groups do cost different amounts per channel
    with pytest.raises(PruningError, match="balance"):
        PasConfig(target=0.5, balance=1.5)


def test_config_refuses_warmup_after_freeze():
    with pytest.raises(PruningError, match="freeze"):
        PasConfig(target=0.5, warmup=0.8, freeze=0.6)


# ---- RepVGG-style blocks (host/pruning/repvgg.py) ----------------------------------------------

@pytest.mark.parametrize("cin,cout,stride", [(8, 8, 1), (8, 16, 1), (8, 8, 2), (3, 12, 2)])
def test_repvgg_block_equals_its_merged_conv(cin, cout, stride):
    from host.pruning.repvgg import RepBlock

    torch.manual_seed(cin + cout + stride)
    b = RepBlock(cin, cout, stride)
    for m in b.modules():  # trained-looking branches: non-zero, BNs with real statistics
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, std=0.3)
    _random_bn(b, cin * 7 + stride)
    assert (b.bn_id is not None) == (cin == cout and stride == 1)
    x = torch.randn(2, cin, 9, 11)
    merged = b.merged()
    with torch.no_grad():
        want, got = b(x), merged(x)
    assert merged.kernel_size == (3, 3) and merged.stride == (stride, stride)
    assert (got - want).abs().max() <= 1e-5 * want.abs().max()


def test_to_repvgg_keeps_the_function_then_merges_to_plain_convs():
    from host.models.zoo import digits_cnn
    from host.pruning.repvgg import RepBlock, merge_repvgg, to_repvgg

    torch.manual_seed(0)
    m = _random_bn(digits_cnn(), 3)
    rep, blocks = to_repvgg(m)
    assert blocks == ["stem.0", "b1.0", "b2.0", "b3.0"]  # b4 is 1x1: not a RepVGG block
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        want = m(x)
        assert (rep.eval()(x) - want).abs().max() <= 1e-5 * want.abs().max()
        # train the branches a little so that the merge has something to merge
        for blk in rep.modules():
            if isinstance(blk, RepBlock):
                nn.init.normal_(blk.conv1.weight, std=0.1)
                if blk.bn_id is not None:
                    blk.bn_id.weight.fill_(0.5)
        before = rep(x)
        merged = merge_repvgg(rep)
        assert not any(isinstance(b, RepBlock) for b in merged.modules())
        assert (merged(x) - before).abs().max() <= 1e-5 * before.abs().max()


@pytest.mark.host
def test_pas_command_writes_a_model_bundle_and_report(runner_binary, tmp_path, capsys):
    import json

    from host.cli import main
    from host.models import load_model

    out = tmp_path / "run"
    rc = main(["pas", "--model", "host.models.zoo:digits_tiny", "--macs", "0.5", "--epochs",
               "0.5", "--pretrain-epochs", "0.2", "--finetune-epochs", "0.1", "--vector-width",
               "4", "--runs", "3", "--repvgg", "--out", str(out), "--json",
               "--store", str(tmp_path / "s")])
    assert rc == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep == json.loads((out / "report.json").read_text())
    assert 0 < rep["macs_fraction"] < 1 and rep["macs"] < rep["macs_dense"]
    assert rep["repvgg_blocks"] and set(rep["latency_ms"]) == {"dense", "pas"}
    assert all(v % 4 == 0 for v in rep["widths"].values())
    assert (out / "bundle" / "manifest.json").is_file()
    steps = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert steps and steps[-1]["step"] == len(steps)
    m = load_model(str(out / "model.pt2"))  # what compile/profile take as MODEL
    assert m(torch.zeros(1, 1, 16, 16)).shape == (1, 10)
    # a second run into the same folder is refused rather than mixing two runs
    assert main(["pas", "--macs", "0.5", "--out", str(out)]) == 2


def test_latency_table_interpolates_and_steers_the_penalty():
    from host.pruning.latency_table import LatencyTable

    t = LatencyTable({"a": [(1.0, 2.0), (0.5, 1.2), (0.25, 0.8), (0.5, 1.0)],
                      "b": [(1.0, 1.0)]}, other_ms=0.5)
    assert t.points["a"] == [(0.25, 0.8), (0.5, 1.1), (1.0, 2.0)]  # repeats: their median
    assert t.dense_ms == pytest.approx(3.5)
    assert t.interp("a", 0.75) == pytest.approx(1.55)
    assert t.interp("a", 0.0) == pytest.approx(0.5)  # the first segment extended
    assert LatencyTable({"c": [(0.5, 0.1), (1.0, 1.0)]}, 0).interp("c", 0.0) == 0.0  # clamped
    u = torch.tensor(0.75, requires_grad=True)
    v = t.interp("a", u)
    v.backward()
    assert float(u.grad) == pytest.approx(1.8)  # the segment's slope
    assert float(t.predict({"a": (50, 100), "b": (10, 10), "gone": (1, 1)})) == pytest.approx(
        0.5 + 1.1 + 1.0)
    # the masks' latency cost moves with the widths, and the penalty's gradient reaches them
    m = torchvision_model("resnet18")
    masks = ChannelMasks(m, torch.randn(1, 3, 32, 32))
    table = LatencyTable({n: [(1.0, 1.0), (0.25, 0.4)] for n in masks._layers}, 0.0)
    assert float(masks.cost(table)) == pytest.approx(1.0)
    pen = masks.penalty(0.5, 5.0, table)
    pen.backward()
    assert all(float(p.grad.sum()) > 0 for p in masks.logits.values())


@pytest.mark.host
def test_pas_command_steers_measured_latency_through_the_table(runner_binary, tmp_path, capsys):
    import json

    from host.cli import main

    out = tmp_path / "run"
    # the main job's model: digits_tiny's layers take microseconds, and timing noise flattened
    # its table in CI (no slope, no push)
    rc = main(["pas", "--model", "host.models.zoo:digits_cnn", "--latency-ms", "0.05",
               "--epochs", "1.5", "--mask-lr", "5", "--pretrain-epochs", "0.1",
               "--finetune-epochs", "0",
               "--vector-width", "4", "--runs", "3", "--out", str(out), "--json",
               "--store", str(tmp_path / "s")])
    assert rc == 0
    rep = json.loads(capsys.readouterr().out)
    table = rep["latency_table"]
    assert rep["steered"] == "latency" and 0 < rep["target"] < 1
    assert rep["target"] == pytest.approx(0.05 / table["dense_ms"])
    for name in ("stem.0", "b1.0", "b3.0", "fc"):
        us = [u for u, _ in table["points"][name]]
        assert 1.0 in us and len(us) >= 2, name  # dense and narrower widths were timed
        ms = [m for _, m in table["points"][name]]
        assert ms == sorted(ms), name  # monotone in the work
    assert rep["predicted_ms"] > 0 and rep["table_error"] == pytest.approx(
        rep["predicted_ms"] / rep["latency_ms"]["pas"] - 1)
    steps = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert min(s["cost"] for s in steps) < steps[0]["cost"]  # the predicted latency came down


def test_bench_brackets_pas_latency_between_two_uniform_rates():
    from host.bench.pas import bracket

    ms = {0.4: 0.20, 0.5: 0.16, 0.6: 0.12}
    parts = dict(bracket(ms, 0.15))
    assert set(parts) == {0.5, 0.6} and parts[0.5] == pytest.approx(0.75)
    assert sum(w * ms[r] for r, w in parts.items()) == pytest.approx(0.15)
    assert bracket(ms, 0.16) == [(0.5, 1.0)]
    assert bracket(ms, 0.05) == [(0.6, 1.0)] and bracket(ms, 0.3) == [(0.4, 1.0)]
    # a ladder that is not monotone still brackets by latency, not by rate
    assert dict(bracket({0.4: 0.2, 0.5: 0.1, 0.6: 0.15}, 0.12)) == pytest.approx(
        {0.5: 0.6, 0.6: 0.4})


def test_timer_cost_comes_off_every_step_evenly():
    from host.pruning.latency_table import remove_timer_cost

    # 4 steps summing to 1.0 ms; the whole run took 0.6: 0.1 ms a step was the timer's
    times = {"a": 0.4, "a.convert": 0.2, "b": 0.3, "pool": 0.1}
    mine, other, c = remove_timer_cost(times, 0.6, ["a", "b"])
    assert c == pytest.approx(0.1)
    assert mine == pytest.approx({"a": 0.4, "b": 0.2})  # a has two steps
    assert other == pytest.approx(0.01)  # a step never goes below a tenth of its time
    # a whole run slower than the sum (noise) takes nothing off
    assert remove_timer_cost(times, 1.2, ["a"]) == (pytest.approx({"a": 0.6}), pytest.approx(0.4),
                                                    0.0)
