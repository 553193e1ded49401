"""BGADL: BALD picks; a VAE-ACGAN trained on Ray Train turns each labeled pick into
synthetic samples that join the task model's training set, never the ledger."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import ray

from autoal import config
from autoal.compute import distributed, training
from autoal.data import datasets
from autoal.hooks import synthesis
from autoal.engine.experiment import Experiment
from autoal.runs.directory import ExperimentDir
from autoal.strategies import PoolStats, get

RECIPE = training.ModelRecipe("cnn", (1, 8, 8), 10, 0.3)
LOOP = {"dataset": "digits", "strategies": ["bgadl"], "initial": 20, "batch": 10, "rounds": 2, "epochs": 2,
        "min_steps": 0, "scoring_tasks": 0, "mc_samples": 3, "options.bgadl.samples": 2, "options.bgadl.epochs": 5}


def test_bgadl_picks_by_bald():
    stats = PoolStats(ids=np.arange(30), mc_probs=np.random.default_rng(0).dirichlet(np.ones(4), size=(30, 5)))
    np.testing.assert_array_equal(get("bgadl").select(stats, 6), get("bald").select(stats, 6))


@pytest.mark.parametrize("workers", [0, 2])
def test_generated_samples_have_the_pools_shape_a_valid_label_and_follow_their_source(ray_local, workers):
    """Trained in the driver or on a Ray Train DDP group of two, the generator gives
    `samples` synthetic samples per source, shaped like the pool, labeled with the
    source's label, and closer to their own source than to the other sources."""
    train = datasets.load("digits", "data").subset("train")
    x, y = train.x[:200], train.y[:200]
    payload = synthesis.GANPayload(RECIPE, seed=0, epochs=40 * max(workers, 1), min_steps=0, batch_size=64,
                                   data=ray.put((x, y)))
    state = distributed.torch_state(distributed.run(synthesis.vae_acgan_loop, payload, workers=workers, gpus=0,
                                                    name="bgadl-test"))
    sources, labels = train.x[200:220], train.y[200:220]
    generated, generated_y = synthesis.generate(RECIPE, state, sources, labels, samples=3, seed=1)
    assert generated.shape == (60, *train.shape) and generated.dtype == np.float32
    np.testing.assert_array_equal(generated_y, np.repeat(labels, 3))
    assert ((generated_y >= 0) & (generated_y < 10)).all() and np.isfinite(generated).all()
    distance = ((generated[:, None] - sources[None]) ** 2).reshape(60, 20, -1).sum(2)
    own = np.repeat(np.arange(20), 3)[:, None] == np.arange(20)[None]
    assert distance[own].mean() < 0.6 * distance[~own].mean()


def test_training_set_grows_by_generated_samples_while_the_ledger_does_not(ray_local, tmp_path, monkeypatch):
    trained_on = []
    real = training.fit
    monkeypatch.setattr(training, "fit", lambda recipe, train, *a, **kw: trained_on.append(train) or
                        real(recipe, train, *a, **kw))
    exp = Experiment.prepare(config.load(None, LOOP), tmp_path / "run", log=lambda m: None)
    exp.run()
    ledger, results = exp.store.ledger, exp.store.results
    assert len(ledger) == 20 + 2 * 10 and ledger["id"].is_unique      # the oracle's labels only
    assert [len(y) for _, y in trained_on] == [20, 30 + 20, 40 + 40]   # + 2 synthetic per labeled pick
    assert results["n_synthetic"].tolist() == [0, 20, 40]
    for (x, y), n_real in zip(trained_on[1:], (30, 40)):
        assert x.shape[1:] == exp.train.shape
        real_rows = exp.train.rows(ledger["id"].to_numpy()[:n_real])
        np.testing.assert_array_equal(x[:n_real], exp.train.x[real_rows])
        pool_sums = exp.train.x.reshape(len(exp.train), -1).sum(1)
        assert not np.isin(x[n_real:].reshape(len(x) - n_real, -1).sum(1), pool_sums).any()   # generated, not pool rows
    synthetic = pd.read_parquet(tmp_path / "run" / "synthetic.parquet")
    assert synthetic["source_id"].isin(ledger.query("round > 0")["id"]).all() and len(synthetic) == 20
    np.testing.assert_array_equal(trained_on[2][1][40:], np.repeat(synthetic["label"].to_numpy(), 2))


def test_a_bgadl_run_resumes_after_a_kill_with_the_same_ledger(ray_local, tmp_path):
    cfg = config.load(None, LOOP)
    full = Experiment.prepare(cfg, tmp_path / "full", log=lambda m: None)
    full.run()

    class Killed(Exception):
        pass

    def kill_after_round_0(row):
        if row["round"] == 0:
            raise Killed

    with pytest.raises(Killed):   # round 1 then trains on the restored synthetic samples and queries again
        Experiment.prepare(cfg, tmp_path / "cut", log=lambda m: None, on_round=kill_after_round_0).run()
    cut = Experiment.prepare(cfg, tmp_path / "cut", log=lambda m: None)
    cut.run()
    pd.testing.assert_frame_equal(cut.store.ledger, full.store.ledger, check_dtype=False)
    saved = [ExperimentDir(d).load_state("bgadl", 0, 2) for d in (tmp_path / "full", tmp_path / "cut")]
    np.testing.assert_array_equal(saved[0]["x"], saved[1]["x"])
    assert cut.store.results["n_synthetic"].tolist() == [0, 20, 40]
