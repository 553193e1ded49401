"""AutoAL's selection (Wang, Zhan & Huang, ICML 2025): a learned, per-sample
weighting of the candidate strategies' picks.

SearchNet (trained on labeled data by `autoal.search`) gives w[i, j], how far
to trust candidate j on sample i; it reaches this pure strategy as the
`search_weights` statistic. A sample's score is the total weight of the
candidates that pick it, r[i] = sum_j A[i, j] * w[i, j], so a sample that
several trusted candidates agree on comes first.
"""
from __future__ import annotations

import numpy as np

from .base import PoolStats, Strategy, check_k, get, register, top_k_ids

CANDIDATES = ("entropy", "margin", "least_confidence", "kmeans", "bald", "var_ratio", "mean_std")


@register
class AutoAL(Strategy):
    """Top-k by r = sum_j A[i, j] * w[i, j] over the candidates' top-k picks A."""

    name = "autoal"
    per_sample = False

    def __init__(self, candidates: tuple[str, ...] = CANDIDATES):
        if self.name in candidates:
            raise KeyError("autoal cannot be one of its own candidates")
        self.candidate_names = tuple(candidates)
        self.candidates = [get(name) for name in self.candidate_names]
        learners = [c.name for c in self.candidates if c.learns]
        if learners:
            raise KeyError(f"AutoAL candidates never see the oracle's answers, which {', '.join(learners)} "
                           f"learn from; choose candidates that are functions of the pool statistics")
        self.needs = frozenset({"search_weights"}).union(*(c.needs for c in self.candidates))
        self.needs_labeled = any(c.needs_labeled for c in self.candidates)

    def candidate_matrix(self, stats: PoolStats, k: int, labeled: PoolStats | None = None,
                         seed: int = 0) -> np.ndarray:
        """A [N, K] float32, row-aligned with stats: A[i, j] = 1 iff candidate j's k picks contain sample i."""
        a = np.zeros((len(stats), len(self.candidates)), dtype=np.float32)
        for j, candidate in enumerate(self.candidates):
            a[np.isin(stats.ids, candidate.select(stats, k, labeled=labeled, seed=seed)), j] = 1.0
        return a

    def select(self, stats: PoolStats, k: int, labeled: PoolStats | None = None, seed: int = 0) -> np.ndarray:
        """Top-k by r, ties to the smaller id. Should fewer than k samples have r > 0
        (weights underflowing to 0), the rest are filled by total weight sum_j w."""
        check_k(stats, k)
        w = np.asarray(stats.search_weights, dtype=np.float64)
        r = (self.candidate_matrix(stats, k, labeled, seed) * w).sum(axis=1)
        picked = r > 0
        first = top_k_ids(stats.ids[picked], r[picked], k)
        if len(first) == k:
            return first
        rest = ~picked
        return np.concatenate([first, top_k_ids(stats.ids[rest], w[rest].sum(axis=1), k - len(first))])
