"""The first 80 cases (issue 12): flags, config files, pools, dataset files, output
directories, resources, report, prepare and sweep."""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .harness import HELD, SMALL, Case, copy_run, planted_pickle, read_only


def config(d: Path, text: str | bytes) -> list[str]:
    path = d / "bad.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return ["run", str(path), "--out", str(d / "out")]


def run(d: Path, *flags: str, out: Path | None = None) -> list[str]:
    return ["run", *SMALL, *flags, "--out", str(out or d / "out")]


def pool(d: Path, columns: dict | None = None, metadata: dict | None = None, n: int = 60, x=None, **drop) -> list[str]:
    """A Parquet pool of n rows of 4 features, 3 classes, 10 test rows; `columns` replace the defaults."""
    rng = np.random.default_rng(0)
    data = {"id": np.arange(n, dtype=np.int64),
            "x": pa.array(list(rng.random((n, 4)).astype(np.float32)) if x is None else x,
                          type=pa.list_(pa.float32())),
            "y": np.arange(n, dtype=np.int64) % 3, "split": ["train"] * (n - 10) + ["test"] * 10}
    data.update(columns or {})
    for key in drop:
        data.pop(key)
    table = pa.table(data)
    if metadata:
        table = table.replace_schema_metadata({k.encode(): v.encode() for k, v in metadata.items()})
    (d / "pool").mkdir()
    pq.write_table(table, d / "pool" / "part-00000.parquet")
    return run(d, "--dataset", f"parquet:{d / 'pool'}")


def cifar(d: Path, payload: bytes) -> list[str]:
    """A CIFAR-10 tree whose first training batch is `payload`; the others are valid."""
    folder = d / "data" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    batch = {"data": np.zeros((4, 3072), np.uint8), "labels": [0, 1, 2, 3]}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / name).write_bytes(pickle.dumps(batch))
    (folder / "data_batch_1").write_bytes(payload)
    return run(d, "--dataset", "cifar10", "--data-root", str(d / "data"))


def interrupted(d: Path) -> Path:
    """A copy of the template with its last round's results row removed, as after a kill."""
    import pandas as pd

    out = copy_run(d)
    results = pd.read_parquet(out / "results.parquet")
    results.iloc[:-1].to_parquet(out / "results.parquet", index=False)
    return out


def planted_checkpoint(d: Path) -> list[str]:
    out = interrupted(d)
    state = out / "state" / "entropy" / "seed0" / "round1.pt"
    state.parent.mkdir(parents=True)
    state.write_bytes(planted_pickle(d))
    return ["run", *SMALL, "--out", str(out)]


def locked(d: Path) -> list[str]:
    from autoal.runs.lock import DirLock

    out = copy_run(d)
    HELD.append(DirLock(out).acquire())   # held by this process on another descriptor: flock refuses
    return ["run", *SMALL, "--out", str(out)]



def sweep_plan(d: Path, plan: dict) -> list[str]:
    path = d / "plan.yaml"
    path.write_text(json.dumps(plan))
    return ["sweep", str(path), "--out", str(d / "out")]


def medmnist_npz(d: Path, payload: bytes) -> list[str]:
    (d / "data").mkdir()
    (d / "data" / "organcmnist.npz").write_bytes(payload)
    return run(d, "--dataset", "medmnist:organcmnist", "--data-root", str(d / "data"))


def file_at(d: Path, name: str = "afile") -> Path:
    (d / name).write_text("not a directory")
    return d / name


def read_only_out(d: Path) -> list[str]:
    (d / "ro").mkdir()
    return run(d, out=read_only(d / "ro") / "out")


def foreign_out(d: Path) -> list[str]:
    (d / "out").mkdir()
    file_at(d / "out", "notes.txt")
    return run(d)


def damaged_ledger(d: Path) -> list[str]:
    out = copy_run(d)
    (out / "ledger.parquet").write_bytes(b"junk")
    return ["run", *SMALL, "--out", str(out)]


def not_parquet(d: Path) -> list[str]:
    file_at(d, "pool")
    return run(d, "--dataset", f"parquet:{d / 'pool'}")


def report_unfinished(d: Path) -> list[str]:
    (copy_run(d) / "results.parquet").unlink()
    return ["report", str(d / "run")]


BASE_PLAN = {"base": {"dataset": "digits", "initial": 10, "batch": 5, "rounds": 1}, "axes": {"seed": [0]}}

CASES = [
    # flags
    Case("unknown dataset", lambda d: run(d, "--dataset", "imagenet"), "unknown data source 'imagenet'"),
    Case("unknown strategy", lambda d: run(d, "--strategy", "psychic"), "unknown strategy 'psychic'"),
    Case("unknown model", lambda d: run(d, "--model", "vgg"), "unknown model 'vgg'"),
    Case("budget beyond the pool", lambda d: run(d, "--rounds", "400"), "exceeds the pool"),
    Case("batch 0", lambda d: run(d, "--batch", "0"), "batch must be positive"),
    Case("initial 0", lambda d: run(d, "--initial", "0"), "initial must be positive"),
    Case("epochs 0", lambda d: run(d, "--epochs", "0"), "epochs must be positive"),
    Case("rounds -1", lambda d: run(d, "--rounds", "-1"), "rounds must be >= 0"),
    Case("seeds -1", lambda d: run(d, "--seeds", "-1"), "seeds must be >= 0"),
    Case("duplicate seeds", lambda d: run(d, "--seeds", "1", "1"), "a seed is listed twice"),
    Case("strategy listed twice", lambda d: run(d, "--strategy", "entropy", "entropy"), "listed twice"),
    Case("min-steps -1", lambda d: run(d, "--min-steps", "-1"), "min_steps must be >= 0"),
    Case("workers -1", lambda d: run(d, "--workers", "-1"), "workers must be >= 0"),
    Case("gpus -1", lambda d: run(d, "--gpus", "-1"), "gpus must be >= 0"),
    # config files
    Case("config: invalid YAML", lambda d: config(d, "dataset: [digits\n"), "not valid YAML"),
    Case("config: unknown key", lambda d: config(d, "batchsize: 5\n"), "unknown key batchsize"),
    Case("config: text for a number", lambda d: config(d, "batch: ten\n"), "batch must be an integer"),
    Case("config: a list", lambda d: config(d, "- a\n- b\n"), "must be a YAML mapping"),
    Case("config: nested text for a number", lambda d: config(d, "search:\n  lam: high\n"),
         "search.lam must be a number"),
    Case("config: rounds .nan", lambda d: config(d, "rounds: .nan\n"), "rounds must be finite"),
    Case("config: rounds .inf", lambda d: config(d, "rounds: .inf\n"), "rounds must be finite"),
    Case("config: lr .nan", lambda d: config(d, "lr: .nan\n"), "lr must be finite"),
    Case("config: fractional batch", lambda d: config(d, "batch: 2.5\n"), "batch must be an integer"),
    Case("config: binary file", lambda d: config(d, bytes(range(256)) * 4), "not a UTF-8 text file"),
    Case("config: Latin-1 file", lambda d: config(d, "dataset: d\xefgits\n".encode("latin-1")), "not a UTF-8"),
    Case("config: missing file", lambda d: ["run", str(d / "absent.yaml")], "cannot read config"),
    Case("config: a directory", lambda d: ["run", str(d)], "cannot read config"),
    Case("config: dropout 1.5", lambda d: config(d, "dropout: 1.5\n"), "dropout must be in [0, 1)"),
    Case("config: mc_samples 1", lambda d: config(d, "mc_samples: 1\n"), "mc_samples must be >= 2"),
    Case("config: no strategies", lambda d: config(d, "strategies: []\n"), "strategies must not be empty"),
    Case("config: no seeds", lambda d: config(d, "seeds: []\n"), "seeds must not be empty"),
    Case("config: initial_method", lambda d: config(d, "initial_method: best\n"), "initial_method must be"),
    Case("config: search.threshold", lambda d: config(d, "search:\n  threshold: otsu\n"), "search.threshold"),
    Case("config: actors many", lambda d: config(d, "actors: many\n"), "scoring_tasks must be an integer or auto"),
    Case("config: ood class not in the pool", lambda d: config(d, "ood_classes: [42]\n"), "ood_classes [42]"),
    # pools
    Case("pool: NaN features", lambda d: pool(d, x=[[np.nan, 0, 0, 0]] + [[0.5] * 4] * 59), "NaN"),
    Case("pool: label out of range", lambda d: pool(d, {"y": np.r_[-4, np.arange(59) % 3]}), "labels outside"),
    Case("pool: text labels", lambda d: pool(d, {"y": ["cat", "dog", "owl"] * 20}), "y is string"),
    Case("pool: text ids", lambda d: pool(d, {"id": [f"s{i}" for i in range(60)]}), "id is string"),
    Case("pool: classes metadata 'ten'", lambda d: pool(d, metadata={"classes": "ten"}), "metadata classes"),
    Case("pool: shape metadata '1x8x8'", lambda d: pool(d, metadata={"shape": "1x8x8"}), "metadata shape"),
    Case("pool: shape metadata mismatch", lambda d: pool(d, metadata={"shape": "[1, 8, 8]"}), "does not match"),
    Case("pool: null label", lambda d: pool(d, {"y": pa.array([None] + [1] * 59, pa.int64())}),
         "without a label"),
    Case("pool: null x row", lambda d: pool(d, x=[None] + [[0.5] * 4] * 59), "null x"),
    Case("pool: x rows of different lengths", lambda d: pool(d, x=[[0.5] * 3] + [[0.5] * 4] * 59),
         "different lengths"),
    Case("pool: empty", lambda d: pool(d, n=10, columns={"id": pa.array([], pa.int64()), "x": pa.array(
        [], pa.list_(pa.float32())), "y": pa.array([], pa.int64()), "split": pa.array([], pa.string())}),
         "has no rows"),
    Case("pool: fractional labels", lambda d: pool(d, {"y": np.r_[0.5, np.arange(59) % 3]}), "not whole numbers"),
    Case("pool: one class of ten", lambda d: pool(d, {"y": np.zeros(60, np.int64)}, {"classes": "10"}),
         "holds 1 class(es)"),
    Case("pool: unknown split value", lambda d: pool(d, {"split": ["train"] * 50 + ["validation"] * 10}),
         "unknown split values ['validation']"),
    Case("pool: duplicate ids", lambda d: pool(d, {"id": np.zeros(60, np.int64)}), "ids are not unique"),
    Case("pool: no y column", lambda d: pool(d, y=True), "lacks columns ['y']"),
    Case("pool: not Parquet", not_parquet, "not readable Parquet"),
    Case("pool: missing directory", lambda d: run(d, "--dataset", f"parquet:{d / 'nowhere'}"), "does not exist"),
    # dataset files
    Case("medmnist: corrupt npz", lambda d: medmnist_npz(d, b"not a zip archive"), "organcmnist.npz"),
    Case("medmnist: missing files", lambda d: run(d, "--dataset", "medmnist:organcmnist", "--data-root",
                                                  str(d / "nothing")), "organcmnist not found"),
    Case("data root is a file", lambda d: run(d, "--dataset", "medmnist:organcmnist", "--data-root",
                                              str(file_at(d))), "is a file"),
    Case("--download into a file", lambda d: run(d, "--dataset", "cifar10", "--download", "--data-root",
                                                 str(file_at(d))), "is a file"),
    Case("cifar: planted pickle", lambda d: cifar(d, planted_pickle(d)), "refused to load posix.system"),
    Case("cifar: truncated batch", lambda d: cifar(d, pickle.dumps({"data": 1})[:9]), "not a readable CIFAR"),
    # output directories
    Case("--out under a file", lambda d: run(d, out=file_at(d) / "out"), "which is a file"),
    Case("--out on a read-only filesystem", read_only_out, "ro/out"),
    Case("--out holds other files", foreign_out, "holds no autoal experiment"),
    Case("--out holds a different experiment", lambda d: ["run", *SMALL, "--batch", "7", "--out", str(copy_run(d))],
         "differs in batch", needs_template=True),
    Case("--out in use by another run", locked, "is in use by another autoal process (pid", needs_template=True),
    Case("--out with a damaged ledger", damaged_ledger, "ledger.parquet is damaged", needs_template=True),
    Case("--out with a planted checkpoint", planted_checkpoint, "is not a checkpoint autoal wrote",
         needs_template=True),
    # resources
    Case("workers beyond the CPUs", lambda d: run(d, "--workers", "64"), "need 64 CPU"),
    Case("actors beyond the CPUs", lambda d: run(d, "--actors", "64"), "need 64 CPU"),
    Case("a GPU actor without a GPU", lambda d: run(d, "--gpus", "1", "--actors", "1", "--workers", "1"),
         "need 1 CPU, 2 GPU", gpu_free=True),
    Case("gpus in the driver without CUDA", lambda d: run(d, "--gpus", "1"), "sees no CUDA GPU", gpu_free=True),
    # report, prepare, sweep
    Case("report: missing path", lambda d: ["report", str(d / "nothing")], "does not exist"),
    Case("report: foreign directory", lambda d: (file_at(d), ["report", str(d)])[1], "is not an autoal run"),
    Case("report: read-only run", lambda d: ["report", str(read_only(copy_run(d)))], "plots not written", exit=0,
         needs_template=True),
    Case("report: interrupted run, no round finished", report_unfinished, "no finished rounds yet", exit=0,
         needs_template=True),
    Case("prepare into a file", lambda d: ["prepare", "digits", str(file_at(d))], "not an empty directory"),
    Case("prepare under a file", lambda d: ["prepare", "digits", str(file_at(d) / "pool")], "afile"),
    Case("prepare unknown source", lambda d: ["prepare", "mnist", str(d / "pool")], "unknown data source"),
    Case("sweep: missing plan", lambda d: ["sweep", str(d / "absent.yaml")], "cannot read sweep plan"),
    Case("sweep: unknown axis", lambda d: sweep_plan(d, {**BASE_PLAN, "axes": {"epoch": [1]}}), "unknown axis"),
    Case("sweep: unknown key", lambda d: sweep_plan(d, {**BASE_PLAN, "shedule": 1}), "unknown key shedule"),
]
