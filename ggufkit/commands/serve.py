"""Serve a GGUF model over an OpenAI-compatible HTTP API, with a chat page at /.

Endpoints: GET /v1/models, POST /v1/chat/completions (streaming SSE or not; stream_options.include_usage adds
a final usage chunk), POST /v1/completions, GET /health, and the page at /. Binds 127.0.0.1 unless --host says
otherwise; --port 0 takes a free port (the line on stderr names it). Responses name the model by its file stem. With --api-key (or the
GGUFKIT_API_KEY environment variable) every API request needs `Authorization: Bearer KEY`. Requests are
answered one at a time, in order; --max-tokens caps what one request may generate. Cross-origin requests are
refused unless --cors ORIGIN allows them.

\b
Example:
  ggufkit serve SmolLM2-135M-Instruct-Q4_K_M.gguf --port 8080 --api-key secret
"""
from __future__ import annotations

import hmac
import json
import logging
import os
import re
import socket
import sys
from pathlib import Path

import click

from ggufkit import runtime
from ggufkit.commands.run import model_options
from ggufkit.errors import OutputError, RuntimeFailure
from ggufkit.runtime import rpc as rpc_runtime

WEB_DIR = Path(__file__).resolve().parent.parent / "web"
PUBLIC_PATHS = {"/", "/health", "/favicon.ico"}
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
log = logging.getLogger("ggufkit.serve")
# Sampling fields with a range: OpenAI's ranges (the server would otherwise accept temperature -1).
RANGES = {"temperature": (0.0, 2.0), "top_p": (0.0, 1.0), "min_p": (0.0, 1.0),
          "presence_penalty": (-2.0, 2.0), "frequency_penalty": (-2.0, 2.0)}


def _error_body(status: int, message: str, kind: str) -> bytes:
    """The OpenAI error shape, so the official clients show the message."""
    return json.dumps({"error": {"message": message, "type": kind, "param": None, "code": status}}).encode()


# ---- the request guard: key, size, JSON, schema, max_tokens cap (one ASGI layer in front of everything)

class ApiGuard:
    """Pure ASGI middleware in front of llama-cpp-python's FastAPI app.

    - API key: checked first (so a stranger learns nothing about body rules), with hmac.compare_digest.
    - Body: at most `max_body` bytes (413), valid JSON (400), and for the completion endpoints valid against
      llama-cpp-python's own request models (400 instead of its 500 for a schema error).
    - Semantics the schema leaves out (400): a chat needs a non-empty `messages` list; sampling values in
      OpenAI's ranges (RANGES).
    - max_tokens: absent, null or above `max_tokens` becomes `max_tokens`.
    - model: set to `model_alias`, so answers name the model by its alias, never by its path on disk.
    - stream_options.include_usage on a stream: a last chunk with `usage` (from `usage`, a UsageCounter)
      before `data: [DONE]`, as OpenAI's API sends it.
    """

    def __init__(self, app, api_key: str | None, max_body: int, max_tokens: int, model_alias: str | None = None,
                 usage: UsageCounter | None = None):
        from llama_cpp.server.types import CreateChatCompletionRequest, CreateCompletionRequest

        self.app, self.api_key, self.max_body, self.max_tokens = app, api_key, max_body, max_tokens
        self.model_alias, self.usage = model_alias, usage
        self.schemas = {"/v1/chat/completions": CreateChatCompletionRequest,
                        "/v1/completions": CreateCompletionRequest}

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        public = path in PUBLIC_PATHS or path.startswith("/web/")
        headers = dict(scope["headers"])
        if self.api_key and not public and not self._authorized(headers.get(b"authorization", b"")):
            return await self._reply(send, 401, "invalid or missing API key (Authorization: Bearer KEY)",
                                     "authentication_error", {"www-authenticate": "Bearer"})
        if scope["method"] != "POST":
            return await self.app(scope, receive, send)
        declared = headers.get(b"content-length", b"0")
        if declared.isdigit() and int(declared) > self.max_body:
            return await self._reply(send, 413, f"request body over {self.max_body} bytes", "invalid_request_error")
        body = b""
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if len(body) > self.max_body:
                return await self._reply(send, 413, f"request body over {self.max_body} bytes",
                                         "invalid_request_error")
            if not message.get("more_body"):
                break
        body, problem = self._check_body(path, body)
        if problem:
            return await self._reply(send, 400, problem, "invalid_request_error")
        if self.usage is not None and path in self.schemas and _wants_usage(body):
            send = self._with_usage_chunk(send)
        # The body is known to be JSON now: say so (curl's default form content type would make FastAPI
        # hand the route raw bytes), with its new length.
        kept = [(k, v) for k, v in scope["headers"] if k not in (b"content-length", b"content-type")]
        scope = dict(scope, headers=kept + [(b"content-length", str(len(body)).encode()),
                                            (b"content-type", b"application/json")])
        delivered = False

        async def replay():
            nonlocal delivered
            if delivered:
                return await receive()  # after the body: wait for disconnect like a normal request
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}

        return await self.app(scope, replay, send)

    def _authorized(self, header: bytes) -> bool:
        scheme, _, token = header.partition(b" ")
        return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self.api_key.encode())

    def _check_body(self, path: str, body: bytes) -> tuple[bytes, str | None]:
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError) as e:
            return body, f"request body is not valid JSON: {e}"
        schema = self.schemas.get(path)
        if schema is None:
            return body, None
        if not isinstance(data, dict):
            return body, "request body must be a JSON object"
        from pydantic import ValidationError

        try:
            schema.model_validate(data)
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "body"
            return body, f"{where}: {first['msg']} ({e.error_count()} problem(s) in the request body)"
        if path == "/v1/chat/completions" and not (isinstance(data.get("messages"), list) and data["messages"]):
            return body, "messages: a chat completion needs a non-empty list of messages"
        for name, (low, high) in RANGES.items():
            value = data.get(name)
            if value is not None and not low <= value <= high:
                return body, f"{name}: {value} is out of range [{low:g}, {high:g}]"
        if data.get("max_tokens") is None or data["max_tokens"] > self.max_tokens:
            data["max_tokens"] = self.max_tokens
        if self.model_alias is not None:
            data["model"] = self.model_alias
        return json.dumps(data).encode(), None

    def _with_usage_chunk(self, send):
        """send, with a usage chunk (OpenAI's shape: no choices) inserted before the stream's `data: [DONE]`."""
        last = {}

        async def send_with_usage(message):
            body = message.get("body", b"") if message["type"] == "http.response.body" else b""
            match = re.search(rb"(?:^|\n)(data: \[DONE\])", body)  # at a line start: not inside a JSON text
            done = match.start(1) if match else -1
            for line in body.splitlines():
                if line.startswith(b"data: {"):
                    try:
                        last.update({k: v for k, v in json.loads(line[6:]).items()
                                     if k in ("id", "object", "created", "model")})
                    except ValueError:
                        pass
            if done >= 0:
                chunk = {**last, "choices": [], "usage": self.usage.as_dict()}
                event = b"data: " + json.dumps(chunk).encode() + b"\n\n"
                message = dict(message, body=body[:done] + event + body[done:])
            await send(message)

        return send_with_usage

    @staticmethod
    async def _reply(send, status: int, message: str, kind: str, extra: dict | None = None):
        payload = _error_body(status, message, kind)
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
        headers += [(k.encode(), v.encode()) for k, v in (extra or {}).items()]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})


def _wants_usage(body: bytes) -> bool:
    data = json.loads(body)
    options = data.get("stream_options")
    return bool(data.get("stream")) and isinstance(options, dict) and options.get("include_usage") is True


class UsageCounter:
    """Token counts of the latest generation of a Llama (requests run one at a time): its `generate` is wrapped
    to count the prompt it is given and the tokens it yields, end-of-generation tokens excepted - what
    llama-cpp-python reports as usage for a request that does not stream."""

    def __init__(self):
        self.prompt_tokens = self.completion_tokens = 0

    def attach(self, llm) -> None:
        import llama_cpp

        vocab = llama_cpp.llama_model_get_vocab(llm.model)
        original = llm.generate

        def generate(tokens, *args, **kwargs):
            self.prompt_tokens, self.completion_tokens = len(tokens), 0
            for token in original(tokens, *args, **kwargs):
                if not llama_cpp.llama_vocab_is_eog(vocab, token):
                    self.completion_tokens += 1
                yield token

        llm.generate = generate

    def as_dict(self) -> dict:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "total_tokens": self.prompt_tokens + self.completion_tokens}


def _quiet_print(*args, **kwargs) -> None:
    """llama-cpp-python's server prints client disconnects to stdout: they go to ggufkit's log (debug)."""
    log.debug(" ".join(str(a) for a in args))


# ---- the app: llama-cpp-python's server, adjusted

def build_app(model_path: Path, *, n_ctx: int = 2048, n_threads: int | None = None, api_key: str | None = None,
              cors: tuple[str, ...] = (), max_tokens: int = 512, max_body: int = 1 << 20,
              flash_attn: bool = False, offload: dict | None = None):
    """llama-cpp-python's FastAPI app for one model, plus ggufkit's page, /health and ApiGuard; its
    allow-all CORS is replaced; a new request waits for the running one instead of interrupting it."""
    from fastapi.middleware.cors import CORSMiddleware
    from fastapi.responses import FileResponse, JSONResponse
    from fastapi.staticfiles import StaticFiles
    from llama_cpp.server import app as llama_app
    from llama_cpp.server.settings import ModelSettings, ServerSettings

    runtime.load_check(model_path)
    from ggufkit.runtime import backends

    backends.ensure()  # a malformed file: one line naming the problem, before llama.cpp
    alias = model_path.stem
    # llama.cpp pads the context to a multiple of 256 and llama-cpp-python then budgets with the padded size
    # while its token buffer has the asked-for size (a prompt near the end overflows it): ask for padded.
    n_ctx = -(-n_ctx // 256) * 256
    threads = n_threads or runtime.default_threads()
    # model_construct: the settings are exactly these values; pydantic-settings would otherwise also read
    # environment variables such as PORT, API_KEY or N_CTX.
    server_settings = ServerSettings.model_construct(api_key=api_key, interrupt_requests=False)
    model_settings = ModelSettings.model_construct(
        model=str(model_path), model_alias=alias, n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads,
        logits_all=False, embedding=False, cache=False, flash_attn=flash_attn, verbose=False,
        **{k: v for k, v in (offload or {}).items() if k not in ("rpc_endpoints", "rpc_timeout")})
    os.environ.pop("CONFIG_FILE", None)  # create_app would take all its settings from that file instead
    from ggufkit.runtime.template_sandbox import install as bound_chat_templates

    bound_chat_templates()  # the GGUF's chat template renders bounded in time and memory, not only sandboxed
    try:
        app = llama_app.create_app(server_settings=server_settings, model_settings=[model_settings])
    except (ValueError, RuntimeError) as e:
        raise RuntimeFailure(f"llama.cpp could not load the model: {e}", model_path) from e

    llama_app.print = _quiet_print  # module-level name lookup: its disconnect prints, and only those
    usage = UsageCounter()
    usage.attach(llama_app._llama_proxy._current_model)  # the one model, loaded by create_app
    app.user_middleware = [m for m in app.user_middleware if m.cls is not CORSMiddleware]
    if cors:
        app.add_middleware(CORSMiddleware, allow_origins=list(cors), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])
    app.add_middleware(ApiGuard, api_key=api_key, max_body=max_body, max_tokens=max_tokens, model_alias=alias,
                       usage=usage)

    async def constant_time_authenticate():  # ApiGuard has checked the key before any route runs
        return True

    app.dependency_overrides[llama_app.authenticate] = constant_time_authenticate

    @app.get("/health", include_in_schema=False)
    async def health():
        return JSONResponse({"status": "ok", "model": alias})

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(WEB_DIR / "index.html", headers={
            "content-security-policy": "default-src 'self'; connect-src 'self'; img-src 'self' data:",
            "x-content-type-options": "nosniff"})

    app.mount("/web", StaticFiles(directory=WEB_DIR), name="web")
    return app


@click.command("serve")
@model_options
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True)
@click.option("--api-key", envvar="GGUFKIT_API_KEY", default=None, help="Require this bearer key.")
@click.option("--cors", multiple=True, metavar="ORIGIN", help="Allow cross-origin requests from ORIGIN.")
@click.option("--max-tokens", type=click.IntRange(1), default=512, show_default=True,
              help="Most tokens one request may generate (larger requests are capped).")
@click.option("--max-body-kb", type=click.IntRange(1), default=1024, show_default=True,
              help="Largest request body accepted, in KiB.")
@rpc_runtime.options
def command(model, scheme, ctx, threads, flash_attn, host, port, api_key, cors, max_tokens, max_body_kb, rpc=None,
            split=None, rpc_timeout=60.0):
    import uvicorn

    if rpc:  # the model in a supervised child process: a dying worker cannot take the server down
        from ggufkit.runtime import rpc_serve

        path = runtime.resolve_model(model, scheme)
        runtime.load_check(path)
        kwargs = {"n_ctx": ctx, "n_threads": threads, "api_key": api_key, "cors": list(cors),
                  "max_tokens": max_tokens, "max_body": max_body_kb * 1024, "flash_attn": flash_attn}
        if host not in LOOPBACK and not api_key:
            click.echo(f"warning: serving on {host} without --api-key: anyone who can reach it can use it", err=True)
        click.echo(f"serving {path.name} on http://{host}:{port}/ with workers {rpc} (Ctrl-C stops)", err=True)
        return rpc_serve.serve(path, kwargs, rpc, split, host, port, rpc_timeout)
    if split:
        raise click.UsageError("--split needs --rpc")
    sock = listen(host, port)  # first: a port in use fails before the model loads, and before any "serving"
    try:
        path = runtime.resolve_model(model, scheme)
        app = build_app(path, n_ctx=ctx, n_threads=threads, api_key=api_key, cors=cors, max_tokens=max_tokens,
                        max_body=max_body_kb * 1024, flash_attn=flash_attn)
    except BaseException:
        sock.close()
        raise
    if host not in LOOPBACK and not api_key:
        click.echo(f"warning: serving on {host} without --api-key: anyone who can reach it can use it", err=True)
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    click.echo(f"serving {path.name} on http://{shown}:{bound}/ (API at /v1, Ctrl-C stops)", err=True)
    sys.stderr.flush()
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    server.run(sockets=[sock])


def listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (port 0: a free one), or a one-line OutputError."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as e:
        raise OutputError(f"cannot listen: unknown host ({e.strerror})", f"{host}:{port}") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as e:
        sock.close()
        raise OutputError(f"cannot listen: {e.strerror}", f"{host}:{port}") from None
    sock.set_inheritable(True)
    return sock


command.help = __doc__
