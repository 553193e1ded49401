"""Tasks whose image lives only in Label Studio: downloaded with its API key into the pool's folder.

A task uploaded to Label Studio, or in one of its storages, shows its image by a reference that
Label Studio resolves (as its ML backend SDK, label_studio_sdk's `get_local_path`, does too):
  /data/upload/<project>/<file>, /storage-data/uploaded/?filepath=..., /data/local-files/?d=...,
  /tasks/<id>/presign/?fileuri=..., any URL on Label Studio's own origin: fetched from it with the key;
  s3://, gs://, azure-blob:// URIs: from /tasks/<task id>/presign/?fileuri=<base64>, which redirects
  to a presigned URL of the storage (followed without the key).
A URL on any other host is not fetched: /predict is open to whoever reaches the backend, which must
not become a way to make it fetch arbitrary addresses.

The image is checked by PIL (size, pixels, a full decode) and written, re-encoded as PNG in the
pool's colour mode, into the `images:` folder under `fetched_name`, atomically: the folder then
holds it as if the person had put it there (the pool-added path: read, and embedded once, when the
project's pool is read again), and a backend killed meanwhile leaves either no file or the whole
one. Nothing else changes until a person answers the task.
"""
from __future__ import annotations

import base64
import io
import time
from pathlib import Path

from PIL import Image

from autoal.errors import AutoALError
from autoal.safe_io import atomic_write, one_line
from autoal.studio.client import StudioClient
from autoal.studio.protocol import fetched_name

MAX_BYTES = 32 << 20          # an image file as Label Studio serves it
MAX_PIXELS = 40_000_000       # decoded, before the pool resizes it
SECONDS = 30.0                # one download
BUDGET_S = 60.0               # all downloads of one request (Label Studio waits 100 s for /predict)
CLOUD = ("s3://", "gs://", "azure-blob://")
FORMATS = ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP")   # the image pool's file types; nothing PIL hands to a tool


def source_url(image, task_id, studio: StudioClient) -> str | None:
    """Where Label Studio serves a task's image (None: nothing autoal may fetch from it)."""
    if not isinstance(image, str) or not image or image.startswith("data:"):
        return None
    if image.startswith(CLOUD):
        if not isinstance(task_id, int):
            return None
        return f"/tasks/{task_id}/presign/?fileuri={base64.urlsafe_b64encode(image.encode()).decode()}"
    if image.startswith(("upload/", "/upload/")):   # an export's raw upload key
        return "/data/" + image.lstrip("/")
    if image.startswith("/") and not image.startswith("//"):
        return image
    return image if studio.owns(image) else None


def image_png(raw: bytes, gray: bool) -> bytes:
    """`raw` decoded by PIL (bounded), re-encoded as PNG in the pool's mode; anything else is an error."""
    try:
        with Image.open(io.BytesIO(raw), formats=FORMATS) as image:
            if image.width * image.height > MAX_PIXELS:
                raise AutoALError(f"an image of {image.width}x{image.height} pixels is over {MAX_PIXELS}")
            image.load()
            out = io.BytesIO()
            image.convert("L" if gray else "RGB").save(out, format="PNG")
    except (OSError, ValueError, Image.DecompressionBombError, SyntaxError) as exc:
        raise AutoALError(f"not an image PIL can read ({type(exc).__name__})") from None
    return out.getvalue()


def fetch_images(studio: StudioClient, tasks: list[tuple[str, object]], folder: Path, gray: bool, log) -> int:
    """Download each (image reference, task id) into `folder`; returns how many were added. A task that
    fails (Label Studio down, the key refused, not an image, over a limit, the folder not writable) is
    one logged line."""
    added, deadline = 0, time.monotonic() + BUDGET_S
    for image, task_id in tasks:
        path = folder / fetched_name(image)
        if path.exists():
            continue
        what = f"task {task_id if isinstance(task_id, int) else '?'}"
        if time.monotonic() > deadline:
            log(f"{what}: not fetched from Label Studio within this request's {BUDGET_S:.0f} s; the next one will")
            continue
        try:
            raw = studio.download(source_url(image, task_id, studio), MAX_BYTES, SECONDS)
            atomic_write(path, image_png(raw, gray))
            added += 1
        except (AutoALError, OSError) as exc:   # OSError: the folder refused the file
            log(f"{what}: image not fetched from Label Studio, no prediction: {one_line(exc, 200)}")
    return added
