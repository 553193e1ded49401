"""AutoAL against its seven candidates and random on digits (scikit-learn's 8x8 digits).

Every strategy runs through the experiment loop of the main job's set-up
(jobs/main.yaml: budget, epochs, in-process training and scoring) with paired
seeds. Prints mean AUBC ± std per strategy, then AutoAL's search time per round
(hook_s) next to the task model's training time (train_s), and writes the
strategy-weight heatmap (the paper's Fig. 5). Re-running the same command
resumes an interrupted run; it shares its default --out with
strategies_digits.py, so runs one has finished are not repeated by the other.

    .venv/bin/python benchmarks/autoal_digits.py [--seeds 0 1 2 3 4] [--config jobs/main.yaml] [--out DIR]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from autoal import config, experiment, metrics, plots
from autoal.strategies.autoal import CANDIDATES

STRATEGIES = ("autoal", *CANDIDATES, "random")


def run(base: str, seeds: list[int], out: Path) -> pd.DataFrame:
    cfg = config.load(base, {"strategies": list(STRATEGIES), "seeds": seeds})
    results = experiment.Experiment.prepare(cfg, out, log=lambda message: None).run()
    return results[results["strategy"].isin(STRATEGIES) & results["seed"].isin(seeds)]


def search_cost(results: pd.DataFrame) -> str:
    """AutoAL's mean seconds per query round: the search (hook_s) against task-model training (train_s)."""
    rounds = results[(results["strategy"] == "autoal") & (results["hook_s"] > 0)]
    return (f"autoal per round: search (hook_s) {rounds['hook_s'].mean():.2f}s ± {rounds['hook_s'].std():.2f}, "
            f"task-model training (train_s) {rounds['train_s'].mean():.2f}s ± {rounds['train_s'].std():.2f}, "
            f"pool scoring (score_s) {rounds['score_s'].mean():.2f}s")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="AutoAL vs its candidates and random on digits.")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="paired seeds")
    parser.add_argument("--config", default="jobs/main.yaml", help="base experiment (dataset, budget, epochs)")
    parser.add_argument("--out", type=Path, default=Path("runs/bench_digits"), help="experiment directory")
    args = parser.parse_args(argv)
    results = run(args.config, args.seeds, args.out)
    print(metrics.format_table(metrics.summary(results)))
    print(search_cost(results))
    heatmap = plots.strategy_weights(pd.read_parquet(args.out / "strategy_weights.parquet"),
                                     args.out / "strategy_weights.png", title="AutoAL on digits: mean weight")
    print(f"results: {args.out / 'results.csv'}; weights: {heatmap}")


if __name__ == "__main__":
    main()
