"""Multiple-criteria AL with a fixed-size determinantal point process
(Zhan et al. 2021): informativeness, representativeness and diversity in one
kernel.

Quality-diversity kernel (Kulesza & Taskar): L = diag(q) (S + eps I) diag(q),
where the quality q_i = informativeness_i * representativeness_i and
S_ij = cos(e_i, e_j) is the similarity of the embeddings. det(L_Y) grows with
the qualities of Y and with the volume its embeddings span, so the batch Y is
informative, representative and diverse at once. Informativeness: a
per-sample strategy's score (entropy by default) scaled to [0, 1];
representativeness: cosine similarity to the centroid of the sample's k-means
cluster (k = batch), mapped to [0, 1]: central samples of each cluster first.

Fixed size k by greedy MAP inference (Chen, Zhang & Zhou 2018): deterministic,
O(N k (D + k)) time and O(N k) memory, never the N x N kernel. The ridge
eps keeps L full rank, so k may exceed the embedding dimension.
"""
from __future__ import annotations

import numpy as np
from .base import Composite, PoolStats, check_k, get, register
from .diversity import kmeans_centers, nearest_center

QUALITY_FLOOR = 1e-3   # every sample stays selectable: a zero quality would zero its row of L


def unit_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def kernel_columns(quality: np.ndarray, features: np.ndarray, cols: np.ndarray, eps: float) -> np.ndarray:
    """L[:, cols] for L = diag(q) (F F^T + eps I) diag(q), F = unit-norm `features`."""
    cols = np.asarray(cols)
    sim = features @ features[cols].T
    sim[cols, np.arange(len(cols))] += eps
    return quality[:, None] * sim * quality[cols][None, :]


def greedy_map(quality: np.ndarray, features: np.ndarray, k: int, eps: float) -> np.ndarray:
    """k indices greedily maximising det(L_Y) (Chen et al.'s incremental Cholesky):
    d2[i] is the gain log-det would get from i, c[i] its Cholesky row so far."""
    n = len(quality)
    c = np.zeros((n, k))
    d2 = quality ** 2 * (np.einsum("ij,ij->i", features, features) + eps)
    picks = np.empty(k, dtype=np.int64)
    for t in range(k):
        j = int(np.argmax(d2))
        picks[t] = j
        if t == k - 1:
            break
        e = (kernel_columns(quality, features, np.array([j]), eps)[:, 0] - c[:, :t] @ c[j, :t]) / np.sqrt(d2[j])
        c[:, t] = e
        d2 -= e ** 2
        d2[picks[:t + 1]] = -np.inf
    return picks


@register
class DPP(Composite):
    """Fixed-size DPP over quality (informativeness x representativeness) and embedding similarity."""

    name = "dpp"
    own_needs = frozenset({"embedding"})
    per_sample = False

    def __init__(self, informativeness: str = "entropy", eps: float = 1e-2):
        self.informativeness = get(informativeness)
        if not self.informativeness.per_sample:
            raise KeyError(f"dpp needs a per-sample informativeness strategy, not {informativeness!r}")
        self.eps = eps
        self.parts = [self.informativeness]

    def quality(self, stats: PoolStats, k: int, seed: int) -> np.ndarray:
        """q_i = informativeness_i * representativeness_i, both in [0, 1]."""
        u = np.asarray(self.informativeness.score(stats), dtype=np.float64)
        u = (u - u.min()) / (u.max() - u.min()) if u.max() > u.min() else np.ones_like(u)
        centers = kmeans_centers(stats.embedding, k, seed)
        own = centers[nearest_center(stats.embedding, centers)]
        representativeness = (1.0 + np.einsum("ij,ij->i", unit_rows(stats.embedding), unit_rows(own))) / 2.0
        return np.maximum(u * representativeness, QUALITY_FLOOR)

    def select(self, stats: PoolStats, k: int, labeled: PoolStats | None = None, seed: int = 0) -> np.ndarray:
        check_k(stats, k)
        picks = greedy_map(self.quality(stats, k, seed), unit_rows(stats.embedding), k, self.eps)
        return np.asarray(stats.ids[picks], dtype=np.int64)
