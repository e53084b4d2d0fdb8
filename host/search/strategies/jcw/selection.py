"""JCW's anchor-based survival: non-dominated sorting once per latency anchor.

For each anchor a (a latency in ms) the population is sorted (pymoo's ``NonDominatedSorting``)
on two objectives, the loss (1 − accuracy) and the distance to the anchor, |log(latency / a)|.
The anchors then take turns, each picking its best member not yet picked, best meaning lowest
front, then closest to the anchor: the first pick of every anchor is the member nearest to it,
and later picks trade distance for accuracy along that anchor's front. So the survivors cover
every anchor (the deployment targets and points spread between the smallest and the largest
configuration), where plain NSGA-II on (loss, latency) lets the front drift to wherever accuracy
is cheapest. A survivor's ``rank`` is its best front over the anchors and its ``crowding`` the
largest crowding distance there, which is what NSGA-II's binary tournament compares.
"""

from __future__ import annotations

import numpy as np
from pymoo.core.survival import Survival
from pymoo.operators.survival.rank_and_crowding.metrics import calc_crowding_distance
from pymoo.util.nds.non_dominated_sorting import NonDominatedSorting


def anchor_objectives(F: np.ndarray, anchor: float) -> np.ndarray:
    """(loss, |log(latency / anchor)|) for rows of F = (loss, latency ms)."""
    return np.column_stack([F[:, 0], np.abs(np.log(F[:, 1]) - np.log(anchor))])


def anchor_select(F: np.ndarray, anchors, n: int) -> tuple[list[int], np.ndarray, np.ndarray]:
    """Indices of the ``n`` survivors of F (rows: loss, latency ms), in pick order, and every
    row's rank and crowding (best over the anchors)."""
    F = np.asarray(F, dtype=float)
    N = len(F)
    nds = NonDominatedSorting()
    orders, ranks, crowds = [], [], []
    for a in anchors:
        G = anchor_objectives(F, float(a))
        rank = np.zeros(N, dtype=int)
        crowd = np.zeros(N)
        for r, front in enumerate(nds.do(G)):
            rank[front] = r
            crowd[front] = calc_crowding_distance(G[front]) if len(front) > 2 else np.inf
        orders.append(sorted(range(N), key=lambda i, G=G, rank=rank: (rank[i], G[i, 1],
                                                                     G[i, 0], i)))
        ranks.append(rank)
        crowds.append(crowd)
    chosen: list[int] = []
    taken = np.zeros(N, dtype=bool)
    pos = [0] * len(orders)
    while len(chosen) < min(n, N):
        for k, order in enumerate(orders):
            while pos[k] < N and taken[order[pos[k]]]:
                pos[k] += 1
            if pos[k] < N and len(chosen) < n:
                i = order[pos[k]]
                taken[i] = True
                chosen.append(i)
    R = np.array(ranks)
    best = R.min(axis=0)
    C = np.where(R == best, np.array(crowds), -np.inf).max(axis=0)
    return chosen, best, C


class AnchorSurvival(Survival):
    """pymoo survival over ``anchors()`` (called at each survival: the anchors may follow
    what has been measured)."""

    def __init__(self, anchors) -> None:
        super().__init__(filter_infeasible=False)
        self.anchors = anchors

    def _do(self, problem, pop, *args, n_survive=None, random_state=None, **kwargs):
        chosen, rank, crowd = anchor_select(pop.get("F"), self.anchors(), n_survive)
        pop.set("rank", rank)
        pop.set("crowding", crowd)
        return pop[chosen]
