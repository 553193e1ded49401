"""Result plots: learning curves with std bands."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402


def curves(results: pd.DataFrame, path: Path, title: str = "") -> Path:
    """Accuracy vs labeled samples: mean over seeds, band of one std, one line per strategy."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for strategy, rows in sorted(results.groupby("strategy"), key=lambda kv: kv[0]):
        stats = rows.groupby("n_labeled")["accuracy"].agg(["mean", "std"]).fillna(0.0)
        ax.plot(stats.index, stats["mean"], marker=".", label=strategy)
        ax.fill_between(stats.index, stats["mean"] - stats["std"], stats["mean"] + stats["std"], alpha=0.15)
    ax.set_xlabel("labeled samples")
    ax.set_ylabel("test accuracy")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
