"""A minimal Chrome DevTools Protocol client over `--remote-debugging-pipe`: no extra Python package.

Chromium reads commands (JSON, NUL-terminated) on file descriptor 3 and writes replies and events on
4. This is enough to open a page, run JavaScript, click with real mouse events and take a screenshot,
and keeps the browser test free of a driver package that might try to download a browser.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-extensions", "--hide-scrollbars",
    "--remote-debugging-pipe",
]  # fmt: skip


def find_chromium() -> str | None:
    """The Debian chromium binary, or another Chromium/Chrome on PATH."""
    for name in ("/usr/bin/chromium", "chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


class Browser:
    """One headless Chromium with one page; `with Browser(path) as page: page.open(url)`."""

    def __init__(self, executable: str, width: int = 1366, height: int = 800, timeout_s: float = 60) -> None:
        self.timeout_s = timeout_s
        self.profile = tempfile.mkdtemp(prefix="repurpose-chromium-")
        self._log = open(Path(self.profile).with_suffix(".log"), "w+b")  # noqa: SIM115 - closed in close()
        to_child_r, self._to_child = os.pipe()
        self._from_child, from_child_w = os.pipe()
        # the child's ends, moved above 9 so that bash can put them on 3 and 4 without clashes (no preexec_fn,
        # which is unsafe in a process with threads, as polars has)
        read_end, write_end = (fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (to_child_r, from_child_w))
        os.close(to_child_r)
        os.close(from_child_w)
        plumbing = f'exec "$0" "$@" 3<&{read_end} 4>&{write_end} {read_end}<&- {write_end}>&-'
        self.process = subprocess.Popen(
            [shutil.which("bash") or "/bin/bash", "-c", plumbing, executable, *CHROMIUM_FLAGS, f"--user-data-dir={self.profile}",
             f"--window-size={width},{height}", "about:blank"],
            pass_fds=(read_end, write_end), stdout=subprocess.DEVNULL, stderr=self._log,
        )  # fmt: skip
        os.close(read_end)
        os.close(write_end)
        self._buffer = b""
        self._next_id = 0
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        self.send("Page.enable", session=True)
        self.send("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}, session=True)  # fmt: skip

    def send(self, method: str, params: dict[str, Any] | None = None, session: bool = False) -> dict[str, Any]:
        """Send one command and wait for its reply (events in between are dropped)."""
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = self.session
        try:
            os.write(self._to_child, json.dumps(message).encode() + b"\0")
        except BrokenPipeError as error:
            raise RuntimeError(f"chromium exited before {method}: {self._stderr()}") from error
        deadline = time.time() + self.timeout_s
        while time.time() < deadline:
            while b"\0" not in self._buffer:
                chunk = os.read(self._from_child, 1 << 20)
                if not chunk:
                    raise RuntimeError(f"chromium closed the pipe during {method}: {self._stderr()}")
                self._buffer += chunk
            raw, _, self._buffer = self._buffer.partition(b"\0")
            reply = json.loads(raw)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
        raise TimeoutError(method)

    def _stderr(self) -> str:
        """Chromium's last words, when it has exited."""
        self._log.flush()
        self._log.seek(0)
        state = "running" if self.process.poll() is None else f"exit code {self.process.returncode}"
        return f"({state}) " + self._log.read().decode(errors="replace")[-2000:]

    def evaluate(self, expression: str) -> Any:
        """Run JavaScript in the page and return its (JSON) value."""
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                "awaitPromise": True}, session=True)  # fmt: skip
        if "exceptionDetails" in result:
            raise RuntimeError(f"javascript error: {result['exceptionDetails']}")
        return result["result"].get("value")

    def open(self, url: str) -> None:
        """Navigate and wait until the document and its images have loaded."""
        self.send("Page.navigate", {"url": url}, session=True)
        deadline = time.time() + self.timeout_s
        while time.time() < deadline:
            if self.evaluate("document.readyState === 'complete' && location.href !== 'about:blank'"):
                return
            time.sleep(0.1)
        raise TimeoutError(f"page did not load: {url}")

    def click(self, selector: str) -> None:
        """Scroll the element into view and click its centre with real mouse events."""
        box = self.evaluate(
            f"(() => {{ const e = document.querySelector({json.dumps(selector)}); e.scrollIntoView({{block: 'center'}});"
            " const r = e.getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; })()"
        )
        for kind in ("mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent", {"type": kind, "x": box[0], "y": box[1], "button": "left",
                                                   "clickCount": 1}, session=True)  # fmt: skip

    def screenshot(self, path: str | Path, full_page: bool = False) -> Path:
        """Save a PNG of the viewport (or the whole page)."""
        data = self.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": full_page},
                         session=True)["data"]  # fmt: skip
        Path(path).write_bytes(base64.b64decode(data))
        return Path(path)

    def close(self) -> None:
        try:
            self.send("Browser.close")
        except Exception:  # noqa: BLE001 - already gone is fine
            pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
        os.close(self._to_child)
        os.close(self._from_child)
        shutil.rmtree(self.profile, ignore_errors=True)
        self._log.close()
        Path(self._log.name).unlink(missing_ok=True)

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
