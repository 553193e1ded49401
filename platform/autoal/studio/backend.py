"""The Label Studio backend's state: an open labeling project, the round it serves, the round that trains.

It holds the project's lock for its whole life, so it is the project's one writer: answers from
webhooks go into the ledger as `autoal label import` writes them (journaled, one atomic write),
and each round commits as `autoal label next` commits (journaled, queries.parquet last). A round
trains in a Ray task (autoal.studio.round_task) started once `retrain_every` answers arrived since the
last one started; /predict serves the last committed round until the next one commits. Each round
writes `predictions/round-NNN.parquet` (id, predicted, confidence, score of every pool sample),
which is what is served; a restarted backend serves the newest one and, if answers wait, trains.

Webhook answers differ from an imported file in three ways, since a person in Label Studio may
label any task and change their mind: an answer may be to any pool sample, not only a queried
one; an updated annotation appends its new label (the newest answer of a sample counts); a
deleted annotation appends "unlabeled". A replayed webhook appends nothing.
"""
from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import ray

from autoal.data.pool import OOD, UNLABELED, Pool
from autoal.errors import AutoALError
from autoal.labeling import files as label_files
from autoal.labeling.project import MODEL, RUN, LabelProject
from autoal.runs.directory import parquet_bytes, read_table
from autoal.runs.journal import journaled
from autoal.safe_io import one_line, own_dir, shown
from autoal.studio.protocol import (DELETE_ACTION, TaskIndex, answer_of, predict_tasks, prediction, schema,
                                    webhook_event)
from autoal.studio.round_task import RoundInputs, RoundOutcome, start

PREDICTIONS = "predictions"           # predictions/round-NNN.parquet: what round NNN serves
ANNOTATIONS = "studio-annotations.parquet"   # Label Studio annotation id -> pool id, for deletions


def model_version(round_: int | None) -> str:
    return f"autoal-round-{round_}" if round_ is not None else "autoal-untrained"


class StudioBackend:
    """The ML backend's behaviour, without HTTP: autoal.studio.serve puts it behind Ray Serve."""

    def __init__(self, root: str | Path, retrain_every: int = 10, studio=None, log=print):
        self.retrain_every, self.studio, self.log = retrain_every, studio, log
        self.project = LabelProject.open(root)
        project = self.project
        self.index = TaskIndex(project.pool.ids, project.sources)
        self.codes = {**{c: i for i, c in enumerate(project.settings.classes)},
                      label_files.SKIP: UNLABELED, label_files.OOD_ANSWER: OOD}
        path = project.root / ANNOTATIONS
        frame = read_table(path) if os.path.lexists(path) else pd.DataFrame({"annotation": [], "id": []})
        self.annotations = dict(zip(frame["annotation"].astype("int64"), frame["id"].astype("int64")))
        self.schema = schema(None, project.settings.classes)   # autoal's own config until Label Studio sends its
        self.lock = threading.RLock()
        self.served, self.table = None, {}
        self._serve_newest()
        ledger = project.store.labeled(RUN, project.seed)
        self.trained_rows = int((ledger["round"] < project.committed).sum()) if self.served is not None else -1
        self.inflight: tuple[ray.ObjectRef, int] | None = None
        self.rounds_failed, self.told = 0, None   # told: the round whose predictions Label Studio fetched
        self._stop = threading.Event()
        self.maybe_retrain()
        self._poller = threading.Thread(target=self._poll_loop, name="autoal-rounds", daemon=True)
        self._poller.start()

    # --- what Label Studio asks -----------------------------------------------------

    def health(self) -> dict:
        with self.lock:
            return {"status": "UP", "model_class": "autoal", "model_version": model_version(self.served),
                    "round": self.served, "training": self.inflight is not None, "told": self.told,
                    "answers": int(len(self.project.answers))}

    def setup(self, body: dict) -> dict:
        """Label Studio connects (and checks on the backend before each prediction): its labeling config
        must label images with the project's classes."""
        self.schema = schema(body.get("schema"), self.project.settings.classes)
        return {"model_version": model_version(self.served)}

    def predict(self, body: dict) -> dict:
        tasks = predict_tasks(body)
        classes = self.project.settings.classes
        config = schema(body["label_config"], classes) if body.get("label_config") else self.schema
        with self.lock:
            if self.served is None:
                raise Unavailable("no round has finished yet; the first one is training")
            version, table = model_version(self.served), self.table
            results = []
            for task in tasks:
                predicted, score = table.get(self.index.pool_id(task, config.key), ("", 1.0))
                results.append(prediction(predicted, score, version, config))
        return {"results": results, "model_version": version}

    def webhook(self, body: dict) -> dict:
        """Store the answers of an annotation webhook; returns what was stored."""
        action, items = webhook_event(body)
        with self.lock:
            project = self.project
            latest = dict(zip(project.answers["id"].tolist(), project.answers["label"].tolist()))
            rows, links, unknown = [], {}, 0
            for annotation, payload in items:
                if action == DELETE_ACTION:
                    sample = self.annotations.get(annotation)
                    if sample is None or latest.get(sample, UNLABELED) == UNLABELED:
                        continue
                    label = UNLABELED
                else:
                    sample = self.index.pool_id(payload["task"], self.schema.key)
                    answer = answer_of(payload["annotation"])
                    if sample is None or not answer:
                        unknown += sample is None
                        continue
                    if answer not in self.codes:
                        raise AutoALError(f"webhook: label {shown(answer)} is not one of the project's classes "
                                          f"{', '.join(project.settings.classes)} (or skip, ood)")
                    label = self.codes[answer]
                    if self.annotations.get(annotation) != sample:
                        links[annotation] = sample
                    if latest.get(sample) == label:
                        continue
                rows.append((sample, label))
                latest[sample] = label
            self._store(rows, links)
        self.maybe_retrain()
        return {"action": action, "stored": len(rows), "not_in_pool": unknown}

    def _store(self, rows: list[tuple[int, int]], links: dict[int, int]) -> None:
        """Append answers to the ledger, as `label import` does: one journaled, atomic write."""
        project, store = self.project, self.project.store
        with journaled(store, project.committed):
            if links:   # first: an annotation without its answer is harmless, the reverse loses a deletion
                self.annotations.update(links)
                store.write(project.root / ANNOTATIONS, parquet_bytes(pd.DataFrame(
                    {"annotation": list(self.annotations), "id": list(self.annotations.values())}, dtype="int64")))
            if rows:
                ids, labels = np.array([r[0] for r in rows], np.int64), np.array([r[1] for r in rows], np.int64)
                store.append_ledger(pd.DataFrame({"strategy": RUN, "seed": project.seed, "round": project.committed,
                                                  "id": ids, "label": labels}))
        if rows:
            project._load_progress()
            self.log(f"stored {len(rows)} answers from Label Studio ({len(project.answers)} in the ledger)")

    # --- rounds -----------------------------------------------------------------------

    def pending(self) -> int:
        """Answers stored since the serving (or training) round started: what the next round adds."""
        return len(self.project.store.labeled(RUN, self.project.seed)) - max(self.trained_rows, 0)

    def maybe_retrain(self) -> bool:
        """Start a round when none has finished yet, or `retrain_every` answers arrived since the last."""
        with self.lock:
            project = self.project
            if self.inflight is not None or not (project.known == UNLABELED).any():
                return False
            if self.served is not None and self.pending() < self.retrain_every:
                return False
            x = project.pool
            pool = Pool(x.name, x.ids, x.x, project.known, x.split, x.classes)
            inputs = RoundInputs(project.cfg, project.model_recipe, pool, project.test, project.trainable(),
                                 project.settings.strategy, project.committed, project.seed,
                                 project.store.load_state(project.settings.strategy, project.seed, project.committed))
            rows = len(project.store.labeled(RUN, project.seed))
            self.inflight = (start(inputs), rows)
            self.log(f"round {project.committed}: training on {len(inputs.labeled)} labels in the background")
            return True

    def _poll_loop(self) -> None:
        while not self._stop.is_set():
            if self.inflight is None:
                self._stop.wait(0.5)
                continue
            ready, _ = ray.wait([self.inflight[0]], timeout=0.5)
            if ready:
                self.finish_round()

    def finish_round(self) -> None:
        """Commit the finished round (or log its failure), tell Label Studio, start the next if answers wait."""
        ref, rows = self.inflight
        try:
            outcome = ray.get(ref)
        except Exception as exc:   # a failed round leaves the served one in place; the next answers retry
            self.rounds_failed += 1
            self.log(f"round failed, still serving {model_version(self.served)}: {one_line(exc, 200)}")
            with self.lock:
                self.inflight, self.trained_rows = None, rows
            return
        with self.lock:
            self._commit(outcome)
            self.trained_rows = rows
        if self.studio is not None and self.studio.refresh_predictions(model_version(self.served), self.log):
            self.told = self.served
        with self.lock:   # only now, so that a caller waiting for the round does not tell Label Studio twice
            self.inflight = None
        self.maybe_retrain()

    def _commit(self, outcome: RoundOutcome) -> None:
        project, store, r = self.project, self.project.store, outcome.round_
        classes = np.asarray(project.settings.classes)
        ids = project.pool.ids
        predicted = np.where(outcome.predicted >= 0, classes[np.maximum(outcome.predicted, 0)], "")
        frame = pd.DataFrame({"id": ids, "predicted": predicted, "confidence": outcome.confidence,
                              "score": outcome.scores(ids)})
        picks = outcome.ranking[:outcome.picked]
        at = project.pool.rows(picks)
        with journaled(store, r + 1):   # committed once queries.parquet holds round r + 1, as `label next`
            if outcome.hook_state is not None:
                store.save_state(project.settings.strategy, project.seed, r + 1, outcome.hook_state)
            if outcome.model_state is not None:
                store.save_state(MODEL, project.seed, r + 1, outcome.model_state)
            for table, rows in outcome.telemetry.items():
                store.append_rows(table, rows)
            store.write(own_dir(project.root, PREDICTIONS) / f"round-{r + 1:03d}.parquet", parquet_bytes(frame))
            store.append_result(outcome.result)
            store.append_rows("queries", [dict(strategy=RUN, seed=project.seed, round=r + 1, id=int(i),
                                               query_strategy=outcome.result["query_strategy"], predicted=p,
                                               confidence=float(c))
                                          for i, p, c in zip(picks, predicted[at], outcome.confidence[at])])
        project._load_progress()
        self._serve_newest()
        self.log(f"round {r}: trained on {outcome.result['n_labeled']} labels; serving {model_version(self.served)}")

    def _serve_newest(self) -> None:
        """Serve the committed round's predictions, if that round wrote them."""
        r = self.project.committed
        path = self.project.root / PREDICTIONS / f"round-{r:03d}.parquet"
        if not os.path.lexists(path):
            return
        frame = read_table(path)
        self.table = {int(i): (p, float(s)) for i, p, s in zip(frame["id"], frame["predicted"], frame["score"])}
        self.served = r

    def wait_round(self, timeout: float = 600) -> None:
        """Block until no round is training (tests, and `autoal serve` before it says it is ready)."""
        deadline = time.monotonic() + timeout
        while self.inflight is not None:
            if time.monotonic() > deadline:
                raise AutoALError(f"no round finished within {timeout:.0f} s")
            time.sleep(0.2)

    def close(self) -> None:
        """Stop: a round still training is cancelled (its work is lost, as if the backend were killed)."""
        self._stop.set()
        self._poller.join(timeout=5)
        if self.inflight is not None:
            ray.cancel(self.inflight[0], force=True)
        self.project.close()


class Unavailable(AutoALError):
    """A request the backend cannot answer yet (HTTP 503)."""
