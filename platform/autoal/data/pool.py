"""A pool: stable int64 ids, features, labels, split (its Parquet format is in data.parquet)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from autoal.data.ids import SPLITS, ascending, is_lazy, positions, split_codes
from autoal.errors import AutoALError
from autoal.safe_io import shown

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
    codes = split_codes(values)
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
        if not ascending(self.ids):   # ascending ids are unique
            ordered = np.sort(self.ids)
            if (ordered[1:] == ordered[:-1]).any():
                raise AutoALError(f"pool {shown(self.name)}: ids are not unique")
        if not is_lazy(self.x) and not np.isfinite(self.x).all():   # lazy features: checked when read
            bad = int((~np.isfinite(self.x.reshape(n, -1))).any(axis=1).sum())
            raise AutoALError(f"pool {shown(self.name)}: {bad} samples have NaN or infinite features")
        y = np.asarray(self.y)
        out = (y < UNLABELED) | (y >= self.classes) | ((y < 0) & (self.split != "train"))
        if out.any():
            raise labels_outside(self.name, int(out.sum()), int(y[out][0]), self.classes)
        object.__setattr__(self, "y", y.astype(label_dtype(self.classes), copy=False))
        if is_lazy(self.x):   # a lazy view's ids are the pool's: one array, not two
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
        return ids, self.x.with_ids(ids) if is_lazy(self.x) else self.x[index]

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
