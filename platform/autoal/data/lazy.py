"""Features left in a Parquet pool's files: `LazyFeatures` views share the pool's ids and are read
when asked for (the labeled set) or in batches (re-writing); `IdSet` tells a reader which rows are
a view's. The scoring pass streams a view through Ray Data (compute.scoring.parquet_dataset).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs

from autoal.data.ids import positions
from autoal.errors import AutoALError

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


