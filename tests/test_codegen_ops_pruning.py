"""Pruning across the issue-20 ops (pure Python): filter pruning through a BatchNorm after a
concat, SiLU/Mish and a mean over H and W keeps the right channel groups, and the pruned model
compiles to the same output as torch's; channel shuffle and chunk freeze the groups they touch,
so pruning there is refused naming the op."""

from __future__ import annotations

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


def test_upsampling_keeps_the_groups_and_pixel_shuffle_freezes_them():
    g = DependencyGraph(UpNet())
    assert {repr(m) for m in g.out_group("a").members} == {"a.out", "b.in"}
    with pytest.raises(PruningError, match=r"filter pruning would change channels that ps "):
        g.out_group("b")
    torch.manual_seed(5)
    pruned = PruningPlan({"a": LayerRule("filter", 0.5)}, PruningConfig(vector_width=8)
                         ).apply(UpNet().eval()).model
    assert pruned.a.out_channels == 8 and pruned.b.in_channels == 8
    x = torch.randn(1, 3, 5, 7)
    with torch.no_grad():
        want = pruned(x)
    (got,) = run_reference(run_passes(capture(pruned, x)), [x])
    assert rel_err(got, want) <= 1e-5
