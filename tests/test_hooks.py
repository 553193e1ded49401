"""The round hooks' registry: each hook declares the strategies it serves where it is written."""
from __future__ import annotations

import pytest

from autoal import config, hooks
from autoal.hooks.round import RoundHook, serves
from autoal.hooks.state_adversary import AdversarialHook
from autoal.hooks.strategy_search import AutoALHook
from autoal.strategies import names


def test_each_hook_declares_the_strategies_it_serves_and_a_strategy_has_one_hook():
    """One registry holds the pairing `@serves` declares on each hook; a second hook for a strategy
    is refused and leaves the registry as it was."""
    assert set(hooks.HOOKS) <= set(names())
    assert hooks.HOOKS["autoal"] is AutoALHook
    assert hooks.HOOKS["vaal"] is hooks.HOOKS["sraal"] is AdversarialHook
    before = dict(hooks.HOOKS)
    with pytest.raises(ValueError, match="strategy albl has two hooks: ALBLHook and Other"):
        serves("random", "albl")(type("Other", (RoundHook,), {}))
    assert hooks.HOOKS == before


@pytest.mark.parametrize("strategy, options, loss_weight", [
    ("entropy", {}, 0.0),                                          # reads no predicted loss: not trained
    ("autoal", {}, 0.0),                                           # nor do its default candidates
    ("vote", {"vote": {"candidates": ["entropy", "lpl"]}}, 1.0),   # a candidate reads it
    ("lpl", {"lpl": {"weight": 0.5}}, 0.5),                        # LPL's own joint training
])
def test_the_loss_module_trains_only_for_a_strategy_that_reads_predicted_loss(strategy, options, loss_weight):
    cfg = config.load(None, {"strategies": [strategy], "options": options})
    assert hooks.create(strategy, cfg).fit_options()["loss_weight"] == loss_weight
