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
from dataclasses import dataclass
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
    """Samples with stable ids. x is float32 [N, *shape], y int64 [N]."""

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
        if len(np.unique(self.ids)) != n:
            raise AutoALError(f"pool {self.name!r}: ids are not unique")
        if not np.isfinite(self.x).all():
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
        unknown = set(np.unique(self.split)) - set(SPLITS)
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


def write_parquet(pool: Pool, out_dir: str | os.PathLike, rows_per_shard: int = 50_000) -> Path:
    """Write the pool as Parquet shards; the directory appears complete or not at all."""
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise AutoALError(f"{out} exists and is not an empty directory; choose a new directory")
    metadata = {b"shape": json.dumps(list(pool.shape)).encode(), b"classes": str(pool.classes).encode(),
                b"name": pool.name.encode()}
    schema = pa.schema([("id", pa.int64()), ("x", pa.list_(pa.float32())), ("y", pa.int64()),
                        ("split", pa.string())], metadata=metadata)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    as_created(tmp, directory=True)
    try:
        flat = pool.x.reshape(len(pool), -1)
        for shard, start in enumerate(range(0, len(pool), rows_per_shard)):
            end = min(start + rows_per_shard, len(pool))
            xs = pa.FixedSizeListArray.from_arrays(pa.array(flat[start:end].ravel()), flat.shape[1])
            table = pa.table([pa.array(pool.ids[start:end]), xs.cast(pa.list_(pa.float32())),
                              pa.array(pool.y[start:end], mask=pool.y[start:end] == UNLABELED),
                              pa.array(pool.split[start:end].astype(str))],
                             schema=schema)
            pq.write_table(table, tmp / f"part-{shard:05d}.parquet")
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def read_parquet(path: str | os.PathLike) -> Pool:
    """Read a Parquet pool written by `write_parquet` (or by a user in that format)."""
    path = Path(path)
    if not path.exists():
        raise AutoALError(f"parquet pool {path} does not exist")
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise AutoALError(f"parquet pool {path} is not readable Parquet: {exc}") from None
    missing = {"id", "x", "y", "split"} - set(table.column_names)
    if missing:
        raise AutoALError(f"parquet pool {path} lacks columns {sorted(missing)}; "
                          "expected id int64, x list<float32>, y int64, split string")
    if not len(table):
        raise AutoALError(f"parquet pool {path} has no rows")
    meta = table.schema.metadata or {}
    xs = table.column("x").combine_chunks()
    if not pa.types.is_list(xs.type) and not pa.types.is_fixed_size_list(xs.type):
        raise AutoALError(f"parquet pool {path}: x is {xs.type}; expected list<float32> (flattened features)")
    if xs.null_count:
        raise AutoALError(f"parquet pool {path}: {xs.null_count} rows have a null x")
    lengths = np.unique(xs.value_lengths().to_numpy(zero_copy_only=False))
    if len(lengths) != 1:
        raise AutoALError(f"parquet pool {path}: rows of x have different lengths {lengths[:5].tolist()}")
    width = int(lengths[0])
    shape = _metadata(meta, b"shape", path, lambda v: tuple(json.loads(v)), "a JSON list of ints, e.g. [1, 8, 8]",
                      (width,))
    if not all(isinstance(d, int) and d > 0 for d in shape) or int(np.prod(shape)) != width:
        raise AutoALError(f"parquet pool {path}: shape metadata {list(shape)} does not match {width} features")
    x = xs.flatten().to_numpy(zero_copy_only=False).astype(np.float32).reshape((len(table), *shape))
    y = _int_column(table, "y", path, null=UNLABELED)
    classes = _metadata(meta, b"classes", path, int, "an integer", None)
    classes = int(y.max()) + 1 if classes is None else classes
    name = meta.get(b"name", path.name.encode()).decode(errors="replace")
    split = table.column("split")
    if not pa.types.is_string(split.type) and not pa.types.is_large_string(split.type):
        raise AutoALError(f"parquet pool {path}: split is {split.type}; expected string (train / test)")
    return Pool(name, _int_column(table, "id", path), x, y, split.to_numpy(zero_copy_only=False).astype(str), classes)


def _int_column(table: pa.Table, name: str, path: Path, null: int | None = None) -> np.ndarray:
    """An int64 column, refusing what a cast would silently change: text, fractions, and
    nulls unless `null` stands for them (y: an unknown label)."""
    column = table.column(name)
    if column.null_count:
        if null is None:
            raise AutoALError(f"parquet pool {path}: {column.null_count} rows have a null {name}")
        column = column.fill_null(null)
    if not (pa.types.is_integer(column.type) or pa.types.is_floating(column.type)):
        raise AutoALError(f"parquet pool {path}: {name} is {column.type}; expected int64")
    values = column.to_numpy()
    if not np.array_equal(values, np.round(values)):
        bad = values[values != np.round(values)]
        raise AutoALError(f"parquet pool {path}: {len(bad)} values of {name} are not whole numbers "
                          f"(e.g. {bad[0].item()}); expected int64")
    return values.astype(np.int64)


def _metadata(meta: dict, key: bytes, path: Path, parse, expected: str, default):
    """A schema-metadata value parsed by `parse`, or `default` when absent."""
    if key not in meta:
        return default
    try:
        return parse(meta[key].decode())
    except (ValueError, TypeError, UnicodeDecodeError):
        raise AutoALError(f"parquet pool {path}: metadata {key.decode()} is {meta[key].decode(errors='replace')!r}; "
                          f"expected {expected}") from None
