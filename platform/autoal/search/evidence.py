"""Each candidate's accumulated evidence, as one global weight per candidate (issue 19).

SearchNet's per-sample logits learn from a few dozen rows per cycle and are pulled toward
the flat mixture, so on the pool its mixture stays near flat and AutoAL's batch is mostly
`vote`'s, even where the search has ranked one candidate clearly below the others. Here
each candidate's own picks on L_val are scored by the search's reward, one score per
FitNet space (one per cycle; the replay keeps them all), and the weight of candidate j is
the probability that it is the best candidate given those scores: flat while there are
few spaces or they disagree, decisive once they agree. The pool mixture is SearchNet's pi
times these weights, renormalised (searchnet.SearchScorer).
"""
from __future__ import annotations

import numpy as np
import torch

from autoal.search import objective

DRAWS = 4096           # posterior draws per weight: the weights' Monte Carlo error is ~0.01


def candidate_gains(rows: objective.Rows, kind: str, eta: float) -> np.ndarray:
    """gains [spaces, K]: minus the search's reward (objective.reward, lower = better picks) of
    candidate j's own picks, weighted equally, among the rows of each FitNet space."""
    spaces = rows.space.unique().tolist()
    gains = np.empty((len(spaces), rows.a.shape[1]))
    with torch.no_grad():
        for i, space in enumerate(spaces):
            part = rows.take(rows.space == space)
            for j in range(part.a.shape[1]):
                gains[i, j] = -float(objective.reward(part.a[:, j], part, kind, eta))
    return gains


def best_probabilities(gains: np.ndarray, seed: int, draws: int = DRAWS, decay: float = 1.0) -> np.ndarray:
    """[K] P(candidate j has the highest mean gain), from gains [spaces, K], oldest space first.

    Each space's gains are centred on their mean over the candidates (a space where every
    candidate does well says nothing about which is best); candidate j's mean centred gain
    over the spaces gets a Student-t posterior (n - 1 degrees of freedom, the standard error
    as scale). With `decay` < 1 the space s cycles older than the newest weighs decay^s, so
    evidence from rounds whose best candidate has since changed fades: the mean and variance
    are weighted, and n is the weights' effective sample size (sum w)^2 / sum w^2 (decay 1:
    n = spaces, the plain mean). Fewer than two spaces: flat."""
    spaces, k = gains.shape
    w = decay ** np.arange(spaces - 1, -1, -1, dtype=np.float64)
    if spaces < 2:
        return np.full(k, 1.0 / k)
    n = w.sum() ** 2 / (w ** 2).sum()
    centred = gains - gains.mean(axis=1, keepdims=True)
    mean = w @ centred / w.sum()
    var = w @ (centred - mean) ** 2 / w.sum() * n / (n - 1)
    se = np.sqrt(var / n) + 1e-12
    draw = mean + se * np.random.default_rng(seed).standard_t(n - 1, size=(draws, k))
    return np.bincount(draw.argmax(axis=1), minlength=k) / draws
