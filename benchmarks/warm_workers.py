"""What a fit costs where it runs: in the driver, on one warm training worker, and on a cold Ray
Train worker group started for each fit (`warm_workers: false`, the path before issue 24).

One AutoAL experiment on digits per mode (the issue's protocol: 40 + 3 x 20, one seed, margin's
budget), each in its own directory. Prints per mode: the worker group's start-up (once, in
the first round), the task model's fit per round (train_s; the first round's includes the
start-up), AutoAL's search per query round (search_s), the run's wall time, and whether every
round's accuracy equals the driver's (one seed, one result, whatever the mode). Then why the driver
and a worker once differed: the largest weight difference between two fits with one seed in one
process, with 1 torch thread (what a 1-CPU Ray worker gets) and with all the machine's cores.

    .venv/bin/python benchmarks/warm_workers.py [--rounds 3] [--modes driver warm cold] [--gpus 0]
"""
from __future__ import annotations

import argparse
import re
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from autoal import config
from autoal.compute import distributed, training
from autoal.data import datasets
from autoal.engine import experiment

MODES = {"driver": dict(workers=0), "warm": dict(workers=1), "cold": dict(workers=1, warm_workers=False)}
STARTED = re.compile(r"started \d+ training worker\(s\) in ([\d.]+)s")


def run(mode: str, args, out: Path) -> dict:
    cfg = config.load(None, dict(dataset="digits", strategies=["autoal"], initial=40, batch=20, rounds=args.rounds,
                                 seeds=[0], scoring_tasks=0, gpus=args.gpus, **MODES[mode]))
    said: list[str] = []
    t0 = time.perf_counter()
    results = experiment.Experiment.prepare(cfg, out, log=said.append).run()
    wall = time.perf_counter() - t0
    search = pd.read_parquet(out / "search.parquet")
    starts = [float(m[1]) for line in said if (m := STARTED.search(line))]
    return dict(results=results.sort_values("round"), search=search.sort_values("round"), wall=wall, starts=starts)


def thread_effect(cores: int) -> float:
    """Largest |weight difference| between one fit on 1 torch thread and the same fit on `cores`."""
    pool = datasets.load("digits", "unused")
    train, test = pool.subset("train"), pool.subset("test")
    payload = training.TrainPayload(training.ModelRecipe("cnn", train.shape, 10, 0.3), (train.x[:100], train.y[:100]),
                                    (test.x, test.y), 5, 30, 1e-3, 5e-4, 64, 100, 1.0, 0.0)
    weights = []
    for threads in (1, cores):
        torch.set_num_threads(threads)
        torch.manual_seed(payload.seed)
        distributed.deterministic()
        state = training.train_loop(payload, distributed.World.local())["state"]
        weights.append(np.concatenate([v.ravel() for v in state.values()]).astype(np.float64))
    return float(np.abs(weights[0] - weights[1]).max())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Per-fit time in the driver, on warm and on cold workers.")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    parser.add_argument("--gpus", type=float, default=0.0, help="GPUs per worker (and for the driver's fits)")
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="autoal-warm-bench-"))
    try:
        runs = {mode: run(mode, args, root / mode) for mode in args.modes}
    finally:
        shutil.rmtree(root, ignore_errors=True)

    print(f"digits, autoal, 40 + {args.rounds} x 20, seed 0, gpus {args.gpus:g}; seconds")
    print(f"{'mode':<8} {'start-up':>8} {'fit r0':>7} {'fit r1+ (each)':>22} {'search (each round)':>26} "
          f"{'wall':>7}  accuracy = driver's")
    reference = runs.get("driver", next(iter(runs.values())))["results"]["accuracy"].to_numpy()
    for mode, r in runs.items():
        fits, search = r["results"]["train_s"].to_numpy(), r["search"]["search_s"].to_numpy()
        start = f"{r['starts'][0]:.1f}" if r["starts"] else "-"
        same = bool((r["results"]["accuracy"].to_numpy() == reference).all())
        print(f"{mode:<8} {start:>8} {fits[0]:>7.2f} {' '.join(f'{f:.2f}' for f in fits[1:]):>22} "
              f"{' '.join(f'{s:.2f}' for s in search):>26} {r['wall']:>7.1f}  {same}")
    if "driver" in runs and "warm" in runs:
        driver, warm = runs["driver"], runs["warm"]
        fit = warm["results"]["train_s"].iloc[1:].mean() / driver["results"]["train_s"].iloc[1:].mean()
        search = warm["search"]["search_s"].iloc[1:].mean() / driver["search"]["search_s"].iloc[1:].mean()
        print(f"warm / driver after the first round: task-model fit {fit:.2f}x, search {search:.2f}x (target <= 2x)")
    cores = torch.get_num_threads()
    print(f"one fit, 1 torch thread against {cores}: largest weight difference {thread_effect(cores):.1e}")


if __name__ == "__main__":
    main()
