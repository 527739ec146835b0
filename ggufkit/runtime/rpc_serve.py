"""`ggufkit serve --rpc`: the model in a child process, so that a worker that dies cannot take the server down.

ggml-rpc aborts the process holding the model when a worker stops answering (ggufkit.runtime.rpc). So the
`serve` process is a front that owns the listening socket and holds no model; the child runs the usual server
(commands/serve.build_app) on a Unix socket with the workers in its device list:

    client ──TCP──► front (asyncio; /health itself) ──Unix socket──► child: llama-cpp-python server + RPC workers

- A request is relayed byte for byte (one request per connection: the front asks for `Connection: close`).
- The child dies during a request (a worker went away: its abort handler exits with code 4): a request with no
  answer yet gets a 502 in the OpenAI error shape naming the worker; a streaming answer at a chunk boundary gets
  a final `data: {"error": ...}` event (the openai client raises it as an APIError) and a proper end; elsewhere
  the connection is closed.
- A worker that stops answering without dying (power cut, cable): the child's connections to the workers carry
  TCP keepalive and TCP_USER_TIMEOUT (rpc.harden_connections), so the kernel ends them within ~25 s and the child
  exits as above. (The front does not poll the workers: rpc-server's listen backlog is 1 and it serves one
  client at a time, so a probe would sit in the queue behind the model's connection.)
- A worker that keeps its connection but answers nothing (stopped, hung): its kernel still acknowledges what the
  child sends, so TCP never gives up; the child's stall watch (rpc.watch_stalls, `--rpc-timeout`) ends a decode
  step that waits that long, and the child exits as above. A restart uses only the workers that answer HELLO.
- Then the child is started again with the workers that are still reachable (the split recomputed over them;
  none left: the local CPU alone). Meanwhile requests get a 503 saying so; GET /health always answers 200 with
  {"status": "ok" | "loading" | "restarting" | "failed", "workers": [...]}.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ggufkit.runtime import rpc

WATCH_SECONDS = 3.0
HEAD_LIMIT = 64 << 10
RETRY_SECONDS = 10.0


def _error(status: int, message: str, kind: str = "server_error", extra: str = "") -> bytes:
    body = json.dumps({"error": {"message": message, "type": kind, "param": None, "code": status}}).encode()
    reason = {502: "Bad Gateway", 503: "Service Unavailable", 400: "Bad Request", 411: "Length Required",
              431: "Request Header Fields Too Large"}.get(status, "Error")
    return (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
            f"connection: close\r\n{extra}\r\n").encode() + body


class _Chunks:
    """Follows HTTP/1.1 chunked framing of a response body: at a boundary? ended?"""

    def __init__(self):
        self.buf = b""
        self.left = 0         # bytes of chunk data (+ its CRLF) still to come
        self.done = False

    def feed(self, data: bytes) -> None:
        self.buf += data
        while not self.done:
            if self.left:
                take = min(self.left, len(self.buf))
                self.buf, self.left = self.buf[take:], self.left - take
                if self.left:
                    return
            line_end = self.buf.find(b"\r\n")
            if line_end < 0:
                return
            size = int(self.buf[:line_end].split(b";")[0] or b"0", 16)
            self.buf = self.buf[line_end + 2:]
            if size == 0:
                self.done = True  # trailers are not used by uvicorn
                return
            self.left = size + 2

    @property
    def at_boundary(self) -> bool:
        return not self.left and not self.buf


class Front:
    def __init__(self, model: Path, app_kwargs: dict, endpoints: list[rpc.Endpoint], split: str | None,
                 log=sys.stderr, rpc_timeout: float = rpc.STALL_SECONDS):
        self.model, self.app_kwargs, self.endpoints, self.split = model, app_kwargs, endpoints, split
        self.rpc_timeout = rpc_timeout
        self.log = log
        self.tmp = Path(tempfile.mkdtemp(prefix="ggufkit-serve-"))
        self.uds = str(self.tmp / "model.sock")
        self.proc: subprocess.Popen | None = None
        self.status = "loading"
        self.reason = ""
        self.using: list[rpc.Endpoint] = []
        self.restarts = 0

    # ---- the child

    def _child_config(self, endpoints: list[rpc.Endpoint]) -> str:
        split = self.split
        if split and split.strip().lower() != "auto":  # keep the weights of the workers still in use
            weights = split.split(",")
            keep = [weights[0]] + [w for e, w in zip(self.endpoints, weights[1:]) if e in endpoints]
            split = ",".join(keep)
        return json.dumps({"model": str(self.model), "uds": self.uds, "app": self.app_kwargs,
                           "rpc": ",".join(map(str, endpoints)), "split": split, "rpc_timeout": self.rpc_timeout})

    async def start_child(self) -> None:
        alive = self.endpoints
        if self.restarts:  # the workers that still answer (the old child is gone, so none is busy with it)
            alive = [e for e in self.endpoints if rpc.answers(e)]
        self.using = alive
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.uds)
        self.proc = subprocess.Popen(  # noqa: ASYNC220 - starting it does not block; waiting is polled below
            [sys.executable, "-m", "ggufkit.runtime.rpc_serve", self._child_config(alive)], stdin=subprocess.DEVNULL)
        where = ", ".join(map(str, alive)) or "the local CPU alone"
        print(f"model process {self.proc.pid}: loading on the local CPU + {where}", file=self.log, flush=True)
        while self.proc.poll() is None:
            if await self._child_healthy():
                self.status, self.reason = "ok", ""
                print("model process ready", file=self.log, flush=True)
                return
            await asyncio.sleep(0.2)
        self.status = "failed"
        self.reason = f"the model process exited with code {self.proc.returncode} while loading (see the log)"
        print(f"error: {self.reason}", file=self.log, flush=True)

    async def _child_healthy(self) -> bool:
        try:
            reader, writer = await asyncio.open_unix_connection(self.uds)
        except OSError:
            return False
        try:
            writer.write(b"GET /health HTTP/1.1\r\nhost: model\r\nconnection: close\r\n\r\n")
            await writer.drain()
            line = await asyncio.wait_for(reader.readline(), 10)
            return line.split(b" ")[1:2] == [b"200"]
        except (OSError, asyncio.TimeoutError, IndexError):
            return False
        finally:
            writer.close()

    def _dead_workers(self) -> list[str]:
        return rpc._down(self.using)

    async def supervise(self) -> None:
        """Restart the child when it dies: noticed by a relay (self.gone) or every WATCH_SECONDS."""
        self.gone = asyncio.Event()
        await self.start_child()
        while True:
            if self.status != "failed":
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self.gone.wait(), WATCH_SECONDS)
                self.gone.clear()
                if self.proc.poll() is None:
                    continue  # alive (or still dying: the next round sees it)
            else:
                await asyncio.sleep(RETRY_SECONDS)
            if self.status == "ok":
                dead = await asyncio.get_running_loop().run_in_executor(None, self._dead_workers)
                self.reason = (f"RPC worker {', '.join(dead)} went away" if dead else
                               f"the model process stopped (exit code {self.proc.returncode})")
            self.status = "restarting"
            self.restarts += 1
            await self.start_child()

    def worker_problem(self) -> tuple[str, bool]:
        """(message for the client, whether the child is gone), after the child's answer broke off."""
        for _ in range(50):  # the child's abort handler takes up to ~2 s to name the worker and exit
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        gone = self.proc.poll() is not None
        dead = self._dead_workers()
        if dead:
            return (f"RPC worker {', '.join(dead)} went away during the request; the model restarts on the "
                    "remaining devices"), gone
        silent = [str(e) for e in self.using if not rpc.answers(e)] if gone else []
        if silent:  # alive for TCP but not answering (stopped, hung): the child's stall watch ended it
            return (f"RPC worker {', '.join(silent)} stopped answering during the request; the model restarts on "
                    "the remaining devices"), gone
        if gone:
            return "the model process stopped during the request; it restarts", gone
        return "the model process broke off its answer", gone

    # ---- the relay

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await self._handle(reader, writer)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            with contextlib.suppress(OSError):
                writer.close()

    async def _handle(self, reader, writer) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError:
            writer.write(_error(431, "request head too large", "invalid_request_error"))
            return
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3:
            writer.write(_error(400, "malformed request line", "invalid_request_error"))
            return
        method, target, _ = parts
        headers = [(k.strip(), v.strip()) for k, _, v in (line.partition(":") for line in lines[1:] if line)]
        names = {k.lower(): v for k, v in headers}
        if "chunked" in names.get("transfer-encoding", "").lower():
            writer.write(_error(411, "chunked request bodies are not supported; send Content-Length",
                                "invalid_request_error"))
            return
        length = int(names.get("content-length", "0") or 0) if names.get("content-length", "0").isdigit() else -1
        if length < 0:
            writer.write(_error(400, "bad Content-Length", "invalid_request_error"))
            return
        if method == "GET" and target.split("?")[0] == "/health":
            body = json.dumps({"status": self.status, "model": self.model.stem, "reason": self.reason or None,
                               "restarts": self.restarts,
                               "workers": [{"endpoint": str(e), "in_use": e in self.using} for e in
                                           self.endpoints]}).encode()
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
                         + str(len(body)).encode() + b"\r\nconnection: close\r\n\r\n" + body)
            return
        if self.status != "ok" or self.proc is None or self.proc.poll() is not None:
            why = f" ({self.reason})" if self.reason else ""
            writer.write(_error(503, f"the model is {self.status}{why}; retry in a moment", extra="retry-after: 5\r\n"))
            return
        try:
            up_reader, up_writer = await asyncio.open_unix_connection(self.uds)
        except OSError:
            writer.write(_error(503, "the model process is not accepting requests; retry in a moment"))
            return
        kept = [(k, v) for k, v in headers if k.lower() not in ("connection", "keep-alive")]
        out = f"{lines[0]}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in kept) + "connection: close\r\n\r\n"
        up_writer.write(out.encode("latin-1"))
        pump = asyncio.create_task(self._copy_body(reader, up_writer, length))
        try:
            await self._relay(up_reader, writer)
        finally:
            pump.cancel()
            up_writer.close()

    @staticmethod
    async def _copy_body(reader, up_writer, length: int) -> None:
        while length > 0:
            data = await reader.read(min(length, 1 << 16))
            if not data:
                return
            up_writer.write(data)
            await up_writer.drain()
            length -= len(data)

    async def _relay(self, up_reader, writer) -> None:
        head = b""
        sent_head = False
        chunks: _Chunks | None = None
        remaining = None
        while True:
            try:
                data = await up_reader.read(1 << 16)
            except OSError:
                data = b""
            if not data:
                break
            if not sent_head:
                head += data
                end = head.find(b"\r\n\r\n")
                if end < 0:
                    continue
                hdrs = head[:end].decode("latin-1").lower()
                body = head[end + 4:]
                if re.search(r"\r\ntransfer-encoding:\s*chunked", hdrs):
                    chunks = _Chunks()
                    chunks.feed(body)
                elif m := re.search(r"\r\ncontent-length:\s*(\d+)", hdrs):
                    remaining = int(m.group(1)) - len(body)
                writer.write(head)
                sent_head = True
            else:
                if chunks:
                    chunks.feed(data)
                elif remaining is not None:
                    remaining -= len(data)
                writer.write(data)
            await writer.drain()
        complete = sent_head and ((chunks is not None and chunks.done) or (remaining is not None and remaining <= 0)
                                  or (chunks is None and remaining is None))
        if complete:
            return
        message, gone = await asyncio.get_running_loop().run_in_executor(None, self.worker_problem)
        if gone and self.status == "ok":  # from now on /health and new requests say so, until the child is back
            self.status, self.reason = "restarting", message.split(" during the request")[0]
            self.gone.set()
        if not sent_head:
            writer.write(_error(502, message))
        elif chunks is not None and chunks.at_boundary:
            event = b"data: " + json.dumps({"error": {"message": message, "type": "server_error",
                                                      "code": 502}}).encode() + b"\n\n"
            writer.write(f"{len(event):x}\r\n".encode() + event + b"\r\n0\r\n\r\n")
        with contextlib.suppress(OSError):
            await writer.drain()


def serve(model: Path, app_kwargs: dict, rpc_text: str, split: str | None, host: str, port: int,
          rpc_timeout: float = rpc.STALL_SECONDS) -> None:
    """Run the front on host:port until SIGINT/SIGTERM; the child is stopped with it."""
    endpoints = rpc.parse_endpoints(rpc_text)
    rpc.parse_split(split, len(endpoints) + 1)
    for e in endpoints:  # a worker down at start: a one-line error, before anything listens
        rpc.probe(e)
    front = Front(model, app_kwargs, endpoints, split, rpc_timeout=rpc_timeout)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        from ggufkit.errors import RuntimeFailure

        raise RuntimeFailure(f"cannot listen: {e.strerror}", f"{host}:{port}") from None
    sock.listen(128)

    async def main():
        server = await asyncio.start_server(front.handle, sock=sock, limit=HEAD_LIMIT)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        supervisor = asyncio.create_task(front.supervise())
        async with server:
            await stop.wait()
        supervisor.cancel()

    try:
        asyncio.run(main())
    finally:
        if front.proc and front.proc.poll() is None:
            front.proc.terminate()
            try:
                front.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                front.proc.kill()
        with contextlib.suppress(OSError):
            os.unlink(front.uds)
            os.rmdir(front.tmp)


def _child(config: str) -> None:
    """The model process: workers added, the usual app (commands/serve.build_app), uvicorn on the Unix socket."""
    import uvicorn

    from ggufkit.commands.serve import build_app

    cfg = json.loads(config)
    model = Path(cfg["model"])
    offload = (rpc.offload_for(model, cfg["rpc"], cfg["split"], log=sys.stderr, timeout=cfg["rpc_timeout"])
               if cfg["rpc"] else None)
    app = build_app(model, offload=offload, **cfg["app"])
    if offload:  # the model is loaded: its connections to the workers fail instead of hanging
        rpc.make_safe(offload)
    uvicorn.run(app, uds=cfg["uds"], log_level="warning", access_log=False)


if __name__ == "__main__":
    from ggufkit.errors import GgufkitError

    try:
        _child(sys.argv[1])
    except GgufkitError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(e.exit_code)
