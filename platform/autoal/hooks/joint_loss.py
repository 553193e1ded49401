"""LPL's round hook (Yoo & Kweon, CVPR 2019): the task model trains jointly with its
loss-prediction module, the ranking loss at the strategy's `weight` reaching the backbone
for its `joint_fraction` of the fit, then the taps detach."""
from __future__ import annotations

from autoal.hooks.round import RoundHook, serves


@serves("lpl")
class LPLHook(RoundHook):
    """The task model's training options for joint training."""

    def fit_options(self) -> dict:
        return dict(loss_weight=self.strategy.weight, joint_fraction=self.strategy.joint_fraction)
