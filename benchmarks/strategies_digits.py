"""AUBC of AL strategies on digits over paired seeds: the strategy comparison table.

    .venv/bin/python benchmarks/strategies_digits.py [--seeds 0 1 2 3 4] [--strategy ...] [--out DIR]

Runs through the same loop as `autoal run` (resumable: re-run to finish an interrupted
benchmark) and prints mean AUBC and F-acc with std per strategy, then each strategy's AUBC
difference to random, paired by seed.
"""
from __future__ import annotations

import argparse
import time

from autoal import config, metrics
from autoal.experiment import Experiment

DEFAULT = ("random", "entropy", "margin", "least_confidence", "bald", "var_ratio", "mean_std", "kmeans",
           "coreset", "badge", "lpl", "autoal", "albl", "poal", "noise_stability", "dpp", "vaal", "sraal")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--strategy", nargs="+", default=list(DEFAULT))
    ap.add_argument("--config", default="jobs/main.yaml", help="base experiment (dataset, budget, epochs)")
    ap.add_argument("--out", default="runs/bench_digits",
                    help="experiment directory, shared with autoal_digits.py")
    args = ap.parse_args()

    cfg = config.load(args.config, {"strategies": args.strategy, "seeds": args.seeds})
    t0 = time.perf_counter()
    results = Experiment.prepare(cfg, args.out, log=lambda line: None).run()
    results = results[results["strategy"].isin(cfg.strategies) & results["seed"].isin(cfg.seeds)]
    print(f"{cfg.dataset}: initial {cfg.initial}, {cfg.rounds} rounds of {cfg.batch}, seeds {list(cfg.seeds)} "
          f"({time.perf_counter() - t0:.0f} s)")
    print(metrics.format_table(metrics.summary(results)))
    runs = metrics.per_run(results).pivot(index="seed", columns="strategy", values="aubc")
    if "random" in runs:
        print("\nAUBC minus random, paired by seed (mean, wins/seeds):")
        for name in runs.columns.drop("random"):
            diff = runs[name] - runs["random"]
            print(f"  {name:<18} {diff.mean():+.4f}   {int((diff > 0).sum())}/{len(diff)}")


if __name__ == "__main__":
    main()
