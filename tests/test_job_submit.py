"""`ray job submit` of a sweep to a private Ray head, as on a cluster.

The head runs in its own process group on free ports and its own temp dir, so
it collides neither with the tests' in-process Ray nor with other users' Ray;
it is stopped by killing that group (never `ray stop`, which stops every Ray
process of the user).
"""
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest

from test_sweep import TINY, write_plan

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
PORT_FLAGS = ("port", "dashboard-port", "ray-client-server-port", "dashboard-agent-listen-port",
              "dashboard-agent-grpc-port", "metrics-export-port", "runtime-env-agent-port", "node-manager-port",
              "object-manager-port")


def free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


@pytest.fixture
def ray_head():
    """A Ray head started from the project's venv (the entrypoint runs with the head's PATH); its URL."""
    from ray.job_submission import JobSubmissionClient

    ports = dict(zip(PORT_FLAGS, free_ports(len(PORT_FLAGS))))
    temp = tempfile.mkdtemp(prefix="rh", dir="/tmp")   # Ray's socket paths must stay short
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",
           "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}"}
    env.pop("RAY_ADDRESS", None)
    log = open(Path(temp) / "head.log", "wb")
    head = subprocess.Popen([str(VENV_BIN / "ray"), "start", "--head", "--num-cpus=4", f"--temp-dir={temp}",
                             "--dashboard-host=127.0.0.1", "--include-dashboard=true", "--disable-usage-stats",
                             *(f"--{flag}={port}" for flag, port in ports.items()), "--block"],
                            env=env, start_new_session=True, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{ports['dashboard-port']}"
    try:
        deadline = time.time() + 120
        while True:
            assert head.poll() is None, (Path(temp) / "head.log").read_text()[-3000:]
            try:
                JobSubmissionClient(url).list_jobs()
                break
            except Exception:  # not serving yet
                assert time.time() < deadline, "the Ray head's job server did not come up"
                time.sleep(1)
        yield url
    finally:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(head.pid, sig)
            except ProcessLookupError:
                break
            time.sleep(2)
        head.wait()
        log.close()
        shutil.rmtree(temp, ignore_errors=True)


def test_ray_job_submit_runs_a_sweep(ray_head, tmp_path):
    """The README's cluster command (on a 2-trial sweep): working dir upload, a storage URI, results
    back in --out."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    plan = write_plan(tmp_path, name="smoke", base={**TINY, "strategies": ["entropy"], "min_steps": 0},
                      axes={"seed": [0, 1]}, max_concurrent_trials=2)
    client = JobSubmissionClient(ray_head)
    out, storage = tmp_path / "smoke", f"file://{tmp_path / 'storage'}"
    deadline = time.time() + 120
    while True:  # the head's job agent registers a few seconds after its dashboard serves
        try:
            job = client.submit_job(entrypoint=f"autoal sweep {plan} --out {out} --storage {storage}",
                                    runtime_env={"working_dir": str(ROOT)})
            break
        except RuntimeError as exc:
            assert "No available agent" in str(exc) and time.time() < deadline, exc
            time.sleep(2)
    deadline = time.time() + 420
    while (status := client.get_job_status(job)) not in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
        assert time.time() < deadline, client.get_job_logs(job)[-3000:]
        time.sleep(2)
    logs = client.get_job_logs(job)
    assert status == JobStatus.SUCCEEDED, logs[-3000:]
    assert f"sweep results in {out}" in logs
    results = pd.read_parquet(out / "results.parquet")
    assert len(results) == 2 * 3 and results["complete"].all()
    assert len(pd.read_csv(out / "summary.csv")) == 1
    assert (out / "curves_digits.png").exists()
    assert len(list((tmp_path / "storage" / "smoke").glob("*/checkpoint_*/results.parquet"))) == 2
