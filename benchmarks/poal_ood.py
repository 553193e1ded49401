"""Queries wasted on out-of-distribution samples: POAL vs entropy (and random) on
digits with classes 7, 8 and 9 held out as OOD (30% of the pool).

    .venv/bin/python benchmarks/poal_ood.py [--seeds 0 1 2] [--out DIR]

Runs through the same loop as `autoal run` (resumable: re-run to finish an
interrupted benchmark). Prints, per strategy, the OOD samples among the queried
batches (the initial pool, shared by all strategies, left out) for each seed
and in total, then the AUBC table of the in-distribution task.
"""
from __future__ import annotations

import argparse
import time

from autoal import config
from autoal.runs import metrics
from autoal.engine.experiment import Experiment


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--strategy", nargs="+", default=["poal", "entropy", "random"])
    ap.add_argument("--ood-classes", type=int, nargs="+", default=[7, 8, 9])
    ap.add_argument("--config", default="jobs/main.yaml", help="base experiment (dataset, budget, epochs)")
    ap.add_argument("--out", default="runs/bench_poal_ood")
    args = ap.parse_args()

    cfg = config.load(args.config, {"strategies": args.strategy, "seeds": args.seeds,
                                    "ood_classes": args.ood_classes})
    t0 = time.perf_counter()
    results = Experiment.prepare(cfg, args.out, log=lambda line: None).run()
    results = results[results["strategy"].isin(cfg.strategies) & results["seed"].isin(cfg.seeds)]
    queried = cfg.rounds * cfg.batch
    print(f"{cfg.dataset} with classes {list(cfg.ood_classes)} out of distribution: initial {cfg.initial}, "
          f"{cfg.rounds} rounds of {cfg.batch}, seeds {list(cfg.seeds)} ({time.perf_counter() - t0:.0f} s)")
    final = results[results["round"] == cfg.rounds].pivot(index="strategy", columns="seed", values="ood_queries")
    print(f"\nOOD samples among the {queried} queries per seed:")
    for name in cfg.strategies:
        row = final.loc[name]
        print(f"  {name:<10} {' '.join(f'{int(v):>4}' for v in row)}   total {int(row.sum()):>4} "
              f"({row.sum() / (queried * len(row)):.1%})")
    print("\n" + metrics.format_table(metrics.summary(results)))


if __name__ == "__main__":
    main()
