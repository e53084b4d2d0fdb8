"""Models for the codegen tests: a CNN that exercises every op and op form capture accepts."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from zoo import randomize_bn


class EveryOpCNN(nn.Module):
    """Every supported op, and the awkward variants: 'same' padding with an even kernel,
    asymmetric/tuple padding, dilation, groups, depthwise, stride 2, 1x1 spatial convs, SE in
    both operand orders, ceil-mode pools with padding, adaptive pooling that does not divide,
    concat of three, residual adds with and without a fused ReLU, standalone activations,
    functional and module forms, reshape aliases, saturating sigmoids."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, stride=2, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(16)
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.dw_bn = nn.BatchNorm2d(16)
        self.grouped = nn.Conv2d(16, 24, 3, padding=2, dilation=2, groups=4)
        self.same = nn.Conv2d(24, 16, 4, padding="same")
        self.rect = nn.Conv2d(16, 8, (1, 3), padding=(0, 1))
        self.valid = nn.Conv2d(12, 12, (3, 1), stride=(2, 1), padding="valid")
        self.se1 = nn.Conv2d(16, 4, 1)
        self.se2 = nn.Conv2d(4, 16, 1)
        self.pool_max = nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True)
        self.pool_avg = nn.AvgPool2d(3, stride=2, padding=1, ceil_mode=True,
                                     count_include_pad=False)
        self.k5 = nn.Conv2d(32, 12, 5, stride=2, padding=2)
        self.adapt = nn.AdaptiveAvgPool2d((3, 2))
        self.fc = nn.Linear(12 * 3 * 2, 40)
        self.fc2 = nn.Linear(40, 21, bias=False)
        self.out = nn.Linear(21, 10)
        self.relu = nn.ReLU(inplace=True)
        self.act6 = nn.ReLU6()
        self.hsw = nn.Hardswish()
        self.hsig = nn.Hardsigmoid()
        self.sig = nn.Sigmoid()
        self.drop = nn.Dropout(0.3)
        self.ident = nn.Identity()
        with torch.no_grad():  # some channels far out, so sigmoid saturates both ways
            self.se2.bias[:4] = torch.tensor([40.0, -40.0, 95.0, -120.0])

    def forward(self, x):
        x = self.relu(self.bn(self.stem(x)))
        y = F.relu6(self.dw_bn(self.dw(x)))
        x = F.relu(x + y)  # residual add, ReLU fused into it
        x = self.hsw(self.grouped(x))
        x = F.hardtanh(self.same(x), 0.0, 6.0)
        s = self.sig(self.se2(F.relu(self.se1(F.adaptive_avg_pool2d(x, 1)))))
        a = x * s
        b = s * x
        x = torch.add(a, self.ident(b))  # not fused: nothing after it
        x = torch.cat([x, self.rect(x), self.act6(self.rect(x))], dim=1)
        x = self.pool_avg(self.pool_max(x))
        x = self.hsig(self.valid(self.k5(x)))  # [N,12,1,W]: adaptive pool upsamples
        x = self.adapt(x).view(x.size(0), -1)
        x = torch.sigmoid(self.fc(self.drop(x)))
        x = self.fc2(x).reshape(x.shape[0], 21)
        x = F.hardsigmoid(x) + F.relu(x)  # standalone activations (x has two consumers)
        return self.out(x.flatten(1))


def every_op_cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return randomize_bn(EveryOpCNN(), seed)
