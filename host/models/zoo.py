"""Small models for the search's defaults and tests, written the way many mobile CNNs are
(SiLU activations, a squeeze-excite block with a sigmoid gate), so that phase 1 has operators
to replace.

``digits_cnn``: the default of ``npas-host search`` on the digits dataset (1×16×16 input,
about 13 M multiply-adds, a few hundred microseconds on one x86 core: enough work for pruning
to show in measured latency). ``digits_tiny``: the same shape at a quarter of the widths, for
tests.
"""

from __future__ import annotations

from torch import nn


class SqueezeExcite(nn.Module):
    def __init__(self, c: int, r: int = 4):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(c, max(1, c // r), 1)
        self.act = nn.ReLU()
        self.fc2 = nn.Conv2d(max(1, c // r), c, 1)
        self.gate = nn.Sigmoid()

    def forward(self, x):
        return x * self.gate(self.fc2(self.act(self.fc1(self.pool(x)))))


def _block(cin: int, cout: int, k: int = 3, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=False),
                         nn.BatchNorm2d(cout), nn.SiLU())


class DigitsNet(nn.Module):
    """stem 3×3 → 3×3 → 3×3 stride 2 → squeeze-excite → 3×3 → 1×1 → pool → classifier."""

    def __init__(self, widths: tuple[int, int, int, int] = (32, 64, 64, 128),
                 in_channels: int = 1, num_classes: int = 10):
        super().__init__()
        a, b, c, d = widths
        self.stem = _block(in_channels, a)
        self.b1 = _block(a, b)
        self.b2 = _block(b, c, stride=2)
        self.se = SqueezeExcite(c)
        self.b3 = _block(c, d)
        self.b4 = _block(d, d, k=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(d, num_classes)

    def forward(self, x):
        x = self.se(self.b2(self.b1(self.stem(x))))
        x = self.b4(self.b3(x))
        return self.fc(self.flatten(self.pool(x)))


def digits_cnn() -> nn.Module:
    return DigitsNet()


def digits_tiny() -> nn.Module:
    return DigitsNet((16, 32, 32, 32))
