"""Labeling projects: a person (here, the test) answers the queries of the AL loop.

The pool is a real folder of PNG and JPEG files written from scikit-learn's
digits (classes 0, 1, 2): three per class in class folders, the rest loose.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits

import test_cli
from autoal import cli
from autoal.data import datasets, images
from autoal.runs import directory as store
from autoal.labeling.project import LabelProject
from autoal.runs.lock import LOCK_FILE
from autoal.data.pool import UNLABELED, from_arrays
from autoal.data.parquet import read_parquet, write_parquet
from autoal.nets.models import ModelRecipe
from test_cli import fingerprint

CLASSES = ("zero", "one", "two")
CONFIG = "epochs: 5\nmin_steps: 40\nbatch: 10\nscoring_tasks: 0\nmc_samples: 3\n"


def write_digit_folder(root: Path, n: int = 90, seeds_per_class: int = 3, size: int = 16,
                       suffixes: tuple[str, ...] = ("jpg", "png")) -> dict[str, str]:
    """JPEG/PNG digits under root (size x size); returns each file's relative path -> true class name."""
    x, y = load_digits(return_X_y=True)
    truth, seeded = {}, {c: 0 for c in CLASSES}
    for k, i in enumerate(np.flatnonzero(y < 3)[:n]):
        name = CLASSES[y[i]]
        folder = root / name if seeded[name] < seeds_per_class else root
        seeded[name] += folder != root
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"digit{i:04d}.{suffixes[k % len(suffixes)]}"
        Image.fromarray((x[i].reshape(8, 8) * 255 / 16).astype(np.uint8)).resize((size, size)).save(path)
        truth[path.relative_to(root).as_posix()] = name
    return truth


def fails(capsys, argv, message):
    assert message in test_cli.fails(capsys, argv, message).splitlines()[0]


def true_label(truth: dict, pool_root: Path, source: str) -> str:
    return truth[Path(source).relative_to(pool_root).as_posix()]


@pytest.fixture(scope="module")
def flow(ray_local, tmp_path_factory):
    """init, next, fill the CSV (one skip, one left blank), import, next: the loop a person runs."""
    base = tmp_path_factory.mktemp("label")
    truth = write_digit_folder(base / "digits")
    (base / "config.yaml").write_text(CONFIG)
    project = base / "project"
    assert cli.main(["label", "init", str(project), "--pool", f"images:{base / 'digits'}@16",
                     "--classes", ",".join(CLASSES), "--config", str(base / "config.yaml")]) == 0
    assert cli.main(["label", "next", str(project)]) == 0
    queries = pd.read_csv(project / "queries" / "round-001.csv", dtype=str, keep_default_na=False)
    queries["label"] = [true_label(truth, base / "digits", s) for s in queries["source"]]
    queries.loc[0, "label"], queries.loc[1, "label"] = "skip", ""
    filled = base / "round-001-filled.csv"
    queries.to_csv(filled, index=False)
    assert cli.main(["label", "import", str(project), str(filled)]) == 0
    ledger_after_import = pd.read_parquet(project / "ledger.parquet")
    before_second = base / "before-second-next"
    shutil.copytree(project, before_second)
    assert cli.main(["label", "next", str(project)]) == 0
    return dict(base=base, truth=truth, project=project, filled=filled, queries=queries,
                ledger_after_import=ledger_after_import, before_second=before_second)


def test_first_batch_names_its_files_with_the_models_guess(flow):
    queries, base = flow["queries"], flow["base"]
    assert len(queries) == 10 and list(queries.columns) == ["id", "source", "predicted", "confidence", "label"]
    for row in queries.itertuples():
        relative = Path(row.source).relative_to(base / "digits").as_posix()
        assert int(row.id) == images.stable_id(relative) and "/" not in relative, "loose files are queried"
        assert row.predicted in CLASSES and 1 / 3 <= float(row.confidence) <= 1
    sheet = (flow["project"] / "queries" / "round-001.html").read_text()
    assert sheet.count("<img src=\"data:image/png;base64,") == 10
    tasks = json.loads((flow["project"] / "queries" / "round-001.json").read_text())
    assert [t["data"]["autoal_id"] for t in tasks] == list(queries["id"])
    assert all(t["predictions"][0]["result"][0]["value"]["choices"][0] in CLASSES for t in tasks)
    assert 'toName="image"' in (flow["project"] / "queries" / "label-studio.xml").read_text()


def test_ledger_holds_exactly_the_imported_answers(flow):
    ledger, answered = flow["ledger_after_import"], flow["queries"].iloc[[0, *range(2, 10)]]
    codes = {"skip": UNLABELED, **{c: i for i, c in enumerate(CLASSES)}}
    assert list(ledger["id"]) == [int(i) for i in answered["id"]]
    assert list(ledger["label"]) == [codes[label] for label in answered["label"]]
    assert set(ledger["round"]) == {1} and set(ledger["strategy"]) == {"label"}


def test_second_round_trains_on_the_imported_labels(flow):
    results = pd.read_parquet(flow["project"] / "results.parquet")
    assert list(results["round"]) == [0, 1]
    assert list(results["n_labeled"]) == [9, 9 + 8], "9 seeds, then 8 class answers (a skip does not train)"
    assert results["accuracy_estimated"].all() and results["accuracy"].notna().all()
    with LabelProject.open(flow["project"]) as project:
        trainable = set(project.trainable())
    assert set(flow["ledger_after_import"]["id"][flow["ledger_after_import"]["label"] >= 0]) <= trainable
    second = project.queries[project.queries["round"] == 2]["id"]
    assert len(second) == 10 and not set(second) & set(project.queries[project.queries["round"] == 1]["id"])
    assert len(project.open_queries()) == 1 + 10, "the blank row of round 1 stays open"


def test_status_and_export(flow, capsys, tmp_path):
    assert cli.main(["label", "status", str(flow["project"])]) == 0
    out = capsys.readouterr().out
    assert "labels: zero" in out and "skipped 1" in out and "open queries: 11" in out
    assert "estimated by 3-fold cross-validation" in out and (flow["project"] / "curves.png").stat().st_size > 5000
    assert cli.main(["label", "export", str(flow["project"]), str(tmp_path / "out")]) == 0
    pool = read_parquet(tmp_path / "out" / "pool")
    truth = {images.stable_id(rel): CLASSES.index(c) for rel, c in flow["truth"].items()}
    assert len(pool) == 9 + 8 and (pool.split == "train").all()
    assert all(truth[i] == y for i, y in zip(pool.ids, pool.y))
    net = ModelRecipe("cnn", (1, 16, 16), 3, 0.3).build()
    net.load_state_dict(torch.load(tmp_path / "out" / "model.pt", weights_only=True))


def label_studio_export(tasks: list[dict], answers: list[str | None]) -> list[dict]:
    """Tasks as Label Studio exports them (JSON): an annotation per answer, None = not annotated, 'skip' =
    the annotator pressed Skip (a cancelled annotation)."""
    exported = []
    for number, (task, answer) in enumerate(zip(tasks, answers), 1):
        annotations = [] if answer is None else [{
            "id": 100 + number, "completed_by": 1, "was_cancelled": answer == "skip", "ground_truth": False,
            "result": [] if answer == "skip" else [{"id": f"r{number}", "from_name": "label", "to_name": "image",
                                                   "type": "choices", "origin": "manual",
                                                   "value": {"choices": [answer]}}],
            "created_at": "2025-01-01T10:00:00.000000Z", "updated_at": "2025-01-01T10:00:00.000000Z",
            "lead_time": 2.5, "task": number, "project": 7}]
        exported.append({"id": number, "data": task["data"], "annotations": annotations, "drafts": [],
                         "predictions": task.get("predictions", []), "meta": {}, "project": 7,
                         "created_at": "2025-01-01T09:00:00.000000Z", "inner_id": number})
    return exported


def test_label_studio_export_imports(flow, tmp_path):
    project = tmp_path / "project"
    shutil.copytree(flow["project"], project)
    tasks = json.loads((project / "queries" / "round-002.json").read_text())
    truth = [true_label(flow["truth"], flow["base"] / "digits", t["data"]["source"]) for t in tasks]
    answers = ["skip", None, *truth[2:]]
    (tmp_path / "export.json").write_text(json.dumps(label_studio_export(tasks, answers)))
    assert cli.main(["label", "import", str(project), str(tmp_path / "export.json")]) == 0
    ledger = pd.read_parquet(project / "ledger.parquet")
    new = ledger[ledger["round"] == 2]
    assert list(new["id"]) == [int(t["data"]["autoal_id"]) for t in tasks[:1] + tasks[2:]]
    assert list(new["label"]) == [UNLABELED, *(CLASSES.index(c) for c in truth[2:])]
    with LabelProject.open(project) as opened:
        assert len(opened.open_queries()) == 2


BAD_ANSWERS = {
    "unknown id": (lambda q: "id,label\n123,zero\n", "ids that were never queried"),
    "label outside the classes": (lambda q: f"id,label\n{q[0]},seven\n", "label 'seven'"),
    "missing column": (lambda q: f"id,predicted\n{q[0]},zero\n", "lacks the column label"),
    "empty file": (lambda q: "", "is empty"),
    "duplicate answer": (lambda q: f"id,label\n{q[0]},zero\n{q[0]},one\n", "more than once"),
    "Label Studio task not from autoal": (lambda q: json.dumps([{"id": 1, "data": {"image": "x.png"}}]),
                                          "has no data.autoal_id"),
}


@pytest.mark.parametrize("case", list(BAD_ANSWERS))
def test_bad_answers_leave_the_project_untouched(flow, capsys, tmp_path, case):
    make, message = BAD_ANSWERS[case]
    round2 = pd.read_csv(flow["project"] / "queries" / "round-002.csv")["id"].tolist()
    path = tmp_path / ("answers.json" if "Studio" in case else "answers.csv")
    path.write_text(make(round2))
    before = fingerprint(flow["project"])
    fails(capsys, ["label", "import", str(flow["project"]), str(path)], message)
    assert fingerprint(flow["project"]) == before


def test_importing_an_answered_round_again_is_refused(flow, capsys):
    before = fingerprint(flow["project"])
    fails(capsys, ["label", "import", str(flow["project"]), str(flow["filled"])], "already imported")
    assert fingerprint(flow["project"]) == before


def test_undecodable_image(capsys, tmp_path):
    write_digit_folder(tmp_path / "digits", n=12, seeds_per_class=1)
    (tmp_path / "digits" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n but not really")
    fails(capsys, ["label", "init", str(tmp_path / "p"), "--pool", f"images:{tmp_path / 'digits'}",
                   "--classes", "zero,one,two"], "broken.png")
    assert not (tmp_path / "p").exists()
    (tmp_path / "digits" / "broken.png").unlink()
    assert cli.main(["label", "init", str(tmp_path / "p"), "--pool", f"images:{tmp_path / 'digits'}",
                     "--classes", "zero,one,two"]) == 0
    (tmp_path / "digits" / "later.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    before = fingerprint(tmp_path / "p")
    fails(capsys, ["label", "next", str(tmp_path / "p")], "later.jpg")
    assert fingerprint(tmp_path / "p") == before


@pytest.mark.parametrize("argv,message", [
    (["--classes", "zero"], "at least 2 distinct"),
    (["--classes", "zero,one,skip"], "skip and ood are answers"),
    (["--classes", "zero,two"], "'one' is not one of the classes"),
    (["--strategy", "albl"], "learns from the oracle's answer"),
    (["--strategy", "psychic"], "unknown strategy"),
])
def test_bad_init_arguments(capsys, tmp_path, argv, message):
    write_digit_folder(tmp_path / "digits", n=12, seeds_per_class=1)
    fails(capsys, ["label", "init", str(tmp_path / "p"), "--pool", f"images:{tmp_path / 'digits'}",
                   "--classes", "zero,one,two", *argv], message)
    assert not (tmp_path / "p").exists()


KILLED_IMPORT = """
import os, sys, time
real = os.replace
def stalls(src, dst):
    if str(dst).endswith("ledger.parquet"):
        print("writing the ledger", flush=True)
        time.sleep(600)
    real(src, dst)
os.replace = stalls
from autoal import cli
sys.exit(cli.main(["label", "import", sys.argv[1], sys.argv[2]]))
"""


def test_kill_during_import_leaves_the_ledger_and_a_rerun_succeeds(flow, tmp_path):
    project = tmp_path / "project"
    shutil.copytree(flow["project"], project)
    queries = pd.read_csv(project / "queries" / "round-002.csv", dtype=str, keep_default_na=False)
    queries["label"] = [true_label(flow["truth"], flow["base"] / "digits", s) for s in queries["source"]]
    queries.to_csv(tmp_path / "filled.csv", index=False)
    before = {k: v for k, v in fingerprint(project).items() if not k.startswith(".")}
    child = subprocess.Popen([sys.executable, "-c", KILLED_IMPORT, str(project), str(tmp_path / "filled.csv")],
                             stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(
                                 sys.path)})
    assert child.stdout.readline().strip() == "writing the ledger"
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    debris = [p for p in project.iterdir() if p.name.startswith(".ledger.parquet.")]
    assert debris, "killed after the new ledger was written, before it replaced the old one"
    assert {k: v for k, v in fingerprint(project).items() if not k.startswith(".")} == before
    assert cli.main(["label", "import", str(project), str(tmp_path / "filled.csv")]) == 0
    ledger = pd.read_parquet(project / "ledger.parquet")
    assert list(ledger["id"][ledger["round"] == 2]) == [int(i) for i in queries["id"]]
    assert not any(p.name.startswith(".") and p.name != LOCK_FILE for p in project.iterdir())


def test_crash_during_next_rolls_back_and_the_rerun_asks_the_same(flow, monkeypatch, tmp_path):
    project = tmp_path / "project"
    shutil.copytree(flow["before_second"], project)
    before = fingerprint(project)
    real = store.ExperimentDir.append_rows

    def dies_at_commit(self, table, rows):
        if table == "queries":
            raise KeyboardInterrupt
        real(self, table, rows)

    monkeypatch.setattr(store.ExperimentDir, "append_rows", dies_at_commit)
    assert cli.main(["label", "next", str(project)]) == 130
    assert (project / "queries" / "round-002.csv").exists(), "the crash came after the batch's files"
    monkeypatch.undo()
    LabelProject.open(project).close()
    assert fingerprint(project) == before
    assert cli.main(["label", "next", str(project)]) == 0
    asked = pd.read_parquet(project / "queries.parquet")
    assert asked.equals(pd.read_parquet(flow["project"] / "queries.parquet"))


def test_parquet_pool_with_unknown_labels_and_a_test_split(ray_local, capsys, tmp_path):
    """Null y round-trips through Parquet; with a labeled test split, accuracy is measured, not estimated."""
    x, y = load_digits(return_X_y=True)
    keep = y < 3
    x, y = x[keep].reshape(-1, 1, 8, 8) / 16, y[keep]
    y_train = y[:200].copy()
    y_train[12:] = UNLABELED
    pool = from_arrays("digits3", x[:200], y_train, x[200:300], y[200:300], classes=3)
    write_parquet(pool, tmp_path / "pool")
    assert pq.read_table(tmp_path / "pool").column("y").null_count == 188
    assert np.array_equal(read_parquet(tmp_path / "pool").y, pool.y)
    fails(capsys, ["run", "--dataset", f"parquet:{tmp_path / 'pool'}", "--out", str(tmp_path / "run")],
          "188 samples without a label")
    (tmp_path / "config.yaml").write_text(CONFIG)
    assert cli.main(["label", "init", str(tmp_path / "p"), "--pool", f"parquet:{tmp_path / 'pool'}",
                     "--classes", "a,b,c", "--config", str(tmp_path / "config.yaml")]) == 0
    assert cli.main(["label", "next", str(tmp_path / "p"), "--batch", "4", "--strategy", "margin"]) == 0
    results = pd.read_parquet(tmp_path / "p" / "results.parquet")
    assert not results["accuracy_estimated"].any() and 0 <= results["accuracy"].iloc[0] <= 1
    queries = pd.read_csv(tmp_path / "p" / "queries" / "round-001.csv", keep_default_na=False)
    assert len(queries) == 4 and (queries["source"] == "").all()
    assert set(queries["id"]) <= set(range(12, 200)), "only unlabeled samples are asked"
    assert (tmp_path / "p" / "queries" / "round-001.html").read_text().count("<img") == 4


def test_class_folders_alone_are_a_labeled_dataset(tmp_path):
    truth = write_digit_folder(tmp_path / "digits", n=12, seeds_per_class=4)
    pool = datasets.load(f"images:{tmp_path / 'digits'}@8", "unused")
    assert pool.classes == 3 and pool.shape == (1, 8, 8) and len(pool) == len(truth)
    expected = {images.stable_id(rel): sorted(CLASSES).index(c) if "/" in rel else UNLABELED  # folders, sorted
                for rel, c in truth.items()}
    assert [expected[i] for i in pool.ids] == list(pool.y) and set(pool.y) == {UNLABELED, 0, 1, 2}


def test_label_next_in_the_driver_starts_no_ray(monkeypatch, tmp_path):
    """Training and scoring in the driver (workers 0, actors 0) need no Ray: `label next` answers
    without its start-up (5-30 s on a loaded 2-core machine)."""
    from autoal.compute import runtime

    write_digit_folder(tmp_path / "digits", n=30)
    (tmp_path / "config.yaml").write_text(CONFIG)
    assert cli.main(["label", "init", str(tmp_path / "p"), "--pool", f"images:{tmp_path / 'digits'}@8",
                     "--classes", ",".join(CLASSES), "--config", str(tmp_path / "config.yaml")]) == 0

    def no_ray():
        raise AssertionError("label next started Ray")

    monkeypatch.setattr(runtime, "init_ray", no_ray)
    assert cli.main(["label", "next", str(tmp_path / "p"), "--batch", "4"]) == 0
    results = pd.read_parquet(tmp_path / "p" / "results.parquet")
    assert len(results) == 1 and results["n_labeled"].iloc[0] == 9   # three seeds a class, a model fitted
    assert len(pd.read_csv(tmp_path / "p" / "queries" / "round-001.csv")) == 4
