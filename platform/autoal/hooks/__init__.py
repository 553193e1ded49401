"""Round hooks, one module each; each declares the strategies it serves (`round.serves`),
and importing them here fills the one registry, `HOOKS`.

`create(name, cfg)` builds strategy `name` with its options (`cfg.options[name]`)
and wraps it in its hook. It refuses a strategy whose needs no hook serves: a
statistic that only a round hook provides (e.g. `unlabeled_score` for `vote`
with a `vaal` candidate), or answers to learn from.
"""
from __future__ import annotations

from autoal.config import ExperimentConfig
from autoal.errors import AutoALError
from autoal.safe_io import shown
from autoal.hooks import bandit, joint_loss, perturbation  # noqa: F401  (importing registers the hooks)
from autoal.hooks import state_adversary, strategy_search, synthesis  # noqa: F401  (and these)
from autoal.hooks.round import HOOKS, RoundContext, RoundHook, ScorerExtra
from autoal.strategies import get, names
from autoal.strategies.base import HOOK, provided_by

__all__ = ["HOOKS", "RoundContext", "RoundHook", "ScorerExtra", "create"]


def create(name: str, cfg: ExperimentConfig) -> RoundHook:
    """Strategy `name`, built with its options, in its round hook (the plain one if it has none)."""
    if name not in names():
        raise AutoALError(f"unknown strategy {shown(name)}; known: {', '.join(names())}")
    try:
        strategy = get(name, **cfg.strategy_options(name))
    except (KeyError, ValueError) as exc:
        raise AutoALError(f"bad config: options.{name}: {exc.args[0]}") from None
    hook = HOOKS.get(name, RoundHook)
    unserved = sorted(strategy.needs & provided_by(HOOK) - {hook.provides})
    if unserved:
        providers = [n for n, h in HOOKS.items() if h.provides == unserved[0]]
        raise AutoALError(f"bad config: {name} needs {unserved[0]}, which only the round hook of "
                          f"{' or '.join(providers)} provides (a strategy's candidates or arms cannot use "
                          "another strategy's hook)")
    if strategy.learns and not hook.rewards:
        raise AutoALError(f"bad config: {name} learns from the oracle's answers, and no round hook feeds them")
    return hook(cfg, strategy)
