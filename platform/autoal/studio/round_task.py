"""One round of the Label Studio backend, computed in a Ray task and written by the backend.

The backend holds the project's lock for its whole life (one writer: webhooks append to the
ledger while a round trains), so a round is split in two: `train_round` (a Ray task, in any
process of the cluster, on a GPU when the config asks for one) plays the round engine's round on
the labels known when it started, with a `Record` in place of the project's store, ranks the
unlabeled pool by the project's strategy and predicts every sample, and writes nothing; the backend
then commits its `RoundOutcome` (autoal.studio.backend). A backend killed mid-round loses only the
computation: the ledger is untouched and the last committed round is served again after a restart.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import ray

from autoal import config, hooks
from autoal.compute import distributed, runtime, scoring
from autoal.data.pool import UNLABELED, Pool
from autoal.engine.rounds import RoundEngine, derive_seed, initial_pool, initial_row
from autoal.labeling.project import RUN
from autoal.nets.models import ModelRecipe
from autoal.studio.protocol import ranked_scores


@dataclass(frozen=True)
class RoundInputs:
    """What a round needs, copied out of the open project when it starts."""

    cfg: config.ExperimentConfig
    model_recipe: ModelRecipe
    pool: Pool                    # the project's train split with every label known so far
    test: tuple                   # (x, y) of the test split; empty: accuracy is not measured
    labeled: np.ndarray           # ids to train on (seeds, then answers), as LabelProject.trainable
    strategy: str
    round_: int                   # the round that trains now; it serves as round_ + 1
    seed: int
    hook_state: dict | None = None


@dataclass
class RoundOutcome:
    """A finished round: everything the backend writes when it commits it."""

    round_: int
    ranking: np.ndarray           # unlabeled ids, most informative first
    picked: int                   # how many of them the strategy itself ordered (its batch)
    predicted: np.ndarray         # class index per pool id (pool order); -1 before a model exists
    confidence: np.ndarray        # max probability per pool id; NaN before a model exists
    result: dict                  # the results row of this round
    model_state: dict | None = None
    hook_state: dict | None = None
    telemetry: dict = field(default_factory=dict)

    def scores(self, ids: np.ndarray) -> np.ndarray:
        """Each id's score: (rank + 1) / n for the ranked ids, 1 for the rest (answered, seeds)."""
        scores = np.ones(len(ids))
        place = {int(i): s for i, s in zip(self.ranking, ranked_scores(self.ranking))}
        for at, i in enumerate(ids):
            scores[at] = place.get(int(i), 1.0)
        return scores


class Record:
    """The project's store as the round engine sees it inside the task: it hands out the hook's saved
    state and keeps what the round would write, for the backend to commit."""

    def __init__(self, hook_state: dict | None):
        self.saved, self.hook_state, self.result, self.telemetry = hook_state, None, None, {}

    def load_state(self, strategy: str, seed: int, round_: int):
        return self.saved

    def save_state(self, strategy: str, seed: int, round_: int, state) -> None:
        self.hook_state = state

    def append_result(self, row: dict) -> None:
        self.result = row

    def append_rows(self, table: str, rows: list[dict]) -> None:
        self.telemetry.setdefault(table, []).extend(rows)


def train_round(inputs: RoundInputs) -> RoundOutcome:
    """Train on the known labels, rank the unlabeled pool by the strategy, predict every sample."""
    runtime.quiet()
    cfg, pool, seed, round_, name = inputs.cfg, inputs.pool, inputs.seed, inputs.round_, inputs.strategy
    unlabeled = pool.ids[pool.y == UNLABELED]
    columns = dict(strategy=RUN, accuracy_estimated=not len(inputs.test[1]), query_strategy=name)
    if len(np.unique(pool.y[pool.rows(inputs.labeled)])) < 2 or not len(unlabeled):   # no model yet
        picks = initial_pool(pool.take(pool.y == UNLABELED), min(cfg.batch, len(unlabeled)), cfg.initial_method,
                             derive_seed(seed, round_)) if len(unlabeled) else unlabeled
        ranking = np.concatenate([picks, np.setdiff1d(unlabeled, picks)])
        return RoundOutcome(round_, ranking, len(picks), np.full(len(pool), -1), np.full(len(pool), np.nan),
                            initial_row(cfg, seed, round_, len(inputs.labeled), columns))
    round_hook = hooks.create(name, cfg)
    k = len(unlabeled) if round_hook.strategy.per_sample else min(cfg.batch, len(unlabeled))
    record, fitted = Record(inputs.hook_state), {}
    engine = RoundEngine(cfg, pool, inputs.model_recipe, record)
    engine.resume(round_hook, name, seed, round_)
    with distributed.workers(cfg.workers, cfg.gpus, warm=cfg.warm_workers, threads=cfg.torch_threads,
                             log=lambda line: None):
        _, picks = engine.play(name, round_hook, seed, round_, inputs.labeled, k=k,
                               exclude=pool.ids[pool.y != UNLABELED],
                               test=inputs.test if len(inputs.test[1]) else lambda rows: float("nan"),
                               commit=lambda picked, fit: fitted.update(state=fit.state), columns=columns)
    probs = scoring.score(inputs.model_recipe, fitted["state"], pool.ids, pool.x, frozenset({"probs"}),
                          mc_samples=cfg.mc_samples, gpus=cfg.gpus,
                          tasks=scoring.tasks_for(cfg.scoring_tasks, len(pool))).probs
    confidence = probs.max(1)
    rest = np.setdiff1d(unlabeled, picks)
    rest = rest[np.lexsort((rest, confidence[pool.rows(rest)]))]   # least confident first, ties by id
    return RoundOutcome(round_, np.concatenate([picks, rest]), len(picks), probs.argmax(1), confidence,
                        record.result, fitted["state"], record.hook_state, record.telemetry)


def start(inputs: RoundInputs) -> ray.ObjectRef:
    """`train_round` as a Ray task (with the config's GPUs), so the backend keeps serving meanwhile."""
    task = ray.remote(train_round).options(num_cpus=1, num_gpus=inputs.cfg.gpus if not inputs.cfg.workers else 0,
                                           max_retries=0)
    return task.remote(inputs)
