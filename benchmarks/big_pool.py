"""One AL round on big synthetic Parquet pools: is the driver's memory flat in the pool's size?

Writes (once) synthetic pools of N rows of D-d vectors as `autoal prepare` shards them, starts a
local Ray cluster, and runs one round (train on `--initial` labels, score the pool, select `--batch`)
per strategy as a separate driver process joining that cluster, with `model: mlp` and `--actors`
scoring actors. Per pool size and strategy it prints: the driver's peak RSS (its own
ru_maxrss), the scoring throughput (unlabeled rows / score time), the select time, and the
object store's peak use (polled every 0.2 s); then the ratios the targets name:
driver RSS at the largest N over the smallest (target <= 1.2), throughput likewise (>= 0.8).

  .venv/bin/python benchmarks/big_pool.py --sizes 1000000 10000000 --dim 16
  .venv/bin/python benchmarks/big_pool.py --sizes 250000 1000000 --dim 512
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import ray

from autoal.data.parquet import shard_rows, write_shards

DRIVER = """
import json, resource, sys
from autoal import cli
code = cli.main(sys.argv[1:])
print("PEAK_RSS_KB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, flush=True)
sys.exit(code)
"""


def synthetic_pool(out: Path, n: int, dim: int, classes: int = 10, test: int = 2000, seed: int = 0) -> Path:
    """Gaussian class blobs, written chunk by chunk: the writer never holds the pool."""
    if (out / "_done").exists():
        return out
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(classes, dim)).astype(np.float32) * 2
    rows = shard_rows(dim)

    def chunks():
        for start in range(0, n, rows):
            size = min(rows, n - start)
            y = rng.integers(0, classes, size)
            x = centers[y] + rng.normal(size=(size, dim)).astype(np.float32)
            split = np.where(np.arange(start, start + size) >= n - test, "test", "train")
            yield np.arange(start, start + size, dtype=np.int64), x, y.astype(np.int64), split

    write_shards(chunks(), out, name=f"synthetic{n}x{dim}", shape=(dim,), classes=classes,
                 log=lambda line: print(line, flush=True))
    (out / "_done").touch()
    return out


def object_store_used() -> float:
    total, free = ray.cluster_resources(), ray.available_resources()
    return total.get("object_store_memory", 0.0) - free.get("object_store_memory", 0.0)


def one_round(pool: Path, strategy: str, args, out: Path) -> dict:
    """Run one round in a driver process that joins this cluster; poll the object store meanwhile."""
    argv = ["run", "--dataset", f"parquet:{pool}", "--strategy", strategy, "--model", "mlp",
            "--initial", str(args.initial), "--batch", str(args.batch), "--rounds", "1", "--epochs", "2",
            "--min-steps", "0", "--actors", str(args.actors), "--out", str(out)]
    if strategy in ("coreset", "badge", "kmeans"):
        argv += ["--prefilter", str(args.prefilter)]
    peak, done = [0.0], threading.Event()

    def poll():
        while not done.is_set():
            peak[0] = max(peak[0], object_store_used())
            time.sleep(0.2)
    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    env = dict(os.environ, RAY_ADDRESS=ray.get_runtime_context().gcs_address)
    proc = subprocess.run([sys.executable, "-c", DRIVER, *argv], env=env, capture_output=True, text=True)
    done.set()
    thread.join()
    if proc.returncode:
        raise SystemExit(f"{strategy} on {pool} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    rss = int(next(line.split()[1] for line in proc.stdout.splitlines() if line.startswith("PEAK_RSS_KB")))
    row = pd.read_csv(out / "results.csv").query("round == 0").iloc[0]
    return dict(rss_gb=rss / 2**20, score_s=row["score_s"], select_s=row["select_s"], store_peak_gb=peak[0] / 2**30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--dim", type=int, default=16)
    parser.add_argument("--strategies", nargs="+", default=["entropy", "margin", "coreset"])
    parser.add_argument("--initial", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--actors", type=int, default=2)
    parser.add_argument("--prefilter", type=int, default=10, help="batch strategies keep the top m x k by margin")
    parser.add_argument("--out", type=Path, default=Path("runs/big_pool"))
    args = parser.parse_args()
    ray.init(num_cpus=max(4, os.cpu_count() or 1), include_dashboard=False, logging_level="ERROR")
    rows = []
    for n in args.sizes:
        pool = synthetic_pool(args.out / f"pool-{n}x{args.dim}", n, args.dim)
        for strategy in args.strategies:
            run = args.out / f"run-{n}x{args.dim}-{strategy}-{time.time_ns()}"
            figures = one_round(pool, strategy, args, run)
            unlabeled = n - 2000 - args.initial
            rows.append(dict(n=n, dim=args.dim, strategy=strategy, driver_rss_gb=figures["rss_gb"],
                             rows_per_s=unlabeled / figures["score_s"], score_s=figures["score_s"],
                             select_s=figures["select_s"], object_store_peak_gb=figures["store_peak_gb"]))
            print(json.dumps(rows[-1]), flush=True)
    table = pd.DataFrame(rows)
    print("\n" + table.to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    small, large = min(args.sizes), max(args.sizes)
    for strategy, group in table.groupby("strategy", sort=False):
        at = group.set_index("n")
        print(f"{strategy}: driver RSS {large:,} / {small:,} rows = "
              f"{at.loc[large, 'driver_rss_gb'] / at.loc[small, 'driver_rss_gb']:.2f} (target <= 1.2); "
              f"throughput = {at.loc[large, 'rows_per_s'] / at.loc[small, 'rows_per_s']:.2f} (target >= 0.8)")


if __name__ == "__main__":
    main()
