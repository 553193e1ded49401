"""Paired differences and the penalty matrix on constructed result tables whose answer is known."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from autoal import cli
from autoal.runs import compare
from autoal.report import report


def table(offsets: dict[str, np.ndarray], rounds: int = 4, dataset: str = "toy", seed0: int = 0) -> pd.DataFrame:
    """Results rows: every strategy's accuracy is one shared per-seed curve plus its offset for the seed
    (offsets[s][seed], or [seed, round] for one per round), so its AUBC difference is known exactly."""
    rng = np.random.default_rng(seed0)
    n_seeds = len(next(iter(offsets.values())))
    base = 0.5 + np.cumsum(rng.random((n_seeds, rounds + 1)) * 0.05, axis=1)
    rows = []
    for strategy, offset in offsets.items():
        offset = np.asarray(offset, dtype=float)
        per_round = offset if offset.ndim == 2 else np.repeat(offset[:, None], rounds + 1, axis=1)
        for seed in range(n_seeds):
            for r in range(rounds + 1):
                rows.append(dict(dataset=dataset, strategy=strategy, seed=seed, round=r, n_labeled=20 + 10 * r,
                                 accuracy=base[seed, r] + (per_round[seed, r] if r > 0 else 0.0)))
    return pd.DataFrame(rows)


def test_a_strategy_better_on_every_seed_is_significantly_better_and_wins_every_round():
    rng = np.random.default_rng(1)
    gain = 0.03 + rng.normal(0, 0.01, 10)
    pairs = compare.paired_differences(table({"plain": np.zeros(10), "good": gain}))
    (row,) = pairs.to_dict("records")
    assert (row["a"], row["b"], row["seeds"]) == ("good", "plain", 10)
    assert row["mean"] == pytest.approx(gain.mean() * (1 - 0.5 * 10 / 40), rel=1e-9)
    assert row["ci_low"] > 0 and row["p_t"] < 0.05 and row["p_wilcoxon"] < 0.05 and row["verdict"] == "a > b"
    penalty = compare.penalty_matrix(table({"plain": np.zeros(10), "good": gain}))
    assert penalty.loc["good", "plain"] == pytest.approx(1.0) and penalty.loc["plain", "good"] == 0.0


def test_the_aubc_difference_and_its_interval_are_the_t_interval_of_the_known_differences():
    """A constant offset from round 1 on moves AUBC by offset x (1 - half the first step / budget)."""
    rng = np.random.default_rng(2)
    gain = rng.normal(0.01, 0.02, 8)
    (row,) = compare.paired_differences(table({"x": gain, "y": np.zeros(8)})).to_dict("records")
    d = gain * (1 - 0.5 * 10 / 40)   # round 0 shares the initial pool: the first trapezoid gets half the offset
    sign = 1 if row["a"] == "x" else -1
    assert sign * row["mean"] == pytest.approx(d.mean(), rel=1e-9)
    ci = stats.ttest_1samp(d, 0.0).confidence_interval(0.95)
    assert sorted([sign * row["ci_low"], sign * row["ci_high"]]) == pytest.approx([ci.low, ci.high], rel=1e-9)
    assert row["p_t"] == pytest.approx(stats.ttest_rel(d, np.zeros(8)).pvalue, rel=1e-9)
    assert row["p_wilcoxon"] == pytest.approx(stats.wilcoxon(d).pvalue, rel=1e-9)


def test_the_interval_covers_the_true_mean_difference_about_95_percent_of_the_time():
    rng = np.random.default_rng(3)
    covered = [(lambda r: r["ci_low"] <= 0.02 <= r["ci_high"])(compare.paired_test(rng.normal(0.02, 0.05, 10)))
               for _ in range(400)]
    assert 0.92 < np.mean(covered) < 0.98


def test_identical_strategies_tie():
    pairs = compare.paired_differences(table({"a": np.zeros(6), "b": np.zeros(6)}))
    (row,) = pairs.to_dict("records")
    assert (row["mean"], row["ci_low"], row["ci_high"], row["p_t"], row["p_wilcoxon"]) == (0, 0, 0, 1, 1)
    assert row["verdict"] == "no difference shown"
    assert (compare.penalty_matrix(table({"a": np.zeros(6), "b": np.zeros(6)})).to_numpy() == 0).all()


def test_degenerate_samples_give_numbers_not_tracebacks():
    one = compare.paired_test([0.01])
    assert one["mean"] == 0.01 and np.isnan(one["ci_low"]) and np.isnan(one["p_t"])
    assert compare.verdict(one) == "no difference shown"
    constant = compare.paired_test([0.02] * 5)
    assert constant["ci_low"] == constant["ci_high"] == pytest.approx(0.02) and constant["p_t"] == 0.0
    tied = compare.paired_test([0.0, 0.0, 0.01, 0.01, -0.01, 0.02])
    assert 0 < tied["p_wilcoxon"] <= 1 and 0 < tied["p_t"] < 1
    assert np.isnan(compare.paired_test([])["mean"])
    single_seed = compare.paired_differences(table({"a": np.zeros(1), "b": np.ones(1) * 0.1}))
    assert single_seed["seeds"].tolist() == [1] and single_seed["verdict"].tolist() == ["no difference shown"]
    assert (compare.penalty_matrix(table({"a": np.zeros(1), "b": np.ones(1) * 0.1})).to_numpy() == 0).all()


def test_penalty_matrix_weighs_each_experiment_one_and_counts_rounds_won():
    """late wins the last two of four labeling rounds on one dataset and all four on another."""
    rng = np.random.default_rng(4)
    noise = rng.normal(0, 0.002, (10, 5))
    half = np.where(np.arange(5) >= 3, 0.05, 0.0) + noise
    results = pd.concat([table({"early": np.zeros((10, 5)), "late": half}, dataset="one"),
                         table({"early": np.zeros(10), "late": 0.05 + noise[:, 0]}, dataset="two", seed0=5)])
    penalty = compare.penalty_matrix(results)
    assert penalty.loc["late", "early"] == pytest.approx(0.5 + 1.0)
    assert penalty.loc["early", "late"] == pytest.approx(0.0, abs=0.25 + 1e-9)   # a chance noise win at most
    pairs = compare.paired_differences(results)
    assert set(pairs["dataset"]) == {"one", "two"} and (pairs["a"] == "late").all()


def test_report_prints_the_pairwise_table_and_writes_both_files(tmp_path, capsys):
    root = tmp_path / "run"
    root.mkdir()
    (root / "config.yaml").write_text("dataset: toy\n")
    rng = np.random.default_rng(5)
    table({"margin": 0.04 + rng.normal(0, 0.01, 10), "random": np.zeros(10),
           "vote": rng.normal(0, 0.01, 10)}).to_parquet(root / "results.parquet", index=False)
    assert cli.main(["report", str(root)]) == 0
    text = capsys.readouterr().out
    assert "paired AUBC differences" in text and "a > b" in text and "95% interval" in text
    written = pd.read_parquet(root / "paired_differences.parquet")
    assert len(written) == 3 and list(written.columns) == list(compare.DIFFERENCE_COLUMNS)
    penalty = pd.read_parquet(root / "penalty_matrix.parquet").set_index("winner")
    assert penalty.loc["margin", "random"] == pytest.approx(1.0)
    assert (root / "penalty_matrix.png").stat().st_size > 5_000
    assert "paired AUBC differences" in report(root, plots=tmp_path / "elsewhere")
    assert (tmp_path / "elsewhere" / "penalty_matrix.parquet").is_file()
