"""Pruning (host/pruning): exact rates, structural invariants of every scheme, filter/channel
shrinking through residual adds, depthwise convs, concat and flatten (checked against the
masked-but-unshrunk model), plan replay, named errors. Pure Python, except the last test (host
tier: a pruned model compiled and run on the local runner)."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn
from zoo import rel_err, run_on_runner, small_cnn, torchvision_model

from host.pruning import (
    SCHEMES,
    DependencyGraph,
    LayerRule,
    PruningConfig,
    PruningError,
    PruningPlan,
    keep_count,
    parse_rate,
)


@pytest.fixture(scope="module")
def resnet18():
    return torchvision_model("resnet18")


@pytest.fixture(scope="module")
def mobilenet_v2():
    return torchvision_model("mobilenet_v2")


def _x(shape, seed=3):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def test_rate_convention():
    assert parse_rate("0.8") == parse_rate(0.8) == pytest.approx(parse_rate("5x"))
    assert parse_rate("2x") == 0.5 and parse_rate("1x") == 0.0
    for bad in ("1", "1.5", "-0.1", "0.5x", "abc"):
        with pytest.raises(PruningError):
            parse_rate(bad)


MASK_CASES = [("unstructured", "5x"), ("block", "0.75"),
              ("block", "0.3"), ("block_punched", "0.7"), ("block_punched", "5x"),
              ("connectivity", "0.6"), ("pattern", "0.8"), ("pattern", "0.5556")]


@pytest.mark.parametrize("scheme,rate", MASK_CASES)
@pytest.mark.parametrize("model", ["resnet18", "mobilenet_v2"])
def test_mask_schemes_hit_the_rate_in_every_layer(scheme, rate, model, request):
    m = request.getfixturevalue(model)
    plan = PruningPlan.uniform(m, scheme, rate)
    assert plan.layers, f"{scheme} applies to no layer of {model}"
    pruned = plan.apply(m)
    r = parse_rate(rate)
    s = SCHEMES[scheme]
    mods = dict(pruned.model.named_modules())
    for name, rule in plan.layers.items():
        mask = pruned.masks[f"{name}.weight"]
        w = mods[name].weight
        removed = mask.numel() - int(mask.sum())
        unit = s.unit_weights(w, s.params(name, mods[name], rule.params, plan.config))
        # exact up to the scheme's granularity: within half of one unit (1 weight when
        # unstructured: exactly round(rate × weights))
        assert abs(removed - r * mask.numel()) <= unit / 2 + 1e-6, (name, removed, unit)
        assert 0 < int(mask.sum())  # never empty
        assert torch.all(w[~mask] == 0)
        row = pruned.report.row(name)
        assert row.requested == r and row.achieved == pytest.approx(removed / mask.numel())
        assert row.weights_before == mask.numel() and row.weights_after == mask.numel() - removed


def _mask(model, scheme, rate, **params):
    plan = PruningPlan.uniform(model, scheme, rate, params=params or None)
    return plan, plan.apply(model)


def test_pattern_kernels_keep_4_positions_from_at_most_8_patterns(mobilenet_v2, resnet18):
    for model in (resnet18, mobilenet_v2):  # mobilenet_v2: its depthwise 3x3 convs
        plan, pruned = _mask(model, "pattern", 0.75)
        for name in plan.layers:
            k = pruned.masks[f"{name}.weight"].reshape(-1, 9)
            kept = k[k.any(1)]
            assert kept.shape[0] >= 1
            assert torch.all(kept.sum(1) == 4) and torch.all(kept[:, 4])
            assert len(torch.unique(kept, dim=0)) <= 8
    plan = PruningPlan.uniform(resnet18, "pattern", 0.6, params={"patterns": 3},
                               only=["layer1.0.conv1"])
    pruned = plan.apply(resnet18)
    k = pruned.masks["layer1.0.conv1.weight"].reshape(-1, 9)
    assert len(torch.unique(k[k.any(1)], dim=0)) <= 3


def test_block_punched_removes_the_same_positions_across_each_block(resnet18):
    plan, pruned = _mask(resnet18, "block_punched", 0.6, filters=8, channels=4)
    for name in plan.layers:
        m = pruned.masks[f"{name}.weight"]
        o, i = m.shape[:2]
        for bo in range(0, o, 8):
            for bi in range(0, i, 4):
                blk = m[bo:bo + 8, bi:bi + 4].reshape(-1, m.shape[2] * m.shape[3])
                assert torch.all(blk == blk[0]), (name, bo, bi)


def test_block_removes_whole_columns_per_row_block(resnet18, mobilenet_v2):
    for model in (resnet18, mobilenet_v2):
        plan, pruned = _mask(model, "block", 0.5, rows=8)
        for name in plan.layers:
            m = pruned.masks[f"{name}.weight"]
            m = m.reshape(m.shape[0], -1)
            for b in range(0, m.shape[0], 8):
                blk = m[b:b + 8]
                assert torch.all(blk == blk[0]), (name, b)
            assert len({tuple(m[b].tolist()) for b in range(0, m.shape[0], 8)}) > 1


def test_connectivity_removes_whole_kernels(resnet18):
    plan, pruned = _mask(resnet18, "connectivity", 0.5)
    for name in plan.layers:
        k = pruned.masks[f"{name}.weight"].flatten(2)
        assert torch.all(k.all(2) | ~k.any(2))


def test_keep_count_rounds_to_the_vector_width():
    assert keep_count(64, 0.5, 16) == 32
    assert keep_count(64, 0.6, 16) == 32  # 25.6 → nearest multiple of 16
    assert keep_count(64, 0.99, 16) == 16  # never below the vector width
    assert keep_count(12, 0.9, 16) == 12  # narrower than a vector: left alone
    assert keep_count(40, 0.5, 16) == 16 and keep_count(40, 0.1, 16) == 40
    for c in range(17, 200, 7):
        for r in (0.1, 0.3, 0.5, 0.7, 0.9):
            k = keep_count(c, r, 16)
            assert 16 <= k <= c and (k % 16 == 0 or k == c)


def _shrink_checks(model, pruned, cfg, shape, want_changed=True):
    before = {n: m for n, m in model.named_modules()}
    changed = 0
    for name, m in pruned.model.named_modules():
        if isinstance(m, nn.Conv2d):
            for new, old in ((m.out_channels, before[name].out_channels),
                             (m.in_channels, before[name].in_channels)):
                assert new <= old
                assert new == old or new % cfg.vector_width == 0, (name, new, old)
                assert new >= min(old, cfg.vector_width)
                changed += new != old
            assert m.weight.shape[0] == m.out_channels
            assert m.weight.shape[1] * m.groups == m.in_channels
    assert changed > 0 or not want_changed


@pytest.mark.parametrize("scheme", ["filter", "channel"])
@pytest.mark.parametrize("key", ["small_cnn", "resnet18", "mobilenet_v2"])
def test_filter_channel_shrinking_equals_the_masked_model(scheme, key, request):
    if key == "small_cnn":
        model, shape, cfg = small_cnn(), (2, 3, 32, 32), PruningConfig(vector_width=4)
    else:
        model, shape, cfg = request.getfixturevalue(key), (1, 3, 64, 64), PruningConfig()
    plan = PruningPlan.uniform(model, scheme, 0.5, cfg)
    pruned = plan.apply(model)
    _shrink_checks(model, pruned, cfg, shape)
    assert pruned.report.weights_after < 0.6 * pruned.report.weights_before
    ref = plan.masked_reference(model)
    x = _x(shape)
    with torch.no_grad():
        got, want = pruned(x), ref(x)
    assert got.shape == model(x).shape
    assert rel_err(got, want) <= 1e-5


def test_residual_group_is_pruned_jointly_by_summed_norm(resnet18):
    g = DependencyGraph(resnet18).out_group("layer1.0.conv2")
    producers = {m.layer for m in g.producers}
    assert producers == {"conv1", "layer1.0.conv2", "layer1.1.conv2"}
    pruned = PruningPlan({"layer1.1.conv2": LayerRule("filter", 0.5)}).apply(resnet18)
    mods = dict(pruned.model.named_modules())
    for name in ("conv1", "bn1", "layer1.0.conv2", "layer1.1.conv2", "layer1.0.bn2"):
        assert mods[name].weight.shape[0] == 32, name
    for name in ("layer1.0.conv1", "layer2.0.conv1", "layer2.0.downsample.0"):
        assert mods[name].in_channels == 32, name
    orig = dict(resnet18.named_modules())
    score = sum(orig[p].weight.detach().double().flatten(1).norm(dim=1) for p in producers)
    kept = sorted(torch.argsort(score, stable=True)[32:].tolist())
    assert torch.equal(mods["conv1"].weight, orig["conv1"].weight[kept])


def test_concat_and_flatten_offsets():
    model = small_cnn()
    cfg = PruningConfig(vector_width=4)
    graph = DependencyGraph(model)
    branch = graph.out_group("branch")
    assert any(m.layer == "k5" and m.role == "in" and m.offset == 12 for m in branch.members)
    k5 = graph.out_group("k5")
    assert any(m.layer == "fc" and m.inner == 6 for m in k5.members)  # 9 ch × (3×2) features
    plan = PruningPlan({"branch": LayerRule("filter", 0.5), "k5": LayerRule("filter", 0.5)},
                       cfg)
    pruned = plan.apply(model)
    mods = dict(pruned.model.named_modules())
    assert mods["branch"].out_channels == 4 and mods["k5"].in_channels == 16
    assert mods["k5"].out_channels == 4 and mods["fc"].in_features == 4 * 6
    x = _x((2, 3, 32, 32))
    with torch.no_grad():
        assert rel_err(pruned(x), plan.masked_reference(model)(x)) <= 1e-5


def test_filter_pruning_removes_zero_filters_without_changing_the_output():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 48, 3, padding=1, bias=False), nn.ReLU(),
                          nn.Conv2d(48, 32, 3, padding=1), nn.ReLU(), nn.Flatten(),
                          nn.Linear(32 * 8 * 8, 10)).eval()
    dead = list(range(0, 48, 3))  # 16 zero-norm filters: the lowest scores
    with torch.no_grad():
        model[0].weight[dead] = 0
    pruned = PruningPlan({"0": LayerRule("filter", 1 / 3)}).apply(model)
    assert pruned.model[0].out_channels == 32 and pruned.model[2].in_channels == 32
    assert pruned.removed[("0", "out")] == dead
    x = _x((2, 3, 8, 8))
    with torch.no_grad():
        assert rel_err(pruned(x), model(x)) <= 1e-6


def test_never_empty_a_layer():
    tiny = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1))
    pruned = PruningPlan({"0": LayerRule("unstructured", 0.99)}).apply(tiny)
    assert int(pruned.masks["0.weight"].sum()) == 1
    model = small_cnn()
    pruned = PruningPlan({"branch": LayerRule("filter", 0.99)},
                         PruningConfig(vector_width=4)).apply(model)
    assert pruned.model.branch.out_channels == 4  # the vector width, not 0
    pruned = PruningPlan({"branch": LayerRule("filter", 0.99)}).apply(model)
    assert pruned.model.branch.out_channels == 7  # narrower than 16: left alone
    with pytest.raises(PruningError, match="empty"):
        PruningPlan.from_dict({"version": 1, "layers": {"fc": {"scheme": "unstructured",
                                                               "rate": 1.0}}})


def _mixed_plan() -> PruningPlan:
    return PruningPlan({
        "layer1.0.conv1": LayerRule("filter", 0.5),
        "layer1.1.conv1": LayerRule("pattern", 0.8),
        "layer2.0.downsample.0": LayerRule("block", 0.75, {"rows": 8}),
        "layer2.1.conv2": LayerRule("connectivity", 0.5),
        "layer3.0.conv2": LayerRule("block_punched", 0.7, {"filters": 8, "channels": 4}),
        "layer4.0.conv2": LayerRule("channel", 0.5),
        "layer4.1.conv1": LayerRule("unstructured", 0.9),
        "fc": LayerRule("unstructured", 0.5),
    }, PruningConfig(vector_width=16, pattern_count=6))


def test_mixed_plan_json_round_trip_and_replay(resnet18):
    plan = _mixed_plan()
    text = plan.to_json()
    again = PruningPlan.from_json(text)
    assert again == plan and json.loads(text)["config"]["pattern_count"] == 6
    a = plan.apply(torchvision_model("resnet18"))
    b = again.apply(torchvision_model("resnet18"))  # a fresh copy of the same model
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    mods = dict(a.model.named_modules())
    assert mods["layer1.0.conv1"].out_channels == 32 and mods["layer1.0.conv2"].in_channels == 32
    assert mods["layer4.0.conv1"].out_channels == 256  # channel pruning of layer4.0.conv2
    assert set(a.masks) == {f"{n}.weight" for n, r in plan.layers.items()
                            if not SCHEMES[r.scheme].structural}
    with torch.no_grad():
        assert a(_x((1, 3, 64, 64))).shape == (1, 1000)
    rows = {r.layer: r for r in a.report.rows}
    assert rows["layer1.0.conv1"].achieved == 0.5 and rows["layer4.0.conv2"].achieved == 0.5
    assert rows["layer1.0.conv2"].scheme == "(follows)"
    assert "total:" in str(a.report) and "PrunedModel(ResNet" in repr(a)


def test_reapply_keeps_pruned_weights_at_zero(resnet18):
    pruned = _mixed_plan().apply(resnet18)
    with torch.no_grad():
        for p in pruned.model.parameters():
            p.add_(1.0)  # an optimizer step that revived everything
    pruned.reapply()
    for name, mask in pruned.masks.items():
        w = pruned.model.get_parameter(name)
        assert torch.all(w[~mask] == 0) and torch.all(w[mask] != 0)


ERRORS = [
    ("features.1.conv.1", "pattern", 0.8, {},
     r"layer features.1.conv.1 \(Conv2d 1x1, 32→16\): pattern pruning needs a 3x3 kernel, "
     r"got 1x1"),
    ("features.0.0", "pattern", 0.5, {}, r"features.0.0 .*at least 5/9"),
    ("features.0.0", "block", 0.5, {}, r"features.0.0 \(Conv2d 3x3, 3→32\): block pruning "
     r"needs a GEMM-like layer"),
    ("features.1.conv.0.0", "block_punched", 0.5, {},
     r"features.1.conv.0.0 \(Conv2d 3x3, 32→32, groups=32\): block_punched .*groups=32"),
    ("features.1.conv.0.1", "unstructured", 0.5, {}, r"features.1.conv.0.1 \(BatchNorm2d\)"),
    ("features.0.0", "pruning", 0.5, {}, r"layer features.0.0: unknown pruning scheme"),
    ("features.99", "unstructured", 0.5, {}, r"layer features.99: no such module"),
    ("classifier.1", "block", 0.5, {"cols": 4}, r"classifier.1 \(Linear, 1280→1000\): block "
     r"pruning has no parameter 'cols'"),
    ("classifier.1", "filter", 0.5, {}, r"classifier.1 .*the model output"),
    ("features.0.0", "channel", 0.5, {}, r"features.0.0 .*the model input"),
    ("features.1.conv.0.0", "filter", 0.5, {}, r"depthwise conv's filters follow its input"),
]


@pytest.mark.parametrize("layer,scheme,rate,params,match", ERRORS)
def test_invalid_combinations_name_the_layer(layer, scheme, rate, params, match, mobilenet_v2):
    plan = PruningPlan({layer: LayerRule(scheme, rate, params)})
    with pytest.raises(PruningError, match=match):
        plan.apply(mobilenet_v2)


def test_conflicting_rules_on_one_residual_group(resnet18):
    plan = PruningPlan({"layer1.0.conv2": LayerRule("filter", 0.5),
                        "layer1.1.conv2": LayerRule("filter", 0.25)})
    with pytest.raises(PruningError, match="layer1.1.conv2 .*same channels.*layer1.0.conv2"):
        plan.apply(resnet18)
    same = PruningPlan({"layer1.0.conv2": LayerRule("filter", 0.5),
                        "layer1.1.conv2": LayerRule("filter", 0.5)})
    assert same.apply(resnet18).model.conv1.out_channels == 32


def test_grouped_conv_freezes_its_channels():
    with pytest.raises(PruningError, match=r"stem .*layer grouped \(Conv2d 3x3, 12→18, "
                                           r"groups=3\): grouped conv"):
        PruningPlan({"stem": LayerRule("filter", 0.5)},
                    PruningConfig(vector_width=4)).apply(small_cnn())


@pytest.mark.host
def test_pruned_model_compiles_and_runs_on_the_runner(local_runner, cc, tmp_path):
    from codegen import compile_model

    plan = PruningPlan({
        "pw": LayerRule("filter", 0.5),  # shrinks pw, se.fc2, branch/k5 inputs
        "dw": LayerRule("pattern", 0.7),
        "k5": LayerRule("connectivity", 0.5),
        "fc": LayerRule("block", 0.6, {"rows": 4}),
        "out": LayerRule("unstructured", 0.5),
    }, PruningConfig(vector_width=4))
    pruned = plan.apply(small_cnn())
    assert pruned.model.pw.out_channels == 8
    x = _x((1, 3, 32, 32))
    with torch.no_grad():
        want = pruned(x).numpy()
    bundle = compile_model(pruned.model, (x,), tmp_path / "bundle", name="small_cnn_pruned")
    got = run_on_runner(local_runner, bundle, x)
    assert got.shape == want.shape
    assert rel_err(got, want) <= 1e-4


def test_plan_command_writes_a_replayable_plan(tmp_path, capsys):
    import argparse

    from host.pruning.command import add_plan_parser, apply_plan_file, run

    ap = argparse.ArgumentParser()
    add_plan_parser(ap.add_subparsers(dest="command"))
    out = tmp_path / "plan.json"
    args = ap.parse_args(["plan", "zoo:small_cnn", "-o", str(out), "--vector-width", "4",
                          "--rule", "*=unstructured:2x", "--rule", "dw=pattern:0.75",
                          "--rule", "fc=block:4x:rows=8", "--rule", "k5=filter:0.5"])
    assert run(args) == 0
    plan = PruningPlan.load(out)
    assert plan.layers["dw"] == LayerRule("pattern", 0.75)
    assert plan.layers["fc"] == LayerRule("block", 0.75, {"rows": 8})
    assert plan.layers["out"].scheme == "unstructured" and plan.layers["out"].rate == 0.5
    assert plan.config.vector_width == 4 and "total:" in capsys.readouterr().out
    pruned, _ = apply_plan_file(small_cnn(), out)
    assert pruned.k5.out_channels == 4
    bad = ap.parse_args(["plan", "zoo:small_cnn", "--rule", "pw=pattern:0.8"])
    with pytest.raises(PruningError, match=r"layer pw \(Conv2d 1x1, 18→12\): pattern pruning "
                                       r"needs a 3x3 kernel, got 1x1"):
        run(bad)


def test_a_glob_rule_says_which_layers_it_skipped_and_why(tmp_path, capsys):
    import argparse

    from host.pruning.command import add_plan_parser, build_plan, run

    model = torchvision_model("mobilenet_v3_small")
    skipped: dict = {}
    plan = build_plan(model, ["*=block_punched:0.8"], PruningConfig(), skipped)
    left = skipped["*=block_punched:0.8"]
    convs = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert set(plan.layers) | set(left) == set(convs) and not set(plan.layers) & set(left)
    assert "features.1.block.0.0" in left and "groups" in left["features.1.block.0.0"]
    ap = argparse.ArgumentParser()
    add_plan_parser(ap.add_subparsers(dest="command"))
    assert run(ap.parse_args(["plan", "mobilenet_v3_small", "--rule", "*=block_punched:0.8"])) == 0
    out = capsys.readouterr().out
    assert f"skipped {len(left)} of the layers it matched" in out
    assert "layers: block_punched pruning needs a k×k conv" in out
    assert run(ap.parse_args(["plan", "mobilenet_v3_small", "--json",
                              "--rule", "*=block_punched:0.8"])) == 0
    assert json.loads(capsys.readouterr().out)["skipped"]["*=block_punched:0.8"] == left
    # every layer fits: nothing is said
    assert run(ap.parse_args(["plan", "zoo:small_cnn", "--rule", "*=unstructured:0.5"])) == 0
    assert "skipped" not in capsys.readouterr().out
    with pytest.raises(PruningError, match=r"applies to none of the 1 layers matching 'fc\*'; "
                                           r"1 layer: pattern pruning needs"):
        build_plan(torchvision_model("resnet18"), ["fc*=pattern:0.8"], PruningConfig())


@pytest.mark.parametrize("rules", [
    {"layer1.0.conv1": LayerRule("filter", 0.5), "layer2.0.conv1": LayerRule("channel", 0.25)},
    {"layer1.0.conv1": LayerRule("pattern", 0.7), "fc": LayerRule("unstructured", 0.9),
     "layer2.0.conv2": LayerRule("block_punched", 0.8)},
])
def test_zero_masks_zero_what_apply_removes(rules):
    """zero_masks (what gradual/ADMM pruning steer towards) in the model's own shapes gives the
    outputs of the model apply() prunes: structural rules and mask rules alike."""
    torch.manual_seed(0)
    model = torchvision_model("resnet18").eval()
    plan = PruningPlan(rules, PruningConfig(vector_width=16))
    masks = plan.zero_masks(model)
    zeroed = copy.deepcopy(model)
    with torch.no_grad():
        for path, mask in masks.items():
            zeroed.get_parameter(path).mul_(mask)
    x = _x((1, 3, 32, 32))
    with torch.no_grad():
        assert rel_err(zeroed(x), plan.apply(model)(x)) <= 1e-5
    assert all(not torch.equal(m, torch.ones_like(m)) for m in masks.values())
