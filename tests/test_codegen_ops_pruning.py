"""Pruning across the issue-20 ops (pure Python): filter pruning through a BatchNorm after a
concat, SiLU/Mish and a mean over H and W keeps the right channel groups, and the pruned model
compiles to the same output as torch's; channel shuffle and chunk freeze the groups they touch,
so pruning there is refused naming the op; PixelShuffle regroups them (the producing conv is
pruned in aligned blocks of r² filters)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from test_codegen_ops import Shuffle
from torch import nn
from zoo import randomize_bn, rel_err

from codegen import capture
from codegen.passes import run_passes
from codegen.reference import run_reference
from host.pruning import LayerRule, PruningConfig
from host.pruning.config import PruningError
from host.pruning.graph import DependencyGraph
from host.pruning.plan import PruningPlan


class MeanNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 32, 3, padding=1)
        self.b = nn.Conv2d(3, 16, 1)
        self.bn = nn.BatchNorm2d(48)
        self.c = nn.Conv2d(48, 32, 3, padding=1)
        self.fc = nn.Linear(32, 5)

    def forward(self, x):
        y = F.silu(self.bn(torch.cat([self.a(x), self.b(x)], 1)))
        return self.fc(F.mish(self.c(y)).mean([2, 3]))


def test_groups_follow_the_mean_and_the_batchnorm_after_a_concat():
    g = DependencyGraph(MeanNet())
    c = g.out_group("c")
    assert not c.frozen and {repr(m) for m in c.members} == {"c.out", "fc.in"}
    a = g.out_group("a")
    assert {repr(m) for m in a.members} == {"a.out", "bn.through", "c.in"}
    assert {repr(m) for m in g.out_group("b").members} == {"b.out", "bn.through@32", "c.in@32"}


class SumNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c = nn.Conv2d(3, 32, 3, padding=1)
        self.fc = nn.Linear(32, 5)

    def forward(self, x):
        return self.fc(torch.sum(F.relu(self.c(x)), dim=(2, 3)))


def test_groups_follow_a_sum_over_h_and_w_and_the_pruned_model_compiles_equal():
    g = DependencyGraph(SumNet())
    assert {repr(m) for m in g.out_group("c").members} == {"c.out", "fc.in"}
    torch.manual_seed(4)
    pruned = PruningPlan({"c": LayerRule("filter", 0.5)},
                         PruningConfig(vector_width=8)).apply(SumNet()).model
    assert pruned.c.out_channels == 16 and pruned.fc.in_features == 16
    x = torch.randn(2, 3, 7, 9)
    with torch.no_grad():
        want = pruned(x)
    (got,) = run_reference(run_passes(capture(pruned, x)), [x])
    assert rel_err(got, want) <= 1e-5


def test_filter_pruned_model_compiles_equal_to_torch():
    torch.manual_seed(2)
    model = randomize_bn(MeanNet(), seed=2)
    plan = PruningPlan({"a": LayerRule("filter", 0.5), "c": LayerRule("filter", 0.5)},
                       PruningConfig(vector_width=8))
    pruned = plan.apply(model).model
    assert pruned.a.out_channels == 16 and pruned.bn.num_features == 32
    assert pruned.c.out_channels == 16 and pruned.fc.in_features == 16
    x = torch.randn(2, 3, 11, 9)
    with torch.no_grad():
        want = pruned(x)
    (got,) = run_reference(run_passes(capture(pruned, x)), [x])
    assert rel_err(got, want) <= 1e-5


def test_channel_shuffle_freezes_its_groups_with_the_reason():
    g = DependencyGraph(Shuffle())
    with pytest.raises(PruningError, match="stem.*(chunk|view|transpose)"):
        g.out_group("stem")


class UpNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 16, 3, padding=1)
        self.up = nn.Upsample(scale_factor=2, mode="bilinear")
        self.b = nn.Conv2d(16, 16, 3, padding=1)
        self.ps = nn.PixelShuffle(2)
        self.c = nn.Conv2d(4, 3, 3, padding=1)

    def forward(self, x):
        y = self.b(F.interpolate(F.relu(self.up(self.a(x))), scale_factor=1.5))
        return self.c(self.ps(y))


def test_upsampling_keeps_the_groups_and_pixel_shuffle_regroups_them():
    g = DependencyGraph(UpNet())
    assert {repr(m) for m in g.out_group("a").members} == {"a.out", "b.in"}
    # b's 16 filters are 4 channels after PixelShuffle(2): pruned in blocks of 4
    gb = g.out_group("b")
    assert gb.size == 4 and {repr(m) for m in gb.members} == {"b.out×4", "c.in"}
    torch.manual_seed(5)
    pruned = PruningPlan({"a": LayerRule("filter", 0.5)}, PruningConfig(vector_width=8)
                         ).apply(UpNet().eval()).model
    assert pruned.a.out_channels == 8 and pruned.b.in_channels == 8
    x = torch.randn(1, 3, 5, 7)
    with torch.no_grad():
        want = pruned(x)
    (got,) = run_reference(run_passes(capture(pruned, x)), [x])
    assert rel_err(got, want) <= 1e-5


class ShuffleSR(nn.Module):
    """conv → BN → ReLU → PixelShuffle(2) → conv, with a second consumer of the shuffled
    channels (a residual add with an upsampled branch) and of the unshuffled ones."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 32, 3, padding=1)
        self.bn = nn.BatchNorm2d(32)
        self.side = nn.Conv2d(32, 4, 1)  # reads b's channels before the shuffle
        self.up = nn.Conv2d(3, 8, 1)
        self.c = nn.Conv2d(8, 3, 3, padding=1)

    def forward(self, x):
        y = F.relu(self.bn(self.b(self.a(x))))
        z = F.pixel_shuffle(y, 2) + F.interpolate(self.up(x), scale_factor=2.0)
        return self.c(z), self.side(y)


def test_pruning_across_pixel_shuffle_removes_aligned_filter_blocks():
    torch.manual_seed(7)
    model = randomize_bn(ShuffleSR(), seed=7).eval()
    g = DependencyGraph(model)
    gb = g.out_group("b")
    assert gb.size == 8 and not gb.frozen
    assert {repr(m) for m in gb.members} == {"b.out×4", "bn.through×4", "side.in×4", "up.out",
                                             "c.in"}
    assert g.out_group("up") is gb  # the add after the shuffle ties the 8 channels
    pruned = PruningPlan({"b": LayerRule("filter", 0.5)}, PruningConfig(vector_width=4)
                         ).apply(model).model
    assert (pruned.b.out_channels, pruned.bn.num_features, pruned.side.in_channels) == (16, 16,
                                                                                        16)
    assert (pruned.up.out_channels, pruned.c.in_channels) == (4, 4)
    # the kept filters are whole blocks of 4, channel for channel of the shuffled output
    kept_c = [i for i in range(8) if any(torch.equal(model.c.weight[:, i], pruned.c.weight[:, j])
                                         for j in range(4))]
    assert len(kept_c) == 4
    want_b = torch.cat([model.b.weight[4 * i:4 * i + 4] for i in kept_c])
    assert torch.equal(pruned.b.weight, want_b)
    assert torch.equal(pruned.side.weight, torch.cat([model.side.weight[:, 4 * i:4 * i + 4]
                                                      for i in kept_c], 1))
    # the same as the dense model with those channels' weights zeroed
    zeroed = copy.deepcopy(model)
    with torch.no_grad():
        for i in set(range(8)) - set(kept_c):
            zeroed.c.weight[:, i] = 0
            zeroed.side.weight[:, 4 * i:4 * i + 4] = 0
    x = torch.randn(1, 3, 6, 5)
    with torch.no_grad():
        want, got = zeroed(x), pruned(x)
    assert all(rel_err(a, b) <= 1e-5 for a, b in zip(got, want, strict=True))
    out = run_reference(run_passes(capture(pruned, x)), [x])
    assert all(rel_err(a, b) <= 1e-5 for a, b in zip(out, got, strict=True))


@pytest.mark.parametrize("second,reason", [
    ("shuffle", r"pixel_shuffle_1 \(pixel_shuffle\)"),  # the same channels shuffled twice
    ("cat", r"d, whose input holds them at offset 6 \(not a multiple of a PixelShuffle's 4\)"),
    ("tie", "channels tied to a PixelShuffle's input after the shuffle"),
    ("aligned", None),  # at offset 8: blocks of 4 align
])
def test_pixel_shuffle_freezes_what_it_cannot_regroup(second, reason):
    class Two(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Conv2d(3, 16, 1)
            self.b = nn.Conv2d(3, {"cat": 6, "tie": 16}.get(second, 8), 1)
            self.c = nn.Conv2d(4, 3, 1)
            self.d = nn.Conv2d({"shuffle": 4, "tie": 16}.get(second, 16 + self.b.out_channels),
                               3, 1)

        def forward(self, x):
            y = self.a(x)
            z = self.c(F.pixel_shuffle(y, 2))
            if second == "shuffle":
                return z + self.d(F.pixel_shuffle(y, 2))
            if second == "tie":
                return z, self.d(y + self.b(x))
            return z, self.d(torch.cat([self.b(x), y], 1))

    g = DependencyGraph(Two())
    if reason is None:
        assert {repr(m) for m in g.out_group("a").members} == {"a.out×4", "c.in", "d.in@2×4"}
        return
    with pytest.raises(PruningError, match=f"layer a .*filter pruning would change channels "
                                           f"that {reason}"):
        g.out_group("a")
