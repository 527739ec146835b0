"""ggufkit serve's request guard (ApiGuard) in front of a recording ASGI app: what reaches the model server and
what is answered before it. No model needed."""
from __future__ import annotations

import asyncio
import json

import pytest

pytest.importorskip("llama_cpp", reason="llama-cpp-python is part of the [run] extra")

from ggufkit.commands.serve import ApiGuard

CHAT = "/v1/chat/completions"


def call(guard_kwargs: dict, path: str, chunks: list[bytes], headers: dict | None = None, method="POST"):
    """(status, JSON reply or None, body the inner app received or None)."""
    seen = {}

    async def inner(scope, receive, send):
        message = await receive()
        seen["body"] = message["body"]
        seen["headers"] = dict(scope["headers"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    guard = ApiGuard(inner, **{"api_key": None, "max_body": 1024, "max_tokens": 64, **guard_kwargs})
    pending = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]
    sent = []

    async def receive():
        return pending.pop(0)

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": method, "path": path,
             "headers": [(k.encode(), v.encode()) for k, v in (headers or {}).items()]}
    asyncio.run(guard(scope, receive, send))
    status = sent[0]["status"]
    body = sent[1]["body"]
    reply = json.loads(body) if status != 200 else None
    return status, reply, seen.get("body")


def test_max_tokens_is_capped_or_filled_in():
    ask = {"messages": [{"role": "user", "content": "hi"}]}
    for asked, expected in [(None, 64), (1000, 64), (10, 10)]:
        body = dict(ask, **({} if asked is None else {"max_tokens": asked}))
        status, _, forwarded = call({}, CHAT, [json.dumps(body).encode()])
        assert status == 200 and json.loads(forwarded)["max_tokens"] == expected


def test_body_limit_counts_streamed_chunks_without_content_length():
    status, reply, forwarded = call({}, "/v1/completions", [b'{"prompt": "' + b"x" * 600, b"y" * 600 + b'"}'])
    assert status == 413 and forwarded is None and "over 1024 bytes" in reply["error"]["message"]


def test_key_is_checked_before_the_body():
    status, reply, _ = call({"api_key": "k"}, CHAT, [b"{not json"])
    assert status == 401 and reply["error"]["type"] == "authentication_error"
    status, _, _ = call({"api_key": "k"}, CHAT, [b"{not json"], headers={"authorization": "Bearer k"})
    assert status == 400
    status, _, _ = call({"api_key": "k"}, CHAT, [b"{}"], headers={"authorization": "Bearer kk"})
    assert status == 401
    status, _, _ = call({"api_key": "k"}, "/health", [b""], method="GET")  # public
    assert status == 200
