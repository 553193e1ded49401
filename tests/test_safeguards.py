"""The safeguards one by one: the directory lock, resource checks, checkpoints, file modes, reports."""
import os
import stat

import numpy as np
import pandas as pd
import pytest
import ray.autoscaler.sdk
import torch

from autoal import cli, config
from autoal.compute import runtime
from autoal.errors import AutoALError
from autoal.runs.lock import LOCK_FILE, DirLock
from autoal.report import report
from autoal.runs.directory import ExperimentDir

SMALL = ["--dataset", "digits", "--initial", "10", "--batch", "5", "--rounds", "1", "--epochs", "1",
         "--min-steps", "0", "--actors", "0", "--seeds", "0", "--strategy", "entropy"]


def test_a_lock_refuses_a_second_holder_until_released(tmp_path):
    first = DirLock(tmp_path).acquire()
    with pytest.raises(AutoALError, match=rf"in use by another autoal process \(pid {os.getpid()} on "):
        DirLock(tmp_path).acquire()
    first.release()
    assert (tmp_path / LOCK_FILE).read_bytes() == b"", "a clean release leaves no holder behind"
    with DirLock(tmp_path) as second:
        assert second.stale is None


def test_an_abandoned_lock_is_taken_over_and_reported(tmp_path):
    (tmp_path / LOCK_FILE).write_text('{"host": "gone", "pid": 4242, "started": "yesterday"}')
    with DirLock(tmp_path) as lock:  # nobody holds the flock: the writer of that file is dead
        assert lock.stale == {"host": "gone", "pid": 4242, "started": "yesterday"}


def test_an_experiment_directory_is_locked_while_open(tmp_path):
    cfg = config.load(None, {"strategies": ["entropy"]})
    store = ExperimentDir(tmp_path / "run").open(cfg)
    with pytest.raises(AutoALError, match="in use by another autoal process"):
        ExperimentDir(tmp_path / "run").open(cfg)
    store.close()
    ExperimentDir(tmp_path / "run").open(cfg).close()


def test_a_config_that_finished_no_round_does_not_block_a_corrected_retry(tmp_path):
    ExperimentDir(tmp_path / "run").open(config.load(None, {"batch": 500})).close()   # failed at start-up
    store = ExperimentDir(tmp_path / "run").open(config.load(None, {"batch": 5}))
    assert store.saved_config().batch == 5
    store.close()


def test_checkpoints_round_trip_tensors_and_arrays_and_refuse_pickled_objects(tmp_path):
    store = ExperimentDir(tmp_path / "run").open(config.load(None, {}))
    state = {"net": {"w": torch.ones(2, 3)}, "log_w": np.arange(4.0), "pending": None, "rounds": 3,
             "slots": {"hit": np.eye(2, dtype=bool), "q": [np.float64(0.5).item(), 0.25]}}
    store.save_state("albl", 0, 1, state)
    back = store.load_state("albl", 0, 1)
    assert torch.equal(back["net"]["w"], state["net"]["w"]) and back["rounds"] == 3 and back["pending"] is None
    assert isinstance(back["log_w"], np.ndarray) and np.array_equal(back["log_w"], state["log_w"])
    assert back["slots"]["hit"].dtype == bool and back["slots"]["q"] == [0.5, 0.25]
    torch.save({"w": pd.Timestamp("2020-01-01")}, store.state_path("albl", 0, 2))   # any non-tensor object
    with pytest.raises(AutoALError, match="is not a checkpoint autoal wrote"):
        store.load_state("albl", 0, 2)
    with pytest.raises(TypeError, match="holds a Timestamp"):
        store.save_state("albl", 0, 3, {"when": pd.Timestamp("2020-01-01")})
    store.close()


def test_files_get_the_modes_of_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        store = ExperimentDir(tmp_path / "run").open(config.load(None, {}))
        store.append_result({"strategy": "a", "seed": 0, "round": 0})
        store.close()
    finally:
        os.umask(old)
    for name in ("config.yaml", "results.parquet", "results.csv", LOCK_FILE):
        assert stat.S_IMODE((tmp_path / "run" / name).stat().st_mode) == 0o640, name


def test_an_impossible_request_is_refused_and_an_autoscaler_wait_is_bounded(ray_local, monkeypatch):
    with pytest.raises(AutoALError, match="need 64 CPU, but the Ray cluster offers 4 CPU"):
        runtime.check_resources(64, 0, 0.0)
    runtime.check_resources(2, 2, 0.0)   # fits: no error, no wait
    state = runtime.ray._private.state.state
    monkeypatch.setattr(state, "get_max_resources_from_cluster_config", lambda: {"CPU": 1000})
    monkeypatch.setattr(ray.autoscaler.sdk, "request_resources", lambda **kw: None)
    said = []
    with pytest.raises(AutoALError, match="did not add 60 CPU within 0.2 s"):
        runtime.check_resources(64, 0, 0.0, log=said.append, wait_s=0.2)
    assert said and "waiting up to 0.2 s for the autoscaler to add 60 CPU" in said[0]
    monkeypatch.setattr(state, "get_max_resources_from_cluster_config", lambda: {"CPU": 16})
    with pytest.raises(AutoALError, match="can grow to 16 CPU"):
        runtime.check_resources(64, 0, 0.0, wait_s=0.2)


@pytest.fixture(scope="module")
def finished_run(ray_local, tmp_path_factory):
    out = tmp_path_factory.mktemp("safeguards") / "run"
    assert cli.main(["run", *SMALL, "--out", str(out)]) == 0
    return out


def test_resuming_says_where(ray_local, finished_run, tmp_path, capsys):
    out = tmp_path / "run"
    import shutil

    shutil.copytree(finished_run, out)
    results = pd.read_parquet(out / "results.parquet")
    results.iloc[:-1].to_parquet(out / "results.parquet", index=False)   # as if killed in round 1
    capsys.readouterr()
    assert cli.main(["run", *SMALL, "--out", str(out)]) == 0
    assert "[entropy seed=0] resuming at round 1/1" in capsys.readouterr().out


def test_report_writes_plots_where_asked(finished_run, tmp_path):
    text = report(finished_run, plots=tmp_path / "plots")
    assert "entropy" in text and f"written: curves.png in {tmp_path / 'plots'}" in text
    assert (tmp_path / "plots" / "curves.png").stat().st_size > 10_000
