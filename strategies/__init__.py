"""AL strategies: pure functions of pool statistics."""
from . import base, cluster_margin, diversity, uncertainty  # noqa: F401  (importing registers the strategies)
from . import autoal  # noqa: F401  (registers the autoal strategy)
from . import adversarial, albl, bgadl, dpp, low_budget, noise, poal  # noqa: F401  (register the baselines)
from .base import PoolStats, Strategy, get, names, parameters, register, top_k_ids

__all__ = ["PoolStats", "Strategy", "get", "names", "parameters", "register", "top_k_ids"]
