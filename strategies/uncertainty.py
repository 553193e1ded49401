"""Per-sample strategies: rank the pool by an informativeness score.

Each scores every sample independently, so the scoring actors can reduce to a
top-k locally; the base `select` takes the top-k with ties to the smaller id.
`random` is the exception: it samples, so it overrides `select`.
"""
from __future__ import annotations

import numpy as np

from .base import PoolStats, Strategy, check_k, register, top_k_ids

EPS = 1e-12


def entropy(p: np.ndarray) -> np.ndarray:
    """Shannon entropy (nats) over the last axis; p = 0 contributes 0, not NaN."""
    p = np.asarray(p, dtype=np.float64)
    return -(p * np.log(np.clip(p, EPS, None))).sum(axis=-1)


@register
class Random(Strategy):
    """Uniform sample: the baseline every other strategy must beat."""

    name = "random"
    per_sample = False

    def select(self, stats: PoolStats, k: int, labeled: PoolStats | None = None, seed: int = 0) -> np.ndarray:
        check_k(stats, k)
        rng = np.random.default_rng(seed)
        return np.asarray(stats.ids[rng.choice(len(stats), size=k, replace=False)], dtype=np.int64)


@register
class Entropy(Strategy):
    """Predictive entropy of the deterministic prediction."""

    name = "entropy"
    needs = frozenset({"probs"})

    def score(self, stats: PoolStats) -> np.ndarray:
        return entropy(stats.probs)


@register
class Margin(Strategy):
    """Smallest gap between the two most likely classes: the closest to the boundary."""

    name = "margin"
    needs = frozenset({"probs"})

    def score(self, stats: PoolStats) -> np.ndarray:
        top2 = np.partition(np.asarray(stats.probs, dtype=np.float64), -2, axis=1)[:, -2:]
        return -(top2[:, 1] - top2[:, 0])


@register
class LeastConfidence(Strategy):
    """Lowest probability of the predicted class."""

    name = "least_confidence"
    needs = frozenset({"probs"})

    def score(self, stats: PoolStats) -> np.ndarray:
        return 1.0 - np.asarray(stats.probs, dtype=np.float64).max(axis=1)


@register
class VarRatio(Strategy):
    """1 - (mode count / T) over the T MC-dropout argmax predictions.

    It measures disagreement between dropout samples, which is why it needs
    real MC samples: on one deterministic prediction it degenerates to 0, and
    replacing it by 1 - max p would make it a copy of least_confidence.
    """

    name = "var_ratio"
    needs = frozenset({"mc_probs"})

    def score(self, stats: PoolStats) -> np.ndarray:
        n, t, c = stats.mc_probs.shape
        votes = stats.mc_probs.argmax(axis=2)
        counts = np.bincount((np.arange(n)[:, None] * c + votes).ravel(), minlength=n * c).reshape(n, c)
        return 1.0 - counts.max(axis=1) / t


@register
class MeanStd(Strategy):
    """Mean over classes of the std of p_c across the T MC-dropout samples."""

    name = "mean_std"
    needs = frozenset({"mc_probs"})

    def score(self, stats: PoolStats) -> np.ndarray:
        return np.asarray(stats.mc_probs, dtype=np.float64).std(axis=1).mean(axis=1)


@register
class Bald(Strategy):
    """Mutual information between prediction and weights (Houlsby et al. 2011):
    H(mean_t p_t) - mean_t H(p_t). High when the samples are each confident
    but disagree, which entropy alone cannot tell apart from pure noise."""

    name = "bald"
    needs = frozenset({"mc_probs"})

    def score(self, stats: PoolStats) -> np.ndarray:
        mc = np.asarray(stats.mc_probs, dtype=np.float64)
        return entropy(mc.mean(axis=1)) - entropy(mc).mean(axis=1)


@register
class LossPrediction(Strategy):
    """Highest loss predicted by the loss-prediction module (Yoo & Kweon 2019).

    `subset_factor` > 0: the top-k among a uniform random subset of subset_factor x k
    pool samples, as the paper ranks a random 10,000 of the pool for each batch of
    1,000 (factor 10). 0: the top-k of the whole pool, a per-sample strategy.
    The round hook trains the task model with the loss module's ranking loss at
    `weight` (lambda), reaching the backbone for the first `joint_fraction` of the fit."""

    name = "lpl"
    needs = frozenset({"pred_loss"})

    def __init__(self, subset_factor: int = 10, weight: float = 1.0, joint_fraction: float = 0.6):
        if subset_factor < 0 or weight < 0 or not 0.0 <= joint_fraction <= 1.0:
            raise ValueError("lpl needs subset_factor >= 0, weight >= 0 and joint_fraction in [0, 1]")
        self.subset_factor, self.weight, self.joint_fraction = subset_factor, weight, joint_fraction

    @property
    def per_sample(self) -> bool:
        return self.subset_factor == 0

    def score(self, stats: PoolStats) -> np.ndarray:
        return np.asarray(stats.pred_loss, dtype=np.float64)

    def select(self, stats: PoolStats, k: int, labeled: PoolStats | None = None, seed: int = 0) -> np.ndarray:
        check_k(stats, k)
        if self.per_sample or self.subset_factor * k >= len(stats):
            return super().select(stats, k)
        subset = np.random.default_rng(seed).choice(len(stats), size=self.subset_factor * k, replace=False)
        return top_k_ids(stats.ids[subset], self.score(stats)[subset], k)
