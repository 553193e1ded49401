"""Low-budget strategies, TypiClust and ProbCover: label typical points of dense regions
not yet covered, rather than uncertain ones. They win while the model is too weak for its
uncertainty to mean much (a few labels per class) and lose later, so with uncertainty
candidates they give AutoAL a best candidate that changes during a run.

Both take the task model's embedding of the labeled set L and of the pool U together (the
papers use a self-supervised embedding; here, as for `kmeans` and `coreset`, the round's model
gives it). faiss does the k-means and the neighbour searches (exact float32, blocked BLAS);
the distances that decide a pick are then recomputed in float64 for the rows faiss returned
(with NEIGHBOUR_SLACK extra rows), so a pick does not turn on float32 rounding and matches a
float64 brute force. Nothing here builds an N x N matrix.
"""
from __future__ import annotations

import math

import faiss
import numpy as np

from .base import PoolStats, Strategy, check_k, register
from .diversity import _float32, kmeans_centers, nearest_center

NEIGHBOUR_SLACK = 4           # rows fetched beyond those needed, so float32 near-ties are re-ranked in float64
CHUNK_ELEMENTS = 1 << 22      # entries of one float64 difference block


def _sq_dists(x: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """float64 ||x[a] - x[b]||^2 for index arrays a, b of one shape, in blocks of CHUNK_ELEMENTS."""
    out = np.empty(a.shape, dtype=np.float64)
    a_flat, b_flat, flat = a.ravel(), b.ravel(), out.ravel()
    step = max(1, CHUNK_ELEMENTS // max(x.shape[1], 1))
    for s in range(0, len(a_flat), step):
        diff = x[a_flat[s:s + step]].astype(np.float64) - x[b_flat[s:s + step]]
        flat[s:s + step] = np.einsum("ij,ij->i", diff, diff)
    return out


def nearest_sq_dists(x: np.ndarray, base: np.ndarray, queries: np.ndarray, width: int) -> np.ndarray:
    """[len(queries), width] float64 squared distances, ascending, of each row x[queries] to its
    `width` nearest rows x[base] (width <= len(base)): faiss finds width + NEIGHBOUR_SLACK of them,
    float64 ranks them. Memory O(len(queries) x width) besides a float32 copy of x[base]."""
    fetch = min(width + NEIGHBOUR_SLACK, len(base))
    index = faiss.IndexFlatL2(x.shape[1])
    index.add(_float32(x[base]))
    rows = base[index.search(_float32(x[queries]), fetch)[1]]
    return np.sort(_sq_dists(x, np.repeat(queries[:, None], fetch, axis=1), rows), axis=1)[:, :width]


# --- TypiClust --------------------------------------------------------------

def cluster_order(clusters: np.ndarray, labeled: np.ndarray, min_size: int) -> np.ndarray:
    """The clusters in the order TypiClust visits them: fewest labeled members first, then
    the largest, then the lower index; clusters of at most min_size members after all the
    others (the paper drops them; kept last here, so a small pool still fills the batch);
    clusters without an unlabeled member never."""
    n = int(clusters.max()) + 1
    size = np.bincount(clusters, minlength=n)
    labeled_count = np.bincount(clusters[labeled], minlength=n)
    order = np.lexsort((np.arange(n), -size, labeled_count, size <= min_size))
    return order[(size - labeled_count)[order] > 0]


def typicality_pick(x: np.ndarray, members: np.ndarray, ids: np.ndarray, neighbours: int) -> int:
    """The most typical of `members` (rows of x): typicality = 1 / mean Euclidean distance
    to its K = min(neighbours, m // 2) nearest other members, m = len(members) (the paper's
    rule for small clusters), so the smallest mean distance; equal means to the smaller id."""
    k = min(neighbours, len(members) // 2)
    if k == 0:
        return int(members[np.argmin(ids[members])])
    # column 0 is a zero distance: the row itself, or a duplicate of it, which leaves the same distances
    mean = np.sqrt(nearest_sq_dists(x, members, members, k + 1)[:, 1:]).mean(axis=1)
    tied = members[mean == mean.min()]
    return int(tied[np.argmin(ids[tied])])


def typiclust_picks(x: np.ndarray, clusters: np.ndarray, labeled: np.ndarray, ids: np.ndarray, k: int,
                    neighbours: int, min_size: int) -> np.ndarray:
    """k rows of x, none labeled: visit the clusters in `cluster_order` round-robin, each visit
    taking the most typical unlabeled, unpicked member of the cluster (typicality among those
    members, as in the paper), skipping clusters with none left."""
    available = ~labeled
    by_cluster = np.argsort(clusters, kind="stable")
    starts = np.searchsorted(clusters[by_cluster], np.arange(int(clusters.max()) + 2))
    order = cluster_order(clusters, labeled, min_size)
    picks: list[int] = []
    while len(picks) < k:
        for c in order:
            members = by_cluster[starts[c]:starts[c + 1]]
            members = members[available[members]]
            if len(members):
                picks.append(typicality_pick(x, members, ids, neighbours))
                available[picks[-1]] = False
                if len(picks) == k:
                    break
    return np.asarray(picks, dtype=np.int64)


@register
class TypiClust(Strategy):
    """TypiClust (Hacohen, Dekel & Weinshall, ICML 2022): k-means of L and U into
    c = min(|L| + k, max_clusters, N) clusters (the authors' code caps c at 500); visit the
    clusters with the fewest labeled points first, then the largest (then the lower
    cluster index), round-robin, taking from each the unlabeled member of highest typicality
    1 / mean distance to its K nearest neighbours within the cluster's unlabeled members,
    K = min(neighbours, m // 2) (paper: K = 20); equal typicality to the smaller id. The
    paper drops clusters of at most min_cluster_size points; here they come last. The
    authors' code averages squared distances; the paper, and this, Euclidean ones.
    Time: the k-means (O(min(N, 256 c) c D) per iteration) plus, per pick, a kNN search
    within one cluster (O(m^2 D)); memory one float32 copy of the embeddings plus
    O(N + m K)."""

    name = "typiclust"
    needs = frozenset({"embedding"})
    per_sample = False
    needs_labeled = True

    def __init__(self, neighbours: int = 20, max_clusters: int = 500, min_cluster_size: int = 5):
        if neighbours < 1 or max_clusters < 1 or min_cluster_size < 0:
            raise ValueError("typiclust: neighbours and max_clusters must be positive, min_cluster_size not negative")
        self.neighbours, self.max_clusters, self.min_cluster_size = neighbours, max_clusters, min_cluster_size

    def select(self, stats: PoolStats, k: int, labeled: PoolStats | None = None, seed: int = 0) -> np.ndarray:
        check_k(stats, k)
        x, is_labeled, ids = joined(stats, labeled)
        centers = kmeans_centers(x, min(int(is_labeled.sum()) + k, self.max_clusters, len(x)), seed)
        rows = typiclust_picks(x, nearest_center(x, centers), is_labeled, ids, k, self.neighbours,
                               self.min_cluster_size)
        return np.asarray(ids[rows], dtype=np.int64)


def joined(stats: PoolStats, labeled: PoolStats | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The embeddings of L then U, the mask of L's rows and the ids (L's never picked)."""
    if labeled is None or not len(labeled):
        return np.asarray(stats.embedding), np.zeros(len(stats), dtype=bool), np.asarray(stats.ids)
    x = np.concatenate([labeled.embedding, stats.embedding])
    return x, np.arange(len(x)) < len(labeled), np.concatenate([labeled.ids, stats.ids])


# --- ProbCover --------------------------------------------------------------

def purity_sq_delta(x: np.ndarray, pseudo: np.ndarray, purity: float) -> float:
    """The squared largest delta at which at least a fraction `purity` of the open balls
    B(x_i, delta) = {x_j : ||x_i - x_j|| < delta} are pure (hold one pseudo-label). A ball is
    pure iff delta <= d_i, x_i's distance to its nearest point of another pseudo-label, so
    purity(delta) = #{d_i >= delta} / N and the answer is the ceil(purity N)-th largest d_i,
    found exactly rather than on the paper's grid of deltas. d_i comes from one faiss search
    per pseudo-class (its points against the others): O(N^2 D) time, O(N) memory. Infinite
    (one pseudo-class) means every ball is pure: then the largest finite distance found, 0 if none."""
    d = np.full(len(x), np.inf)
    for c in np.unique(pseudo):
        inside = pseudo == c
        if not inside.all():
            d[inside] = nearest_sq_dists(x, np.flatnonzero(~inside), np.flatnonzero(inside), 1)[:, 0]
    delta = np.sort(d)[len(d) - math.ceil(purity * len(d) - 1e-9)]
    finite = d[np.isfinite(d)]
    return float(delta if np.isfinite(delta) else finite.max(initial=0.0))


def delta_balls(x: np.ndarray, sq_delta: float) -> tuple[np.ndarray, np.ndarray]:
    """The delta-ball graph as CSR (starts [N + 1], neighbours): row i's ball is
    neighbours[starts[i]:starts[i + 1]], the rows j with ||x_i - x_j||^2 < sq_delta in float64,
    and always i itself. faiss range search over a slightly larger radius finds them; memory
    O(N + E) for E edges, never N x N. Symmetric: j is in i's ball iff i is in j's."""
    index = faiss.IndexFlatL2(x.shape[1])
    index.add(_float32(x))
    lims, _, found = index.range_search(_float32(x), sq_delta * (1 + 1e-4) + 1e-12)
    owner = np.repeat(np.arange(len(x)), np.diff(lims.astype(np.int64)))
    found = found.astype(np.int64)
    keep = (_sq_dists(x, owner, found) < sq_delta) | (owner == found)
    owner, found = owner[keep], found[keep]
    self_missing = np.ones(len(x), dtype=bool)
    self_missing[owner[owner == found]] = False
    owner = np.concatenate([owner, np.flatnonzero(self_missing)])
    found = np.concatenate([found, np.flatnonzero(self_missing)])
    order = np.lexsort((found, owner))
    return np.searchsorted(owner[order], np.arange(len(x) + 1)), found[order]


def max_coverage_picks(starts: np.ndarray, neighbours: np.ndarray, labeled: np.ndarray, ids: np.ndarray,
                       k: int) -> np.ndarray:
    """k unlabeled rows by greedy max coverage: the labeled rows' balls are covered first; each
    pick is the unpicked unlabeled row whose ball holds the most uncovered rows, equal counts
    to the smaller id. Once no ball holds an uncovered row, the rest go to the largest balls,
    then the smaller id (the authors' code picks row 0 again there). O(k N + E) time."""
    size = np.diff(starts)
    covered = np.zeros(len(size), dtype=bool)
    covered[neighbours[np.repeat(labeled, size)]] = True
    owner = np.repeat(np.arange(len(size)), size)
    degree = np.bincount(owner[~covered[neighbours]], minlength=len(size))
    open_ = ~labeled
    picks: list[int] = []
    while len(picks) < k:
        gain = np.where(open_, degree, -1)
        if gain.max() <= 0:
            rest = np.flatnonzero(open_)
            picks.extend(rest[np.lexsort((ids[rest], -size[rest]))[:k - len(picks)]].tolist())
            break
        tied = np.flatnonzero(gain == gain.max())
        i = int(tied[np.argmin(ids[tied])])
        picks.append(i)
        open_[i] = False
        ball = neighbours[starts[i]:starts[i + 1]]
        new = ball[~covered[ball]]
        covered[new] = True
        # the ball graph is symmetric: the rows whose balls hold a newly covered y are y's ball
        np.subtract.at(degree, np.concatenate([neighbours[starts[y]:starts[y + 1]] for y in new] or [[]]).astype(np.int64), 1)
    return np.asarray(picks, dtype=np.int64)


@register
class ProbCover(Strategy):
    """ProbCover (Yehuda, Dekel, Hacohen & Weinshall, NeurIPS 2022): greedy maximum coverage
    of open delta-balls over L and U, the labeled points' balls covered first. delta: the
    option, or else chosen per call by the paper's purity rule, the largest delta whose ball
    purity w.r.t. k-means pseudo-labels (as many clusters as the model has classes) stays
    >= purity (paper: alpha = 0.95). Ties to the smaller id; once all is covered, the largest
    balls. Time O(N^2 D) for the purity rule and the range search (the paper's cost too) plus
    O(k N + E); memory O(N + E) for E ball edges, never an N x N matrix."""

    name = "probcover"
    per_sample = False
    needs_labeled = True

    def __init__(self, delta: float | None = None, purity: float = 0.95):
        if delta is not None and not delta > 0:
            raise ValueError(f"probcover: delta must be positive, not {delta}")
        if not 0 < purity <= 1:
            raise ValueError(f"probcover: purity must be in (0, 1], not {purity}")
        self.delta, self.purity = delta, purity

    @property
    def needs(self) -> frozenset[str]:
        return frozenset({"embedding"} if self.delta is not None else {"embedding", "probs"})

    def sq_delta(self, x: np.ndarray, classes: int, seed: int) -> float:
        """The squared ball radius: the option, or the purity rule on k-means pseudo-labels."""
        if self.delta is not None:
            return self.delta ** 2
        pseudo = nearest_center(x, kmeans_centers(x, min(classes, len(x)), seed))
        return purity_sq_delta(x, pseudo, self.purity)

    def select(self, stats: PoolStats, k: int, labeled: PoolStats | None = None, seed: int = 0) -> np.ndarray:
        check_k(stats, k)
        x, is_labeled, ids = joined(stats, labeled)
        classes = 0 if self.delta is not None else np.shape(stats.probs)[1]
        starts, neighbours = delta_balls(x, self.sq_delta(x, classes, seed))
        return np.asarray(ids[max_coverage_picks(starts, neighbours, is_labeled, ids, k)], dtype=np.int64)
