"""Fused scoring (in-process and on Ray Data) and task-model training on Ray Train."""
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import ray
import ray.train
import torch

from autoal.compute import distributed, scoring, training
from autoal.data import datasets
from autoal.nets import models
from autoal.compute.distributed import World
from autoal.strategies import PoolStats, get

NEEDS = frozenset({"probs", "mc_probs", "embedding", "pred_loss"})


@pytest.fixture(scope="module")
def digits():
    pool = datasets.load("digits", "unused")
    return pool.subset("train"), pool.subset("test")


@pytest.fixture(scope="module")
def recipe(digits):
    train, _ = digits
    return training.ModelRecipe("cnn", train.shape, 10, 0.3)


@pytest.fixture(scope="module")
def fitted(ray_local, digits, recipe):
    train, test = digits
    rows = np.arange(200)
    return training.fit(recipe, (train.x[rows], train.y[rows]), ray.put((test.x, test.y)), seed=0, epochs=15,
                        lr=1e-3, weight_decay=5e-4, batch_size=64)


def test_a_fit_whose_strategy_reads_no_predicted_loss_trains_every_other_weight_alike(digits, recipe):
    """Loss weight 0 leaves the loss-prediction module as initialised; it reads detached taps, so the
    classifier's weights and accuracy are bit for bit those of a fit that trains it."""
    train, test = digits
    rows = np.arange(60)
    trained, frozen = (training.fit(recipe, (train.x[rows], train.y[rows]), (test.x, test.y), seed=0, epochs=4,
                                    lr=1e-3, weight_decay=5e-4, batch_size=32, loss_weight=w) for w in (1.0, 0.0))
    torch.manual_seed(0)
    initial = recipe.build().state_dict()
    for name, value in frozen.state.items():
        if name.startswith("loss_head."):
            assert torch.equal(value, initial[name]) and not torch.equal(value, trained.state[name]), name
        else:
            assert torch.equal(value, trained.state[name]), name
    assert frozen.accuracy == trained.accuracy and frozen.train_loss == trained.train_loss


@dataclass(frozen=True)
class Seeded:
    seed: int


def threads_seen(payload: Seeded, world: World) -> int:
    return torch.get_num_threads()


def test_every_fit_takes_the_runs_torch_threads_and_its_workers_reserve_a_cpu_each():
    """`torch_threads` reaches a fit in the driver through the `workers` block (and nothing
    outside it), the caller's own count is restored, and a CPU worker reserves a CPU a thread."""
    from autoal.compute import runtime

    before = torch.get_num_threads()
    run = lambda: distributed.run(threads_seen, Seeded(0), workers=0, gpus=0.0, name="t")   # noqa: E731
    with distributed.workers(0, 0.0, threads=2):
        assert run() == 2 and torch.get_num_threads() == before
    assert run() == 1
    assert runtime.demand(2, 1, 0.0, threads=2) == {"CPU": 5.0, "GPU": 0.0}
    assert runtime.demand(2, 1, 0.5, threads=2) == {"CPU": 1.0, "GPU": 1.5}


def test_local_mode_training_learns_and_is_reproducible(ray_local, digits, recipe, fitted):
    train, test = digits
    assert fitted.accuracy > 0.7, "200 labeled digits give a decent classifier"
    rows = np.arange(200)
    again = training.fit(recipe, (train.x[rows], train.y[rows]), ray.put((test.x, test.y)), seed=0, epochs=15,
                         lr=1e-3, weight_decay=5e-4, batch_size=64)
    assert again.accuracy == fitted.accuracy
    assert all(torch.equal(again.state[k], fitted.state[k]) for k in fitted.state)


def test_min_steps_trains_a_small_labeled_set_for_more_epochs(ray_local, digits, recipe):
    train, test = digits
    rows, test_ref = np.arange(20), ray.put((test.x, test.y))
    short, floored = (training.fit(recipe, (train.x[rows], train.y[rows]), test_ref, seed=0, epochs=2, lr=1e-3,
                                   weight_decay=5e-4, batch_size=64, min_steps=steps) for steps in (0, 60))
    assert floored.train_loss < short.train_loss / 2, "60 steps fit 20 samples far better than 2"
    assert floored.accuracy > short.accuracy


def test_epoch_batches_cover_the_set_and_merge_a_short_remainder():
    def sizes(n, batch_size=64, world=World.local()):
        return [len(b) for b in training.shard_batches(n, batch_size, 0, 0, world)]

    assert sizes(200) == [64, 64, 72], "8 leftover samples join the last full batch"
    assert sorted(torch.cat(training.shard_batches(200, 64, 0, 0, World.local())).tolist()) == list(range(200))
    assert sizes(100) == [64, 36]
    assert sizes(5, 2) == [2, 3], "BatchNorm cannot train on a lone sample"
    ranks = [training.shard_batches(101, 16, 3, 1, World(2, rank, torch.device("cpu"))) for rank in (0, 1)]
    assert [len(torch.cat(r)) for r in ranks] == [51, 51], "ranks take equal shares, the set padded"
    assert set(torch.cat([torch.cat(r) for r in ranks]).tolist()) == set(range(101))


def test_the_runner_resolves_the_payload_seeds_and_gives_each_run_its_own_storage(ray_local):
    """Concurrent trials fit models under the same run names: each run must have its own storage.
    Every rank runs torch's deterministic kernels (without them, two fits with one seed differed
    by 2.5e-2 in a weight on an H200 and on a 16-core CPU: benchmarks/gpu_check.py)."""
    @dataclass(frozen=True)
    class Probe:   # local: pickled by value to the worker, like the loop
        seed: int
        data: object   # an array, or an object ref the runner resolves

    def probe(p: Probe, world: World) -> dict:   # nested: pickled by value to the worker
        return dict(path=ray.train.get_context().get_storage().experiment_fs_path, total=float(p.data.sum()),
                    draw=float(torch.rand(1)), world=(world.size, world.rank),
                    deterministic=torch.are_deterministic_algorithms_enabled())

    runs = [distributed.run(probe, Probe(7, ray.put(np.arange(4.0))), workers=1, gpus=0, name="task-s0-r1")
            for _ in range(2)]
    paths = [r["path"] for r in runs]
    assert paths[0] != paths[1] and all(Path(p).name == "task-s0-r1" for p in paths)
    assert not any(Path(p).parent.exists() for p in paths)
    assert runs[0]["total"] == 6.0 and runs[0]["world"] == (1, 0) and runs[0]["deterministic"]
    torch.manual_seed(7)
    assert runs[0]["draw"] == runs[1]["draw"] == float(torch.rand(1)), "the loop starts from the payload's seed"


def test_ray_train_worker_group_of_two_trains_and_evaluates(ray_local, digits, recipe):
    train, test = digits
    rows = np.arange(200)
    result = training.fit(recipe, (train.x[rows], train.y[rows]), ray.put((test.x, test.y)), seed=0, epochs=15,
                          lr=1e-3, weight_decay=5e-4, batch_size=64, workers=2)
    assert result.accuracy > 0.6
    assert np.isfinite(result.train_loss)


def test_fused_pass_on_ray_data_matches_the_in_process_pass(ray_local, digits, recipe, fitted):
    train, _ = digits
    ids, x = train.ids[300:700][::-1].copy(), train.x[300:700][::-1].copy()
    local = scoring.score(recipe, fitted.state, ids, x, NEEDS, mc_samples=6, tasks=0)
    remote = scoring.score(recipe, fitted.state, ids, x, NEEDS, mc_samples=6, tasks=2, chunk=64)
    assert np.array_equal(remote.ids, ids)
    for field in ("probs", "embedding", "pred_loss"):
        np.testing.assert_allclose(getattr(remote, field), getattr(local, field), rtol=1e-4, atol=1e-5)
    assert remote.mc_probs.shape == (len(ids), 6, 10)
    np.testing.assert_allclose(remote.mc_probs.sum(2), 1.0, rtol=1e-5)


def test_scoring_computes_only_what_is_needed_and_aligns_rows(digits, recipe, fitted):
    train, _ = digits
    ids, x = train.ids[:50], train.x[:50]
    stats = scoring.score(recipe, fitted.state, ids, x, get("entropy").needs, mc_samples=4, tasks=0)
    assert stats.probs.shape == (50, 10) and stats.mc_probs is None and stats.embedding is None
    shuffled = np.random.default_rng(0).permutation(50)
    again = scoring.score(recipe, fitted.state, ids[shuffled], x[shuffled], get("entropy").needs, mc_samples=4,
                          tasks=0, chunk=7)
    np.testing.assert_allclose(again.probs, stats.probs[shuffled], rtol=1e-5, atol=1e-6)


def test_mc_statistics_make_var_ratio_differ_from_least_confidence(digits, recipe, fitted):
    train, _ = digits
    stats = scoring.score(recipe, fitted.state, train.ids, train.x, NEEDS, mc_samples=10, tasks=0)
    var_ratio, least_conf = get("var_ratio").score(stats), get("least_confidence").score(stats)
    assert not np.allclose(var_ratio, least_conf)
    assert get("bald").score(stats).max() > 0


def test_lpl_ranking_loss_reaches_the_backbone_only_while_joint(digits, recipe):
    """Yoo & Kweon's joint training: the ranking loss's gradient reaches the backbone
    through the taps while `joint`, and nothing of it once they detach."""
    train, _ = digits
    torch.manual_seed(0)
    net = recipe.build()
    x, y = torch.tensor(train.x[:32]), torch.tensor(train.labels(np.arange(32)))
    for joint in (True, False):
        _, pred_loss, clean = net(x, joint=joint)
        ranking = models.loss_ranking(pred_loss, torch.nn.functional.cross_entropy(clean, y, reduction="none"))
        grads = torch.autograd.grad(ranking, list(net.backbone.parameters()), allow_unused=True)
        reached = any(g is not None and bool(g.abs().sum() > 0) for g in grads)
        assert reached == joint


def test_lpl_joint_fraction_changes_the_backbone_before_the_detach_point_and_not_after(ray_local, digits, recipe):
    """Same seed, ranking-loss weight 1 vs 0: with the taps detached from the start
    the backbone ends bit-identical; joint for the first 60% of the fit, it differs."""
    train, test = digits
    data, test_ref = (train.x[:96], train.y[:96]), ray.put((test.x[:50], test.y[:50]))

    def backbone(weight, fraction):
        state = training.fit(recipe, data, test_ref, seed=0, epochs=5, lr=1e-3, weight_decay=5e-4, batch_size=32,
                             loss_weight=weight, joint_fraction=fraction).state
        return {k: v for k, v in state.items() if k.startswith("backbone.")}

    detached, plain = backbone(1.0, 0.0), backbone(0.0, 0.0)
    assert all(torch.equal(detached[k], plain[k]) for k in plain)
    joint = backbone(1.0, 0.6)
    assert any(not torch.equal(joint[k], plain[k]) for k in plain if k.endswith("weight"))


def test_lpl_ranks_a_seeded_random_subset_of_the_pool_as_the_paper_does():
    rng = np.random.default_rng(0)
    stats = PoolStats(ids=np.arange(100, dtype=np.int64) * 3, pred_loss=rng.random(100))
    picks = get("lpl", subset_factor=3).select(stats, 10, seed=1)
    subset = np.random.default_rng(1).choice(100, size=30, replace=False)
    np.testing.assert_array_equal(picks, stats.ids[subset[np.argsort(-stats.pred_loss[subset])[:10]]])
    np.testing.assert_array_equal(get("lpl").select(stats, 10), stats.ids[np.argsort(-stats.pred_loss)[:10]])
    assert get("lpl", subset_factor=20).select(stats, 10, seed=1).tolist() == get("lpl").select(stats, 10).tolist()
