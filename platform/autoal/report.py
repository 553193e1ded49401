"""`autoal report DIR`: the summary table of a run or sweep directory, with its plots (re)written.

Reports read only what is on disk, so they work on finished, running and
interrupted runs and sweeps alike, and on directories copied from a cluster;
they need no Ray Tune (a sweep's runner writes its report with `sweep_report`).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pandas as pd

from autoal import metrics, plots
from autoal.errors import AutoALError
from autoal.store import atomic_write, parquet_bytes
from autoal.sweep import results as sweep_results
from autoal.sweep.spec import NAME_CHARS, read_spec


def run_report(root: Path) -> str:
    """Strategy x AUBC / F-acc over seeds; curves.png, and strategy_weights.png when telemetry exists."""
    results = _read(root / "results.parquet")
    if results.empty:
        return f"{root}: no finished rounds yet"
    dataset = str(results["dataset"].iloc[0])
    written = [plots.curves(results, root / "curves.png", title=dataset)]
    if (root / "strategy_weights.parquet").exists():
        written.append(plots.strategy_weights(_read(root / "strategy_weights.parquet"),
                                              root / "strategy_weights.png", title=f"{dataset}: AutoAL weights"))
    return (f"{root}: {dataset}, {len(results)} rounds\n\n"
            f"{metrics.format_table(metrics.summary(results))}\n\n"
            f"written: {', '.join(Path(p).name for p in written)} in {root}")


def sweep_report(root: Path) -> str:
    """Every trial of the sweep in `root` collected: results and summary tables, curves per dataset,
    AUBC vs candidate pool size when that is an axis, strategy-weight heatmaps; the summary as text."""
    spec = read_spec(root)
    results, weights = sweep_results.collect(root, spec)
    if results.empty:
        return f"sweep {spec.name}: no finished rounds yet in {root / 'trials'}"
    by = sweep_results.config_columns(spec)
    table = sweep_results.summarize(results, by)
    atomic_write(root / "results.parquet", parquet_bytes(results))
    atomic_write(root / "results.csv", results.to_csv(index=False).encode())
    atomic_write(root / "summary.csv", table.to_csv(index=False).encode())
    written = [root / "results.parquet", root / "results.csv", root / "summary.csv"]
    labelled = results.assign(strategy=sweep_results.labels(results, by))
    for dataset, rows in labelled.groupby("dataset"):
        written.append(plots.curves(rows, root / f"curves_{_file_name(dataset)}.png", title=dataset))
    if "candidates_size" in spec.axes:
        written.append(plots.candidates_size(sweep_results.by_candidates_size(results, by),
                                             root / "candidates_size.png"))
    if not weights.empty:
        atomic_write(root / "strategy_weights.parquet", parquet_bytes(weights))
        written.append(root / "strategy_weights.parquet")
        heatmaps = root / "strategy_weights"
        heatmaps.mkdir(exist_ok=True)
        for (dataset, label), rows in weights.groupby(["dataset", sweep_results.labels(weights, by)]):
            plots.strategy_weights(rows, heatmaps / f"{_file_name(f'{dataset}-{label}')}.png",
                                   title=f"{dataset}: {label}")
        written.append(heatmaps)
    summary = metrics.format_table(table.assign(configuration=sweep_results.labels(table, by)),
                                   keys=("dataset", "configuration"))
    return (f"sweep {spec.name}: {results['trial'].nunique()} trials, {len(results)} rounds\n\n"
            f"{summary}\n\nwritten: {', '.join(p.name for p in written)} in {root}")


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
    report: Callable[[Path], str]


KINDS = (
    Kind("sweep", ("sweep.yaml",), sweep_report),
    Kind("run", ("config.yaml", "results.parquet"), run_report),
)


def report(path: str | Path) -> str:
    """The report of the run or sweep directory at `path` (plots are rewritten next to its results)."""
    root = Path(path)
    for kind in KINDS:
        if all((root / name).is_file() for name in kind.marker):
            return kind.report(root)
    expected = "; ".join(f"a {k.name} directory has {' + '.join(k.marker)}" for k in KINDS)
    raise AutoALError(f"{root} is not an autoal run or sweep directory ({expected})")
