"""The pool index's helpers, one place each: finding ids, the ascending-id rule, split codes and
the lazy-features test. Every pool, view and statistics table keys its rows by int64 ids."""
from __future__ import annotations

import numpy as np

SPLITS = ("train", "test")


def ascending(ids: np.ndarray) -> bool:
    """Whether `ids` are strictly ascending (so also unique): a pool's index is kept in id order."""
    return len(ids) < 2 or bool((ids[1:] > ids[:-1]).all())


def positions(ids: np.ndarray, wanted: np.ndarray, order: np.ndarray | None = None) -> np.ndarray:
    """The index in `ids` of each of `wanted`; KeyError when one is not in `ids`. `order`, ids'
    argsort, saves sorting again when many lookups go into the same ids; ascending ids (a pool's,
    as a rule) need none."""
    if order is None and not ascending(ids):
        order = np.argsort(ids)
    at = np.minimum(np.searchsorted(ids, wanted, sorter=order), max(len(ids) - 1, 0))
    pos = at if order is None else order[at]
    if len(wanted) and (not len(ids) or not np.array_equal(ids[pos], wanted)):
        raise KeyError("ids not found")
    return pos


def split_codes(values: np.ndarray) -> np.ndarray:
    """int8 codes of split names: the index in SPLITS, -1 for an unknown value (None included)."""
    codes = np.full(len(values), -1, dtype=np.int8)
    for code, split in enumerate(SPLITS):
        codes[values == split] = code
    return codes


def is_lazy(x) -> bool:
    """Whether features `x` are left in their files (data.lazy.LazyFeatures), not an array in memory."""
    return not isinstance(x, np.ndarray)
