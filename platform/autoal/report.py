"""`autoal report DIR`: the summary table of a run or sweep directory, with its plots (re)written.

Reports read only what is on disk, so they work on finished, running and
interrupted runs and sweeps alike, and on directories copied from a cluster.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pandas as pd

from autoal import metrics, plots
from autoal.errors import AutoALError


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
    from autoal import sweep

    return sweep.finish(root)


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
