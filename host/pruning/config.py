"""What every pruning file shares: the one config record, the rate convention, the error type
and how a layer names itself in messages.

Rate convention: a rate is the FRACTION OF WEIGHTS REMOVED from a layer, 0 ≤ rate < 1.
A compression ratio "5x" is the same thing said differently: rate = 1 - 1/5 = 0.8.
``parse_rate`` accepts both spellings ("0.8", "5x").
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from torch import nn


class PruningError(ValueError):
    """A plan that cannot be applied; the message names the layer, its shape and the fix."""


@dataclass
class PruningConfig:
    """Plan-wide settings. Per-layer scheme parameters live in the plan's rules."""

    vector_width: int = 16  # filter/channel widths are kept multiples of this
    pattern_count: int = 8  # size of the pattern set per layer (pattern scheme)

    def __post_init__(self) -> None:
        if self.vector_width < 1 or self.pattern_count < 1:
            raise PruningError(f"vector_width and pattern_count must be ≥ 1; got "
                               f"{self.vector_width}, {self.pattern_count}")

    def to_dict(self) -> dict:
        return asdict(self)


def parse_rate(text: str | float) -> float:
    """'0.8' or 0.8 → 0.8 (fraction removed); '5x' → 0.8 (compression ratio)."""
    s = str(text).strip().lower()
    try:
        if s.endswith("x") or s.endswith("×"):
            ratio = float(s[:-1])
            if ratio < 1:
                raise PruningError(f"compression ratio {text!r} must be ≥ 1x")
            rate = 1.0 - 1.0 / ratio
        else:
            rate = float(s)
    except ValueError:
        raise PruningError(f"rate {text!r}: expected a fraction removed (0.8) or a compression "
                           f"ratio (5x)") from None
    if not 0.0 <= rate < 1.0:
        raise PruningError(f"rate {text!r}: the fraction removed must be in [0, 1); 1 would "
                           f"empty the layer")
    return rate


def describe(name: str, m: nn.Module) -> str:
    """'layer features.3 (Conv2d 3x3, 32→64)': how errors and reports name a layer."""
    if isinstance(m, nn.Conv2d):
        kh, kw = m.kernel_size
        g = f", groups={m.groups}" if m.groups > 1 else ""
        return f"layer {name} (Conv2d {kh}x{kw}, {m.in_channels}→{m.out_channels}{g})"
    if isinstance(m, nn.Linear):
        return f"layer {name} (Linear, {m.in_features}→{m.out_features})"
    return f"layer {name} ({type(m).__name__})"
