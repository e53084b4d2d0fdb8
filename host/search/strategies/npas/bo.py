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

import copy
import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.gaussian_process import GaussianProcessRegressor
from sklearn.gaussian_process.kernels import ConstantKernel, DotProduct, Matern, WhiteKernel

from ...space import Candidate, SearchSpace
from ..reward import Outcome, RewardConfig

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
    return GaussianProcessRegressor(kernel, normalize_y=True, n_restarts_optimizer=1,
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
        self.acc: _Model | None = None
        self.lat: _Model | None = None
        self.best = 0.0
        self.n_acc = 0
        self._fitted: tuple | None = None

    def _feats(self, cands: list[Candidate]) -> np.ndarray:
        return np.stack([self.space.features(c) for c in cands])

    def fit(self, observed: list[Outcome]) -> None:
        """Fit both models to everything measured so far (not again for the same data)."""
        key = tuple((o.candidate.key(), o.accuracy, o.latency_ms, o.reward) for o in observed)
        if key == self._fitted:
            return
        self._fitted = key
        width = len(self.space.features(self.space.dense()))
        acc_obs = [o for o in observed if o.accuracy is not None and o.latency_ms is not None
                   and o.ok]
        lat_obs = [o for o in observed if o.latency_ms is not None]
        xa = self._feats([o.candidate for o in acc_obs]) if acc_obs else np.zeros((0, width))
        xl = self._feats([o.candidate for o in lat_obs]) if lat_obs else np.zeros((0, width))
        self.acc = _Model(xa, np.array([o.accuracy for o in acc_obs], dtype=np.float64),
                          self.seed, PRIOR_ACC_STD)
        self.lat = _Model(xl, np.log(np.array([o.latency_ms for o in lat_obs],
                                              dtype=np.float64)), self.seed + 1, 1.0)
        self.n_acc = len(acc_obs)
        self.best = max((o.reward for o in observed if o.ok and o.accuracy is not None),
                        default=0.0)

    def _reward_samples(self, acc: _Model, lat: _Model, feats: np.ndarray, z: np.ndarray):
        ma, sa = acc.predict(feats)
        ml, sl = lat.predict(feats)
        a = np.clip(ma[:, None] + sa[:, None] * z[0][None], 0.0, 1.0)
        t = np.exp(ml[:, None] + sl[:, None] * z[1][None])
        return self.reward.many(a, t), ma, ml

    def expected_reward(self, cands: list[Candidate], round_index: int = 0) -> np.ndarray:
        """E[reward] under the models (after ``fit``): what the controller is trained on
        between evaluations."""
        z = np.random.default_rng([self.seed, round_index, 7]).standard_normal(
            (2, self.mc_samples))
        r, _, _ = self._reward_samples(self.acc, self.lat, self._feats(cands), z)
        return r.mean(1)

    def pick(self, pool: list[Candidate], observed: list[Outcome], n: int,
             round_index: int = 0) -> list[int]:
        """Indices into ``pool`` of the ``n`` candidates to evaluate, best first."""
        if n <= 0 or not pool:
            return []
        self.fit(observed)
        feats = self._feats(pool)
        acc, lat = copy.deepcopy(self.acc), copy.deepcopy(self.lat)
        if self.n_acc < N_INIT:
            return self._initial(pool, feats, lat, n)
        rng = np.random.default_rng([self.seed, round_index])
        z = rng.standard_normal((2, self.mc_samples))
        chosen: list[int] = []
        for _ in range(min(n, len(pool))):
            r, ma, ml = self._reward_samples(acc, lat, feats, z)
            ei = np.maximum(r - self.best, 0.0).mean(1)
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
