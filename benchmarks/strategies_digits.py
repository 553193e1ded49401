"""AUBC of AL strategies on digits over paired seeds: the strategy comparison table.

    .venv/bin/python benchmarks/strategies_digits.py [--seeds 0 1 2 3 4] [--strategy ...] [--out DIR]
        [--before DIR]

Runs through the same loop as `autoal run` (resumable: re-run to finish an interrupted
benchmark) and prints mean AUBC and F-acc with std per strategy, then each strategy's AUBC
difference to random, paired by seed, and bgadl's to bald (BALD picks bgadl's batches).
`--before DIR`: the --out of the same benchmark run at an earlier commit; the strategies run in
both are then compared: mean AUBC and paired difference to random (seeds won) before and after.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd

from autoal import config, metrics
from autoal.experiment import Experiment

DEFAULT = ("random", "entropy", "margin", "least_confidence", "bald", "var_ratio", "mean_std", "kmeans",
           "coreset", "badge", "lpl", "autoal", "albl", "poal", "noise_stability", "dpp", "vaal", "sraal", "bgadl")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--strategy", nargs="+", default=list(DEFAULT))
    ap.add_argument("--config", default="jobs/main.yaml", help="base experiment (dataset, budget, epochs)")
    ap.add_argument("--out", default="runs/bench_digits",
                    help="experiment directory, shared with autoal_digits.py")
    ap.add_argument("--before", help="this benchmark's --out from an earlier commit, to compare with")
    args = ap.parse_args()

    cfg = config.load(args.config, {"strategies": args.strategy, "seeds": args.seeds})
    t0 = time.perf_counter()
    results = Experiment.prepare(cfg, args.out, log=lambda line: None).run()
    results = results[results["strategy"].isin(cfg.strategies) & results["seed"].isin(cfg.seeds)]
    print(f"{cfg.dataset}: initial {cfg.initial}, {cfg.rounds} rounds of {cfg.batch}, seeds {list(cfg.seeds)} "
          f"({time.perf_counter() - t0:.0f} s)")
    print(metrics.format_table(metrics.summary(results)))
    runs = aubc_by_seed(results)
    if "random" in runs:
        print("\nAUBC minus random, paired by seed (mean, wins/seeds):")
        for name in runs.columns.drop("random"):
            print(f"  {name:<18} {paired(runs[name], runs['random'])}")
    if {"bgadl", "bald"} <= set(runs):
        print(f"\nbgadl minus bald, paired by seed: {paired(runs['bgadl'], runs['bald'])}")
    if args.before:
        before = pd.read_parquet(Path(args.before) / "results.parquet")
        before = aubc_by_seed(before[before["seed"].isin(cfg.seeds)])
        print(f"\nbefore ({args.before}) -> after ({args.out}): mean AUBC; minus random, paired by seed")
        for name in sorted(set(before.columns) & set(runs.columns) - {"random"}):
            print(f"  {name:<18} {before[name].mean():.4f} -> {runs[name].mean():.4f}   "
                  f"{paired(before[name], before['random'])} -> {paired(runs[name], runs['random'])}")


def aubc_by_seed(results: pd.DataFrame) -> pd.DataFrame:
    return metrics.per_run(results).pivot(index="seed", columns="strategy", values="aubc")


def paired(a: pd.Series, b: pd.Series) -> str:
    """Mean difference a - b over the seeds both have, and on how many of them a won."""
    diff = (a - b).dropna()
    return f"{diff.mean():+.4f} ({int((diff > 0).sum())}/{len(diff)})"


if __name__ == "__main__":
    main()
