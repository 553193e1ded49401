"""TypiClust and ProbCover against float64 brute force on tiny arrays, and as AutoAL candidates."""
from __future__ import annotations

import math
import tracemalloc

import numpy as np
import pandas as pd
import pytest

from autoal import cli
from autoal.strategies import PoolStats, get, low_budget
from autoal.strategies.diversity import kmeans_centers, nearest_center


def blobs(n: int, d: int = 3, centers: int = 4, seed: int = 0, spread: float = 0.6) -> np.ndarray:
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(centers, d)) * 4
    return means[rng.integers(centers, size=n)] + rng.normal(size=(n, d)) * spread


def split(x: np.ndarray, n_labeled: int, seed: int = 0, classes: int = 4):
    """Pool and labeled PoolStats over the rows of x (the first n_labeled labeled), shuffled ids."""
    rng = np.random.default_rng(seed)
    ids = rng.permutation(np.arange(500, 500 + 2 * len(x), 2)).astype(np.int64)
    probs = np.full((len(x), classes), 1.0 / classes)
    return (PoolStats(ids=ids[n_labeled:], embedding=x[n_labeled:], probs=probs[n_labeled:]),
            PoolStats(ids=ids[:n_labeled], embedding=x[:n_labeled], probs=probs[:n_labeled]))


def sq_matrix(x):
    return ((x[:, None, :] - x[None, :, :]) ** 2).sum(axis=2)


# --- TypiClust ----------------------------------------------------------------

def brute_typiclust(x, clusters, n_labeled, ids, k, neighbours=20, min_size=5):
    """The paper's loop, written directly: full distance matrices, Python sets."""
    dist = np.sqrt(sq_matrix(x))
    labeled = set(range(n_labeled))
    n = clusters.max() + 1
    size = [int((clusters == c).sum()) for c in range(n)]
    count = [sum(1 for i in labeled if clusters[i] == c) for c in range(n)]
    order = sorted((c for c in range(n) if size[c] > count[c]), key=lambda c: (size[c] <= min_size, count[c], -size[c], c))
    taken, picks = set(labeled), []
    while len(picks) < k:
        for c in order:
            members = [i for i in range(len(x)) if clusters[i] == c and i not in taken]
            if not members:
                continue
            kk = min(neighbours, len(members) // 2)
            if kk == 0:
                best = min(members, key=lambda i: ids[i])
            else:
                sub = dist[np.ix_(members, members)]
                mean = [np.sort(np.delete(sub[a], a))[:kk].mean() for a in range(len(members))]
                best = min(members, key=lambda i: (mean[members.index(i)], ids[i]))
            picks.append(best)
            taken.add(best)
            if len(picks) == k:
                break
    return picks


@pytest.mark.parametrize("n_labeled,k,neighbours", [(0, 6, 20), (12, 9, 20), (20, 30, 3)])
def test_typiclust_matches_brute_force(n_labeled, k, neighbours):
    x = blobs(90)
    stats, labeled = split(x, n_labeled)
    picks = get("typiclust", neighbours=neighbours).select(stats, k, labeled=labeled, seed=4)
    clusters = nearest_center(x, kmeans_centers(x, min(n_labeled + k, 500), 4))
    ids = np.concatenate([labeled.ids, stats.ids])
    np.testing.assert_array_equal(picks, ids[brute_typiclust(x, clusters, n_labeled, ids, k, neighbours)])


def test_typiclust_takes_dense_points_of_clusters_with_fewest_labels():
    """Two blobs, one already labeled: the pick is the centre of the other, not an outlier."""
    x = np.concatenate([blobs(40, centers=1, seed=1, spread=0.3), blobs(40, centers=1, seed=2, spread=0.3) + 10])
    stats, labeled = split(x[5:], 0)
    stats_l = PoolStats(ids=np.arange(5) - 10, embedding=x[:5])   # five labeled points in the first blob
    (pick,) = get("typiclust").select(stats, 1, labeled=stats_l, seed=0)
    chosen = stats.embedding[stats.rows(np.array([pick]))][0]
    second = x[40:]
    assert np.linalg.norm(chosen - second.mean(axis=0)) < 0.3


def test_typiclust_equal_typicality_goes_to_the_smaller_id():
    x = np.array([[0.0, 0.0]] * 2 + [[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    stats = PoolStats(ids=np.array([9, 4, 7, 8, 5, 6]), embedding=x)
    picks = get("typiclust", max_clusters=1, min_cluster_size=0).select(stats, 2)
    np.testing.assert_array_equal(picks, [4, 9])   # the two centre duplicates, smaller id first


# --- ProbCover ----------------------------------------------------------------

def brute_purity_delta(sq, pseudo, purity):
    """Largest squared delta, over every pairwise distance, whose open balls are pure often enough."""
    other = pseudo[:, None] != pseudo[None, :]
    best = 0.0
    for delta in np.unique(sq):
        pure = ~((sq < delta) & other).any(axis=1)
        if pure.mean() >= purity - 1e-12:
            best = max(best, delta)
    return best


def brute_probcover(sq, sq_delta, n_labeled, ids, k):
    """The authors' edge-list greedy, with ties to the smaller id and the stated fallback."""
    ball = (sq < sq_delta) | np.eye(len(sq), dtype=bool)
    covered = ball[:n_labeled].any(axis=0)
    picks = []
    while len(picks) < k:
        open_rows = [i for i in range(n_labeled, len(sq)) if i not in picks]
        gain = {i: int((ball[i] & ~covered).sum()) for i in open_rows}
        if max(gain.values()) == 0:
            rest = sorted(open_rows, key=lambda i: (-ball[i].sum(), ids[i]))
            return picks + rest[:k - len(picks)]
        best = min(open_rows, key=lambda i: (-gain[i], ids[i]))
        picks.append(best)
        covered |= ball[best]
    return picks


@pytest.mark.parametrize("n_labeled,k", [(0, 5), (15, 8), (10, 60)])
def test_probcover_matches_brute_force_with_the_purity_rule(n_labeled, k):
    x = blobs(80, spread=1.2)
    stats, labeled = split(x, n_labeled)
    picks = get("probcover").select(stats, k, labeled=labeled, seed=2)
    pseudo = nearest_center(x, kmeans_centers(x, 4, 2))
    sq = sq_matrix(x)
    sq_delta = brute_purity_delta(sq, pseudo, 0.95)
    assert low_budget.purity_sq_delta(x, pseudo, 0.95) == pytest.approx(sq_delta, rel=1e-12)
    ids = np.concatenate([labeled.ids, stats.ids])
    np.testing.assert_array_equal(picks, ids[brute_probcover(sq, sq_delta, n_labeled, ids, k)])


def test_probcover_with_a_fixed_delta_and_ties_to_the_smaller_id():
    # two identical triangles far apart: equal coverage, so the smaller id's triangle goes first
    tri = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    x = np.concatenate([tri, tri + 100, [[50.0, 50.0]]])
    stats = PoolStats(ids=np.array([10, 11, 12, 3, 4, 5, 20]), embedding=x)
    strategy = get("probcover", delta=1.2)
    assert strategy.needs == {"embedding"}
    picks = strategy.select(stats, 4)
    # row 0's ball {0, 1, 2} and row 3's ball {3, 4, 5} cover 3 each (rows 1, 2 cover 2 more: sqrt 2 > 1.2);
    # then the lone point; then, all covered, the largest ball (3 rows) with the smallest id
    np.testing.assert_array_equal(picks, [3, 10, 20, 4])
    np.testing.assert_array_equal(picks, stats.ids[brute_probcover(sq_matrix(x), 1.44, 0, stats.ids, 4)])


def test_probcover_covers_the_labeled_balls_first():
    x = np.concatenate([blobs(30, centers=1, seed=1, spread=0.2), blobs(30, centers=1, seed=2, spread=0.2) + 8])
    stats, labeled = split(x, 0)
    labeled_stats = PoolStats(ids=np.array([-1]), embedding=x[:1])      # a labeled point in the first blob
    (pick,) = get("probcover", delta=2.0).select(stats, 1, labeled=labeled_stats)
    assert stats.rows(np.array([pick]))[0] >= 30


def test_probcover_never_holds_an_n_by_n_matrix():
    n = 3000
    x = np.random.default_rng(0).normal(size=(n, 4))
    stats = PoolStats(ids=np.arange(n), embedding=x, probs=np.full((n, 4), 0.25))
    tracemalloc.start()
    try:
        get("probcover").select(stats, 20)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < n * n * 8 / 8


def test_low_budget_options_are_checked():
    for name, options in [("typiclust", {"neighbours": 0}), ("probcover", {"delta": 0.0}),
                          ("probcover", {"purity": 1.5})]:
        with pytest.raises(ValueError):
            get(name, **options)


# --- as AutoAL candidates -----------------------------------------------------

def test_both_serve_as_autoal_candidates_on_a_held_out_split():
    """The search calls candidates on L_val with the rest of L as labeled: each returns k of L_val."""
    x = blobs(120)
    stats, labeled = split(x, 50)
    stats = PoolStats(ids=stats.ids, embedding=stats.embedding, probs=stats.probs,
                      search_weights=np.full((len(stats), 3), 1 / 3))
    autoal = get("autoal", candidates=("typiclust", "probcover", "margin"))
    assert autoal.needs_labeled and autoal.needs == {"search_weights", "embedding", "probs"}
    a = autoal.candidate_matrix(stats, 10, labeled=labeled, seed=1)
    assert (a.sum(axis=0) == 10).all()
    picks = autoal.select(stats, 10, labeled=labeled, seed=1)
    assert len(set(picks.tolist())) == 10 and set(picks.tolist()) <= set(stats.ids.tolist())


def test_autoal_run_on_digits_with_the_low_budget_candidates(ray_local, tmp_path):
    out = tmp_path / "run"
    argv = ["run", "--dataset", "digits", "--initial", "20", "--batch", "10", "--rounds", "1", "--epochs", "2",
            "--actors", "0", "--seeds", "0", "--min-steps", "0", "--search.cycles-first", "1", "--search.fit-epochs", "1",
            "--search.search-epochs", "1", "--strategy", "typiclust", "probcover", "autoal",
            "--set", "options.autoal.candidates=[typiclust, probcover, margin]", "--out", str(out)]
    assert cli.main(argv) == 0
    results = pd.read_parquet(out / "results.parquet")
    assert set(results["strategy"]) == {"typiclust", "probcover", "autoal"}
    assert (results.groupby("strategy")["n_labeled"].max() == 30).all()
    weights = pd.read_parquet(out / "strategy_weights.parquet")
    assert set(weights["candidate"]) == {"typiclust", "probcover", "margin"}
    assert math.isclose(weights["weight_pool"].sum(), 1.0, rel_tol=1e-4)
