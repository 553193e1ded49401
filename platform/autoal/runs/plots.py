"""Result plots: learning curves with std bands; AutoAL's strategy-weight heatmap; AUBC vs candidate pool size;
the pairwise win/tie/loss penalty matrix."""
from __future__ import annotations

from io import BytesIO
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from autoal.safe_io import atomic_write  # noqa: E402


def curves(results: pd.DataFrame, path: Path, title: str = "", ylabel: str = "test accuracy") -> Path:
    """Accuracy vs labeled samples: mean over seeds, band of one std, one line per strategy."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for strategy, rows in sorted(results.groupby("strategy"), key=lambda kv: kv[0]):
        stats = rows.groupby("n_labeled")["accuracy"].agg(["mean", "std"]).fillna(0.0)
        ax.plot(stats.index, stats["mean"], marker=".", label=strategy)
        ax.fill_between(stats.index, stats["mean"] - stats["std"], stats["mean"] + stats["std"], alpha=0.15)
    ax.set_xlabel("labeled samples")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save(fig, path)


def save(fig, path: Path) -> Path:
    """Write the figure as PNG (atomically, never through a symlink) and free it (pyplot keeps
    every open figure alive)."""
    fig.tight_layout()
    buf = BytesIO()
    fig.savefig(buf, dpi=120, format="png")
    plt.close(fig)
    atomic_write(Path(path), buf.getvalue())
    return path


def strategy_weights(frame: pd.DataFrame, path: Path, value: str = "weight_pool", title: str = "") -> Path:
    """AutoAL's candidates x rounds heatmap of the mean weight over seeds (the
    paper's Fig. 5): which strategy the search trusts as labels accumulate."""
    table = frame.pivot_table(index="candidate", columns="round", values=value, aggfunc="mean")
    table = table.reindex(frame["candidate"].unique())  # candidates in config order
    fig, ax = plt.subplots(figsize=(1.5 + 0.6 * table.shape[1], 1.2 + 0.45 * table.shape[0]))
    values = table.to_numpy()
    image = ax.imshow(values, aspect="auto", cmap="viridis")
    middle = (np.nanmin(values) + np.nanmax(values)) / 2  # dark text on viridis' light end
    for (row, col), weight in np.ndenumerate(values):
        ax.text(col, row, f"{weight:.2f}", ha="center", va="center", fontsize=7,
                color="black" if weight > middle else "white")
    ax.set_xticks(range(table.shape[1]), [str(r) for r in table.columns])
    ax.set_yticks(range(table.shape[0]), table.index)
    ax.set_xlabel("round")
    ax.set_title(title or f"AutoAL mean {value}")
    fig.colorbar(image, ax=ax)
    return save(fig, path)


def candidates_size(table: pd.DataFrame, path: Path) -> Path:
    """AUBC (mean ± std over seeds) vs candidate pool size (the paper's pool-size ablation), one line per
    `line` of `table` (columns line, candidates_size, aubc_mean, aubc_std)."""
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for line, rows in table.groupby("line"):
        rows = rows.sort_values("candidates_size")
        ax.errorbar(rows["candidates_size"], rows["aubc_mean"], yerr=rows["aubc_std"], marker="o", capsize=3,
                    label=line)
    ax.set_xlabel("candidate pool size")
    ax.set_ylabel("AUBC")
    ax.set_xticks(sorted(table["candidates_size"].unique()))
    ax.set_title("AUBC vs candidate pool size")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save(fig, path)


def penalty_matrix(matrix: pd.DataFrame, path: Path, title: str = "") -> Path:
    """BADGE's win/tie/loss heatmap: cell (i, j) is how often strategy i significantly beat j, in
    experiments (each experiment's rounds weigh 1 in all); the bottom row, each column's sum, is the
    penalty strategy j took (lower is better)."""
    values = np.vstack([matrix.to_numpy(), matrix.to_numpy().sum(axis=0)])
    label = max(len(str(name)) for name in [*matrix.index, "penalty (column sum)"]) * 0.075  # inches of text
    fig, ax = plt.subplots(figsize=(3 + label + 0.7 * matrix.shape[1], 2 + label + 0.5 * values.shape[0]))
    image = ax.imshow(values, aspect="auto", cmap="magma_r")
    middle = (values.min() + values.max()) / 2
    for (row, col), value in np.ndenumerate(values):
        ax.text(col, row, f"{value:.2f}", ha="center", va="center", fontsize=7,
                color="white" if value > middle else "black")
    ax.set_xticks(range(matrix.shape[1]), matrix.columns, rotation=45, ha="right")
    ax.set_yticks(range(values.shape[0]), [*matrix.index, "penalty (column sum)"])
    ax.axhline(matrix.shape[0] - 0.5, color="white", linewidth=2)
    ax.set_xlabel("loser")
    ax.set_ylabel("winner")
    ax.set_title(title or "pairwise wins (paired t-test per round)")
    fig.colorbar(image, ax=ax)
    return save(fig, path)
