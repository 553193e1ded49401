"""`autoal report DIR`: the summary table of a run or sweep directory, with its plots (re)written.

Reports read only what is on disk, so they work on finished, running and
interrupted runs and sweeps alike, and on directories copied from a cluster;
they need no Ray Tune (a sweep's runner writes its report with `sweep_report`).
Plots go next to the results, or to `--plots DIR`; a read-only run directory
still gets its table, and a note where its plots could go.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pandas as pd

from autoal.runs import compare, metrics, plots
from autoal.errors import AutoALError
from autoal.runs.directory import atomic_write, parquet_bytes
from autoal.sweep import results as sweep_results
from autoal.sweep.plan import NAME_CHARS, read_plan


def run_report(root: Path, out: Path | None) -> str:
    """Strategy x AUBC / F-acc over seeds, and the strategies compared pair by pair; curves.png, the
    comparison files (`comparisons`), and strategy_weights.png when telemetry exists."""
    if not (root / "results.parquet").is_file():
        return f"{root}: no finished rounds yet"
    results = _read(root / "results.parquet")
    if results.empty:
        return f"{root}: no finished rounds yet"
    dataset = str(results["dataset"].iloc[0])
    table = f"{root}: {dataset}, {len(results)} rounds\n\n{metrics.format_table(metrics.summary(results))}\n\n"
    pairs, penalty = comparisons(results)
    if pairs is not None:
        table += compare.format_differences(pairs) + "\n\n"
    if out is None:
        return table + f"plots not written: {root} is read-only; pass --plots DIR to write them elsewhere"
    written = [plots.curves(results, out / "curves.png", title=dataset), *write_comparisons(pairs, penalty, out)]
    if (root / "strategy_weights.parquet").exists():
        written.append(plots.strategy_weights(_read(root / "strategy_weights.parquet"),
                                              out / "strategy_weights.png", title=f"{dataset}: AutoAL weights"))
    return table + f"written: {', '.join(Path(p).name for p in written)} in {out}"


def sweep_report(root: Path, out: Path | None) -> str:
    """Every trial of the sweep in `root` collected: results and summary tables, curves per dataset,
    AUBC vs candidate pool size when that is an axis, strategy-weight heatmaps (all into `out`);
    the summary as text."""
    if out is None:
        raise AutoALError(f"{root} is read-only and a sweep report writes its tables and plots; "
                          "pass --plots DIR to write them elsewhere")
    plan = read_plan(root)
    results, weights = sweep_results.collect(root, plan)
    if results.empty:
        return f"sweep {plan.name}: no finished rounds yet in {root / 'trials'}"
    by = sweep_results.config_columns(plan)
    table = sweep_results.summarize(results, by)
    atomic_write(out / "results.parquet", parquet_bytes(results))
    atomic_write(out / "results.csv", results.to_csv(index=False).encode())
    atomic_write(out / "summary.csv", table.to_csv(index=False).encode())
    written = [out / "results.parquet", out / "results.csv", out / "summary.csv"]
    labelled = results.assign(strategy=sweep_results.labels(results, by))
    for dataset, rows in labelled.groupby("dataset"):
        written.append(plots.curves(rows, out / f"curves_{_file_name(dataset)}.png", title=dataset))
    if "candidates_size" in plan.axes:
        written.append(plots.candidates_size(sweep_results.by_candidates_size(results, by),
                                             out / "candidates_size.png"))
    if not weights.empty:
        atomic_write(out / "strategy_weights.parquet", parquet_bytes(weights))
        written.append(out / "strategy_weights.parquet")
        heatmaps = out / "strategy_weights"
        heatmaps.mkdir(exist_ok=True)
        for (dataset, label), rows in weights.groupby(["dataset", sweep_results.labels(weights, by)]):
            plots.strategy_weights(rows, heatmaps / f"{_file_name(f'{dataset}-{label}')}.png",
                                   title=f"{dataset}: {label}")
        written.append(heatmaps)
    pairs, penalty = comparisons(labelled)
    written.extend(write_comparisons(pairs, penalty, out))
    summary = metrics.format_table(table.assign(configuration=sweep_results.labels(table, by)),
                                   keys=("dataset", "configuration"))
    if pairs is not None:
        summary += "\n\n" + compare.format_differences(pairs)
    return (f"sweep {plan.name}: {results['trial'].nunique()} trials, {len(results)} rounds\n\n"
            f"{summary}\n\nwritten: {', '.join(p.name for p in written)} in {out}")


def comparisons(results: pd.DataFrame) -> tuple[pd.DataFrame | None, pd.DataFrame | None]:
    """The paired AUBC differences and the penalty matrix of the strategies (configurations) in
    `results`; (None, None) where there is only one to compare."""
    if results["strategy"].nunique() < 2:
        return None, None
    return compare.paired_differences(results), compare.penalty_matrix(results)


def write_comparisons(pairs: pd.DataFrame | None, penalty: pd.DataFrame | None, out: Path) -> list[Path]:
    """paired_differences.parquet, penalty_matrix.parquet (one row per winner) and penalty_matrix.png in `out`."""
    if pairs is None:
        return []
    atomic_write(out / "paired_differences.parquet", parquet_bytes(pairs))
    atomic_write(out / "penalty_matrix.parquet", parquet_bytes(penalty.reset_index()))
    return [out / "paired_differences.parquet", out / "penalty_matrix.parquet",
            plots.penalty_matrix(penalty, out / "penalty_matrix.png")]


def _file_name(text) -> str:
    return NAME_CHARS.sub("_", str(text).replace(", ", ","))


def _read(path: Path) -> pd.DataFrame:
    try:
        return pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several types for damaged files
        raise AutoALError(f"{path} is damaged ({exc})") from None


@dataclass(frozen=True)
class Kind:
    """A directory autoal writes: how to recognise it and how to report it."""

    name: str
    marker: tuple[str, ...]          # files that must all exist
    report: Callable[[Path, Path | None], str]   # (directory, where plots go or None) -> text


KINDS = (
    Kind("sweep", ("sweep.yaml",), sweep_report),
    Kind("run", ("config.yaml",), run_report),
)


def report(path: str | Path, plots: str | Path | None = None) -> str:
    """The report of the run or sweep directory at `path`; plots are written to `plots`, else
    next to the results where that directory is writable."""
    root = Path(path)
    if not root.is_dir():
        raise AutoALError(f"{root} {'is not a directory' if root.exists() else 'does not exist'}")
    out = Path(plots) if plots is not None else (root if os.access(root, os.W_OK) else None)
    for kind in KINDS:
        if all((root / name).is_file() for name in kind.marker):
            if out is not None:
                out.mkdir(parents=True, exist_ok=True)
            return kind.report(root, out)
    expected = "; ".join(f"a {k.name} directory has {' + '.join(k.marker)}" for k in KINDS)
    raise AutoALError(f"{root} is not an autoal run or sweep directory ({expected})")
