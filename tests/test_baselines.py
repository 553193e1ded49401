"""The baselines AutoAL is judged against (albl, poal, noise_stability, dpp,
vaal, sraal, lpl, bgadl): each defining computation against a direct reference on small
arrays, then runs in the loop on digits (with an OOD pool), resumed mid-way."""
from __future__ import annotations

import copy
import functools
import itertools
import math

import numpy as np
import pandas as pd
import pytest
import ray
import torch
from sklearn.covariance import LedoitWolf
from sklearn.metrics import roc_auc_score

from autoal import config
from autoal.compute import distributed, scoring, training
from autoal.data import datasets
from autoal.errors import AutoALError
from autoal.engine.experiment import Experiment
from autoal.hooks import ScorerExtra
from autoal.hooks.perturbation import PerturbedModels
from autoal.hooks.state_adversary import AdversarialNets, AdversarialPayload, adversarial_loop, unlabeled_targets
from autoal.data.pool import OOD, UNLABELED, Pool, with_ood_classes
from autoal.runs.directory import ExperimentDir
from autoal.strategies import PoolStats, get
from autoal.strategies.adversarial import online_uncertainty
from autoal.strategies.albl import Exp4P, importance_weighted_accuracy
from autoal.strategies.dpp import greedy_map, kernel_columns, unit_rows
from autoal.strategies.noise import output_deviation
from autoal.strategies.poal import mahalanobis_confidence, pareto_front, pareto_layers, pareto_subset_search
from autoal.nets.models import ModelRecipe

pytestmark = pytest.mark.slow(seconds=150)   # started first, the longest first (tests/conftest.py)

BASELINES = ("albl", "poal", "noise_stability", "dpp", "vaal", "sraal", "lpl", "bgadl")


def softmax(z: np.ndarray) -> np.ndarray:
    z = np.exp(z - z.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def pool_stats(n: int = 30, c: int = 4, d: int = 5, t: int = 4, seed: int = 0) -> PoolStats:
    rng = np.random.default_rng(seed)
    return PoolStats(ids=rng.permutation(np.arange(500, 500 + 2 * n, 2)).astype(np.int64),
                     probs=softmax(rng.normal(size=(n, c)) * 2), mc_probs=softmax(rng.normal(size=(n, t, c)) * 2),
                     embedding=rng.normal(size=(n, d)), perturbation=softmax(rng.normal(size=(n, 3, c))),
                     unlabeled_score=rng.random(n))


# --- ALBL: EXP4.P ------------------------------------------------------------------

def test_exp4p_probabilities_put_the_floor_on_the_arms():
    bandit = Exp4P(4, horizon=50)
    bandit.log_w = np.array([0.0, 1.0, -2.0, 3.0])
    w = np.exp(bandit.log_w)
    np.testing.assert_allclose(bandit.probabilities(), (1 - 4 * bandit.p_min) * w / w.sum() + bandit.p_min)
    assert bandit.p_min == pytest.approx(1 / 40)
    with pytest.raises(ValueError):
        Exp4P(4, horizon=50, p_min=0.25)


def test_exp4p_update_matches_the_textbook_step_per_slot():
    rng = np.random.default_rng(0)
    n, slots, horizon, delta = 3, 5, 40, 0.1
    hit, v = rng.random((slots, n)), rng.random((slots, n)) * 5
    q, actions, reward = rng.random(slots) * 0.5 + 0.1, rng.integers(20, 30, slots), 0.7
    bandit = Exp4P(n, horizon, delta)
    bandit.update(hit, q, v, actions, reward)
    w = np.ones(n)
    for s in range(slots):       # Beygelzimer et al. 2011, Algorithm 1, one slot at a time
        for a in range(n):
            y_hat = hit[s, a] * reward / q[s]
            w[a] *= math.exp(bandit.p_min / 2 * (y_hat + v[s, a] * math.sqrt(math.log(n / delta)
                                                                              / (actions[s] * horizon))))
    p = (1 - n * bandit.p_min) * w / w.sum() + bandit.p_min
    np.testing.assert_allclose(bandit.probabilities(), p)


def test_importance_weighted_accuracy():
    correct = np.array([1, 0, 1, 1])
    assert importance_weighted_accuracy(correct, np.full(4, 1 / 10), np.full(4, 10)) == pytest.approx(0.75)
    # a sample drawn with half the uniform probability stands for twice as many pool samples
    assert importance_weighted_accuracy(np.array([1, 0]), np.array([0.05, 0.1]), np.array([10, 10])) == \
        pytest.approx(2 / 3)


def test_albl_slots_follow_the_exp4p_mixture_of_the_arms_advice():
    stats = pool_stats()
    albl = get("albl", arms=("entropy", "margin"), horizon=20)
    albl.bandit.log_w = np.array([1.0, 0.0, -1.0])
    p = albl.bandit.probabilities()
    picks, last = albl.choose(stats, 6, seed=3)
    assert len(set(picks.tolist())) == 6 and set(picks) <= set(stats.ids)
    # slot 0 by hand: uniform over the pool plus each arm's top sample
    top = [int(np.argmax(get(name).score(stats))) for name in ("entropy", "margin")]
    q = np.full(len(stats), p[2] / len(stats))
    for a, i in enumerate(top):
        q[i] += p[a]
    first = int(np.flatnonzero(stats.ids == picks[0])[0])
    assert last["q"][0] == pytest.approx(q[first])
    np.testing.assert_allclose(last["hit"][0], [first == top[0], first == top[1], 1 / len(stats)])
    np.testing.assert_allclose(last["v"][0], [1 / q[top[0]], 1 / q[top[1]], (1 / len(stats) / q).sum()])
    np.testing.assert_array_equal(last["actions"], len(stats) - np.arange(6))
    again = get("albl", arms=("entropy", "margin"), horizon=20)
    again.bandit.log_w = albl.bandit.log_w
    np.testing.assert_array_equal(again.select(stats, 6, seed=3), picks)


def test_albl_follows_a_dominant_arm():
    stats = pool_stats(n=200)
    albl = get("albl", arms=("entropy", "kmeans"), horizon=20)
    albl.bandit.log_w = np.array([30.0, 0.0, 0.0])
    picks = albl.select(stats, 10, seed=0)
    entropy_top = get("entropy").select(stats, 10)
    assert len(set(picks) & set(entropy_top)) >= 7      # p(entropy) = 1 - 2 p_min ~ 0.93 per slot


def test_albl_rewards_the_previous_round_slots_once_the_next_answers_arrive():
    stats = pool_stats()
    albl = get("albl", arms=("entropy", "margin"), horizon=20)
    _, slots = albl.choose(stats, 5, seed=1)
    first = {k: v.copy() for k, v in slots.items() if k != "probabilities"}
    r0 = albl.learn(np.array([1, 0, 1, 1, 0], dtype=bool), slots)
    np.testing.assert_array_equal(albl.bandit.log_w, 0.0)     # round 0's answers reward nothing yet
    assert r0 == pytest.approx(importance_weighted_accuracy([1, 0, 1, 1, 0], first["q"], first["actions"]))
    _, slots = albl.choose(stats, 5, seed=2)
    correct = np.array([1, 1, 0, 1, 1], dtype=bool)
    r1 = importance_weighted_accuracy(correct, slots["q"], slots["actions"])
    reference = Exp4P(3, 20)
    reference.update(first["hit"], first["q"], first["v"], first["actions"], r1)
    assert albl.learn(correct, slots) == pytest.approx(r1)
    np.testing.assert_allclose(albl.bandit.log_w, reference.log_w)
    restored = get("albl", arms=("entropy", "margin"), horizon=20)
    restored.load_state_dict(albl.state_dict())
    np.testing.assert_allclose(restored.bandit.probabilities(), albl.bandit.probabilities())
    np.testing.assert_array_equal(restored.pending["q"], albl.pending["q"])


# --- POAL: Pareto -------------------------------------------------------------------

def brute_front(f1, f2) -> np.ndarray:
    n = len(f1)
    return np.array([not any(f1[j] >= f1[i] and f2[j] >= f2[i] and (f1[j] > f1[i] or f2[j] > f2[i])
                             for j in range(n)) for i in range(n)])


@pytest.mark.parametrize("seed", range(5))
def test_pareto_front_matches_brute_force_with_ties(seed):
    rng = np.random.default_rng(seed)
    f1, f2 = rng.integers(0, 6, 40).astype(float), rng.integers(0, 6, 40).astype(float)   # many ties
    np.testing.assert_array_equal(pareto_front(f1, f2), brute_front(f1, f2))


def test_pareto_layers_peel_fronts_until_enough():
    rng = np.random.default_rng(1)
    f1, f2 = rng.random(50), rng.random(50)
    first = np.flatnonzero(brute_front(f1, f2))
    rest = np.setdiff1d(np.arange(50), first)
    second = rest[brute_front(f1[rest], f2[rest])]
    got = pareto_layers(f1, f2, len(first) + 1)
    assert set(got) == set(first) | set(second)


def test_pareto_subset_search_finds_the_front_of_subset_sums():
    rng = np.random.default_rng(2)
    f1, f2 = rng.random(8), rng.random(8)
    subsets, objectives = pareto_subset_search(f1, f2, 3, 3000, np.random.default_rng(0))
    every = [np.array(c) for c in itertools.combinations(range(8), 3)]
    sums = np.array([[f1[c].sum(), f2[c].sum()] for c in every])
    front = sums[brute_front(sums[:, 0], sums[:, 1])]
    assert {tuple(np.round(o, 12)) for o in objectives} == {tuple(np.round(o, 12)) for o in front}
    for s, o in zip(subsets, objectives):
        assert len(set(s.tolist())) == 3
        np.testing.assert_allclose(o, [f1[s].sum(), f2[s].sum()])


def test_mahalanobis_confidence_matches_direct_distances():
    rng = np.random.default_rng(3)
    labeled, labels = rng.normal(size=(30, 4)), np.repeat([0, 1, 2], 10)
    labels[[0, 1]] = OOD                                   # OOD answers are no class
    pool = rng.normal(size=(7, 4))
    known = labels >= 0
    means = {c: labeled[labels == c].mean(0) for c in (0, 1, 2)}
    centred = np.stack([labeled[i] - means[labels[i]] for i in np.flatnonzero(known)])
    precision = np.linalg.inv(LedoitWolf(assume_centered=True).fit(centred).covariance_)
    expected = [-min((x - m) @ precision @ (x - m) for m in means.values()) for x in pool]
    np.testing.assert_allclose(mahalanobis_confidence(pool, labeled, labels), expected, rtol=1e-6)


def test_poal_avoids_uncertain_out_of_distribution_samples():
    """ID samples near the labeled class means; OOD ones far away with the
    flattest predictions: entropy takes OOD samples, POAL takes ID ones."""
    rng = np.random.default_rng(4)
    centers = np.eye(3, 8) * 6
    labeled_y = np.repeat([0, 1, 2], 8)
    labeled = PoolStats(ids=np.arange(24), embedding=centers[labeled_y] + rng.normal(size=(24, 8)), labels=labeled_y)
    n_id, n_ood = 150, 50
    embedding = np.vstack([centers[rng.integers(0, 3, n_id)] + rng.normal(size=(n_id, 8)),
                           rng.normal(size=(n_ood, 8)) + 15])
    probs = np.vstack([softmax(rng.normal(size=(n_id, 3)) * 2), softmax(rng.normal(size=(n_ood, 3)) * 0.2)])
    stats = PoolStats(ids=np.arange(1000, 1000 + n_id + n_ood), probs=probs, embedding=embedding)
    ood = set(stats.ids[n_id:])
    poal = get("poal", iterations=500).select(stats, 10, labeled=labeled, seed=0)
    assert len(set(poal)) == 10
    assert len(set(get("entropy").select(stats, 10)) & ood) >= 8
    assert len(set(poal) & ood) <= 2


# --- noise stability ----------------------------------------------------------------

def test_output_deviation_matches_loop():
    stats = pool_stats(n=6)
    d = output_deviation(stats.perturbation, stats.probs)
    for i in range(6):
        ref = np.concatenate([(stats.perturbation[i, k] - stats.probs[i]) / np.linalg.norm(stats.probs[i])
                              for k in range(3)])
        np.testing.assert_allclose(d[i], ref)


def test_noise_stability_is_greedy_k_center_from_the_origin():
    stats = pool_stats(n=25)
    d = output_deviation(stats.perturbation, stats.probs)
    picks, centers = [], [np.zeros(d.shape[1])]
    for _ in range(6):            # farthest sample from the origin and the picks so far
        dist = np.array([min(np.sum((x - c) ** 2) for c in centers) for x in d])
        dist[picks] = -1
        picks.append(int(np.argmax(dist)))
        centers.append(d[picks[-1]])
    np.testing.assert_array_equal(get("noise_stability").select(stats, 6), stats.ids[picks])
    assert picks[0] == int(np.argmax(np.linalg.norm(d, axis=1)))


DIGITS_RECIPE = ModelRecipe("cnn", (1, 8, 8), 10, 0.3)


def task_state(recipe=DIGITS_RECIPE) -> dict:
    torch.manual_seed(0)
    return recipe.build().state_dict()


def test_perturbed_heads_match_a_direct_reference():
    state = task_state()
    head_state = {f"net.{k[5:]}": v for k, v in state.items() if k.startswith("head.")}
    net = PerturbedModels(DIGITS_RECIPE, False, 3, 1e-2, seed=7)
    net.load_state_dict(head_state)
    net.eval()
    e = torch.randn(5, 128)
    out = net(torch.zeros(5, 1, 8, 8), e)
    assert out.shape == (5, 3, 10)
    task = DIGITS_RECIPE.build()
    task.load_state_dict(state)
    task.eval()
    for k in range(3):
        head = copy.deepcopy(task.head)
        gen = torch.Generator().manual_seed(int(np.random.SeedSequence([7, k]).generate_state(1)[0]))
        noise = torch.randn(head.linear.weight.shape, generator=gen)
        with torch.no_grad():
            noise *= 1e-2 * head.linear.weight.norm() / noise.norm()
            head.linear.weight += noise
            torch.testing.assert_close(out[:, k], head(e).softmax(1))
            assert noise.norm().item() == pytest.approx(1e-2 * task.head.linear.weight.norm().item(), rel=1e-5)
    torch.testing.assert_close(out, net(torch.zeros(5, 1, 8, 8), e))      # the same K copies every batch


def test_perturbed_whole_models_deviate_less_for_smaller_noise():
    state = task_state()
    x = torch.rand(6, 1, 8, 8)
    task = DIGITS_RECIPE.build()
    task.load_state_dict(state)
    task.eval()
    with torch.no_grad():
        clean = task(x)[0].softmax(1)
    gaps = []
    for eps in (1e-4, 1e-1):
        net = PerturbedModels(DIGITS_RECIPE, True, 2, eps, seed=0)
        net.load_state_dict({f"net.{k}": v for k, v in state.items()})
        net.eval()
        gaps.append(float((net(x, None) - clean[:, None]).abs().max()))
    assert 0 < 100 * gaps[0] < gaps[1]


# --- DPP ------------------------------------------------------------------------------

def test_dpp_kernel_columns_match_the_explicit_kernel():
    rng = np.random.default_rng(5)
    q, f = rng.random(9) + 0.1, unit_rows(rng.normal(size=(9, 3)))
    explicit = np.diag(q) @ (f @ f.T + 0.05 * np.eye(9)) @ np.diag(q)
    np.testing.assert_allclose(kernel_columns(q, f, np.arange(9), 0.05), explicit)
    np.testing.assert_allclose(kernel_columns(q, f, np.array([4, 1]), 0.05), explicit[:, [4, 1]])


@pytest.mark.parametrize("k", [1, 4, 7])   # 7 > the 3 embedding dimensions: the ridge keeps L full rank
def test_dpp_greedy_map_matches_brute_force_greedy_determinants(k):
    rng = np.random.default_rng(k)
    q, f = rng.random(12) + 0.1, unit_rows(rng.normal(size=(12, 3)))
    L = kernel_columns(q, f, np.arange(12), 0.05)
    picks = []
    for _ in range(k):
        gains = [np.linalg.det(L[np.ix_(picks + [i], picks + [i])]) if i not in picks else -np.inf for i in range(12)]
        picks.append(int(np.argmax(gains)))
    np.testing.assert_array_equal(greedy_map(q, f, k, 0.05), picks)


def test_dpp_selects_exactly_k_distinct_ids():
    stats = pool_stats(n=40)
    for k in (1, 10, 40):
        picks = get("dpp").select(stats, k, seed=0)
        assert len(picks) == len(set(picks.tolist())) == k and set(picks) <= set(stats.ids)


# --- VAAL / SRAAL -----------------------------------------------------------------------

def test_online_uncertainty_matches_the_formula():
    probs = np.array([[0.7, 0.2, 0.1], [1.0, 0.0, 0.0], [1 / 3, 1 / 3, 1 / 3], [0.5, 0.5, 0.0]])
    expected = []
    for p in probs:
        top, c = p.max(), len(p)
        flat = np.array([top] + [(1 - top) / (c - 1)] * (c - 1))
        expected.append(1 - top * (flat.var() / p.var() if p.var() > 0 else 1.0))
    np.testing.assert_allclose(online_uncertainty(probs), expected)
    assert online_uncertainty(probs)[1] == 0.0 and online_uncertainty(probs)[2] == pytest.approx(2 / 3)


def test_vaal_and_sraal_query_the_most_unlabeled_looking_samples():
    stats = pool_stats()
    for name in ("vaal", "sraal"):
        np.testing.assert_array_equal(get(name).select(stats, 5), stats.ids[np.argsort(-stats.unlabeled_score)[:5]])


def test_sraal_relabels_unlabeled_states_with_the_task_models_uncertainty():
    state, x = task_state(), torch.rand(7, 1, 8, 8)
    net = DIGITS_RECIPE.build()
    net.load_state_dict(state)
    net.eval()
    with torch.no_grad():
        expected = torch.from_numpy(online_uncertainty(net(x)[0].softmax(1).numpy())).float()
    torch.testing.assert_close(unlabeled_targets(DIGITS_RECIPE, state, x, "cpu"), expected)
    assert (unlabeled_targets(DIGITS_RECIPE, None, x, "cpu") == 1).all()      # VAAL: plain unlabeled state


@pytest.mark.parametrize("workers", [0, 2])
def test_discriminator_learns_to_tell_unlabeled_from_labeled_samples(ray_local, workers):
    """Labeled digits 0-4, unlabeled 5-9: after training on Ray Train (local
    mode, or a DDP group of two) the discriminator rates the unlabeled samples
    more "unlabeled"."""
    train = datasets.load("digits", "data").subset("train")
    low = train.y < 5
    x_l, y_l, x_u = train.x[low][:100], train.y[low][:100], train.x[~low][:300]
    epochs = 10 * max(workers, 1)  # a DDP group of two takes half the steps per epoch
    payload = AdversarialPayload(DIGITS_RECIPE, 0, latent=8, epochs=epochs, lr=1e-3, batch_size=64, task_state=None,
                                 data=ray.put((x_l, y_l, x_u)))
    nets = AdversarialNets(DIGITS_RECIPE, 8)
    nets.load_state_dict(distributed.torch_state(
        distributed.run(adversarial_loop, payload, workers=workers, gpus=0, name="vaal-test")))
    nets.eval()
    with torch.no_grad():
        scores = nets(torch.from_numpy(np.concatenate([x_l, x_u])), None).numpy()
    assert roc_auc_score(np.r_[np.zeros(len(x_l)), np.ones(len(x_u))], scores) > 0.65


def test_perturbed_models_run_inside_the_scoring_actors(ray_local):
    """The fused pass evaluates the extra in its Ray Data actors as it does in process."""
    state = task_state()
    x = np.random.default_rng(0).random((40, 1, 8, 8), dtype=np.float32)
    ids = np.arange(40, dtype=np.int64)
    noise = ScorerExtra(build=functools.partial(PerturbedModels, DIGITS_RECIPE, False, 2, 1e-3, 0),
                        state={f"net.{k[5:]}": v for k, v in state.items() if k.startswith("head.")},
                        field="perturbation")
    needs = {"probs", "perturbation"}
    local = scoring.score(DIGITS_RECIPE, state, ids, x, needs, mc_samples=2, tasks=0, extra=noise)
    actors = scoring.score(DIGITS_RECIPE, state, ids, x, needs, mc_samples=2, tasks=1, chunk=16, extra=noise)
    assert local.perturbation.shape == (40, 2, 10)
    np.testing.assert_allclose(actors.perturbation, local.perturbation, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(actors.probs, local.probs, rtol=1e-5, atol=1e-7)


def test_adversarial_nets_rate_the_pool_in_the_scoring_pass():
    torch.manual_seed(0)
    extra = ScorerExtra(build=functools.partial(AdversarialNets, DIGITS_RECIPE, 8, 10),
                        state=AdversarialNets(DIGITS_RECIPE, 8, 10).state_dict(), field="unlabeled_score")
    x = np.random.default_rng(0).random((40, 1, 8, 8), dtype=np.float32)
    stats = scoring.score(DIGITS_RECIPE, task_state(), np.arange(40), x, {"unlabeled_score"}, mc_samples=2,
                          tasks=0, extra=extra)
    assert stats.unlabeled_score.shape == (40,) and ((stats.unlabeled_score > 0) & (stats.unlabeled_score < 1)).all()


# --- OOD pools ----------------------------------------------------------------------------

def test_ood_classes_mark_train_samples_drop_test_samples_and_renumber():
    pool = datasets.load("digits", "data")
    ood = with_ood_classes(pool, (7, 8, 9))
    assert ood.classes == 7
    train, test = ood.subset("train"), ood.subset("test")
    original = pool.y[np.isin(pool.ids, train.ids)]
    np.testing.assert_array_equal(train.y == OOD, np.isin(original, [7, 8, 9]))
    np.testing.assert_array_equal(train.y[train.y >= 0], original[~np.isin(original, [7, 8, 9])])
    assert set(test.y) == set(range(7)) and len(test) == int((~np.isin(pool.subset("test").y, [7, 8, 9])).sum())
    renumbered = with_ood_classes(pool, (0, 5))
    kept = renumbered.y >= 0
    np.testing.assert_array_equal(renumbered.y[kept], np.searchsorted([1, 2, 3, 4, 6, 7, 8, 9],
                                                                      pool.y[np.isin(pool.ids, renumbered.ids[kept])]))
    for bad in ((10,), tuple(range(9))):
        with pytest.raises(AutoALError):
            with_ood_classes(pool, bad)


def test_pool_accepts_the_ood_label_only_in_the_train_split():
    x = np.zeros((4, 2), np.float32)
    Pool("p", np.arange(4), x, np.array([0, OOD, 1, 1]), np.array(["train", "train", "test", "test"]), 2)
    for y in ([0, 1, OOD, 1], [0, -3, 1, 1], [0, 1, UNLABELED, 1]):   # unknown labels: train split only too
        with pytest.raises(AutoALError, match="outside"):
            Pool("p", np.arange(4), x, np.array(y), np.array(["train", "train", "test", "test"]), 2)


def test_bad_strategy_options_end_with_one_clear_message(tmp_path):
    bad = [({"options.noise_stability.scope": "layer"}, "options.noise_stability: noise_stability needs .* scope"),
           ({"options.noise_stability.samples": 2.5}, "options.noise_stability.samples must be an integer"),
           ({"options.poal.iterationz": 5}, "unknown option options.poal.iterationz; poal takes informativeness, "
                                            "iterations, pool_factor"),
           ({"options.entropy.x": 1}, "entropy takes no options"),
           ({"options.psychic": {}}, "options.psychic: unknown strategy 'psychic'"),
           ({"options": [1]}, "options must map strategy names to their options")]
    for overrides, message in bad:
        with pytest.raises(AutoALError, match=message):
            config.load(None, overrides)
    bad = [({"strategies": ["albl"], "options.albl.arms": ["nope"]}, "unknown strategy 'nope'"),
           ({"strategies": ["poal"], "options.poal.informativeness": "kmeans"}, "per-sample"),
           ({"strategies": ["vote"], "options.vote.candidates": ["margin", "vaal"]},
            "vote needs unlabeled_score, which only the round hook of vaal or sraal provides"),
           ({"ood_classes": [12]}, r"ood_classes \[12\]")]
    for i, (overrides, message) in enumerate(bad):
        with pytest.raises(AutoALError, match=message):
            Experiment.prepare(config.load(None, overrides), tmp_path / str(i))
        assert not (tmp_path / str(i)).exists()


def test_vaal_trains_on_a_seeded_sample_of_the_unlabeled_pool_and_rates_all_of_it(ray_local, tmp_path,
                                                                                   monkeypatch):
    """`sample` bounds the VAE's training set (an epoch is a pass over it: on a pool of millions,
    all of it would cost millions of steps); the scoring pass still rates every unlabeled sample."""
    from autoal.hooks import state_adversary

    trained, rated = [], []
    real_run, real_score = distributed.run, scoring.score

    def run(loop, payload, **kw):
        if loop is state_adversary.adversarial_loop:
            trained.append(len(payload.data[2]))
        return real_run(loop, payload, **kw)

    def score(recipe, state, ids, *a, extra=None, **kw):
        if extra is not None:   # the pass that carries the discriminator
            rated.append(len(ids))
        return real_score(recipe, state, ids, *a, extra=extra, **kw)
    monkeypatch.setattr(distributed, "run", run)
    monkeypatch.setattr(scoring, "score", score)
    ledgers = []
    for run in ("a", "b"):
        cfg = config.load(None, dict(LOOP, strategies=["vaal"], rounds=1, ood_classes=[],
                                     **{"options.vaal.sample": 30}))
        exp = Experiment.prepare(cfg, tmp_path / run, log=lambda m: None)
        exp.run()
        ledgers.append(exp.store.ledger)
    unlabeled = len(exp.train) - cfg.initial
    assert trained == [30, 30] and rated == [unlabeled, unlabeled]
    pd.testing.assert_frame_equal(ledgers[0], ledgers[1])   # the draw is seeded


# --- in the loop ----------------------------------------------------------------------------

LOOP = {"dataset": "digits", "strategies": list(BASELINES), "initial": 20, "batch": 10, "rounds": 3, "epochs": 2,
        "scoring_tasks": 0, "min_steps": 0,
        "mc_samples": 3, "ood_classes": [7, 8, 9], "options.albl.arms": ["entropy", "kmeans", "bald"],
        "options.noise_stability.samples": 3, "options.poal.iterations": 200, "options.vaal.epochs": 1,
        "options.sraal.epochs": 1, "options.bgadl.epochs": 2}


def test_every_baseline_runs_on_an_ood_digits_pool_and_resumes_with_its_state(ray_local, tmp_path):
    """Uninterrupted vs killed after each strategy's round 0 and re-run: the same
    labeled sets, and ALBL's bandit resumes from its checkpoint (round 1's
    answers reward the restored round-0 slots; round 2's picks follow)."""
    cfg = config.load(None, LOOP)
    full = Experiment.prepare(cfg, tmp_path / "full", log=lambda m: None)
    full.run()

    class Killed(Exception):
        pass

    killed = set()

    def kill_after_round_0(row):
        if row["round"] == 0 and row["strategy"] not in killed:
            killed.add(row["strategy"])
            raise Killed

    while True:
        try:
            cut = Experiment.prepare(cfg, tmp_path / "cut", log=lambda m: None, on_round=kill_after_round_0)
            cut.run()
            break
        except Killed:
            pass
    assert killed == set(BASELINES)
    columns = ["strategy", "seed", "round", "id", "label"]
    order = ["strategy", "round", "id"]
    ledger = cut.store.ledger[columns].sort_values(order).reset_index(drop=True)
    pd.testing.assert_frame_equal(ledger, full.store.ledger[columns].sort_values(order).reset_index(drop=True),
                                  check_dtype=False)
    for round_ in (1, 2, 3):
        saved = [ExperimentDir(d).load_state("albl", 0, round_) for d in (tmp_path / "full", tmp_path / "cut")]
        np.testing.assert_array_equal(saved[0]["log_w"], saved[1]["log_w"])
    assert (saved[0]["log_w"] != 0).any()         # later answers rewarded earlier slots

    results = full.store.results
    assert set(results["strategy"]) == set(BASELINES) and (results["accuracy"] > 0).all()
    queried = full.store.ledger.query("round > 0")
    ood = queried.assign(ood=queried["label"] == OOD).groupby("strategy")["ood"].sum()
    final = results.query("round == 3").set_index("strategy")["ood_queries"]
    pd.testing.assert_series_equal(final.sort_index(), ood.sort_index(), check_names=False, check_dtype=False)
    arms = pd.read_parquet(tmp_path / "full" / "albl_arms.parquet")
    assert set(arms["arm"]) == {"entropy", "kmeans", "bald", "uniform"}
    np.testing.assert_allclose(arms.groupby("round")["probability"].sum(), 1.0)
    assert (arms.groupby("round")["advised"].sum() >= 10).all()


def test_ood_answers_are_never_training_labels(ray_local, tmp_path, monkeypatch):
    trained_on = []
    real = training.fit
    monkeypatch.setattr(training, "fit", lambda recipe, train, *a, **kw: trained_on.append(train[1]) or
                        real(recipe, train, *a, **kw))
    cfg = config.load(None, dict(LOOP, strategies=["entropy"], rounds=1))
    exp = Experiment.prepare(cfg, tmp_path / "run", log=lambda m: None)
    exp.run()
    labels = exp.store.ledger.groupby("round")["label"]
    assert (exp.store.ledger["label"] == OOD).any()       # the oracle did answer "out of distribution"
    assert [len(y) for y in trained_on] == [int((labels.get_group(0) >= 0).sum()),
                                            int((exp.store.ledger["label"] >= 0).sum())]
    assert all((y >= 0).all() for y in trained_on)
