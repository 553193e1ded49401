"""Starting or joining Ray, quietly, and checking that it can give what a run asks for.

Under `ray job submit` (RAY_ADDRESS set) or inside a Tune trial this joins the
cluster; otherwise it starts a local Ray with at least 4 logical CPUs, which
avoids the actor-pool and Train+Data deadlocks seen on 2-core machines.

A local Ray's head processes (GCS, raylet) die with the driver (Ray sets
PR_SET_PDEATHSIG on them), but the agents the raylet starts (dashboard agent,
runtime-env agent) only notice its death by polling, then wait up to a minute
on the dead GCS. So a local start also starts a reaper: a tiny process that
waits for the driver to end, however it ends (kill -9 included: its pipe
closes), and then kills every process left of that Ray session: those naming
its session directory on their command line, and those whose environment names
its raylet (the agents and workers retitle themselves).

Ray queues a request it cannot place and waits for ever (an autoscaler might
add the node), so an impossible one (8 workers on 4 CPUs, a GPU on a machine
without one) is refused here, before the run starts; on an autoscaling cluster
the wait for new nodes is bounded and announced.
"""
from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from typing import Callable

import ray

from autoal.errors import AutoALError

QUIET_LOGGERS = ("ray.train", "ray.data", "ray.tune", "ray.air")


def quiet() -> None:
    """Keep Ray's per-call INFO lines (local-mode notices, executor plans) off the console; Ray Data's
    progress bars stay (RAY_DATA_DISABLE_PROGRESS_BARS=1 hides them): they show a long scoring pass move."""
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def init_ray() -> None:
    os.environ.setdefault("RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_DATA_PARQUET_FOOTER_NUM_ACTORS", "1")
    if not ray.is_initialized():
        address = os.environ.get("RAY_ADDRESS")
        if address:
            ray.init(address=address, logging_level=logging.WARNING)
        else:
            # ERROR: Ray's start-up notices (token auth set up, ...) stay in its log files
            ray.init(address="local", num_cpus=max(4, os.cpu_count() or 1), include_dashboard=False,
                     logging_level=logging.ERROR)
            node = ray._private.worker._global_node
            _reap_with_driver(node.get_session_dir_path(), node.all_processes["raylet"][0].process.pid)
    quiet()


# Runs with Python's -I -S: stdlib only, no site packages, so it starts in milliseconds.
REAPER = """
import os, signal, sys
session, raylet = sys.argv[1].encode(), b"\\0RAY_RAYLET_PID=" + sys.argv[2].encode() + b"\\0"
sys.stdin.buffer.read()   # returns when the driver's end of the pipe closes: the driver has ended
for pid in filter(str.isdigit, os.listdir("/proc")):
    if int(pid) == os.getpid():
        continue
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f, open(f"/proc/{pid}/environ", "rb") as e:
            if session in f.read() or raylet in b"\\0" + e.read():
                os.kill(int(pid), signal.SIGKILL)
    except OSError:
        pass
"""
_REAPERS: list[subprocess.Popen] = []   # the driver keeps the pipe's write end until it exits


def _reap_with_driver(session_dir: str, raylet_pid: int) -> None:
    """Start the reaper of this driver's local Ray session (Linux: it reads /proc)."""
    if not sys.platform.startswith("linux"):
        return
    _REAPERS.append(subprocess.Popen([sys.executable, "-I", "-S", "-c", REAPER, session_dir, str(raylet_pid)],
                                     stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True))


def demand(workers: int, actors: int, gpus: float, threads: int = 1) -> dict[str, float]:
    """What a run needs of the cluster at its peak: training (`workers` workers of `threads` CPUs,
    or `gpus` GPUs) and scoring (`actors` Ray Data actors of 1 CPU and `gpus` GPUs) at once, since
    the warm training workers keep theirs while the pool is scored."""
    train = {"GPU": workers * gpus} if gpus > 0 else {"CPU": float(workers * threads)}
    score = {"CPU": float(actors), "GPU": actors * gpus}
    return {k: train.get(k, 0.0) + score.get(k, 0.0) for k in ("CPU", "GPU")}


def _short(need: dict[str, float], have: dict[str, float]) -> dict[str, float]:
    """What `have` lacks of `need`."""
    return {k: v - have.get(k, 0.0) for k, v in need.items() if v > have.get(k, 0.0) + 1e-9}


def _show(resources: dict[str, float]) -> str:
    return ", ".join(f"{v:g} {k}" for k, v in resources.items()) or "nothing"


def check_resources(workers: int, actors: int, gpus: float, log: Callable[[str], None] = print,
                    wait_s: float | None = None, *, threads: int = 1) -> None:
    """Start or join Ray if the request needs it (workers or actors), then refuse what the cluster cannot
    meet; on an autoscaling cluster that could grow to meet it, ask the autoscaler and wait up to
    `wait_s` (AUTOAL_RESOURCE_WAIT_S, default 600 s)."""
    if gpus > 0 and (workers == 0 or actors == 0):
        import torch

        if not torch.cuda.is_available():
            where = "trains" if workers == 0 else "scores"
            raise AutoALError(f"gpus {gpus:g} asks for a GPU, but this process {where} in place "
                              f"({'workers' if workers == 0 else 'actors'}: 0) and sees no CUDA GPU; "
                              "use --gpus 0, or workers/actors on GPU nodes")
    need = {k: v for k, v in demand(workers, actors, gpus, threads).items() if v > 0}
    if not need:   # everything in this process: Ray is not started (5-30 s on a loaded 2-core machine)
        return
    init_ray()
    short = _short(need, ray.cluster_resources())
    if not short:
        return
    offered = {k: ray.cluster_resources().get(k, 0.0) for k in need}
    limits = ray._private.state.state.get_max_resources_from_cluster_config()  # None: no autoscaler
    if limits is None or _short(need, {**offered, **limits}):
        raise AutoALError(f"workers {workers}, actors {actors}, gpus {gpus:g} need {_show(need)}, but the Ray "
                          f"cluster {'can grow to' if limits else 'offers'} {_show({**offered, **(limits or {})})}; "
                          "ask for fewer workers, actors or GPUs")
    wait_s = float(os.environ.get("AUTOAL_RESOURCE_WAIT_S", 600)) if wait_s is None else wait_s
    log(f"autoal: waiting up to {wait_s:g} s for the autoscaler to add {_show(short)} "
        f"(the cluster offers {_show(offered)}, the run needs {_show(need)})")
    from ray.autoscaler.sdk import request_resources

    request_resources(bundles=[{"CPU": 1.0, **({"GPU": gpus} if gpus else {})}] * max(workers, actors, 1))
    deadline = time.monotonic() + wait_s
    while _short(need, ray.cluster_resources()):
        if time.monotonic() > deadline:
            raise AutoALError(f"the autoscaler did not add {_show(short)} within {wait_s:g} s; "
                              "check the cluster's node types and quotas, or ask for less")
        time.sleep(min(5.0, wait_s))
