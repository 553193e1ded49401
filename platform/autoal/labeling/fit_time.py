"""How long a fit will keep a person waiting: estimated before it starts, and said when long."""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from autoal.config import ExperimentConfig
from autoal.compute.distributed import World, torch_threads
from autoal.nets.models import ModelRecipe
from autoal.compute.training import epochs_for, shard_batches

LONG_S = 15.0   # a wait worth announcing


def expected_seconds(recipe: ModelRecipe, n: int, *, epochs: int, batch_size: int, min_steps: int,
                     threads: int = 1, trainings: float = 1.0) -> float:
    """How long `trainings` fits on `n` samples will take here: one optimiser step timed in this
    process on a fit's `threads` torch threads (after one step to warm up), times the steps a fit takes."""
    world = World.local()
    net = recipe.build()
    optimizer = torch.optim.Adam(net.parameters())
    x = torch.rand((min(batch_size, n), *recipe.shape))
    y = torch.randint(0, recipe.classes, (len(x),))
    timings = []
    with torch_threads(threads):
        for _ in range(2):
            start = time.perf_counter()
            logits, _, _ = net(x)
            F.cross_entropy(logits, y).backward()
            optimizer.step()
            timings.append(time.perf_counter() - start)
    steps = epochs_for(n, batch_size, epochs, min_steps, world) * len(shard_batches(n, batch_size, 0, 0, world))
    return trainings * steps * timings[-1]


def announce(recipe: ModelRecipe, cfg: ExperimentConfig, n: int, cv_folds: int, embedded: bool, log) -> None:
    """One line before a CPU fit on `n` labels (and `cv_folds`-fold CV) expected to take LONG_S or more."""
    folds = min(cv_folds, n)
    if cfg.gpus > 0:
        return
    # the fit, and k fold models on (k-1)/k of the labels
    seconds = expected_seconds(recipe, n, epochs=cfg.epochs, batch_size=cfg.task_minibatch, min_steps=cfg.min_steps,
                               threads=cfg.torch_threads, trainings=max(1, folds))
    if seconds >= LONG_S:
        log(f"training {recipe.name} on {n} labels{f' and {folds}-fold CV' * (folds >= 2)} is expected to take "
            f"about {seconds / 60:.1f} min on this CPU" + ("" if embedded else
            "; `label init --embed resnet18` makes a project whose rounds train a head in seconds"))
