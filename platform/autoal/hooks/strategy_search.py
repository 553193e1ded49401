"""AutoAL's round hook: runs the strategy search (autoal.search.loop) on Ray Train before each
query, keeps SearchNet warm and every past cycle's search rows (the replay) across rounds,
checkpointed with the round, and hands the scorer SearchNet and each candidate's weight from its
accumulated evidence (autoal.search.evidence), whose mixture reaches the `autoal` strategy as `search_weights`."""
from __future__ import annotations

import functools
import time

import numpy as np

from autoal.compute import distributed, scoring
from autoal.config import ExperimentConfig
from autoal.errors import AutoALError
from autoal.hooks.round import RoundContext, RoundHook, ScorerExtra, serves
from autoal.search.loop import MIN_PER_WORKER, SearchPayload, search_loop
from autoal.search.searchnet import SearchScorer
from autoal.strategies import PoolStats, Strategy


@serves("autoal")
class AutoALHook(RoundHook):
    """Runs the search before each query; keeps SearchNet and the replayed rows across rounds."""

    provides = "search_weights"

    def __init__(self, cfg: ExperimentConfig, strategy: Strategy):
        super().__init__(cfg, strategy)
        need = MIN_PER_WORKER * max(cfg.workers, 1)
        if cfg.initial < need:
            raise AutoALError(f"bad config: autoal splits the labeled set in halves over {max(cfg.workers, 1)} "
                              f"worker(s); initial must be >= {need}")
        self.search_state: dict | None = None
        self.replay: dict[str, np.ndarray] | None = None    # objective.Rows.arrays of every past cycle
        self.rounds = 0                       # rounds searched so far: the first gets cycles_first
        self.telemetry: dict[str, float] = {}
        self.weights = np.full(len(strategy.candidate_names), 1.0 / len(strategy.candidate_names))   # evidence

    def before_query(self, ctx: RoundContext) -> ScorerExtra:
        sc, t0 = self.cfg.search, time.perf_counter()
        embedding = task_embedding(ctx) if not sc.backbone else np.zeros((len(ctx.labeled_x), 0), np.float32)
        cycles = sc.cycles_first if self.rounds == 0 else sc.cycles
        candidates = self.strategy.candidate_names
        payload = SearchPayload(ctx.recipe, sc, candidates, ctx.rng_seed, cycles, self.cfg.mc_samples, self.cfg.gpus,
                                self.search_state, self.replay, (np.asarray(ctx.labeled_x, np.float32),
                                                    np.asarray(ctx.labeled_y, np.int64), embedding))
        out = distributed.run(search_loop, payload, workers=self.cfg.workers, gpus=self.cfg.gpus,
                              name=f"autoal-search-s{ctx.seed}-r{ctx.round}")
        self.search_state, self.replay, self.weights = (distributed.torch_state(out["search_state"]), out["replay"],
                                                        np.asarray(out["weights"], np.float64))
        self.rounds += 1
        self.telemetry = dict(out["telemetry"], cycles=cycles, search_s=time.perf_counter() - t0)
        build = functools.partial(SearchScorer, ctx.recipe, len(candidates), sc.backbone, sc.loss_module,
                                  embedding.shape[1], tuple(self.weights))
        return ScorerExtra(build=build, state=self.search_state, field=self.provides)

    def after_select(self, ctx: RoundContext, stats: PoolStats, picks: np.ndarray,
                     labels: np.ndarray, detail: dict) -> dict[str, list[dict]]:
        """Each candidate's mean mixture weight over the pool and over the batch (the paper's
        Fig. 5), and how much of the batch the unweighted vote count would have picked too."""
        pi = stats.search_weights
        batch = pi[stats.rows(picks)]
        weights = [dict(candidate=name, weight_pool=float(pi[:, j].mean()), weight_batch=float(batch[:, j].mean()),
                        weight_evidence=float(self.weights[j]))
                   for j, name in enumerate(self.strategy.candidate_names)]
        overlap = len(np.intersect1d(picks, detail["vote"])) / len(picks)
        return {"strategy_weights": weights, "search": [dict(self.telemetry, vote_overlap=overlap)]}

    def state_dict(self) -> dict:
        return {"search": self.search_state, "rounds": self.rounds, "replay": self.replay}

    def load_state_dict(self, state: dict) -> None:
        self.search_state, self.rounds, self.replay = state["search"], state["rounds"], state.get("replay")


def task_embedding(ctx: RoundContext) -> np.ndarray:
    """The round's task model's embeddings of L: the frozen input of a SearchNet without backbone."""
    stats = scoring.score(ctx.recipe, ctx.task_state, np.arange(len(ctx.labeled_x)), ctx.labeled_x,
                          frozenset({"embedding"}), mc_samples=ctx.cfg.mc_samples, tasks=0, gpus=ctx.cfg.gpus)
    return stats.embedding.astype(np.float32)
