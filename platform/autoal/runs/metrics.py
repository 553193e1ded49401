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


# Columns of a summary table shown as mean ± std: header, mean column, std column, sign shown.
SPREADS = (("AUBC", "aubc_mean", "aubc_std", ""), ("F-acc", "f_acc_mean", "f_acc_std", ""),
           ("vs best", "aubc_vs_best", "aubc_vs_best_std", "+"))
COUNTS = ("seeds", "incomplete")


def format_table(table: pd.DataFrame, keys=("strategy",)) -> str:
    """A summary table as aligned text: its `keys` columns, then each mean ± std it holds (AUBC, F-acc,
    a sweep's AUBC vs the best configuration) and its counts (seeds, a sweep's incomplete runs)."""
    widths = {key: max([20, *(len(str(v)) for v in table[key])]) for key in keys}
    spreads = [s for s in SPREADS if s[1] in table]
    counts = [c for c in COUNTS if c in table]
    lines = [" ".join([*(f"{k:<{w}}" for k, w in widths.items()), *(f"{s[0]:>16}" for s in spreads),
                       *(f"{c:>5}" for c in counts)])]
    for row in table.to_dict("records"):
        lines.append(" ".join([*(f"{str(row[k]):<{w}}" for k, w in widths.items()),
                               *(f"{row[mean]:>{sign}8.4f} ± {row[std]:<5.4f}" for _, mean, std, sign in spreads),
                               *(f"{row[c]:>{max(5, len(c))}}" for c in counts)]))
    return "\n".join(lines)
