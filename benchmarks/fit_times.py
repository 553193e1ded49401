"""Where the main job's fit time goes: one task-model fit of `make run` (digits, the main job's
epochs, min_steps and mini-batch) timed under each setting, side by side in one run, so a loaded
machine slows every column alike; then the main job's time projected from them.

Settings: torch CPU threads of every fit (`torch_threads`, 1 by default: the count changes a fit's
weights, so it is part of a run's config) and whether the loss-prediction module trains (the main
job's strategies read no predicted loss, so since issue 21 it does not: the classifier's weights
are bit for bit the same either way). Each is timed `--repeats` times per labeled-set size (the
main job's 40 to 180 labels); the median is printed, then the main job's 135 fits at that rate,
and its total with `--rest` seconds of search, scoring and the rest (make run at 1 thread, quiet).

    .venv/bin/python benchmarks/fit_times.py [--repeats 5]
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import time

import numpy as np
import torch

from autoal import config
from autoal.compute import distributed, training
from autoal.engine.experiment import load_data
from autoal.engine.rounds import derive_seed

SETTINGS = {   # name: (torch threads, loss module's weight)
    "1 thread, loss module trained": (1, 1.0),
    "1 thread, loss module frozen": (1, 0.0),
    "2 threads, loss module trained": (2, 1.0),
    "2 threads, loss module frozen": (2, 0.0),
}
FITS = 135   # 5 strategies x 3 seeds x 9 fits (the initial pool and 8 rounds)


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def fit_seconds(cfg, train, test, recipe, n: int, threads: int, loss_weight: float) -> tuple[float, float, float]:
    """Wall and CPU seconds of one fit on n labels under the setting, and its test accuracy."""
    rows = np.random.default_rng(n).choice(len(train), n, replace=False)
    wall, cpu = time.perf_counter(), cpu_seconds()
    with distributed.workers(0, 0.0, threads=threads):
        fit = training.fit(recipe, (train.features(rows), train.labels(rows)), test, seed=derive_seed(0, n, 1),
                           epochs=cfg.epochs, lr=cfg.lr, weight_decay=cfg.weight_decay,
                           batch_size=cfg.task_minibatch, min_steps=cfg.min_steps, loss_weight=loss_weight)
    return time.perf_counter() - wall, cpu_seconds() - cpu, fit.accuracy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sizes", type=int, nargs="+", default=[40, 100, 180])
    parser.add_argument("--rest", type=float, default=56.0,
                        help="the main job's seconds outside its fits (306.8 - 250.8 s, quiet, 1 thread)")
    args = parser.parse_args()
    cfg = config.load("jobs/main.yaml")
    train, test, recipe = load_data(cfg)
    everything = np.arange(len(test))
    test_set = (test.features(everything), test.labels(everything))
    print(f"model {recipe.name}, epochs {cfg.epochs}, min_steps {cfg.min_steps}, mini-batch {cfg.task_minibatch}; "
          f"torch {torch.__version__}, {os.cpu_count()} CPUs; load {open('/proc/loadavg').read().split()[:3]}")
    runs = {name: {n: [] for n in args.sizes} for name in SETTINGS}
    for _ in range(args.repeats):   # interleaved, so drifting load touches every setting alike
        for n in args.sizes:
            for name, (threads, loss_weight) in SETTINGS.items():
                runs[name][n].append(fit_seconds(cfg, train, test_set, recipe, n, threads, loss_weight))
    print(f"{'setting (wall s per fit)':32}" + "".join(f"{n:>8} labels" for n in args.sizes)
          + f"   CPU s/fit   {FITS} fits   main job   accuracy at {args.sizes[-1]}")
    for name, by_n in runs.items():
        walls = [statistics.median(r[0] for r in by_n[n]) for n in args.sizes]
        cpu = statistics.mean(statistics.median(r[1] for r in by_n[n]) for n in args.sizes)
        fits = FITS * statistics.mean(walls)
        print(f"{name:32}" + "".join(f"{w:>13.2f} s" for w in walls)
              + f"   {cpu:>9.2f}   {fits:>7.0f} s   {fits + args.rest:>6.0f} s   {by_n[args.sizes[-1]][0][2]:.4f}")
    print(f"load after: {open('/proc/loadavg').read().split()[:3]}")


if __name__ == "__main__":
    main()
