"""One round of the Label Studio backend, computed in a Ray task and written by the backend.

The backend holds the project's lock for its whole life (one writer: webhooks append to the
ledger while a round trains), so a round is split in two: `train_round` (a Ray task, in any
process of the cluster, on a GPU when the config asks for one) trains on the labels known when
it started, ranks the unlabeled pool by the project's strategy and predicts every sample, and
writes nothing; the backend then commits its `RoundOutcome` (autoal.studio.backend). A backend
killed mid-round loses only the computation: the ledger is untouched and the last committed
round is served again after a restart.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import ray

from autoal import config, distributed, hooks, runtime, scoring, training
from autoal.experiment import Experiment, derive_seed, initial_pool
from autoal.pool import UNLABELED, Pool
from autoal.studio.protocol import ranked_scores


@dataclass(frozen=True)
class RoundInputs:
    """What a round needs, copied out of the open project when it starts."""

    cfg: config.ExperimentConfig
    model_spec: training.ModelSpec
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


class _Telemetry:
    """Stands in for the project's store inside the task: keeps what a hook would write."""

    def __init__(self):
        self.tables: dict[str, list[dict]] = {}

    def append_rows(self, table: str, rows: list[dict]) -> None:
        self.tables.setdefault(table, []).extend(rows)


def train_round(inputs: RoundInputs) -> RoundOutcome:
    """Train on the known labels, rank the unlabeled pool by the strategy, predict every sample."""
    runtime.quiet()
    cfg, pool, seed, round_ = inputs.cfg, inputs.pool, inputs.seed, inputs.round_
    unlabeled = pool.ids[pool.y == UNLABELED]
    rows = pool.rows(inputs.labeled)
    result = dict(dataset=cfg.dataset, strategy="label", seed=seed, round=round_, n_labeled=len(rows),
                  accuracy=float("nan"), accuracy_estimated=not len(inputs.test[1]), query_strategy=inputs.strategy,
                  train_loss=float("nan"), train_s=0.0, hook_s=0.0, score_s=0.0, select_s=0.0)
    if len(np.unique(pool.y[rows])) < 2 or not len(unlabeled):   # no model yet: the initial pool's rule
        k = min(cfg.batch, len(unlabeled))
        mask = pool.y == UNLABELED
        candidates = Pool(pool.name, pool.ids[mask], pool.x[mask], pool.y[mask], pool.split[mask], pool.classes)
        picks = initial_pool(candidates, replace(cfg, initial=k), derive_seed(seed, round_)) if k else unlabeled
        result["query_strategy"] = f"initial:{cfg.initial_method}"
        ranking = np.concatenate([picks, np.setdiff1d(unlabeled, picks)])
        return RoundOutcome(round_, ranking, len(picks), np.full(len(pool), -1), np.full(len(pool), np.nan), result)
    round_hook = hooks.create(inputs.strategy, cfg)
    k = len(unlabeled) if round_hook.strategy.per_sample else min(cfg.batch, len(unlabeled))
    telemetry = _Telemetry()
    experiment = Experiment(replace(cfg, batch=k), pool, pool.subset("test"), inputs.model_spec, telemetry,
                            log=lambda line: None)
    with distributed.workers(cfg.workers, cfg.gpus, warm=cfg.warm_workers, log=lambda line: None):
        test = inputs.test if len(inputs.test[1]) else (pool.x[rows], pool.y[rows])
        fit = experiment.fit(round_hook.train_set(pool.x[rows], pool.y[rows]), ray.put(test), seed, round_,
                             name=f"studio-r{round_}", **round_hook.fit_options())
        result.update(accuracy=fit.accuracy if len(inputs.test[1]) else float("nan"), train_loss=fit.train_loss)
        if inputs.hook_state is not None:
            round_hook.load_state_dict(inputs.hook_state)
        asked = pool.ids[pool.y != UNLABELED]
        picks = experiment.query(inputs.strategy, round_hook, fit.state, asked, rows, seed, round_, result)
    probs = scoring.score(inputs.model_spec, fit.state, pool.ids, pool.x, frozenset({"probs"}),
                          mc_samples=cfg.mc_samples, gpus=cfg.gpus,
                          actors=scoring.actors_for(cfg.actors, len(pool))).probs
    confidence = probs.max(1)
    rest = np.setdiff1d(unlabeled, picks)
    rest = rest[np.lexsort((rest, confidence[pool.rows(rest)]))]   # least confident first, ties by id
    return RoundOutcome(round_, np.concatenate([picks, rest]), len(picks), probs.argmax(1), confidence, result,
                        fit.state, round_hook.state_dict(), telemetry.tables)


def start(inputs: RoundInputs) -> ray.ObjectRef:
    """`train_round` as a Ray task (with the config's GPUs), so the backend keeps serving meanwhile."""
    task = ray.remote(train_round).options(num_cpus=1, num_gpus=inputs.cfg.gpus if not inputs.cfg.workers else 0,
                                           max_retries=0)
    return task.remote(inputs)
