"""Where the main job's fit time goes: one task-model fit of `make run` (digits, the main job's
epochs, min_steps and mini-batch) timed under each setting of what every fit fixes, side by side
in one run, so a loaded machine slows every column alike.

Settings: torch CPU threads (`distributed.THREADS`: 1 since the warm-workers change, so a seed gives
the same weights in the driver and on a worker) and torch's deterministic kernels (on since the
GPU check). Each is timed `--repeats` times per labeled-set size (the main job's 40 to 180 labels);
the median is printed, then the time of the main job's 135 fits at that rate.

    .venv/bin/python benchmarks/fit_times.py [--repeats 5]
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
import torch

from autoal import config
from autoal.compute import distributed, training
from autoal.engine.experiment import load_data
from autoal.engine.rounds import derive_seed

SETTINGS = {   # name: (threads, deterministic kernels)
    "1 thread, deterministic (now)": (1, True),
    "1 thread, not deterministic": (1, False),
    "2 threads, deterministic": (2, True),
    "2 threads, not deterministic": (2, False),
}


def fit_seconds(cfg, train, test, recipe, n: int, threads: int, deterministic: bool) -> tuple[float, float]:
    """Seconds of one fit on n labels under the setting, and its test accuracy."""
    distributed.THREADS = threads
    distributed.deterministic = (lambda: torch.use_deterministic_algorithms(True, warn_only=True)) if deterministic \
        else (lambda: torch.use_deterministic_algorithms(False))
    rows = np.random.default_rng(n).choice(len(train), n, replace=False)
    t0 = time.perf_counter()
    fit = training.fit(recipe, (train.features(rows), train.labels(rows)), test, seed=derive_seed(0, n, 1),
                       epochs=cfg.epochs, lr=cfg.lr, weight_decay=cfg.weight_decay, batch_size=cfg.task_minibatch,
                       min_steps=cfg.min_steps)
    return time.perf_counter() - t0, fit.accuracy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sizes", type=int, nargs="+", default=[40, 100, 180])
    args = parser.parse_args()
    cfg = config.load("jobs/main.yaml")
    train, test, recipe = load_data(cfg)
    everything = np.arange(len(test))
    test_set = (test.features(everything), test.labels(everything))
    print(f"model {recipe.name}, epochs {cfg.epochs}, min_steps {cfg.min_steps}, mini-batch {cfg.task_minibatch}; "
          f"torch {torch.__version__}, {os.cpu_count()} CPUs; load {open('/proc/loadavg').read().split()[:3]}")
    seconds = {name: {n: [] for n in args.sizes} for name in SETTINGS}
    for _ in range(args.repeats):   # interleaved, so drifting load touches every setting alike
        for n in args.sizes:
            for name, (threads, deterministic) in SETTINGS.items():
                seconds[name][n].append(fit_seconds(cfg, train, test_set, recipe, n, threads, deterministic)[0])
    print(f"{'setting':32}" + "".join(f"{n:>8} labels" for n in args.sizes) + "   main job (135 fits)")
    for name, by_n in seconds.items():
        medians = [statistics.median(by_n[n]) for n in args.sizes]
        print(f"{name:32}" + "".join(f"{m:>13.2f} s" for m in medians) + f"   {135 * statistics.mean(medians):>8.0f} s")
    print(f"load after: {open('/proc/loadavg').read().split()[:3]}")


if __name__ == "__main__":
    main()
