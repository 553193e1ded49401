"""The experiment directory: config, ledger, per-round results, strategy state.

Every write goes to a temporary file that replaces the target atomically, so a
run killed at any moment leaves a readable directory. The ledger is
append-only: rows are added, never changed. A round counts as done once its
results row exists; ledger rows of a round beyond that (written just before a
kill) are dropped on load and re-derived identically.

One process at a time writes a directory: `open` takes its lock (autoal.runs.lock)
and `close` releases it. Strategy state is loaded with torch's weights_only
unpickler, which builds nothing but tensors and plain containers: a file
planted in a shared experiment directory cannot run code on the machine that
resumes from it.
"""
from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml

from autoal.config import EXECUTION_FIELDS, ExperimentConfig, from_dict
from autoal.errors import AutoALError
from autoal.runs.journal import Journal
from autoal.runs.lock import LOCK_FILE, DirLock
from autoal.safe_io import CONFIG_BYTES, atomic_write, load_yaml, own_dir, read_bytes

__all__ = ["ExperimentDir", "atomic_write", "parquet_bytes", "read_table"]

LEDGER_COLUMNS = ["strategy", "seed", "round", "id", "label"]
TABLE_BYTES = 1 << 30        # a results table or ledger autoal reads back
CHECKPOINT_BYTES = 8 << 30   # a round's checkpoint


def parquet_bytes(frame: pd.DataFrame) -> bytes:
    buf = io.BytesIO()
    frame.to_parquet(buf, index=False)
    return buf.getvalue()


def read_table(path: Path, columns: list[str] | None = None) -> pd.DataFrame:
    """A Parquet table autoal wrote, read as a regular file (never through a symlink), bounded."""
    data = read_bytes(path, TABLE_BYTES, "table", follow=False)
    try:
        return pd.read_parquet(io.BytesIO(data), columns=columns)
    except Exception as exc:  # pyarrow raises several types for damaged files
        raise AutoALError(f"{path} is damaged ({type(exc).__name__}); restore it or start a new --out") from None


class ExperimentDir:
    """An output directory holding one experiment, created or resumed."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.config_path = self.root / "config.yaml"
        self.ledger_path = self.root / "ledger.parquet"
        self.results_path = self.root / "results.parquet"
        self.journal: Journal | None = None   # while set, every write is recorded in it first

    def write(self, path: Path, data: bytes) -> None:
        """Write one of the directory's files atomically, recorded in the journal when one is open."""
        if self.journal is None:
            atomic_write(path, data)
            return
        self.journal.record(path, "replaced" if os.path.lexists(path) else "new")
        atomic_write(path, data, lambda tmp: self.journal.record(tmp, "tmp"))

    def open(self, config: ExperimentConfig) -> "ExperimentDir":
        """Create the directory, or check that it holds this same experiment and load its progress;
        hold the directory's lock until `close`."""
        if self.root.exists() and not self.root.is_dir():
            raise AutoALError(f"output {self.root} exists and is not a directory")
        self._merged(config)  # refuse before touching anything, even the lock file
        self.root.mkdir(parents=True, exist_ok=True)
        self.lock = DirLock(self.root).acquire()
        try:
            config, fresh = self._merged(config)  # again under the lock: the last holder may have written
            self.write(self.config_path, yaml.safe_dump(config.to_dict(), sort_keys=False).encode())
            self.reload()
            if fresh:
                self.ledger = self.ledger.iloc[:0]
        except BaseException:
            self.close()
            raise
        return self

    def reload(self) -> None:
        """Read the results and the ledger (up to its last complete round) from disk, e.g. again
        after the lock holder repaired the directory."""
        self.results = self._read(self.results_path, None)
        ledger = self._read(self.ledger_path, LEDGER_COLUMNS)
        self.ledger = ledger[ledger["round"] <= self._next_round(ledger)].reset_index(drop=True)

    def close(self) -> None:
        """Release the directory's lock (a killed process releases it too)."""
        if getattr(self, "lock", None) is not None:
            self.lock.release()

    def _merged(self, config: ExperimentConfig) -> tuple[ExperimentConfig, bool]:
        """The config to run: `config` with the saved run's strategies and seeds, and whether the
        directory starts afresh. A saved config that finished no round is replaced: a run that
        failed at start-up must not block its corrected retry."""
        if not self.config_path.exists():
            if self.root.exists() and any(p.name != LOCK_FILE for p in self.root.iterdir()):
                raise AutoALError(f"output {self.root} is not empty and holds no autoal experiment")
            return config, True
        ours, theirs = config.to_dict(), self.saved_config().to_dict()
        diff = sorted(k for k in ours if k not in EXECUTION_FIELDS and ours[k] != theirs[k])
        if diff and not self.results_path.exists():
            return config, True
        if diff:
            raise AutoALError(f"output {self.root} holds a different experiment (differs in "
                              f"{', '.join(diff)}); choose another --out or repeat its settings")
        return from_dict(dict(ours, strategies=_union(theirs["strategies"], ours["strategies"]),
                              seeds=_union(theirs["seeds"], ours["seeds"]))), False

    def saved_config(self) -> ExperimentConfig:
        try:
            text = read_bytes(self.config_path, CONFIG_BYTES, "config", follow=False).decode("utf-8")
            return from_dict(load_yaml(text))
        except (AutoALError, yaml.YAMLError, UnicodeDecodeError) as exc:
            raise AutoALError(f"{self.config_path} is not a valid autoal config: {exc}") from None

    def _read(self, path: Path, columns) -> pd.DataFrame:
        if not os.path.lexists(path):
            return pd.DataFrame(columns=columns or ["strategy", "seed", "round"])
        return read_table(path)

    def _next_round(self, ledger: pd.DataFrame) -> pd.Series:
        """Per ledger row, the newest round its (strategy, seed) may hold: one past its last result."""
        done = self.results.groupby(["strategy", "seed"])["round"].max() if len(self.results) else {}
        keys = zip(ledger["strategy"], ledger["seed"])
        return pd.Series([int(done.get(k, -1)) + 1 for k in keys], index=ledger.index, dtype="int64")

    def _rows(self, frame: pd.DataFrame, strategy: str, seed: int) -> pd.DataFrame:
        return frame[(frame["strategy"] == strategy) & (frame["seed"] == seed)]

    def labeled(self, strategy: str, seed: int) -> pd.DataFrame:
        """Ledger rows (round, id, label) of one run in the order they were queried: the
        ledger is append-only, so a resumed run trains on the same order as an unbroken one."""
        return self._rows(self.ledger, strategy, seed)

    def rounds_done(self, strategy: str, seed: int) -> int:
        rows = self._rows(self.results, strategy, seed)
        return int(rows["round"].max()) + 1 if len(rows) else 0

    def state_path(self, strategy: str, seed: int, round_: int) -> Path:
        return self.root / "state" / strategy / f"seed{seed}" / f"round{round_}.pt"

    def load_state(self, strategy: str, seed: int, round_: int):
        path = self.state_path(strategy, seed, round_)
        if not os.path.lexists(path):
            return None
        data = read_bytes(path, CHECKPOINT_BYTES, "checkpoint", follow=False)
        try:
            with warnings.catch_warnings():  # a foreign file's pickle protocol draws a UserWarning first
                warnings.simplefilter("ignore")
                return _from_tensors(torch.load(io.BytesIO(data), weights_only=True))
        except Exception as exc:  # weights_only refusals and damaged files raise several types
            raise AutoALError(f"{path} is not a checkpoint autoal wrote ({type(exc).__name__}); "
                              "delete it and the rounds after it, or start a new --out") from None

    def save_state(self, strategy: str, seed: int, round_: int, state) -> None:
        path = self.state_path(strategy, seed, round_)
        own_dir(self.root, *path.parent.relative_to(self.root).parts)
        buf = io.BytesIO()
        torch.save(_to_tensors(state), buf)
        self.write(path, buf.getvalue())

    def append_ledger(self, rows: pd.DataFrame) -> None:
        self.ledger = pd.concat([self.ledger, rows[LEDGER_COLUMNS]], ignore_index=True)
        self.write(self.ledger_path, parquet_bytes(self.ledger.astype(
            {"seed": "int64", "round": "int64", "id": "int64", "label": "int64"})))

    def append_rows(self, table: str, rows: list[dict]) -> None:
        """Add one round's telemetry rows to `<table>.parquet` (e.g. strategy_weights).

        Rows a killed run already wrote for the same (strategy, seed, round) are
        replaced, so a resumed round does not count twice."""
        path = self.root / f"{table}.parquet"
        frame = pd.DataFrame(rows)
        if os.path.lexists(path):
            old = read_table(path)
            key = ["strategy", "seed", "round"]
            stale = old[key].apply(tuple, axis=1).isin(set(frame[key].apply(tuple, axis=1)))
            frame = pd.concat([old[~stale], frame], ignore_index=True)
        self.write(path, parquet_bytes(frame))

    def append_result(self, row: dict) -> None:
        new = pd.DataFrame([row])
        self.results = new if not len(self.results) else pd.concat([self.results, new], ignore_index=True)
        self.write(self.results_path, parquet_bytes(self.results))
        self.write(self.root / "results.csv", self.results.to_csv(index=False).encode())


NUMPY = "__numpy__"   # marks a numpy array stored as a tensor in a checkpoint


def _to_tensors(state):
    """`state` in what torch's weights_only loader accepts: tensors, numbers, strings and plain
    containers; a numpy array becomes {NUMPY: tensor}. Anything else is a bug in a hook."""
    if isinstance(state, np.ndarray):
        return {NUMPY: torch.from_numpy(np.ascontiguousarray(state))}
    if isinstance(state, dict):
        return {k: _to_tensors(v) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(_to_tensors(v) for v in state)
    if state is None or isinstance(state, (torch.Tensor, bool, int, float, str)):
        return state
    raise TypeError(f"a round hook's state holds a {type(state).__name__}; keep it to tensors, arrays, "
                    "numbers, strings and plain containers")


def _from_tensors(state):
    if isinstance(state, dict):
        if set(state) == {NUMPY}:
            return state[NUMPY].numpy()
        return {k: _from_tensors(v) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(_from_tensors(v) for v in state)
    return state


def _union(first, second) -> list:
    return list(dict.fromkeys([*first, *second]))
