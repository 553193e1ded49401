"""Starting or joining Ray, quietly.

Under `ray job submit` (RAY_ADDRESS set) or inside a Tune trial this joins the
cluster; otherwise it starts a local Ray with at least 4 logical CPUs, which
avoids the actor-pool and Train+Data deadlocks seen on 2-core machines.
"""
from __future__ import annotations

import logging
import os

import ray

QUIET_LOGGERS = ("ray.train", "ray.data", "ray.tune", "ray.air")


def quiet() -> None:
    """Keep Ray's per-call INFO lines (local-mode notices, executor plans) off the console."""
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    ray.data.DataContext.get_current().enable_progress_bars = False


def init_ray() -> None:
    os.environ.setdefault("RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_DATA_PARQUET_FOOTER_NUM_ACTORS", "1")
    if not ray.is_initialized():
        address = os.environ.get("RAY_ADDRESS")
        if address:
            ray.init(address=address, logging_level=logging.WARNING)
        else:
            ray.init(address="local", num_cpus=max(4, os.cpu_count() or 1), include_dashboard=False,
                     logging_level=logging.WARNING)
    quiet()
