"""Does AutoAL's search matter? AutoAL (each reward) against `vote` (the same
candidates, unweighted), its seven candidates and random, on digits.

Every run goes through the experiment loop of the main job (jobs/main.yaml:
budget, epochs, in-process training and scoring) with paired seeds: at a seed,
every strategy and variant starts from the same initial pool. Prints mean AUBC
per strategy; for each AutoAL variant the paired AUBC difference (mean, std,
seeds won) against vote, the best candidate and random; AutoAL's search time
per round (hook_s) next to the task model's training time (train_s); the
overlap of AutoAL's batches with vote's; and writes the strategy-weight
heatmap (the paper's Fig. 5). Re-running resumes an interrupted benchmark.

    .venv/bin/python benchmarks/autoal_digits.py [--seeds 0 1 2 3 4] [--variants lookahead loss crossfit]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from autoal import config
from autoal.engine import experiment
from autoal.runs import metrics, plots
from autoal.strategies.autoal import CANDIDATES

BASELINES = ("vote", *CANDIDATES, "random")
VARIANTS = {                      # AutoAL variant -> search options
    "lookahead": {"search.reward": "lookahead"},
    "loss": {"search.reward": "loss"},
    "crossfit": {"search.reward": "lookahead", "search.fitnet": "crossfit"},
}


def run(base: str, seeds: list[int], out: Path, strategies: tuple[str, ...], options: dict) -> pd.DataFrame:
    cfg = config.load(base, {"strategies": list(strategies), "seeds": seeds, **options})
    results = experiment.Experiment.prepare(cfg, out, log=lambda message: None).run()
    return results[results["strategy"].isin(strategies) & results["seed"].isin(seeds)]


def paired(runs: pd.DataFrame, name: str, other: str) -> str:
    diff = runs[name] - runs[other]
    return f"{diff.mean():+.4f} ± {diff.std():.4f} ({int((diff > 0).sum())}/{len(diff)})"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="AutoAL vs vote, its candidates and random on digits.")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="paired seeds")
    parser.add_argument("--variants", nargs="+", default=["lookahead", "loss"], choices=sorted(VARIANTS))
    parser.add_argument("--config", default="jobs/main.yaml", help="base experiment (dataset, budget, epochs)")
    parser.add_argument("--out", type=Path, default=Path("runs/bench_autoal"), help="benchmark directory")
    args = parser.parse_args(argv)

    frames, search = [], []
    for variant in args.variants:
        results = run(args.config, args.seeds, args.out / variant, ("autoal",), VARIANTS[variant])
        frames.append(results.assign(strategy=f"autoal[{variant}]"))
        search.append(pd.read_parquet(args.out / variant / "search.parquet"))
    frames.append(run(args.config, args.seeds, args.out / "baselines", BASELINES, {}))
    results = pd.concat(frames, ignore_index=True)
    print(metrics.format_table(metrics.summary(results)))

    runs = metrics.per_run(results).pivot(index="seed", columns="strategy", values="aubc")
    best = runs[list(CANDIDATES)].mean().idxmax()
    print(f"\npaired AUBC difference, mean ± std (seeds won); best candidate: {best}")
    for variant in args.variants:
        name = f"autoal[{variant}]"
        print(f"  {name:<20} vs vote {paired(runs, name, 'vote')}   vs {best} {paired(runs, name, best)}   "
              f"vs random {paired(runs, name, 'random')}")
    print(f"  {'vote':<20} vs {best} {paired(runs, 'vote', best)}   vs random {paired(runs, 'vote', 'random')}")

    print("\nper query round, mean ± std: search (hook_s) against task-model training (train_s)")
    for variant in args.variants:
        rounds = results[(results["strategy"] == f"autoal[{variant}]") & (results["hook_s"] > 0)]
        telemetry = search[args.variants.index(variant)]
        print(f"  {variant:<10} search {rounds['hook_s'].mean():.2f}s ± {rounds['hook_s'].std():.2f}   "
              f"training {rounds['train_s'].mean():.2f}s ± {rounds['train_s'].std():.2f}   "
              f"batch overlap with vote {telemetry['vote_overlap'].mean():.2f}   "
              f"selection/rank gradient norm {telemetry['selection_grad_norm'].mean():.3f}/"
              f"{telemetry['rank_grad_norm'].mean():.3f}")
        heatmap = plots.strategy_weights(pd.read_parquet(args.out / variant / "strategy_weights.parquet"),
                                         args.out / f"strategy_weights_{variant}.png",
                                         title=f"AutoAL[{variant}] on digits: mean weight")
        print(f"    weights: {heatmap}")


if __name__ == "__main__":
    main()
