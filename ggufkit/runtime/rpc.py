"""One model over several machines with llama.cpp's RPC backend (ggml-rpc): workers, device setup, the layer split.

A worker is llama.cpp's `rpc-server` (shipped with ggufkit's llama-cpp-python build as llama_cpp/lib/
ggml-rpc-server). The head process adds each worker to ggml's device list (`ggml_backend_rpc_add_server` +
`ggml_backend_register`, what llama.cpp's `--rpc` does); llama.cpp then treats every worker as a GPU-type device:
`n_gpu_layers` layers go to the workers, divided by `tensor_split`; the rest stay on the local CPU.

    endpoints = parse_endpoints("10.0.0.2:50052,10.0.0.3:50052")
    infos = [probe(e) for e in endpoints]              # one-line RuntimeFailure if one is down or not a worker
    add_servers(endpoints)                             # ggml's device list: CPU + RPC0 + RPC1
    kwargs = offload_kwargs(layer_counts(30, [1, 1, 1]))  # {"n_gpu_layers": 21, "tensor_split": [...]}

What llama.cpp does with the split (src/llama-model.cpp, load_tensors): with n_gpu_layers = g, the last g of
the n_layer + 1 "layers" (the repeating blocks, then the output head) go to the devices and the first ones stay on
the CPU; the token embeddings always stay on the CPU. Device d gets the positions j in [0, g) where
cumsum(split)[d-1] <= j / g < cumsum(split)[d] (split normalised). So a split given as layer counts c_1..c_k
(the last device also holding the output head) is reproduced exactly by tensor_split = c_1, ..., c_k + 1.

Failure: ggml-rpc calls GGML_ABORT when a connect fails or a worker dies mid-call (ggml-rpc.cpp,
RPC_STATUS_ASSERT), which kills the process that holds the model. So `probe` checks each worker before it is
added (and names the one that is down), `install_abort_handler` turns the abort into a one-line error and exit
code 4 instead of a core dump, and `serve --rpc` keeps the model in a child process (ggufkit.runtime.rpc_serve).
RPC has no authentication and no encryption: a worker belongs on loopback or a trusted network.
"""
from __future__ import annotations

import ctypes
import os
import socket
import struct
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from ggufkit.errors import InputError, RuntimeFailure

DEFAULT_PORT = 50052
PROTO_MAJOR = 7           # RPC_PROTO_MAJOR_VERSION of the ggml-rpc in llama-cpp-python 0.3.36
WARNING = ("warning: llama.cpp's RPC protocol has no authentication and no encryption: anyone who can reach "
           "this port can use this worker (allocate its memory, run computations, read what it holds) and send it "
           "malformed data. Keep it on loopback or a trusted network.")

# ---- the wire protocol, as far as a health check needs it (ggml-rpc.cpp)
# request:  | cmd u8 | size u64 | payload |      response: | size u64 | payload |      (little endian)
CMD_GET_DEVICE_MEMORY = 11
CMD_HELLO = 14
CMD_DEVICE_COUNT = 15
CONN_CAPS = 24            # bytes of transport capabilities in HELLO (all zero: plain TCP)


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class WorkerInfo:
    endpoint: Endpoint
    version: str
    devices: int
    free_bytes: int       # what the worker's first device reports (rpc-server: its host's free RAM)
    total_bytes: int


def parse_endpoints(text: str) -> list[Endpoint]:
    """"HOST:PORT[,HOST:PORT...]" -> endpoints; a missing port means 50052. InputError on a malformed entry."""
    out = []
    for item in (p.strip() for p in text.split(",")):
        if not item:
            continue
        host, sep, port = item.rpartition(":")
        if not sep:
            host, port = item, str(DEFAULT_PORT)
        if not host or ":" in host or not port.isdigit() or not 0 < int(port) < 65536:
            raise InputError(f"not HOST:PORT: {item!r} (IPv6 addresses are not supported by ggml-rpc)", "--rpc")
        out.append(Endpoint(host, int(port)))
    if not out:
        raise InputError("no worker given (HOST:PORT[,HOST:PORT...])", "--rpc")
    if len(set(out)) != len(out):
        raise InputError("a worker is listed twice", "--rpc")
    if len(out) > 16:
        raise InputError("at most 16 workers (GGML_RPC_MAX_SERVERS)", "--rpc")
    return out


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("connection closed")
        data += chunk
    return data


def _call(sock: socket.socket, cmd: int, payload: bytes, reply_size: int) -> bytes:
    sock.sendall(struct.pack("<BQ", cmd, len(payload)) + payload)
    (size,) = struct.unpack("<Q", _recv_exact(sock, 8))
    if size != reply_size:
        raise ConnectionError(f"unexpected reply size {size}")
    return _recv_exact(sock, size)


def probe(endpoint: Endpoint, timeout: float = 5.0) -> WorkerInfo:
    """Connect, HELLO, device count and memory of device 0; a RuntimeFailure naming the worker otherwise.

    rpc-server serves one client at a time: a worker busy with another head accepts the TCP connection but does
    not answer HELLO, which ends here as a timeout ("busy or not an rpc-server")."""
    where = f"worker {endpoint}"
    try:
        sock = socket.create_connection((endpoint.host, endpoint.port), timeout=timeout)
    except TimeoutError:
        raise RuntimeFailure(f"no answer within {timeout:g} s (host down or port filtered)", where) from None
    except OSError as e:
        raise RuntimeFailure(f"cannot connect: {e.strerror or e} (is `ggufkit worker` running there?)",
                             where) from None
    try:
        with sock:
            hello = _call(sock, CMD_HELLO, bytes(CONN_CAPS), 4 + CONN_CAPS)
            major, minor, patch = hello[0], hello[1], hello[2]
            if major != PROTO_MAJOR:
                raise RuntimeFailure(f"speaks RPC protocol {major}.{minor}.{patch}, this runtime {PROTO_MAJOR}.x: "
                                     "install the same ggufkit/llama-cpp-python version on every board", where)
            (count,) = struct.unpack("<I", _call(sock, CMD_DEVICE_COUNT, b"", 4))
            free = total = 0
            if count:
                free, total = struct.unpack("<QQ", _call(sock, CMD_GET_DEVICE_MEMORY, struct.pack("<I", 0), 16))
    except TimeoutError:
        raise RuntimeFailure(f"connected but no RPC answer within {timeout:g} s (busy serving another head, "
                             "or not an rpc-server)", where) from None
    except (OSError, ConnectionError) as e:
        raise RuntimeFailure(f"not an rpc-server, or it closed the connection ({e})", where) from None
    if count == 0:
        raise RuntimeFailure("offers no device", where)
    return WorkerInfo(endpoint, f"{major}.{minor}.{patch}", count, free, total)


def connect_state(endpoint: Endpoint, timeout: float = 2.0) -> str:
    """"up" (TCP connection accepted), "refused" (nothing listens: the worker is gone) or "silent" (timeout,
    unreachable host)."""
    try:
        with socket.create_connection((endpoint.host, endpoint.port), timeout=timeout):
            return "up"
    except ConnectionRefusedError:
        return "refused"
    except OSError:
        return "silent"


def answers(endpoint: Endpoint, timeout: float = 3.0) -> bool:
    """Does an rpc-server answer HELLO there? (A stopped worker still accepts connections: only this tells.)
    Ask only when no head holds the worker: it serves one client at a time."""
    try:
        probe(endpoint, timeout)
        return True
    except RuntimeFailure:
        return False


def reachable(endpoint: Endpoint, timeout: float = 2.0) -> bool:
    """Does anything accept TCP connections there? (No HELLO: a worker busy with our own model is reachable.)"""
    try:
        with socket.create_connection((endpoint.host, endpoint.port), timeout=timeout):
            return True
    except OSError:
        return False


# ---- the worker: llama.cpp's rpc-server

def server_binary() -> Path:
    from ggufkit.runtime import backends

    path = backends.lib_dir() / "ggml-rpc-server"
    if not path.is_file():
        raise RuntimeFailure("this llama-cpp-python has no rpc-server (ggml-rpc-server); install ggufkit's "
                             "runtime build with `make setup` (llama_build.py builds it with GGML_RPC=ON)", path)
    return path


def worker_command(host: str = "127.0.0.1", port: int = DEFAULT_PORT, threads: int | None = None,
                   cache: bool = False) -> list[str]:
    from ggufkit.runtime import default_threads

    cmd = [str(server_binary()), "-H", host, "-p", str(port), "-t", str(threads or default_threads())]
    return cmd + (["-c"] if cache else [])


def start_worker(host: str = "127.0.0.1", port: int = DEFAULT_PORT, threads: int | None = None,
                 mem_mib: int | None = None, cache: bool = False, **popen) -> subprocess.Popen:
    """rpc-server as a child process (it loads its CPU backend variant from its own directory).

    mem_mib: RLIMIT_DATA of the worker (its anonymous memory: the model buffers the head allocates there), set
    right after the start, before any head can connect. An allocation past it fails in the worker, and the head's
    load fails with llama.cpp's "unable to allocate" error instead of the board swapping or meeting the OOM
    killer."""
    proc = subprocess.Popen(worker_command(host, port, threads, cache), **popen)
    if mem_mib:
        import resource

        limit = int(mem_mib) << 20
        resource.prlimit(proc.pid, resource.RLIMIT_DATA, (limit, limit))
    return proc


def wait_listening(proc: subprocess.Popen, endpoint: Endpoint, timeout: float = 30.0) -> bool:
    """True once the worker answers an RPC HELLO; False if it exits first (rpc-server exits with code 0 when it
    cannot bind) or does not answer within timeout. HELLO rather than a TCP connect: another program may hold
    the port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            probe(endpoint, timeout=1.0)
            return proc.poll() is None
        except RuntimeFailure:
            time.sleep(0.05)
    return False


# ---- the head: ggml's device list

def _registry():
    from ggufkit.runtime import backends

    backends.ensure()
    lib = backends._ggml()
    lib.ggml_backend_reg_by_name.argtypes = [ctypes.c_char_p]
    lib.ggml_backend_reg_by_name.restype = ctypes.c_void_p
    lib.ggml_backend_register.argtypes = [ctypes.c_void_p]
    lib.ggml_backend_register.restype = None
    lib.ggml_backend_dev_count.restype = ctypes.c_size_t
    lib.ggml_backend_dev_get.argtypes = [ctypes.c_size_t]
    lib.ggml_backend_dev_get.restype = ctypes.c_void_p
    lib.ggml_backend_dev_name.argtypes = [ctypes.c_void_p]
    lib.ggml_backend_dev_name.restype = ctypes.c_char_p
    return lib


def device_names() -> list[tuple[str, str]]:
    """ggml's device list as (name, description), e.g. [("CPU", "..."), ("RPC0", "127.0.0.1:50052")]."""
    lib = _registry()
    out = []
    for i in range(lib.ggml_backend_dev_count()):
        dev = lib.ggml_backend_dev_get(i)
        out.append((lib.ggml_backend_dev_name(dev).decode(), lib.ggml_backend_dev_description(dev).decode()))
    return out


_added: list[Endpoint] = []


def add_servers(endpoints: list[Endpoint], timeout: float = 5.0) -> list[WorkerInfo]:
    """Probe every worker (all must answer), then add them to ggml's device list in this order. Once per process:
    ggml cannot remove a device, so a second call must name the same workers."""
    if _added:
        if list(endpoints) != _added:
            raise RuntimeFailure(f"this process already uses workers {','.join(map(str, _added))}")
        return [probe(e, timeout) for e in endpoints]
    infos = [probe(e, timeout) for e in endpoints]
    lib = _registry()
    reg = lib.ggml_backend_reg_by_name(b"RPC")
    if not reg:
        raise RuntimeFailure("this llama-cpp-python has no RPC backend (libggml-rpc.so): build it with "
                             "GGML_RPC=ON (`make setup`)")
    addr = lib.ggml_backend_reg_get_proc_address(reg, b"ggml_backend_rpc_add_server")
    if not addr:
        raise RuntimeFailure("the RPC backend has no ggml_backend_rpc_add_server")
    add_server = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_char_p)(addr)
    install_abort_handler(endpoints)
    for e in endpoints:
        worker_reg = add_server(str(e).encode())
        if not worker_reg:
            raise RuntimeFailure("offers no device", f"worker {e}")
        lib.ggml_backend_register(worker_reg)
    _added.extend(endpoints)
    return infos


# ---- the abort of a dead worker, as a one-line error

_ABORT_T = ctypes.CFUNCTYPE(None, ctypes.c_char_p)
_abort_state: dict = {}


def install_abort_handler(endpoints: list[Endpoint], exit_code: int = 4) -> None:
    """ggml_set_abort_callback: ggml's fatal errors (here: a worker that stopped answering) print one line naming
    the workers that are down, and the process exits with exit_code without a backtrace or core dump."""
    from ggufkit.runtime import backends

    base = ctypes.CDLL(backends._loaded("ggml-base"))
    base.ggml_set_abort_callback.argtypes = [_ABORT_T]
    base.ggml_set_abort_callback.restype = ctypes.c_void_p

    def on_abort(message: bytes) -> None:
        text = (message or b"").decode("utf-8", "replace").strip()
        down = _down(endpoints)
        if down:
            line = f"error: RPC worker {', '.join(down)} went away ({text.rsplit(': ', 1)[-1]})\n"
        else:
            line = f"error: llama.cpp aborted: {text}\n"
        try:
            os.write(2, line.encode())
        finally:
            os._exit(exit_code)

    callback = _ABORT_T(on_abort)
    _abort_state["callback"] = callback  # keep it alive as long as the process
    base.ggml_set_abort_callback(callback)


def _down(endpoints: list[Endpoint], tries: int = 10, timeout: float = 0.3) -> list[str]:
    """The workers that are gone, asked right after a connection to them broke: a refused connection (nothing
    listens) counts at once. An accepted one proves nothing yet: a killed rpc-server drops its client connection
    a moment before its listening socket, so every worker is asked up to `tries` times. A worker that never
    answered at all (timeouts only: power or network gone) counts as gone at the end. A live worker busy with
    this head may time out after its first answer (its listen backlog is 1), which is not held against it."""
    answered: set[Endpoint] = set()
    for i in range(tries):
        refused = []
        for e in endpoints:
            state = connect_state(e, timeout=timeout)
            if state == "refused":
                refused.append(str(e))
            elif state == "up":
                answered.add(e)
        if refused:
            return refused
        if i + 1 < tries:
            time.sleep(0.05)
    return [str(e) for e in endpoints if e not in answered]


# ---- connections that fail instead of hanging

KEEPALIVE_IDLE, KEEPALIVE_INTERVAL, KEEPALIVE_COUNT = 10, 5, 3   # a silent peer is noticed in ~25 s
USER_TIMEOUT_MS = 20_000                                          # sent data unacknowledged for 20 s: give up


def _worker_sockets(endpoints: list[Endpoint]):
    """(endpoint, duplicate socket) for each of this process's TCP connections to the workers (/proc/self/fd).
    The caller closes the duplicates; ggml's own descriptors stay open."""
    wanted = {}
    for e in endpoints:
        try:
            for info in socket.getaddrinfo(e.host, e.port, socket.AF_INET):
                wanted[(info[4][0], e.port)] = e
        except OSError:
            pass
    try:
        fds = [int(fd) for fd in os.listdir("/proc/self/fd")]
    except OSError:
        return
    for fd in fds:
        try:
            if not os.readlink(f"/proc/self/fd/{fd}").startswith("socket:"):
                continue
            s = socket.socket(fileno=os.dup(fd))
        except OSError:
            continue
        try:
            if s.family == socket.AF_INET and s.type == socket.SOCK_STREAM and s.getpeername() in wanted:
                yield wanted[s.getpeername()], s
        except OSError:
            pass
        finally:
            s.close()


def harden_connections(endpoints: list[Endpoint]) -> int:
    """TCP keepalive and TCP_USER_TIMEOUT on this process's connections to the workers.

    ggml-rpc waits on its sockets without a timeout: a worker whose board loses power or network would hang the
    head forever. With these options the kernel ends such a connection within ~25 s; ggml-rpc then aborts, which
    install_abort_handler turns into a one-line error (and serve --rpc into a restart). Linux only; returns how
    many connections were set."""
    count = 0
    for _, s in _worker_sockets(endpoints):
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, KEEPALIVE_IDLE)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, KEEPALIVE_INTERVAL)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, KEEPALIVE_COUNT)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, USER_TIMEOUT_MS)
            count += 1
        except OSError:
            pass
    return count


# Linux struct tcp_info (include/uapi/linux/tcp.h): byte offsets of the fields read here.
_TCPI = {"rtt_us": (68, "<I"), "bytes_acked": (120, "<Q"), "bytes_received": (128, "<Q"), "segs_out": (136, "<I"),
         "segs_in": (140, "<I")}
_TCPI_AGO = {"last_data_sent_ms": (44, "<I"), "last_data_recv_ms": (52, "<I")}   # milliseconds ago


# ---- a worker that stops answering but keeps its connection (SIGSTOP, a hung board, swapping to death)

STALL_SECONDS = 60.0      # --rpc-timeout: one llama_decode call that long with a worker silent ends the process
_stall = {"since": None, "wrapped": False, "thread": None}


def awaiting_reply(endpoints: list[Endpoint]) -> list[str]:
    """The workers this process sent data to after it last heard from them (Linux TCP_INFO), longest wait first:
    during a stalled llama_decode, the worker ggml-rpc is waiting on."""
    waits = []
    for e, s in _worker_sockets(endpoints):
        try:
            raw = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 192)
        except OSError:
            continue
        sent, recv = (struct.unpack_from(fmt, raw, off)[0] for off, fmt in _TCPI_AGO.values())
        if sent < recv:  # the last thing on this connection went out, and nothing came back since
            waits.append((sent, str(e)))
    return [name for _, name in sorted(waits, reverse=True)]


# The calls that can wait on a worker: decode starts the graph (asynchronously: with the output head on a worker,
# the wait is often in the logits read or the sampler that follows), and these synchronise with it.
_BLOCKING = ("llama_decode", "llama_encode", "llama_synchronize", "llama_get_logits", "llama_get_logits_ith",
             "llama_get_embeddings", "llama_get_embeddings_ith", "llama_sampler_sample")


def _timed(original):
    def call(*args):
        _stall["since"] = time.monotonic()
        try:
            return original(*args)
        finally:
            _stall["since"] = None
    return call


def watch_stalls(endpoints: list[Endpoint], seconds: float = STALL_SECONDS, exit_code: int = 4) -> None:
    """A worker that is alive for TCP but does not answer (stopped, hung): its kernel acknowledges what the head
    sends, so neither keepalive nor TCP_USER_TIMEOUT ends the connection and ggml-rpc would wait forever.

    llama_cpp's calls that can wait on a worker (_BLOCKING) are wrapped to note when each starts (ctypes releases
    the GIL for the call, so a watcher thread runs meanwhile); a call still running after `seconds` prints one line
    naming the worker(s) awaited (awaiting_reply) and exits the process with exit_code, as a dead worker does
    (install_abort_handler). The limit is per call (one batch of the prompt, one token), not per request."""
    import threading

    import llama_cpp.llama_cpp as low

    if not _stall["wrapped"]:
        for name in _BLOCKING:
            if hasattr(low, name):
                setattr(low, name, _timed(getattr(low, name)))
        _stall["wrapped"] = True
    _stall["seconds"] = seconds
    if _stall["thread"] is not None:
        return

    def watch() -> None:
        while True:
            time.sleep(min(1.0, _stall["seconds"] / 4))
            since = _stall["since"]
            if since is None or time.monotonic() - since <= _stall["seconds"]:
                continue
            names = awaiting_reply(endpoints) or [str(e) for e in endpoints]
            os.write(2, (f"error: RPC worker {', '.join(names)} stopped answering (no reply for "
                         f"{_stall['seconds']:g} s; --rpc-timeout)\n").encode())
            os._exit(exit_code)

    _stall["thread"] = threading.Thread(target=watch, name="ggufkit-rpc-stall", daemon=True)
    _stall["thread"].start()


def connection_stats(endpoints: list[Endpoint]) -> dict[str, dict]:
    """Per worker, this process's traffic so far (Linux TCP_INFO): bytes sent (acked) and received, segments
    out and in, smoothed RTT in microseconds."""
    out: dict[str, dict] = {}
    for e, s in _worker_sockets(endpoints):
        try:
            raw = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 192)
        except OSError:
            continue
        stats = {k: struct.unpack_from(fmt, raw, off)[0] for k, (off, fmt) in _TCPI.items() if off < len(raw)}
        total = out.setdefault(str(e), dict.fromkeys(stats, 0))
        for k, v in stats.items():
            total[k] = max(total[k], v) if k == "rtt_us" else total[k] + v
    return out


# ---- the split

def parse_split(text: str | None, n_devices: int) -> list[float] | None:
    """--split: None/"auto" -> None (decided from the devices' memory); "W0,W1,..." -> n_devices weights, the
    local CPU first, then the workers in --rpc order."""
    if text is None or text.strip().lower() == "auto":
        return None
    try:
        weights = [float(w) for w in text.split(",")]
    except ValueError:
        raise InputError(f"not auto or comma-separated numbers: {text!r}", "--split") from None
    if len(weights) != n_devices:
        raise InputError(f"{len(weights)} weights for {n_devices} devices (the local CPU first, then each --rpc "
                         "worker)", "--split")
    if any(w < 0 for w in weights) or sum(weights) <= 0:
        raise InputError("weights must be >= 0 with a positive sum", "--split")
    return weights


def layer_counts(n_layer: int, weights: list[float]) -> list[int]:
    """n_layer repeating layers divided in proportion to weights (largest remainders), in device order."""
    total = sum(weights)
    exact = [n_layer * w / total for w in weights]
    counts = [int(x) for x in exact]
    order = sorted(range(len(weights)), key=lambda i: (counts[i] - exact[i], i))
    for i in order[: n_layer - sum(counts)]:
        counts[i] += 1
    return counts


def offload_kwargs(counts: list[int]) -> dict:
    """Layer counts [cpu, worker 1, ..., worker k] -> Llama kwargs that make llama.cpp place exactly those layers
    (the output head goes to the last worker: llama.cpp offloads it with the last layer)."""
    workers = list(counts[1:])  # counts[0] layers stay on the CPU: the first ones
    if not workers or sum(workers) == 0:
        return {"n_gpu_layers": 0}
    workers[-1] += 1  # the output head is position n_layer, offloaded after the last layer
    return {"n_gpu_layers": sum(workers), "tensor_split": [float(c) for c in workers]}


def local_free_bytes() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def auto_weights(infos: list[WorkerInfo]) -> list[float]:
    """--split auto: in proportion to free memory (the head's MemAvailable, each worker's reported free RAM)."""
    return [float(local_free_bytes())] + [float(i.free_bytes or i.total_bytes or 1) for i in infos]


@dataclass
class RpcSetup:
    endpoints: list[Endpoint]
    infos: list[WorkerInfo]
    counts: list[int]             # layers per device: the local CPU, then each worker
    kwargs: dict                  # for llama_cpp.Llama

    def describe(self) -> str:
        parts = [f"CPU {self.counts[0]}"] + [f"{e} {c}" for e, c in zip(self.endpoints, self.counts[1:])]
        return "layers: " + ", ".join(parts) + " (the output head on the last worker)"


def setup(rpc: str, split: str | None, n_layer: int) -> RpcSetup:
    """--rpc and --split -> workers checked and added to ggml's device list, and the Llama kwargs."""
    endpoints = parse_endpoints(rpc)
    weights = parse_split(split, len(endpoints) + 1)
    infos = add_servers(endpoints)
    counts = layer_counts(n_layer, weights if weights is not None else auto_weights(infos))
    return RpcSetup(endpoints, infos, counts, offload_kwargs(counts))


def block_count(path) -> int:
    """The model's repeating layer count ({arch}.block_count) from its GGUF metadata."""
    from ggufkit.sources.gguf import validate_gguf

    g = validate_gguf(path)
    n = g.get(f"{g.architecture}.block_count")
    if not isinstance(n, int) or n <= 0:
        raise InputError(f"no {g.architecture}.block_count in the metadata", path)
    return n



def offload_for(path, rpc: str | None, split: str | None, log=None,
                timeout: float = STALL_SECONDS) -> dict | None:
    """What run/chat pass to runtime.load for --rpc/--split/--rpc-timeout: None without --rpc; else the workers
    are checked and added, the layout is written to `log` (a stream; nothing when None) and the Llama kwargs are
    returned (plus rpc_endpoints and rpc_timeout, which runtime.load takes out)."""
    if not rpc:
        if split:
            raise InputError("--split needs --rpc", "--split")
        return None
    plan = setup(rpc, split, block_count(path))
    if log is not None:
        print(plan.describe(), file=log, flush=True)
    return dict(plan.kwargs, rpc_endpoints=plan.endpoints, rpc_timeout=timeout)


def make_safe(offload: dict) -> None:
    """After the model is loaded with `offload`: its connections to the workers fail instead of hanging, whether
    a worker goes silent (harden_connections) or stops answering on a live connection (watch_stalls)."""
    endpoints = offload["rpc_endpoints"]
    harden_connections(endpoints)
    watch_stalls(endpoints, offload.get("rpc_timeout", STALL_SECONDS))


def options(f):
    """--rpc, --split and --rpc-timeout for run, chat and serve."""
    import click

    f = click.option("--split", default=None, metavar="auto|W0,W1,...",
                     help="With --rpc: layers per device in proportion to these weights, the local CPU first, "
                          "then each worker (default auto: by free memory).")(f)
    f = click.option("--rpc-timeout", type=click.FloatRange(min=1), default=STALL_SECONDS, show_default=True,
                     metavar="SECONDS",
                     help="With --rpc: a worker that answers nothing for this long during one step (a stopped or "
                          "hung board) ends the run with an error (serve: the model restarts without it).")(f)
    return click.option("--rpc", default=None, metavar="HOST:PORT[,...]",
                        help="Spread the layers over these `ggufkit worker`s and the local CPU.")(f)
