"""A pool: stable int64 ids, features, labels, split; and its Parquet format.

Parquet pool format (one directory of `part-*.parquet` shards):
  id int64, x list<float32> (flattened features), y int64 (-1: out of
  distribution; null: unknown, for pools a person labels; both in the train
  split only), split string ("train" / "test"); schema
  metadata: `shape` (JSON list, per-sample shape, e.g. [1, 28, 28]),
  `classes` (number of classes), `name`.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from autoal.errors import AutoALError
from autoal.modes import as_created
from autoal.strategies.base import positions

SPLITS = ("train", "test")
OOD = -1  # the label of an out-of-distribution sample: the oracle's "none of the classes"
UNLABELED = -2  # the label is unknown (null in Parquet): nobody has answered for this sample yet


@dataclass(frozen=True, eq=False)
class Pool:
    """Samples with stable ids. x is float32 [N, *shape] (an array, or features left in Parquet
    files: `features` reads the rows asked for either way), y int64 [N]."""

    name: str
    ids: np.ndarray
    x: np.ndarray
    y: np.ndarray
    split: np.ndarray
    classes: int

    def __post_init__(self) -> None:
        n = len(self.ids)
        for field, arr in (("x", self.x), ("y", self.y), ("split", self.split)):
            if len(arr) != n:
                raise AutoALError(f"pool {self.name!r}: {field} has {len(arr)} rows but there are {n} ids")
        ordered = np.sort(self.ids)
        if (ordered[1:] == ordered[:-1]).any():
            raise AutoALError(f"pool {self.name!r}: ids are not unique")
        if isinstance(self.x, np.ndarray) and not np.isfinite(self.x).all():   # lazy features: checked when read
            bad = int((~np.isfinite(self.x.reshape(n, -1))).any(axis=1).sum())
            raise AutoALError(f"pool {self.name!r}: {bad} samples have NaN or infinite features")
        if self.classes < 2:
            raise AutoALError(f"pool {self.name!r}: needs at least 2 classes, has {self.classes}")
        out = (self.y < UNLABELED) | (self.y >= self.classes) | ((self.y < 0) & (self.split != "train"))
        if out.any():
            raise AutoALError(
                f"pool {self.name!r}: {int(out.sum())} labels outside 0..{self.classes - 1} "
                f"(e.g. {int(self.y[out][0])}; {OOD} marks out-of-distribution samples and null unknown labels, "
                "in the train split only)")
        outside = (self.split != SPLITS[0]) & (self.split != SPLITS[1])
        unknown = set(np.unique(self.split[outside]))   # not np.unique of the whole column: 10M strings
        if unknown:
            raise AutoALError(f"pool {self.name!r}: unknown split values {sorted(map(str, unknown))}; "
                              "expected train/test")

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    @property
    def is_image(self) -> bool:
        return len(self.shape) == 3

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, split: str) -> "Pool":
        mask = self.split == split
        return Pool(self.name, self.ids[mask], self.x[mask], self.y[mask], self.split[mask], self.classes)

    def features(self, rows: np.ndarray) -> np.ndarray:
        """x of `rows` as an array (a lazy pool reads them: ask for few)."""
        return np.asarray(self.x[rows])

    def rows(self, ids: np.ndarray) -> np.ndarray:
        """Row positions of `ids` (which must all be in the pool)."""
        try:
            return positions(self.ids, ids)
        except KeyError:
            raise AutoALError(f"pool {self.name!r}: unknown ids requested") from None


def with_ood_classes(pool: Pool, classes: tuple[int, ...]) -> Pool:
    """The pool with `classes` out of distribution: their train samples are
    labeled OOD, their test samples dropped (the task never has to predict
    them), and the remaining classes renumbered 0..C'-1 in order."""
    if not classes:
        return pool
    bad = sorted(set(classes) - set(range(pool.classes)))
    if bad:
        raise AutoALError(f"ood_classes {bad} are not classes of pool {pool.name!r} (0..{pool.classes - 1})")
    if pool.classes - len(classes) < 2:
        raise AutoALError(f"ood_classes leave pool {pool.name!r} fewer than 2 in-distribution classes")
    ood = np.isin(pool.y, classes) | (pool.y == OOD)
    keep = ~(ood & (pool.split != "train"))
    renumber = np.cumsum(~np.isin(np.arange(pool.classes), classes)) - 1
    y = np.where(ood, OOD, renumber[np.maximum(pool.y, 0)])
    return Pool(f"{pool.name}+ood{list(classes)}", pool.ids[keep], pool.x[keep], y[keep], pool.split[keep],
                pool.classes - len(classes))


def from_arrays(name: str, x_train, y_train, x_test, y_test, classes: int | None = None) -> Pool:
    """A pool from train/test arrays; ids are 0..N-1, train first."""
    x = np.concatenate([np.asarray(x_train), np.asarray(x_test)]).astype(np.float32, copy=False)
    y = np.concatenate([np.asarray(y_train).reshape(-1), np.asarray(y_test).reshape(-1)]).astype(np.int64)
    split = np.array(["train"] * len(x_train) + ["test"] * len(x_test))
    classes = int(y.max()) + 1 if classes is None else classes
    return Pool(name, np.arange(len(x), dtype=np.int64), x, y, split, classes)


SHARD_BYTES = 64 * 2**20        # features per Parquet file: a few Ray Data blocks, many files for many readers
ROW_GROUPS_PER_SHARD = 4        # row groups per file: the unit a reader can skip or split at


def shard_rows(width: int) -> int:
    """Rows per Parquet file for samples of `width` float32 features: SHARD_BYTES of features."""
    return max(1024, SHARD_BYTES // (4 * max(width, 1)))


def write_parquet(pool: Pool, out_dir: str | os.PathLike, log=None) -> Path:
    """Write the pool as Parquet shards sized for streaming; the directory appears complete or not at all."""
    flat = np.asarray(pool.x).reshape(len(pool), -1)
    rows = shard_rows(flat.shape[1])
    chunks = ((pool.ids[s:s + rows], flat[s:s + rows], pool.y[s:s + rows], pool.split[s:s + rows])
              for s in range(0, len(pool), rows))
    return write_shards(chunks, out_dir, pool.name, pool.shape, pool.classes, total=len(pool), log=log)


def write_shards(chunks, out_dir: str | os.PathLike, name: str, shape: tuple[int, ...], classes: int,
                 total: int | None = None, log=None) -> Path:
    """Write chunks (ids, x [n, width], y, split) as one Parquet file each, atomically (the directory
    appears complete or not at all); `log` gets a line per file written."""
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise AutoALError(f"{out} exists and is not an empty directory; choose a new directory")
    metadata = {b"shape": json.dumps(list(shape)).encode(), b"classes": str(classes).encode(), b"name": name.encode()}
    schema = pa.schema([("id", pa.int64()), ("x", pa.list_(pa.float32())), ("y", pa.int64()),
                        ("split", pa.string())], metadata=metadata)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    as_created(tmp, directory=True)
    written = 0
    try:
        for shard, (ids, x, y, split) in enumerate(chunks):
            x = np.ascontiguousarray(x, dtype=np.float32).reshape(len(ids), -1)
            xs = pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), x.shape[1])
            table = pa.table([pa.array(ids, pa.int64()), xs.cast(pa.list_(pa.float32())),
                              pa.array(y, pa.int64(), mask=np.asarray(y) == UNLABELED),
                              pa.array(np.asarray(split).astype(str))], schema=schema)
            pq.write_table(table, tmp / f"part-{shard:05d}.parquet",
                           row_group_size=max(1, -(-len(ids) // ROW_GROUPS_PER_SHARD)))
            written += len(ids)
            if log:
                log(f"wrote part-{shard:05d}.parquet: {written:,}" + (f" of {total:,} rows ({written / total:.0%})"
                                                                        if total else " rows"))
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def read_parquet(location: str | os.PathLike, lazy: bool = False) -> Pool:
    """A Parquet pool written by `write_parquet` (or by a user in that format), checked row by row.
    `lazy`: its features stay in the files (autoal.parquet_pool.LazyFeatures); else they are read."""
    from autoal.parquet_pool import open_pool

    pool = open_pool(str(location))
    return pool if lazy else replace(pool, x=np.asarray(pool.x))
