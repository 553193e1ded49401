"""`autoal label export`: what a labeling project produced, for use outside it: the labeled samples
(and test split) as a Parquet pool, and the latest task model with its description."""
from __future__ import annotations

import re
from dataclasses import asdict
from pathlib import Path

import numpy as np
import yaml

from autoal.data.parquet import write_parquet
from autoal.data.pool import UNLABELED, Pool
from autoal.errors import AutoALError
from autoal.labeling.project import MODEL, LabelProject
from autoal.runs.directory import CHECKPOINT_BYTES
from autoal.safe_io import atomic_write, read_bytes

ROUND_FILE = re.compile(r"round(\d+)$")  # state/.../roundN.pt


def export(project: LabelProject, out: str | Path) -> Path:
    """The labeled samples (and test split) as a Parquet pool at OUT/pool, the latest model at OUT/model.pt."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise AutoALError(f"{out} exists and is not empty; choose a new directory")
    keep = project.known != UNLABELED
    test_x, test_y = project.test
    start = int(project.pool.ids.max()) + 1
    pool = Pool(project.pool.name, np.concatenate([project.pool.ids[keep], np.arange(start, start + len(test_y))]),
                np.concatenate([project.pool.x[keep], test_x]), np.concatenate([project.known[keep], test_y]),
                np.array(["train"] * int(keep.sum()) + ["test"] * len(test_y)), project.pool.classes)
    write_parquet(pool, out / "pool")
    latest = sorted((p for p in project.store.state_path(MODEL, project.seed, 0).parent.glob("round*.pt")
                     if ROUND_FILE.match(p.stem)), key=lambda p: int(ROUND_FILE.match(p.stem)[1]))
    if latest:
        atomic_write(out / "model.pt", read_bytes(latest[-1], CHECKPOINT_BYTES, "checkpoint", follow=False))
    atomic_write(out / "model.yaml", yaml.safe_dump(dict(
        asdict(project.model_recipe), shape=list(project.model_recipe.shape),
        class_names=list(project.settings.classes),
        round=int(ROUND_FILE.match(latest[-1].stem)[1]) if latest else None), sort_keys=False).encode())
    return out

