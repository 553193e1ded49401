"""ALBL's round hook (Hsu & Lin 2015): the bandit lives in the strategy; the hook sets its
horizon to the experiment's query budget, turns the oracle's answers into the reward,
checkpoints the bandit and logs the arm probabilities."""
from __future__ import annotations

import numpy as np

from autoal.config import ExperimentConfig
from autoal.hooks.round import RoundContext, RoundHook, serves
from autoal.strategies import PoolStats, Strategy


@serves("albl")
class ALBLHook(RoundHook):
    """Rewards the bandit after each batch is labeled; the bandit's state is checkpointed."""

    rewards = True

    def __init__(self, cfg: ExperimentConfig, strategy: Strategy):
        super().__init__(cfg, strategy)
        if strategy.bandit.horizon is None:
            strategy.bandit.horizon = cfg.rounds * cfg.batch

    def after_select(self, ctx: RoundContext, stats: PoolStats, picks: np.ndarray,
                     labels: np.ndarray, detail: dict) -> dict[str, list[dict]]:
        """Reward: was the round's model, which has not trained on the picks, right about them?
        Telemetry: each arm's probability this round and how many picks it advised
        (uniform: the picks no strategy arm advised)."""
        predicted = stats.probs[stats.rows(picks)].argmax(axis=1)
        reward = self.strategy.learn(predicted == labels, detail)
        hits = detail["hit"][:, :-1] > 0
        advised = [*hits.sum(axis=0), (~hits.any(axis=1)).sum()]
        return {"albl_arms": [dict(arm=arm, probability=float(p), advised=int(n), reward=reward)
                              for arm, p, n in zip(self.strategy.arm_names, detail["probabilities"], advised)]}

    def state_dict(self) -> dict:
        return self.strategy.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.strategy.load_state_dict(state)
