"""An experiment: its data checked, then the initial pool and the rounds (engine.rounds) of every
strategy and seed, with the simulated oracle revealing the hidden labels of the picks.

Paired seeds: at a given seed every strategy starts from the same initial
pool, and each round's model init and batch order depend on (seed, round)
only, so strategies differ only in what they query.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from autoal import hooks
from autoal.compute import distributed, runtime, scoring
from autoal.config import ExperimentConfig
from autoal.data import datasets
from autoal.data.ids import is_lazy
from autoal.data.pool import OOD, UNLABELED, Pool, with_ood_classes
from autoal.engine.rounds import RoundEngine, initial_pool
from autoal.errors import AutoALError
from autoal.nets import models
from autoal.nets.models import ModelRecipe
from autoal.runs import plots
from autoal.runs.directory import ExperimentDir
from autoal.runs.lock import describe
from autoal.safe_io import shown


def load_data(cfg: ExperimentConfig, download: bool = False) -> tuple[Pool, Pool, ModelRecipe]:
    """The experiment's train and test splits and its task model's recipe; what is wrong with the
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
    if cfg.initial_method == "kcenter" and is_lazy(train.x):
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
    recipe = ModelRecipe(models.resolve(cfg.model, train.shape), train.shape, pool.classes, cfg.dropout)
    return train, test, recipe


@dataclass
class Experiment:
    """One experiment's data, model recipe and directory, ready to run."""

    cfg: ExperimentConfig
    train: Pool
    test: Pool
    recipe: ModelRecipe
    store: ExperimentDir
    log: Callable[[str], None] = print
    on_round: Callable[[dict], None] | None = None   # called with each round's results row

    @classmethod
    def prepare(cls, cfg: ExperimentConfig, out: str | Path, log=print, download: bool = False,
                on_round: Callable[[dict], None] | None = None) -> "Experiment":
        """Validate everything that can be wrong before touching `out`."""
        for name in cfg.strategies:
            hooks.create(name, cfg)
        train, test, recipe = load_data(cfg, download)
        runtime.check_resources(cfg.workers, scoring.tasks_for(cfg.scoring_tasks, len(train)), cfg.gpus, log,
                                threads=cfg.torch_threads)
        store = ExperimentDir(out).open(cfg)
        if store.lock.stale:
            log(f"autoal: {out} was locked by a run that ended without releasing it "
                f"({describe(store.lock.stale)}); taking it over")
        return cls(cfg, train, test, recipe, store, log, on_round)

    def run(self) -> pd.DataFrame:
        """Run every strategy and seed not yet finished, every fit on one group of training workers;
        the directory's lock is released and the workers stopped however it ends."""
        cfg = self.cfg
        try:
            everything = np.arange(len(self.test))
            self.test_set = (self.test.features(everything), self.test.labels(everything))
            self.engine = RoundEngine(cfg, self.train, self.recipe, self.store)
            with distributed.workers(cfg.workers, cfg.gpus, warm=cfg.warm_workers, threads=cfg.torch_threads,
                                     log=self.log):
                for seed in cfg.seeds:
                    initial = initial_pool(self.train, cfg.initial, cfg.initial_method, seed)
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
        cfg, store, engine = self.cfg, self.store, self.engine
        start = store.rounds_done(name, seed)
        if start > cfg.rounds:
            return
        if start:
            self.log(f"[{name} seed={seed}] resuming at round {start}/{cfg.rounds}")
        if start == 0 and not len(store.labeled(name, seed)):
            store.append_ledger(self.ledger_rows(name, seed, 0, initial))
        engine.resume(round_hook, name, seed, start)
        labeled = store.labeled(name, seed)["id"].to_numpy(np.int64)
        for round_ in range(start, cfg.rounds + 1):
            ood = int((self.train.y[self.train.rows(labeled[cfg.initial:])] == OOD).sum())
            reveal = lambda picks, fit: store.append_ledger(self.ledger_rows(name, seed, round_ + 1, picks))  # noqa: E731
            result, picks = engine.play(name, round_hook, seed, round_, labeled, k=cfg.batch if round_ < cfg.rounds
                                        else 0, exclude=labeled, test=self.test_set, commit=reveal,
                                        columns=dict(ood_queries=ood))
            labeled = np.concatenate([labeled, picks])
            if self.on_round:
                self.on_round(result)
            self.log(f"[{name} seed={seed}] round {round_}/{cfg.rounds}: {result['n_labeled']} labeled, "
                     f"accuracy {result['accuracy']:.4f} (train {result['train_s']:.1f}s, "
                     + (f"hook {result['hook_s']:.1f}s, " if result["hook_s"] >= 0.05 else "")
                     + f"score {result['score_s']:.1f}s, select {result['select_s']:.2f}s)")

    def ledger_rows(self, name: str, seed: int, round_: int, ids: np.ndarray) -> pd.DataFrame:
        """The simulated oracle: reveal the hidden labels of the queried ids."""
        labels = self.train.labels(self.train.rows(ids))
        return pd.DataFrame({"strategy": name, "seed": seed, "round": round_, "id": ids, "label": labels})
