"""Noise stability (Li et al., AAAI 2024): uncertainty from how far the
output moves when the trained weights get small Gaussian perturbations;
single training, multiple inference.

The scoring pass supplies `perturbation` [N, K, C], the class probabilities
of K perturbed copies of the model (the round hook builds them, each weight
tensor W perturbed by noise of norm eps * ||W||). The deviation of sample i
under copy k is (p_k(x_i) - p(x_i)) / ||p(x_i)||. As in the authors' code,
the batch is a greedy k-center over the concatenated deviation vectors,
started from the origin: the first pick is the sample whose output moves
most, each next one the farthest from the origin and the picks so far, so
the batch has large and diverse deviations (which the paper links to large
and diverse gradients).
"""
from __future__ import annotations

import numpy as np

from .base import PoolStats, Strategy, check_k, register
from .diversity import k_center_greedy


def output_deviation(perturbed: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """[N, K * C] the K deviations (p_k - p) / ||p|| of each sample, concatenated."""
    p = np.asarray(probs, dtype=np.float64)
    d = (np.asarray(perturbed, dtype=np.float64) - p[:, None, :]) / np.linalg.norm(p, axis=1)[:, None, None]
    return d.reshape(len(p), -1)


@register
class NoiseStability(Strategy):
    """Greedy k-center from the origin on output deviations under weight noise."""

    name = "noise_stability"
    needs = frozenset({"probs", "perturbation"})
    per_sample = False

    def __init__(self, samples: int = 10, eps: float = 1e-3, scope: str = "head"):
        """K = `samples` copies of the head (`scope: head`, the backbone runs once) or of the
        whole model (`scope: model`), each weight tensor W perturbed by noise of norm eps * ||W||."""
        if samples < 1 or eps <= 0 or scope not in ("head", "model"):
            raise ValueError("noise_stability needs samples >= 1, eps > 0 and scope head or model")
        self.samples, self.eps, self.scope = samples, eps, scope

    def select(self, stats: PoolStats, k: int, labeled: PoolStats | None = None, seed: int = 0) -> np.ndarray:
        check_k(stats, k)
        d = output_deviation(stats.perturbation, stats.probs)
        return np.asarray(stats.ids[k_center_greedy(d, k, labeled=np.zeros((1, d.shape[1])))], dtype=np.int64)
