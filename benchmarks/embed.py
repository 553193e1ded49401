"""`autoal embed` throughput and driver memory, and the 600-image labeling loop on embeddings.

1. Throughput: one Parquet pool of random 3x224x224 images embedded by resnet18 (at its
   transforms' 224 px) with 1 and with 2 actors: rows/s as `autoal embed` prints it, overall (wall time
   from the first shard handed out, actor start-up included).
2. Driver memory: the same with 2 actors on two pool sizes (`--sizes`); each driver prints its own
   peak RSS (ru_maxrss). The pools' pixels are 602 KB a row, so a driver holding them would grow.
3. The labeling loop: 600 PNGs written from scikit-learn's digits (30 seeds in class folders, 3 a
   class, 570 loose); `label init --embed resnet18`, `next` (20 queries), `import` (answers from
   the true labels), `next`, each timed as a command (wall time, Python start and Ray start included).

Pretrained weights cannot be downloaded here: resnet18's state dict at random init, saved in
torchvision's format, stands in for them (same architecture, same cost). Every figure is printed
with the machine's load (`uptime`), since this machine is shared.

  .venv/bin/python benchmarks/embed.py --sizes 150 600 --work /tmp/embed-bench
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

DRIVER = """
import resource, sys
from autoal import cli
code = cli.main(sys.argv[1:])
print("PEAK_RSS_KB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, flush=True)
sys.exit(code)
"""
SHARD_ROWS = 25   # several shards per pool, so that 2 actors have work to share
ENV = dict(os.environ, RAY_DATA_DISABLE_PROGRESS_BARS="1", RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="disabled")


def load() -> str:
    return Path("/proc/loadavg").read_text().split()[0]


def autoal(*args: str) -> tuple[float, str]:
    """(wall seconds, stdout) of one `autoal` command in a fresh driver."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", DRIVER, *args], capture_output=True, text=True, env=ENV)
    seconds = time.perf_counter() - start
    if done.returncode:
        sys.exit(f"autoal {' '.join(args)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    return seconds, done.stdout


def image_pool(out: Path, n: int, side: int = 224) -> Path:
    """n random RGB images as a Parquet pool, written a chunk at a time."""
    from autoal.data.parquet import write_shards

    if not out.exists():
        rng = np.random.default_rng(0)
        chunks = ((np.arange(s, min(n, s + 256)), rng.random((min(n, s + 256) - s, 3, side, side), np.float32),
                   rng.integers(0, 10, min(n, s + 256) - s), np.full(min(n, s + 256) - s, "train"))
                  for s in range(0, n, 256))
        write_shards(chunks, out, f"random{n}", (3, side, side), 10)
    return out


def digits_folder(out: Path, seeds_per_class: int = 3, n: int = 600) -> dict[str, int]:
    """PNG digits: `seeds_per_class` per class in class folders, the rest loose; {file: label}."""
    from PIL import Image
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    truth, seen = {}, {c: 0 for c in range(10)}
    for i in range(n):
        label = int(y[i])
        seed = seen[label] < seeds_per_class
        seen[label] += seed
        folder = out / f"d{label}" if seed else out
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"digit{i:04d}.png"
        Image.fromarray((x[i].reshape(8, 8) * 16).clip(0, 255).astype(np.uint8)).resize(
            (32, 32), Image.Resampling.NEAREST).save(path)
        truth[str(path)] = label
    return truth


def answer(queries: Path, truth: dict[str, int]) -> None:
    import pandas as pd

    frame = pd.read_csv(queries)
    frame["label"] = [f"d{truth[source]}" for source in frame["source"]]
    frame.to_csv(queries, index=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs=2, default=[150, 600])
    ap.add_argument("--work", default="/tmp/embed-bench")
    ap.add_argument("--skip-embed", action="store_true")
    ap.add_argument("--skip-label", action="store_true")
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    import torch
    import torchvision

    weights = work / "resnet18-random-init.pt"
    torch.save(torchvision.models.resnet18().state_dict(), weights)
    common = ["--backbone", "resnet18", "--weights", str(weights)]

    if not args.skip_embed:
        print("| pool (rows, 3x224x224) | actors | rows/s | rows/s after start-up | driver peak RSS | load (1 min) |")
        print("|---|---|---|---|---|---|")
        small, large = args.sizes
        rss = {}
        for n, actors in ((small, 1), (small, 2), (large, 2)):
            pool = image_pool(work / f"pool{n}", n)
            out = work / f"emb{n}-{actors}"
            subprocess.run(["rm", "-rf", str(out)], check=True)
            before = load()
            _, text = autoal("embed", f"parquet:{pool}", str(out), *common, "--actors", str(actors),
                             "--shard-rows", str(SHARD_ROWS))
            summary = [line for line in text.splitlines() if line.startswith("embedded")][-1]
            rate, steady = summary.split("(")[1].split()[0], (summary.split("rows/s, ")[1:] or ["-"])[0].split()[0]
            rss[n] = int(text.split("PEAK_RSS_KB")[1].split()[0]) / 2**20
            print(f"| {n} | {actors} | {rate} | {steady} | {rss[n]:.2f} GB | {before} -> {load()} |", flush=True)
        print(f"driver peak RSS, {large} rows over {small}: {rss[large] / rss[small]:.2f}x")

    if not args.skip_label:
        folder, project = work / "digits600", work / "lab"
        subprocess.run(["rm", "-rf", str(folder), str(project)], check=True)
        truth = digits_folder(folder)
        classes = ",".join(f"d{c}" for c in range(10))
        steps = [("label init --embed resnet18", ["label", "init", str(project), "--pool", f"images:{folder}",
                                                   "--classes", classes, "--embed", "resnet18", "--weights",
                                                   str(weights)]),
                 ("label next --batch 20", ["label", "next", str(project), "--batch", "20"]),
                 ("label import", ["label", "import", str(project), str(project / "queries" / "round-001.csv")]),
                 ("label next --batch 20", ["label", "next", str(project), "--batch", "20"])]
        total = 0.0
        print("\n| command (600 digits PNGs, 30 seeds) | wall s | inside `next` | load (1 min) before -> after |")
        print("|---|---|---|---|")
        for name, command in steps:
            if name == "label import":
                answer(project / "queries" / "round-001.csv", truth)
            before = load()
            seconds, text = autoal(*command)
            total += seconds
            inside = [line.rsplit(" in ", 1)[1] for line in text.splitlines() if line.startswith("round ")]
            print(f"| {name} | {seconds:.1f} | {''.join(inside) or '-'} | {before} -> {load()} |", flush=True)
        print(f"init + next + import + next: {total:.1f} s (the issue measured 711 s on main, without --embed)")


if __name__ == "__main__":
    main()
