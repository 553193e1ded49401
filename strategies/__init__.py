"""AL strategies: pure functions of pool statistics."""
from . import base, diversity, uncertainty  # noqa: F401  (importing registers the strategies)
from .base import PoolStats, Strategy, get, names, register, top_k_ids

__all__ = ["PoolStats", "Strategy", "get", "names", "register", "top_k_ids"]
