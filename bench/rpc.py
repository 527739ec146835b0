"""Tokens/s unsplit vs split over llama.cpp's RPC backend on loopback, and what crosses the wire per token.

    .venv/bin/python bench/rpc.py GGUF [--tokens 32] [--prompt-tokens 64] [--reps 2] [--threads 1]

Two rpc-servers on loopback (ggufkit.runtime.rpc.start_worker) and the local CPU; configurations: unsplit,
split 1,1,1 (CPU + two workers), and all layers on one worker. Each run is a fresh head process (ggml cannot take
a device out of its list): load, a prompt of --prompt-tokens, then --tokens greedy tokens. Per token: the head's
traffic to each worker over the generation phase (Linux TCP_INFO of its sockets: bytes out and in, segments),
and the CPU time of all processes (head getrusage + the workers' /proc/PID/stat), which unlike wall time does not
depend on how busy the machine is. Medians of --reps runs. The output ends with one JSON line.

    .venv/bin/python bench/rpc.py GGUF --memory-ctx 1024

instead checks `ggufkit fit --devices`' memory prediction: the split it picks for three laptop-16gb boards, two
fresh workers, a head that fills the context (ctx - 8 tokens), and each worker's VmHWM against its prediction.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

_HEAD = r"""
import json, resource, sys, time
from ggufkit import runtime
from ggufkit.runtime import rpc, backends
backends.ensure()
path, workers, split, n_prompt, n_gen, threads = sys.argv[1], sys.argv[2], sys.argv[3], *map(int, sys.argv[4:7])
offload = rpc.offload_for(path, workers, split) if workers else None
endpoints = rpc.parse_endpoints(workers) if workers else []
llm = runtime.load(path, n_ctx=n_prompt + n_gen + 16, n_threads=threads, offload=offload)
n_vocab = llm.n_vocab()
prompt = [llm.token_bos()] + [(i * 7919) % (n_vocab - 200) + 100 for i in range(n_prompt - 1)]
t = time.perf_counter(); llm.eval(prompt); token = llm.sample(temp=0); pp = time.perf_counter() - t
print("ready", flush=True); sys.stdin.readline()
net0 = rpc.connection_stats(endpoints)
cpu0 = resource.getrusage(resource.RUSAGE_SELF)
t = time.perf_counter()
for _ in range(n_gen):
    llm.eval([token])
    token = llm.sample(temp=0)
tg = time.perf_counter() - t
cpu1 = resource.getrusage(resource.RUSAGE_SELF)
net1 = rpc.connection_stats(endpoints)
net = {e: {k: (net1[e][k] - net0.get(e, {}).get(k, 0)) / n_gen for k in net1[e] if k != "rtt_us"}
       for e in net1}
print(json.dumps({"pp_tps": n_prompt / pp, "tg_tps": n_gen / tg, "net": net,
                  "head_cpu_s": cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime}), flush=True)
"""

_FILL = r"""
import sys
from ggufkit import runtime
from ggufkit.runtime import rpc, backends
backends.ensure()
path, workers, split, n_ctx = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
llm = runtime.load(path, n_ctx=n_ctx, n_threads=2, offload=rpc.offload_for(path, workers, split, log=sys.stderr))
n_vocab = llm.n_vocab()
llm.eval([llm.token_bos()] + [(i * 7919) % (n_vocab - 200) + 100 for i in range(n_ctx - 9)])
"""


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def one(gguf, workers, split, pids, args) -> dict:
    proc = subprocess.Popen([sys.executable, "-c", _HEAD, str(gguf), workers, split, str(args.prompt_tokens),
                             str(args.tokens), str(args.threads)], cwd=ROOT, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout.readline().strip() == "ready"
    before = {p: cpu_seconds(p) for p in pids}
    proc.stdin.write("go\n")
    proc.stdin.flush()
    result = json.loads(proc.stdout.readline())
    after = {p: cpu_seconds(p) for p in pids}
    proc.wait()
    workers_cpu = sum(after[p] - before[p] for p in pids)
    result["cpu_ms_per_token"] = 1000 * (result.pop("head_cpu_s") + workers_cpu) / args.tokens
    return result


def start_workers(ports, threads):
    from ggufkit.runtime import rpc

    procs = [rpc.start_worker(port=p, threads=threads, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for p in ports]
    for p, port in zip(procs, ports):
        assert rpc.wait_listening(p, rpc.Endpoint("127.0.0.1", port)), f"worker on {port} did not start"
    return procs


def speed(args) -> int:
    ports = [50152, 50153]
    procs = start_workers(ports, args.threads)
    try:
        both = ",".join(f"127.0.0.1:{p}" for p in ports)
        configs = {"unsplit": ("", ""), "cpu+2 workers (1,1,1)": (both, "1,1,1"),
                   "1 worker (0,1)": (f"127.0.0.1:{ports[0]}", "0,1")}
        results = {}
        for name, (workers, split) in configs.items():
            runs = [one(args.gguf, workers, split, [p.pid for p in procs], args) for _ in range(args.reps)]
            r = results[name] = {
                "pp_tps": statistics.median(x["pp_tps"] for x in runs),
                "tg_tps": statistics.median(x["tg_tps"] for x in runs),
                "cpu_ms_per_token": statistics.median(x["cpu_ms_per_token"] for x in runs),
                "net_per_token": runs[-1]["net"],
            }
            moved = ", ".join(f"{w}: out {v['bytes_acked'] / 1024:.1f} KiB, in {v['bytes_received'] / 1024:.1f} KiB, "
                              f"{v['segs_out']:.0f}/{v['segs_in']:.0f} segments"
                              for w, v in r["net_per_token"].items())
            print(f"{name:<24} prompt {r['pp_tps']:7.1f} tok/s  generation {r['tg_tps']:6.2f} tok/s  "
                  f"CPU {r['cpu_ms_per_token']:.1f} ms/token  per token: {moved or '-'}", flush=True)
        print(json.dumps({"model": args.gguf.name, "threads": args.threads, "tokens": args.tokens,
                          "prompt_tokens": args.prompt_tokens, "cpus": os.cpu_count(),
                          "load_avg": os.getloadavg()[0], "date": time.strftime("%Y-%m-%d"), "results": results}))
    finally:
        for p in procs:
            p.terminate()
            p.wait()
    return 0


def memory_check(gguf: Path, n_ctx: int) -> int:
    from ggufkit.edge import group, memory

    report = group.group_report(str(gguf), ["laptop-16gb"] * 3, n_ctx)
    row = report["file"]
    ports = [50162, 50163]
    procs = start_workers(ports, 1)
    try:
        workers = ",".join(f"127.0.0.1:{p}" for p in ports)
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", _FILL, str(gguf), workers, row["split"], str(n_ctx)], cwd=ROOT,
                       check=True)
        out = []
        for board, p in zip(row["boards"][1:], procs):
            text = Path(f"/proc/{p.pid}/status").read_text()
            hwm = int(text.split("VmHWM:")[1].split()[0]) * 1024 / memory.MIB
            ratio = board["total_mib"] / hwm
            out.append({"layers": board["layers"], "output_head": board["output_head"],
                        "predicted_mib": board["total_mib"], "measured_mib": round(hwm, 1), "ratio": round(ratio, 3)})
            print(f"worker layers {board['first_layer']}-{board['first_layer'] + board['layers'] - 1}"
                  f"{'+out' if board['output_head'] else ''}: predicted {board['total_mib']:.1f} MiB, "
                  f"measured VmHWM {hwm:.1f} MiB, predicted/measured {ratio:.3f}", flush=True)
        print(json.dumps({"model": gguf.name, "n_ctx": n_ctx, "split": row["split"], "workers": out,
                          "seconds": round(time.perf_counter() - t, 1), "date": time.strftime("%Y-%m-%d")}))
    finally:
        for p in procs:
            p.terminate()
            p.wait()
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("gguf", type=Path)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--prompt-tokens", type=int, default=64)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--memory-ctx", type=int, default=None, help="check the memory prediction instead")
    args = ap.parse_args()
    if args.memory_ctx:
        return memory_check(args.gguf, args.memory_ctx)
    return speed(args)


if __name__ == "__main__":
    sys.exit(main())
