"""What a labeling project labels: its spec (project.yaml) and its pool, with labels numbered
by the project's class names."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from autoal.data import datasets, images
from autoal.labeling import files as label_files
from autoal.errors import AutoALError
from autoal.safe_io import shown
from autoal.data.pool import Pool
from autoal.data.parquet import read_parquet
from autoal.data.sources import split_spec


@dataclass(frozen=True)
class ProjectSpec:
    """project.yaml: what is labeled, into which classes, and how progress is measured."""

    pool: str
    classes: tuple[str, ...]
    test: str | None = None      # a fully labeled pool to measure accuracy on
    strategy: str = "entropy"    # the default query strategy of `next`
    cv_folds: int = 3            # without a test split: accuracy estimated by k-fold CV on the labels (0: none)
    embed: str | None = None     # a backbone that embedded the images once (in <project>/embeddings): runs train a head
    weights: str | None = None   # its local state dict (None: torchvision's published weights)


def parse_classes(text: str) -> tuple[str, ...]:
    classes = tuple(c.strip() for c in text.split(","))
    reserved = {label_files.SKIP, label_files.OOD_ANSWER} & set(classes)
    if len(classes) < 2 or "" in classes or len(set(classes)) != len(classes) or reserved:
        raise AutoALError(f"--classes {shown(text)}: give at least 2 distinct, non-empty class names, comma-separated"
                          f"{'; skip and ood are answers, not classes' if reserved else ''}")
    return classes


def load_pool(spec: str, classes: tuple[str, ...], data_root: str) -> tuple[Pool, np.ndarray]:
    """The pool of `spec` with labels numbered by `classes`, and each sample's source file ('' if none)."""
    name, arg = split_spec(spec)
    if name == "images":  # class folders are matched to the classes by name
        return images.read_folder(arg, classes)
    pool = datasets.load(spec, data_root)
    if pool.classes > len(classes):
        raise AutoALError(f"pool {shown(spec)} has {pool.classes} classes but --classes names {len(classes)}")
    # a person labels a pool small enough to hold: its features are read here
    return Pool(pool.name, pool.ids, np.asarray(pool.x), pool.y, pool.split, len(classes)), np.full(len(pool), "")


def embed_project(spec: ProjectSpec, folder: Path, cfg) -> None:
    """Embed the project's pool (and test pool) with its backbone, into folder/pool and folder/test."""
    from autoal.compute.embed import embed

    for which, source in (("pool", spec.pool), ("test", spec.test)):
        if source:
            embed(source, str(folder / which), spec.embed, weights=spec.weights, gpus=cfg.gpus,
                  data_root=cfg.data_root, classes=spec.classes if source.startswith("images:") else None,
                  log=lambda line: None)


def with_embeddings(pool: Pool, location: Path | None) -> Pool:
    """The pool with each sample's features replaced by its embedding at `location` (None: as it is)."""
    if location is None:
        return pool
    embedded = read_parquet(location)
    missing = np.setdiff1d(pool.ids, embedded.ids)
    if len(missing):
        raise AutoALError(f"{len(missing)} samples of pool {pool.name!r} have no embedding in {location}: files "
                          "added after `label init --embed` are not embedded; start a new project to include them")
    return Pool(pool.name, pool.ids, embedded.features(embedded.rows(pool.ids)), pool.y, pool.split, pool.classes)


def absolute_spec(spec: str) -> str:
    """`images:` and `parquet:` specs with an absolute path, so the project works from any directory."""
    name, arg = split_spec(spec)
    return f"{name}:{Path(arg).expanduser().resolve()}" if name in ("images", "parquet") and arg else spec
