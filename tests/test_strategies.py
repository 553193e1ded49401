"""Strategies against direct reference computations on tiny arrays."""
from __future__ import annotations

import math
import tracemalloc
import warnings

import numpy as np
import pytest

from autoal.strategies import PoolStats, Strategy, get, names, register
from autoal.strategies import base, diversity

ALL = {"random", "entropy", "margin", "least_confidence", "var_ratio", "mean_std",
       "bald", "lpl", "kmeans", "coreset", "badge", "cluster_margin", "typiclust", "probcover"}


def softmax(z: np.ndarray) -> np.ndarray:
    z = np.exp(z - z.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def pool(n: int = 40, c: int = 4, t: int = 6, d: int = 5, seed: int = 0) -> PoolStats:
    rng = np.random.default_rng(seed)
    return PoolStats(
        ids=rng.permutation(np.arange(1000, 1000 + 3 * n, 3)).astype(np.int64),
        probs=softmax(rng.normal(size=(n, c)) * 2),
        mc_probs=softmax(rng.normal(size=(n, t, c)) * 2),
        embedding=rng.normal(size=(n, d)),
        pred_loss=rng.random(n),
        search_weights=rng.random((n, 3)),
    )


def ref_entropy(p) -> float:
    return -sum(x * math.log(x) for x in p if x > 0)


# --- registry ---------------------------------------------------------------

def test_names_lists_every_strategy_sorted():
    assert ALL <= set(names())
    assert names() == sorted(names())


def test_get_unknown_name_lists_known_names():
    with pytest.raises(KeyError) as err:
        get("no_such_strategy")
    for name in ALL:
        assert name in str(err.value)


def test_needs_are_stat_fields():
    for name in ALL:
        assert get(name).needs <= set(base.STAT_FIELDS), name


# --- contract shared by every strategy --------------------------------------

def only_needed(stats: PoolStats, strategy: Strategy) -> PoolStats:
    """stats with every field the strategy does not declare set to None."""
    return PoolStats(ids=stats.ids, **{f: getattr(stats, f) if f in strategy.needs else None
                                       for f in base.STAT_FIELDS})


@pytest.mark.parametrize("name", sorted(ALL))
@pytest.mark.parametrize("k", [1, 7, 40])
def test_select_returns_k_distinct_pool_ids_deterministically(name, k):
    strategy = get(name)
    stats = only_needed(pool(), strategy)
    labeled = only_needed(pool(n=10, seed=1), strategy)
    picks = strategy.select(stats, k, labeled=labeled, seed=3)
    assert picks.dtype == np.int64
    assert len(picks) == k == len(set(picks.tolist()))
    assert set(picks.tolist()) <= set(stats.ids.tolist())
    np.testing.assert_array_equal(picks, strategy.select(stats, k, labeled=labeled, seed=3))


@pytest.mark.parametrize("name", sorted(ALL))
@pytest.mark.parametrize("k", [0, -1, 41])
def test_select_rejects_bad_k(name, k):
    strategy = get(name)
    with pytest.raises(ValueError):
        strategy.select(only_needed(pool(), strategy), k)


def test_diversity_strategies_have_no_per_sample_score():
    for name in ("random", "kmeans", "coreset", "badge", "cluster_margin", "typiclust", "probcover"):
        assert not get(name).per_sample
        with pytest.raises(NotImplementedError):
            get(name).score(pool())


# --- uncertainty scores vs per-sample loops ---------------------------------

def test_entropy_matches_loop_and_handles_zeros():
    stats = pool()
    expected = [ref_entropy(p) for p in stats.probs]
    np.testing.assert_allclose(get("entropy").score(stats), expected, rtol=1e-9)
    one_hot = PoolStats(ids=np.arange(2), probs=np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0]]))
    np.testing.assert_allclose(get("entropy").score(one_hot), [0.0, math.log(2)], atol=1e-9)


def test_margin_matches_loop():
    stats = pool()
    expected = [-(sorted(p)[-1] - sorted(p)[-2]) for p in stats.probs]
    np.testing.assert_allclose(get("margin").score(stats), expected, rtol=1e-12)


def test_least_confidence_matches_loop():
    stats = pool()
    np.testing.assert_allclose(get("least_confidence").score(stats), [1 - max(p) for p in stats.probs])


def test_var_ratio_matches_loop():
    stats = pool()
    expected = []
    for samples in stats.mc_probs:
        votes = [int(np.argmax(p)) for p in samples]
        expected.append(1 - max(votes.count(v) for v in set(votes)) / len(votes))
    np.testing.assert_allclose(get("var_ratio").score(stats), expected)


def test_mean_std_matches_loop():
    stats = pool()
    expected = []
    for samples in stats.mc_probs:
        t, c = samples.shape
        stds = []
        for j in range(c):
            mean = sum(samples[s, j] for s in range(t)) / t
            stds.append(math.sqrt(sum((samples[s, j] - mean) ** 2 for s in range(t)) / t))
        expected.append(sum(stds) / c)
    np.testing.assert_allclose(get("mean_std").score(stats), expected, rtol=1e-9)


def test_bald_matches_loop():
    stats = pool()
    expected = []
    for samples in stats.mc_probs:
        mean = samples.mean(axis=0)
        expected.append(ref_entropy(mean) - sum(ref_entropy(p) for p in samples) / len(samples))
    np.testing.assert_allclose(get("bald").score(stats), expected, rtol=1e-9, atol=1e-12)


def test_bald_is_zero_when_mc_samples_agree():
    mc = np.repeat(softmax(np.random.default_rng(0).normal(size=(5, 1, 3))), 4, axis=1)
    np.testing.assert_allclose(get("bald").score(PoolStats(ids=np.arange(5), mc_probs=mc)), 0.0, atol=1e-12)


def test_var_ratio_is_not_least_confidence_when_mc_samples_disagree():
    # Sample 0: every MC sample is confident but they vote for different classes,
    # so var_ratio is high while the prediction (mean) looks fairly confident.
    # Sample 1: every MC sample is unsure but all vote for class 0.
    disagree = np.array([[0.9, 0.05, 0.05], [0.9, 0.05, 0.05], [0.05, 0.9, 0.05], [0.05, 0.05, 0.9]])
    agree = np.array([[0.4, 0.35, 0.25]] * 4)
    mc = np.stack([disagree, agree])
    stats = PoolStats(ids=np.arange(2), probs=mc.mean(axis=1), mc_probs=mc)
    var_ratio = get("var_ratio").score(stats)
    np.testing.assert_allclose(var_ratio, [0.5, 0.0])
    assert not np.allclose(var_ratio, get("least_confidence").score(stats))
    assert not np.allclose(var_ratio, 1 - mc.max(axis=2).mean(axis=1))
    assert get("var_ratio").select(stats, 1)[0] == 0
    assert get("least_confidence").select(stats, 1)[0] == 1


def test_lpl_takes_highest_predicted_loss():
    stats = PoolStats(ids=np.array([5, 6, 7, 8]), pred_loss=np.array([0.1, 2.0, 0.3, 1.0]))
    np.testing.assert_array_equal(get("lpl").select(stats, 2), [6, 8])


def test_ties_go_to_the_smaller_id():
    probs = np.full((5, 2), 0.5)
    stats = PoolStats(ids=np.array([9, 3, 7, 1, 5]), probs=probs)
    for name in ("entropy", "margin", "least_confidence"):
        np.testing.assert_array_equal(get(name).select(stats, 3), [1, 3, 5])


def test_uncertainty_select_is_top_k_of_score():
    stats = pool()
    for name in ("entropy", "margin", "least_confidence", "var_ratio", "mean_std", "bald", "lpl"):
        scores = get(name).score(stats)
        expected = sorted(range(len(stats)), key=lambda i: (-scores[i], stats.ids[i]))[:5]
        np.testing.assert_array_equal(get(name).select(stats, 5), stats.ids[expected])


# --- random -----------------------------------------------------------------

def test_random_is_deterministic_per_seed_and_varies_across_seeds():
    stats = PoolStats(ids=np.arange(100, 200))
    random = get("random")
    np.testing.assert_array_equal(random.select(stats, 10, seed=1), random.select(stats, 10, seed=1))
    assert not np.array_equal(random.select(stats, 10, seed=1), random.select(stats, 10, seed=2))


# --- kmeans -----------------------------------------------------------------

def test_kmeans_picks_the_nearest_sample_to_each_centroid():
    rng = np.random.default_rng(0)
    blobs = np.repeat(rng.normal(size=(4, 3)) * 20, 10, axis=0) + rng.normal(size=(40, 3))
    stats = PoolStats(ids=np.arange(500, 540), embedding=blobs)
    picks = get("kmeans").select(stats, 4, seed=7)
    centers = diversity.kmeans_centers(blobs, 4, seed=7)
    dist = ((blobs[:, None, :] - centers[None, :, :]) ** 2).sum(axis=2)
    np.testing.assert_array_equal(picks, stats.ids[dist.argmin(axis=0)])
    assert len(set((picks // 10).tolist())) == 4  # one per blob


def test_nearest_distinct_fills_duplicates_with_next_nearest_unpicked():
    x = np.array([[0.0], [1.0], [3.0], [10.0]])
    centers = np.array([[0.1], [0.2], [0.3], [9.0]])
    np.testing.assert_array_equal(diversity.nearest_distinct(x, centers), [0, 1, 2, 3])


def test_kmeans_with_duplicate_points_still_returns_distinct_ids():
    stats = PoolStats(ids=np.arange(6), embedding=np.zeros((6, 2)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scikit-learn: fewer distinct points than clusters
        picks = get("kmeans").select(stats, 3)
    assert len(set(picks.tolist())) == 3


# --- coreset ----------------------------------------------------------------

def brute_force_k_center(x, k, labeled=None):
    dist = np.sqrt(((x[:, None, :] - x[None, :, :]) ** 2).sum(axis=2))
    if labeled is None:
        picks = [int(np.argmin(((x - x.mean(axis=0)) ** 2).sum(axis=1)))]
        nearest = dist[:, picks[0]].copy()
    else:
        picks = []
        nearest = np.sqrt(((x[:, None, :] - labeled[None, :, :]) ** 2).sum(axis=2)).min(axis=1)
    while len(picks) < k:
        masked = nearest.copy()
        masked[picks] = -1
        picks.append(int(np.argmax(masked)))
        nearest = np.minimum(nearest, dist[:, picks[-1]])
    return picks


@pytest.mark.parametrize("with_labeled", [False, True])
def test_coreset_matches_brute_force_k_center(with_labeled):
    stats, labeled = pool(n=60, d=4), pool(n=12, d=4, seed=5)
    picks = get("coreset").select(stats, 15, labeled=labeled if with_labeled else None)
    expected = brute_force_k_center(stats.embedding, 15, labeled.embedding if with_labeled else None)
    np.testing.assert_array_equal(picks, stats.ids[expected])


def peak_bytes(fn, *args, **kwargs) -> int:
    tracemalloc.start()
    try:
        fn(*args, **kwargs)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_coreset_never_holds_a_pool_by_labeled_matrix(monkeypatch):
    monkeypatch.setattr(diversity, "CHUNK_ELEMENTS", 1 << 15)
    rng = np.random.default_rng(0)
    n = l = 2000
    stats = PoolStats(ids=np.arange(n), embedding=rng.normal(size=(n, 4)))
    labeled = PoolStats(ids=np.arange(l), embedding=rng.normal(size=(l, 4)))
    assert peak_bytes(get("coreset").select, stats, 20, labeled=labeled) < n * l * 8 / 8


def test_min_sq_dist_to_set_in_blocks_matches_full_matrix(monkeypatch):
    monkeypatch.setattr(diversity, "CHUNK_ELEMENTS", 60)  # 30 rows: blocks of 2 centers
    x, centers = pool(n=30, d=3).embedding, pool(n=25, d=3, seed=2).embedding
    np.testing.assert_allclose(
        diversity.min_sq_dist_to_set(x, centers),
        ((x[:, None] - centers[None]) ** 2).sum(axis=2).min(axis=1), rtol=1e-9)


def test_coreset_never_repicks_when_pool_has_duplicates():
    x = np.array([[0.0, 0.0]] * 3 + [[1.0, 1.0]] * 3)
    stats = PoolStats(ids=np.arange(6), embedding=x)
    picks = get("coreset").select(stats, 5)
    assert len(set(picks.tolist())) == 5


# --- badge ------------------------------------------------------------------

def explicit_gradient_embeddings(probs, embedding):
    rows = []
    for p, e in zip(probs, embedding):
        a = p.copy()
        a[np.argmax(p)] -= 1
        rows.append(np.kron(a, e))
    return np.array(rows)


def test_badge_factorised_distances_match_explicit_gradient_embeddings():
    stats = pool(n=25, c=3, d=4)
    g = explicit_gradient_embeddings(stats.probs, stats.embedding)
    centers = np.array([3, 11, 20])
    explicit = ((g[:, None, :] - g[centers][None, :, :]) ** 2).sum(axis=2).min(axis=1)
    factorised = diversity.gradient_sq_distances(stats.probs, stats.embedding, centers)
    np.testing.assert_allclose(factorised, explicit, rtol=1e-9, atol=1e-12)
    assert np.all(factorised[centers] <= 1e-12)


def test_badge_first_pick_is_largest_gradient_norm():
    stats = pool(n=30, c=3, d=4)
    g = explicit_gradient_embeddings(stats.probs, stats.embedding)
    picks = get("badge").select(stats, 5, seed=0)
    assert picks[0] == stats.ids[np.argmax(np.linalg.norm(g, axis=1))]


def test_badge_never_forms_gradient_embeddings():
    rng = np.random.default_rng(0)
    n, c, d = 2000, 10, 64
    stats = PoolStats(ids=np.arange(n), probs=softmax(rng.normal(size=(n, c))), embedding=rng.normal(size=(n, d)))
    assert peak_bytes(get("badge").select, stats, 20) < n * c * d * 8 / 4


def test_badge_samples_second_center_proportional_to_squared_distance():
    stats = pool(n=5, c=3, d=2, seed=4)
    first = get("badge").select(stats, 1)[0]
    first_row = int(np.flatnonzero(stats.ids == first)[0])
    d2 = diversity.gradient_sq_distances(stats.probs, stats.embedding, [first_row])
    expected = d2 / d2.sum()
    seconds = [get("badge").select(stats, 2, seed=s)[1] for s in range(3000)]
    observed = np.array([seconds.count(i) for i in stats.ids]) / len(seconds)
    assert observed[first_row] == 0
    np.testing.assert_allclose(observed, expected, atol=0.03)
    assert expected.max() < 0.9  # the test distinguishes sampling from argmax


def test_badge_falls_back_to_uniform_when_all_distances_vanish():
    stats = PoolStats(ids=np.arange(8), probs=np.tile([[0.6, 0.4]], (8, 1)), embedding=np.ones((8, 3)))
    picks = {tuple(get("badge").select(stats, 4, seed=s).tolist()) for s in range(6)}
    assert all(len(set(p)) == 4 for p in picks)
    assert len(picks) > 1  # seeded uniform choice, not a fixed fallback


def test_register_adds_a_strategy_by_name():
    @register
    class Constant(Strategy):
        name = "test_constant"

        def score(self, stats):
            return np.zeros(len(stats))

    try:
        np.testing.assert_array_equal(get("test_constant").select(PoolStats(ids=np.array([4, 2, 3])), 2), [2, 3])
    finally:
        base._REGISTRY.pop("test_constant")


def test_composite_needs_follow_each_instances_options():
    """A strategy built on others needs what its parts need, per instance; the class holds no stale set."""
    few, many = get("autoal", candidates=("entropy",)), get("autoal", candidates=("kmeans", "coreset"))
    assert few.needs == {"search_weights", "probs"} and not few.needs_labeled
    assert many.needs == {"search_weights", "embedding"} and many.needs_labeled
    assert get("vote", candidates=("bald",)).needs == {"mc_probs"}
    assert get("dpp", informativeness="bald").needs == {"embedding", "mc_probs"}
    assert get("albl", arms=("margin",)).needs == {"probs"}
    assert not isinstance(type(few).needs, frozenset)
