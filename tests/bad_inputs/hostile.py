"""The hostile cases (issue 20): code planted in files, symlinks planted where autoal writes or
reads, unbounded inputs, values of odd types and sizes, and silent surprises."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import yaml

from .cases import config, pool, run, sweep_plan
from .harness import SMALL, Case, copy_label, copy_run, planted_pickle

BOMB = "".join(f"{c}: &{c} [{', '.join([f'*{p}'] * 9) if p else ', '.join(['x'] * 9)}]\n"
               for p, c in zip([None, *"abcdefg"], "abcdefgh")) + "dataset: [" + ", ".join(["*h"] * 9) + "]\n"
DEEP = "dataset: " + "[" * 5000 + "]" * 5000 + "\n"
PYTHON_TAG = "dataset: !!python/object/apply:os.system ['touch PWNED']\n"


def victim(d: Path) -> Path:
    """A file outside every directory autoal is given: a planted link points at it."""
    (d / "victim.txt").write_text("precious\n")
    return d / "victim.txt"


def out_with(d: Path, name: str, make) -> list[str]:
    """An --out holding only `name`, made by make(path)."""
    (d / "out").mkdir()
    make(d / "out" / name)
    return run(d)


def run_with(d: Path, name: str, make) -> list[str]:
    """A copy of the finished template run whose file `name` is replaced by make(path)."""
    out = copy_run(d)
    (out / name).unlink()
    make(out / name)
    return ["run", *SMALL, "--out", str(out)]


def link(target: Path):
    return lambda path: path.symlink_to(target)


def images(d: Path, *extra) -> list[str]:
    """An image folder of 4 PNGs plus `extra` (name, make(path)) entries; `label init` on it."""
    from PIL import Image

    folder = d / "photos"
    folder.mkdir()
    for i in range(4):
        Image.new("L", (8, 8), color=40 * i).save(folder / f"img{i}.png")
    for name, make in extra:
        make(folder / name)
    return ["label", "init", str(d / "lab"), "--pool", f"images:{folder}", "--classes", "cat,dog"]


def outside_png(d: Path) -> Path:
    from PIL import Image

    (d / "elsewhere").mkdir(exist_ok=True)
    Image.new("L", (8, 8)).save(d / "elsewhere" / "secret.png")
    return d / "elsewhere" / "secret.png"


def parquet_with(d: Path, name: str, make) -> list[str]:
    argv = pool(d)
    make(d / "pool" / name)
    return argv


def answers(d: Path, text: str | bytes, suffix: str = ".csv") -> list[str]:
    project = copy_label(d)
    path = d / f"answers{suffix}"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return ["label", "import", str(project), str(path)]


def first_ids(d: Path) -> list[str]:
    import pandas as pd

    from .harness import TEMPLATE

    return [str(i) for i in pd.read_csv(TEMPLATE["label"] / "queries" / "round-001.csv")["id"]]


def studio(d: Path, task_changes: dict) -> list[str]:
    tasks = [{"data": {"autoal_id": first_ids(d)[0]}, **task_changes}]
    return answers(d, json.dumps(tasks), ".json")


def csv_answer(d: Path, ident: str, label: str = "cat") -> list[str]:
    return answers(d, f"id,label\n{ident},{label}\n")


def fifo(path: Path) -> None:
    os.mkfifo(path)


def project_with(d: Path, name: str, text: str) -> list[str]:
    project = copy_label(d)
    (project / name).unlink()
    (project / name).write_text(text)
    return ["label", "status", str(project)]


def user_files(d: Path) -> list[str]:
    """A project holding a user's own files, named like autoal's: `status` must leave them all."""
    project = copy_label(d)
    for name in (".gitignore", "notes/round-2.csv", ".~lock.queries.ods#", "queries/round-009.csv",
                 "queries/.round-001.csv.draft", "state/round7.pt", "mine.parquet"):
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        (project / name).write_text("mine\n")
    return ["label", "status", str(project)]


def plan_text(d: Path, text: str) -> list[str]:
    (d / "plan.yaml").write_text(text)
    return ["sweep", str(d / "plan.yaml"), "--out", str(d / "out")]


def uint_ids(n: int = 60):
    return pa.array(np.arange(n, dtype=np.uint64) + np.uint64(2**63), pa.uint64())


CAT = [{"result": [{"type": "choices", "value": {"choices": ["cat"]}}]}]   # a Label Studio answer
PLAN = "base: {dataset: digits, initial: 10, batch: 5, rounds: 1}\naxes: {seed: [0]}\n"
L = dict(needs_label=True)
T = dict(needs_template=True)

HOSTILE = [
    # code execution from planted files (pickles elsewhere: cases.py)
    Case("config: python tag", lambda d: config(d, PYTHON_TAG), "not valid YAML"),
    Case("--set: python tag", lambda d: run(d, "--set", "batch=!!python/object/apply:os.system [true]"),
         "the value is not YAML"),
    Case("sweep plan: python tag", lambda d: plan_text(d, PLAN + "name: !!python/name:os.system\n"), "not valid YAML"),
    Case("run dir: config.yaml with a python tag", lambda d: run_with(
        d, "config.yaml", lambda p: p.write_text(PYTHON_TAG)), "is not a valid autoal config", **T),
    Case("label: project.yaml with a python tag", lambda d: project_with(d, "project.yaml", PYTHON_TAG),
         "is damaged", **L),
    Case("label: config.yaml damaged", lambda d: project_with(d, "config.yaml", "{"), "not a valid", **L),
    # writing through a planted symlink
    Case("lock: symlink to a file outside", lambda d: out_with(d, ".autoal.runs.lock", link(victim(d))),
         "is a symbolic link"),
    Case("lock: dangling symlink", lambda d: out_with(d, ".autoal.runs.lock", link(d / "nowhere")), "is a symbolic link"),
    Case("lock: symlink to /dev/null", lambda d: out_with(d, ".autoal.runs.lock", link(Path("/dev/null"))),
         "is a symbolic link"),
    Case("lock: a FIFO", lambda d: out_with(d, ".autoal.runs.lock", fifo), "not a regular file"),
    Case("lock: a directory", lambda d: out_with(d, ".autoal.runs.lock", Path.mkdir), ".autoal.runs.lock"),
    Case("run dir: lock symlink", lambda d: run_with(d, ".autoal.runs.lock", link(victim(d))), "is a symbolic link", **T),
    Case("run dir: results symlink", lambda d: run_with(d, "results.parquet", link(victim(d))),
         "is a symbolic link", **T),
    Case("run dir: ledger symlink", lambda d: run_with(d, "ledger.parquet", link(victim(d))), "is a symbolic link",
         **T),
    Case("run dir: config symlink", lambda d: run_with(d, "config.yaml", link(victim(d))), "symbolic link", **T),
    Case("run dir: results a FIFO", lambda d: run_with(d, "results.parquet", fifo), "not a regular file", **T),
    Case("run dir: ledger a directory", lambda d: run_with(d, "ledger.parquet", Path.mkdir), "a directory", **T),
    Case("label: lock symlink", lambda d: _label_link(d, ".autoal.runs.lock"),
         "is a symbolic link", **L),
    Case("label: queries.parquet symlink", lambda d: _label_link(d, "queries.parquet"), "is a symbolic link", **L),
    Case("label: project.yaml symlink", lambda d: _label_link(d, "project.yaml"), "is a symbolic link", **L),
    Case("label: config.yaml symlink", lambda d: _label_link(d, "config.yaml"), "symbolic link", **L),
    Case("label: journal symlink", lambda d: _label_link(d, ".autoal-journal"), "is a symbolic link", **L),
    # opening never deletes
    Case("label status keeps a user's files", user_files, "rounds", exit=0, **L),
    Case("label import refused keeps a user's files", lambda d: [
        "label", "import", user_files(d)[2], str(_file(d, "a.csv", "id,label\n12345,cat\n"))], "never queried", **L),
    Case("label export refused keeps a user's files", lambda d: [
        "label", "export", user_files(d)[2], str(_file(d, "taken/x.txt", "mine").parent)], "exists and is not empty",
         **L),
    Case("label: journal naming a path outside", lambda d: _journal(
        d, '{"commit_round": 9}\n{"path": "../victim.txt", "kind": "new"}\n'), "outside", **L),
    # reading outside the folder: images:<dir> and parquet:<dir> follow links only to files inside
    Case("images: link to a file outside", lambda d: images(d, ("x.png", link(outside_png(d)))), "outside the folder"),
    Case("images: link to a folder outside", lambda d: images(d, ("more", link(outside_png(d).parent))),
         "a directory"),
    Case("images: link to a folder inside", lambda d: images(d, ("again", link(d / "photos"))), "a directory"),
    Case("images: broken link", lambda d: images(d, ("gone.png", link(d / "gone.png"))), "broken or looping"),
    Case("images: looping link", lambda d: images(d, ("loop.png", link(d / "photos" / "loop.png"))),
         "broken or looping"),
    Case("images: class folder linked outside", lambda d: images(d, ("cat", link(outside_png(d).parent))),
         "a directory"),
    Case("images: link to /etc/passwd", lambda d: images(d, ("passwd.png", link(Path("/etc/passwd")))),
         "outside the folder"),
    Case("parquet: link to a file outside", lambda d: parquet_with(d, "more.parquet", link(victim(d))),
         "outside the folder"),
    Case("parquet: link loop", lambda d: parquet_with(d, "a.parquet", lambda p: (
        p.symlink_to(p.with_name("b.parquet")), p.with_name("b.parquet").symlink_to(p))), "broken or looping"),
    Case("parquet: link to a folder", lambda d: parquet_with(d, "sub", link(d)), "a directory"),
    Case("parquet: broken link", lambda d: parquet_with(d, "gone.parquet", link(d / "gone")), "broken or looping"),
    # unbounded inputs
    Case("config: alias bomb", lambda d: config(d, BOMB), "alias bomb"),
    Case("config: alias bomb in a section", lambda d: config(d, BOMB.replace("dataset:", "options:")), "alias bomb"),
    Case("config: merge-key bomb", lambda d: config(d, "b0: &b0 {x: 1, y: 2}\n" + "".join(
        f"b{i}: &b{i} {{<<: *b{i - 1}, k{i}: [{', '.join([f'*b{i - 1}'] * 9)}]}}\n"
        for i in range(1, 12)) + "dataset: [" + ", ".join(["*b11"] * 9) + "]\n"), "alias bomb"),
    Case("config: nesting 5000 deep", lambda d: config(d, DEEP), "nesting deeper"),
    Case("config: nesting 100 deep", lambda d: config(d, "dataset: " + "[" * 100 + "]" * 100 + "\n"),
         "nesting deeper"),
    Case("config: 2 MB file", lambda d: config(d, "# " + "x" * (2 << 20) + "\n"), "more than the"),
    Case("config: /dev/zero", lambda d: ["run", "/dev/zero"], "not a regular file"),
    Case("config: /dev/urandom", lambda d: ["run", "/dev/urandom"], "not a regular file"),
    Case("config: a FIFO", lambda d: (fifo(d / "c.yaml"), ["run", str(d / "c.yaml")])[1], "not a regular file"),
    Case("config: 5 MB string value", lambda d: config(d, "dataset: " + "x" * (900 << 10) + "\n"),
         "unknown data source"),
    Case("config: 900 kB key", lambda d: config(d, "k" * (900 << 10) + ": 1\n"), "not valid YAML"),
    Case("config: 900 kB key in a block", lambda d: config(d, "? " + "k" * (900 << 10) + "\n: 1\n"), "unknown key"),
    Case("--set: alias bomb", lambda d: run(d, "--set", "options=" + "{" + BOMB.replace("\n", ", ")[:-2] + "}"),
         "alias"),
    Case("--set: 1 MB value", lambda d: run(d, "--set", "dataset=" + "y" * (1 << 20)), "unknown data source"),
    Case("sweep plan: alias bomb", lambda d: plan_text(d, PLAN + BOMB.replace("dataset", "zzz")), "alias bomb"),
    Case("sweep plan: /dev/zero", lambda d: ["sweep", "/dev/zero"], "not a regular file"),
    Case("sweep plan: a FIFO", lambda d: (fifo(d / "s.yaml"), ["sweep", str(d / "s.yaml")])[1], "not a regular"),
    Case("sweep plan: 2 MB", lambda d: plan_text(d, PLAN + "# " + "x" * (2 << 20) + "\n"), "more than the"),
    Case("answers: a FIFO", lambda d: _answers_at(d, fifo), "not a regular file", **L),
    Case("answers: /dev/zero", lambda d: ["label", "import", str(copy_label(d)), "/dev/zero"], "not a regular",
         **L),
    Case("answers: a directory", lambda d: _answers_at(d, Path.mkdir), "a directory", **L),
    Case("answers: 5 MB label", lambda d: csv_answer(d, first_ids(d)[0], "z" * (5 << 20)), "is not one of", **L),
    Case("answers: 5 MB id", lambda d: csv_answer(d, "7" * (5 << 20)), "is not a sample id", **L),
    Case("answers: binary", lambda d: answers(d, bytes(range(256)) * 8), "not a UTF-8", **L),
    Case("--classes: 1 MB", lambda d: images(d)[:-1] + ["x" * (1 << 20)], "--classes", exit=2),
    # odd types and sizes
    Case("config: seed 2**70", lambda d: config(d, f"seeds: [{2**70}]\n"), "fit in 64 bits"),
    Case("--seeds 10**25", lambda d: run(d, "--seeds", str(10**25)), "fit in 64 bits"),
    Case("config: batch 2**64", lambda d: config(d, f"batch: {2**64}\n"), "fit in 64 bits"),
    Case("config: rounds -2**70", lambda d: config(d, f"rounds: {-2**70}\n"), "fit in 64 bits"),
    Case("config: initial 1e300", lambda d: config(d, "initial: 1.0e+300\n"), "fit in 64 bits"),
    Case("config: epochs a mapping", lambda d: config(d, "epochs: {a: 1}\n"), "epochs must be an integer"),
    Case("config: seeds a mapping", lambda d: config(d, "seeds: {a: 1}\n"), "seeds must be an integer"),
    Case("config: lr a date", lambda d: config(d, "lr: 2024-01-01\n"), "lr must be a number"),
    Case("config: dataset binary", lambda d: config(d, "dataset: !!binary aGVsbG8=\n"), "dataset must be a string"),
    Case("pool: ids uint64 above 2**63", lambda d: pool(d, {"id": uint_ids()}), "do not fit in int64"),
    Case("pool: ids whole floats 1e20", lambda d: pool(d, {"id": np.arange(60) * 1e20}), "do not fit in int64"),
    Case("pool: labels whole floats 1e30", lambda d: pool(d, {"y": np.r_[1e30, np.arange(59) % 3]}),
         "do not fit in int64"),
    Case("pool: name metadata 1 MB", lambda d: pool(d, {"y": np.r_[-4, np.arange(59) % 3]},
                                                   {"name": "n" * (1 << 20)}), "labels outside"),
    Case("answers: id of 25 digits", lambda d: csv_answer(d, "1" * 25), "is not a sample id", **L),
    Case("answers: id in Arabic-Indic digits", lambda d: csv_answer(d, "\u0663\u0664"), "is not a sample id", **L),
    Case("answers: id in full-width digits", lambda d: csv_answer(d, "\uff11\uff12"), "is not a sample id", **L),
    Case("answers: negative id", lambda d: csv_answer(d, "-5"), "is not a sample id", **L),
    Case("answers: id 1e3", lambda d: csv_answer(d, "1e3"), "is not a sample id", **L),
    Case("answers: id never asked", lambda d: csv_answer(d, "12345"), "never queried", **L),
    Case("Label Studio: annotations a string", lambda d: studio(d, {"annotations": "cat"}), "not in Label Studio", **L),
    Case("Label Studio: annotations a dict", lambda d: studio(d, {"annotations": {"result": []}}),
         "not in Label Studio", **L),
    Case("Label Studio: result a dict", lambda d: studio(d, {"annotations": [{"result": {"type": "choices"}}]}),
         "not in Label Studio", **L),
    Case("Label Studio: result items strings", lambda d: studio(d, {"annotations": [{"result": ["cat"]}]}),
         "not in Label Studio", **L),
    Case("Label Studio: choices a string", lambda d: studio(d, {"annotations": [{"result": [
        {"type": "choices", "value": {"choices": "cat"}}]}]}), "not in Label Studio", **L),
    Case("Label Studio: tasks a mapping", lambda d: answers(d, '{"data": {}}', ".json"), "list of tasks", **L),
    Case("Label Studio: autoal_id a list", lambda d: answers(d, json.dumps([{"data": {"autoal_id": [1]},
                                                                         "annotations": CAT}]), ".json"),
         "is not a sample id", **L),
    Case("Label Studio: 1 MB choice", lambda d: studio(d, {"annotations": [{"result": [
        {"type": "choices", "value": {"choices": ["q" * (1 << 20)]}}]}]}), "is not one of", **L),
    # silent surprises
    Case("config: duplicate key", lambda d: config(d, "batch: 5\nbatch: 6\n"), "duplicate key 'batch'"),
    Case("config: duplicate nested key", lambda d: config(d, "search:\n  lam: 1\n  lam: 2\n"), "duplicate key 'lam'"),
    Case("config: duplicate option", lambda d: config(d, "options:\n  badge: {}\n  badge: {}\n"), "duplicate key"),
    Case("sweep plan: duplicate key", lambda d: plan_text(d, PLAN + "axes: {seed: [1]}\n"), "duplicate key 'axes'"),
    Case("--set: duplicate key in a value", lambda d: run(d, "--set", "search={lam: 1, lam: 2}"), "duplicate key"),
    Case("a flag without its value", lambda d: ["run", *SMALL, "--batch"], "expected one argument"),
    Case("an unknown flag", lambda d: ["run", *SMALL, "--bacth", "5"], "unrecognized arguments"),
    Case("an unknown command", lambda d: ["frobnicate"], "invalid choice"),
    Case("label without a command", lambda d: ["label"], "required"),
    Case("a bad flag type", lambda d: ["run", *SMALL, "--batch", "many"], "invalid int value"),
    Case("--set .batch=5", lambda d: run(d, "--set", ".batch=5"), "is not a config key"),
    Case("--set batch.=5", lambda d: run(d, "--set", "batch.=5"), "is not a config key"),
    Case("--set search..lam=1", lambda d: run(d, "--set", "search..lam=1"), "is not a config key"),
    Case("--set =5", lambda d: run(d, "--set", "=5"), "--set takes KEY=VALUE"),
    Case("--strategy twice, one repeated", lambda d: run(d, "--strategy", "margin", "--strategy", "margin"),
         "listed twice"),
    Case("pool: empty directory", lambda d: ((d / "pool").mkdir(), run(d, "--dataset", f"parquet:{d / 'pool'}"))[1],
         "is an empty directory"),
    Case("pool: only hidden files", lambda d: ((d / "pool").mkdir(), (d / "pool" / ".keep").write_text(""),
                                              run(d, "--dataset", f"parquet:{d / 'pool'}"))[2], "empty directory"),
    Case("sweep plan: json with a huge name", lambda d: sweep_plan(d, {"name": "n" * 5000, **yaml.safe_load(PLAN)}),
         "name must be 1 to 100"),
    Case("sweep plan: a name in other scripts", lambda d: plan_text(d, PLAN + "name: r\u00e9sum\u00e9\n"),
         "name must be 1 to 100"),
]


def _label_link(d: Path, name: str) -> list[str]:
    project = copy_label(d)
    if os.path.lexists(project / name):
        (project / name).unlink()
    (project / name).symlink_to(victim(d))
    return ["label", "status", str(project)]


def _journal(d: Path, text: str) -> list[str]:
    project = copy_label(d)
    victim(d)
    (project / ".autoal-journal").write_text(text)
    return ["label", "status", str(project)]


def _answers_at(d: Path, make) -> list[str]:
    project = copy_label(d)
    make(d / "answers.csv")
    return ["label", "import", str(project), str(d / "answers.csv")]


def _file(d: Path, name: str, text: str) -> Path:
    (d / name).parent.mkdir(parents=True, exist_ok=True)
    (d / name).write_text(text)
    return d / name
