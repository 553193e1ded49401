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

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.fs as pafs

from autoal.errors import AutoALError
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
    """Rows `rows` (positions in the files' order) of a Parquet pool's features, not yet read.
    Views share `cache`: the features of small views once read (id -> row), so the labeled
    set is read from the files once, each sample when it joins it."""

    location: str
    source_ids: np.ndarray   # every id of the files, in their order
    rows: np.ndarray
    sample_shape: tuple[int, ...]
    cache: dict = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.rows), *self.sample_shape)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index) -> "LazyFeatures":
        return LazyFeatures(self.location, self.source_ids, self.rows[index], self.sample_shape, self.cache)

    @property
    def ids(self) -> np.ndarray:
        return self.source_ids[self.rows]

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        """The view's features [n, *shape], in its order: those not in the cache read from the
        files, batch by batch."""
        wanted = self.ids
        out = np.empty(self.shape, dtype=np.float32)
        known = np.fromiter((i in self.cache for i in wanted.tolist()), dtype=bool, count=len(wanted))
        for at in np.flatnonzero(known):
            out[at] = self.cache[int(wanted[at])]
        missing = np.sort(wanted[~known])
        if len(missing):
            fs, path = filesystem(self.location)
            for batch in scan(pads.dataset(path, filesystem=fs, format="parquet"), ["id", "x"]):
                ids = batch.column(0).to_numpy()
                hit = np.isin(ids, missing)
                if hit.any():
                    rows = features(batch.column(1).filter(pa.array(hit)), self.sample_shape)
                    out[positions(wanted, ids[hit])] = rows
                    if len(self) <= CACHE_ROWS:
                        self.cache.update(zip(ids[hit].tolist(), rows))
        return out if dtype is None else out.astype(dtype)

    def dataset(self):
        """The view's rows as a Ray dataset of {id, x} (x float32 [n, *shape]), read lazily."""
        import ray

        fs, path = filesystem(self.location)
        keep = np.zeros(len(self.source_ids), dtype=bool)
        keep[self.rows] = True
        order = np.argsort(self.source_ids)
        sorted_ref, keep_ref = ray.put(self.source_ids[order]), ray.put(keep[order])
        shape = self.sample_shape

        def select(batch: pa.Table) -> dict[str, np.ndarray]:
            ids = batch.column("id").to_numpy()
            sorted_ids, kept = ray.get(sorted_ref), ray.get(keep_ref)
            hit = kept[np.searchsorted(sorted_ids, ids)]
            return {"id": ids[hit], "x": features(batch.column("x").filter(pa.array(hit)), shape)}

        return ray.data.read_parquet(path, filesystem=fs).select_columns(["id", "x"]).map_batches(
            select, batch_format="pyarrow", zero_copy_batch=True)


def scan(data: pads.Dataset, columns: list[str]):
    """The record batches of `columns`, one at a time: pyarrow's default read-ahead (16 batches
    of 4 files) would hold hundreds of MB of wide features in the driver."""
    return data.to_batches(columns=columns, batch_size=SCAN_ROWS, batch_readahead=0, fragment_readahead=0)


def features(column, shape: tuple[int, ...]) -> np.ndarray:
    """A list<float> column as float32 [n, *shape]."""
    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    return column.flatten().to_numpy(zero_copy_only=False).astype(np.float32).reshape((len(column), *shape))


def open_pool(location: str):
    """The pool at `location` with lazy features, after checking every row."""
    from autoal.pool import SPLITS, UNLABELED, Pool

    fs, path = filesystem(location)
    where = location
    try:
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.NotFound:
            raise AutoALError(f"parquet pool {where} does not exist")
        data = pads.dataset(path, filesystem=fs, format="parquet")
        schema = data.schema
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

    def read(column: str) -> pa.Table:   # one column at a time: the driver's peak is one column's buffers
        try:
            return data.to_table(columns=[column])
        except (pa.ArrowInvalid, OSError) as exc:
            raise AutoALError(f"parquet pool {where} is not readable Parquet: {exc}") from None

    ids = read("id")
    if not len(ids):
        raise AutoALError(f"parquet pool {where} has no rows")
    width = _check_features(data, where)
    meta = schema.metadata or {}
    shape = schema_metadata(meta, b"shape", where, lambda v: tuple(json.loads(v)),
                            "a JSON list of ints, e.g. [1, 8, 8]", (width,))
    if not all(isinstance(d, int) and d > 0 for d in shape) or int(np.prod(shape)) != width:
        raise AutoALError(f"parquet pool {where}: shape metadata {list(shape)} does not match {width} features")
    ids, y = int_column(ids, "id", where), int_column(read("y"), "y", where, null=UNLABELED)
    classes = schema_metadata(meta, b"classes", where, int, "an integer", None)
    classes = int(y.max()) + 1 if classes is None else classes
    name = meta.get(b"name", Path(path).name.encode()).decode(errors="replace")
    split = read("split").column("split")
    if not pa.types.is_string(split.type) and not pa.types.is_large_string(split.type):
        raise AutoALError(f"parquet pool {where}: split is {split.type}; expected string (train / test)")
    values = pc.unique(split).to_pylist()
    if not set(values) <= set(SPLITS):   # else the Pool names the unknown values
        split = split.to_numpy(zero_copy_only=False).astype(str)
    else:   # no Python string per row: 10M of them would outweigh the ids and labels
        split = np.where(pc.equal(split, "train").to_numpy(zero_copy_only=False), "train", "test")
    x = LazyFeatures(location, ids, np.arange(len(ids)), shape)
    return Pool(name, ids, x, y, split, classes)


def _check_features(data: pads.Dataset, where: str) -> int:
    """Every row's x: present, of one length, finite; returns the length. Streams the files."""
    lengths, nonfinite, nulls = set(), 0, 0
    for batch in scan(data, ["x"]):
        xs = batch.column(0)
        nulls += xs.null_count
        if xs.null_count:
            continue
        lengths.update(np.unique(pc.list_value_length(xs).to_numpy(zero_copy_only=False)).tolist())
        if len(lengths) == 1:
            values = xs.flatten().to_numpy(zero_copy_only=False).reshape(len(xs), -1)
            nonfinite += int((~np.isfinite(values)).any(axis=1).sum())
    if nulls:
        raise AutoALError(f"parquet pool {where}: {nulls} rows have a null x")
    if len(lengths) != 1:
        raise AutoALError(f"parquet pool {where}: rows of x have different lengths {sorted(lengths)[:5]}")
    if nonfinite:
        raise AutoALError(f"parquet pool {where}: {nonfinite} samples have NaN or infinite features")
    return int(lengths.pop())


def int_column(table: pa.Table, name: str, where: str, null: int | None = None) -> np.ndarray:
    """An int64 column, refusing what a cast would silently change: text, fractions, and
    nulls unless `null` stands for them (y: an unknown label)."""
    column = table.column(name)
    if column.null_count:
        if null is None:
            raise AutoALError(f"parquet pool {where}: {column.null_count} rows have a null {name}")
        column = column.fill_null(null)
    if not (pa.types.is_integer(column.type) or pa.types.is_floating(column.type)):
        raise AutoALError(f"parquet pool {where}: {name} is {column.type}; expected int64")
    values = column.to_numpy()
    if pa.types.is_floating(column.type) and not np.array_equal(values, np.round(values)):
        bad = values[values != np.round(values)]
        raise AutoALError(f"parquet pool {where}: {len(bad)} values of {name} are not whole numbers "
                          f"(e.g. {bad[0].item()}); expected int64")
    return values.astype(np.int64)


def schema_metadata(meta: dict, key: bytes, where: str, parse, expected: str, default):
    """A schema-metadata value parsed by `parse`, or `default` when absent."""
    if key not in meta:
        return default
    try:
        return parse(meta[key].decode())
    except (ValueError, TypeError, UnicodeDecodeError):
        raise AutoALError(f"parquet pool {where}: metadata {key.decode()} is "
                          f"{meta[key].decode(errors='replace')!r}; expected {expected}") from None
