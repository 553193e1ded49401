"""The one Ray Train runner: every network the platform trains (the task model, FitNet and
SearchNet, VAAL's and BGADL's networks) runs through `run`.

A loop is `loop(payload, world)`: a typed, frozen payload (a dataclass with a `seed` field)
and the `World` it runs in. `run` owns the rest: the payload's transfer through the object
store (fields that are object refs arrive resolved), the seed, the device, and the return
of rank 0's value. `workers=0` is Ray Train's local mode (the loop runs in the driver, no
worker group: right for small pools); `workers>=1` starts a worker group, and
`World.prepare` wraps modules in DDP. A loop takes its world as an argument, so it also
runs in a unit test as `loop(payload, World.local())`, without Ray.
"""
from __future__ import annotations

import dataclasses
import os
import tempfile
import threading
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import ray
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from ray.train import ControllerError, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer
from torch import nn

from autoal.errors import AutoALError


@dataclass(frozen=True)
class World:
    """Where a loop runs: `size` ranks, this one `rank`, on `device`."""

    size: int
    rank: int
    device: torch.device

    @classmethod
    def local(cls) -> "World":
        """One process on the CPU: a loop called directly, in a test."""
        return cls(1, 0, torch.device("cpu"))

    def prepare(self, module: nn.Module) -> nn.Module:
        """`module` on this rank's device, in DDP when there is more than one rank
        (the plain module stays the one to read the state from)."""
        module = module.to(self.device)
        if self.size == 1:
            return module
        ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(module, device_ids=ids)

    def sum(self, values: list[float]) -> list[float]:
        """`values` summed over the ranks."""
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        if self.size > 1:
            dist.all_reduce(t)
        return t.tolist()


def portable_state(module: nn.Module) -> dict[str, np.ndarray]:
    """A state dict as numpy arrays: Ray Train refuses torch tensors in return values."""
    return {k: v.detach().cpu().numpy() for k, v in module.state_dict().items()}


def tensors(data, labels: int | None = None) -> list[torch.Tensor]:
    """A payload's arrays as tensors: copies (object-store arrays are read-only), the one at
    index `labels` as int64, whatever integer type the pool keeps its labels in."""
    return [torch.tensor(a, dtype=torch.int64 if i == labels else None) for i, a in enumerate(data)]


def torch_state(state: dict) -> dict[str, torch.Tensor]:
    """The inverse of `portable_state` (tensors pass through)."""
    return {k: torch.tensor(v) for k, v in state.items()}  # a copy: arrays from Ray are read-only


def run(loop: Callable[[Any, World], Any], payload, *, workers: int, gpus: float, name: str):
    """`loop(payload, world)` on `workers` Ray Train workers (0: local mode in the driver),
    each with `gpus` GPUs; returns rank 0's return value.

    Each run gets its own storage directory, removed afterwards (nothing in it is kept):
    runs with the same name in concurrent trials or experiments must not share Ray Train's
    run state."""
    scaling = ScalingConfig(num_workers=workers, use_gpu=gpus > 0 and workers > 0,
                            resources_per_worker={"GPU": gpus} if gpus > 0 and workers > 0 else None)
    config = dict(loop=loop, payload=ray.put(payload))
    # A worker group that cannot start (RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S, 60 s by default) is
    # retried once, not for ever as Ray Train's default would.
    with tempfile.TemporaryDirectory(prefix=f"autoal_ray_train-{name}-", ignore_cleanup_errors=True) as storage:
        run_config = RunConfig(name=name, storage_path=storage,
                               failure_config=FailureConfig(controller_failure_limit=1))
        trainer = TorchTrainer(_worker, train_loop_config=config, scaling_config=scaling, run_config=run_config)
        try:
            result = trainer.fit() if workers == 0 else _off_the_main_thread(trainer.fit)
        except ControllerError as exc:
            raise AutoALError(f"Ray Train could not start {workers} worker(s) for {name} "
                              f"({str(exc).strip().splitlines()[-1]})") from None
    if result.error:
        raise result.error
    return result.return_value


def _worker(config: dict):
    """Every rank: resolve the payload, seed, run the loop; only rank 0's value is returned."""
    payload = ray.get(config["payload"])
    payload = dataclasses.replace(payload, **{
        f.name: ray.get(getattr(payload, f.name)) for f in dataclasses.fields(payload)
        if isinstance(getattr(payload, f.name), ray.ObjectRef)})
    context = ray.train.get_context()
    world = World(context.get_world_size(), context.get_world_rank(), ray.train.torch.get_device())
    torch.manual_seed(payload.seed)
    deterministic()
    value = config["loop"](payload, world)
    return value if world.rank == 0 else None


def deterministic() -> None:
    """Make this process's torch kernels deterministic, so that a seed fixes the trained weights
    bit for bit on a GPU and on a many-core CPU too (benchmarks/gpu_check.py: without it, two fits
    with one seed differed by 2.5e-2 in a weight, on an H200 and on its 16-core CPU). An op with
    no deterministic kernel warns instead of failing."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")   # cuBLAS's deterministic mode needs it
    torch.use_deterministic_algorithms(True, warn_only=True)


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
