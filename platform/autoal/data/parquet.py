"""The Parquet pool format, its writer and its reader.

A pool is one directory of `part-*.parquet` shards:
  id int64, x list<float32> (flattened features), y int64 (-1: out of
  distribution; null: unknown, for pools a person labels; both in the train
  split only), split string ("train" / "test"); schema
  metadata: `shape` (JSON list, per-sample shape, e.g. [1, 28, 28]),
  `classes` (number of classes), `name`.

`open_pool` checks the whole pool while streaming it in record batches, so memory stays flat in the
pool's size, and returns a `Pool` whose `x` is `LazyFeatures` (data.lazy): the features stay in the
files (a local directory, `file://`, `s3://`, `gs://`: any filesystem pyarrow knows).
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from autoal.data.ids import SPLITS, ascending, is_lazy, split_codes
from autoal.data.lazy import LazyFeatures, filesystem, scan
from autoal.data.pool import UNLABELED, Pool, label_dtype, labels_outside, unknown_splits
from autoal.errors import AutoALError
from autoal.permissions import as_created
from autoal.safe_io import folder_files, shown

SHARD_BYTES = 64 * 2**20        # features per Parquet file: a few Ray Data blocks, many files for many readers
ROW_GROUPS_PER_SHARD = 4        # row groups per file: the unit a reader can skip or split at


def shard_rows(width: int) -> int:
    """Rows per Parquet file for samples of `width` float32 features: SHARD_BYTES of features."""
    return max(1024, SHARD_BYTES // (4 * max(width, 1)))


def write_parquet(pool: Pool, out_dir: str | os.PathLike, log=None) -> Path:
    """Write the pool as Parquet shards sized for streaming; the directory appears complete or not at all.
    A lazy pool (Parquet to Parquet: re-sharding) streams from its files, a shard at a time."""
    rows = shard_rows(int(np.prod(pool.shape)))
    if is_lazy(pool.x):
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
    `lazy`: its features stay in the files (autoal.data.parquet.LazyFeatures); else they are read."""
    pool = open_pool(str(location))
    return pool if lazy else replace(pool, x=np.asarray(pool.x))


def open_pool(location: str):
    """The pool at `location` with lazy features, after checking every row in one streamed pass
    that fills the compact index (ids, labels, split codes) batch by batch."""

    fs, path = filesystem(location)
    where = location
    try:
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.NotFound:
            raise AutoALError(f"parquet pool {where} does not exist")
        if info.type == pafs.FileType.Directory and isinstance(fs, pafs.LocalFileSystem) \
                and not folder_files(Path(path), f"parquet pool {where}"):
            raise AutoALError(f"parquet pool {where} is an empty directory; expected Parquet files "
                              "(see `autoal prepare`)")
        data = pads.dataset(path, filesystem=fs, format="parquet")
        schema, n = data.schema, data.count_rows()
    except (pa.ArrowInvalid, OSError) as exc:
        raise AutoALError(f"parquet pool {where} is not readable Parquet: {exc}") from None
    missing = {"id", "x", "y", "split"} - set(schema.names)
    if missing:
        raise AutoALError(f"parquet pool {where} lacks columns {sorted(missing)}; "
                          "expected id int64, x list<float32>, y int64, split string")
    x_type = schema.field("x").type
    if not pa.types.is_list(x_type) and not pa.types.is_fixed_size_list(x_type) \
            and not pa.types.is_large_list(x_type):
        raise AutoALError(f"parquet pool {where}: x is {x_type}; expected list<float32> (flattened features)")
    split_type = schema.field("split").type
    if not pa.types.is_string(split_type) and not pa.types.is_large_string(split_type):
        raise AutoALError(f"parquet pool {where}: split is {split_type}; expected string (train / test)")
    if not n:
        raise AutoALError(f"parquet pool {where} has no rows")
    meta = schema.metadata or {}
    classes = schema_metadata(meta, b"classes", where, int, "an integer", None)
    name = meta.get(b"name", Path(path).name.encode()).decode(errors="replace")
    ids, codes = np.empty(n, np.int64), np.empty(n, np.int8)
    y = np.empty(n, label_dtype(classes) if classes else np.int64)
    lengths, nonfinite, nulls, unknown, bad, example, at = set(), 0, 0, set(), 0, 0, 0
    try:
        for batch in scan(data, ["id", "y", "split", "x"]):
            rows = slice(at, at + batch.num_rows)
            at += batch.num_rows
            ids[rows] = int_column(batch.column(0), "id", where)
            labels = int_column(batch.column(1), "y", where, null=UNLABELED)
            if classes:   # a label the compact type cannot hold is out of range: counted, then refused
                out = (labels < UNLABELED) | (labels >= classes)
                if out.any():
                    example = example if bad else int(labels[out][0])
                    bad += int(out.sum())
                    labels = np.clip(labels, UNLABELED, classes)
            y[rows] = labels
            split = batch.column(2).to_numpy(zero_copy_only=False)
            codes[rows] = split_codes(split)
            if (codes[rows] < 0).any():
                unknown.update(split[codes[rows] < 0].tolist())
            xs = batch.column(3)
            nulls += xs.null_count
            if xs.null_count:
                continue
            lengths.update(np.unique(pc.list_value_length(xs).to_numpy(zero_copy_only=False)).tolist())
            if len(lengths) == 1:
                values = xs.flatten().to_numpy(zero_copy_only=False).reshape(len(xs), -1)
                nonfinite += int((~np.isfinite(values)).any(axis=1).sum())
    except (pa.ArrowInvalid, OSError) as exc:
        raise AutoALError(f"parquet pool {where} is not readable Parquet: {exc}") from None
    if nulls:
        raise AutoALError(f"parquet pool {where}: {nulls} rows have a null x")
    if len(lengths) != 1:
        raise AutoALError(f"parquet pool {where}: rows of x have different lengths {sorted(lengths)[:5]}")
    if nonfinite:
        raise AutoALError(f"parquet pool {where}: {nonfinite} samples have NaN or infinite features")
    width = int(lengths.pop())
    shape = schema_metadata(meta, b"shape", where, lambda v: tuple(json.loads(v)),
                            "a JSON list of ints, e.g. [1, 8, 8]", (width,))
    if not all(isinstance(d, int) and d > 0 for d in shape) or int(np.prod(shape)) != width:
        raise AutoALError(f"parquet pool {where}: shape metadata {list(shape)} does not match {width} features")
    if unknown:
        raise unknown_splits(name, unknown)
    if bad:
        raise labels_outside(name, bad, example, classes)
    if not ascending(ids):   # the pool's index is kept in id order
        order = np.argsort(ids, kind="stable")
        ids, y, codes = ids[order], y[order], codes[order]
    classes = int(y.max()) + 1 if classes is None else classes
    split = pd.Categorical.from_codes(codes, categories=list(SPLITS))
    return Pool(name, ids, LazyFeatures(location, ids, shape), y, split, classes)


def int_column(column, name: str, where: str, null: int | None = None) -> np.ndarray:
    """An int64 column, refusing what a cast would silently change: text, fractions, and
    nulls unless `null` stands for them (y: an unknown label)."""
    if column.null_count:
        if null is None:
            raise AutoALError(f"parquet pool {where}: {column.null_count} rows have a null {name}")
        column = column.fill_null(null)
    if not (pa.types.is_integer(column.type) or pa.types.is_floating(column.type)):
        raise AutoALError(f"parquet pool {where}: {name} is {column.type}; expected int64")
    values = column.to_numpy(zero_copy_only=False)
    if pa.types.is_floating(column.type) and not np.array_equal(values, np.round(values)):
        bad = values[values != np.round(values)]
        raise AutoALError(f"parquet pool {where}: {len(bad)} values of {name} are not whole numbers "
                          f"(e.g. {bad[0].item()}); expected int64")
    if pa.types.is_floating(column.type):
        beyond = (values >= 2.0**63) | (values < -2.0**63)
    else:
        beyond = values > np.iinfo(np.int64).max if pa.types.is_unsigned_integer(column.type) \
            else np.zeros(len(values), bool)
    if beyond.any():   # a cast would wrap them (uint64) or make them up (floats)
        raise AutoALError(f"parquet pool {where}: {int(beyond.sum())} values of {name} do not fit in int64 "
                          f"(e.g. {values[beyond][0].item()}); expected int64")
    return values.astype(np.int64)


def schema_metadata(meta: dict, key: bytes, where: str, parse, expected: str, default):
    """A schema-metadata value parsed by `parse`, or `default` when absent."""
    if key not in meta:
        return default
    try:
        return parse(meta[key].decode())
    except (ValueError, TypeError, UnicodeDecodeError):
        raise AutoALError(f"parquet pool {where}: metadata {key.decode()} is "
                          f"{shown(meta[key].decode(errors='replace'))}; expected {expected}") from None
