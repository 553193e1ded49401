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
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from autoal.errors import AutoALError
from autoal.safe_io import shown
from autoal.modes import as_created
from autoal.strategies.base import positions

SPLITS = ("train", "test")
OOD = -1  # the label of an out-of-distribution sample: the oracle's "none of the classes"
UNLABELED = -2  # the label is unknown (null in Parquet): nobody has answered for this sample yet


def label_dtype(classes: int) -> np.dtype:
    """The smallest signed integer type holding every label of `classes` classes, OOD and UNLABELED
    (1 byte a sample for up to 127 classes: the driver keeps a label per sample of the pool)."""
    return np.dtype(np.int8 if classes < 128 else np.int16 if classes < 2**15 else np.int32)


def split_column(values, name: str) -> pd.Categorical:
    """Pool `name`'s split column as train/test categories (1 byte a sample, not a 5-character
    string); unknown values are a user error."""
    if isinstance(values, pd.Categorical) and list(values.categories) == list(SPLITS):
        return values
    values = np.asarray(values)
    codes = np.full(len(values), -1, dtype=np.int8)
    for code, split in enumerate(SPLITS):
        codes[values == split] = code
    if (codes < 0).any():
        raise unknown_splits(name, np.unique(values[codes < 0].astype(str)).tolist())
    return pd.Categorical.from_codes(codes, categories=list(SPLITS))


def unknown_splits(name: str, values) -> AutoALError:
    return AutoALError(f"pool {shown(name)}: unknown split values {sorted(map(str, values))}; expected train/test")


def labels_outside(name: str, count: int, example: int, classes: int) -> AutoALError:
    return AutoALError(
        f"pool {shown(name)}: {count} labels outside 0..{classes - 1} (e.g. {example}; {OOD} marks "
        "out-of-distribution samples and null unknown labels, in the train split only)")


@dataclass(frozen=True, eq=False)
class Pool:
    """Samples with stable ids. x is float32 [N, *shape] (an array, or features left in Parquet
    files: `features` reads the rows asked for either way); y holds labels in the smallest integer
    type (`labels` gives int64); split is a train/test Categorical.

    The index is compact because the driver keeps it for every sample of a pool of millions:
    ids (8 bytes), a label (1) and a split (1) a sample; a lazy x shares the pool's ids."""

    name: str
    ids: np.ndarray
    x: np.ndarray
    y: np.ndarray
    split: pd.Categorical
    classes: int

    def __post_init__(self) -> None:
        n = len(self.ids)
        for field, arr in (("x", self.x), ("y", self.y), ("split", self.split)):
            if len(arr) != n:
                raise AutoALError(f"pool {shown(self.name)}: {field} has {len(arr)} rows but there are {n} ids")
        if self.classes < 2:
            raise AutoALError(f"pool {shown(self.name)}: needs at least 2 classes, has {self.classes}")
        object.__setattr__(self, "split", split_column(self.split, self.name))
        if n > 1 and not (self.ids[1:] > self.ids[:-1]).all():   # ascending ids are unique
            ordered = np.sort(self.ids)
            if (ordered[1:] == ordered[:-1]).any():
                raise AutoALError(f"pool {shown(self.name)}: ids are not unique")
        if isinstance(self.x, np.ndarray) and not np.isfinite(self.x).all():   # lazy features: checked when read
            bad = int((~np.isfinite(self.x.reshape(n, -1))).any(axis=1).sum())
            raise AutoALError(f"pool {shown(self.name)}: {bad} samples have NaN or infinite features")
        y = np.asarray(self.y)
        out = (y < UNLABELED) | (y >= self.classes) | ((y < 0) & (self.split != "train"))
        if out.any():
            raise labels_outside(self.name, int(out.sum()), int(y[out][0]), self.classes)
        object.__setattr__(self, "y", y.astype(label_dtype(self.classes), copy=False))
        if hasattr(self.x, "with_ids"):   # a lazy view's ids are the pool's: one array, not two
            if not np.array_equal(self.x.ids, self.ids):
                raise ValueError("a lazy pool's features are not in the order of its ids")
            object.__setattr__(self, "x", self.x.with_ids(self.ids))

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    @property
    def is_image(self) -> bool:
        return len(self.shape) == 3

    def __len__(self) -> int:
        return len(self.ids)

    def take(self, index: np.ndarray) -> "Pool":
        """The samples at `index` (positions or a mask), unchecked: they were checked as this pool's.
        A mask of one run of rows (a split stored in one piece) takes views, not copies; a lazy x
        reads none of the samples."""
        index = _as_run(index)
        ids, x = self.view(index)
        part = object.__new__(Pool)
        for name, value in dict(name=self.name, ids=ids, x=x, y=self.y[index], split=self.split[index],
                                classes=self.classes).items():
            object.__setattr__(part, name, value)
        return part

    def view(self, index) -> tuple[np.ndarray, np.ndarray]:
        """The ids and x of the samples at `index`: what a scoring pass takes (a lazy x shares
        the ids and reads none of the samples)."""
        ids = self.ids[index]
        return ids, self.x.with_ids(ids) if hasattr(self.x, "with_ids") else self.x[index]

    def subset(self, split: str) -> "Pool":
        return self.take(np.asarray(self.split == split))

    def features(self, rows: np.ndarray) -> np.ndarray:
        """x of `rows` as an array (a lazy pool reads them: ask for few)."""
        return np.asarray(self.x[rows])

    def labels(self, rows: np.ndarray) -> np.ndarray:
        """y of `rows` as int64, the type losses and ledgers take."""
        return self.y[rows].astype(np.int64)

    def rows(self, ids: np.ndarray) -> np.ndarray:
        """Row positions of `ids` (which must all be in the pool)."""
        try:
            return positions(self.ids, ids)
        except KeyError:
            raise AutoALError(f"pool {shown(self.name)}: unknown ids requested") from None


def _as_run(index):
    """A boolean mask that selects one run of rows as a slice (numpy indexes it with views)."""
    index = np.asarray(index)
    if index.dtype != bool or not index.any():
        return index
    first, last = int(index.argmax()), len(index) - int(index[::-1].argmax())
    return slice(first, last) if index[first:last].all() else index


def with_ood_classes(pool: Pool, classes: tuple[int, ...]) -> Pool:
    """The pool with `classes` out of distribution: their train samples are
    labeled OOD, their test samples dropped (the task never has to predict
    them), and the remaining classes renumbered 0..C'-1 in order."""
    if not classes:
        return pool
    bad = sorted(set(classes) - set(range(pool.classes)))
    if bad:
        raise AutoALError(f"ood_classes {bad} are not classes of pool {shown(pool.name)} (0..{pool.classes - 1})")
    if pool.classes - len(classes) < 2:
        raise AutoALError(f"ood_classes leave pool {shown(pool.name)} fewer than 2 in-distribution classes")
    ood = np.isin(pool.y, classes) | (pool.y == OOD)
    keep = ~(ood & (pool.split != "train"))
    renumber = np.cumsum(~np.isin(np.arange(pool.classes), classes)) - 1
    y = np.where(ood, OOD, renumber[np.maximum(pool.y, 0)])
    kept = pool.take(keep)
    return Pool(f"{pool.name}+ood{list(classes)}", kept.ids, kept.x, y[keep], kept.split, pool.classes - len(classes))


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
    """Write the pool as Parquet shards sized for streaming; the directory appears complete or not at all.
    A lazy pool (Parquet to Parquet: re-sharding) streams from its files, a shard at a time."""
    rows = shard_rows(int(np.prod(pool.shape)))
    if hasattr(pool.x, "batches"):
        features = pool.x.batches(rows)
    else:
        features = ((pool.ids[s:s + rows], pool.x[s:s + rows]) for s in range(0, len(pool), rows))
    chunks = ((ids, x, pool.y[at], pool.split[at]) for ids, x in features for at in [pool.rows(ids)])
    return write_shards(chunks, out_dir, pool.name, pool.shape, pool.classes, total=len(pool), log=log)


def write_shards(chunks, out_dir: str | os.PathLike, name: str, shape: tuple[int, ...], classes: int,
                 total: int | None = None, log=None) -> Path:
    """Write chunks (ids, x [n, width], y, split) as one Parquet file each, atomically (the directory
    appears complete or not at all); `log` gets a line per file written."""
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise AutoALError(f"{out} exists and is not an empty directory; choose a new directory")
    schema = pool_schema(name, shape, classes)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    as_created(tmp, directory=True)
    written = 0
    try:
        for shard, (ids, x, y, split) in enumerate(chunks):
            table = shard_table(schema, ids, x, y, split)
            pq.write_table(table, tmp / f"part-{shard:05d}.parquet", row_group_size=row_group_rows(len(ids)))
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


def pool_schema(name: str, shape: tuple[int, ...], classes: int, x_type: pa.DataType = pa.float32()) -> pa.Schema:
    """The Arrow schema of a pool's shards; `x_type` float16 halves an embedding pool (readers
    widen it to float32)."""
    metadata = {b"shape": json.dumps(list(shape)).encode(), b"classes": str(classes).encode(), b"name": name.encode()}
    return pa.schema([("id", pa.int64()), ("x", pa.list_(x_type)), ("y", pa.int64()), ("split", pa.string())],
                     metadata=metadata)


def shard_table(schema: pa.Schema, ids, x, y, split) -> pa.Table:
    """One shard's rows in the pool format: x flattened per row, an UNLABELED y as null."""
    x_type = schema.field("x").type.value_type
    x = np.ascontiguousarray(x, dtype=x_type.to_pandas_dtype()).reshape(len(ids), -1)
    xs = pa.FixedSizeListArray.from_arrays(pa.array(x.ravel(), x_type), x.shape[1])
    return pa.table([pa.array(ids, pa.int64()), xs.cast(pa.list_(x_type)),
                     pa.array(y, pa.int64(), mask=np.asarray(y) == UNLABELED),
                     pa.array(np.asarray(split).astype(str))], schema=schema)


def row_group_rows(rows: int) -> int:
    """Rows per row group of a shard of `rows` rows."""
    return max(1, -(-rows // ROW_GROUPS_PER_SHARD))


def read_parquet(location: str | os.PathLike, lazy: bool = False) -> Pool:
    """A Parquet pool written by `write_parquet` (or by a user in that format), checked row by row.
    `lazy`: its features stay in the files (autoal.parquet_pool.LazyFeatures); else they are read."""
    from autoal.parquet_pool import open_pool

    pool = open_pool(str(location))
    return pool if lazy else replace(pool, x=np.asarray(pool.x))
