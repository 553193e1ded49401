"""The round hook contract: the core-side work some strategies need around their selection.

Most strategies are pure functions of pool statistics. A few also train
networks or keep state across rounds (AutoAL's SearchNet and FitNet, ALBL's
bandit) or change how the task model trains (LPL, BGADL). Their hook runs that
work, hands the scorer any extra model, keeps state that the experiment
directory checkpoints, and emits telemetry rows. A hook reads its options from
its strategy (the strategy's constructor parameters). A hook declares the
strategies it serves where it is written (`@serves("albl")`), so the pairing has
one place and the strategies, a layer below, never name the platform. Every
other strategy gets the plain `RoundHook`, which does nothing around its selection.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ClassVar

import numpy as np
from torch import nn

from autoal.config import ExperimentConfig
from autoal.data.pool import Pool
from autoal.strategies import PoolStats, Strategy


@dataclass(frozen=True)
class ScorerExtra:
    """An extra model the fused pass evaluates on each batch: `build()` gives a
    module mapping (x, task-model embedding) to the PoolStats field `field`."""

    build: Callable[[], nn.Module]
    state: dict
    field: str


@dataclass
class RoundContext:
    """What a hook may use in one round of one (strategy, seed) run."""

    cfg: ExperimentConfig
    seed: int
    round: int
    recipe: object               # models.ModelRecipe of the task model
    task_state: dict             # this round's trained task model
    labeled_x: np.ndarray        # the labeled samples the task model trains on (out-of-distribution ones left out)
    labeled_y: np.ndarray
    unlabeled_ids: np.ndarray
    k: int                       # queries this round
    rng_seed: int                # for every random choice the hook makes
    pool: Pool | None = None     # the train pool, for the x of unlabeled ids (its y stays hidden from hooks)


class RoundHook:
    """No-op hook around a pure strategy."""

    provides: ClassVar[str | None] = None   # the hook-provided PoolStats field its ScorerExtra computes
    rewards: ClassVar[bool] = False         # feeds the oracle's answers to a strategy that learns from them

    def __init__(self, cfg: ExperimentConfig, strategy: Strategy):
        self.cfg, self.strategy = cfg, strategy

    def before_query(self, ctx: RoundContext) -> ScorerExtra | None:
        """Work before the pool is scored; may return an extra model for the scorer."""
        return None

    def fit_options(self) -> dict:
        """Keyword arguments of `training.fit` for this strategy's task model (LPL's joint training):
        the loss-prediction module trains only for a strategy that reads predicted loss."""
        return dict(loss_weight=1.0 if "pred_loss" in self.strategy.needs else 0.0)

    def train_set(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The task model's training set from the labeled (x, y): a hook may add synthetic
        samples (BGADL); they are never labels in the ledger."""
        return x, y

    def after_select(self, ctx: RoundContext, stats: PoolStats, picks: np.ndarray,
                     labels: np.ndarray, detail: dict) -> dict[str, list[dict]]:
        """Work once the batch is labeled (`detail`: what the strategy's `choose` returned with the
        picks); returns telemetry rows by table name."""
        return {}

    def state_dict(self) -> dict | None:
        """State to checkpoint after each round (None: nothing to keep)."""
        return None

    def load_state_dict(self, state: dict) -> None:
        pass


HOOKS: dict[str, type[RoundHook]] = {}   # strategy name -> its hook; filled by `serves`


def serves(*strategies: str) -> Callable[[type[RoundHook]], type[RoundHook]]:
    """Class decorator: this hook runs around these strategies (one hook per strategy)."""
    def declare(hook: type[RoundHook]) -> type[RoundHook]:
        for name in strategies:
            if HOOKS.get(name, hook) is not hook:
                raise ValueError(f"strategy {name} has two hooks: {HOOKS[name].__name__} and {hook.__name__}")
        HOOKS.update(dict.fromkeys(strategies, hook))
        return hook
    return declare
