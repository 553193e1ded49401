"""The round hooks' registry: each hook declares the strategies it serves where it is written."""
from __future__ import annotations

import pytest

from autoal import hooks
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
