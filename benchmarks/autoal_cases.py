"""Does AutoAL earn its place? AutoAL against `vote` (the same candidates, unweighted) and
each of its candidates alone, in three cases (issue 19):

- switching: candidates whose best changes during a run (a low-budget method, good at a
  few labels per class, and margin, good later): run it with `--config jobs/switching.yaml`
  (1 label a class, batches of 10); from the main job's 4 labels a class margin leads throughout;
- weak: a clearly weak candidate (random) among strong ones that agree little (margin,
  coreset), so that `vote`'s ties take random's picks;
- default: the paper's seven candidates.

Every run goes through the experiment loop with the protocol of `--config` (default the
main job, jobs/main.yaml; `--rounds` lengthens the budget) and paired seeds: at a seed every
strategy starts from the same initial pool. Single strategies, and each case's `vote` (which has no
search, so every search setting shares it), run once each into `singles/<name>` and
`singles/vote_<case>`; each case's autoal into `<case>/`; re-running resumes. Prints, per case: AUBC
with 95% intervals; the paired AUBC difference of autoal against vote and against each
candidate (autoal.runs.compare: mean, 95% interval, paired t and Wilcoxon p; seeds won); the best candidate per
round; the candidates' mean pool weight and evidence weight per round; search time per round next
to the task model's training time.

    .venv/bin/python benchmarks/autoal_cases.py --seeds 0 1 2 3 4 5 6 7 8 9 [--cases weak] [--rounds 16] \
        [--set search.reward=loss --out runs/bench_cases_loss]
    .venv/bin/python benchmarks/autoal_cases.py --part report --out runs/bench_cases_loss --against runs/bench_cases

`--against DIR` adds, to the report, autoal as run in DIR (another search setting, the same
protocol and seeds), paired with this one's: did the setting change what AutoAL achieves?
"""
from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
import yaml

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
        options: dict) -> None:
    overrides = {"strategies": list(strategies), "seeds": seeds, **options}
    if rounds:
        overrides["rounds"] = rounds
    experiment.Experiment.prepare(config.load(base, overrides), out, log=lambda message: None).run()


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
    against = [c for c in runs if c.startswith("autoal@")]     # --against: autoal under another search setting
    for other in ("vote", best, *(c for c in ran if c != best), *against):
        print(f"    autoal - {other:<16} {paired(runs, 'autoal', other)}")
    print(f"    vote   - {best:<16} {paired(runs, 'vote', best)}")
    curve = results[results["strategy"].isin(ran)].groupby(["round", "strategy"])["accuracy"].mean()
    leaders = curve.unstack().idxmax(axis=1)
    print("  best candidate per round (mean accuracy): " + " ".join(f"{r}:{s}" for r, s in leaders.items()))
    weights = pd.read_parquet(out / case / "strategy_weights.parquet").query("strategy == 'autoal'")
    weights = weights[weights["seed"].isin(runs.index)]
    for column, what in (("weight_pool", "mean pool weight"), ("weight_evidence", "evidence weight")):
        if column not in weights:
            continue
        trajectory = weights.pivot_table(index="round", columns="candidate", values=column)[list(candidates)]
        print(f"  {what} per round, mean over seeds (flat = {1 / len(candidates):.3f}):")
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
                        help="run only the single strategies and vote, or only autoal (then no report); or report "
                             "on the runs finished so far, running nothing")
    parser.add_argument("--alone", nargs="*", default=None, metavar="STRATEGY",
                        help="the strategies to run and report alone (default: every candidate of the cases)")
    parser.add_argument("--out", type=Path, default=Path("runs/bench_cases"), help="benchmark directory")
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                        help="config keys of the autoal and vote runs, e.g. search.reward=loss (YAML values)")
    parser.add_argument("--against", type=Path, default=None, metavar="DIR",
                        help="report: also pair autoal with the autoal runs of this benchmark directory")
    args = parser.parse_args(argv)
    settings = {key: yaml.safe_load(value) for key, value in (item.split("=", 1) for item in args.set)}

    singles = args.alone if args.alone is not None else \
        list(dict.fromkeys(c for case in args.cases for c in CASES[case]))
    votes = {case: args.out / "singles" / f"vote_{case}" for case in args.cases}
    if args.part in ("all", "singles"):   # one directory each: any case's singles run, or resume, alone
        for name in singles:
            run(args.config, args.rounds, args.seeds, args.out / "singles" / name, (name,), {})
        for case, directory in votes.items():    # vote has no search: every search setting shares it
            run(args.config, args.rounds, args.seeds, directory, ("vote",),
                {"options.vote.candidates": list(CASES[case])})
    for case in args.cases if args.part in ("all", "search") else ():
        run(args.config, args.rounds, args.seeds, args.out / case, ("autoal",),
            {"options.autoal.candidates": list(CASES[case]), **settings})
    if args.part in ("all", "report"):
        single = finished([args.out / "singles" / name for name in singles], args.seeds)
        for case in args.cases:
            searched = finished([args.out / case, votes[case]], args.seeds)
            if args.against:
                other = finished([args.against / case], args.seeds).query("strategy == 'autoal'")
                searched = pd.concat([searched, other.assign(strategy=f"autoal@{args.against.name}")])
            report(case, CASES[case], pd.concat([searched, single[single["strategy"].isin(CASES[case])]]), args.out)


if __name__ == "__main__":
    main()
