"""faiss k-means and nearest-centroid kernels, and Cluster-Margin, against brute-force references."""
from __future__ import annotations

import numpy as np
import pytest

from autoal.strategies import PoolStats, get
from autoal.strategies import cluster_margin, diversity
from autoal.strategies.autoal import AutoAL


def blobs(per_blob: int, centres: np.ndarray, seed: int = 0) -> np.ndarray:
    """per_blob unit-noise rows around each centre, blob by blob."""
    rng = np.random.default_rng(seed)
    return np.repeat(centres, per_blob, axis=0) + rng.normal(size=(per_blob * len(centres), centres.shape[1]))


CORNERS = 40.0 * np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 1]], dtype=float)


def brute_nearest_distinct(x: np.ndarray, centers: np.ndarray, ids: np.ndarray) -> list[int]:
    """Each center in turn takes its nearest untaken row by (squared distance, id)."""
    taken: set[int] = set()
    picks = []
    for c in centers:
        d = ((x - c) ** 2).sum(axis=1)
        i = min((i for i in range(len(x)) if i not in taken), key=lambda i: (d[i], ids[i]))
        taken.add(i)
        picks.append(i)
    return picks


# --- faiss k-means ---------------------------------------------------------

@pytest.mark.parametrize("seed", range(5))
def test_kmeans_picks_one_sample_per_well_separated_blob(seed):
    x = blobs(12, CORNERS, seed)
    stats = PoolStats(ids=np.arange(100, 100 + len(x)), embedding=x)
    picks = get("kmeans").select(stats, len(CORNERS), seed=seed)
    assert sorted(((picks - 100) // 12).tolist()) == list(range(len(CORNERS)))


def test_kmeans_centers_are_deterministic_per_seed():
    x = np.random.default_rng(0).normal(size=(300, 6))
    a, b = diversity.kmeans_centers(x, 7, seed=3), diversity.kmeans_centers(x, 7, seed=3)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, diversity.kmeans_centers(x, 7, seed=4))
    stats = PoolStats(ids=np.arange(300), embedding=x)
    np.testing.assert_array_equal(get("kmeans").select(stats, 7, seed=3), get("kmeans").select(stats, 7, seed=3))


def test_kmeans_centroids_are_the_means_of_their_clusters():
    x = blobs(20, CORNERS)
    centers = diversity.kmeans_centers(x, len(CORNERS), seed=0)
    own = ((x[:, None] - centers[None]) ** 2).sum(axis=2).argmin(axis=1)
    for j, c in enumerate(centers):
        np.testing.assert_allclose(c, x[own == j].mean(axis=0), atol=1e-4)


def test_nearest_center_matches_brute_force():
    rng = np.random.default_rng(1)
    x, centers = rng.normal(size=(500, 8)), rng.normal(size=(30, 8))
    expected = ((x[:, None] - centers[None]) ** 2).sum(axis=2).argmin(axis=1)
    np.testing.assert_array_equal(diversity.nearest_center(x, centers), expected)


def test_nearest_distinct_matches_brute_force_with_duplicates_and_id_ties(monkeypatch):
    monkeypatch.setattr(diversity, "NEIGHBOURS", 2)  # force the widening searches
    rng = np.random.default_rng(2)
    x = np.repeat(rng.integers(0, 4, size=(10, 2)).astype(float), 3, axis=0)  # exact ties everywhere
    ids = rng.permutation(len(x)) * 7
    centers = x[rng.choice(len(x), 12, replace=False)] + 0.25
    expected = brute_nearest_distinct(x, centers, ids)
    np.testing.assert_array_equal(diversity.nearest_distinct(x, centers, ids), expected)


# --- Cluster-Margin ----------------------------------------------------------

def brute_round_robin(cluster: np.ndarray, perm: np.ndarray, k: int) -> list[int]:
    """The paper's loop: clusters by (size, label), members in perm order, one per cluster per turn."""
    members: dict[int, list[int]] = {}
    for i in perm:
        members.setdefault(int(cluster[i]), []).append(int(i))
    queue = sorted(members, key=lambda c: (len(members[c]), c))
    picks: list[int] = []
    while len(picks) < k:
        for c in queue:
            if members[c] and len(picks) < k:
                picks.append(members[c].pop(0))
    return picks


@pytest.mark.parametrize("k", [1, 5, 13, 30])
def test_round_robin_matches_the_loop(k):
    cluster = np.random.default_rng(3).integers(0, 6, size=30) * 5
    perm = np.random.default_rng(9).permutation(30)
    got = cluster_margin.round_robin(cluster, k, np.random.default_rng(9))
    np.testing.assert_array_equal(got, brute_round_robin(cluster, perm, k))


def margin_pool(seed: int = 0) -> tuple[PoolStats, np.ndarray]:
    """Five well-separated blobs of 12 with margins rising with the row, and each row's blob."""
    x = blobs(12, CORNERS, seed)
    margin = np.linspace(0.0, 0.9, len(x))
    probs = np.stack([(1 + margin) / 2, (1 - margin) / 2], axis=1)
    ids = np.random.default_rng(seed).permutation(len(x)).astype(np.int64) + 500
    return PoolStats(ids=ids, probs=probs, embedding=x), np.arange(len(x)) // 12


def test_cluster_margin_takes_low_margins_round_robin_smallest_cluster_first():
    stats, blob = margin_pool()
    strategy = get("cluster_margin", margin_factor=2.0, n_clusters=len(CORNERS))
    picks = strategy.select(stats, 9, seed=1)
    rows = np.array([int(np.flatnonzero(stats.ids == i)[0]) for i in picks])
    assert set(rows.tolist()) <= set(range(18))  # k_m = 18: the lowest margins are rows 0..17
    # rows 0..17 lie in blob 0 (12 rows) and blob 1 (6 rows): the smaller blob 1 leads each turn
    assert blob[rows].tolist() == [1, 0] * 4 + [1]
    assert len(set(picks.tolist())) == 9


def test_cluster_margin_is_seeded():
    stats, _ = margin_pool()
    strategy = get("cluster_margin", margin_factor=3.0)
    first = strategy.select(stats, 6, seed=5)
    np.testing.assert_array_equal(first, strategy.select(stats, 6, seed=5))
    assert any(not np.array_equal(first, strategy.select(stats, 6, seed=s)) for s in range(6, 12))


def test_cluster_margin_with_factor_one_is_margin_top_k_as_a_set():
    stats, _ = margin_pool()
    picks = get("cluster_margin", margin_factor=1.0).select(stats, 10)
    assert set(picks.tolist()) == set(get("margin").select(stats, 10).tolist())


@pytest.mark.parametrize("options", [{"margin_factor": 0.5}, {"n_clusters": 0}])
def test_cluster_margin_rejects_bad_options(options):
    with pytest.raises(ValueError):
        get("cluster_margin", **options)


def test_cluster_margin_is_an_autoal_candidate():
    stats, _ = margin_pool()
    stats = PoolStats(ids=stats.ids, probs=stats.probs, embedding=stats.embedding,
                      search_weights=np.random.default_rng(0).dirichlet(np.ones(2), size=len(stats)))
    autoal = AutoAL(candidates=("margin", "cluster_margin"))
    assert {"probs", "embedding", "search_weights"} <= autoal.needs
    a = autoal.candidate_matrix(stats, 8, seed=2)
    assert a.shape == (len(stats), 2)
    np.testing.assert_array_equal(a.sum(axis=0), [8, 8])
    np.testing.assert_array_equal(a[:, 1], np.isin(stats.ids, get("cluster_margin").select(stats, 8, seed=2)))
    assert len(set(autoal.select(stats, 8, seed=2).tolist())) == 8
