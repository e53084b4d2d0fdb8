"""JCW's genes: per searched layer a channel ratio and a weight density, in tenths.

A layer's channel ratio keeps that fraction of its output channels (filter pruning: a physically
narrower layer, and narrower inputs for its consumers); its weight density keeps that fraction of
the weights left, with a mask scheme (unstructured). Genes are integers in tenths, within
per-layer lower bounds (JCW's public code): channels ≥ 0.5, the first layer ≥ 0.8, a layer whose
output joins a residual add (a channel group with several producers) ≥ 0.9; density ≥ 0.3.

Only what can change the model is a gene: a layer without filter pruning in the space (frozen
group, the model's output, a width at the vector width) has no channel gene, and the later
producers of one residual group follow the first one's gene. Channel counts are rounded to the
vector width (``keep_count``), so several ratios give one width; ``canonical`` snaps a gene to
the largest ratio with the same width, which makes equal models equal gene vectors (what
duplicate elimination compares) and equal candidate keys (what the latency cache and the
journal compare).

With precision in the space (``--precisions fp32,int8``) a layer offered int8 has one more
gene, its precision (0: fp32, 1: int8); decoded, it applies only where the layer's choice runs
in int8 (a masked layer whose mask scheme has no int8 kernel stays fp32).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from ....pruning import keep_count
from ...space import FALLBACK, Candidate, LayerChoice, SearchSpace

TENTHS = 10
WEIGHT_SCHEME = FALLBACK  # unstructured: fits every Conv2d/Linear


@dataclass(frozen=True)
class JcwBounds:
    """The genes' lower bounds (fractions kept; JCW's public code by default). A target below
    what they can reach is refused before any work; lower them (``--jcw-bounds``) for it."""

    channels: float = 0.5
    first: float = 0.8  # the first searched layer's channels
    residual: float = 0.9  # a layer whose output joins a residual add (several producers)
    density: float = 0.3

    @classmethod
    def parse(cls, values) -> JcwBounds:
        vals = tuple(float(v) for v in values)
        if len(vals) != 4 or not all(0.1 <= v <= 1.0 for v in vals):
            raise ValueError(f"--jcw-bounds {','.join(f'{v:g}' for v in vals)}: four "
                             f"fractions in [0.1, 1] (channels, first layer, residual layers, "
                             f"weight density), e.g. 0.5,0.8,0.9,0.3")
        return cls(*vals)

    def tenths(self, v: float) -> int:
        return max(1, min(TENTHS, round(v * TENTHS)))


@dataclass(frozen=True)
class Gene:
    layer: int  # index into space.layers
    kind: str  # "channels" or "density"
    lo: int  # lower bound, tenths (the upper bound is 10: unpruned)
    group: int | None = None  # channels: the channel group it narrows
    size: int = 0  # channels: that group's width
    hi: int = TENTHS  # upper bound (precision: 1 = int8)

    def __str__(self) -> str:
        return f"layer {self.layer} {self.kind} ≥ {self.lo / TENTHS:.1f}"


class JcwEncoding:
    """The genes of ``space`` and the map from gene vectors (int tenths) to candidates."""

    def __init__(self, space: SearchSpace, bounds: JcwBounds | None = None,
                 weight_scheme: str = WEIGHT_SCHEME):
        self.space = space
        self.bounds = b = bounds or JcwBounds()
        self.weight_scheme = weight_scheme
        self.vector_width = space.config.vector_width
        producers: dict[int, int] = {}
        for _mac, _k, _out, gr in space._all.values():
            if gr.out is not None:
                producers[gr.out] = producers.get(gr.out, 0) + 1
        self.genes: list[Gene] = []
        self.channel_gene: dict[int, int] = {}  # layer index -> gene index (shared: owner's)
        self.density_gene: dict[int, int] = {}
        owner: dict[int, int] = {}  # group -> gene index
        for i, ls in enumerate(space.layers):
            keep = ls.options.get("keep", {})
            gids = space._claims[ls.name]["filter"]
            if gids and any("filter" in ss for ss in keep.values()):
                g = gids[0]
                if g in owner:
                    self.channel_gene[i] = owner[g]
                else:
                    lo = b.tenths(b.first if i == 0 else
                                  b.residual if producers.get(g, 0) > 1 else b.channels)
                    owner[g] = self.channel_gene[i] = len(self.genes)
                    self.genes.append(Gene(i, "channels", lo, g, space._group_size[g]))
            if any(weight_scheme in ss for ss in keep.values()):
                self.density_gene[i] = len(self.genes)
                self.genes.append(Gene(i, "density", b.tenths(b.density)))
        if not self.genes:
            raise ValueError("jcw: no layer of the space can be filter-pruned or masked "
                             f"({weight_scheme}); allow filter and {weight_scheme} (--schemes)")
        self.precision_gene: dict[int, int] = {}
        if space.int8:
            for i, ls in enumerate(space.layers):
                if ls.int8.get("keep"):
                    self.precision_gene[i] = len(self.genes)
                    self.genes.append(Gene(i, "precision", 0, hi=1))
        self.xl = np.array([g.lo for g in self.genes], dtype=int)
        self.xu = np.array([g.hi for g in self.genes], dtype=int)

    @property
    def n_var(self) -> int:
        return len(self.genes)

    # --- snapping ---------------------------------------------------------------------------
    def _kept(self, gene: Gene, tenths: int) -> int:
        return keep_count(gene.size, 1.0 - tenths / TENTHS, self.vector_width)

    def snap(self, x) -> np.ndarray:
        """Any real vector → integer tenths within the bounds, channel genes canonical."""
        v = np.clip(np.rint(np.asarray(x, dtype=float)), self.xl, self.xu).astype(int)
        for j, g in enumerate(self.genes):
            if g.kind == "channels":
                kept = self._kept(g, v[j])
                v[j] = max(t for t in range(g.lo, TENTHS + 1) if self._kept(g, t) == kept)
        return v

    # --- genes → candidate ------------------------------------------------------------------
    def decode(self, x) -> Candidate:
        v = self.snap(x)
        out = []
        for i, _ls in enumerate(self.space.layers):
            c = v[self.channel_gene[i]] if i in self.channel_gene else TENTHS
            d = v[self.density_gene[i]] if i in self.density_gene else TENTHS
            narrowed = c < TENTHS
            if narrowed:  # the ratio the kept width really gives (canonical: one per width)
                g = self.genes[self.channel_gene[i]]
                ratio = float(round(g.size / self._kept(g, c), 6))
            if narrowed and d < TENTHS:
                out.append(LayerChoice("keep", "filter", ratio, mask=self.weight_scheme,
                                       density=int(d) / TENTHS))
            elif narrowed:
                out.append(LayerChoice("keep", "filter", ratio))
            elif d < TENTHS:
                out.append(LayerChoice("keep", self.weight_scheme, _ratio(d)))
            else:
                out.append(LayerChoice())
            if i in self.precision_gene and v[self.precision_gene[i]] == 1:
                ch, ls = out[-1], self.space.layers[i]
                if "int8" in ls.precisions(ch.ftype, ch.mask if ch.joint else ch.scheme):
                    out[-1] = replace(ch, precision="int8")
        return Candidate(tuple(out))

    def describe(self, x) -> str:
        v = self.snap(x)
        return " ".join(f"{g.kind[0]}{g.layer}={t / TENTHS:.1f}"
                        for g, t in zip(self.genes, v, strict=True))

    def floors(self) -> list[Candidate]:
        """The fastest candidates the genes allow: every channel gene at its lower bound, the
        densities at theirs, and unmasked (a sparse kernel is not always faster than the
        dense one: measured, not assumed)."""
        dense_w = self.xl.copy()
        for j, g in enumerate(self.genes):
            if g.kind == "density":
                dense_w[j] = TENTHS
        out = [self.decode(self.xl), self.decode(dense_w)]
        return out if out[0] != out[1] else out[:1]

    def ladder(self, levels: int, channels_only: bool = False) -> np.ndarray:
        """Homogeneous gene vectors from the lower bounds to unpruned (every gene at the same
        fraction of its range): the initial population's spread over latency. With
        ``channels_only`` the densities stay at 1 (no masks: where sparse kernels buy little,
        the fastest models are narrow dense ones) and the unpruned end is left out (it is the
        other ladder's)."""
        fs = np.linspace(0.0, 1.0, levels + 1)[:-1] if channels_only else \
            np.linspace(0.0, 1.0, levels)
        dens = np.array([g.kind == "density" for g in self.genes])
        rows = []
        for f in fs:
            r = self.xl + (self.xu - self.xl) * f
            if channels_only:
                r = np.where(dens, self.xu, r)
            rows.append(self.snap(r))
        return np.array(rows, dtype=int)


def _ratio(tenths: int) -> float:
    """A kept fraction in tenths as the compression ratio LayerChoice records (1/fraction)."""
    return float(round(TENTHS / int(tenths), 6))
