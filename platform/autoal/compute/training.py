"""Task-model training: the epoch loop every network of the platform shares, and `fit`,
which runs it in the driver or on training workers through `distributed.run`.

Each rank takes a seeded, equal-sized shard of every epoch's permutation, so runs are
reproducible for a seed and every rank takes the same number of steps.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from autoal.compute import distributed
from autoal.nets import models
from autoal.nets.models import ModelRecipe
from autoal.compute.distributed import World, portable_state, tensors, torch_state


@dataclass(frozen=True)
class FitResult:
    state: dict          # the trained TaskNet's state dict, on CPU
    accuracy: float      # on the test split
    train_loss: float    # mean cross-entropy of the last epoch


def shard_batches(n: int, batch_size: int, seed: int, epoch: int, world: World):
    """This rank's mini-batches of one epoch: a seeded permutation, padded to a
    multiple of the world size so every rank takes the same number of steps;
    a short remainder is merged into the last full batch."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
    perm = torch.cat([perm, perm[: (-n) % world.size]])[world.rank::world.size]
    batches = list(perm.split(batch_size))
    if len(batches) > 1 and len(batches[-1]) < max(2, batch_size // 2):
        # a last step on a few samples (8 of 200) jolts BatchNorm's running statistics and
        # the weights just before evaluation, and BatchNorm cannot train on one sample:
        # those samples join the previous batch instead
        batches[-2:] = [torch.cat(batches[-2:])]
    return batches


def epochs_for(n: int, batch_size: int, epochs: int, min_steps: int, world: World) -> int:
    """`epochs`, raised until the run takes `min_steps` optimiser steps: 30 epochs of
    20 labels are 30 steps, too few for a model whose uncertainty is worth querying."""
    steps = len(shard_batches(n, batch_size, 0, 0, world))
    return max(epochs, -(-min_steps // steps))


def evaluate(model, x: torch.Tensor, y: torch.Tensor, world: World, batch_size: int = 512) -> float:
    """Accuracy over the test split, each rank scoring its share of rows."""
    model.eval()
    correct = 0
    with torch.no_grad():
        for start in range(world.rank * batch_size, len(x), world.size * batch_size):
            xb, yb = x[start:start + batch_size].to(world.device), y[start:start + batch_size].to(world.device)
            correct += int((model(xb)[0].argmax(1) == yb).sum())
    total_correct, = world.sum([correct])
    return total_correct / len(x)


def train_epochs(model, optimizer, x: torch.Tensor, y: torch.Tensor, world: World, *, epochs: int,
                 batch_size: int, seed: int, joint_epochs: int = 0, loss_weight: float = 1.0) -> float:
    """Mini-batch epochs of cross-entropy plus the loss module's ranking loss (reaching the backbone
    for the first `joint_epochs`, then the taps detach: Yoo & Kweon, 120 of 200; `loss_weight` 0: the
    module is not trained, see `task_net`); returns the last epoch's mean cross-entropy over all ranks."""
    epoch_loss = float("nan")
    for epoch in range(epochs):
        model.train()
        total, count = 0.0, 0
        for index in shard_batches(len(x), batch_size, seed, epoch, world):
            xb, yb = x[index].to(world.device), y[index].to(world.device)
            logits, pred_loss, clean_logits = model(xb, joint=epoch < joint_epochs)
            losses = F.cross_entropy(logits, yb, reduction="none")
            loss = losses.mean()
            if loss_weight:
                target = F.cross_entropy(clean_logits.detach(), yb, reduction="none")
                loss = loss + loss_weight * models.loss_ranking(pred_loss, target)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total, count = total + float(losses.detach().sum()), count + len(index)
        total, count = world.sum([total, count])
        epoch_loss = total / max(count, 1)
    return epoch_loss


@dataclass(frozen=True)
class TrainPayload:
    """One fit of the task model: its data, and `fit`'s options."""

    recipe: ModelRecipe
    train: tuple[np.ndarray, np.ndarray]   # (x, y), or an object ref to them
    test: tuple[np.ndarray, np.ndarray]
    seed: int
    epochs: int
    lr: float
    weight_decay: float
    batch_size: int
    min_steps: int
    loss_weight: float
    joint_fraction: float
    folds: tuple = ()                      # cross-validation: (train positions, held-out positions) per fold


def task_net(recipe: ModelRecipe, loss_weight: float) -> models.TaskNet:
    """A fresh TaskNet, its loss-prediction module frozen as initialised when `loss_weight` is 0 (no
    strategy of the fit reads predicted loss): the module reads detached taps, so every other weight
    trains bit for bit as with it, and a fit saves the module's backward pass (~5% of its time,
    benchmarks/fit_times.py). Frozen before DDP wraps the net, which then leaves it out."""
    net = recipe.build()
    net.loss_head.requires_grad_(loss_weight > 0)
    return net


def train(p: TrainPayload, x: torch.Tensor, y: torch.Tensor, world: World, seed: int) -> tuple[models.TaskNet, float]:
    """A TaskNet (classifier + loss-prediction module) trained from scratch on (x, y), and its last
    epoch's loss."""
    net = task_net(p.recipe, p.loss_weight)
    model = world.prepare(net)
    optimizer = torch.optim.Adam(model.parameters(), lr=p.lr, weight_decay=p.weight_decay)
    epochs = epochs_for(len(x), p.batch_size, p.epochs, p.min_steps, world)
    epoch_loss = train_epochs(model, optimizer, x, y, world, epochs=epochs, batch_size=p.batch_size, seed=seed,
                              joint_epochs=round(p.joint_fraction * epochs), loss_weight=p.loss_weight)
    return net, epoch_loss


def train_loop(p: TrainPayload, world: World) -> dict:
    """Train a TaskNet from scratch, then evaluate."""
    (x, y), (x_test, y_test) = tensors(p.train, labels=1), tensors(p.test, labels=1)
    net, epoch_loss = train(p, x, y, world, p.seed)
    accuracy = evaluate(net, x_test, y_test, world)
    return asdict(FitResult(portable_state(net), accuracy, epoch_loss))


def folds_loop(p: TrainPayload, world: World) -> float:
    """k-fold cross-validated accuracy: one model per fold, trained on the others."""
    x, y = tensors(p.train, labels=1)
    correct = 0.0
    for fold, (train_at, held_at) in enumerate(p.folds):
        train_at, held_at = torch.tensor(train_at), torch.tensor(held_at)   # object-store arrays are read-only
        net, _ = train(p, x[train_at], y[train_at], world, p.seed + fold)
        correct += evaluate(net, x[held_at], y[held_at], world) * len(held_at)
    return correct / sum(len(held_at) for _, held_at in p.folds)


def fit(recipe: ModelRecipe, train: tuple[np.ndarray, np.ndarray], test_ref, *, seed: int, epochs: int,
        lr: float, weight_decay: float, batch_size: int, min_steps: int = 0, workers: int = 0,
        gpus: float = 0.0, name: str = "task", loss_weight: float = 1.0, joint_fraction: float = 0.0) -> FitResult:
    """Train on `train` (x, y); evaluate on `test_ref` = (x, y), an object ref (put once per experiment).
    The loss-prediction module's ranking loss has weight `loss_weight` and reaches the
    backbone during the first `joint_fraction` of the epochs (0: never, the default)."""
    payload = TrainPayload(recipe, train, test_ref, seed, epochs, lr, weight_decay, batch_size, min_steps,
                           loss_weight, joint_fraction)
    result = distributed.run(train_loop, payload, workers=workers, gpus=gpus, name=name)
    return FitResult(torch_state(result["state"]), result["accuracy"], result["train_loss"])


def cross_validate(recipe: ModelRecipe, train: tuple[np.ndarray, np.ndarray], folds: list, *, seed: int, epochs: int,
                   lr: float, weight_decay: float, batch_size: int, min_steps: int = 0, workers: int = 0,
                   gpus: float = 0.0, name: str = "cv") -> float:
    """Accuracy by cross-validation on `train` over `folds` (train positions, held-out positions):
    every fold's model trains in one run, so the estimate costs one fit's start-up, not k."""
    payload = TrainPayload(recipe, train, train, seed, epochs, lr, weight_decay, batch_size, min_steps, 0.0, 0.0,
                           tuple(folds))   # loss weight 0: only the accuracy is read
    return float(distributed.run(folds_loop, payload, workers=workers, gpus=gpus, name=name))

