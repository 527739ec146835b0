"""The chat page at / driven in headless Chromium (Debian's `chromium`), through the DevTools protocol over
--remote-debugging-pipe (no websocket library, no browser download): type a message, press Send, read the reply.
The reply must be the model's answer, as llama-cpp-python gives it directly."""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import time

import pytest
from test_serve import CAP, DEMO_GGUF, KEY, chat_reference, direct, server  # noqa: F401  (fixtures)

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


class DevTools:
    """Chromium with the DevTools protocol on fds 3 (commands in) and 4 (replies out), NUL-separated JSON."""

    def __init__(self, profile_dir):
        # the child's ends are moved above fd 10 first, so the shell's `3<&N 4>&M` cannot clobber one with the other
        to_chrome_r, self.to_chrome = os.pipe()
        self.from_chrome, from_chrome_w = os.pipe()
        to_chrome_r, from_chrome_w = (self._move_up(to_chrome_r), self._move_up(from_chrome_w))
        argv = [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                "--disable-dev-shm-usage", "--remote-debugging-pipe", f"--user-data-dir={profile_dir}",
                "about:blank"]
        # bash (dash reads one-digit fds only) puts our pipe ends on the fd numbers Chromium expects
        self.proc = subprocess.Popen(
            ["bash", "-c", f'exec "$@" 3<&{to_chrome_r} 4>&{from_chrome_w} {to_chrome_r}<&- {from_chrome_w}>&-',
             "bash", *argv],
            pass_fds=(to_chrome_r, from_chrome_w), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self.next_id, self.buffer, self.session = 0, b"", None

    @staticmethod
    def _move_up(fd: int) -> int:
        high = fcntl.fcntl(fd, fcntl.F_DUPFD, 10)
        os.close(fd)
        return high

    def call(self, method: str, **params):
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params}
        if self.session:
            message["sessionId"] = self.session
        os.write(self.to_chrome, json.dumps(message).encode() + b"\0")
        while True:
            while b"\0" not in self.buffer:
                chunk = os.read(self.from_chrome, 65536)
                assert chunk, "chromium closed the DevTools pipe"
                self.buffer += chunk
            raw, _, self.buffer = self.buffer.partition(b"\0")
            reply = json.loads(raw)
            if reply.get("id") == self.next_id:
                assert "error" not in reply, reply
                return reply["result"]

    def open(self, url: str):
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        self.call("Page.navigate", url=url)

    def js(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        assert "exceptionDetails" not in result, result
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 180):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.js(expression)
            if value:
                return value
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting for {expression}; page: {self.js('document.body.innerText')}")

    def close(self):
        self.proc.terminate()
        self.proc.wait(timeout=30)
        os.close(self.to_chrome)
        os.close(self.from_chrome)


@pytest.fixture
def browser(tmp_path):
    if CHROMIUM is None:
        pytest.fail("chromium is not installed (Debian package `chromium`; `make setup` installs it)")
    tools = DevTools(tmp_path / "profile")
    yield tools
    tools.close()


def test_page_sends_a_message_and_shows_the_reply(server, browser, direct):  # noqa: F811
    base, _ = server
    browser.open(base + "/")
    browser.wait_for("document.readyState === 'complete'")
    # the server wants a key: the page says so, the person enters it under Settings
    assert browser.wait_for("document.getElementById('model').textContent.includes('API key') && "
                            "document.getElementById('model').textContent")
    browser.js(f"""(() => {{ const k = document.getElementById('api-key'); k.value = {json.dumps(KEY)};
                   k.dispatchEvent(new Event('change')); }})()""")
    assert browser.wait_for(f"document.getElementById('model').textContent === {json.dumps(DEMO_GGUF.stem)}")

    question = "What is the capital of France?"
    browser.js(f"""(() => {{ document.getElementById('temperature').value = '0';
                   document.getElementById('input').value = {json.dumps(question)};
                   document.getElementById('send').click(); }})()""")
    reply = browser.wait_for(
        "(() => { const m = document.querySelector('.message.assistant[data-state=\"done\"]');"
        " return m && m.textContent; })()")
    assert browser.js("document.querySelector('.message.user').textContent") == question
    assert browser.js("document.querySelector('.message.assistant').classList.contains('error')") is False
    assert reply == chat_reference(direct, [{"role": "user", "content": question}])
