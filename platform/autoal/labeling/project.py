"""A labeling project: the round engine (engine.rounds) with a person as the oracle: query files
out, answers in, and without a test split the accuracy estimated by cross-validation.

The directory is an experiment directory (runs.directory.ExperimentDir: config.yaml,
the append-only ledger, results, strategy state) plus
  project.yaml                 pool and test dataset references, class names, default strategy, CV folds
  queries.parquet              every query asked: round, id, strategy, predicted, confidence
  queries/round-NNN.csv|html|json   each batch, for the person and for Label Studio
  queries/label-studio.xml     the Label Studio labeling config
  state/task-model/seed<s>/round<N>.pt   the task model that chose round N's queries (state dict)
Labels the pool already carries (class folders, labeled Parquet rows) are seeds read from the pool;
the ledger holds the person's answers, each under the round of its query (skip -2, out-of-distribution -1).

`next` at round r trains on every known label, writes results row r and the
round r+1 files, and commits by appending its queries to queries.parquet
(one atomic write); `import` is one atomic ledger write. Both record every file they create in a
journal first (runs.journal); opening a project rolls back what the journal of a killed command
names, and nothing else, so a crash or kill leaves the project as it was before the command and a
user's own files in the project are never touched.
"""
from __future__ import annotations

import os
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from autoal import config, hooks
from autoal.compute import distributed, runtime, scoring, training
from autoal.labeling import fit_time, files as label_files
from autoal.nets import backbones, models
from autoal.errors import AutoALError
from autoal.engine.rounds import RoundEngine, derive_seed, initial_pool, initial_row
from autoal.labeling.pool import ProjectSettings, absolute_ref, embed_project, load_pool, parse_classes, with_embeddings
from autoal.runs.journal import Journal, journaled
from autoal.data.pool import OOD, UNLABELED, Pool
from autoal.safe_io import CONFIG_BYTES, atomic_write, load_yaml, own_dir, read_bytes, read_text, shown
from autoal.runs.directory import ExperimentDir, parquet_bytes, read_table

MODEL = "task-model"  # store state key of each round's task model: state/task-model/seed<s>/round<r>.pt
RUN = "label"  # the ledger's and results' `strategy` key: one run, whatever strategy asks each round
PROTECTED_TABLES = ("ledger", "queries")  # tables whose rows a rollback never touches
INIT_FILE = "init.yaml"  # the settings of a `label init` under way; project.yaml replaces it when the init ends


def _interrupted_init(root: Path, settings_text: bytes) -> bool:
    """Whether root holds a `label init` with these same settings that was killed before it ended (the
    embeddings it wrote resume shard by shard); one of other arguments is an error."""
    path = root / INIT_FILE
    if os.path.lexists(root / "project.yaml") or not os.path.lexists(path):
        return False
    if read_bytes(path, CONFIG_BYTES, "interrupted init", follow=False) != settings_text:
        raise AutoALError(f"{root} holds a `label init` with other arguments that did not finish; repeat its "
                          f"arguments (saved in {path}) to finish it, or choose another directory")
    return True


class LabelProject:
    """An open labeling project: its settings, config, store, pool (labels known so far) and test split."""

    def __init__(self, root: Path, settings: ProjectSettings, cfg: config.ExperimentConfig):
        self.root, self.settings, self.cfg, self.seed = root, settings, cfg, cfg.seeds[0]
        pool, sources = load_pool(settings.pool, settings.classes, cfg.data_root)
        train = pool.split == "train"
        self.pixels = pool.x[train] if pool.is_image else None   # for the person's contact sheets
        pool = with_embeddings(pool, self.embeddings("pool"), sources, settings)
        self.pool, self.sources = pool.subset("train"), sources[train]
        self.test = self._test_split(pool.subset("test"))
        self.model_recipe = models.ModelRecipe(models.resolve(cfg.model, pool.shape), pool.shape, len(settings.classes),
                                             cfg.dropout)

    def _test_split(self, test: Pool) -> tuple[np.ndarray, np.ndarray]:
        """(x, y) of the pool's test split plus the --test pool, every sample labeled."""
        xs, ys = [test.x], [test.y]
        if self.settings.test:
            extra, sources = load_pool(self.settings.test, self.settings.classes, self.cfg.data_root)
            extra = with_embeddings(extra, self.embeddings("test"), sources, self.settings)
            if extra.shape != test.shape:
                raise AutoALError(f"test pool {shown(self.settings.test)} has samples of shape {list(extra.shape)}, "
                                  f"the pool {list(test.shape)}")
            xs.append(extra.x)
            ys.append(extra.y)
        x, y = np.concatenate(xs), np.concatenate(ys)
        if (y < 0).any():
            raise AutoALError(f"the test split has {int((y < 0).sum())} samples without a class label; "
                              "every test sample needs one (class folders or labeled rows)")
        return x, y

    def embeddings(self, which: str) -> Path | None:
        """Where `label init --embed` put the embeddings of the pool or the test pool."""
        return self.root / "embeddings" / which if self.settings.embed else None

    # --- creating and opening -------------------------------------------------------

    @classmethod
    def create(cls, root: str | Path, pool: str, classes: str, test: str | None = None,
               config_path: str | None = None, strategy: str = "entropy", cv_folds: int = 3,
               embed: str | None = None, weights: str | None = None) -> "LabelProject":
        """Check everything (config, strategy, every image, the backbone's weights) before the directory
        is made; with `embed`, embed the pool (and test pool) once, into the project."""
        root = Path(root)
        if cv_folds < 0 or cv_folds == 1:
            raise AutoALError("--cv-folds must be 0 (no estimate) or at least 2")
        settings = ProjectSettings(absolute_ref(pool), parse_classes(classes), test and absolute_ref(test), strategy,
                                   cv_folds, embed, weights and str(Path(weights).expanduser().resolve()))
        settings_text = yaml.safe_dump(dict(asdict(settings), classes=list(settings.classes)), sort_keys=False).encode()
        if root.exists() and (not root.is_dir() or any(root.iterdir())) and not _interrupted_init(root, settings_text):
            raise AutoALError(f"{root} already exists and is not empty; `autoal label next {root}` "
                              "continues a project there")
        cfg = config.load(config_path, {"dataset": settings.pool, "strategies": [strategy]})
        project = cls(root, replace(settings, embed=None), cfg)
        project.round_hook(strategy)
        if embed:
            backbones.build(embed, backbones.state_dict(embed, settings.weights))
        store = ExperimentDir(root).open(cfg)
        atomic_write(root / INIT_FILE, settings_text)   # a killed init is continued by the same command
        if embed:
            try:
                embed_project(settings, root / "embeddings", cfg)
                project = cls(root, settings, cfg)
            except BaseException:
                store.close()
                raise
        project.store = store
        atomic_write(own_dir(root, "queries") / "label-studio.xml",
                     label_files.label_studio_config(settings.classes).encode())
        atomic_write(root / "project.yaml", settings_text)
        (root / INIT_FILE).unlink()
        project._load_progress()
        return project

    @classmethod
    def open(cls, root: str | Path) -> "LabelProject":
        root = Path(root)
        path = root / "project.yaml"
        if not os.path.lexists(path):
            raise AutoALError(f"{root} is not a labeling project (no project.yaml); start one with "
                              "`autoal label init`")
        try:
            data = load_yaml(read_text(path, CONFIG_BYTES, "project file", follow=False))
            settings = ProjectSettings(**dict(data, classes=tuple(data["classes"])))
        except (yaml.YAMLError, TypeError, KeyError, ValueError) as exc:
            raise AutoALError(f"{path} is damaged ({type(exc).__name__}); restore it from a backup") from None
        project = cls(root, settings, ExperimentDir(root).saved_config())
        project.store = ExperimentDir(root).open(project.cfg)
        try:
            project._roll_back()
            project.store.reload()
            project._load_progress()
        except BaseException:
            project.close()
            raise
        return project

    def close(self) -> None:
        """Release the project directory's lock."""
        self.store.close()

    def __enter__(self) -> "LabelProject":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _load_progress(self) -> None:
        path = self.root / "queries.parquet"
        self.queries = read_table(path) if os.path.lexists(path) else pd.DataFrame(
            {"round": pd.Series(dtype="int64"), "id": pd.Series(dtype="int64")})
        self.answers = self.store.labeled(RUN, self.seed).drop_duplicates("id", keep="last")  # newest answer counts
        asked = np.union1d(self.queries["id"].to_numpy(np.int64), self.answers["id"].to_numpy(np.int64))
        gone = np.setdiff1d(asked, self.pool.ids)
        if len(gone):
            raise AutoALError(f"{len(gone)} queried samples are no longer in pool {shown(self.settings.pool)} "
                              f"(e.g. id {gone[0]}); put their files back or start a new project")
        self.known = self.pool.y.copy()  # seeds, then every answer
        self.known[self.pool.rows(self.answers["id"].to_numpy(np.int64))] = self.answers["label"].to_numpy(np.int64)

    @property
    def committed(self) -> int:
        """Query rounds asked so far."""
        path = self.root / "queries.parquet"
        return int(read_table(path, ["round"])["round"].max()) if os.path.lexists(path) else 0

    def _roll_back(self) -> None:
        """Undo what the journal of a killed `next` or `import` names: its temporary files, and
        unless it committed, the files it created and its rows past the last committed round."""
        committed = self.committed
        for path in Journal(self.root).roll_back(committed):
            if path.suffix != ".parquet" or path.stem in PROTECTED_TABLES or not os.path.lexists(path):
                continue
            frame = read_table(path)
            if "round" in frame.columns and (frame["round"] >= committed).any():
                kept = frame[frame["round"] < committed]
                atomic_write(path, parquet_bytes(kept))
                if path.stem == "results":
                    atomic_write(self.root / "results.csv", kept.to_csv(index=False).encode())

    # --- the loop -------------------------------------------------------------------

    def round_hook(self, name: str):
        round_hook = hooks.create(name, self.cfg)
        if round_hook.strategy.learns:
            raise AutoALError(f"strategy {shown(name)} learns from the oracle's answer right after it asks, "
                              "which a person gives later; choose another strategy for labeling")
        return round_hook

    def trainable(self) -> np.ndarray:
        """Pool ids with a class label, seeds first, then answers in the order they were imported."""
        seeds = self.pool.ids[self.pool.y >= 0]
        answered = self.answers["id"].to_numpy(np.int64)
        return np.concatenate([seeds, answered[self.known[self.pool.rows(answered)] >= 0]])

    def open_queries(self) -> pd.DataFrame:
        return self.queries[~self.queries["id"].isin(self.answers["id"])]

    def next(self, batch: int | None = None, strategy: str | None = None, log=print) -> list[Path]:
        """Train on the labels so far, then ask the next batch; returns the files written for the person."""
        cfg, seed, round_, start = self.cfg, self.seed, self.committed, time.perf_counter()
        name = strategy or self.settings.strategy
        round_hook = self.round_hook(name)
        if (k := cfg.batch if batch is None else batch) <= 0:
            raise AutoALError(f"--batch must be positive, got {k}")
        known = Pool(self.pool.name, self.pool.ids, self.pool.x, self.known, self.pool.split, self.pool.classes)
        asked = np.union1d(self.pool.ids[self.known != UNLABELED], self.queries["id"].to_numpy(np.int64))
        asked = np.union1d(asked, self.answers["id"].to_numpy(np.int64))
        unasked = np.setdiff1d(self.pool.ids, asked)
        if not len(unasked):
            raise AutoALError(f"nothing left to ask: all {len(self.pool)} samples are labeled or queried")
        k, files, asking = min(k, len(unasked)), [], {}

        def ask(picks: np.ndarray, fit: training.FitResult | None) -> None:   # the oracle: files for the person
            asking.update(zip(("predicted", "confidence"), self._guesses(picks, fit, round_)))
            at = self.pool.rows(picks)
            frame = pd.DataFrame({"id": picks, "source": self.sources[at], **asking})
            files.extend(label_files.write_round(own_dir(self.root, "queries"), round_ + 1, frame,
                                                 None if self.pixels is None else self.pixels[at], self.store.write))

        with journaled(self.store, round_ + 1):   # committed once queries.parquet holds round r+1
            labeled = self.trainable()
            columns = dict(strategy=RUN, accuracy_estimated=not len(self.test[1]), query_strategy=name)
            if len(np.unique(self.known[known.rows(labeled)])) >= 2:
                result, picks = self._model_round(RoundEngine(cfg, known, self.model_recipe, self.store), round_hook,
                                                  name, labeled, asked, k, ask, columns, log)
            else:  # no model before two classes have labels: the initial pool's rule picks
                picks = initial_pool(known.take(np.isin(known.ids, unasked)), k, cfg.initial_method,
                                     derive_seed(seed, round_))
                ask(picks, None)
                result = initial_row(cfg, seed, round_, len(labeled), columns)
                self.store.append_result(result)
            log(f"round {round_}: trained on {len(labeled)} labels, accuracy {result['accuracy']:.4f}"
                f"{' (estimate)' if result['accuracy_estimated'] else ''}; asked {len(picks)} queries by "
                f"{result['query_strategy']} in {time.perf_counter() - start:.1f} s")
            self.store.append_rows("queries", [dict(strategy=RUN, seed=seed, round=round_ + 1, id=int(i),
                                                    query_strategy=result["query_strategy"], predicted=p,
                                                    confidence=float(c))
                                               for i, p, c in zip(picks, asking["predicted"], asking["confidence"])])
        self._load_progress()
        return files

    def _model_round(self, engine: RoundEngine, round_hook, name: str, labeled: np.ndarray, asked: np.ndarray,
                     k: int, ask, columns: dict, log) -> tuple[dict, np.ndarray]:
        """The engine's round: the person is the oracle; no test split: accuracy by cross-validation."""
        cfg, seed, round_ = self.cfg, self.seed, self.committed
        runtime.check_resources(cfg.workers, scoring.tasks_for(cfg.scoring_tasks, len(self.pool)), cfg.gpus, log,
                                threads=cfg.torch_threads)
        folds = 0 if len(self.test[1]) else self.settings.cv_folds
        fit_time.announce(self.model_recipe, cfg, len(labeled), folds, bool(self.settings.embed), log)
        engine.resume(round_hook, name, seed, round_)
        with distributed.workers(cfg.workers, cfg.gpus, warm=cfg.warm_workers, threads=cfg.torch_threads, log=log):
            return engine.play(name, round_hook, seed, round_, labeled, k=k, exclude=asked,
                               test=self.test if len(self.test[1]) else self._cv_accuracy, commit=ask,
                               columns=columns)

    def _guesses(self, picks: np.ndarray, fit: training.FitResult | None, round_: int) -> tuple[np.ndarray, np.ndarray]:
        """The model's class name and confidence for each pick (none before a model), its state kept."""
        if fit is None:
            return np.full(len(picks), ""), np.full(len(picks), np.nan)
        self.store.save_state(MODEL, self.seed, round_ + 1, fit.state)
        probs = scoring.score(self.model_recipe, fit.state, picks, self.pool.x[self.pool.rows(picks)],
                              frozenset({"probs"}), mc_samples=self.cfg.mc_samples, tasks=0).probs
        return np.asarray(self.settings.classes)[probs.argmax(1)], probs.max(1)

    def _cv_accuracy(self, rows: np.ndarray) -> float:
        """Accuracy estimated by k-fold cross-validation on the labels (NaN with cv_folds 0)."""
        from sklearn.model_selection import KFold

        folds = min(self.settings.cv_folds, len(rows))
        if folds < 2:
            return float("nan")
        cfg, x, y = self.cfg, self.pool.x, self.known
        split = KFold(folds, shuffle=True, random_state=derive_seed(self.seed, self.committed, 4)).split(rows)
        return training.cross_validate(self.model_recipe, (x[rows], y[rows]), list(split),
                                       seed=derive_seed(self.seed, self.committed, 1), epochs=cfg.epochs, lr=cfg.lr,
                                       weight_decay=cfg.weight_decay, batch_size=cfg.task_minibatch,
                                       min_steps=cfg.min_steps, workers=cfg.workers, gpus=cfg.gpus,
                                       name=f"label-r{self.committed}-cv")

    # --- answers, status, export --------------------------------------------------

    def import_answers(self, path: str | Path) -> str:
        """Check a file of answers against the open queries, then append them to the ledger at once."""
        answers = label_files.read_answers(path)
        codes = {name: i for i, name in enumerate(self.settings.classes)}
        new = label_files.new_answers(path, answers, self.queries, self.answers,
                                      {**codes, label_files.SKIP: UNLABELED, label_files.OOD_ANSWER: OOD})
        round_of = self.queries.drop_duplicates("id", keep="last").set_index("id")["round"]
        with journaled(self.store, self.committed):   # one write, committed once it is renamed into place
            self.store.append_ledger(pd.DataFrame({"strategy": RUN, "seed": self.seed,
                                                   "round": new["id"].map(round_of).to_numpy(np.int64),
                                                   "id": new["id"].to_numpy(np.int64),
                                                   "label": new["label"].to_numpy(np.int64)}))
        self._load_progress()
        return (f"imported {len(new)} answers ({len(answers) - len(new)} already in the ledger); "
                f"{len(self.open_queries())} queries still open")

    def counts(self) -> dict[str, int]:
        """Known labels per class (seeds and answers), out-of-distribution and skipped answers."""
        answered = self.known[self.pool.rows(self.answers["id"].to_numpy(np.int64))]
        counts = {c: int((self.known == i).sum()) for i, c in enumerate(self.settings.classes)}
        return {**counts, label_files.OOD_ANSWER: int((self.known == OOD).sum()),
                "skipped": int((answered == UNLABELED).sum())}

    def status(self) -> str:
        from autoal.runs import plots

        open_by_round = self.open_queries().groupby("round").size()
        lines = [f"project {self.root}: pool {self.settings.pool} ({len(self.pool)} samples), "
                 f"test split {len(self.test[1]) or 'none'}",
                 "labels: " + ", ".join(f"{k} {v}" for k, v in self.counts().items()),
                 f"rounds asked: {self.committed}; open queries: {open_by_round.sum()}"
                 + "".join(f", {n} of round {r}" for r, n in open_by_round.items())]
        results = self.store.results
        measured = results[results["accuracy"].notna()] if len(results) else results
        if not len(measured):
            lines.append("accuracy: none yet (a model trains once two classes have labels)")
            return "\n".join(lines)
        last = measured.iloc[-1]
        what = (f"estimated by {self.settings.cv_folds}-fold cross-validation on the labels (no test split)"
                if last["accuracy_estimated"] else "on the test split")
        ylabel = "accuracy (CV estimate)" if last["accuracy_estimated"] else "test accuracy"
        curve = plots.curves(measured, self.root / "curves.png", title=f"labeling {self.settings.pool}", ylabel=ylabel)
        lines += [f"accuracy: {last['accuracy']:.4f} at round {int(last['round'])} with {int(last['n_labeled'])} "
                  f"labels, {what}", f"learning curve: {curve}"]
        return "\n".join(lines)
