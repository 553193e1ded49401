"""AUBC of AL strategies on digits over paired seeds: the strategy comparison table.

    .venv/bin/python benchmarks/strategies_digits.py [--seeds 0 1 2 3 4] [--strategy ...] [--out DIR]
        [--also DIR...] [--before DIR...]

Runs through the same loop as `autoal run` (resumable: re-run to finish an interrupted
benchmark) and prints mean AUBC and F-acc with std per strategy, then each strategy's AUBC
difference to random, paired by seed, with its 95% interval and paired t-test, every pair's
difference (`autoal.runs.compare`), the mean accuracy per round, BADGE's penalty matrix, bgadl's
difference to bald (BALD picks bgadl's batches), and how much each strategy's batches crowd
into one class.
`--also DIR...`: more --out directories of this benchmark (same protocol: seeds or strategies run
as parallel processes, or autoal_digits.py's); a strategy whose every seed finished in them joins
the table from there and is not run again. `--before DIR...`: --out directories of the same benchmark run at an
earlier commit; the strategies run in both are then compared: mean AUBC and paired difference to
random (seeds won) before and after.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd

from autoal import config
from autoal.runs import compare, metrics
from autoal.engine.experiment import Experiment

DEFAULT = ("random", "entropy", "margin", "least_confidence", "bald", "var_ratio", "mean_std", "kmeans",
           "coreset", "badge", "typiclust", "probcover", "lpl", "autoal", "vote", "albl", "poal", "noise_stability", "dpp", "vaal", "sraal",
           "bgadl")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--strategy", nargs="+", default=list(DEFAULT))
    ap.add_argument("--config", default="jobs/main.yaml", help="base experiment (dataset, budget, epochs)")
    ap.add_argument("--out", default="runs/bench_digits",
                    help="experiment directory, shared with autoal_digits.py")
    ap.add_argument("--also", nargs="+", default=[], help="more --out directories of this benchmark")
    ap.add_argument("--before", nargs="+", default=[], help="this benchmark's --out directories at an earlier commit")
    args = ap.parse_args()

    base = config.load(args.config, {"strategies": args.strategy, "seeds": args.seeds})
    t0 = time.perf_counter()
    joined = pd.concat([pd.DataFrame(columns=["strategy", "seed", "round"]), *read(args.also, base.rounds)])
    joined = joined[joined["strategy"].isin(base.strategies) & joined["seed"].isin(base.seeds)]
    joined = joined.drop_duplicates(["strategy", "seed", "round"])
    seeds = joined.groupby("strategy")["seed"].nunique()
    elsewhere = set(seeds[seeds >= len(base.seeds)].index) if not joined.empty else set()
    todo = [name for name in base.strategies if name not in elsewhere]
    results = joined[joined["strategy"].isin(elsewhere)]
    if todo:
        cfg = config.load(args.config, {"strategies": todo, "seeds": args.seeds})
        ran = Experiment.prepare(cfg, args.out, log=lambda line: None).run()
        results = pd.concat([results, ran[ran["strategy"].isin(todo) & ran["seed"].isin(cfg.seeds)]])
    cfg = base
    print(f"{cfg.dataset}: initial {cfg.initial}, {cfg.rounds} rounds of {cfg.batch}, "
          f"seeds {sorted(map(int, results['seed'].unique()))} ({time.perf_counter() - t0:.0f} s)")
    print(metrics.format_table(metrics.summary(results)))
    runs = aubc_by_seed(results)
    if "random" in runs:
        print("\nAUBC minus random, paired by seed (mean [95% interval] paired t p (wins/seeds)):")
        for name in runs.columns.drop("random"):
            print(f"  {name:<18} {paired(runs[name], runs['random'])}")
    print("\n" + compare.format_differences(compare.paired_differences(results)))
    print("\nmean accuracy per round:\n" + results.pivot_table(index="round", columns="strategy", values="accuracy",
                                                              aggfunc="mean").round(4).to_string())
    print("\nwin/tie/loss penalty matrix (row beat column, in the share of rounds; paired t-test per round):\n"
          + compare.penalty_matrix(results).round(3).to_string())
    if {"bgadl", "bald"} <= set(runs):
        print(f"\nbgadl minus bald, paired by seed: {paired(runs['bgadl'], runs['bald'])}")
    ledger = pd.concat([pd.read_parquet(Path(d) / "ledger.parquet") for d in [args.out, *args.also]
                        if (Path(d) / "ledger.parquet").exists()]).drop_duplicates(["strategy", "seed", "round", "id"])
    ledger = ledger.merge(results[results["round"] == cfg.rounds][["strategy", "seed"]]).query("round > 0")
    batches = ledger.groupby(["strategy", "seed", "round"])["label"]
    crowding = pd.DataFrame({"share": batches.agg(lambda y: y.value_counts().iloc[0] / len(y)),
                             "classes": batches.nunique()}).groupby("strategy").mean()
    print("\nqueried batches: the largest class's share and the classes per batch (mean over rounds, seeds):")
    for name, row in crowding.iterrows():
        print(f"  {name:<18} {row['share']:.2f}   {row['classes']:.1f}")
    if args.before:
        before = aubc_by_seed(pd.concat(read(args.before, cfg.rounds)))
        before = before.loc[before.index.isin(runs.index)]
        print(f"\nbefore ({' '.join(args.before)}) -> after: mean AUBC; minus random, paired by seed")
        for name in sorted(set(before.columns) - {"random"}):
            after = (f"{runs[name].mean():.4f}", paired(runs[name], runs["random"])) if name in runs else ("-", "-")
            print(f"  {name:<18} {before[name].mean():.4f} -> {after[0]}   "
                  f"{paired(before[name], before['random'])} -> {after[1]}")


def read(directories: list[str], rounds: int) -> list[pd.DataFrame]:
    """The finished runs (all `rounds`) in other experiment directories."""
    frames = [pd.read_parquet(Path(d) / "results.parquet") for d in directories]
    return [f[f.groupby(["strategy", "seed"])["round"].transform("max") == rounds] for f in frames]


def aubc_by_seed(results: pd.DataFrame) -> pd.DataFrame:
    return metrics.per_run(results).pivot(index="seed", columns="strategy", values="aubc")


def paired(a: pd.Series, b: pd.Series) -> str:
    """Mean difference a - b over the seeds both have, its 95% t interval, the paired t-test's p, and
    on how many of the seeds a won."""
    diff = (a - b).dropna()
    t = compare.paired_test(diff)
    return (f"{t['mean']:+.4f} [{t['ci_low']:+.4f}, {t['ci_high']:+.4f}] p={t['p_t']:.3f} "
            f"({int((diff > 0).sum())}/{len(diff)})")


if __name__ == "__main__":
    main()
