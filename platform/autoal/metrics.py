"""AL metrics: AUBC and final accuracy, per run and summarised over seeds."""
from __future__ import annotations

import numpy as np
import pandas as pd


def aubc(n_labeled, accuracy) -> float:
    """Area under the accuracy-vs-budget curve (trapezoid) divided by the queried
    budget, as in the DeepAL+ toolkit; a run with no queries scores its accuracy."""
    n, acc = np.asarray(n_labeled, dtype=float), np.asarray(accuracy, dtype=float)
    order = np.argsort(n)
    n, acc = n[order], acc[order]
    if len(n) == 1 or n[-1] == n[0]:
        return float(acc[-1])
    return float(np.sum((acc[1:] + acc[:-1]) / 2 * np.diff(n)) / (n[-1] - n[0]))


def per_run(results: pd.DataFrame, keys=("strategy", "seed")) -> pd.DataFrame:
    """One row per run: its AUBC and F-acc (accuracy after the last round)."""
    rows = []
    for key, run in results.sort_values("round").groupby(list(keys), sort=False):
        rows.append({**dict(zip(keys, key)), "aubc": aubc(run["n_labeled"], run["accuracy"]),
                     "f_acc": float(run["accuracy"].iloc[-1]), "rounds": int(run["round"].max())})
    return pd.DataFrame(rows)


def summary(results: pd.DataFrame, by=("strategy",)) -> pd.DataFrame:
    """Mean and std of AUBC and F-acc over seeds, best AUBC first."""
    runs = per_run(results, keys=(*by, "seed"))
    table = runs.groupby(list(by)).agg(aubc_mean=("aubc", "mean"), aubc_std=("aubc", "std"),
                                       f_acc_mean=("f_acc", "mean"), f_acc_std=("f_acc", "std"),
                                       seeds=("seed", "nunique"))
    return table.fillna(0.0).sort_values("aubc_mean", ascending=False).reset_index()


def format_table(table: pd.DataFrame) -> str:
    lines = [f"{'strategy':<20} {'AUBC':>16} {'F-acc':>16} {'seeds':>5}"]
    for row in table.itertuples():
        lines.append(f"{row.strategy:<20} {row.aubc_mean:>8.4f} ± {row.aubc_std:<5.4f} "
                     f"{row.f_acc_mean:>8.4f} ± {row.f_acc_std:<5.4f} {row.seeds:>5}")
    return "\n".join(lines)
