"""Whether one strategy beats another: paired AUBC differences over seeds, and the win/tie/loss
penalty matrix of BADGE (Ash et al., ICLR 2020, appendix), from a results table.

A results table has the columns of results.parquet: strategy, seed, round, n_labeled,
accuracy, and dataset where present (a sweep's labelled configurations go in `strategy`).
Paired seeds share the initial pool and the initial model, so strategy a's AUBC minus b's,
seed by seed, removes the seed's luck; the difference is reported with its 95% t interval and
two paired tests, t and Wilcoxon signed-rank (scipy.stats). A claim that a beats b is made only
where the t-test rejects at alpha; 3 seeds can show one strategy both better and worse than
random (CDALBench), so claims need about 10.

Degenerate samples never raise: fewer than 2 paired seeds give the mean and no interval or
p-value (NaN); differences that are all equal give the interval [d, d] and p = 1 when d = 0,
p = 0 (t-test) otherwise; Wilcoxon drops zero differences, p = 1 when none is left.
"""
from __future__ import annotations

import warnings
from itertools import combinations

import numpy as np
import pandas as pd
from scipy import stats

from autoal.runs import metrics

ALPHA = 0.05
DIFFERENCE_COLUMNS = ("dataset", "a", "b", "seeds", "mean", "ci_low", "ci_high", "p_t", "p_wilcoxon", "verdict")


def paired_test(diff, alpha: float = ALPHA) -> dict:
    """The paired differences `diff` (one per seed) summarised: n, mean, the (1 - alpha) t interval
    of the mean, the paired t-test's and the Wilcoxon signed-rank test's two-sided p-values."""
    d = np.asarray(diff, dtype=np.float64)
    n, mean = len(d), float(d.mean()) if len(d) else float("nan")
    if n < 2:
        return dict(seeds=n, mean=mean, ci_low=np.nan, ci_high=np.nan, p_t=np.nan, p_wilcoxon=np.nan)
    if np.all(d == d[0]):   # no spread: scipy gives NaN here, the answer is known
        low = high = mean
        p_t = 1.0 if mean == 0.0 else 0.0
    else:
        half = stats.t.ppf(1 - alpha / 2, n - 1) * d.std(ddof=1) / np.sqrt(n)
        low, high = mean - half, mean + half
        p_t = float(stats.ttest_1samp(d, 0.0).pvalue)
    return dict(seeds=n, mean=mean, ci_low=float(low), ci_high=float(high), p_t=p_t, p_wilcoxon=_wilcoxon(d))


def _wilcoxon(d: np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank p of d against 0, zero differences dropped (1 when all are zero)."""
    if not np.any(d != 0):
        return 1.0
    with warnings.catch_warnings():   # scipy warns when ties force the normal approximation
        warnings.simplefilter("ignore")
        return float(stats.wilcoxon(d, zero_method="wilcox").pvalue)


def verdict(row: dict, alpha: float = ALPHA) -> str:
    """'a > b' or 'a < b' where the paired t-test rejects at alpha, else 'no difference shown'."""
    if not row["p_t"] < alpha:
        return "no difference shown"
    return "a > b" if row["mean"] > 0 else "a < b"


def _experiments(results: pd.DataFrame):
    """(dataset, its rows) for each dataset of the table; one unnamed experiment without the column."""
    if "dataset" not in results:
        return [("", results)]
    return list(results.groupby("dataset", sort=True))


def paired_differences(results: pd.DataFrame, alpha: float = ALPHA) -> pd.DataFrame:
    """Per dataset, every pair (a, b) of its strategies once, a the one with the higher mean AUBC:
    the AUBC difference a - b over the seeds both ran (`paired_test`) and its verdict. Columns
    DIFFERENCE_COLUMNS; sorted by dataset, then a's and b's rank."""
    rows = []
    for dataset, part in _experiments(results):
        runs = metrics.per_run(part, keys=("strategy", "seed")).pivot(index="seed", columns="strategy", values="aubc")
        ranked = runs.mean().sort_values(ascending=False, kind="stable").index
        for a, b in combinations(ranked, 2):
            both = runs[[a, b]].dropna()
            row = dict(dataset=dataset, a=a, b=b, **paired_test(both[a] - both[b], alpha))
            rows.append({**row, "verdict": verdict(row, alpha)})
    return pd.DataFrame(rows, columns=list(DIFFERENCE_COLUMNS))


def penalty_matrix(results: pd.DataFrame, alpha: float = ALPHA) -> pd.DataFrame:
    """BADGE's pairwise penalty matrix: P[i, j] sums, over experiments (datasets) and their labeling
    rounds (round 0, the shared initial pool, excluded where later rounds exist), 1 / (the
    experiment's number of rounds) for each round where strategy i beats j: a two-sided paired
    t-test over the seeds both ran, at alpha, with t > t_crit (needs at least 2 seeds; all
    differences equal and positive count as a win). So each experiment weighs at most 1 per
    pair; a column's sum is the penalty strategy j took (lower is better), a row's the wins of i.
    Rows (winners) and columns (losers) are the strategies in name order."""
    names = sorted(results["strategy"].unique())
    penalty = pd.DataFrame(0.0, index=pd.Index(names, name="winner"), columns=names)
    for _, part in _experiments(results):
        if (part["round"] > 0).any():
            part = part[part["round"] > 0]
        rounds = part["round"].unique()
        for _, at in part.groupby("round"):
            acc = at.pivot_table(index="seed", columns="strategy", values="accuracy", aggfunc="mean")
            for a, b in combinations(acc.columns, 2):
                both = acc[[a, b]].dropna()
                winner = _round_winner(both[a].to_numpy() - both[b].to_numpy(), alpha)
                if winner:
                    i, j = (a, b) if winner > 0 else (b, a)
                    penalty.loc[i, j] += 1.0 / len(rounds)
    return penalty


def _round_winner(d: np.ndarray, alpha: float) -> int:
    """+1 where a paired t-test says the differences d are above 0 at two-sided level alpha,
    -1 where below, 0 otherwise."""
    if len(d) < 2:
        return 0
    if np.all(d == d[0]):
        return int(np.sign(d[0]))
    t = d.mean() / (d.std(ddof=1) / np.sqrt(len(d)))
    crit = stats.t.ppf(1 - alpha / 2, len(d) - 1)
    return 1 if t > crit else -1 if t < -crit else 0


def format_differences(table: pd.DataFrame) -> str:
    """The pairwise table as aligned text, one line a pair."""
    width = max([12, *(len(str(s)) for s in (*table["a"], *table["b"]))])
    show_dataset = table["dataset"].astype(str).str.len().gt(0).any()
    head = ("dataset".ljust(16) + " " if show_dataset else "") + \
        f"{'a':<{width}} {'b':<{width}} seeds {'a - b':>8} {'95% interval':>21} {'p (t)':>7} {'p (W)':>7}  verdict"
    lines = ["paired AUBC differences over seeds (a - b; 95% t interval; paired t and Wilcoxon signed-rank)", head]
    for r in table.to_dict("records"):
        interval = f"[{r['ci_low']:+.4f}, {r['ci_high']:+.4f}]"
        lines.append((f"{str(r['dataset']):<16} " if show_dataset else "") +
                     f"{r['a']:<{width}} {r['b']:<{width}} {r['seeds']:>5} {r['mean']:>+8.4f} {interval:>21} "
                     f"{r['p_t']:>7.3f} {r['p_wilcoxon']:>7.3f}  {r['verdict']}")
    return "\n".join(lines)
