"""Where every network the platform trains runs: the task model, FitNet and SearchNet, VAAL's and
BGADL's networks all go through `run`.

A loop is `loop(payload, world)`: a typed, frozen payload (a dataclass with a `seed` field)
and the `World` it runs in. `run` owns the rest: the payload's transfer through the object
store (fields that are object refs arrive resolved), the seed, deterministic kernels, the
run's torch threads per rank (`torch_threads`), the device, and the return of rank 0's value.
Every rank of every mode starts a loop the same way (`execute`), so a seed gives the same
weights in the driver and on one worker.

Three places to run: `workers=0` runs the loop in the driver (right for small pools). Inside
`with workers(n, gpus):` (an experiment, a sweep trial, a labeling round) fits run on one warm
group of `n` Ray actors joined in one torch process group, started at the first fit and killed
when the block ends; a worker that dies mid-fit is replaced and the fit retried once. Outside
such a block (or with `warm_workers: false`) each fit starts its own Ray Train worker group,
which costs ~20 s a fit. A loop takes its world as an argument, so it also runs in a unit test
as `loop(payload, World.local())`, without Ray.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
import tempfile
import threading
import time
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import ray
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from ray.exceptions import RayActorError
from ray.train import ControllerError, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer
from torch import nn

from autoal.errors import AutoALError

# torch CPU threads of every rank, in the driver too, set per `workers` block from the config's `torch_threads`:
# the count changes a fit's weights (its reductions split differently), so a run records it
_THREADS: ContextVar[int] = ContextVar("autoal_torch_threads", default=1)
START_TIMEOUT_S = float(os.environ.get("AUTOAL_WORKER_START_TIMEOUT_S", 120))
STOP_WAIT_S = 10.0


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
    """`loop(payload, world)` on `workers` ranks (0: in the driver), each with `gpus` GPUs; returns
    rank 0's return value. The warm group of the enclosing `workers` block runs it if it has this
    shape; otherwise a Ray Train worker group is started for this one fit."""
    if workers == 0:
        return execute(loop, payload, World(1, 0, _device(gpus)), _THREADS.get())
    group = _GROUP.get()
    if group is not None and (group.size, group.gpus) == (workers, gpus):
        return group.run(loop, payload, name)
    return _cold_run(loop, payload, workers, gpus, name)


def execute(loop: Callable[[Any, World], Any], payload, world: World, threads: int):
    """How every rank runs a loop: resolve the payload's object refs, seed, switch on deterministic
    kernels, take `threads` torch threads (the caller's count is restored after)."""
    payload = dataclasses.replace(payload, **{
        f.name: ray.get(getattr(payload, f.name)) for f in dataclasses.fields(payload)
        if isinstance(getattr(payload, f.name), ray.ObjectRef)})
    with torch_threads(threads):
        torch.manual_seed(payload.seed)
        deterministic()
        return loop(payload, world)


@contextlib.contextmanager
def torch_threads(threads: int):
    """Within this block torch runs on `threads` CPU threads; the caller's count is restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _device(gpus: float) -> torch.device:
    """This process's device: its first visible GPU (Ray makes a worker's GPUs the visible ones)."""
    return torch.device("cuda", 0) if gpus > 0 and torch.cuda.is_available() else torch.device("cpu")


# --- the warm group -------------------------------------------------------------------------------

_GROUP: ContextVar["WorkerGroup | None"] = ContextVar("autoal_worker_group", default=None)


@contextlib.contextmanager
def workers(size: int, gpus: float, *, warm: bool = True, threads: int = 1, log: Callable[[str], None] = print):
    """Within this block every fit's ranks take `threads` torch threads (a CPU worker reserves as
    many CPUs), and `run` with `size` workers and `gpus` uses one warm group, started at the first
    such fit (so a resumed run with nothing left starts none) and torn down when the block ends,
    however it ends. `size` 0 or `warm` False: no group, every fit runs as outside."""
    threads_token = _THREADS.set(threads)
    group = WorkerGroup(size, gpus, threads, log) if size and warm else None
    token = _GROUP.set(group)
    try:
        yield group
    finally:
        _GROUP.reset(token)
        _THREADS.reset(threads_token)
        if group is not None:
            group.stop()


@ray.remote(max_restarts=0, max_task_retries=0)
class TrainWorker:
    """One rank of a warm group: a process that keeps torch, CUDA and the process group across fits."""

    def __init__(self, size: int, rank: int, gpus: float, threads: int):
        self.world, self.threads = World(size, rank, _device(gpus)), threads

    def address(self) -> tuple[str, int]:
        """Where rank 0 serves the process group's rendezvous: this node and a free port."""
        with socket.socket() as s:
            s.bind(("", 0))
            return ray.util.get_node_ip_address(), s.getsockname()[1]

    def join(self, host: str, port: int) -> None:
        """Join the group's torch process group (gloo on the CPU, NCCL on GPUs), once."""
        if self.world.size > 1:
            dist.init_process_group("nccl" if self.world.device.type == "cuda" else "gloo",
                                    init_method=f"tcp://{host}:{port}", rank=self.world.rank,
                                    world_size=self.world.size)

    def run(self, loop: Callable[[Any, World], Any], payload) -> Any:
        value = execute(loop, payload, self.world, self.threads)
        return value if self.world.rank == 0 else None


class WorkerGroup:
    """`size` TrainWorkers owned by this process: Ray kills them if it dies, even by kill -9."""

    def __init__(self, size: int, gpus: float, threads: int = 1, log: Callable[[str], None] = print):
        self.size, self.gpus, self.threads, self.log = size, gpus, threads, log
        self.actors: list = []

    def start(self) -> None:
        t0 = time.perf_counter()
        # a CPU a torch thread, or its GPUs alone, as Ray Train reserves them (runtime.demand counts them)
        options = dict(num_cpus=0, num_gpus=self.gpus) if self.gpus > 0 else dict(num_cpus=self.threads)
        self.actors = [TrainWorker.options(**options).remote(self.size, rank, self.gpus, self.threads)
                       for rank in range(self.size)]
        host, port = _gather([self.actors[0].address.remote()], START_TIMEOUT_S, self)[0]
        _gather([a.join.remote(host, port) for a in self.actors], START_TIMEOUT_S, self)
        self.log(f"autoal: started {self.size} training worker(s) in {time.perf_counter() - t0:.1f}s; "
                 "they serve every fit until the run ends")

    def stop(self) -> None:
        """Kill the workers and wait (up to STOP_WAIT_S) until Ray reports them dead, so that none
        outlives the block, however busy the machine."""
        for actor in self.actors:
            ray.kill(actor, no_restart=True)
        probes = [actor.address.remote() for actor in self.actors]   # they fail once their actor is dead
        ray.wait(probes, num_returns=len(probes), timeout=STOP_WAIT_S)
        self.actors = []

    def run(self, loop: Callable[[Any, World], Any], payload, name: str):
        """Rank 0's value of `loop` on the group; a worker lost mid-fit costs one new group and one
        retry (the same seed gives the same result), a second loss is an error."""
        ref = ray.put(payload)
        for attempt in (1, 2):
            if not self.actors:
                self.start()
            try:
                return _gather([a.run.remote(loop, ref) for a in self.actors], None, self)[0]
            except RayActorError as exc:
                self.stop()
                cause = str(exc).strip().splitlines()[0]
                if attempt == 2:
                    raise AutoALError(f"a training worker died during {name} twice ({cause})") from None
                self.log(f"autoal: a training worker died during {name} ({cause}); "
                         "retrying the fit on new workers")
            except BaseException:
                if self.size > 1:   # the other ranks may wait for ever in a collective
                    self.stop()
                raise


def _gather(refs: list, timeout_s: float | None, group: WorkerGroup) -> list:
    """The values of `refs`, the first failure raised at once (not after the other ranks finish);
    polled each second, so Ctrl-C reaches the driver at once."""
    pending, deadline = list(refs), None if timeout_s is None else time.monotonic() + timeout_s
    while pending:
        ready, pending = ray.wait(pending, num_returns=1, timeout=1.0)
        ray.get(ready)
        if not ready and deadline is not None and time.monotonic() > deadline:
            group.stop()
            raise AutoALError(f"Ray could not start {group.size} training worker(s) with {group.gpus:g} GPU(s) "
                              f"each within {timeout_s:g} s (AUTOAL_WORKER_START_TIMEOUT_S)")
    return ray.get(refs)


# --- a cold Ray Train worker group per fit ---------------------------------------------------------

def _cold_run(loop: Callable[[Any, World], Any], payload, workers: int, gpus: float, name: str):
    """`loop` on a Ray Train worker group started for this fit alone.

    Each run gets its own storage directory, removed afterwards (nothing in it is kept):
    runs with the same name in concurrent trials or experiments must not share Ray Train's
    run state."""
    threads = _THREADS.get()
    scaling = ScalingConfig(num_workers=workers, use_gpu=gpus > 0,
                            resources_per_worker={"GPU": gpus} if gpus > 0 else {"CPU": threads})
    config = dict(loop=loop, payload=ray.put(payload), threads=threads)
    # A worker group that cannot start (RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S, 60 s by default) is
    # retried once, not for ever as Ray Train's default would.
    with tempfile.TemporaryDirectory(prefix=f"autoal_ray_train-{name}-", ignore_cleanup_errors=True) as storage:
        run_config = RunConfig(name=name, storage_path=storage,
                               failure_config=FailureConfig(controller_failure_limit=1))
        trainer = TorchTrainer(_cold_worker, train_loop_config=config, scaling_config=scaling,
                               run_config=run_config)
        try:
            result = _off_the_main_thread(trainer.fit)
        except ControllerError as exc:
            raise AutoALError(f"Ray Train could not start {workers} worker(s) for {name} "
                              f"({str(exc).strip().splitlines()[-1]})") from None
    if result.error:
        raise result.error
    return result.return_value


def _cold_worker(config: dict):
    """Every rank of a Ray Train group: `execute` the loop; only rank 0's value is returned."""
    context = ray.train.get_context()
    world = World(context.get_world_size(), context.get_world_rank(), ray.train.torch.get_device())
    value = execute(config["loop"], ray.get(config["payload"]), world, config["threads"])
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
