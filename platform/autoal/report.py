"""`autoal report DIR`: the summary table of a run or sweep directory, with its plots (re)written.

Reports read only what is on disk, so they work on finished, running and
interrupted runs and sweeps alike, and on directories copied from a cluster.
Plots go next to the results, or to `--plots DIR`; a read-only directory still
gets its table, and a note where its plots could go.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pandas as pd

from autoal import metrics, plots
from autoal.errors import AutoALError


def run_report(root: Path, out: Path | None) -> str:
    """Strategy x AUBC / F-acc over seeds; curves.png, and strategy_weights.png when telemetry exists."""
    if not (root / "results.parquet").is_file():
        return f"{root}: no finished rounds yet"
    results = _read(root / "results.parquet")
    if results.empty:
        return f"{root}: no finished rounds yet"
    dataset = str(results["dataset"].iloc[0])
    table = f"{root}: {dataset}, {len(results)} rounds\n\n{metrics.format_table(metrics.summary(results))}\n\n"
    if out is None:
        return table + f"plots not written: {root} is read-only; pass --plots DIR to write them elsewhere"
    written = [plots.curves(results, out / "curves.png", title=dataset)]
    if (root / "strategy_weights.parquet").exists():
        written.append(plots.strategy_weights(_read(root / "strategy_weights.parquet"),
                                              out / "strategy_weights.png", title=f"{dataset}: AutoAL weights"))
    return table + f"written: {', '.join(Path(p).name for p in written)} in {out}"


def sweep_report(root: Path, out: Path | None) -> str:
    from autoal import sweep

    if out is None:
        raise AutoALError(f"{root} is read-only and a sweep report writes its tables and plots; "
                          "pass --plots DIR to write them elsewhere")
    return sweep.finish(root, out)


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
