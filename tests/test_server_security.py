"""`ggufkit serve` against hostile input, live on loopback: a GGUF whose chat template attacks the server, requests
that overflow the context or stream a body without a length, and the defaults (loopback bind, no CORS, the
constant-time key check). tests/test_serve.py covers the API itself, the 401s, 400s, Content-Length 413 and the
max_tokens cap; this file adds what it does not.
"""
from __future__ import annotations

import http.client
import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is part of the [run] extra")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
KEY = "security-key-9876543210"
CTX = 256
MAX_BODY_KB = 16

# A template that misbehaves on request: the last user message picks the attack.
EVIL_TEMPLATE = (
    "{% set m = messages[-1]['content'] %}"
    "{% if m == 'loop' %}{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
    "{% elif m == 'escape' %}{{ cycler.__init__.__globals__.os.popen('id').read() }}"
    "{% elif m == 'file' %}{% include '/etc/passwd' %}"
    "{% elif m == 'huge' %}{{ 'x' * (messages|length * 10000000000) }}"
    "{% elif m == 'recurse' %}{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}"
    "{% else %}<|im_start|>user\n{{ m }}<|im_end|>\n<|im_start|>assistant\n{% endif %}"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def evil_gguf(tiny_checkpoint, tmp_path_factory) -> Path:
    """The tiny llama checkpoint converted to Q8_0 with EVIL_TEMPLATE as its chat template."""
    from corpus.checkpoint_dir import checkpoint

    from ggufkit.conversion import convert

    src = tiny_checkpoint("llama")
    tok_config = json.loads((src / "tokenizer_config.json").read_text())
    tok_config["chat_template"] = EVIL_TEMPLATE
    work = tmp_path_factory.mktemp("evil")
    ckpt = checkpoint(work / "evil-llama", {"tokenizer_config.json": tok_config, "chat_template.jinja": None})
    out = convert(ckpt, work / "evil-llama.gguf", scheme="q8_0", quiet=True)
    from ggufkit.sources.gguf import validate_gguf

    assert validate_gguf(out).metadata["tokenizer.chat_template"] == EVIL_TEMPLATE
    return out


@pytest.fixture(scope="module")
def server(evil_gguf, tmp_path_factory):
    """(base URL, port, process) of `ggufkit serve` on the evil GGUF with the default --host."""
    port = free_port()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ggufkit.cli", "serve", str(evil_gguf), "--port", str(port), "--api-key", KEY,
             "--ctx", str(CTX), "--max-tokens", "8", "--max-body-kb", str(MAX_BODY_KB), "--threads", "2"],
            cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        assert proc.poll() is None, log.read_text()
        try:
            with urllib.request.urlopen(base + "/health", timeout=2):
                break
        except OSError:
            pass
        assert time.monotonic() < deadline, "server did not come up: " + log.read_text()
        time.sleep(0.3)
    yield base, port, proc
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def post(base: str, path: str, payload, timeout: float = 60, headers=None) -> tuple[int, dict, bytes]:
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    request = urllib.request.Request(base + path, data=data, method="POST", headers={
        "Authorization": f"Bearer {KEY}", "Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def chat(base: str, content: str, timeout: float = 60):
    return post(base, "/v1/chat/completions", {"messages": [{"role": "user", "content": content}],
                                                "temperature": 0}, timeout=timeout)


def assert_healthy(base: str) -> None:
    status, _, body = chat(base, "Hello")
    assert status == 200, body
    assert json.loads(body)["choices"][0]["message"]["role"] == "assistant"


# ---- the chat template is hostile

@pytest.mark.parametrize("attack", ["escape", "file", "huge", "recurse", "loop"])
def test_hostile_chat_template_fails_the_request_not_the_server(server, attack):
    """Each attack gets an error response in bounded time (the render budget is 2 s; a runaway loop must not
    hold the single model worker), nothing leaks, and the next request is served."""
    base = server[0]
    try:
        status, _, body = chat(base, attack, timeout=60)
    except TimeoutError:
        pytest.fail(f"the '{attack}' template held the server for 60 s")
    assert 400 <= status < 600, (status, body[:300])
    text = body.decode("utf-8", "replace")
    assert "uid=" not in text and "root:" not in text, text[:300]
    assert_healthy(base)


# ---- requests that are too big

def test_chunked_body_over_the_limit_is_413(server):
    """No Content-Length to check up front: the body is counted as it arrives."""
    _, port, _ = server
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.putrequest("POST", "/v1/completions")
    conn.putheader("Authorization", f"Bearer {KEY}")
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Transfer-Encoding", "chunked")
    conn.endheaders()
    chunk = b'{"prompt": "' + b"a" * 4000
    try:
        for _ in range(MAX_BODY_KB // 4 + 4):
            conn.send(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            chunk = b"a" * 4000
        conn.send(b'2\r\n"}\r\n0\r\n\r\n')
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server may answer and close before the whole body is sent
    response = conn.getresponse()
    assert response.status == 413, response.read()[:300]
    conn.close()


def test_prompt_longer_than_the_context_is_a_client_error(server):
    base = server[0]
    long_prompt = " ".join(["word"] * (CTX * 4))  # well under the body limit, far over the context
    status, _, body = post(base, "/v1/completions", {"prompt": long_prompt, "max_tokens": 4})
    assert 400 <= status < 500, (status, body[:300])
    assert "context" in json.loads(body)["error"]["message"].lower()
    assert_healthy(base)


# ---- defaults

def test_binds_loopback_only_by_default(server):
    """The listening socket of the default --host is 127.0.0.1 (from /proc/net/tcp: local address, LISTEN)."""
    _, port, _ = server
    listening = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            addr, hex_port = fields[1].split(":")
            if int(hex_port, 16) == port and fields[3] == "0A":
                listening.append(addr)
    assert listening == ["0100007F"], listening  # 127.0.0.1, little-endian hex; nothing on 0.0.0.0 or ::


def test_preflight_gets_no_cors_headers_by_default(server):
    base = server[0]
    request = urllib.request.Request(base + "/v1/chat/completions", method="OPTIONS", headers={
        "Origin": "http://evil.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type"})
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            headers = dict(r.headers)
    except urllib.error.HTTPError as e:
        headers = dict(e.headers)
    assert not any(k.lower().startswith("access-control-") for k in headers), headers


def test_api_key_is_compared_in_constant_time(monkeypatch):
    """ApiGuard checks the key with hmac.compare_digest (a plain == leaks the matching prefix length through
    timing): the check goes through it, for right and wrong keys alike."""
    import hmac

    from ggufkit.commands import serve

    calls = []
    real = hmac.compare_digest

    def spy(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    guard = serve.ApiGuard(app=None, api_key=KEY, max_body=1024, max_tokens=8)
    assert guard._authorized(f"Bearer {KEY}".encode())
    assert not guard._authorized(b"Bearer " + KEY[:-1].encode() + b"x")
    assert not guard._authorized(b"Bearer ")
    assert len(calls) == 3 and all(isinstance(a, bytes) and isinstance(b, bytes) for a, b in calls)
