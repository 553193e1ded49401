"""Pool statistics and the strategy contract shared by every AL strategy.

Strategies are pure functions of `PoolStats`: no Ray, no data loading, no
training. Each statistic is declared once, below, with its provider: the
fused scoring pass (the task model's outputs), a round hook (an extra model
the pass also runs), or the oracle. The scoring pass computes exactly the
fields that the active strategy declares in `needs`.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field, fields
from typing import Any, Callable, ClassVar, get_type_hints

import numpy as np

from autoal.data.ids import positions

SCORER, HOOK, ORACLE = "scorer", "hook", "oracle"   # who provides a statistic


def _stat(provider: str):
    return field(default=None, metadata={"provider": provider})


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
    probs: np.ndarray | None = _stat(SCORER)
    mc_probs: np.ndarray | None = _stat(SCORER)
    embedding: np.ndarray | None = _stat(SCORER)
    pred_loss: np.ndarray | None = _stat(SCORER)
    search_weights: np.ndarray | None = _stat(HOOK)
    perturbation: np.ndarray | None = _stat(HOOK)
    unlabeled_score: np.ndarray | None = _stat(HOOK)
    labels: np.ndarray | None = _stat(ORACLE)

    def __len__(self) -> int:
        return len(self.ids)

    def rows(self, ids: np.ndarray) -> np.ndarray:
        """The row of each of `ids` (all present)."""
        return positions(self.ids, ids)

    def take(self, index: np.ndarray) -> "PoolStats":
        """The rows `index` of every present field."""
        return PoolStats(**{
            f.name: None if getattr(self, f.name) is None else getattr(self, f.name)[index]
            for f in fields(self)
        })


def provided_by(provider: str) -> frozenset[str]:
    """The statistics that `provider` (SCORER, HOOK or ORACLE) supplies."""
    return frozenset(f.name for f in fields(PoolStats) if f.metadata.get("provider") == provider)


STAT_FIELDS = provided_by(SCORER) | provided_by(HOOK) | provided_by(ORACLE)


class Strategy:
    """Base of all strategies. Subclasses set `name`, `needs` (a property where the
    options decide it) and implement `score` (per-sample strategies) or override
    `select` (batch strategies). A strategy's options are its constructor's keyword
    parameters, each with a default; an experiment sets them from its config section
    `options: {<name>: {...}}`, and the strategy's round hook reads them too."""

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

    def choose(self, stats: PoolStats, k: int, labeled: PoolStats | None = None,
               seed: int = 0) -> tuple[np.ndarray, dict]:
        """`select`'s ids, and what the strategy's round hook needs to know of how they were chosen
        (returned, never left on the strategy: a strategy is stateless between calls)."""
        return self.select(stats, k, labeled=labeled, seed=seed), {}


class Composite(Strategy):
    """A strategy built on other strategies, its `parts` (ALBL's arms, AutoAL's candidates, an
    informativeness measure): it needs its `own_needs` and whatever its parts need."""

    own_needs: ClassVar[frozenset[str]] = frozenset()
    parts: list[Strategy]

    @property
    def needs(self) -> frozenset[str]:
        return self.own_needs.union(*(part.needs for part in self.parts))

    @property
    def needs_labeled(self) -> bool:
        return any(part.needs_labeled for part in self.parts)


def check_k(stats: PoolStats, k: int) -> None:
    if not 0 < k <= len(stats):
        raise ValueError(f"cannot select {k} samples from a pool of {len(stats)}")


def top_k(ids: np.ndarray, k: int, *scores: np.ndarray) -> np.ndarray:
    """Positions of the k rows ranked highest by scores[0], equal ones by scores[1], ..., and equal in
    all to the smaller id: the one tie rule of every ranking (a ranked scoring pass merges its blocks'
    top k with it too, so the merge agrees with a ranking of the whole pool)."""
    return np.lexsort((ids, *(-np.asarray(s, dtype=np.float64) for s in reversed(scores))))[:k]


def top_k_ids(ids: np.ndarray, scores: np.ndarray, k: int) -> np.ndarray:
    """ids of the k highest scores; equal scores go to the smaller id."""
    return np.asarray(ids[top_k(ids, k, scores)], dtype=np.int64)


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


def parameters(name: str) -> dict[str, Any]:
    """The options strategy `name` takes: its constructor's parameters and their types."""
    factory = _REGISTRY[name]
    hints = get_type_hints(factory.__init__)
    return {p: hints.get(p, Any) for p in inspect.signature(factory).parameters}


def names() -> list[str]:
    return sorted(_REGISTRY)
