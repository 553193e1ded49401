"""A Parquet pool left where it lies: the driver holds ids, labels and split; the features stay in
the files (a local directory, `file://`, `s3://`, `gs://`: any filesystem pyarrow knows).

`open_pool` checks the whole pool (the format is in autoal.pool) while streaming it in record
batches, so memory stays flat in the pool's size, and returns a `Pool` whose `x` is
`LazyFeatures`: indexing it gives a view, not an array; `np.asarray(view)` reads that view's
rows (the labeled samples, a batch of picks), and `view.dataset()` streams them through Ray Data
(the scoring pass).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from autoal.errors import AutoALError
from autoal.safe_io import folder_files, shown
from autoal.strategies.base import positions

SCAN_ROWS = 16_384   # rows per record batch when checking or reading features: bounds the driver's memory
CACHE_ROWS = 200_000   # features read for views up to this size are kept (the labeled set, the test split)


def filesystem(location: str) -> tuple[pafs.FileSystem, str]:
    """(pyarrow filesystem, path in it) of a directory or URI; a plain path is local."""
    if "://" in location:
        try:
            return pafs.FileSystem.from_uri(location)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as exc:
            raise AutoALError(f"parquet pool {location}: cannot open its filesystem ({exc})") from None
    return pafs.LocalFileSystem(), str(Path(location).expanduser().resolve())


@dataclass(frozen=True, eq=False)
class LazyFeatures:
    """The features of samples `ids` (in that order) of a Parquet pool, not yet read. Views share
    `cache`: the features of small views once read (id -> row), so the labeled set is read from
    the files once, each sample when it joins it."""

    location: str
    ids: np.ndarray
    sample_shape: tuple[int, ...]
    cache: dict = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.ids), *self.sample_shape)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index) -> "LazyFeatures":
        return self.with_ids(self.ids[index])

    def with_ids(self, ids: np.ndarray) -> "LazyFeatures":
        """The view of the samples `ids` (the caller's array, not a copy)."""
        return LazyFeatures(self.location, ids, self.sample_shape, self.cache)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        """The view's features [n, *shape], in its order: those not in the cache read from the
        files, batch by batch."""
        wanted = self.ids
        out = np.empty(self.shape, dtype=np.float32)
        known = np.fromiter((i in self.cache for i in wanted.tolist()), dtype=bool, count=len(wanted))
        for at in np.flatnonzero(known):
            out[at] = self.cache[int(wanted[at])]
        missing = wanted[~known]
        if len(missing):
            fs, path = filesystem(self.location)
            members = IdSet.of(missing)
            for batch in scan(pads.dataset(path, filesystem=fs, format="parquet"), ["id", "x"]):
                ids, rows = members.rows_of(batch, self.sample_shape)
                if len(ids):
                    out[positions(wanted, ids)] = rows
                    if len(self) <= CACHE_ROWS:
                        self.cache.update(zip(ids.tolist(), rows))
        return out if dtype is None else out.astype(dtype)

    def batches(self, size: int):
        """The view's (ids, features) in the files' order, `size` rows at a time (the last fewer):
        how a lazy pool is re-written without being read whole."""
        members, (fs, path) = IdSet.of(self.ids), filesystem(self.location)
        ids, xs, held = [], [], 0
        for batch in scan(pads.dataset(path, filesystem=fs, format="parquet"), ["id", "x"]):
            batch_ids, batch_xs = members.rows_of(batch, self.sample_shape)
            ids.append(batch_ids)
            xs.append(batch_xs)
            held += len(batch_ids)
            while held >= size:
                all_ids, all_xs = np.concatenate(ids), np.concatenate(xs)
                yield all_ids[:size], all_xs[:size]
                ids, xs, held = [all_ids[size:]], [all_xs[size:]], len(all_ids) - size
        if held:
            yield np.concatenate(ids), np.concatenate(xs)

    def dataset(self):
        """The view's rows as a Ray dataset of {id, x} (x float32 [n, *shape]), read lazily, one
        task per row group (a pool in one file still streams through many workers); the tasks
        learn which rows are the view's from an IdSet, not a list of its ids."""
        import ray

        fs, path = filesystem(self.location)
        pieces = [{"file": fragment.path, "row_group": group}
                  for fragment in pads.dataset(path, filesystem=fs, format="parquet").get_fragments()
                  for group in range(fragment.metadata.num_row_groups)]
        members, location, shape = ray.put(IdSet.of(self.ids)), self.location, self.sample_shape

        def read(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            fs, _ = filesystem(location)
            ids, xs = [], []
            for file, group in zip(batch["file"], batch["row_group"]):
                with fs.open_input_file(str(file)) as f:
                    table = pq.ParquetFile(f).read_row_group(int(group), columns=["id", "x"])
                group_ids, group_xs = ray.get(members).rows_of(table, shape)
                ids.append(group_ids)
                xs.append(group_xs)
            return {"id": np.concatenate(ids), "x": np.concatenate(xs)}

        return ray.data.from_items(pieces, override_num_blocks=len(pieces)).map_batches(
            read, batch_size=1, batch_format="numpy")


@dataclass(frozen=True)
class IdSet:
    """A set of int64 ids as shipped to scoring workers: a bitmap over [low, low + span) where the
    ids are dense (as `autoal prepare` numbers them: 1 bit an id, not 64), else the sorted ids."""

    low: int
    bits: np.ndarray | None = None     # packed, little bit order: id low + i is in the set iff bit i is set
    ordered: np.ndarray | None = None

    CHUNK: ClassVar[int] = 1 << 20   # ids offset at a time: no full-size temporary

    @classmethod
    def of(cls, ids: np.ndarray) -> "IdSet":
        if not len(ids):
            return cls(0, ordered=np.zeros(0, np.int64))
        low, high = int(ids.min()), int(ids.max())
        if high - low >= 64 * len(ids):
            return cls(low, ordered=np.sort(ids))
        flags = np.zeros(high - low + 1, dtype=bool)
        for start in range(0, len(ids), cls.CHUNK):
            flags[ids[start:start + cls.CHUNK] - low] = True
        return cls(low, bits=np.packbits(flags, bitorder="little"))

    def contains(self, ids: np.ndarray) -> np.ndarray:
        if self.bits is None:
            at = np.minimum(np.searchsorted(self.ordered, ids), max(len(self.ordered) - 1, 0))
            return (self.ordered[at] == ids) if len(self.ordered) else np.zeros(len(ids), bool)
        offset = ids - self.low
        inside = (offset >= 0) & (offset < 8 * len(self.bits))
        hit = np.zeros(len(ids), dtype=bool)
        offset = offset[inside]
        hit[inside] = (self.bits[offset >> 3] >> (offset & 7)) & 1
        return hit

    def rows_of(self, data, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
        """The (ids, features [n, *shape]) of the rows of `data`, a record batch or table of
        (id, x), whose ids are in the set."""
        ids = data.column(0).to_numpy()
        hit = self.contains(ids)
        return ids[hit], features(data.column(1).filter(pa.array(hit)), shape)


def scan(data: pads.Dataset, columns: list[str]):
    """The record batches of `columns`, one at a time: pyarrow's default read-ahead (16 batches
    of 4 files) would hold hundreds of MB of wide features in the driver."""
    return data.to_batches(columns=columns, batch_size=SCAN_ROWS, batch_readahead=0, fragment_readahead=0)


def features(column, shape: tuple[int, ...]) -> np.ndarray:
    """A list<float> column as float32 [n, *shape]."""
    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    return column.flatten().to_numpy(zero_copy_only=False).astype(np.float32).reshape((len(column), *shape))


def open_pool(location: str):
    """The pool at `location` with lazy features, after checking every row in one streamed pass
    that fills the compact index (ids, labels, split codes) batch by batch."""
    from autoal.pool import SPLITS, UNLABELED, Pool, label_dtype, labels_outside, unknown_splits

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
            split = batch.column(2)
            codes[rows] = -1
            for code, value in enumerate(SPLITS):
                codes[rows][pc.equal(split, value).fill_null(False).to_numpy(zero_copy_only=False)] = code
            if (codes[rows] < 0).any():
                unknown.update(pc.unique(split.filter(pa.array(codes[rows] < 0))).to_pylist())
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
    if len(ids) > 1 and not (ids[1:] > ids[:-1]).all():   # the pool's index is kept in id order
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
