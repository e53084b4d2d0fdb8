"""The genetic operators over one layer signature's tuning space (pure: no measuring).

A genome is one point of the space: a value for every key (``oc_tile``, ``w_tile``, and
whatever ``tuning_space`` lists, e.g. an ``algo`` choice); every gene only ever takes a value
its key lists, so every child is a legal, correct kernel. Fitness is a measured time (lower is
better); a genome can be measured several times and its fitness is the median.

- initial population: the cost model's default plus distinct random points;
- selection: the ``elite`` best measured genomes survive (and are measured again, so a lucky
  sample does not stay on top); parents by tournament of ``tournament`` over the population;
- crossover: uniform (each gene from either parent);
- mutation: each gene with probability ``mutation`` (at least one gene when the child would
  repeat a parent); ordered numeric values step to a nearby value most of the time (tile sizes
  are smooth), otherwise any value (categorical choices such as an algorithm).
"""

from __future__ import annotations

import hashlib
import random
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

Space = Mapping[str, Sequence[Any]]
Genome = tuple[tuple[str, Any], ...]  # sorted (key, value) pairs: hashable, deterministic


@dataclass(frozen=True)
class GaConfig:
    population: int = 6
    generations: int = 4
    elite: int = 1
    tournament: int = 2
    mutation: float = 0.35
    local_step: float = 0.7  # chance a numeric mutation moves to a neighbouring value


def genome(point: Mapping[str, Any], space: Space) -> Genome:
    return tuple((k, point[k]) for k in sorted(space))


def as_dict(g: Genome) -> dict[str, Any]:
    return dict(g)


def space_size(space: Space) -> int:
    n = 1
    for v in space.values():
        n *= len(v)
    return n


def in_space(g: Genome, space: Space) -> bool:
    return sorted(k for k, _ in g) == sorted(space) and all(v in space[k] for k, v in g)


def rng_for(seed: int, name: str) -> random.Random:
    """A generator per (seed, signature) that does not depend on Python's hash seed or on
    the order signatures are visited."""
    h = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return random.Random(int.from_bytes(h[:8], "little"))


def random_genome(space: Space, rng: random.Random) -> Genome:
    return tuple((k, rng.choice(list(space[k]))) for k in sorted(space))


def initial_population(space: Space, default: Mapping[str, Any], size: int,
                       rng: random.Random) -> list[Genome]:
    """The default first, then distinct random points (the whole space if it is smaller)."""
    first = genome(default, space)
    pop = [first]
    limit = min(size, space_size(space))
    tries = 0
    while len(pop) < limit and tries < 100 * size:
        g = random_genome(space, rng)
        tries += 1
        if g not in pop:
            pop.append(g)
    return pop


def _numeric(values: Sequence[Any]) -> bool:
    return all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)


def mutate_gene(key: str, value: Any, space: Space, cfg: GaConfig, rng: random.Random) -> Any:
    values = list(space[key])
    if len(values) <= 1:
        return value
    if _numeric(values) and value in values and rng.random() < cfg.local_step:
        ordered = sorted(values)
        i = ordered.index(value)
        step = rng.choice((-2, -1, 1, 2))
        return ordered[min(len(ordered) - 1, max(0, i + step))]
    others = [v for v in values if v != value]
    return rng.choice(others)


def mutate(g: Genome, space: Space, cfg: GaConfig, rng: random.Random,
           force: bool = False) -> Genome:
    """Each gene mutates with probability ``cfg.mutation``; ``force``: at least one changes
    (when the space allows)."""
    out = [(k, mutate_gene(k, v, space, cfg, rng) if rng.random() < cfg.mutation else v)
           for k, v in g]
    if force and tuple(out) == g:
        keys = [i for i, (k, _) in enumerate(g) if len(space[k]) > 1]
        if keys:
            i = rng.choice(keys)
            k, v = out[i]
            new = mutate_gene(k, v, space, cfg, rng)
            while new == v:
                new = mutate_gene(k, v, space, cfg, rng)
            out[i] = (k, new)
    return tuple(out)


def crossover(a: Genome, b: Genome, rng: random.Random) -> Genome:
    """Uniform: each gene from ``a`` or ``b`` with equal chance."""
    return tuple(x if rng.random() < 0.5 else y for x, y in zip(a, b, strict=True))


def fitness(samples: Mapping[Genome, Sequence[float]], g: Genome) -> float:
    """The median of ``g``'s measured times; +inf when it has none (or it failed)."""
    s = samples.get(g)
    return statistics.median(s) if s else float("inf")


def ranked(samples: Mapping[Genome, Sequence[float]]) -> list[Genome]:
    """Measured genomes, fastest first (ties: the earlier measured)."""
    order = {g: i for i, g in enumerate(samples)}
    return sorted(samples, key=lambda g: (fitness(samples, g), order[g]))


def next_generation(pop: Sequence[Genome], samples: Mapping[Genome, Sequence[float]],
                    space: Space, cfg: GaConfig, rng: random.Random) -> list[Genome]:
    """Elites (best measured so far), then children of tournament-selected parents; children
    are new points where the space has any left."""
    size = min(cfg.population, space_size(space))
    nxt: list[Genome] = [g for g in ranked(samples) if fitness(samples, g) < float("inf")]
    nxt = nxt[:cfg.elite]

    def pick() -> Genome:
        group = [pop[rng.randrange(len(pop))] for _ in range(max(1, cfg.tournament))]
        return min(group, key=lambda g: fitness(samples, g))

    tries = 0
    while len(nxt) < size:
        tries += 1
        child = crossover(pick(), pick(), rng)
        child = mutate(child, space, cfg, rng, force=child in nxt or child in samples)
        fresh = child not in samples or tries > 50 * size
        if child not in nxt and fresh:
            nxt.append(child)
        elif tries > 200 * size:  # a tiny space, fully explored: re-measure a random point
            g = random_genome(space, rng)
            if g not in nxt:
                nxt.append(g)
    return nxt
