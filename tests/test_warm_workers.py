"""Warm training workers: one group per experiment serves every fit (task model, AutoAL's search),
a worker killed mid-fit is replaced without changing a pick, and no worker outlives its driver,
whether the run ends, is interrupted or is killed with SIGKILL.

The reference is the same experiment trained in the driver (`--workers 0`): one seed gives one
result in every mode."""
import os
import signal
import threading
import time

import pandas as pd
import pytest

from autoal import cli
from test_faults import KEY, ledger, our_worker_pids, start, wait_for_line

FLAGS = ["--dataset", "digits", "--strategy", "entropy", "autoal", "--initial", "10", "--batch", "5",
         "--rounds", "2", "--epochs", "3", "--min-steps", "40", "--actors", "0", "--seeds", "0",
         "--set", "search.cycles_first=1", "--set", "search.fit_epochs=2", "--set", "search.fit_steps=0",
         "--set", "search.search_epochs=2", "--set", "search.search_minibatch=16"]
WORKER = "TrainWorker"   # the process title of a warm worker: ray::TrainWorker, ray::TrainWorker.run while fitting
STARTED = "started 1 training worker(s)"


def workers_gone(within_s: float = 10.0) -> bool:
    """No warm worker process of this Ray session is left within `within_s` seconds."""
    deadline = time.monotonic() + within_s
    while our_worker_pids(WORKER):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def results(out) -> pd.DataFrame:
    return pd.read_parquet(out / "results.parquet").sort_values(KEY[:3]).reset_index(drop=True)


@pytest.fixture(scope="module")
def in_driver(ray_local, tmp_path_factory):
    """The experiment trained in the driver."""
    out = tmp_path_factory.mktemp("warm") / "driver"
    assert cli.main(["run", *FLAGS, "--workers", "0", "--out", str(out)]) == 0
    return out


def test_one_group_serves_every_fit_a_killed_worker_is_replaced_and_the_results_are_the_drivers(in_driver, tmp_path,
                                                                                                 capsys):
    """6 task-model fits and 2 searches: one group start, plus one to replace the worker killed in
    the first fit; the retried fit gives what the driver gave."""
    killed = []

    def killer():
        deadline = time.monotonic() + 120
        while not killed and time.monotonic() < deadline:
            busy = our_worker_pids(f"{WORKER}.run")
            if busy:
                os.kill(busy[0], signal.SIGKILL)
                killed.append(busy[0])
            time.sleep(0.02)
    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    out = tmp_path / "warm"
    assert cli.main(["run", *FLAGS, "--workers", "1", "--out", str(out)]) == 0
    thread.join()
    said = capsys.readouterr().out
    assert killed and said.count("a training worker died during") == 1, said
    assert said.count(STARTED) == 2, "one start, one replacement, whatever the number of fits"
    pd.testing.assert_frame_equal(ledger(out), ledger(in_driver))
    columns = ["strategy", "seed", "round", "accuracy", "train_loss"]
    pd.testing.assert_frame_equal(results(out)[columns], results(in_driver)[columns])
    assert workers_gone(), "the group outlived its experiment"


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["kill-9", "ctrl-c"])
def test_no_worker_outlives_its_driver(ray_local, tmp_path, sig, monkeypatch):
    monkeypatch.setenv("PYTHONUNBUFFERED", "1")   # each round's line reaches the pipe as it is printed
    flags = [f for f in FLAGS if f != "autoal"]   # entropy alone: a repeated --strategy adds to the list
    proc = start(tmp_path / "run", "--workers", "1", "--rounds", "40", args=flags)
    wait_for_line(proc, "round 0/40", timeout=300)   # round 0 trained on the warm worker
    assert our_worker_pids(WORKER), "the run trains on a warm worker"
    proc.send_signal(sig)
    t0 = time.monotonic()
    proc.communicate(timeout=60)
    assert time.monotonic() - t0 < 20, "the driver took too long to stop"
    assert proc.returncode == (130 if sig == signal.SIGINT else -signal.SIGKILL)
    assert workers_gone(10.0), "a warm worker outlived its driver by more than 10 s"
