"""Accuracy without a test split: k-fold cross-validation on the labels known so far.

One function for every round that has no test split (`autoal label next`, and `autoal serve`'s
rounds in their Ray task), so both record the same estimate for the same labels and seed.
"""
from __future__ import annotations

import numpy as np

from autoal.compute import training
from autoal.config import ExperimentConfig
from autoal.engine.rounds import derive_seed
from autoal.nets.models import ModelRecipe


def cv_accuracy(recipe: ModelRecipe, cfg: ExperimentConfig, x: np.ndarray, y: np.ndarray, rows: np.ndarray, *,
                folds: int, seed: int, round_: int) -> float:
    """The mean held-out accuracy of `folds` models fitted on the other folds of `rows` (positions in
    x and y); NaN with fewer than 2 folds (cv_folds 0, or a single label)."""
    from sklearn.model_selection import KFold

    folds = min(folds, len(rows))
    if folds < 2:
        return float("nan")
    split = KFold(folds, shuffle=True, random_state=derive_seed(seed, round_, 4)).split(rows)
    return training.cross_validate(recipe, (x[rows], y[rows]), list(split), seed=derive_seed(seed, round_, 1),
                                   epochs=cfg.epochs, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                   batch_size=cfg.task_minibatch, min_steps=cfg.min_steps, workers=cfg.workers,
                                   gpus=cfg.gpus, name=f"label-r{round_}-cv")
