"""NPAS's Bayesian-optimisation filter: from many sampled candidates, the few worth evaluating.

Two Gaussian processes (scikit-learn, Matérn 5/2 + white noise, on ``SearchSpace.features``)
model what was measured: one the fine-tuned accuracy, one the log of the measured latency (the
latency model also learns from the probes, the dense model and the most pruned ones, measured
before the search). Expected improvement is taken on the reward itself: for each candidate,
joint samples of (accuracy, latency) from the two posteriors go through the reward function,
EI = E[max(reward - best, 0)] (Monte Carlo, common random numbers across candidates). A batch is
chosen greedily with the "kriging believer": after each pick its predicted mean joins the data
as if observed, so the next pick goes elsewhere. Before there are a few accuracies to fit, the
picks are spread over the estimated cost among the candidates predicted to meet the target.
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.gaussian_process import GaussianProcessRegressor
from sklearn.gaussian_process.kernels import ConstantKernel, DotProduct, Matern, WhiteKernel

from .reward import Outcome, RewardConfig
from .space import Candidate, SearchSpace

PRIOR_ACC_STD = 0.15  # accuracy uncertainty before there are enough observations to fit
N_INIT = 4  # below this many accuracies, the first picks spread over the cost instead


def _gp(seed: int) -> GaussianProcessRegressor:
    # linear (a Bayesian linear model: per-layer effects that add up) + Matérn (what does not
    # add up) + noise (fine-tuning and timing are noisy)
    kernel = (ConstantKernel(0.1, (1e-4, 1e2)) * DotProduct(1.0, (1e-3, 1e2))
              + ConstantKernel(1.0, (1e-3, 1e2)) * Matern(length_scale=1.0,
                                                          length_scale_bounds=(0.05, 100.0),
                                                          nu=2.5)
              + WhiteKernel(1e-2, (1e-6, 1.0)))
    return GaussianProcessRegressor(kernel, normalize_y=True, n_restarts_optimizer=2,
                                    random_state=seed)


class _Model:
    """One GP, or a constant prior when there is too little data to fit one."""

    def __init__(self, x: np.ndarray, y: np.ndarray, seed: int, prior_std: float):
        self.x, self.y = x, y
        self.prior_std = prior_std
        self.gp: GaussianProcessRegressor | None = None
        if len(y) >= 3 and np.ptp(y) > 1e-9:
            self.gp = _gp(seed)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                self.gp.fit(x, y)

    def predict(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.gp is None:
            mu = float(self.y.mean()) if len(self.y) else 0.0
            return np.full(len(x), mu), np.full(len(x), self.prior_std)
        mu, sd = self.gp.predict(x, return_std=True)
        return mu, np.maximum(sd, 1e-9)

    def believe(self, x_new: np.ndarray, y_new: float) -> None:
        """Add a pseudo-observation, keeping the fitted kernel (no new optimisation)."""
        self.x = np.vstack([self.x, x_new[None]])
        self.y = np.append(self.y, y_new)
        if self.gp is not None:
            gp = GaussianProcessRegressor(self.gp.kernel_, normalize_y=True, optimizer=None)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                gp.fit(self.x, self.y)
            self.gp = gp


class BayesFilter:
    def __init__(self, space: SearchSpace, reward: RewardConfig, seed: int = 0,
                 mc_samples: int = 128):
        self.space, self.reward, self.seed = space, reward, seed
        self.mc_samples = mc_samples
        self.last_ei: np.ndarray | None = None

    def pick(self, pool: list[Candidate], observed: list[Outcome], n: int,
             round_index: int = 0) -> list[int]:
        """Indices into ``pool`` of the ``n`` candidates to evaluate, best first."""
        if n <= 0 or not pool:
            return []
        feats = np.stack([self.space.features(c) for c in pool])
        acc_obs = [o for o in observed if o.accuracy is not None and o.latency_ms is not None
                   and o.ok]
        lat_obs = [o for o in observed if o.latency_ms is not None]
        xa = np.stack([self.space.features(o.candidate) for o in acc_obs]) if acc_obs else \
            np.zeros((0, feats.shape[1]))
        ya = np.array([o.accuracy for o in acc_obs], dtype=np.float64)
        xl = np.stack([self.space.features(o.candidate) for o in lat_obs]) if lat_obs else \
            np.zeros((0, feats.shape[1]))
        yl = np.log(np.array([o.latency_ms for o in lat_obs], dtype=np.float64))
        acc = _Model(xa, ya, self.seed, PRIOR_ACC_STD)
        lat = _Model(xl, yl, self.seed + 1, 1.0)
        if len(acc_obs) < N_INIT:
            return self._initial(pool, feats, lat, n)
        best = max((o.reward for o in observed if o.ok and o.accuracy is not None), default=0.0)
        rng = np.random.default_rng([self.seed, round_index])
        z = rng.standard_normal((2, self.mc_samples))
        chosen: list[int] = []
        for _ in range(min(n, len(pool))):
            ma, sa = acc.predict(feats)
            ml, sl = lat.predict(feats)
            a = np.clip(ma[:, None] + sa[:, None] * z[0][None], 0.0, 1.0)
            t = np.exp(ml[:, None] + sl[:, None] * z[1][None])
            r = self.reward.many(a, t)
            ei = np.maximum(r - best, 0.0).mean(1)
            ei[chosen] = -1.0
            if not chosen:
                self.last_ei = ei.copy()
            # ties (e.g. all zero early on): prefer the higher predicted reward
            score = ei + 1e-9 * self.reward.many(ma, np.exp(ml))
            score[chosen] = -np.inf
            i = int(np.argmax(score))
            chosen.append(i)
            acc.believe(feats[i], float(ma[i]))
            lat.believe(feats[i], float(ml[i]))
        return chosen

    def _initial(self, pool: list[Candidate], feats: np.ndarray, lat: _Model, n: int
                 ) -> list[int]:
        """Too few accuracies for a model: spread the picks over the estimated cost (the
        quantiles of log effective MACs) among the candidates predicted to meet the target,
        so the first observations span light to heavy pruning."""
        cost = np.log(np.array([self.space.mac_fractions(c)[1] for c in pool]))
        ok = np.ones(len(pool), dtype=bool)
        if lat.gp is not None:
            ml, _ = lat.predict(feats)
            ok = np.exp(ml) <= self.reward.target_ms
            if not ok.any():
                ok[:] = True
        idx = np.flatnonzero(ok)
        chosen: list[int] = []
        for q in (np.arange(n) + 0.5) / n:
            t = np.quantile(cost[idx], q)
            rest = [i for i in idx if i not in chosen]
            if not rest:
                break
            chosen.append(int(min(rest, key=lambda i: (abs(cost[i] - t), i))))
        return chosen
