"""A sweep's results as tables: every trial's rounds collected and summarised per configuration (pandas only)."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from autoal.runs import metrics
from autoal.runs.directory import ExperimentDir
from autoal.sweep.plan import SweepPlan, show

# Axes whose values are already columns of every results row.
ROW_AXES = ("strategy", "seed", "dataset")


def collect(root: Path, plan: SweepPlan) -> tuple[pd.DataFrame, pd.DataFrame]:
    """All rounds of all trials (and their strategy-weight telemetry), with the axis values as columns
    and `complete` marking runs that reached their last round (not stopped early)."""
    frames, weights = [], []
    for params_path in sorted((root / "trials").glob("*/params.json")):
        trial = params_path.parent
        if not (trial / "results.parquet").exists():
            continue
        params = json.loads(params_path.read_text())
        columns = {"trial": trial.name, **{k: _column(v) for k, v in params.items() if k not in ROW_AXES}}
        rows = pd.read_parquet(trial / "results.parquet")
        last = rows.groupby(["strategy", "seed"])["round"].transform("max")
        frames.append(rows.assign(**columns, complete=last >= ExperimentDir(trial).saved_config().rounds))
        if (trial / "strategy_weights.parquet").exists():
            weights.append(pd.read_parquet(trial / "strategy_weights.parquet").assign(
                dataset=rows["dataset"].iloc[0], **columns))
    results = _concat(frames)
    if not results.empty:
        first = ["trial", *[c for c in results.columns if c in plan.axes and c not in ROW_AXES]]
        results = results[first + [c for c in results.columns if c not in first]]
    return results, _concat(weights)


def _concat(frames: list[pd.DataFrame]) -> pd.DataFrame:
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _column(value):
    return "+".join(map(str, value)) if isinstance(value, (list, tuple)) else value


def config_columns(plan: SweepPlan) -> list[str]:
    """What identifies a configuration: dataset, strategy and every other axis except seeds."""
    return ["dataset", "strategy", *[k for k in plan.axes if k not in (*ROW_AXES, "seeds", "strategies")]]


def summarize(results: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """Per configuration: mean/std AUBC and F-acc over seeds, runs not (yet) complete, and the AUBC
    difference to the best configuration of the same dataset paired by seed (mean, std)."""
    table = metrics.summary(results, by=tuple(by))
    runs = metrics.per_run(results, keys=(*by, "seed"))
    complete = results.groupby([*by, "seed"])["complete"].all().rename("complete").reset_index()
    runs = runs.merge(complete, on=[*by, "seed"])
    incomplete = runs.groupby(by)["complete"].apply(lambda c: int((~c).sum())).rename("incomplete")
    table = table.merge(incomplete.reset_index(), on=by)
    deltas = []
    for dataset, configs in table.groupby("dataset", sort=False):
        best = runs.merge(configs.iloc[[0]][by], on=by).set_index("seed")["aubc"]
        for row in configs[by].itertuples(index=False):
            mine = runs.merge(pd.DataFrame([row], columns=by), on=by).set_index("seed")["aubc"]
            diff = (mine - best).dropna()
            deltas.append({**dict(zip(by, row)), "aubc_vs_best": diff.mean() if len(diff) else float("nan"),
                           "aubc_vs_best_std": diff.std() if len(diff) > 1 else 0.0})
    table = table.merge(pd.DataFrame(deltas), on=by)
    return table.sort_values(["dataset", "aubc_mean"], ascending=[True, False], kind="stable").reset_index(drop=True)


def labels(frame: pd.DataFrame, by: list[str]) -> pd.Series:
    """A configuration's name in tables and plots: its strategy and other axis values."""
    other = [c for c in by if c not in ("dataset", "strategy")]
    return frame[["strategy", *other]].apply(
        lambda r: ", ".join([str(r["strategy"]), *(f"{c}={show(r[c])}" for c in other)]), axis=1)


def by_candidates_size(results: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """AUBC over seeds per configuration, `line` naming it apart from its candidate pool size."""
    table = metrics.summary(results, by=tuple(by))
    line = [c for c in by if c != "candidates_size"]
    return table.assign(line=table[line].apply(lambda r: ", ".join(map(show, r)), axis=1))
