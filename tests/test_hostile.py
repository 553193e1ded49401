"""One test per class of hostile input (issue 20), each of which failed on the main branch before
it: a planted pickle in a sweep directory runs nothing; a planted lock symlink leaves its target
intact; opening a label project deletes none of a user's files; an image symlink outside the folder
is refused; an alias bomb is refused in under a second; a killed driver leaves no Ray process."""
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from autoal import cli
from autoal.sweep import runner

import bad_inputs as battery

TINY = {"dataset": "digits", "initial": 10, "batch": 5, "rounds": 1, "epochs": 1, "min_steps": 0, "scoring_tasks": 0,
        "strategies": ["random"]}


def test_a_pickle_planted_in_a_sweep_directory_runs_nothing(ray_local, tmp_path):
    """Tune's own state files are never unpickled on resume: the sweep is rebuilt from autoal's plan."""
    plan = tmp_path / "planted.yaml"
    plan.write_text(yaml.safe_dump({"name": "planted", "base": TINY, "axes": {"seed": [0]}}))
    out = tmp_path / "out"
    runner._claim(out.resolve(), runner.load_plan(str(plan)))          # a sweep directory, as a first run leaves it
    state = out / "tune" / "planted"
    state.mkdir(parents=True)
    payload = pickle.dumps(battery.harness.Planted(tmp_path / "PWNED"))
    for name in ("tuner.pkl", "trainable.pkl", "searcher-state-2026.pkl", "basic-variant-state-2026.pkl"):
        (state / name).write_bytes(payload)
    runner.run_sweep(str(plan), str(out), None, log=lambda line: None)
    assert not (tmp_path / "PWNED").exists()
    assert (out / "results.parquet").exists()


def test_a_planted_lock_symlink_leaves_its_target_intact(tmp_path, capsys):
    target = tmp_path / "thesis.tex"
    target.write_text("four years of work\n")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / ".autoal.runs.lock").symlink_to(target)
    assert cli.main(["run", "--dataset", "digits", "--out", str(tmp_path / "out")]) == 2
    assert "is a symbolic link" in capsys.readouterr().err
    assert target.read_text() == "four years of work\n"


def test_label_status_leaves_every_file_of_the_user(ray_local, tmp_path, capsys):
    project = battery.label_template(tmp_path / "template")
    names = (".gitignore", "notes/round-2.csv", ".~lock.queries.ods#", "queries/round-009.csv", "state/round7.pt",
             "queries/.round-001.csv.tmp", "mine.parquet")
    for name in names:
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        (project / name).write_text("mine\n")
    assert cli.main(["label", "status", str(project)]) == 0
    assert all((project / name).read_text() == "mine\n" for name in names)


def test_a_killed_command_is_rolled_back_by_its_journal_only(ray_local, tmp_path):
    """What a killed `next` wrote is undone exactly: the files its journal names, nothing else."""
    from autoal.runs.journal import Journal
    from autoal.labeling.project import LabelProject

    project = battery.label_template(tmp_path / "template")
    journal = Journal(project).begin(2)                      # a `next` of round 2, killed before its commit
    (project / "queries" / "round-002.csv").write_text("id,label\n")
    journal.record(project / "queries" / "round-002.csv", "new")
    (project / "queries" / ".round-002.csv.abc.tmp").write_text("half")
    journal.record(project / "queries" / ".round-002.csv.abc.tmp", "tmp")
    (project / "queries" / "round-003.csv").write_text("the user's own\n")
    LabelProject.open(project).close()
    assert not (project / "queries" / "round-002.csv").exists()
    assert not (project / "queries" / ".round-002.csv.abc.tmp").exists()
    assert (project / "queries" / "round-003.csv").read_text() == "the user's own\n"
    assert not (project / ".autoal-journal").exists() and (project / "queries" / "round-001.csv").exists()


def test_an_image_symlink_outside_the_folder_is_refused_and_one_inside_is_read(tmp_path, capsys):
    from autoal.data.images import image_files

    argv = battery.hostile.images(tmp_path, ("x.png", lambda p: p.symlink_to(battery.hostile.outside_png(tmp_path))))
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "outside the folder" in err and "x.png" in err and not (tmp_path / "lab").exists()
    (tmp_path / "photos" / "x.png").unlink()
    (tmp_path / "photos" / "x.png").symlink_to(tmp_path / "photos" / "img0.png")   # inside: followed
    files = image_files(tmp_path / "photos", ("cat", "dog"))
    assert len(files) == 5 and ("x.png", None) in files


def test_an_alias_bomb_is_refused_in_under_a_second(tmp_path):
    (tmp_path / "bomb.yaml").write_text(battery.hostile.BOMB)
    t0 = time.monotonic()
    proc = subprocess.run([str(Path(sys.executable).with_name("autoal")), "run", str(tmp_path / "bomb.yaml")],
                          capture_output=True, text=True, timeout=60)
    assert time.monotonic() - t0 < 1.0 + 2.0   # the interpreter's start-up, then the refusal itself
    assert proc.returncode == 2 and "alias bomb" in proc.stderr and len(proc.stderr) < 300
    from autoal import config

    t0 = time.monotonic()
    with pytest.raises(Exception, match="alias bomb"):
        config.load(tmp_path / "bomb.yaml")
    assert time.monotonic() - t0 < 1.0


def test_a_killed_driver_leaves_no_ray_process_after_10_s(tmp_path):
    """kill -9 of a driver that started its own Ray: its reaper ends the agents and workers."""
    code = ("import ray, time; from autoal.compute import runtime; runtime.init_ray(); "
            "ray.get([ray.remote(lambda: 1).remote() for _ in range(2)]); "
            "print(ray._private.worker._global_node.all_processes['raylet'][0].process.pid, flush=True); "
            "time.sleep(600)")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    for _ in range(3):   # Ray gives a node 30 s to start; a machine busy with other work may need another try
        driver = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True, env=env)
        raylet = driver.stdout.readline().strip()
        if raylet.isdigit():
            break
        driver.wait()
    assert raylet.isdigit(), driver.stderr.read()
    session = [int(p) for p in os.listdir("/proc") if p.isdigit() and _names_raylet(int(p), raylet)]
    assert session, "no process of the driver's Ray session was found"
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    deadline = time.monotonic() + 10
    while [p for p in session if _alive(p)] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [p for p in session if _alive(p)], "processes of a killed driver's Ray outlived it by 10 s"


def _names_raylet(pid: int, raylet: str) -> bool:
    try:
        return f"\0RAY_RAYLET_PID={raylet}\0".encode() in b"\0" + Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return False


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
