"""The chat page in a real headless Chromium: type a prompt, watch the reply stream in and the inspector fill.

    pytest tests/test_serve_browser.py        # skips when chromium is not installed (CI installs Debian's)

Chromium is driven over the DevTools protocol on a pipe (--remote-debugging-pipe: commands on fd 3,
replies on fd 4), so no webdriver, no extra port and no Python package beyond the standard library.
The reply the page shows must equal what an independent Engine generates for the same prompt, params
and seed. A screenshot of the finished page is saved in the test's tmp dir (path printed).
"""

from __future__ import annotations

import base64
import json
import os
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from test_serve import GEN, expected_reply, live_server, tiny_checkpoint, user  # skips with test_serve when fastapi is absent

from ngpt.inference import load_engine
from ngpt.serve.app import ServeOptions, create_app

CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (CI: apt-get install chromium)")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]
PROMPT = "Tell me about the river and the stone."
SETTINGS = {"temperature": 1.0, "max_tokens": 24, "seed": 7}


class Browser:
    """A headless Chromium process and its DevTools session, every call bounded by a deadline."""

    def __init__(self, profile: Path, log: Path) -> None:
        cmd_read, self._cmd = os.pipe()
        self._out, out_write = os.pipe()
        args = [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "--remote-debugging-pipe", "about:blank"]
        # A tiny exec wrapper puts the pipe ends on the fds Chromium expects (3: commands in, 4: replies out).
        wrapper = f"import os, sys; os.dup2({cmd_read}, 3); os.dup2({out_write}, 4); os.execv(sys.argv[1], sys.argv[1:])"
        self._log = open(log, "wb")
        self.proc = subprocess.Popen([sys.executable, "-c", wrapper, *args], pass_fds=(cmd_read, out_write),
                                     stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT)
        os.close(cmd_read)
        os.close(out_write)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict] = []
        self.session: str | None = None

    def call(self, method: str, params: dict | None = None, *, page: bool = True, timeout: float = 30) -> dict:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if page and self.session:
            message["sessionId"] = self.session
        data = json.dumps(message).encode() + b"\0"
        while data:
            data = data[os.write(self._cmd, data):]
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read(deadline, method)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]
            self.events.append(reply)

    def wait_event(self, name: str, timeout: float = 30) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            for event in self.events:
                if event.get("method") == name:
                    self.events.remove(event)
                    return event
            self.events.append(self._read(deadline, name))

    def evaluate(self, expression: str, timeout: float = 30):
        result = self.call("Runtime.evaluate", {"expression": expression, "awaitPromise": True, "returnByValue": True},
                           timeout=timeout)
        if "exceptionDetails" in result:
            raise RuntimeError(f"page script failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    def open_page(self, url: str, width: int = 1280, height: int = 860) -> None:
        target = self.call("Target.createTarget", {"url": "about:blank"}, page=False)["targetId"]
        self.session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True}, page=False)["sessionId"]
        self.call("Page.enable")
        self.call("Emulation.setDeviceMetricsOverride", {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})
        self.call("Page.navigate", {"url": url})
        self.wait_event("Page.loadEventFired")

    def _read(self, deadline: float, waiting_for: str) -> dict:
        while b"\0" not in self._buffer:
            remaining = deadline - time.monotonic()
            ready, _, _ = select.select([self._out], [], [], max(0.0, remaining))
            if not ready:
                raise TimeoutError(f"Chromium did not answer {waiting_for} in time")
            chunk = os.read(self._out, 1 << 20)
            if not chunk:
                raise RuntimeError(f"Chromium exited (code {self.proc.poll()}); see its log")
            self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(raw)

    def close(self) -> None:
        try:
            self.call("Browser.close", page=False, timeout=5)
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        os.close(self._cmd)
        os.close(self._out)
        self._log.close()


# Resolves when the page is idle again after a reply (or shows an error).
WAIT_FOR_REPLY = """
new Promise((resolve) => {
  const done = () => document.querySelector('.msg.error') ||
    (document.body.dataset.state === 'idle' && document.querySelectorAll('#tokens tbody tr').length > 0);
  if (done()) return resolve(true);
  new MutationObserver((_, observer) => { if (done()) { observer.disconnect(); resolve(true); } })
    .observe(document.body, {attributes: true, childList: true, subtree: true, characterData: true});
})
"""

PAGE_STATE = """
JSON.stringify({
  reply: document.querySelector('.msg.assistant .body')?.textContent,
  pieces: document.querySelectorAll('.msg.assistant .piece').length,
  error: document.querySelector('.msg.error')?.textContent || null,
  user: document.querySelector('.msg.user .body')?.textContent,
  rows: [...document.querySelectorAll('#tokens tbody tr')].map(tr => [...tr.cells].map(td => td.textContent)),
  alternatives: document.querySelectorAll('#tokens tbody tr .alt').length,
  summary: document.getElementById('summary').textContent,
  model: document.getElementById('model').textContent,
  prompt: document.getElementById('prompt').value,
})
"""


def test_page_streams_a_reply_and_fills_the_inspector(tiny_tokenizer, tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "ckpt.pt", tiny_tokenizer)
    engine = load_engine(ckpt, "cpu", "fp32")[0]
    reference = load_engine(ckpt, "cpu", "fp32")[0]
    text, finish, n_tokens = expected_reply(reference, user(PROMPT), max_tokens=SETTINGS["max_tokens"],
                                            temperature=SETTINGS["temperature"], seed=SETTINGS["seed"])
    assert text.strip(), "the tiny model's reply is empty; pick another seed"
    app = create_app(engine, ServeOptions(model_id="ngpt-browser-test", generation=GEN))

    with live_server(app) as url:
        browser = Browser(tmp_path / "chromium-profile", tmp_path / "chromium.log")
        try:
            browser.open_page(f"{url}/")
            browser.evaluate("document.fonts.ready.then(() => true)")
            for field, value in SETTINGS.items():  # the settings panel, filled in as a user would
                browser.evaluate(f"document.getElementById({field!r}).value = {json.dumps(str(value))}")
            browser.evaluate("document.getElementById('prompt').focus()")
            browser.call("Input.insertText", {"text": PROMPT})
            for kind in ("keyDown", "keyUp"):
                browser.call("Input.dispatchKeyEvent", {"type": kind, "key": "Enter", "code": "Enter",
                                                        "windowsVirtualKeyCode": 13, "nativeVirtualKeyCode": 13})
            browser.evaluate(WAIT_FOR_REPLY, timeout=60)
            state = json.loads(browser.evaluate(PAGE_STATE))
            shot = tmp_path / "serve_page.png"
            shot.write_bytes(base64.b64decode(browser.call("Page.captureScreenshot", {"format": "png"})["data"]))
            print(f"screenshot: {shot}")
        finally:
            browser.close()

    assert state["error"] is None, state["error"]
    assert state["user"] == PROMPT and state["prompt"] == ""  # sent, and the box cleared
    assert state["reply"] == text  # exactly the engine's reply, streamed in
    assert state["pieces"] > 1  # it arrived in pieces, not as one block
    assert len(state["rows"]) == n_tokens  # one inspector row per generated token
    prompt_len = int(state["rows"][0][2])
    for k, row in enumerate(state["rows"]):
        index, _token, cache_len, step_ms, logprob, _alts = row
        assert int(index) == k and int(cache_len) == prompt_len + k
        assert float(step_ms) > 0 and float(logprob.split()[0]) <= 0
    assert state["alternatives"] == 5 * n_tokens
    assert f"{n_tokens} tokens" in state["summary"] and (finish in state["summary"])
    assert state["model"] == "ngpt-browser-test"
    assert shot.stat().st_size > 10_000 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
