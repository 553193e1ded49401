"""POAL: Monte-Carlo Pareto optimisation for AL when the pool holds
out-of-distribution samples (Zhan et al. 2022).

Uncertainty sampling is drawn to OOD samples, whose predictions are the most
uncertain of all. POAL keeps two objectives, both maximised: an AL
informativeness score (entropy by default) and the confidence of being in
distribution, here the negative Mahalanobis distance of the embedding to the
nearest labeled class (Lee et al. 2018: class means, one shared covariance).
Steps, as in the authors' code:
1. pre-select: peel per-sample Pareto fronts until `pool_factor * k` candidates;
2. Monte-Carlo Pareto search over fixed-size k-subsets of the candidates
   (objectives: the subset's sums), keeping the archive of non-dominated subsets;
   offspring mutate a random archive member by swaps, so the size stays k;
3. return the archive subset that overlaps most with the other archive
   subsets, the consensus of the front.
"""
from __future__ import annotations

import numpy as np
from sklearn.covariance import LedoitWolf

from .base import Composite, PoolStats, check_k, get, register


def pareto_front(f1: np.ndarray, f2: np.ndarray) -> np.ndarray:
    """Boolean mask of the non-dominated points when maximising (f1, f2).

    j dominates i iff f_j >= f_i in both objectives and > in one; equal points
    do not dominate each other. O(N log N): sweep f1 downwards, groups of equal f1 at once.
    """
    f1, f2 = np.asarray(f1, dtype=np.float64), np.asarray(f2, dtype=np.float64)
    order = np.lexsort((-f2, -f1))
    a, b = f1[order], f2[order]
    starts = np.flatnonzero(np.r_[True, a[1:] != a[:-1]])
    group_best = np.maximum.reduceat(b, starts)            # groups are sorted by f2 desc: max = first
    better_f1 = np.r_[-np.inf, np.maximum.accumulate(group_best)[:-1]]  # best f2 among strictly larger f1
    group = np.repeat(np.arange(len(starts)), np.diff(np.r_[starts, len(a)]))
    keep = (b == group_best[group]) & (b > better_f1[group])
    mask = np.zeros(len(f1), dtype=bool)
    mask[order[keep]] = True
    return mask


def pareto_layers(f1: np.ndarray, f2: np.ndarray, count: int) -> np.ndarray:
    """Indices of the first non-dominated layers, peeled until at least `count` (or all)."""
    rest, taken = np.arange(len(f1)), []
    while rest.size and sum(map(len, taken)) < count:
        front = pareto_front(f1[rest], f2[rest])
        taken.append(rest[front])
        rest = rest[~front]
    return np.concatenate(taken) if taken else rest


def mahalanobis_confidence(embedding: np.ndarray, labeled: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """[N] minus the smallest squared Mahalanobis distance to a labeled class mean
    (shared, Ledoit-Wolf shrunk covariance: the labeled set is small next to D).
    Labels -1 (OOD answers) are left out."""
    known = labels >= 0
    x, y = np.asarray(labeled, dtype=np.float64)[known], labels[known]
    classes = np.unique(y)
    means = np.stack([x[y == c].mean(axis=0) for c in classes])
    precision = LedoitWolf(assume_centered=True).fit(x - means[np.searchsorted(classes, y)]).precision_
    e = np.asarray(embedding, dtype=np.float64)
    best = np.full(len(e), np.inf)
    for mu in means:
        d = e - mu
        np.minimum(best, ((d @ precision) * d).sum(axis=1), out=best)
    return -best


def dominates(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a [.., 2] weakly dominates b [.., 2] (>= in both): b adds nothing to a front holding a."""
    return (a >= b).all(axis=-1)


def pareto_subset_search(f1: np.ndarray, f2: np.ndarray, k: int, iterations: int,
                         rng: np.random.Generator) -> tuple[list[np.ndarray], np.ndarray]:
    """Monte-Carlo Pareto search over k-subsets of range(len(f1)) maximising
    (sum f1, sum f2). Returns the archive: subsets (sorted index arrays) and their
    objectives [A, 2]; no archive member weakly dominates another."""
    n = len(f1)
    values = np.stack([f1, f2], axis=1)
    first = np.sort(rng.choice(n, size=k, replace=False))
    subsets, objectives = [first], values[first].sum(axis=0)[None, :]
    if k == n:
        return subsets, objectives
    for _ in range(iterations):
        parent = subsets[int(rng.integers(len(subsets)))]
        swaps = max(1, int(rng.binomial(k, 1.0 / k)))
        outside = np.setdiff1d(np.arange(n), parent, assume_unique=True)
        child = parent.copy()
        child[rng.choice(k, size=min(swaps, len(outside)), replace=False)] = rng.choice(
            outside, size=min(swaps, len(outside)), replace=False)
        child.sort()
        f = values[child].sum(axis=0)
        if dominates(objectives, f).any():
            continue
        keep = ~dominates(f, objectives)
        subsets = [s for s, kept in zip(subsets, keep) if kept] + [child]
        objectives = np.vstack([objectives[keep], f])
    return subsets, objectives


def consensus(subsets: list[np.ndarray], n: int) -> np.ndarray:
    """The subset whose members occur most often across all subsets (first on ties)."""
    counts = np.zeros(n)
    for s in subsets:
        counts[s] += 1
    return subsets[int(np.argmax([counts[s].sum() for s in subsets]))]


@register
class POAL(Composite):
    """Pareto optimisation of informativeness vs in-distribution confidence."""

    name = "poal"
    own_needs = frozenset({"embedding", "labels"})
    per_sample = False
    needs_labeled = True

    def __init__(self, informativeness: str = "entropy", iterations: int = 2000, pool_factor: int = 6):
        self.informativeness = get(informativeness)
        if not self.informativeness.per_sample:
            raise KeyError(f"poal needs a per-sample informativeness strategy, not {informativeness!r}")
        if iterations < 0 or pool_factor < 1:
            raise ValueError("poal needs iterations >= 0 and pool_factor >= 1")
        self.iterations, self.pool_factor = iterations, pool_factor
        self.parts = [self.informativeness]

    def objectives(self, stats: PoolStats, labeled: PoolStats) -> tuple[np.ndarray, np.ndarray]:
        """(informativeness, in-distribution confidence) per pool sample."""
        return (np.asarray(self.informativeness.score(stats), dtype=np.float64),
                mahalanobis_confidence(stats.embedding, labeled.embedding, labeled.labels))

    def select(self, stats: PoolStats, k: int, labeled: PoolStats | None = None, seed: int = 0) -> np.ndarray:
        check_k(stats, k)
        f1, f2 = self.objectives(stats, labeled)
        candidates = np.sort(pareto_layers(f1, f2, self.pool_factor * k))
        subsets, _ = pareto_subset_search(f1[candidates], f2[candidates], k, self.iterations,
                                          np.random.default_rng(seed))
        return np.asarray(stats.ids[candidates[consensus(subsets, len(candidates))]], dtype=np.int64)
