"""The AL loop: outputs, paired seeds, resume after a kill, AUBC."""
import numpy as np
import pandas as pd
import pytest

from autoal import config
from autoal.engine import experiment, rounds
from autoal.runs import metrics
from autoal.engine.experiment import Experiment

TINY = dict(dataset="digits", strategies=["random", "entropy", "coreset"], initial=20, batch=10, rounds=2,
            seeds=[0, 1], epochs=5, min_steps=0, scoring_tasks=0)


def run(out, **overrides):
    return Experiment.prepare(config.load(None, {**TINY, **overrides}), out, log=lambda _: None).run()


@pytest.fixture(scope="module")
def finished(ray_local, tmp_path_factory):
    out = tmp_path_factory.mktemp("exp") / "run"
    run(out)
    return out


def test_outputs_have_one_row_per_strategy_seed_round(finished):
    results = pd.read_parquet(finished / "results.parquet")
    assert len(results) == 3 * 2 * 3
    assert {"strategy", "seed", "round", "n_labeled", "accuracy", "train_s", "score_s", "select_s"} <= set(results)
    assert sorted(results["n_labeled"].unique()) == [20, 30, 40]
    assert (finished / "results.csv").exists() and (finished / "curves.png").stat().st_size > 10_000


def test_ledger_holds_distinct_ids_with_their_true_labels(finished):
    ledger = pd.read_parquet(finished / "ledger.parquet")
    assert list(ledger.columns) == ["strategy", "seed", "round", "id", "label"]
    for (_, _), rows in ledger.groupby(["strategy", "seed"]):
        assert rows["id"].is_unique and len(rows) == 40
        assert sorted(rows["round"].unique()) == [0, 1, 2]
    pool = experiment.datasets.load("digits", "unused")
    assert np.array_equal(ledger["label"].to_numpy(), pool.y[pool.rows(ledger["id"].to_numpy())])


def test_paired_seeds_share_the_initial_pool_and_differ_across_seeds(finished):
    ledger = pd.read_parquet(finished / "ledger.parquet")
    initial = {key: set(rows["id"]) for key, rows in ledger[ledger["round"] == 0].groupby(["strategy", "seed"])}
    assert initial[("random", 0)] == initial[("entropy", 0)] == initial[("coreset", 0)]
    assert initial[("random", 0)] != initial[("random", 1)]
    results = pd.read_parquet(finished / "results.parquet")
    round0 = results[results["round"] == 0].groupby("seed")["accuracy"].nunique()
    assert (round0 == 1).all(), "same pool and init at round 0 give the same model for every strategy"


def test_resume_after_a_kill_gives_the_ledger_of_an_uninterrupted_run(ray_local, finished, tmp_path, monkeypatch):
    out = tmp_path / "killed"
    calls = {"n": 0}
    real = experiment.ExperimentDir.append_ledger

    def dies_on_fourth_query(self, rows):
        calls["n"] += 1
        if calls["n"] == 5:  # after the initial pool and a few rounds: mid-experiment
            raise KeyboardInterrupt
        real(self, rows)

    monkeypatch.setattr(experiment.ExperimentDir, "append_ledger", dies_on_fourth_query)
    with pytest.raises(KeyboardInterrupt):
        run(out)
    monkeypatch.undo()
    partial = pd.read_parquet(out / "results.parquet")
    assert 0 < len(partial) < 18
    run(out)
    key = ["strategy", "seed", "round", "id"]
    resumed = pd.read_parquet(out / "ledger.parquet").sort_values(key).reset_index(drop=True)
    whole = pd.read_parquet(finished / "ledger.parquet").sort_values(key).reset_index(drop=True)
    pd.testing.assert_frame_equal(resumed, whole)
    assert len(pd.read_parquet(out / "results.parquet")) == 18


def test_rerunning_a_finished_experiment_does_no_work(ray_local, finished, monkeypatch):
    monkeypatch.setattr(rounds.training, "fit", lambda *a, **k: pytest.fail("retrained a finished run"))
    results = run(finished)
    assert len(results) == 18


def test_kcenter_initial_pool_is_spread_out(ray_local):
    cfg = config.load(None, {**TINY, "initial_method": "kcenter"})
    train = experiment.datasets.load("digits", "unused").subset("train")
    chosen = rounds.initial_pool(train, cfg.initial, cfg.initial_method, seed=0)
    assert len(np.unique(chosen)) == 20
    rng_pick = rounds.initial_pool(train, cfg.initial, "random", seed=0)
    spread = lambda ids: np.min([np.linalg.norm(train.x[train.rows([a])] - train.x[train.rows([b])])
                                 for i, a in enumerate(ids) for b in ids[i + 1:]])
    assert spread(chosen) > spread(rng_pick)


def test_aubc_is_the_trapezoid_area_over_the_queried_budget():
    assert metrics.aubc([10, 20, 40], [0.5, 0.7, 0.9]) == pytest.approx(((0.5 + 0.7) / 2 * 10 + (0.7 + 0.9) / 2 * 20) / 30)
    assert metrics.aubc([10], [0.4]) == 0.4
    frame = pd.DataFrame({"strategy": "a", "seed": [0, 0, 1, 1], "round": [0, 1, 0, 1],
                          "n_labeled": [10, 20, 10, 20], "accuracy": [0.2, 0.4, 0.4, 0.6]})
    table = metrics.summary(frame)
    assert table.loc[0, "aubc_mean"] == pytest.approx(0.4)
    assert table.loc[0, "f_acc_mean"] == pytest.approx(0.5)


def test_telemetry_of_a_rerun_round_replaces_the_killed_attempt(tmp_path):
    store = experiment.ExperimentDir(tmp_path / "t").open(config.load(None, TINY))
    first = [{"strategy": "a", "seed": 0, "round": 0, "candidate": c, "weight_pool": 0.1} for c in "xy"]
    store.append_rows("strategy_weights", first)
    store.append_rows("strategy_weights", [dict(r, weight_pool=0.9) for r in first])
    store.append_rows("strategy_weights", [dict(first[0], round=1)])
    table = pd.read_parquet(tmp_path / "t" / "strategy_weights.parquet")
    assert len(table) == 3
    assert table[table["round"] == 0]["weight_pool"].tolist() == [0.9, 0.9]
