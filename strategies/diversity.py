"""Batch strategies: choose the k samples jointly, so the batch covers the pool
instead of piling up near one uncertain region.

Pools can be large (N up to millions) while k is a labeling batch, so memory
stays O(N) plus fixed-size chunks: nothing here builds an N x N, N x L or
N x (C*D) array. k-means and nearest-centroid searches run in faiss (exact
float32 search, blocked BLAS), which replaces scikit-learn's KMeans and its
O(N k D) numpy distance loops.
"""
from __future__ import annotations

import faiss
import numpy as np

from .base import PoolStats, Strategy, check_k, register

CHUNK_ELEMENTS = 1 << 22  # entries of one distance block (32 MiB in float64)
KMEANS_ITERATIONS = 25    # at most, Lloyd iterations (faiss's default); scikit-learn's up to 300 stop early anyway
KMEANS_TOLERANCE = 1e-4   # stop once an iteration improves the objective by less than this fraction
NEIGHBOURS = 16           # nearest rows fetched per centroid; more only where those are taken or tied


def _float(x: np.ndarray) -> np.ndarray:
    """x as a float array, without copying float32 embeddings to float64."""
    x = np.asarray(x)
    return x if np.issubdtype(x.dtype, np.floating) else x.astype(np.float64)


def _float32(x: np.ndarray) -> np.ndarray:
    """x as faiss takes it: C-contiguous float32 (a copy unless it already is)."""
    return np.ascontiguousarray(x, dtype=np.float32)


def _sq_dist_to(x: np.ndarray, sq_norms: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances of the rows of x to one point c, in O(N) memory."""
    return np.maximum(sq_norms + c @ c - 2.0 * (x @ c), 0.0)


def min_sq_dist_to_set(x: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """[N] squared distance of each row of x to its nearest row of centers,
    computed over blocks of centers so that no N x L matrix exists at once."""
    x, centers = _float(x), _float(centers)
    sq_norms = np.einsum("ij,ij->i", x, x)
    best = np.full(len(x), np.inf)
    step = max(1, CHUNK_ELEMENTS // max(len(x), 1))
    for start in range(0, len(centers), step):
        block = centers[start:start + step].astype(x.dtype, copy=False)
        d = x @ block.T  # [N, step], updated in place: one block alive at a time
        d *= -2.0
        d += sq_norms[:, None]
        d += np.einsum("ij,ij->i", block, block)[None, :]
        np.minimum(best, np.maximum(d, 0.0, out=d).min(axis=1), out=best)
    return best


def kmeans_centers(embedding: np.ndarray, k: int, seed: int) -> np.ndarray:
    """[k, D] float32 k-means centroids (faiss): k-means++ seeding, as in
    scikit-learn (random seeding often puts two centroids in one well-separated
    cluster), then at most KMEANS_ITERATIONS Lloyd steps (fewer once the
    objective improves by less than KMEANS_TOLERANCE), on at most 256 k rows
    sampled by the seed (faiss's bound), so one step costs O(min(N, 256 k) k D) and
    memory is one float32 copy of the embeddings. Empty clusters are re-split
    by faiss, so duplicate points are fine. The same seed gives the same centroids."""
    x = _float32(embedding)
    kmeans = faiss.Kmeans(x.shape[1], k, niter=KMEANS_ITERATIONS, early_stop_threshold=KMEANS_TOLERANCE, seed=seed,
                          min_points_per_centroid=1, init_method=faiss.ClusteringInitMethod_KMEANS_PLUS_PLUS)
    kmeans.train(x)
    return kmeans.centroids


def nearest_center(x: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """[N] index of the nearest row of centers for each row of x: one exact
    faiss search, O(N L D) time in blocks, O(N) output memory."""
    index = faiss.IndexFlatL2(centers.shape[1])
    index.add(_float32(centers))
    return index.search(_float32(x), 1)[1][:, 0].astype(np.int64)


def nearest_distinct(x: np.ndarray, centers: np.ndarray, ids: np.ndarray | None = None) -> np.ndarray:
    """For each center in order, the index of its nearest row of x not already
    taken by an earlier center (equally near rows: the smaller id, default the
    index), so that k centers always give k samples. One faiss search fetches
    each center's NEIGHBOURS nearest rows (O(N k D) time, O(k) memory besides
    a float32 copy of x); a center whose fetched rows are all taken, or may tie
    with rows not fetched, searches again with four times as many."""
    ids = np.arange(len(x)) if ids is None else np.asarray(ids)
    index = faiss.IndexFlatL2(x.shape[1])
    index.add(_float32(x))
    centers = _float32(centers)
    width = min(NEIGHBOURS, len(x))
    dist, rows = index.search(centers, width)
    taken = np.zeros(len(x), dtype=bool)
    picks = np.empty(len(centers), dtype=np.int64)
    for j in range(len(centers)):
        d, r, w = dist[j], rows[j], width
        while (i := _nearest_untaken(d, r, taken, ids, complete=w == len(x))) is None:
            w = min(4 * w, len(x))
            d, r = (a[0] for a in index.search(centers[j:j + 1], w))
        taken[i] = True
        picks[j] = i
    return picks


def _nearest_untaken(dist: np.ndarray, rows: np.ndarray, taken: np.ndarray, ids: np.ndarray,
                     complete: bool) -> int | None:
    """The untaken row of a center's ascending neighbour list, smaller id among
    equals; None when the list cannot decide (every row taken, or its last
    distance ties the best, so a row beyond it may tie too)."""
    free = ~taken[rows]
    if not free.any():
        return None
    best = dist[free].min()
    if not complete and dist[-1] <= best:
        return None
    tied = rows[free & (dist == best)]
    return int(tied[np.argmin(ids[tied])])


@register
class KMeansSampling(Strategy):
    """k-means with one cluster per query (faiss, seeded); label the sample nearest
    each centroid, equally near samples to the smaller id, each sample at most once."""

    name = "kmeans"
    needs = frozenset({"embedding"})
    per_sample = False

    def select(self, stats: PoolStats, k: int, labeled: PoolStats | None = None, seed: int = 0) -> np.ndarray:
        check_k(stats, k)
        centers = kmeans_centers(stats.embedding, k, seed)
        return np.asarray(stats.ids[nearest_distinct(stats.embedding, centers, stats.ids)], dtype=np.int64)


def k_center_greedy(x: np.ndarray, k: int, labeled: np.ndarray | None = None) -> np.ndarray:
    """Greedy k-center (Sener & Savarese 2018): repeatedly take the row farthest
    from the labeled rows and the picks so far. Keeps one [N] vector of squared
    distances to the nearest center and updates it per pick. Without labeled
    rows it starts at the row nearest the mean. Ties go to the smaller index.
    Time O(k N D + N L D) for L labeled rows; memory O(N): the distance vector,
    the squared norms and a few [N] temporaries per pick, plus one N x
    max(1, CHUNK_ELEMENTS // N) block against the labeled rows."""
    x = _float(x)
    sq_norms = np.einsum("ij,ij->i", x, x)
    picks = np.empty(k, dtype=np.int64)
    if labeled is not None and len(labeled):
        min_dist = min_sq_dist_to_set(x, labeled)
        first = 0
    else:
        min_dist = _sq_dist_to(x, sq_norms, x.mean(axis=0))
        picks[0] = int(np.argmin(min_dist))
        min_dist = _sq_dist_to(x, sq_norms, x[picks[0]])
        min_dist[picks[0]] = -1.0
        first = 1
    for j in range(first, k):
        i = int(np.argmax(min_dist))
        picks[j] = i
        np.minimum(min_dist, _sq_dist_to(x, sq_norms, x[i]), out=min_dist)
        min_dist[i] = -1.0  # taken: below every real distance, so never picked again
    return picks


@register
class CoreSet(Strategy):
    """Core-set selection: cover the pool's embedding space with the labeled set."""

    name = "coreset"
    needs = frozenset({"embedding"})
    per_sample = False
    needs_labeled = True

    def select(self, stats: PoolStats, k: int, labeled: PoolStats | None = None, seed: int = 0) -> np.ndarray:
        check_k(stats, k)
        labeled_embedding = None if labeled is None else labeled.embedding
        return np.asarray(stats.ids[k_center_greedy(stats.embedding, k, labeled_embedding)], dtype=np.int64)


def _gradient_factors(probs: np.ndarray, embedding: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """a = p - onehot(argmax p), e, and ||g||^2 = ||a||^2 ||e||^2 for the
    gradient embeddings g = a (x) e, which are never formed."""
    a = np.array(probs, dtype=np.float64)
    a[np.arange(len(a)), a.argmax(axis=1)] -= 1.0
    e = np.asarray(embedding, dtype=np.float64)
    return a, e, np.einsum("ij,ij->i", a, a) * np.einsum("ij,ij->i", e, e)


def _gradient_sq_dist_to(a: np.ndarray, e: np.ndarray, sq_norms: np.ndarray, c: int) -> np.ndarray:
    """||g_i - g_c||^2 = ||g_i||^2 + ||g_c||^2 - 2 (a_i . a_c)(e_i . e_c), for all i."""
    return np.maximum(sq_norms + sq_norms[c] - 2.0 * (a @ a[c]) * (e @ e[c]), 0.0)


def gradient_sq_distances(probs: np.ndarray, embedding: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """[N] squared distance of each gradient embedding to the nearest of the
    gradient embeddings of the rows `centers`."""
    a, e, sq_norms = _gradient_factors(probs, embedding)
    best = np.full(len(a), np.inf)
    for c in centers:
        np.minimum(best, _gradient_sq_dist_to(a, e, sq_norms, int(c)), out=best)
    return best


@register
class Badge(Strategy):
    """BADGE (Ash et al. 2020): k-means++ seeding on last-layer gradient
    embeddings, which are large for uncertain samples and point in diverse
    directions for diverse samples, so one rule trades off both. Time O(k N (C + D));
    memory O(N (C + D)): float64 copies of probs and embedding and a few [N]
    vectors per pick, never the N x C*D gradient embeddings or an N x k matrix."""

    name = "badge"
    needs = frozenset({"probs", "embedding"})
    per_sample = False

    def select(self, stats: PoolStats, k: int, labeled: PoolStats | None = None, seed: int = 0) -> np.ndarray:
        check_k(stats, k)
        rng = np.random.default_rng(seed)
        a, e, sq_norms = _gradient_factors(stats.probs, stats.embedding)
        taken = np.zeros(len(a), dtype=bool)
        picks = [int(np.argmax(sq_norms))]
        taken[picks[0]] = True
        d2 = _gradient_sq_dist_to(a, e, sq_norms, picks[0])
        while len(picks) < k:
            weights = np.where(taken, 0.0, d2)
            total = weights.sum()
            if total > 0:
                i = int(rng.choice(len(a), p=weights / total))
            else:  # every unpicked sample coincides with a center: D^2 carries no information
                i = int(rng.choice(np.flatnonzero(~taken)))
            picks.append(i)
            taken[i] = True
            np.minimum(d2, _gradient_sq_dist_to(a, e, sq_norms, i), out=d2)
        return np.asarray(stats.ids[picks], dtype=np.int64)
