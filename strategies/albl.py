"""Active Learning by Learning (Hsu & Lin, AAAI 2015): an EXP4.P bandit
(Beygelzimer et al. 2011) whose experts are AL strategies plus uniform sampling.

Batch mode, per query slot: each of the k slots of a batch draws one sample
from EXP4.P's mixture q = sum_a p_a xi_a of the arms' advice, which is the
same as drawing an arm per slot and taking its advice. A strategy arm advises
the first of its own top-k picks not yet taken in this batch (one-hot); the
uniform arm advises every remaining sample equally, so every sample keeps a
positive query probability and the reward can be importance-weighted.

The exploration floor p_min sits on the arms (as in the batch-mode ALBL of the
DeepAL toolkit), not on the |U| samples: with a floor over the pool,
EXP4.P's step size p_min ~ 1/sqrt(|U| T) is too small to learn anything in an
AL budget, and the uniform arm already explores the pool.

Reward, one per batch: the importance-weighted accuracy (Hajek estimator, in
[0, 1] as EXP4.P requires) of the round's model on the samples this round
queried, measured before it trains on them. That model was trained on the
previous round's batch, so the reward is credited to the slots of the
previous round: delayed by one round, never the training accuracy of a model
that has seen the samples.
"""
from __future__ import annotations

import math

import numpy as np

from .autoal import CANDIDATES
from .base import Composite, PoolStats, check_k, get, register

UNIFORM = "uniform"


class Exp4P:
    """EXP4.P over N experts with log-weights (rewards add up over rounds, so raw
    weights would overflow). `horizon` is T, the number of slots in the budget."""

    def __init__(self, experts: int, horizon: int | None, delta: float = 0.1, p_min: float | None = None):
        self.n, self.horizon, self.delta = experts, horizon, delta
        self.p_min = 1.0 / (10.0 * experts) if p_min is None else p_min
        if not 0.0 <= self.p_min * experts < 1.0:
            raise ValueError(f"p_min {self.p_min} must lie in [0, 1/{experts})")
        self.log_w = np.zeros(experts)

    def probabilities(self) -> np.ndarray:
        """p_a = (1 - N p_min) w_a / sum(w) + p_min."""
        w = np.exp(self.log_w - self.log_w.max())
        return (1.0 - self.n * self.p_min) * w / w.sum() + self.p_min

    def update(self, hit: np.ndarray, q: np.ndarray, v: np.ndarray, actions: np.ndarray, reward: float) -> None:
        """One EXP4.P step per slot s, all sharing `reward`:
        log w_a += p_min / 2 * (xi_a(x_s) r / q(x_s) + v_a sqrt(ln(N / delta) / (K_s T))),
        with hit [S, N] = xi_a(x_s), q [S] = q(x_s), v [S, N] = sum_x xi_a(x) / q(x), actions [S] = K_s."""
        horizon = max(int(self.horizon), 1)
        bonus = np.sqrt(math.log(self.n / self.delta) / (np.asarray(actions, dtype=np.float64) * horizon))
        step = hit * (reward / q)[:, None] + v * bonus[:, None]
        self.log_w += self.p_min / 2.0 * step.sum(axis=0)


def importance_weighted_accuracy(correct: np.ndarray, q: np.ndarray, actions: np.ndarray) -> float:
    """sum_s w_s [correct_s] / sum_s w_s with w_s = 1 / (K_s q_s): the accuracy over
    the pool estimated from samples drawn with probabilities q (uniform: w = 1)."""
    w = 1.0 / (np.asarray(actions, dtype=np.float64) * np.asarray(q, dtype=np.float64))
    return float((w * np.asarray(correct, dtype=np.float64)).sum() / w.sum())


@register
class ALBL(Composite):
    """EXP4.P over strategy arms + uniform sampling. Stateful: `select` records
    its slots and `learn` turns the oracle's answers into the reward (see the
    module docstring). The round hook checkpoints `state_dict`."""

    name = "albl"
    own_needs = frozenset({"probs"})   # the reward reads the round model's predictions
    per_sample = False
    learns = True

    def __init__(self, arms: tuple[str, ...] = CANDIDATES, delta: float = 0.1, horizon: int | None = None):
        """`horizon`: T, the budget's slots; None leaves it to the round hook, which sets the
        experiment's query budget before the first update."""
        if self.name in arms or UNIFORM in arms:
            raise KeyError(f"albl arms must be strategies other than albl; {UNIFORM!r} is always an arm")
        self.arm_names = (*arms, UNIFORM)
        self.arms = self.parts = [get(name) for name in arms]
        self.bandit = Exp4P(len(self.arm_names), horizon, delta)
        self.pending: dict | None = None   # the previous round's slots, rewarded by this round's `learn`

    def select(self, stats: PoolStats, k: int, labeled: PoolStats | None = None, seed: int = 0) -> np.ndarray:
        return self.choose(stats, k, labeled, seed)[0]

    def choose(self, stats: PoolStats, k: int, labeled: PoolStats | None = None,
               seed: int = 0) -> tuple[np.ndarray, dict]:
        """The picks and their slots (hit, v, q, actions, probabilities), which `learn` takes."""
        check_k(stats, k)
        rng = np.random.default_rng(seed)
        n, arms = len(stats), len(self.arms)
        advice = [stats.rows(a.select(stats, k, labeled=labeled, seed=seed)) for a in self.arms]
        p = self.bandit.probabilities()
        taken = np.zeros(n, dtype=bool)
        picks = np.empty(k, dtype=np.int64)
        hit, v = np.zeros((k, arms + 1)), np.zeros((k, arms + 1))
        q_pick, actions = np.empty(k), np.empty(k)
        for s in range(k):
            remaining = n - s
            advised = np.array([rows[~taken[rows]][0] for rows in advice], dtype=np.int64)
            q = np.where(taken, 0.0, p[-1] / remaining)
            np.add.at(q, advised, p[:-1])
            i = int(rng.choice(n, p=q / q.sum()))
            hit[s, :-1], hit[s, -1] = advised == i, 1.0 / remaining
            v[s, :-1], v[s, -1] = 1.0 / q[advised], (1.0 / remaining / q[~taken]).sum()
            q_pick[s], actions[s], picks[s] = q[i], remaining, i
            taken[i] = True
        return np.asarray(stats.ids[picks], dtype=np.int64), dict(hit=hit, v=v, q=q_pick, actions=actions,
                                                                  probabilities=p)

    def learn(self, correct: np.ndarray, slots: dict) -> float:
        """Reward the previous round's slots with this round's importance-weighted
        accuracy (`correct` [k]: the round's model was right on pick s; `slots`: what
        `choose` returned with this round's picks), then keep this round's slots for the
        next call. Returns the reward."""
        reward = importance_weighted_accuracy(correct, slots["q"], slots["actions"])
        if self.pending is not None:
            self.bandit.update(self.pending["hit"], self.pending["q"], self.pending["v"],
                               self.pending["actions"], reward)
        self.pending = {key: slots[key] for key in ("hit", "q", "v", "actions")}
        return reward

    def state_dict(self) -> dict:
        return {"log_w": self.bandit.log_w.copy(), "pending": self.pending}

    def load_state_dict(self, state: dict) -> None:
        self.bandit.log_w, self.pending = np.asarray(state["log_w"], dtype=np.float64), state["pending"]
