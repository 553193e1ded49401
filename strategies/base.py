"""Pool statistics and the strategy contract shared by every AL strategy.

Strategies are pure functions of `PoolStats`: no Ray, no data loading, no
training. The scoring pass computes exactly the union of the fields that the
active strategies declare in `needs`.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Callable, ClassVar

import numpy as np

STAT_FIELDS = ("probs", "mc_probs", "embedding", "pred_loss", "search_weights", "perturbation",
               "unlabeled_score", "labels")


@dataclass(frozen=True)
class PoolStats:
    """Per-sample statistics of a pool, index-aligned with `ids`.

    ids [N] int64; probs [N, C]; mc_probs [N, T, C] (T MC-dropout samples);
    embedding [N, D] (penultimate features); pred_loss [N] (loss-prediction
    module); search_weights [N, K] (AutoAL's SearchNet weights per candidate);
    perturbation [N, K, C] (class probabilities of K weight-perturbed copies of
    the model, for noise stability); unlabeled_score [N] (a state
    discriminator's probability that a sample is unlabeled, VAAL / SRAAL);
    labels [N] (the oracle's answers, -1 = out of distribution: only in the
    labeled set's statistics). Fields a strategy does not need may be None.
    """

    ids: np.ndarray
    probs: np.ndarray | None = None
    mc_probs: np.ndarray | None = None
    embedding: np.ndarray | None = None
    pred_loss: np.ndarray | None = None
    search_weights: np.ndarray | None = None
    perturbation: np.ndarray | None = None
    unlabeled_score: np.ndarray | None = None
    labels: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def take(self, index: np.ndarray) -> "PoolStats":
        """The rows `index` of every present field."""
        return PoolStats(**{
            f.name: None if getattr(self, f.name) is None else getattr(self, f.name)[index]
            for f in fields(self)
        })


class Strategy:
    """Base of all strategies. Subclasses set `name`, `needs` and implement
    `score` (per-sample strategies) or override `select` (batch strategies)."""

    name: ClassVar[str]
    needs: ClassVar[frozenset[str]] = frozenset()
    per_sample: ClassVar[bool] = True
    needs_labeled: ClassVar[bool] = False  # select() also wants the labeled set's statistics
    learns: ClassVar[bool] = False         # learns from the oracle's answers (ALBL's bandit): its round hook
                                           # feeds it, so it cannot serve as another strategy's candidate

    def score(self, stats: PoolStats) -> np.ndarray:
        """Per-sample informativeness, higher = more informative."""
        raise NotImplementedError(f"strategy {self.name!r} selects batches; it has no per-sample score")

    def select(self, stats: PoolStats, k: int, labeled: PoolStats | None = None, seed: int = 0) -> np.ndarray:
        """k distinct ids from stats.ids: top-k by score, ties broken by smaller id."""
        check_k(stats, k)
        return top_k_ids(stats.ids, self.score(stats), k)


def check_k(stats: PoolStats, k: int) -> None:
    if not 0 < k <= len(stats):
        raise ValueError(f"cannot select {k} samples from a pool of {len(stats)}")


def top_k_ids(ids: np.ndarray, scores: np.ndarray, k: int) -> np.ndarray:
    """ids of the k highest scores; equal scores go to the smaller id."""
    order = np.lexsort((ids, -np.asarray(scores, dtype=np.float64)))
    return np.asarray(ids[order[:k]], dtype=np.int64)


_REGISTRY: dict[str, Callable[[], Strategy]] = {}


def register(cls: type[Strategy]) -> type[Strategy]:
    """Class decorator: make the strategy available by its name."""
    _REGISTRY[cls.name] = cls
    return cls


def get(name: str, **options) -> Strategy:
    """A fresh strategy instance by name."""
    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown strategy {name!r}; known: {', '.join(names())}") from None
    return factory(**options)


def names() -> list[str]:
    return sorted(_REGISTRY)
