"""Models shared by the test tiers: a small CNN that uses every op the generator supports,
and torchvision models at reduced input sizes (random weights, BN with non-trivial stats)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from host.models.compat import import_torchvision


class Seq(nn.Module):
    """Modules in a row, or ``fn(self, x)`` over them (a residual, a branch)."""
    def __init__(self, *mods: nn.Module, fn=None) -> None:
        super().__init__()
        self.mods = nn.ModuleList(mods)
        self.fn = fn

    def forward(self, x):
        if self.fn is not None:
            return self.fn(self, x)
        for m in self.mods:
            x = m(x)
        return x


class SqueezeExcite(nn.Module):
    def __init__(self, c: int, r: int = 4):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(c, c // r, 1)
        self.fc2 = nn.Conv2d(c // r, c, 1)

    def forward(self, x):
        s = torch.sigmoid(self.fc2(F.relu(self.fc1(self.pool(x)))))
        return x * s


class SmallCNN(nn.Module):
    """Every supported op at awkward shapes: odd channel counts, stride 2, padding, dilation,
    groups, depthwise, 1x1 spatial, ceil-mode pooling, SE, concat, residual add."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.stem = nn.Conv2d(3, 12, 3, stride=2, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(12)
        self.dw = nn.Conv2d(12, 12, 3, padding=1, groups=12)
        self.grouped = nn.Conv2d(12, 18, 3, padding=2, dilation=2, groups=3)
        self.pw = nn.Conv2d(18, 12, 1)
        self.se = SqueezeExcite(12)
        self.branch = nn.Conv2d(12, 7, (1, 3), padding=(0, 1))
        self.pool_max = nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True)
        self.pool_avg = nn.AvgPool2d(2, stride=2, ceil_mode=True, count_include_pad=False)
        self.k5 = nn.Conv2d(19, 9, 5, stride=2, padding=2)
        self.adapt = nn.AdaptiveAvgPool2d((3, 2))
        self.fc = nn.Linear(9 * 3 * 2, 33)
        self.out = nn.Linear(33, num_classes)
        self.act6 = nn.ReLU6()
        self.hsw = nn.Hardswish()
        self.hsig = nn.Hardsigmoid()

    def forward(self, x):
        x = F.relu(self.bn(self.stem(x)))
        y = self.act6(self.dw(x))
        x = x + y
        x = self.hsw(self.pw(self.grouped(x)))
        x = self.se(x)
        x = torch.cat([x, self.branch(x)], dim=1)
        x = self.pool_avg(self.pool_max(x))
        x = self.hsig(self.k5(x))
        x = torch.flatten(self.adapt(x), 1)
        x = torch.sigmoid(self.fc(x))
        return self.out(x)


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm non-trivial statistics and affine parameters."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.randn(c, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(c, generator=g) * 0.5 + 0.75)
            m.weight.data.copy_(torch.rand(c, generator=g) * 0.5 + 0.75)
            m.bias.data.copy_(torch.randn(c, generator=g) * 0.1)
    return model.eval()


def small_cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return randomize_bn(SmallCNN(), seed)


def torchvision_model(name: str, seed: int = 0) -> nn.Module:
    tv = import_torchvision()
    torch.manual_seed(seed)
    return randomize_bn(tv.models.get_model(name, weights=None), seed)


def rel_err(got, want) -> float:
    got, want = torch.as_tensor(got), torch.as_tensor(want)
    return float((got - want).abs().max() / want.abs().max().clamp_min(1e-12))


def run_on_runner(device, bundle, x, threads: int = 1, backend: str = "cpu",
                  call_timeout_s: float = 60.0):
    """Load ``bundle`` on ``device``'s runner, run it once on ``x``, return the output."""
    from host.devices.session import Session
    from host.measure import MeasureConfig

    with Session(device, call_timeout_s=call_timeout_s) as s:
        key = s.load(bundle, MeasureConfig(threads=threads, backend=backend))
        (got,) = s.run(key, [x.numpy()])
    return got
