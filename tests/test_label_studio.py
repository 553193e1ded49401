"""`autoal serve` against a real Label Studio server, and a real browser.

The test starts Label Studio itself (from .venv-ls, which `make test` installs with a migrated
SQLite database to copy; its dependencies clash with Ray's), on a free port, with a user and a
legacy API token made for it; then, as a labeling team would: a project with an image
classification config, 200 digit PNGs uploaded (and 6 more that only Label Studio holds, which
autoal fetches with the API key), `autoal serve --connect`, 20 annotations through the API. Then
the faults: Label Studio stopped while a round trains, and the backend killed with SIGKILL
mid-round and restarted. Every process it starts, it stops.
"""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import requests
from PIL import Image

import chromium
from autoal import cli
from autoal.data import images
from autoal.labeling import files as label_files
from autoal.studio.protocol import fetched_name
from test_labeling import CLASSES, CONFIG, write_digit_folder

ROOT = Path(__file__).resolve().parents[1]
LS_VENV = ROOT / ".venv-ls"
TOKEN = "autoal-test-token-0123456789"
USER, PASSWORD = "autoal@example.com", "autoal-test-password"
# where the Data Manager screenshot goes: the README's is refreshed with
# AUTOAL_SCREENSHOT=docs/label-studio-data-manager.png; by default a test's temporary directory
SCREENSHOT = os.environ.get("AUTOAL_SCREENSHOT")
RETRAIN = 20   # answers a round: one retrain for the 20 annotations (Label Studio takes ~25 s to store a round)

pytestmark = [pytest.mark.slow(seconds=200),
              pytest.mark.skipif(not (LS_VENV / ".installed").exists(),
                                 reason="Label Studio is not installed: `make .venv-ls/.installed` (make test does)")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(check, timeout: float, what: str, every: float = 1.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def stop(process: subprocess.Popen, sig=signal.SIGTERM, timeout: float = 60) -> None:
    """Signal the process group the test started, then make sure it is gone."""
    try:
        os.killpg(process.pid, sig)
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    except ProcessLookupError:
        pass


class LabelStudio:
    """A Label Studio server on a copy of the migrated template database."""

    def __init__(self, data: Path):
        if not data.exists():
            shutil.copytree(LS_VENV / "template", data)
        self.data, self.port = data, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.headers = {"Authorization": f"Token {TOKEN}"}
        self.log = open(data.parent / "label-studio.log", "ab")
        # a backend and webhook on this machine: Label Studio blocks local addresses unless told not to
        env = dict(os.environ, ML_BLOCK_LOCAL_IP="false", SSRF_PROTECTION_ENABLED="false",
                   SENTRY_DSN="", FRONTEND_SENTRY_DSN="", COLLECT_ANALYTICS="false", LATEST_VERSION_CHECK="false")
        self.process = subprocess.Popen(
            [str(LS_VENV / "bin" / "label-studio"), "start", "--no-browser", "--port", str(self.port),
             "--data-dir", str(data), "--username", USER, "--password", PASSWORD, "--user-token", TOKEN,
             "--enable-legacy-api-token"], stdout=self.log, stderr=subprocess.STDOUT, env=env, start_new_session=True)

    def wait_up(self) -> None:
        wait_until(self.up, 300, "Label Studio to start")

    def up(self) -> bool:
        assert self.process.poll() is None, (self.data.parent / "label-studio.log").read_text()[-2000:]
        try:
            return requests.get(self.url + "/health", timeout=5).ok
        except requests.RequestException:
            return False

    def api(self, method: str, path: str, **kwargs):
        response = requests.request(method, self.url + path, headers=self.headers, timeout=120, **kwargs)
        assert response.ok, f"{method} {path}: {response.status_code} {response.text[:300]}"
        return response.json() if response.content else None

    def tasks(self, project: int) -> list[dict]:
        return self.api("GET", f"/api/tasks/?project={project}&page_size=1000&fields=all")["tasks"]

    def poll_tasks(self, project: int) -> list[dict]:
        """The tasks, or none while Label Studio's SQLite is locked by its own write (it stores a round's
        predictions in one transaction, which on a loaded machine outlasts SQLite's 5 s busy wait)."""
        response = requests.get(f"{self.url}/api/tasks/?project={project}&page_size=1000&fields=all",
                                headers=self.headers, timeout=120)
        if response.status_code >= 500:
            return []
        assert response.ok, f"GET /api/tasks/: {response.status_code} {response.text[:300]}"
        return response.json()["tasks"]

    def stop(self) -> None:
        stop(self.process)
        self.log.close()


def upload_name(task: dict) -> str:
    return task["data"]["image"].rsplit("/", 1)[1].split("-", 1)[1]   # /data/upload/<p>/<8 hex>-<name>


def write_extra(folder: Path, n: int, size: int = 32) -> dict[str, str]:
    """n digit PNGs of the project's classes that are not in its folder: name -> class."""
    from sklearn.datasets import load_digits

    folder.mkdir()
    x, y = load_digits(return_X_y=True)
    truth = {}
    for k, i in enumerate(np.flatnonzero(y < 3)[-n:]):
        Image.fromarray((x[i].reshape(8, 8) * 255 / 16).astype(np.uint8)).resize((size, size)).save(
            folder / f"extra{k}.png")
        truth[f"extra{k}.png"] = CLASSES[y[i]]
    return truth


def newest(task: dict) -> dict:
    return max(task["predictions"], key=lambda p: int(p["model_version"].rsplit("-", 1)[1]))


class Backend:
    """`autoal serve` in its own process (and its own local Ray, which ends with it)."""

    def __init__(self, project: Path, log: Path, *args: str, port: int | None = None):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        self.log = log
        self.process = subprocess.Popen(
            [sys.executable, "-m", "autoal.cli", "serve", str(project), "--port", str(self.port),
             "--retrain-every", str(RETRAIN), *args], stdout=open(log, "ab"), stderr=subprocess.STDOUT,
            env=dict(env, LABEL_STUDIO_API_KEY=TOKEN), start_new_session=True)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def health(self) -> dict:
        assert self.process.poll() is None, self.output()[-3000:]
        try:
            return requests.get(self.url + "/health", timeout=10).json()
        except (requests.RequestException, ValueError):
            return {}

    def wait_served(self, round_: int, timeout: float = 300) -> dict:
        return wait_until(lambda: (h := self.health()).get("round", -1) >= round_ and not h["training"] and h,
                          timeout, f"round {round_} served")


def choice(truth: dict, task: dict) -> list[dict]:
    """An annotation's result: the task's true class, chosen in the project's <Choices>."""
    return [{"from_name": "label", "to_name": "image", "type": "choices",
             "value": {"choices": [truth[upload_name(task)]]}}]


def send_answers(backend: Backend, tasks: list[dict], truth: dict, first_id: int) -> None:
    """Annotation webhooks as Label Studio sends them, straight to the backend."""
    for number, t in enumerate(tasks):
        annotation = {"id": first_id + number, "was_cancelled": False, "task": t["id"], "result": choice(truth, t)}
        response = requests.post(backend.url + "/webhook", timeout=30, json={
            "action": "ANNOTATION_CREATED", "annotation": annotation, "task": t, "project": {"id": t["project"]}})
        assert response.status_code == 201 and response.json()["stored"] == 1


def ledger(project: Path) -> pd.DataFrame:
    return pd.read_parquet(project / "ledger.parquet")


def test_autoal_serves_a_real_label_studio(tmp_path):
    studio = LabelStudio(tmp_path / "label-studio")   # starting while the files and autoal's project are made
    backend = None
    try:
        truth = {Path(path).name: name for path, name in write_digit_folder(
            tmp_path / "digits", n=200, seeds_per_class=2, size=32, suffixes=("png",)).items()}
        truth.update(write_extra(tmp_path / "extra", 6))   # uploaded to Label Studio only
        (tmp_path / "config.yaml").write_text(CONFIG)
        project = tmp_path / "project"
        assert cli.main(["label", "init", str(project), "--pool", f"images:{tmp_path / 'digits'}@16", "--classes",
                         ",".join(CLASSES), "--config", str(tmp_path / "config.yaml"), "--strategy", "margin"]) == 0

        # the labeling team's side: a project, 200 images uploaded
        studio.wait_up()
        config = label_files.label_studio_config(CLASSES)
        ls_project = studio.api("POST", "/api/projects/", json={"title": "digits", "label_config": config})["id"]
        paths = sorted((tmp_path / "digits").rglob("*.png")) + sorted((tmp_path / "extra").glob("*.png"))
        for start in range(0, len(paths), 50):   # Django takes at most 100 files a request
            files = {f"file{k}": (p.name, p.read_bytes(), "image/png") for k, p in enumerate(paths[start:start + 50])}
            studio.api("POST", f"/api/projects/{ls_project}/import", files=files)
        assert len(studio.tasks(ls_project)) == 206

        # autoal's side: a labeling project on the same files, served and connected
        backend = Backend(project, tmp_path / "serve.log", "--label-studio", studio.url, "--connect", str(ls_project))
        wait_until(lambda: "connected to Label Studio" in backend.output(), 300, "autoal serve --connect")
        assert TOKEN not in backend.output()

        # every task gets a prediction with a score; ascending score is the strategy's order
        tasks = wait_until(lambda: (t := studio.poll_tasks(ls_project)) and all(t_["predictions"] for t_ in t) and t,
                           120, "predictions of every task")
        assert {newest(t)["model_version"] for t in tasks} == {"autoal-round-1"}
        assert all(0 < newest(t)["score"] <= 1 for t in tasks)
        extra = [t for t in tasks if upload_name(t).startswith("extra")]   # fetched into the pool, predicted
        assert len(extra) == 6 and all(newest(t)["result"][0]["value"]["choices"][0] in CLASSES for t in extra)
        assert sorted(p.name for p in (tmp_path / "digits").glob("label-studio-*.png")) == sorted(
            fetched_name(t["data"]["image"]) for t in extra)
        first = sorted(tasks, key=lambda t: (newest(t)["score"], t["id"]))
        first_order = [t["id"] for t in first]

        # a person labels the 20 least certain tasks in Label Studio
        labeled = first[:20]
        for t in labeled:
            studio.api("POST", f"/api/tasks/{t['id']}/annotations/", json={"result": choice(truth, t)})
        health = backend.wait_served(2)        # a round after 20 answers
        pool, sources = images.read_folder(f"{tmp_path / 'digits'}@16", CLASSES)
        by_name = {Path(s).name: int(i) for i, s in zip(pool.ids, sources)}
        pool_id = {upload_name(t): by_name[upload_name(t) if upload_name(t) in by_name else
                                           fetched_name(t["data"]["image"])] for t in tasks}
        rows = ledger(project)
        assert health["answers"] == 20 and len(rows) == 20
        assert sorted(rows["id"]) == sorted(pool_id[upload_name(t)] for t in labeled)
        assert dict(zip(rows["id"], rows["label"])) == {pool_id[upload_name(t)]: CLASSES.index(truth[upload_name(t)])
                                                        for t in labeled}

        # a replayed webhook (Label Studio's own payload, sent again) stores nothing
        task0 = next(t for t in studio.tasks(ls_project) if t["id"] == labeled[0]["id"])
        replay = {"action": "ANNOTATION_CREATED", "annotation": task0["annotations"][0], "task": task0,
                  "project": {"id": ls_project}}
        response = requests.post(backend.url + "/webhook", json=replay, timeout=30)
        assert response.status_code == 201 and response.json()["stored"] == 0
        assert len(ledger(project)) == 20

        # the new round's predictions reach Label Studio; their order differs from round 1's
        tasks = wait_until(lambda: (t := studio.poll_tasks(ls_project)) and all(
            newest(t_)["model_version"] == f"autoal-round-{health['round']}" for t_ in t) and t, 120,
            "the new round's predictions")
        assert all(len(t["predictions"]) == len({p["model_version"] for p in t["predictions"]}) for t in tasks)
        order = [t["id"] for t in sorted(tasks, key=lambda t: (newest(t)["score"], t["id"]))]
        assert order != first_order
        assert {t["id"] for t in tasks if newest(t)["score"] == 1.0} >= {t["id"] for t in labeled}

        # a malformed webhook: a 4xx with one line, nothing stored
        before = (project / "ledger.parquet").read_bytes()
        for body in (b"{not json", json.dumps({"action": "ANNOTATION_CREATED"}).encode()):
            response = requests.post(backend.url + "/webhook", data=body, timeout=30)
            assert response.status_code == 400 and response.text.startswith("autoal: error: ")
            assert response.text.count("\n") == 1
        response = requests.post(backend.url + "/webhook", data=b" " * (17 << 20), timeout=60)
        assert response.status_code == 413
        assert (project / "ledger.parquet").read_bytes() == before

        # the Data Manager sorted by prediction score, in a real browser
        screenshot(studio, ls_project, Path(SCREENSHOT) if SCREENSHOT else tmp_path / "data-manager.png")

        # Label Studio goes down while a round trains: the backend keeps serving
        served = health["round"]
        studio.stop()
        send_answers(backend, first[20:40], truth, 10_000)   # webhooks Label Studio sent before it went down
        health = backend.wait_served(served + 1)
        assert health["answers"] == 40
        wait_until(lambda: "predictions not refreshed" in backend.output(), 60, "the refresh failure logged")
        assert backend.process.poll() is None

        # killed (SIGKILL) mid-round and restarted: no answer lost, the last finished round served
        send_answers(backend, first[40:60], truth, 20_000)
        wait_until(lambda: backend.health().get("training"), 30, "the round to start")
        stop(backend.process, signal.SIGKILL)
        backend = Backend(project, tmp_path / "serve-2.log", port=backend.port)   # Label Studio knows this one
        health = wait_until(lambda: backend.health().get("round") is not None and backend.health(), 300,
                            "the restarted backend")
        assert health["round"] == served + 1 and health["answers"] == 60
        assert len(ledger(project)) == 60
        assert health["training"]   # the lost round trains again (tests/test_studio.py waits for it to finish)
    finally:
        if backend is not None:
            stop(backend.process)
        studio.stop()


def screenshot(studio: LabelStudio, ls_project: int, out: Path) -> None:
    """Log in as the person would, open the Data Manager sorted by prediction score, save it to `out`."""
    if not chromium.CHROMIUM.exists():
        pytest.fail("no /usr/bin/chromium: `make test` installs it (apt-get install chromium)")
    session = requests.Session()
    session.get(studio.url + "/user/login/", timeout=30)
    session.post(studio.url + "/user/login/", timeout=30, allow_redirects=False,
                 data={"email": USER, "password": PASSWORD, "csrfmiddlewaretoken": session.cookies["csrftoken"]},
                 headers={"Referer": studio.url + "/user/login/"})
    assert "sessionid" in session.cookies
    shown = {"tasks:id", "tasks:image", "tasks:predictions_score", "tasks:predictions_model_versions",
             "tasks:predictions_results"}
    columns = [f"{c['target']}:{c['id']}" for c in studio.api("GET", f"/api/dm/columns/?project={ls_project}")["columns"]]
    hidden = [c for c in columns if c not in shown]
    view = studio.api("POST", "/api/dm/views/", json={"project": ls_project, "data": {
        "title": "autoal", "ordering": ["tasks:predictions_score"],
        "hiddenColumns": {"explore": hidden, "labeling": hidden},
        "columnsWidth": {"tasks:predictions_results": 520, "tasks:predictions_model_versions": 260}}})
    cookies = [{"name": c.name, "value": c.value, "url": studio.url} for c in session.cookies]
    chromium.screenshot(f"{studio.url}/projects/{ls_project}/data?tab={view['id']}", cookies,
                        "document.body.innerText.includes('autoal-round')", out)
    with Image.open(out) as image:
        assert image.size[0] >= 1200 and len(np.unique(np.asarray(image.convert("L")))) > 16   # rendered, not blank
