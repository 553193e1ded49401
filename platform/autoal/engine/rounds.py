"""One round of active learning, the same for `autoal run` and `autoal label`: fit the task model
on the labeled samples, run the strategy's hook, score the pool, select k, checkpoint the hook,
record the round's results row.

What the oracle is stays with the caller: `autoal run` reveals the hidden labels of the picks
(experiment.py), `autoal label` writes them out for a person (labeling/project.py). Everything a
round needs is an argument (k, the ids not to ask, the test set), never a patched config.
Paired seeds: each round's model init and batch order depend on (seed, round) only.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, replace
from functools import partial
from typing import Callable

import numpy as np

from autoal import hooks
from autoal.compute import scoring, training
from autoal.config import ExperimentConfig
from autoal.data.ids import positions
from autoal.data.pool import Pool
from autoal.nets.models import ModelRecipe
from autoal.runs.directory import ExperimentDir
from autoal.strategies import PoolStats, get
from autoal.strategies.base import ORACLE, provided_by

Arrays = tuple[np.ndarray, np.ndarray]


def derive_seed(seed: int, *parts: int) -> int:
    """A 31-bit seed from (seed, parts...): independent streams per round and purpose."""
    return int(np.random.SeedSequence([seed, *parts]).generate_state(1)[0] >> 1)


def initial_pool(pool: Pool, k: int, method: str, seed: int) -> np.ndarray:
    """k ids to label before any model: uniform, or greedy k-center on the raw inputs."""
    if method == "kcenter":
        stats = PoolStats(ids=pool.ids, embedding=pool.x.reshape(len(pool), -1))
        return np.sort(get("coreset").select(stats, k, seed=derive_seed(seed, 0)))
    rng = np.random.default_rng(derive_seed(seed, 0))
    return np.sort(rng.choice(pool.ids, size=k, replace=False))


def initial_row(cfg: ExperimentConfig, seed: int, round_: int, n_labeled: int, columns: dict) -> dict:
    """The results row of a round without a model (fewer than two classes labeled): `initial_pool` picked."""
    row = dict(dataset=cfg.dataset, strategy=None, seed=seed, round=round_, n_labeled=n_labeled, n_synthetic=0,
               accuracy=float("nan"), train_loss=float("nan"), train_s=0.0, hook_s=0.0, score_s=0.0, select_s=0.0)
    row.update(columns, query_strategy=f"initial:{cfg.initial_method}")
    return row


@dataclass
class RoundEngine:
    """A pool (with every label known so far), its task model's recipe and the directory the rounds
    are recorded in."""

    cfg: ExperimentConfig
    pool: Pool
    recipe: ModelRecipe
    store: ExperimentDir

    def trainable_rows(self, labeled: np.ndarray) -> np.ndarray:
        """Rows of the labeled ids to train on: an out-of-distribution or skipped answer never is a training label."""
        rows = self.pool.rows(labeled)
        return rows[self.pool.y[rows] >= 0]

    def resume(self, round_hook: hooks.RoundHook, name: str, seed: int, round_: int) -> None:
        """Give the hook the state it checkpointed for `round_`, if any."""
        saved = self.store.load_state(name, seed, round_)
        if saved is not None:
            round_hook.load_state_dict(saved)

    def play(self, name: str, round_hook: hooks.RoundHook, seed: int, round_: int, labeled: np.ndarray, *,
             k: int, exclude: np.ndarray, test: Arrays | Callable[[np.ndarray], float],
             commit: Callable[[np.ndarray, training.FitResult], None], columns: dict) -> tuple[dict, np.ndarray]:
        """Fit on `labeled`, then (k > 0) pick k ids not in `exclude` and hand them to `commit`
        (the oracle) before the hook's checkpoint and the results row are written; returns the row
        and the picks. `test` is (x, y), or without a test split a function of the trained rows
        that estimates the accuracy. `columns` name the row's strategy and add the caller's own."""
        t0 = time.perf_counter()
        rows = self.trainable_rows(labeled)
        train_set = round_hook.train_set(self.pool.features(rows), self.pool.labels(rows))
        held_out = test if isinstance(test, tuple) else (self.pool.features(rows), self.pool.labels(rows))
        fit = self.fit(train_set, held_out, seed, round_, name=f"{name}-s{seed}-r{round_}",
                       **round_hook.fit_options())
        row = dict(dataset=self.cfg.dataset, strategy=name, seed=seed, round=round_, n_labeled=len(labeled),
                   n_synthetic=len(train_set[1]) - len(rows),
                   accuracy=fit.accuracy if isinstance(test, tuple) else test(rows), train_loss=fit.train_loss,
                   train_s=time.perf_counter() - t0, hook_s=0.0, score_s=0.0, select_s=0.0)
        row.update(columns)
        picks = np.zeros(0, dtype=np.int64)
        if k:
            picks = self.query(name, round_hook, fit.state, exclude, rows, k, seed, round_, row)
            state = round_hook.state_dict()
            if state is not None:
                self.store.save_state(name, seed, round_ + 1, state)
            commit(picks, fit)
        self.store.append_result(row)
        return row, picks

    def fit(self, train_set: Arrays, test: Arrays, seed: int, round_: int, name: str,
            **options) -> training.FitResult:
        """Train this round's task model on `train_set` = (x, y); its accuracy is on `test` = (x, y).
        `options` are a hook's training options (training.fit's keywords)."""
        cfg = self.cfg
        return training.fit(self.recipe, train_set, test, seed=derive_seed(seed, round_, 1), epochs=cfg.epochs,
                            lr=cfg.lr, weight_decay=cfg.weight_decay, batch_size=cfg.task_minibatch,
                            min_steps=cfg.min_steps, workers=cfg.workers, gpus=cfg.gpus, name=name, **options)

    def query(self, name: str, round_hook: hooks.RoundHook, task_state: dict, exclude: np.ndarray,
              rows: np.ndarray, k: int, seed: int, round_: int, row: dict) -> np.ndarray:
        """Run the hook, score the pool but `exclude` with the fused pass, let the strategy pick up to
        k; the stages' seconds go into `row`. `rows` are those the task model was fit on."""
        cfg, strat, pool = self.cfg, round_hook.strategy, self.pool
        keep = np.ones(len(pool), dtype=bool)   # 1 byte a sample: no set difference of 10M ids
        keep[pool.rows(exclude)] = False
        unlabeled, unlabeled_x = pool.view(keep)
        del keep
        ctx = hooks.RoundContext(cfg, seed, round_, self.recipe, task_state, pool.features(rows), pool.labels(rows),
                                 unlabeled, min(k, len(unlabeled)), derive_seed(seed, round_, 2), pool=pool)
        t0 = time.perf_counter()
        extra = round_hook.before_query(ctx)
        t1 = time.perf_counter()
        pool_stats, labeled_stats = self.statistics(name, round_hook, task_state, exclude, unlabeled, unlabeled_x,
                                                    ctx.k, extra)
        t2 = time.perf_counter()
        picks, detail = strat.choose(pool_stats, ctx.k, labeled=labeled_stats, seed=ctx.rng_seed)
        picks = np.asarray(picks, dtype=np.int64)
        telemetry = round_hook.after_select(ctx, pool_stats, picks, pool.labels(pool.rows(picks)), detail)
        for table, table_rows in telemetry.items():
            self.store.append_rows(table, [dict(strategy=name, seed=seed, round=round_, **r) for r in table_rows])
        row.update(hook_s=t1 - t0, score_s=t2 - t1, select_s=time.perf_counter() - t2)
        return picks

    def statistics(self, name: str, round_hook: hooks.RoundHook, task_state: dict, labeled: np.ndarray,
                   unlabeled: np.ndarray, unlabeled_x, k: int, extra) -> tuple[PoolStats, PoolStats | None]:
        """The statistics the strategy reads: of the unlabeled pool (ranked to its top k in the pass
        for a per-sample strategy), and of the labeled set where it asks for them."""
        cfg, strat, pool = self.cfg, round_hook.strategy, self.pool
        needs = strat.needs - provided_by(ORACLE)
        pool_stats = PoolStats(ids=unlabeled)
        if needs:
            score = partial(scoring.score, self.recipe, task_state, mc_samples=cfg.mc_samples, gpus=cfg.gpus,
                            tasks=scoring.tasks_for(cfg.scoring_tasks, len(unlabeled)))
            if strat.per_sample or not cfg.prefilter:
                pool_stats = score(unlabeled, unlabeled_x, needs, extra=extra,
                                   rank=scoring.Rank(strat, k, needs)
                                   if strat.per_sample else None)
            else:   # `prefilter: m`: the top m x k by margin, then the strategy's statistics of those alone
                # (keeping them in the ranked pass would bring m x k embeddings per block to the driver)
                top = score(unlabeled, unlabeled_x, frozenset(), rank=scoring.Rank(get("margin"), cfg.prefilter * k))
                pool_stats = score(top.ids, unlabeled_x[positions(unlabeled, top.ids)], needs, extra=extra)
        labeled_stats = None
        if strat.needs_labeled:   # the labeled set is small: scored here
            at = pool.rows(labeled)
            labeled_stats = replace(scoring.score(self.recipe, task_state, labeled, pool.features(at), needs,
                                                  mc_samples=cfg.mc_samples, tasks=0, gpus=cfg.gpus, extra=extra),
                                    labels=pool.labels(at))
        return pool_stats, labeled_stats
