"""AutoAL against its seven candidates and random on digits (scikit-learn's 8x8 digits).

Every strategy runs through the experiment loop in this process (actors=0,
workers=0) with paired seeds. Prints mean AUBC ± std per strategy, then
AutoAL's search time per round (hook_s) next to the task model's training
time (train_s), and writes the strategy-weight heatmap (the paper's Fig. 5).
Re-running the same command resumes an interrupted run.

    .venv/bin/python benchmarks/autoal_digits.py --seeds 5 --rounds 10 --out runs/autoal_digits
"""
from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from autoal import config, experiment, metrics, plots
from autoal.strategies.autoal import CANDIDATES

STRATEGIES = ("autoal", *CANDIDATES, "random")


def run(seeds: int, rounds: int, out: Path) -> pd.DataFrame:
    cfg = config.load(None, {"dataset": "digits", "strategies": list(STRATEGIES), "seeds": list(range(seeds)),
                             "rounds": rounds, "initial": 20, "batch": 20, "actors": 0, "workers": 0})
    return experiment.Experiment.prepare(cfg, out, log=lambda message: None).run()


def search_cost(results: pd.DataFrame) -> str:
    """AutoAL's mean seconds per query round: the search (hook_s) against task-model training (train_s)."""
    rounds = results[(results["strategy"] == "autoal") & (results["hook_s"] > 0)]
    return (f"autoal per round: search (hook_s) {rounds['hook_s'].mean():.2f}s ± {rounds['hook_s'].std():.2f}, "
            f"task-model training (train_s) {rounds['train_s'].mean():.2f}s ± {rounds['train_s'].std():.2f}, "
            f"pool scoring (score_s) {rounds['score_s'].mean():.2f}s")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="AutoAL vs its candidates and random on digits.")
    parser.add_argument("--seeds", type=int, default=5, help="paired seeds 0..N-1 (default 5)")
    parser.add_argument("--rounds", type=int, default=10, help="query rounds of 20 after 20 initial (default 10)")
    parser.add_argument("--out", type=Path, default=Path("runs/autoal_digits"), help="experiment directory")
    args = parser.parse_args(argv)
    results = run(args.seeds, args.rounds, args.out)
    print(metrics.format_table(metrics.summary(results)))
    print(search_cost(results))
    heatmap = plots.strategy_weights(pd.read_parquet(args.out / "strategy_weights.parquet"),
                                     args.out / "strategy_weights.png", title="AutoAL on digits: mean weight")
    print(f"results: {args.out / 'results.csv'}; weights: {heatmap}")


if __name__ == "__main__":
    main()
