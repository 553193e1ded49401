"""`autoal serve`: a labeling project as a Label Studio ML backend, deployed on Ray Serve.

(No `from __future__ import annotations` here: FastAPI reads the routes' annotations at runtime.)

One replica holds the project (it is the project's one writer), on `--gpus` GPUs if asked (it
scores the images fetched from Label Studio); rounds train in Ray tasks placed
wherever the cluster has room, GPUs included when the project's config asks for them, so the same
command serves from a laptop or a cluster (RAY_ADDRESS). Requests are bounded (BODY_BYTES), and a
request autoal cannot take gets a 4xx (503 before the first round) with one line,
`autoal: error: ...`, and changes nothing.
"""

import os
import signal
import socket
import threading
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse
import ray
from ray import serve
from starlette.concurrency import run_in_threadpool

from autoal.compute import runtime
from autoal.errors import AutoALError
from autoal.safe_io import MESSAGE_CHARS, one_line
from autoal.studio.backend import StudioBackend, Unavailable
from autoal.studio.client import StudioClient
from autoal.studio.protocol import BODY_BYTES, TooLarge, parse_body

APP = "autoal"
app = FastAPI(title="autoal Label Studio ML backend")


@app.exception_handler(AutoALError)
def _refused(request: Request, exc: AutoALError) -> PlainTextResponse:
    status = 503 if isinstance(exc, Unavailable) else 413 if isinstance(exc, TooLarge) else 400
    return PlainTextResponse(f"autoal: error: {one_line(exc, MESSAGE_CHARS - 15)}\n", status_code=status)


async def _body(request: Request) -> dict:
    """The request's JSON object, read no further than BODY_BYTES."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > BODY_BYTES:
        raise TooLarge(f"request body of {declared} bytes exceeds {BODY_BYTES}")
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > BODY_BYTES:
            raise TooLarge(f"request body exceeds {BODY_BYTES} bytes")
    return parse_body(bytes(raw))


@serve.deployment(num_replicas=1, max_ongoing_requests=16, ray_actor_options={"num_cpus": 0.25})
@serve.ingress(app)
class StudioDeployment:
    """The HTTP face of StudioBackend: Label Studio's four routes."""

    def __init__(self, root: str, retrain_every: int, studio: StudioClient | None, gpus: float):
        runtime.quiet()
        self.backend = StudioBackend(root, retrain_every, studio, log=lambda line: print(line, flush=True),
                                     gpus=gpus)

    @app.get("/")
    @app.get("/health")
    def health(self) -> dict:
        return self.backend.health()

    @app.post("/setup")
    async def setup(self, request: Request) -> dict:
        return self.backend.setup(await _body(request))

    @app.post("/predict")
    async def predict(self, request: Request) -> dict:
        return await run_in_threadpool(self.backend.predict, await _body(request))

    @app.post("/webhook", status_code=201)
    async def webhook(self, request: Request) -> dict:
        return await run_in_threadpool(self.backend.webhook, await _body(request))

    async def wait_round(self, timeout: float) -> dict:
        """Health once no round trains; waits in a thread, so /health answers meanwhile (a sync method
        would hold the replica's event loop)."""
        await run_in_threadpool(self.backend.wait_round, timeout)
        return self.backend.health()


def run(root: str, host: str, port: int, retrain_every: int, studio: StudioClient | None = None,
        log=print, ready_timeout_s: float = 900, gpus: float = 0.0) -> None:
    """Serve until SIGINT or SIGTERM; returns after the application is shut down."""
    from autoal.labeling.project import LabelProject

    if retrain_every < 1:
        raise AutoALError(f"--retrain-every must be at least 1, got {retrain_every}")
    if not gpus >= 0:
        raise AutoALError(f"--gpus must be 0 or more, got {gpus:g}")
    LabelProject.open(root).close()   # a bad project (or one in use) is one line now, not a replica's traceback
    _check_port(host, port)
    runtime.init_ray()
    if gpus > ray.cluster_resources().get("GPU", 0):
        raise AutoALError(f"--gpus {gpus:g}: the Ray cluster offers {ray.cluster_resources().get('GPU', 0):g} GPUs")
    stop = threading.Event()
    for number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(number, lambda *_: stop.set())
    try:
        try:
            serve.start(http_options={"host": host, "port": port}, logging_config={"enable_access_log": False})
        except (RuntimeError, ray.exceptions.RayError) as exc:   # the port taken meanwhile, by Ray itself too
            raise AutoALError(f"cannot serve on {host}:{port}: {one_line(exc, 120)}; choose another --port") from None
        deployment = StudioDeployment.options(ray_actor_options={"num_cpus": 0.25, "num_gpus": gpus})
        handle = serve.run(deployment.bind(str(Path(root).resolve()), retrain_every, studio, gpus), name=APP,
                           route_prefix="/")
        url = f"http://{'localhost' if host in ('0.0.0.0', '::') else host}:{port}"
        if studio is not None and studio.project is not None:   # now: the first round's predictions reach it
            log(f"autoal: {studio.connect(url)}")
        health = _ready(handle.wait_round.remote(ready_timeout_s), stop)
        if health is not None:
            log(f"autoal: serving {root} at {url} ({health['model_version']}, retraining every {retrain_every} "
                "answers)")
            if studio is not None and studio.project is not None and health["told"] != health["round"]:
                studio.refresh_predictions(health["model_version"], log)   # it ended before the connection
        while not stop.wait(1.0):
            pass
    finally:   # on a cluster (RAY_ADDRESS) only this application goes; a local Ray ends with everything in it
        serve.delete(APP) if os.environ.get("RAY_ADDRESS") else ray.shutdown()
    log("autoal: stopped")


def _ready(response, stop: threading.Event) -> dict | None:
    """The backend's health once its first round is served; None if told to stop first (a signal
    during a first round that takes minutes stops at once)."""
    while not stop.is_set():
        try:
            return response.result(timeout_s=1.0)
        except TimeoutError:
            continue
    return None


def _check_port(host: str, port: int) -> None:
    """Refuse a taken address in one line before Ray starts (its HTTP proxy would fail with a traceback)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise AutoALError(f"cannot listen on {host}:{port} ({exc.strerror}); choose another --port") from None
