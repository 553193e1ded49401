"""AutoAL's selection (Wang, Zhan & Huang, ICML 2025) and its flat-mixture baseline `vote`.

SearchNet (trained on labeled data by `autoal.search.loop`) gives each pool sample
a mixture pi[i] over the K candidate strategies (softmax: trusting one
candidate more means trusting the others less); it reaches this pure strategy
as the `search_weights` statistic. With A[i, j] = 1 iff candidate j's top-k
contains sample i, a sample's score is the mixture mass of the candidates
that pick it, r[i] = sum_j A[i, j] * pi[i, j]; `hard` scores only the most
trusted candidate, r[i] = A[i, argmax_j pi[i, j]]. `vote` is the same
selection with a flat mixture, pi = 1/K: the candidates' unweighted vote
count, the baseline that shows whether the search matters.
"""
from __future__ import annotations

import numpy as np

from .base import Composite, PoolStats, check_k, get, register, top_k

CANDIDATES = ("entropy", "margin", "least_confidence", "kmeans", "bald", "var_ratio", "mean_std")


@register
class AutoAL(Composite):
    """Top-k by r = sum_j A[i, j] * pi[i, j]; ties to the larger soft score, then the smaller id."""

    name = "autoal"
    own_needs = frozenset({"search_weights"})
    per_sample = False

    def __init__(self, candidates: tuple[str, ...] = CANDIDATES, hard: bool = False):
        if {"autoal", "vote"} & set(candidates):
            raise KeyError(f"{self.name} cannot have autoal or vote as a candidate")
        self.candidate_names, self.hard = tuple(candidates), hard
        self.candidates = self.parts = [get(name) for name in self.candidate_names]
        learners = [c.name for c in self.candidates if c.learns]
        if learners:
            raise KeyError(f"AutoAL candidates never see the oracle's answers, which {', '.join(learners)} "
                           f"learn from; choose candidates that are functions of the pool statistics")

    def candidate_matrix(self, stats: PoolStats, k: int, labeled: PoolStats | None = None,
                         seed: int = 0) -> np.ndarray:
        """A [N, K] float32, row-aligned with stats: A[i, j] = 1 iff candidate j's k picks contain sample i."""
        a = np.zeros((len(stats), len(self.candidates)), dtype=np.float32)
        for j, candidate in enumerate(self.candidates):
            a[np.isin(stats.ids, candidate.select(stats, k, labeled=labeled, seed=seed)), j] = 1.0
        return a

    def mixture(self, stats: PoolStats) -> np.ndarray:
        """pi [N, K], each row summing to 1."""
        return np.asarray(stats.search_weights, dtype=np.float64)

    def select(self, stats: PoolStats, k: int, labeled: PoolStats | None = None, seed: int = 0) -> np.ndarray:
        return self.choose(stats, k, labeled, seed)[0]

    def choose(self, stats: PoolStats, k: int, labeled: PoolStats | None = None,
               seed: int = 0) -> tuple[np.ndarray, dict]:
        """The picks, and under "vote" the batch the unweighted vote count picks (the hook's telemetry)."""
        check_k(stats, k)
        a, pi = self.candidate_matrix(stats, k, labeled, seed), self.mixture(stats)
        soft = (a * pi).sum(axis=1)
        primary = a[np.arange(len(a)), pi.argmax(axis=1)] if self.hard else soft
        picks = np.asarray(stats.ids[top_k(stats.ids, k, primary, soft)], dtype=np.int64)
        return picks, {"vote": stats.ids[top_k(stats.ids, k, a.sum(axis=1))]}


@register
class Vote(AutoAL):
    """Top-k by the number of candidates that pick a sample, ties to the smaller id."""

    name = "vote"
    own_needs = frozenset()

    def __init__(self, candidates: tuple[str, ...] = CANDIDATES):
        super().__init__(candidates)

    def mixture(self, stats: PoolStats) -> np.ndarray:
        return np.full((len(stats), len(self.candidates)), 1.0 / len(self.candidates))
