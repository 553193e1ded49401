"""The Label Studio ML backend without Label Studio: the protocol's shapes, and the backend's
rounds, webhooks and faults on a real labeling project (digits, classes 0-2, 3 seeds each)."""
import base64
import http.server
import io
import json
import socket
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from autoal import cli
from autoal.errors import AutoALError
from autoal.labeling import estimate, files as label_files
from autoal.studio import fetch, protocol as studio_protocol
from autoal.studio.backend import StudioBackend, Unavailable
from autoal.studio.client import StudioClient
from autoal.studio.protocol import BODY_BYTES, TaskIndex, parse_body, webhook_event
import test_cli
from test_labeling import CLASSES, CONFIG, write_digit_folder


def task(source: str, number: int) -> dict:
    """A task as Label Studio stores an uploaded file: `/data/upload/<project>/<8 hex>-<name>`."""
    return {"id": number, "data": {"image": f"/data/upload/1/{number:08x}-{Path(source).name}"}}


def annotation_event(action: str, number: int, task_: dict, choice: str | None, cancelled: bool = False) -> dict:
    result = [] if choice is None else [{"from_name": "label", "to_name": "image", "type": "choices",
                                         "value": {"choices": [choice]}}]
    return {"action": action, "annotation": {"id": number, "result": result, "was_cancelled": cancelled,
                                             "task": task_["id"]}, "task": task_, "project": {"id": 1}}


# --- the protocol, as data ----------------------------------------------------------------------

def test_bodies_that_are_not_json_objects_are_refused():
    assert parse_body(b'{"tasks": []}') == {"tasks": []}
    for raw, message in ((b"[1]", "not an object"), (b"{", "not JSON"), (b"\xff\xfe", "not JSON"),
                         (b"[" * 100_000, "not JSON"), (b" " * (BODY_BYTES + 1), "exceeds")):
        with pytest.raises(AutoALError, match=message):
            parse_body(raw)


def test_tasks_map_to_pool_samples_by_id_or_by_uploaded_file_name():
    index = TaskIndex(np.array([5, 7, 9]), np.array(["/p/a/digit1.png", "/p/digit2.png", "/p/b/digit1.png"]))
    assert index.pool_id({"data": {"autoal_id": "7"}}) == 7
    assert index.pool_id({"data": {"autoal_id": "8"}}) is None            # not a pool id
    assert index.pool_id({"data": {"image": "/data/upload/3/5f0e9a1c-digit2.png"}}) == 7
    assert index.pool_id({"data": {"image": "http://host/files/digit2.png?x=1"}}) == 7
    assert index.pool_id({"data": {"image": "/data/upload/3/5f0e9a1c-digit1.png"}}) is None   # two pool files
    assert index.pool_id({"data": {"image": "data:image/png;base64,AAAA"}}) is None
    assert index.pool_id({"data": "x"}) is None and index.pool_id([]) is None


def test_predictions_follow_the_projects_labeling_config():
    own = studio_protocol.schema(label_files.label_studio_config(CLASSES), CLASSES)
    assert own == studio_protocol.Schema() == studio_protocol.schema(None, CLASSES)
    config = ('<View><Text name="t" value="$note"/><Image name="img" value="$url"/>'
              '<Choices name="digit" toName="img"><Choice value="zero"/><Choice value="one"/>'
              '<Choice value="two"/><Choice value="three"/></Choices></View>')
    custom = studio_protocol.schema(config, CLASSES)
    assert custom == studio_protocol.Schema("digit", "img", "url")
    result = studio_protocol.prediction("one", 0.25, "autoal-round-2", custom)
    assert result == {"result": [{"from_name": "digit", "to_name": "img", "type": "choices",
                                  "value": {"choices": ["one"]}}], "score": 0.25, "model_version": "autoal-round-2"}
    index = TaskIndex(np.array([3]), np.array(["/p/digit2.png"]))
    assert index.pool_id({"data": {"url": "/data/upload/1/0a1b2c3d-digit2.png"}}, custom.key) == 3
    for bad, message in ((config.replace('<Choice value="two"/>', ""), "lacks the project's classes two"),
                         (config.replace('toName="img"', 'toName="t"'), "no <Image> with <Choices>"),
                         ("<View><Image", "not XML")):
        with pytest.raises(AutoALError, match=message):
            studio_protocol.schema(bad, CLASSES)


def test_webhook_events_carry_annotations_or_deleted_ids():
    t = task("/p/digit2.png", 4)
    action, items = webhook_event(annotation_event("ANNOTATION_CREATED", 11, t, "one"))
    assert action == "ANNOTATION_CREATED" and items[0][0] == 11 and items[0][1]["task"] == t
    assert webhook_event({"action": "ANNOTATIONS_DELETED", "annotations": [{"id": 3}, {"id": 4}]}) == \
        ("ANNOTATIONS_DELETED", [(3, {}), (4, {})])
    assert webhook_event({"action": "PROJECT_UPDATED", "project": {}}) == ("PROJECT_UPDATED", [])
    for body, message in (({}, "no 'action'"), ({"action": "ANNOTATION_CREATED", "task": {}}, "lacks"),
                          ({"action": "ANNOTATION_UPDATED", "annotation": {"id": "1"}, "task": {}}, "integer"),
                          ({"action": "ANNOTATIONS_DELETED", "annotations": [{"id": None}]}, "integer ids")):
        with pytest.raises(AutoALError, match=message):
            webhook_event(body)


# --- the backend on a real project ------------------------------------------------------------------

@pytest.fixture(scope="module")
def project(ray_local, tmp_path_factory):
    base = tmp_path_factory.mktemp("studio")
    truth = write_digit_folder(base / "digits", n=60)
    (base / "config.yaml").write_text(CONFIG)
    root = base / "project"
    assert cli.main(["label", "init", str(root), "--pool", f"images:{base / 'digits'}@16", "--classes",
                     ",".join(CLASSES), "--config", str(base / "config.yaml"), "--strategy", "margin",
                     "--cv-folds", "2"]) == 0   # each round's estimate: 2 more fits
    return dict(root=root, truth={Path(k).name: v for k, v in truth.items()}, digits=base / "digits")


def ledger(root: Path) -> pd.DataFrame:
    path = root / "ledger.parquet"
    return pd.read_parquet(path) if path.exists() else pd.DataFrame(columns=["id", "label"])


def test_backend_serves_rounds_stores_answers_and_retrains(project):
    root, truth = project["root"], project["truth"]
    backend = StudioBackend(root, retrain_every=4, log=lambda line: None)
    try:
        backend.wait_round()
        first = backend.health()
        assert first["model_version"] == "autoal-round-1" and not first["training"]
        # no test split: the round records the cross-validation estimate that `label next` records
        project_ = backend.project
        recorded = pd.read_parquet(root / "results.parquet").set_index("round").loc[0]
        assert recorded["accuracy_estimated"] and recorded["accuracy"] == pytest.approx(estimate.cv_accuracy(
            project_.model_recipe, project_.cfg, project_.pool.x, project_.known, np.flatnonzero(project_.known >= 0),
            folds=2, seed=project_.seed, round_=0))
        sources = backend.project.sources
        tasks = [task(s, n) for n, s in enumerate(sources) if Path(s).parent == project["digits"]]
        response = backend.predict({"tasks": tasks})
        results = response["results"]
        assert len(results) == len(tasks) and response["model_version"] == "autoal-round-1"
        assert all(r["model_version"] == "autoal-round-1" and 0 < r["score"] <= 1 for r in results)
        assert all(r["result"][0]["value"]["choices"][0] in CLASSES for r in results)
        # ascending score is margin's order: the smallest margin (least sure) first
        order = [tasks[i] for i in np.argsort([r["score"] for r in results], kind="stable")]
        first_scores = {t["id"]: r["score"] for t, r in zip(tasks, results)}

        # a person answers the five least certain tasks (a skip among them); a replay stores nothing
        answered = order[:5]
        for number, t in enumerate(answered):
            name = Path(t["data"]["image"]).name.split("-", 1)[1]
            event = annotation_event("ANNOTATION_CREATED", 100 + number, t, truth[name], cancelled=number == 4)
            assert backend.webhook(event)["stored"] == 1
            assert backend.webhook(event)["stored"] == 0
        rows = ledger(root)
        assert len(rows) == 5 and rows["id"].is_unique and (rows["label"] == -2).sum() == 1
        backend.wait_round()
        second = backend.health()
        assert second["model_version"] == "autoal-round-2" and second["answers"] == 5
        again = backend.predict({"tasks": tasks})["results"]
        assert {r["model_version"] for r in again} == {"autoal-round-2"}
        assert [first_scores[t["id"]] for t in tasks] != [r["score"] for r in again]
        done = {t["id"] for t in answered[:4]}
        assert all(r["score"] == 1.0 for t, r in zip(tasks, again) if t["id"] in done)

        # an updated annotation changes the answer; a deleted one withdraws it
        t = answered[0]
        name = Path(t["data"]["image"]).name.split("-", 1)[1]
        other = next(c for c in CLASSES if c != truth[name])
        assert backend.webhook(annotation_event("ANNOTATION_UPDATED", 100, t, other))["stored"] == 1
        pool_id = backend.index.pool_id(t)
        assert backend.project.answers.set_index("id").loc[pool_id, "label"] == CLASSES.index(other)
        assert backend.webhook({"action": "ANNOTATIONS_DELETED", "annotations": [{"id": 100}]})["stored"] == 1
        assert backend.webhook({"action": "ANNOTATIONS_DELETED", "annotations": [{"id": 100}]})["stored"] == 0
        assert backend.project.answers.set_index("id").loc[pool_id, "label"] == -2
    finally:
        backend.close()


def test_malformed_webhooks_change_nothing(project):
    root = project["root"]
    before = {p.name: p.read_bytes() for p in root.glob("*.parquet")}
    backend = StudioBackend(root, retrain_every=100, log=lambda line: None)
    try:
        t = task(backend.project.sources[-1], 1)
        for body in ({"action": "ANNOTATION_CREATED"}, annotation_event("ANNOTATION_CREATED", 7, t, "seven"),
                     {"action": "ANNOTATIONS_DELETED", "annotations": "all"}):
            with pytest.raises(AutoALError) as refused:
                backend.webhook(body)
            assert "\n" not in str(refused.value)
        with pytest.raises(AutoALError, match="tasks"):
            backend.predict({"tasks": "all"})
    finally:
        backend.close()
    assert {p.name: p.read_bytes() for p in root.glob("*.parquet")} == before


def test_a_backend_stopped_mid_round_serves_the_last_round_and_loses_no_answer(project, tmp_path):
    root = project["root"]
    backend = StudioBackend(root, retrain_every=1, log=lambda line: None)
    served = backend.health()["model_version"]
    t = task(backend.project.sources[-1], 1)
    name = Path(backend.project.sources[-1]).name
    backend.webhook(annotation_event("ANNOTATION_CREATED", 500, t, project["truth"][name]))
    assert backend.health()["training"]          # the round that this answer started
    backend.close()                               # stopped before the round commits: it is lost, nothing else
    answers = len(ledger(root))
    restarted = StudioBackend(root, retrain_every=1, log=lambda line: None)
    try:
        assert len(ledger(root)) == answers
        health = restarted.health()
        assert health["model_version"] == served and health["training"]   # serves the last round, retrains
        restarted.wait_round()
        assert restarted.health()["round"] == int(served.rsplit("-", 1)[1]) + 1
    finally:
        restarted.close()


def test_predict_before_the_first_round_is_unavailable(ray_local, tmp_path):
    truth = write_digit_folder(tmp_path / "digits", n=12, seeds_per_class=0)
    (tmp_path / "config.yaml").write_text(CONFIG)
    assert truth and cli.main(["label", "init", str(tmp_path / "p"), "--pool", f"images:{tmp_path / 'digits'}@16",
                               "--classes", ",".join(CLASSES), "--config", str(tmp_path / "config.yaml")]) == 0
    backend = StudioBackend(tmp_path / "p", retrain_every=1, log=lambda line: None)
    try:
        if backend.health()["round"] is None:
            with pytest.raises(Unavailable):
                backend.predict({"tasks": []})
        backend.wait_round()   # no labels: the initial pool's rule orders the tasks, no class is predicted
        results = backend.predict({"tasks": [task(s, n) for n, s in enumerate(backend.project.sources)]})["results"]
        assert all(r["result"] == [] for r in results)
        assert sorted(r["score"] for r in results) == pytest.approx((np.arange(12) + 1) / 12)
    finally:
        backend.close()
    assert json.dumps(results)


def test_serve_refuses_bad_arguments_in_one_line_before_starting_ray(capsys, tmp_path, monkeypatch, project):
    monkeypatch.delenv("LABEL_STUDIO_API_KEY", raising=False)
    (tmp_path / "key").write_text("")
    connect = ["--connect", "3", "--label-studio"]
    for argv, message in (
            ([], "is not a labeling project"),
            (["--retrain-every", "0"], "--retrain-every must be at least 1"),
            (["--gpus", "-1"], "--gpus must be 0 or more"),
            (["--connect", "3"], "--connect PROJECT_ID needs --label-studio URL"),
            ([*connect, "http://ls"], "needs an API key"),
            ([*connect, "http://ls", "--api-key-file", str(tmp_path / "key")], "needs an API key")):
        test_cli.fails(capsys, ["serve", str(tmp_path), *argv], message)
    with socket.socket() as taken:   # a port in use
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        test_cli.fails(capsys, ["serve", str(project["root"]), "--port", str(taken.getsockname()[1])],
                       "choose another --port")
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", "secret-key-1234")
    assert "secret" not in test_cli.fails(capsys, ["serve", str(tmp_path), *connect, "ls:8080"], "not an http(s) URL")


class FakeLabelStudio(http.server.BaseHTTPRequestHandler):
    """Answers as Label Studio's API does for what autoal asks; records each request."""
    seen: list = []

    def _answer(self):
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        self.seen.append((self.command, self.path, self.headers.get("Authorization"), body))
        status, reply = 200, {}
        if self.path == "/api/token/refresh/":
            reply = {"access": "short-lived"}
        elif self.headers.get("Authorization") == "Token wrong-key-5678":
            status, reply = 401, {"detail": "Invalid token."}
        elif self.command == "GET":
            reply = []
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(json.dumps(reply).encode())

    do_GET = do_POST = do_PATCH = _answer

    def log_message(self, *args):
        pass


def test_studio_client_authenticates_without_ever_showing_the_key():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeLabelStudio)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        FakeLabelStudio.seen.clear()
        assert StudioClient(url, "legacy-key-1234", 7).connect("http://127.0.0.1:9090")
        assert [(m, p.split("?")[0]) for m, p, _, _ in FakeLabelStudio.seen] == [
            ("GET", "/api/ml/"), ("POST", "/api/ml/"), ("GET", "/api/webhooks/"), ("POST", "/api/webhooks/")]
        assert {a for _, _, a, _ in FakeLabelStudio.seen} == {"Token legacy-key-1234"}
        hook = json.loads(FakeLabelStudio.seen[-1][3])
        assert hook["url"] == "http://127.0.0.1:9090/webhook" and "ANNOTATIONS_DELETED" in hook["actions"]

        FakeLabelStudio.seen.clear()   # a personal access token (a JWT) is exchanged for a Bearer token
        lines = []
        assert StudioClient(url, "aaa.bbb.ccc", 7).refresh_predictions("autoal-round-2", lines.append)
        assert FakeLabelStudio.seen[0][:2] == ("POST", "/api/token/refresh/")
        assert {a for _, _, a, _ in FakeLabelStudio.seen[1:]} == {"Bearer short-lived"}
        assert json.loads(FakeLabelStudio.seen[-1][3]) == {"model_version": "autoal-round-2"} and not lines

        with pytest.raises(AutoALError, match="refused the API key") as refused:
            StudioClient(url, "wrong-key-5678", 7).connect("http://127.0.0.1:9090")
        assert "wrong-key" not in str(refused.value) and repr(StudioClient(url, "wrong-key-5678", 7)).count("wrong") == 0
    finally:
        server.shutdown()
        server.server_close()
    lines = []   # Label Studio down: one line, no exception, no key
    assert not StudioClient(url, "legacy-key-1234", 7).refresh_predictions("autoal-round-3", lines.append)
    assert len(lines) == 1 and "did not answer" in lines[0] and "legacy-key" not in lines[0]


# --- task images fetched from Label Studio with its API key ----------------------------------------

KEY = "fetch-key-0123456789"


def png(seed: int, size: int = 16) -> bytes:
    out = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (size, size), dtype=np.uint8)).save(out, "PNG")
    return out.getvalue()


class FakeStorage(http.server.BaseHTTPRequestHandler):
    """Label Studio's file routes: a PNG, a body over the limit, a file that is not an image (each only with
    the key, 401 without), and a presign that redirects to another origin (a cloud storage)."""
    seen: list = []
    other = ""   # the storage's origin, where the presign redirects

    def do_GET(self):
        self.seen.append((self.path, self.headers.get("Authorization")))
        name = self.path.rsplit("/", 1)[-1]
        if self.path.startswith("/bucket/"):
            return self._send(200, png(7))
        if self.headers.get("Authorization") != f"Token {KEY}":
            return self._send(401, b'{"detail": "Authentication credentials were not provided."}')
        if self.path.startswith("/tasks/"):
            self.send_response(302)
            self.send_header("Location", f"{self.other}/bucket/x.png?X-Amz-Signature=secret")
            return self.end_headers()
        body = {"big.png": b"\0" * 50_000, "text.png": b"not an image at all"}.get(name, png(len(name)))
        self._send(200 if name != "gone.png" else 404, body)

    def _send(self, status: int, body: bytes):
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture()
def storage():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeStorage)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    FakeStorage.seen.clear()
    FakeStorage.other = f"http://localhost:{server.server_address[1]}"   # same server, another origin
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_task_references_resolve_to_label_studio_urls():
    client = StudioClient("http://ls:8080", KEY)
    assert fetch.source_url("/data/upload/3/5f0e9a1c-a.png", 1, client) == "/data/upload/3/5f0e9a1c-a.png"
    assert fetch.source_url("upload/3/a.png", 1, client) == "/data/upload/3/a.png"
    assert fetch.source_url("/data/local-files/?d=imgs/a.png", 1, client) == "/data/local-files/?d=imgs/a.png"
    assert fetch.source_url("http://ls:8080/data/upload/3/a.png", 1, client) == "http://ls:8080/data/upload/3/a.png"
    assert fetch.source_url("s3://bucket/a.png", 12, client) == \
        f"/tasks/12/presign/?fileuri={base64.urlsafe_b64encode(b's3://bucket/a.png').decode()}"
    for foreign in ("http://elsewhere/a.png", "https://ls:8080/a.png", "//elsewhere/a.png", "data:image/png;base64,A",
                    None, 3):
        assert fetch.source_url(foreign, 1, client) is None
    assert fetch.source_url("gs://bucket/a.png", None, client) is None   # a presign needs the task's id


def test_downloads_send_the_key_to_label_studio_only_and_are_bounded(storage):
    client = StudioClient(storage, KEY)
    assert client.download("/data/upload/1/a.png", 10_000, 5) == png(len("a.png"))
    assert client.download("/tasks/4/presign/?fileuri=czM6Ly9i", 10_000, 5) == png(7)   # redirected elsewhere
    assert FakeStorage.seen[-1] == ("/bucket/x.png?X-Amz-Signature=secret", None)       # without the key
    failures = {}
    for who, path in ((StudioClient(storage, "wrong-key-5678"), "/data/upload/1/a.png"),
                      (client, "/data/upload/1/big.png"), (client, "/data/upload/1/gone.png")):
        with pytest.raises(AutoALError) as refused:
            who.download(path, 10_000, 5)
        failures[path.rsplit("/", 1)[1] + ("-401" if who is not client else "")] = str(refused.value)
    assert "HTTP 401" in failures["a.png-401"] and "over the limit" in failures["big.png"]
    assert "HTTP 404" in failures["gone.png"]
    with pytest.raises(AutoALError, match="did not answer"):
        StudioClient("http://127.0.0.1:9", KEY).download("/data/upload/1/a.png", 10_000, 5)
    with pytest.raises(AutoALError, match="not an image"):
        fetch.image_png(b"not an image at all", gray=True)
    assert Image.open(io.BytesIO(fetch.image_png(png(1, 40), gray=False))).mode == "RGB"
    assert not any(KEY in m or "wrong-key" in m or "secret" in m for m in failures.values())


def test_tasks_only_in_label_studio_are_fetched_into_the_pool_and_predicted(project, storage, monkeypatch):
    monkeypatch.setattr(fetch, "MAX_BYTES", 10_000)
    root, lines = project["root"], []
    digits = project["digits"]
    backend = StudioBackend(root, retrain_every=1000, studio=StudioClient(storage, KEY), log=lines.append)
    try:
        backend.wait_round()
        size, answers = len(backend.project.pool), len(ledger(root))
        known = task(backend.project.sources[0], 1)
        new = {"id": 2, "data": {"image": "/data/upload/1/0a1b2c3d-new.png"}}
        cloud = {"id": 3, "data": {"image": "s3://bucket/scan.png"}}
        bad = [{"id": 4, "data": {"image": "/data/upload/1/big.png"}},
               {"id": 5, "data": {"image": "/data/upload/1/text.png"}},
               {"id": 6, "data": {"image": "/data/upload/1/gone.png"}}]
        foreign = {"id": 7, "data": {"image": "http://elsewhere.invalid/x.png"}}
        results = backend.predict({"tasks": [known, new, cloud, *bad, foreign]})["results"]
        for r in results[:3]:   # a real prediction: the model's class and a score among the round's tasks
            assert r["result"][0]["value"]["choices"][0] in CLASSES and 0 < r["score"] <= 1
        assert all(r["result"] == [] for r in results[3:])
        assert len(backend.project.pool) == size + 2 and len(ledger(root)) == answers
        assert sorted(p.name for p in digits.glob("label-studio-*.png")) == sorted(
            studio_protocol.fetched_name(t["data"]["image"]) for t in (new, cloud))
        failed = [line for line in lines if "not fetched" in line]
        assert len(failed) == 3 and [line.split(":")[0] for line in failed] == ["task 4", "task 5", "task 6"]
        assert not any(KEY in line or "secret" in line for line in lines)

        # an answer to a fetched task goes into the ledger under its new pool id
        event = annotation_event("ANNOTATION_CREATED", 900, new, "two")
        assert backend.webhook(event)["stored"] == 1
        assert ledger(root)["id"].iloc[-1] == backend.index.pool_id(new)
    finally:
        backend.close()
    seen = len(FakeStorage.seen)   # reopened: the fetched files are the pool's, nothing is downloaded again
    backend = StudioBackend(root, retrain_every=1000, studio=StudioClient(storage, KEY), log=lines.append)
    try:
        again = backend.predict({"tasks": [new, cloud]})["results"]
        assert [r["result"] != [] for r in again] == [True, True] and len(FakeStorage.seen) == seen
    finally:
        backend.close()
