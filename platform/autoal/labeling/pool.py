"""What a labeling project labels: its settings (project.yaml) and its pool, with labels numbered
by the project's class names."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from autoal.data import datasets, images
from autoal.data.parquet import pool_schema, read_parquet, shard_table
from autoal.data.pool import Pool
from autoal.data.sources import split_ref
from autoal.errors import AutoALError
from autoal.labeling import files as label_files
from autoal.nets import backbones
from autoal.safe_io import atomic_write, own_dir, shown


@dataclass(frozen=True)
class ProjectSettings:
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


def load_pool(ref: str, classes: tuple[str, ...], data_root: str) -> tuple[Pool, np.ndarray]:
    """The pool of `ref` with labels numbered by `classes`, and each sample's source file ('' if none)."""
    name, arg = split_ref(ref)
    if name == "images":  # class folders are matched to the classes by name
        return images.read_folder(arg, classes)
    pool = datasets.load(ref, data_root)
    if pool.classes > len(classes):
        raise AutoALError(f"pool {shown(ref)} has {pool.classes} classes but --classes names {len(classes)}")
    # a person labels a pool small enough to hold: its features are read here
    return Pool(pool.name, pool.ids, np.asarray(pool.x), pool.y, pool.split, len(classes)), np.full(len(pool), "")


def embed_project(settings: ProjectSettings, folder: Path, cfg) -> None:
    """Embed the project's pool (and test pool) with its backbone, into folder/pool and folder/test."""
    from autoal.compute.embed import embed

    for which, source in (("pool", settings.pool), ("test", settings.test)):
        if source:
            embed(source, str(folder / which), settings.embed, weights=settings.weights, gpus=cfg.gpus,
                  data_root=cfg.data_root, classes=settings.classes if source.startswith("images:") else None,
                  log=lambda line: None)


def with_embeddings(pool: Pool, location: Path | None, sources: np.ndarray, settings: ProjectSettings) -> Pool:
    """The pool with each sample's features replaced by its embedding at `location` (None: as it is).
    Image files added to the folder since `label init` are embedded here, in the driver, once:
    their embeddings go to `location`-added, in a file named for the ids it holds."""
    if location is None:
        return pool
    embedded = read_parquet(location)
    ids, x = embedded.ids, embedded.x
    added = location.with_name(f"{location.name}-added")
    if not np.isin(pool.ids, ids).all() and added.is_dir() and not added.is_symlink():
        earlier = read_parquet(added)
        ids, x = np.concatenate([ids, earlier.ids]), np.concatenate([x, earlier.x])
    missing = np.flatnonzero(~np.isin(pool.ids, ids))
    if len(missing):
        if not all(sources[missing]):
            raise AutoALError(f"{len(missing)} samples of pool {pool.name!r} have no embedding in {location}: rows "
                              "added to a Parquet pool after `label init --embed` are not embedded; start a new project")
        ids = np.concatenate([ids, pool.ids[missing]])
        x = np.concatenate([x, _embed_added(pool, missing, sources[missing], settings, added)])
    order = np.argsort(ids, kind="stable")
    return Pool(pool.name, pool.ids, x[order[np.searchsorted(ids, pool.ids, sorter=order)]], pool.y, pool.split,
                pool.classes)


def _embed_added(pool: Pool, rows: np.ndarray, files: np.ndarray, settings: ProjectSettings,
                 folder: Path) -> np.ndarray:
    """Embeddings of image files added since `label init`, kept in `folder` for later commands."""
    from autoal.compute.embed import FileShard

    print(f"embedding {len(rows)} image files added since `label init` with {settings.embed}", flush=True)
    embedder = backbones.Embedder(settings.embed, backbones.state_dict(settings.embed, settings.weights))
    ids, x, y, split = FileShard(tuple(files), pool.ids[rows], pool.y[rows]).embed(embedder, batch_size=32)
    sink = pa.BufferOutputStream()
    schema = pool_schema(f"{pool.name}+{settings.embed}", x.shape[1:], pool.classes)
    pq.write_table(shard_table(schema, ids, x, y, split), sink)
    name = hashlib.sha256(np.ascontiguousarray(ids, np.int64).tobytes()).hexdigest()[:16]
    atomic_write(own_dir(folder.parent, folder.name) / f"added-{name}.parquet", sink.getvalue().to_pybytes())
    return x


def absolute_ref(ref: str) -> str:
    """`images:` and `parquet:` references with an absolute path, so the project works from any directory."""
    name, arg = split_ref(ref)
    return f"{name}:{Path(arg).expanduser().resolve()}" if name in ("images", "parquet") and arg else ref
