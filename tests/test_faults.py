"""Fault injection: a second writer, kill -9 at random moments, a killed scoring actor, an
impossible resource request, Ctrl-C, a full disk. Nothing is lost, nothing hangs, every
refusal is one line.

Runs are subprocesses of the real console script that join this session's Ray (RAY_ADDRESS),
so each costs its imports and a connection, not a Ray start.
"""
import contextlib
import errno
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import ray

from autoal import cli
from autoal.compute import scoring, training
from autoal.data import datasets
from autoal.runs import directory as store
from autoal.strategies import get

pytestmark = pytest.mark.slow(seconds=220)   # started first, the longest first (tests/conftest.py)
AUTOAL = str(Path(sys.executable).with_name("autoal"))
# Two strategies x 6 rounds of a small model: long enough for 10 kill points, seconds per attempt.
FLAGS = ["--dataset", "digits", "--strategy", "random", "entropy", "--initial", "10", "--batch", "5",
         "--rounds", "6", "--epochs", "3", "--min-steps", "0", "--actors", "0", "--seeds", "0"]
KEY = ["strategy", "seed", "round", "id"]


def start(out: Path, *flags: str, args=FLAGS) -> subprocess.Popen:
    env = dict(os.environ, RAY_ADDRESS=ray.get_runtime_context().gcs_address)
    # as a shell starts a foreground command: Ctrl-C reaches it (an ignored SIGINT would be inherited)
    return subprocess.Popen([AUTOAL, "run", *args, *flags, "--out", str(out)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def ledger(out: Path) -> pd.DataFrame:
    return pd.read_parquet(out / "ledger.parquet").sort_values(KEY).reset_index(drop=True)


def wait_for_line(proc: subprocess.Popen, text: str, timeout: float = 120) -> None:
    """Read stdout until a line contains `text` (stdout keeps flowing in a thread so the pipe never
    fills); if the run exits first, fail at once with its stderr (left unread otherwise: callers
    read it after the run ends)."""
    seen = threading.Event()

    def pump():
        for line in proc.stdout:
            if text in line:
                seen.set()
    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    deadline = time.monotonic() + timeout
    while not seen.wait(0.5):
        if proc.poll() is not None:
            reader.join(10)   # the lines it printed before exiting
            assert seen.is_set(), f"the run exited ({proc.returncode}) before a line with {text!r}: " \
                                  f"{proc.stderr.read()[-2000:]}"
            return
        assert time.monotonic() < deadline, f"no line with {text!r} within {timeout} s"


@pytest.fixture(scope="module")
def reference(ray_local, tmp_path_factory):
    """The same experiment, uninterrupted, in this process."""
    out = tmp_path_factory.mktemp("faults") / "reference"
    assert cli.main(["run", *FLAGS, "--out", str(out)]) == 0
    return ledger(out)


def test_a_second_writer_is_refused_naming_the_holder(ray_local, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from autoal.runs.lock import DirLock; "
                               f"lock = DirLock({str(out)!r}).acquire(); print('locked', flush=True); time.sleep(600)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        refused = start(out)
        _, err = refused.communicate(timeout=300)
        assert refused.returncode == 2
        assert err.strip().splitlines() == [err.strip()] and f"pid {holder.pid} on " in err, err
        assert "in use by another autoal process" in err and "Traceback" not in err
    finally:
        holder.kill()  # -9: the lock it held is now stale
        holder.wait()
    taker = start(out, "--rounds", "1")
    stdout, err = taker.communicate(timeout=300)
    assert taker.returncode == 0, err
    assert f"locked by a run that ended without releasing it (pid {holder.pid} on" in stdout


def test_two_runs_on_one_out_lose_nothing(ray_local, tmp_path):
    """The issue's case: one strategy per shell, same --out. Either the second is refused naming the first,
    or (if the first had finished) it adds its strategy; no run's ledger or results are lost."""
    out = tmp_path / "run"
    one = FLAGS[:2] + FLAGS[5:]   # FLAGS without its strategies: a repeated --strategy adds to the list
    procs = {s: start(out, "--strategy", s, "--rounds", "4", args=one) for s in ("random", "entropy")}
    codes = {s: (p.wait(timeout=300), p.stderr.read()) for s, p in procs.items()}
    finished = [s for s, (code, _) in codes.items() if code == 0]
    assert finished, codes
    for s, (code, err) in codes.items():
        assert code in (0, 2), err
        if code == 2:
            other = procs[finished[0]]
            assert err.strip() == err.strip().splitlines()[0] and f"pid {other.pid} on " in err, err
    results = pd.read_parquet(out / "results.parquet")
    assert sorted(results["strategy"].unique()) == sorted(finished)
    assert (results.groupby("strategy")["round"].max() == 4).all()
    assert set(ledger(out)["strategy"]) == set(finished)


# Pays the imports (torch, Ray: ~10 s on a busy 2-core machine) once, then forks one `autoal run`
# per request: the kill points cost a fork, joining Ray and the work, not a start-up each.
ZYGOTE = """
import os, sys
from autoal import cli
from autoal.engine import experiment  # noqa: F401
for line in sys.stdin:
    pid = os.fork()
    if pid == 0:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 1), os.dup2(null, 2)
        os._exit(cli.main(line.rstrip("\\n").split("\\t")))
    print(pid, flush=True)
    print(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), flush=True)
"""


def test_kill_9_at_ten_random_moments_then_resume_gives_the_uninterrupted_ledger(reference, tmp_path):
    out, rng, kills = tmp_path / "run", random.Random(12), 0
    env = dict(os.environ, RAY_ADDRESS=ray.get_runtime_context().gcs_address)
    zygote = subprocess.Popen([sys.executable, "-c", ZYGOTE], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True, env=env)
    try:
        while kills < 10:
            zygote.stdin.write("\t".join(["run", *FLAGS, "--out", str(out)]) + "\n")
            zygote.stdin.flush()
            pid = int(zygote.stdout.readline())
            time.sleep(rng.uniform(0.0, 4.0))   # anywhere in loading, joining Ray, locking, the rounds
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            code = int(zygote.stdout.readline())
            kills += code == -signal.SIGKILL
            assert code in (0, -signal.SIGKILL), f"attempt ended with {code}"
    finally:
        zygote.kill()
        zygote.wait()
    final = start(out)
    stdout, err = final.communicate(timeout=300)
    assert final.returncode == 0, err
    pd.testing.assert_frame_equal(ledger(out), reference)
    results = pd.read_parquet(out / "results.parquet")
    assert len(results) == 2 * 7 and not results.duplicated(["strategy", "seed", "round"]).any()


def our_worker_pids(name: str) -> list[int]:
    """Pids of this session's Ray worker processes whose title names `name` (children of our raylet)."""
    raylet = ray._private.worker._global_node.all_processes["raylet"][0].process.pid
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
            parent = int(next(line.split()[1] for line in (entry / "status").read_text().splitlines()
                              if line.startswith("PPid:")))
        except (OSError, ValueError, StopIteration):
            continue
        if name in cmdline and parent == raylet:
            pids.append(int(entry.name))
    return pids


def test_a_scoring_worker_killed_mid_pass_is_replaced_and_the_picks_are_identical(ray_local):
    pool = datasets.load("digits", "unused").subset("train")
    x = np.concatenate([pool.x] * 4)                     # 5,748 samples: a pass of seconds in small batches
    ids = np.arange(len(x), dtype=np.int64)
    recipe = training.ModelRecipe("cnn", pool.shape, 10, 0.3)
    state = recipe.build().state_dict()
    needs = get("entropy").needs
    killed = []

    def killer():
        deadline = time.monotonic() + 120
        while not killed and time.monotonic() < deadline:
            pids = our_worker_pids("_score_batch")    # the process title of a worker running a scoring task
            if pids:
                time.sleep(1.0)                          # let it score some batches first
                os.kill(pids[0], signal.SIGKILL)
                killed.append(time.monotonic())
            time.sleep(0.1)
    thread = threading.Thread(target=killer)
    thread.start()
    hit = scoring.score(recipe, state, ids, x, needs, mc_samples=2, tasks=1, chunk=8)
    done = time.monotonic()
    thread.join()
    assert killed and killed[0] < done, "the scoring worker was not killed during the pass"
    calm = scoring.score(recipe, state, ids, x, needs, mc_samples=2, tasks=0)
    k = 50
    assert np.array_equal(get("entropy").select(hit, k), get("entropy").select(calm, k))


def test_an_impossible_request_is_a_prompt_error_not_a_hang(ray_local, tmp_path):
    for flags in (["--workers", "64"], ["--actors", "64"]):
        proc = start(tmp_path / "out", *flags)
        _, err = proc.communicate(timeout=300)   # before this check, Ray queued the request for ever
        assert proc.returncode == 2 and "need 64 CPU" in err and "Traceback" not in err, err
        assert not (tmp_path / "out").exists()


def test_ctrl_c_stops_a_run_within_seconds_and_it_resumes(reference, tmp_path):
    """40 rounds, not 6: a round of this tiny run takes ~0.1 s, and the 6-round run could end
    before the signal arrived. Its first 6 rounds are the reference run's (paired rounds)."""
    out, flags = tmp_path / "run", [*FLAGS[:FLAGS.index("--rounds")], "--rounds", "40",
                                    *FLAGS[FLAGS.index("--rounds") + 2:]]
    proc = start(out, args=flags)
    wait_for_line(proc, "round 1/40")
    proc.send_signal(signal.SIGINT)
    t0 = time.monotonic()
    _, err = proc.communicate(timeout=60)
    assert time.monotonic() - t0 < 20, "Ctrl-C took too long"
    assert proc.returncode == 130 and "re-run the same command to resume" in err, err
    final = start(out, args=flags)
    _, err = final.communicate(timeout=300)
    assert final.returncode == 0, err
    pd.testing.assert_frame_equal(ledger(out).query("round <= 6").reset_index(drop=True), reference)


def test_a_full_disk_is_one_line_and_the_directory_resumes(reference, tmp_path, capsys, monkeypatch):
    out, writes = tmp_path / "run", {"n": 0}
    real = os.fsync

    def disk_fills(fd):
        writes["n"] += 1
        if writes["n"] > 12:                 # some rounds are written, then the disk is full
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(fd)
    monkeypatch.setattr(store.os, "fsync", disk_fills)
    assert cli.main(["run", *FLAGS, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("autoal: error: ") and len(err.strip().splitlines()) == 1, err
    assert "No space left on device" in err and "re-run the same command" in err
    assert not list(out.glob(".*.parquet.*")), "a failed write left its temporary file"
    done = len(pd.read_parquet(out / "results.parquet"))
    assert 0 < done < 14
    monkeypatch.undo()
    assert cli.main(["run", *FLAGS, "--out", str(out)]) == 0
    pd.testing.assert_frame_equal(ledger(out), reference)
