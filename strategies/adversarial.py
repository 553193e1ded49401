"""Adversarial AL: VAAL (Sinha et al. 2019) and SRAAL (Zhang et al., CVPR 2020).

A VAE learns a latent space of labeled and unlabeled samples while a state
discriminator learns to tell their labeled/unlabeled state apart from the
latent code (the round hook trains both; see autoal.hooks.state_adversary). The samples
the discriminator rates most "unlabeled" are the least like the labeled set,
so they are queried. The discriminator's output reaches the strategies as
`unlabeled_score`, the probability of the unlabeled state.

SRAAL relabels the unlabeled state: instead of 1 for every unlabeled sample,
its target is the online uncertainty indicator of the task model's
prediction, so confident unlabeled samples look nearly labeled and uncertain
ones stay clearly unlabeled.
"""
from __future__ import annotations

import numpy as np

from .base import PoolStats, Strategy, register


def online_uncertainty(probs: np.ndarray) -> np.ndarray:
    """SRAAL's indicator 1 - p_max * V_min / V(p), in [0, 1).

    V(p) is the variance of the probability vector; V_min that of the flattest
    vector with the same maximum, [p_max, (1 - p_max) / (C - 1), ...], the least
    any vector with this maximum can have. A confident one-hot p gives 0; a flat
    p gives 1 - 1/C, its largest value (V(p) = V_min = 0 is read as ratio 1).
    """
    p = np.asarray(probs, dtype=np.float64)
    c = p.shape[1]
    top = p.max(axis=1)
    rest = (1.0 - top) / (c - 1)
    v_min = ((top - 1.0 / c) ** 2 + (c - 1) * (rest - 1.0 / c) ** 2) / c
    v = p.var(axis=1)
    ratio = np.divide(v_min, v, out=np.ones_like(v), where=v > 1e-15)
    return 1.0 - top * np.minimum(ratio, 1.0)


class _DiscriminatorRanking(Strategy):
    """Top-k by the discriminator's probability of the unlabeled state. The options are
    the round hook's: VAE + discriminator `epochs` over the unlabeled samples it trains on, at
    most `sample` of them (a seeded uniform draw; None: all), the VAE's `latent` size, and
    Adam's `lr` and `batch_size`. An epoch is a pass over those samples, so on a pool of
    millions the draw bounds the training and the features read into it; the scoring pass
    still rates every unlabeled sample."""

    needs = frozenset({"unlabeled_score"})

    def __init__(self, epochs: int = 10, latent: int = 32, lr: float = 5e-4, batch_size: int = 64,
                 sample: int | None = 50_000):
        if min(epochs, latent, batch_size, 1 if sample is None else sample) < 1 or lr <= 0:
            raise ValueError(f"{self.name} needs epochs, latent, batch_size and sample >= 1 and lr > 0")
        self.epochs, self.latent, self.lr, self.batch_size, self.sample = epochs, latent, lr, batch_size, sample

    def score(self, stats: PoolStats) -> np.ndarray:
        return np.asarray(stats.unlabeled_score, dtype=np.float64)


@register
class VAAL(_DiscriminatorRanking):
    name = "vaal"


@register
class SRAAL(_DiscriminatorRanking):
    name = "sraal"
