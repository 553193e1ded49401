"""What autoal asks of a Label Studio server through its API: connect the backend, refresh predictions,
download a task's image.

The API key comes from LABEL_STUDIO_API_KEY or a file (`--api-key-file`, read bounded, first line)
and is never printed: messages name the server and the HTTP status, never a header. A legacy
token is sent as `Authorization: Token <key>`; a personal access token (a JWT) is exchanged at
/api/token/refresh for a short-lived access token sent as `Bearer`. The key goes to the server's
own origin only: a download that Label Studio redirects elsewhere (a cloud storage's presigned URL)
follows the redirect without it.
"""
from __future__ import annotations

import os
import time
from urllib.parse import urljoin, urlsplit

import requests

from autoal.errors import AutoALError
from autoal.safe_io import CONFIG_BYTES, one_line, read_text, shown

KEY_ENV = "LABEL_STUDIO_API_KEY"
TIMEOUT_S = (3, 60)                   # connect, read (Label Studio asks the backend for predictions inside a call)
EVENTS = ["ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_DELETED"]
REDIRECTS = 3                         # a presign answers with one redirect to the storage


def api_key(key_file: str | None) -> str:
    """The key from `key_file`, else from LABEL_STUDIO_API_KEY."""
    key = read_text(key_file, CONFIG_BYTES, "API key file").strip().split("\n")[0].strip() if key_file \
        else os.environ.get(KEY_ENV, "").strip()
    if not key:
        raise AutoALError(f"Label Studio needs an API key: set {KEY_ENV} or pass --api-key-file "
                          "(Label Studio: Account & Settings, Access Token)")
    return key


class StudioClient:
    """One Label Studio project, reached at `url` with an API key."""

    def __init__(self, url: str, key: str, project: int | None = None):
        if not url.startswith(("http://", "https://")):
            raise AutoALError(f"--label-studio {shown(url)} is not an http(s) URL")
        self.url, self.project = url.rstrip("/"), project   # project None: task data only, nothing connected
        self._key, self._auth = key, None

    def __repr__(self) -> str:   # never the key
        return f"StudioClient({self.url!r}, project={self.project})"

    def _headers(self) -> dict:
        if self._auth is None:
            if self._key.count(".") == 2:   # a personal access token: a JWT refresh token
                access = self._call("POST", "/api/token/refresh/", json={"refresh": self._key}, auth=False)
                self._auth = f"Bearer {access['access']}"
            else:
                self._auth = f"Token {self._key}"
        return {"Authorization": self._auth}

    def _call(self, method: str, path: str, auth: bool = True, **kwargs):
        try:
            response = requests.request(method, self.url + path, headers=self._headers() if auth else {},
                                        timeout=TIMEOUT_S, **kwargs)
        except requests.RequestException as exc:
            raise AutoALError(f"Label Studio at {self.url} did not answer ({type(exc).__name__})") from None
        if response.status_code == 401:
            raise AutoALError(f"Label Studio at {self.url} refused the API key (HTTP 401)")
        if response.status_code >= 400:
            raise AutoALError(f"Label Studio at {self.url}: {method} {path.split('?')[0]} failed with HTTP "
                              f"{response.status_code}: {one_line(_detail(response), 160)}")
        return response.json() if response.content else {}

    def owns(self, url: str) -> bool:
        """Whether `url` (absolute) is on this server's origin: the only one that gets the key."""
        mine, other = urlsplit(self.url), urlsplit(url)
        return (mine.scheme, mine.netloc) == (other.scheme, other.netloc)

    def download(self, url: str, max_bytes: int, seconds: float) -> bytes:
        """The body of GET `url` (a path on the server, or an absolute URL on it), at most `max_bytes`
        within `seconds`. Redirects are followed by hand: the key goes only to this server's origin."""
        url, deadline = urljoin(self.url + "/", url), time.monotonic() + seconds
        for _ in range(REDIRECTS + 1):
            where = f"{urlsplit(url).netloc}{urlsplit(url).path}"   # never the query: a presigned URL's is a secret
            try:
                with requests.get(url, headers=self._headers() if self.owns(url) else {}, timeout=TIMEOUT_S,
                                  stream=True, allow_redirects=False) as response:
                    if response.is_redirect:
                        url = urljoin(url, response.headers["location"])
                        continue
                    if response.status_code == 401:
                        raise AutoALError(f"{where} refused the API key (HTTP 401)")
                    if response.status_code >= 400:
                        raise AutoALError(f"{where} answered HTTP {response.status_code}")
                    return _bounded(response, max_bytes, deadline, where)
            except requests.RequestException as exc:
                raise AutoALError(f"{where} did not answer ({type(exc).__name__})") from None
        raise AutoALError(f"{where} redirected more than {REDIRECTS} times")

    def connect(self, backend_url: str) -> str:
        """Add the backend to the project and a webhook for annotations, unless they are there already."""
        backends = self._call("GET", f"/api/ml/?project={self.project}")
        backends = backends.get("results", backends) if isinstance(backends, dict) else backends
        if not any(b.get("url", "").rstrip("/") == backend_url for b in backends):
            self._call("POST", "/api/ml/", json={"url": backend_url, "project": self.project, "title": "autoal",
                                                "is_interactive": False, "auto_update": True})
        hook_url = backend_url + "/webhook"
        hooks = self._call("GET", f"/api/webhooks/?project={self.project}")
        if not any(h.get("url") == hook_url for h in hooks):
            self._call("POST", "/api/webhooks/", json={"project": self.project, "url": hook_url,
                                                      "send_payload": True, "send_for_all_actions": False,
                                                      "actions": EVENTS, "is_active": True})
        return f"connected to Label Studio project {self.project} at {self.url}"

    def refresh_predictions(self, version: str, log=print) -> bool:
        """Ask Label Studio to fetch `version`'s predictions for every task, then make it the project's model
        version (the one whose scores its Data Manager shows and its uncertainty sampling follows).
        Label Studio being down is logged, never raised: the next round tries again."""
        try:
            self._call("POST", f"/api/dm/actions/?id=retrieve_tasks_predictions&project={self.project}",
                       json={"selectedItems": {"all": True, "excluded": []}})
            self._call("PATCH", f"/api/projects/{self.project}/", json={"model_version": version})
            return True
        except AutoALError as exc:
            log(f"predictions not refreshed in Label Studio: {exc}")
            return False


def _bounded(response: requests.Response, max_bytes: int, deadline: float, where: str) -> bytes:
    """A response's body, refused past `max_bytes` (declared or read) or past `deadline`."""
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise AutoALError(f"{where} is {int(declared)} bytes, over the limit of {max_bytes}")
    body = bytearray()
    for chunk in response.iter_content(1 << 16):
        body += chunk
        if len(body) > max_bytes:
            raise AutoALError(f"{where} is over the limit of {max_bytes} bytes")
        if time.monotonic() > deadline:
            raise AutoALError(f"{where} took too long to download")
    return bytes(body)


def _detail(response: requests.Response) -> str:
    """Label Studio's own reason ({"detail": ...} in its errors), else the start of the body."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:300]
    if not isinstance(body, dict):
        return str(body)
    return " ".join(str(body[k]) for k in ("detail", "validation_errors") if body.get(k)) or str(body)
