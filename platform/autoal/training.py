"""Task-model training on Ray Train.

`fit` runs `train_loop` under a TorchTrainer: `workers=0` is Ray Train's local
mode (the loop runs in the driver, no worker group: right for small pools);
`workers>=1` starts a worker group and wraps the model in DDP. Data reaches
the workers as object-store references; each rank takes a seeded, equal-sized
shard of every epoch's permutation, so runs are reproducible for a seed.
"""
from __future__ import annotations

import tempfile
import threading
from dataclasses import asdict, dataclass

import numpy as np
import ray
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
import torch.nn.functional as F
from ray.train import ControllerError, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from autoal import models
from autoal.errors import AutoALError


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild a TaskNet in another process."""

    name: str
    shape: tuple[int, ...]
    classes: int
    dropout: float

    def build(self) -> models.TaskNet:
        return models.build(self.name, self.shape, self.classes, self.dropout)


@dataclass(frozen=True)
class FitResult:
    state: dict          # the trained TaskNet's state dict, on CPU
    accuracy: float      # on the test split
    train_loss: float    # mean cross-entropy of the last epoch


def portable_state(module) -> dict[str, np.ndarray]:
    """A state dict as numpy arrays: Ray Train refuses torch tensors in return values."""
    return {k: v.detach().cpu().numpy() for k, v in module.state_dict().items()}


def torch_state(state: dict) -> dict[str, torch.Tensor]:
    """The inverse of `portable_state` (tensors pass through)."""
    return {k: torch.tensor(v) for k, v in state.items()}  # a copy: arrays from Ray are read-only


def run_on_ray_train(loop, config: dict, workers: int, gpus: float, name: str):
    """Run `loop(config)` under a TorchTrainer and return rank 0's return value.

    Each run gets its own storage directory, removed afterwards (nothing in it is kept): runs with the
    same name in concurrent trials or experiments must not share Ray Train's run state."""
    scaling = ScalingConfig(num_workers=workers, use_gpu=gpus > 0 and workers > 0,
                            resources_per_worker={"GPU": gpus} if gpus > 0 and workers > 0 else None)
    # A worker group that cannot start (RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S, 60 s by default) is
    # retried once, not for ever as Ray Train's default would.
    with tempfile.TemporaryDirectory(prefix=f"autoal_ray_train-{name}-", ignore_cleanup_errors=True) as storage:
        run_config = RunConfig(name=name, storage_path=storage,
                               failure_config=FailureConfig(controller_failure_limit=1))
        trainer = TorchTrainer(loop, train_loop_config=config, scaling_config=scaling, run_config=run_config)
        try:
            result = trainer.fit() if workers == 0 else _off_the_main_thread(trainer.fit)
        except ControllerError as exc:
            raise AutoALError(f"Ray Train could not start {workers} worker(s) for {name} "
                              f"({str(exc).strip().splitlines()[-1]})") from None
    if result.error:
        raise result.error
    return result.return_value


def _off_the_main_thread(fn):
    """`fn()` in a daemon thread, the main thread waiting. On the main thread Ray Train installs a
    SIGINT handler that turns Ctrl-C into a graceful abort (slow, and left installed after the fit,
    where it exits 0); here Ctrl-C raises KeyboardInterrupt at once, and the worker group ends with
    the driver."""
    box: dict = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # handed to the waiting thread
            box["error"] = exc
    thread = threading.Thread(target=target, daemon=True, name="ray-train-fit")
    thread.start()
    while thread.is_alive():
        thread.join(0.2)
    if "error" in box:
        raise box["error"]
    return box["value"]


def shard_batches(n: int, batch_size: int, seed: int, epoch: int):
    """This rank's mini-batches of one epoch: a seeded permutation, padded to a
    multiple of the world size so every rank takes the same number of steps;
    a short remainder is merged into the last full batch."""
    world, rank = ray.train.get_context().get_world_size(), ray.train.get_context().get_world_rank()
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
    perm = torch.cat([perm, perm[: (-n) % world]])[rank::world]
    batches = list(perm.split(batch_size))
    if len(batches) > 1 and len(batches[-1]) < max(2, batch_size // 2):
        # a last step on a few samples (8 of 200) jolts BatchNorm's running statistics and
        # the weights just before evaluation, and BatchNorm cannot train on one sample:
        # those samples join the previous batch instead
        batches[-2:] = [torch.cat(batches[-2:])]
    return batches


def epochs_for(n: int, config: dict) -> int:
    """`epochs`, raised until the run takes `min_steps` optimiser steps: 30 epochs of
    20 labels are 30 steps, too few for a model whose uncertainty is worth querying."""
    steps = len(shard_batches(n, config["batch_size"], config["seed"], 0))
    return max(config["epochs"], -(-config["min_steps"] // steps))


def all_sum(values: list[float], device) -> list[float]:
    """Sum over ranks (identity without a process group)."""
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t)
    return t.tolist()


def evaluate(model, x: torch.Tensor, y: torch.Tensor, device, batch_size: int = 512) -> float:
    """Accuracy over the test split, each rank scoring its share of rows."""
    world, rank = ray.train.get_context().get_world_size(), ray.train.get_context().get_world_rank()
    model.eval()
    correct = 0
    with torch.no_grad():
        for start in range(rank * batch_size, len(x), world * batch_size):
            xb, yb = x[start:start + batch_size].to(device), y[start:start + batch_size].to(device)
            correct += int((model(xb)[0].argmax(1) == yb).sum())
    total_correct, = all_sum([correct], device)
    return total_correct / len(x)


def train_epochs(model, optimizer, x: torch.Tensor, y: torch.Tensor, device, *, epochs: int, batch_size: int,
                 seed: int, joint_epochs: int = 0, loss_weight: float = 1.0) -> float:
    """Mini-batch epochs of cross-entropy plus the loss module's ranking loss (reaching the backbone
    for the first `joint_epochs`, then the taps detach: Yoo & Kweon, 120 of 200); returns the last
    epoch's mean cross-entropy over all ranks."""
    epoch_loss = float("nan")
    for epoch in range(epochs):
        model.train()
        total, count = 0.0, 0
        for index in shard_batches(len(x), batch_size, seed, epoch):
            xb, yb = x[index].to(device), y[index].to(device)
            logits, pred_loss = model(xb, joint=epoch < joint_epochs)
            losses = F.cross_entropy(logits, yb, reduction="none")
            loss = losses.mean() + loss_weight * models.loss_ranking(pred_loss, losses)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total, count = total + float(losses.detach().sum()), count + len(index)
        total, count = all_sum([total, count], device)
        epoch_loss = total / max(count, 1)
    return epoch_loss


def train_loop(config: dict):
    """Train a TaskNet (classifier + loss-prediction module) from scratch, then evaluate."""
    spec = ModelSpec(**config["spec"])
    x, y = (torch.tensor(a) for a in ray.get(config["train"]))  # object-store arrays are read-only
    x_test, y_test = (torch.tensor(a) for a in ray.get(config["test"]))
    seed = config["seed"]
    torch.manual_seed(seed)
    device = ray.train.torch.get_device()
    net = spec.build()
    model = ray.train.torch.prepare_model(net)
    optimizer = torch.optim.Adam(model.parameters(), lr=config["lr"], weight_decay=config["weight_decay"])
    epochs = epochs_for(len(x), config)
    epoch_loss = train_epochs(model, optimizer, x, y, device, epochs=epochs, batch_size=config["batch_size"],
                              seed=seed, joint_epochs=round(config["joint_fraction"] * epochs),
                              loss_weight=config["loss_weight"])
    accuracy = evaluate(net, x_test, y_test, device)
    if ray.train.get_context().get_world_rank() == 0:
        return asdict(FitResult(portable_state(net), accuracy, epoch_loss))
    return None


def fit(spec: ModelSpec, train: tuple[np.ndarray, np.ndarray], test_ref, *, seed: int, epochs: int,
        lr: float, weight_decay: float, batch_size: int, min_steps: int = 0, workers: int = 0,
        gpus: float = 0.0, name: str = "task", loss_weight: float = 1.0, joint_fraction: float = 0.0) -> FitResult:
    """Train on `train` (x, y); evaluate on the object-store ref `test_ref` = (x, y).
    The loss-prediction module's ranking loss has weight `loss_weight` and reaches the
    backbone during the first `joint_fraction` of the epochs (0: never, the default)."""
    config = dict(spec=asdict(spec), train=ray.put(train), test=test_ref, seed=seed, epochs=epochs, lr=lr,
                  weight_decay=weight_decay, batch_size=batch_size, min_steps=min_steps, loss_weight=loss_weight,
                  joint_fraction=joint_fraction)
    result = run_on_ray_train(train_loop, config, workers, gpus, name)
    return FitResult(torch_state(result["state"]), result["accuracy"], result["train_loss"])
