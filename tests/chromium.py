"""A screenshot of a logged-in page by headless Chromium (Debian's package), driven over the
DevTools protocol (CDP) with the `websockets` client (the test extra)."""
import base64
import json
import os
import signal
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

from websockets.sync.client import connect

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--hide-scrollbars", "--remote-debugging-port=0"]


class Page:
    """One tab of a fresh headless Chromium; `call` sends a CDP command and returns its result."""

    def __init__(self, ws, number=0):
        self.ws, self.number = ws, number

    def call(self, method: str, **params) -> dict:
        self.number += 1
        self.ws.send(json.dumps({"id": self.number, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv(timeout=60))
            if message.get("id") == self.number:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})

    def wait_for(self, expression: str, timeout: float = 60) -> None:
        """Poll a JavaScript expression until it is true (the page has rendered what we wait for)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
            if value.get("result", {}).get("value"):
                return
            time.sleep(0.5)
        raise TimeoutError(f"page never satisfied {expression}")


def screenshot(url: str, cookies: list[dict], ready: str, out: Path, size=(1600, 900)) -> Path:
    """Open `url` with `cookies` set, wait until the JavaScript `ready` is true, save a PNG at `out`."""
    with tempfile.TemporaryDirectory() as profile:
        browser = subprocess.Popen([str(CHROMIUM), *FLAGS, f"--user-data-dir={profile}",
                                    f"--window-size={size[0]},{size[1]}", "about:blank"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            port_file = Path(profile) / "DevToolsActivePort"
            deadline = time.monotonic() + 60
            while not port_file.exists() or not port_file.read_text().strip():
                if time.monotonic() > deadline or browser.poll() is not None:
                    raise RuntimeError("Chromium did not start")
                time.sleep(0.2)
            port = int(port_file.read_text().split()[0])
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as response:
                tab = next(t for t in json.load(response) if t["type"] == "page")
            with connect(tab["webSocketDebuggerUrl"], max_size=None, open_timeout=30) as ws:
                page = Page(ws)
                page.call("Network.enable")
                for cookie in cookies:
                    page.call("Network.setCookie", **cookie)
                page.call("Page.enable")
                page.call("Page.navigate", url=url)
                page.wait_for(ready)
                time.sleep(1.0)   # images and fonts settle
                shot = page.call("Page.captureScreenshot", format="png")
        finally:
            os.killpg(browser.pid, signal.SIGKILL)   # the browser and its renderers
            browser.wait()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(base64.b64decode(shot["data"]))
    return out
