"""Cluster-Margin (Citovsky et al., NeurIPS 2021, "Batch Active Learning at Scale"):
uncertainty from margins, diversity from clusters, at a cost that grows with the
batch rather than with N x k, so it serves batches of 100K-1M.

Take the k_m = ceil(margin_factor * k) samples with the smallest margin
p(1) - p(2) (ties to the smaller id); group them by the cluster of the pool
each falls in; order the groups by size, smallest first (ties to the lower
cluster index); then round-robin: one seeded-random member of each group in
turn, skipping exhausted groups, until k are picked. Smallest first, so a rare
uncertain region is represented as early as a crowded one, and a crowded one
cannot fill the batch alone.

Departures from the paper. It clusters once, with average-linkage HAC and a
distance threshold, on the embeddings of the model trained on the seed set.
Here a selection is a pure function of one round's statistics, and HAC costs
O(N^2), so each round clusters that round's embeddings with faiss k-means
(k-means++ seeding, at most 256 rows per cluster for training) into
n_clusters clusters, default k: the coarsest partition in which every pick
can still come from its own cluster, at the cost the `kmeans` strategy pays.
Only the k_m candidates are assigned to clusters. Time O(N C) for the margins
plus the k-means (O(min(N, 256 c) c D) per iteration) plus O(k_m c D);
memory one float32 copy of the embeddings plus O(N + k_m).
"""
from __future__ import annotations

import math

import numpy as np

from .base import PoolStats, Strategy, check_k, get, register, top_k
from .diversity import kmeans_centers, nearest_center


def round_robin(cluster: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Positions of k items (k <= len(cluster)) taken round-robin over their clusters:
    clusters by size ascending, then label; members of a cluster in a random order
    drawn by one rng.permutation; in pick order."""
    perm = rng.permutation(len(cluster))
    labels, group, sizes = np.unique(cluster[perm], return_inverse=True, return_counts=True)
    rank = np.empty(len(labels), dtype=np.int64)
    rank[np.lexsort((labels, sizes))] = np.arange(len(labels))
    by_group = np.argsort(group, kind="stable")
    turn = np.empty(len(group), dtype=np.int64)  # how many of its cluster's members come before it
    turn[by_group] = np.arange(len(group)) - np.searchsorted(group[by_group], group[by_group])
    return perm[np.lexsort((rank[group], turn))[:k]]


@register
class ClusterMargin(Strategy):
    """Lowest margins, taken round-robin over k-means clusters, smallest cluster first."""

    name = "cluster_margin"
    needs = frozenset({"probs", "embedding"})
    per_sample = False

    def __init__(self, margin_factor: float = 1.25, n_clusters: int | None = None):
        if not margin_factor >= 1.0:
            raise ValueError(f"cluster_margin: margin_factor must be at least 1, not {margin_factor}")
        if n_clusters is not None and n_clusters < 1:
            raise ValueError(f"cluster_margin: n_clusters must be positive, not {n_clusters}")
        self.margin_factor, self.n_clusters = margin_factor, n_clusters

    def select(self, stats: PoolStats, k: int, labeled: PoolStats | None = None, seed: int = 0) -> np.ndarray:
        check_k(stats, k)
        k_m = min(len(stats), math.ceil(self.margin_factor * k))
        candidates = top_k(stats.ids, k_m, get("margin").score(stats))
        centers = kmeans_centers(stats.embedding, min(self.n_clusters or k, len(stats)), seed)
        cluster = nearest_center(stats.embedding[candidates], centers)
        picks = candidates[round_robin(cluster, k, np.random.default_rng(seed))]
        return np.asarray(stats.ids[picks], dtype=np.int64)
