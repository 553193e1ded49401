"""Does AutoAL earn its place? AutoAL against `vote` (the same candidates, unweighted) and
each of its candidates alone, in three cases (issue 19):

- switching: candidates whose best changes during a run (a low-budget method, good at a
  few labels per class, and margin, good later);
- weak: a clearly weak candidate (random) among strong ones that agree little (margin,
  coreset), so that `vote`'s ties take random's picks;
- default: the paper's seven candidates.

Every run goes through the experiment loop with the protocol of `--config` (default the
main job, jobs/main.yaml; `--rounds` lengthens the budget) and paired seeds: at a seed every
strategy starts from the same initial pool. Single strategies run once each into `singles/<name>`,
each case's autoal and vote into `<case>/`; re-running resumes. Prints, per case: AUBC
with 95% intervals; the paired AUBC difference of autoal against vote and against each
candidate (autoal.runs.compare: mean, 95% interval, paired t and Wilcoxon p; seeds won); the best candidate per
round; the candidates' mean pool weight per round; search time per round next to the task
model's training time.

    .venv/bin/python benchmarks/autoal_cases.py --seeds 0 1 2 3 4 5 6 7 8 9 [--cases weak] [--rounds 16]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from autoal import config
from autoal.engine import experiment
from autoal.runs import compare, metrics
from autoal.strategies.autoal import CANDIDATES

CASES = {
    "switching": ("typiclust", "margin"),
    "weak": ("margin", "coreset", "random"),
    "default": CANDIDATES,
}


def run(base: str, rounds: int | None, seeds: list[int], out: Path, strategies: tuple[str, ...],
        options: dict) -> pd.DataFrame:
    overrides = {"strategies": list(strategies), "seeds": seeds, **options}
    if rounds:
        overrides["rounds"] = rounds
    cfg = config.load(base, overrides)
    results = experiment.Experiment.prepare(cfg, out, log=lambda message: None).run()
    return results[results["strategy"].isin(strategies) & results["seed"].isin(seeds)]


def finished(directories: list[Path], seeds: list[int]) -> pd.DataFrame:
    """The results of the runs in `directories` that reached their last round, at `seeds`."""
    frames = [pd.read_parquet(d / "results.parquet") for d in directories if (d / "results.parquet").exists()]
    results = pd.concat(frames, ignore_index=True)
    last = results.groupby(["strategy", "seed"])["round"].transform("max") == results["round"].max()
    done = results[last].groupby(["strategy", "seed"]).size().index
    results = results.set_index(["strategy", "seed"]).loc[done].reset_index()
    return results[results["seed"].isin(seeds)]


def interval(values: pd.Series) -> str:
    """mean [95% t interval]."""
    t = compare.paired_test(values)
    return f"{t['mean']:.4f} [{t['ci_low']:.4f}, {t['ci_high']:.4f}]"


def paired(runs: pd.DataFrame, name: str, other: str) -> str:
    """name's AUBC minus other's, seed by seed: mean [95% interval], paired t and Wilcoxon p, seeds won."""
    diff = runs[name] - runs[other]
    t = compare.paired_test(diff)
    return (f"{t['mean']:+.4f} [{t['ci_low']:+.4f}, {t['ci_high']:+.4f}]  t p={t['p_t']:.3f}  "
            f"Wilcoxon p={t['p_wilcoxon']:.3f}  ({int((diff > 0).sum())}/{len(diff)})")


def report(case: str, candidates: tuple[str, ...], results: pd.DataFrame, out: Path) -> None:
    runs = metrics.per_run(results).pivot(index="seed", columns="strategy", values="aubc").dropna()
    ran = [c for c in candidates if c in runs]     # the single runs present at every seed
    print(f"\n== {case}: candidates {', '.join(candidates)}; {len(runs)} paired seeds"
          + (f"; not run alone: {', '.join(c for c in candidates if c not in ran)}" if len(ran) < len(candidates)
             else ""))
    for name in runs.mean().sort_values(ascending=False).index:
        print(f"  {name:<18} AUBC {interval(runs[name])}")
    best = runs[ran].mean().idxmax()
    print(f"  paired AUBC difference (mean [95% interval]), best single candidate: {best}")
    for other in ("vote", best, *(c for c in ran if c != best)):
        print(f"    autoal - {other:<16} {paired(runs, 'autoal', other)}")
    print(f"    vote   - {best:<16} {paired(runs, 'vote', best)}")
    curve = results[results["strategy"].isin(ran)].groupby(["round", "strategy"])["accuracy"].mean()
    leaders = curve.unstack().idxmax(axis=1)
    print("  best candidate per round (mean accuracy): " + " ".join(f"{r}:{s}" for r, s in leaders.items()))
    weights = pd.read_parquet(out / case / "strategy_weights.parquet").query("strategy == 'autoal'")
    weights = weights[weights["seed"].isin(runs.index)]
    trajectory = weights.pivot_table(index="round", columns="candidate", values="weight_pool")[list(candidates)]
    print(f"  mean pool weight per round (flat = {1 / len(candidates):.3f}):")
    print("    round " + " ".join(f"{c:>16}" for c in candidates))
    for round_, row in trajectory.iterrows():
        print(f"    {round_:>5} " + " ".join(f"{w:>16.3f}" for w in row))
    search = pd.read_parquet(out / case / "search.parquet")
    search = search[search["seed"].isin(runs.index)]
    auto = results[(results["strategy"] == "autoal") & (results["hook_s"] > 0)]
    print(f"  per round: search {auto['hook_s'].mean():.2f}s (max {auto['hook_s'].max():.2f}s), task-model "
          f"training {auto['train_s'].mean():.2f}s; batch overlap with vote {search['vote_overlap'].mean():.2f}; "
          f"replayed rows in the last round {int(search['replay_rows'].max())}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="AutoAL vs vote and its candidates: switching, weak, default.")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(10)), help="paired seeds")
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--config", default="jobs/main.yaml", help="base experiment (dataset, budget, epochs)")
    parser.add_argument("--rounds", type=int, default=None, help="query rounds (default: the config's)")
    parser.add_argument("--part", choices=("all", "singles", "search", "report"), default="all",
                        help="run only the single strategies, or only autoal and vote (then no report); or report "
                             "on the runs finished so far, running nothing")
    parser.add_argument("--out", type=Path, default=Path("runs/bench_cases"), help="benchmark directory")
    args = parser.parse_args(argv)

    singles = dict.fromkeys(c for case in args.cases for c in CASES[case])
    if args.part in ("all", "singles"):   # one directory each: any case's singles run, or resume, alone
        single = pd.concat([run(args.config, args.rounds, args.seeds, args.out / "singles" / name, (name,), {})
                            for name in singles])
    if args.part == "report":
        single = finished([args.out / "singles" / name for name in singles], args.seeds)
    for case in args.cases if args.part != "singles" else ():
        candidates = list(CASES[case])
        searched = finished([args.out / case], args.seeds) if args.part == "report" else \
            run(args.config, args.rounds, args.seeds, args.out / case, ("autoal", "vote"),
                {"options.autoal.candidates": candidates, "options.vote.candidates": candidates})
        if args.part != "search":
            report(case, CASES[case], pd.concat([searched, single[single["strategy"].isin(candidates)]]), args.out)


if __name__ == "__main__":
    main()
