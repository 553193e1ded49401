"""The active-learning loop: initial pool, then rounds of train, evaluate,
score, select and label, for every strategy and seed of an experiment.

Paired seeds: at a given seed every strategy starts from the same initial
pool, and each round's model init and batch order depend on (seed, round)
only, so strategies differ only in what they query.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import ray

from autoal import hooks
from autoal.compute import distributed, runtime, scoring, training
from autoal.data import datasets
from autoal.nets import models
from autoal.runs import plots
from autoal.config import ExperimentConfig
from autoal.errors import AutoALError
from autoal.safe_io import shown
from autoal.runs.lock import describe
from autoal.data.pool import OOD, UNLABELED, Pool, with_ood_classes
from autoal.runs.directory import ExperimentDir
from autoal.strategies import PoolStats, get
from autoal.strategies.base import ORACLE, provided_by
from autoal.data.ids import positions


def derive_seed(seed: int, *parts: int) -> int:
    """A 31-bit seed from (seed, parts...): independent streams per round and purpose."""
    return int(np.random.SeedSequence([seed, *parts]).generate_state(1)[0] >> 1)


def initial_pool(train: Pool, cfg: ExperimentConfig, seed: int) -> np.ndarray:
    """The initial labeled ids: uniform, or greedy k-center on the raw inputs."""
    if cfg.initial_method == "kcenter":
        stats = PoolStats(ids=train.ids, embedding=train.x.reshape(len(train), -1))
        return np.sort(get("coreset").select(stats, cfg.initial, seed=derive_seed(seed, 0)))
    rng = np.random.default_rng(derive_seed(seed, 0))
    return np.sort(rng.choice(train.ids, size=cfg.initial, replace=False))


def load_data(cfg: ExperimentConfig, download: bool = False) -> tuple[Pool, Pool, training.ModelSpec]:
    """The experiment's train and test splits and its task model's spec; what is wrong with the
    data for this config is one user error."""
    pool = datasets.load(cfg.dataset, cfg.data_root, download=download)
    unknown = int((pool.y == UNLABELED).sum())
    if unknown:
        raise AutoALError(f"dataset {shown(cfg.dataset)} has {unknown} samples without a label, and `autoal run` "
                          "simulates the oracle from known labels; label them with `autoal label`")
    pool = with_ood_classes(pool, cfg.ood_classes)
    train, test = pool.subset("train"), pool.subset("test")
    if not len(test):
        raise AutoALError(f"dataset {shown(cfg.dataset)} has no test split to evaluate on")
    if cfg.initial_method == "kcenter" and not isinstance(train.x, np.ndarray):
        raise AutoALError(f"initial_method kcenter compares every sample's features, and {shown(cfg.dataset)} "
                          "leaves them in its files; use initial_method random")
    if cfg.budget > len(train):
        raise AutoALError(f"budget {cfg.budget} (initial {cfg.initial} + {cfg.rounds} rounds x "
                          f"batch {cfg.batch}) exceeds the pool of {len(train)} training samples")
    present = np.unique(train.y[train.y != OOD])
    if len(present) < 2:
        raise AutoALError(f"the train split of {shown(cfg.dataset)} holds {len(present)} class(es) "
                          f"({present.tolist()}) of the {pool.classes} its metadata declares; "
                          "a classifier needs at least 2")
    spec = training.ModelSpec(models.resolve(cfg.model, train.shape), train.shape, pool.classes, cfg.dropout)
    return train, test, spec


@dataclass
class Experiment:
    """One experiment's data, model spec and directory, ready to run."""

    cfg: ExperimentConfig
    train: Pool
    test: Pool
    spec: training.ModelSpec
    store: ExperimentDir
    log: Callable[[str], None] = print
    on_round: Callable[[dict], None] | None = None   # called with each round's results row

    @classmethod
    def prepare(cls, cfg: ExperimentConfig, out: str | Path, log=print, download: bool = False,
                on_round: Callable[[dict], None] | None = None) -> "Experiment":
        """Validate everything that can be wrong before touching `out`."""
        for name in cfg.strategies:
            hooks.create(name, cfg)
        train, test, spec = load_data(cfg, download)
        runtime.init_ray()
        runtime.check_resources(cfg.workers, scoring.actors_for(cfg.actors, len(train)), cfg.gpus, log)
        store = ExperimentDir(out).open(cfg)
        if store.lock.stale:
            log(f"autoal: {out} was locked by a run that ended without releasing it "
                f"({describe(store.lock.stale)}); taking it over")
        return cls(cfg, train, test, spec, store, log, on_round)

    def run(self) -> pd.DataFrame:
        """Run every strategy and seed not yet finished, every fit on one group of training workers;
        the directory's lock is released and the workers stopped however it ends."""
        cfg = self.cfg
        try:
            everything = np.arange(len(self.test))
            self.test_ref = ray.put((self.test.features(everything), self.test.labels(everything)))
            with distributed.workers(cfg.workers, cfg.gpus, warm=cfg.warm_workers, log=self.log):
                for seed in cfg.seeds:
                    initial = initial_pool(self.train, cfg, seed)
                    for name in cfg.strategies:
                        self.run_strategy(name, hooks.create(name, cfg), seed, initial)
            root = self.store.root
            plots.curves(self.store.results, root / "curves.png", title=cfg.dataset)
            if (root / "strategy_weights.parquet").exists():
                plots.strategy_weights(pd.read_parquet(root / "strategy_weights.parquet"),
                                       root / "strategy_weights.png", title=f"{cfg.dataset}: AutoAL weights")
        finally:
            self.store.close()
        return self.store.results

    def run_strategy(self, name: str, round_hook: hooks.RoundHook, seed: int, initial: np.ndarray) -> None:
        cfg, store = self.cfg, self.store
        start = store.rounds_done(name, seed)
        if start > cfg.rounds:
            return
        if start:
            self.log(f"[{name} seed={seed}] resuming at round {start}/{cfg.rounds}")
        if start == 0 and not len(store.labeled(name, seed)):
            store.append_ledger(self.ledger_rows(name, seed, 0, initial))
        saved = store.load_state(name, seed, start)
        if saved is not None:
            round_hook.load_state_dict(saved)
        ledger = store.labeled(name, seed)
        labeled = ledger["id"].to_numpy(np.int64)
        for round_ in range(start, cfg.rounds + 1):
            t0 = time.perf_counter()
            rows = self.trainable_rows(labeled)
            train_set = round_hook.train_set(self.train.features(rows), self.train.labels(rows))
            fit = self.fit(train_set, self.test_ref, seed, round_, name=f"{name}-s{seed}-r{round_}",
                           **round_hook.fit_options())
            result = dict(dataset=cfg.dataset, strategy=name, seed=seed, round=round_, n_labeled=len(labeled),
                          n_synthetic=len(train_set[1]) - len(rows),
                          ood_queries=int((self.train.y[self.train.rows(labeled[cfg.initial:])] == OOD).sum()),
                          accuracy=fit.accuracy, train_loss=fit.train_loss,
                          train_s=time.perf_counter() - t0, hook_s=0.0, score_s=0.0, select_s=0.0)
            if round_ < cfg.rounds:
                picks = self.query(name, round_hook, fit.state, labeled, rows, seed, round_, result)
                state = round_hook.state_dict()
                if state is not None:
                    store.save_state(name, seed, round_ + 1, state)
                store.append_ledger(self.ledger_rows(name, seed, round_ + 1, picks))
                labeled = np.concatenate([labeled, picks])
            store.append_result(result)
            if self.on_round:
                self.on_round(result)
            self.log(f"[{name} seed={seed}] round {round_}/{cfg.rounds}: {result['n_labeled']} labeled, "
                     f"accuracy {fit.accuracy:.4f} (train {result['train_s']:.1f}s, "
                     + (f"hook {result['hook_s']:.1f}s, " if result["hook_s"] >= 0.05 else "")
                     + f"score {result['score_s']:.1f}s, select {result['select_s']:.2f}s)")

    def fit(self, train_set: tuple[np.ndarray, np.ndarray], test_ref, seed: int, round_: int, name: str,
            **options) -> training.FitResult:
        """Train this round's task model on `train_set` = (x, y); its accuracy is on `test_ref` = (x, y).
        `options` are a hook's training options (training.fit's keywords)."""
        cfg = self.cfg
        return training.fit(self.spec, train_set, test_ref, seed=derive_seed(seed, round_, 1), epochs=cfg.epochs,
                            lr=cfg.lr, weight_decay=cfg.weight_decay, batch_size=cfg.batch_size,
                            min_steps=cfg.min_steps, workers=cfg.workers, gpus=cfg.gpus, name=name, **options)

    def query(self, name: str, round_hook: hooks.RoundHook, task_state: dict, labeled: np.ndarray,
              rows: np.ndarray, seed: int, round_: int, result: dict) -> np.ndarray:
        """Run the hook, score the pool with the fused pass, let the strategy pick a batch.
        `rows` are the labeled set's trainable rows, those the task model was fit on."""
        cfg, strat = self.cfg, round_hook.strategy
        keep = np.ones(len(self.train), dtype=bool)   # 1 byte a sample: no set difference of 10M ids
        keep[self.train.rows(labeled)] = False
        unlabeled, unlabeled_x = self.train.view(keep)
        del keep
        ctx = hooks.RoundContext(cfg, seed, round_, self.spec, task_state, self.train.features(rows),
                                 self.train.labels(rows), unlabeled, min(cfg.batch, len(unlabeled)),
                                 derive_seed(seed, round_, 2), pool=self.train)
        t0 = time.perf_counter()
        extra = round_hook.before_query(ctx)
        t1 = time.perf_counter()
        needs = strat.needs - provided_by(ORACLE)
        pool_stats = PoolStats(ids=unlabeled)
        if needs:
            score = partial(scoring.score, self.spec, task_state, mc_samples=cfg.mc_samples, gpus=cfg.gpus,
                            actors=scoring.actors_for(cfg.actors, len(unlabeled)))
            if strat.per_sample or not cfg.prefilter:
                pool_stats = score(unlabeled, unlabeled_x, needs, extra=extra,
                                   rank=scoring.Rank(name, cfg.strategy_options(name), ctx.k, needs)
                                   if strat.per_sample else None)
            else:   # `prefilter: m`: the top m x k by margin, then the strategy's statistics of those alone
                # (keeping them in the ranked pass would bring m x k embeddings per block to the driver)
                top = score(unlabeled, unlabeled_x, frozenset(), rank=scoring.Rank("margin", {}, cfg.prefilter * ctx.k))
                pool_stats = score(top.ids, unlabeled_x[positions(unlabeled, top.ids)], needs, extra=extra)
        labeled_stats = None
        if strat.needs_labeled:   # the labeled set is small: scored here
            at = self.train.rows(labeled)
            labeled_stats = replace(scoring.score(self.spec, task_state, labeled, self.train.features(at), needs,
                                                  mc_samples=cfg.mc_samples, actors=0, gpus=cfg.gpus, extra=extra),
                                    labels=self.train.labels(at))
        t2 = time.perf_counter()
        picks = np.asarray(strat.select(pool_stats, ctx.k, labeled=labeled_stats, seed=ctx.rng_seed), dtype=np.int64)
        telemetry = round_hook.after_select(ctx, pool_stats, picks, self.train.labels(self.train.rows(picks)))
        for table, table_rows in telemetry.items():
            self.store.append_rows(table, [dict(strategy=name, seed=seed, round=round_, **r) for r in table_rows])
        result.update(hook_s=t1 - t0, score_s=t2 - t1, select_s=time.perf_counter() - t2)
        return picks

    def trainable_rows(self, labeled: np.ndarray) -> np.ndarray:
        """Rows of the labeled ids to train on: an out-of-distribution or skipped answer never is a training label."""
        rows = self.train.rows(labeled)
        return rows[self.train.y[rows] >= 0]

    def ledger_rows(self, name: str, seed: int, round_: int, ids: np.ndarray) -> pd.DataFrame:
        """The simulated oracle: reveal the hidden labels of the queried ids."""
        labels = self.train.labels(self.train.rows(ids))
        return pd.DataFrame({"strategy": name, "seed": seed, "round": round_, "id": ids, "label": labels})

