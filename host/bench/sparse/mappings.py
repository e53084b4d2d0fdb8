"""The sparse benchmark's pruning mappings, as data: per model, which layers are pruned with
which scheme at which rate (a fixed one, or "R", solved for the target compression), and the
speed-up issue 4 asks of each model at the NPAS rate.

To benchmark another model, add its mappings here (``npas-host plan`` rule syntax).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn

# Issue 4's bar at the NPAS rates, 1 thread: our sparse bundle over the fastest dense engine.
NEEDED_SPEEDUP = {"vgg16": 2.0, "resnet18": 1.8, "mobilenet_v2": 1.3}


# ---------------------------------------------------------------- mappings (data)

@dataclass(frozen=True)
class Rule:
    """One line of a mapping: ``layers`` (a glob over module paths) pruned with ``scheme`` at
    ``rate``, a fixed rate ("2x") or "R", the rate solved for the target compression."""

    layers: str
    scheme: str
    rate: str
    params: str = ""  # "filters=16,channels=4"
    only_1x1: bool = False  # of the layers the glob hits, only 1x1 convs without groups

    def texts(self, rate: float, kinds: Mapping[str, str]) -> list[str]:
        """``npas-host plan`` rule strings at the solved ``rate``; ``kinds``: every Conv2d and
        Linear of the model → "1x1", "kxk", "grouped" or "linear" (see ``layer_kinds``)."""
        r = f"{rate:.6f}" if self.rate == "R" else self.rate
        tail = f":{self.params}" if self.params else ""
        if not self.only_1x1:
            return [f"{self.layers}={self.scheme}:{r}{tail}"]
        names = [n for n in fnmatch.filter(kinds, self.layers) if kinds[n] == "1x1"]
        return [f"{n}={self.scheme}:{r}{tail}" for n in names]

    def __str__(self) -> str:
        p = f":{self.params}" if self.params else ""
        return f"{self.layers}={self.scheme}:{self.rate}{p}" + (" (1x1 only)" if self.only_1x1
                                                                 else "")


@dataclass(frozen=True)
class PruneMapping:
    """Per-layer schemes for one model; ``npas`` is the weights compression NPAS reported
    for it. Later rules win (as in ``npas-host plan``)."""

    model: str
    name: str
    npas: float
    rules: tuple[Rule, ...]
    why: str

    def texts(self, rate: float, kinds: Mapping[str, str]) -> list[str]:
        return [t for r in self.rules for t in r.texts(rate, kinds)]


BP = "filters=16,channels=4"  # block-punched blocks: 16 filters × 4 channels share positions


MAPPINGS: dict[str, tuple[PruneMapping, ...]] = {
    "resnet18": (
        PruneMapping("resnet18", "block-punched", 5.3, (
            Rule("conv1", "block_punched", "2x"),
            Rule("layer*", "block_punched", "R", BP),
            Rule("layer*.downsample.0", "block", "2x", "rows=16"),
        ), "3x3 convs block-punched at R, the 7x7 stem and the 1x1 shortcuts at 2x, fc dense"),
    ),
    "vgg16": (
        PruneMapping("vgg16", "block-punched + block fc", 8.2, (
            Rule("features.*", "block_punched", "R", BP),
            Rule("features.0", "block_punched", "2x"),
            Rule("classifier.*", "block", "R", "rows=16"),
        ), "3x3 convs block-punched at R (the 3-channel first one at 2x); the Linear layers, "
           "which hold 90 % of the weights, block-pruned at the same R"),
    ),
    "mobilenet_v2": (
        PruneMapping("mobilenet_v2", "filter (structured)", 1.8, (
            Rule("features.*.conv.0.0", "filter", "R", only_1x1=True),
            Rule("features.18.0", "filter", "R"),
        ), "filter pruning of the expansion 1x1 convs (narrows the depthwise conv and the "
           "projection's input) and of the last 1x1 conv (narrows the classifier's input): "
           "dense kernels on narrower layers. Expansions alone reach 1.8x only by keeping "
           "~14 % of their filters, since the classifier and features.18 hold half the "
           "weights"),
        PruneMapping("mobilenet_v2", "block 1x1", 1.8, (
            Rule("features.*.conv.*", "block", "R", "rows=16", only_1x1=True),
            Rule("features.18.0", "block", "R", "rows=16"),
        ), "block pruning (16 rows) of every 1x1 conv: sparse kernels on blocked activations "
           "(bcsr_blocked: no layout change around the depthwise convs); depthwise convs, the "
           "stem and the classifier dense"),
    ),
}


def layer_kinds(model: nn.Module) -> dict[str, str]:
    """Every Conv2d and Linear of ``model`` → "1x1" (1x1 conv without groups), "kxk"
    (k×k conv without groups), "grouped" or "linear"."""
    from torch import nn

    kinds = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear):
            kinds[name] = "linear"
        elif isinstance(m, nn.Conv2d):
            kinds[name] = ("grouped" if m.groups != 1 else
                           "1x1" if tuple(m.kernel_size) == (1, 1) else "kxk")
    return kinds
