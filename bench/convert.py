"""ggufkit convert --scheme q4_k_m against the two-step route, side by side in one run.

    python bench/convert.py [--threads N] [--models demo,1b] [--scheme q4_k_m]

For each model (the demo SmolLM2-135M, and the 1B-class random llama from bench/make_1b.py):
  one-step:  ggufkit convert SRC --scheme q4_k_m                               (one process)
  two-step:  ggufkit convert SRC --scheme bf16, then llama_model_quantize -> Q4_K_M   (two processes)
Each step runs in a fresh process, timed by wall clock and by CPU time (user + system of all its threads, from
os.wait4: steadier than wall clock on a shared machine); peak RSS is the process's ru_maxrss; the two-step
route's peak is the larger of its two steps, its times the sums. The outputs are compared byte for byte.
(llama.cpp's own convert_hf_to_gguf.py does not ship with llama-cpp-python, so the BF16 file of the two-step
route is ggufkit's; llama_model_quantize then does what llama-quantize does.)
"""
from __future__ import annotations

import argparse
import filecmp
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "models"))

QUANTIZE = """
import ctypes, sys, llama_cpp
from ggufkit.plan.schemes import get_scheme
p = llama_cpp.llama_model_quantize_default_params()
p.ftype = int(get_scheme(sys.argv[3]).file_type)
p.nthread = int(sys.argv[4])
sys.exit(llama_cpp.llama_model_quantize(sys.argv[1].encode(), sys.argv[2].encode(), ctypes.byref(p)))
"""


# Linux keeps a process's peak RSS (ru_maxrss) across fork + exec, so a command forked straight from this process
# (which imports torch through models/build_demo.py: ~220 MiB) would report at least this process's RSS. Each
# command is started by this small launcher instead, which reports its own child's peak (in KiB) to a file.
LAUNCH = """
import os, subprocess, sys
proc = subprocess.Popen(sys.argv[2:])
_, status, usage = os.wait4(proc.pid, 0)
with open(sys.argv[1], "w") as f:
    f.write(f"{usage.ru_maxrss} {usage.ru_utime + usage.ru_stime}")
code = os.waitstatus_to_exitcode(status)
sys.exit(code if code >= 0 else 128 - code)
"""


CPU_SECONDS: dict[str, float] = {}  # command's output path -> its CPU seconds (user + system, all threads)


def timed(cmd: list[str]) -> tuple[float, float]:
    """Run cmd in a fresh process: (wall seconds, peak RSS in MiB); its CPU seconds go to CPU_SECONDS (keyed by
    the last argument that names a .gguf output). Raises if it fails."""
    with tempfile.TemporaryFile() as log, tempfile.NamedTemporaryFile("r") as peak:
        # log is not a pipe: llama.cpp logs a lot, a full pipe would stall it
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-c", LAUNCH, peak.name, *cmd], cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=log, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        _, status, _ = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        if os.waitstatus_to_exitcode(status) != 0:
            log.seek(0)
            raise SystemExit(f"failed: {' '.join(cmd)}\n{log.read().decode(errors='replace')[-2000:]}")
        rss_kib, cpu = peak.read().split()
        out = next((a for a in reversed(cmd) if a.endswith(".gguf")), "")
        CPU_SECONDS[out] = float(cpu)
        return wall, int(rss_kib) / 1024


def bench_model(name: str, src: Path, scheme: str, threads: int, work: Path) -> dict:
    py = sys.executable
    one = work / f"{name}-{scheme}-ggufkit.gguf"
    bf16 = work / f"{name}-bf16.gguf"
    two = work / f"{name}-{scheme}-two-step.gguf"
    convert = [py, "-m", "ggufkit.cli", "convert", str(src), "--quiet", "--threads", str(threads)]
    t1, r1 = timed([*convert, "--scheme", scheme, "-o", str(one)])
    t2a, r2a = timed([*convert, "--scheme", "bf16", "-o", str(bf16)])
    t2b, r2b = timed([py, "-c", QUANTIZE, str(bf16), str(two), scheme, str(threads)])
    same = filecmp.cmp(one, two, shallow=False)
    result = {"model": name, "src_gb": sum(f.stat().st_size for f in src.glob("*.safetensors")) / 1e9,
                  "one_s": t1, "one_mib": r1, "bf16_s": t2a, "quant_s": t2b, "two_s": t2a + t2b, "two_mib": max(r2a, r2b),
                  "identical": same, "out_mb": one.stat().st_size / 1e6,
                  "one_cpu": CPU_SECONDS[str(one)], "two_cpu": CPU_SECONDS[str(bf16)] + CPU_SECONDS[str(two)]}
    for f in (one, bf16, two):
        f.unlink()
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--models", default="demo,1b")
    ap.add_argument("--scheme", default="q4_k_m")
    args = ap.parse_args()
    models = {}
    for m in args.models.split(","):
        if m == "demo":
            import build_demo

            models["demo (SmolLM2-135M)"] = build_demo.build()
        elif m == "1b":
            import make_1b

            models["random llama 1B"] = make_1b.make(ROOT / "models" / "bench-1b")
    print(f"scheme {args.scheme}, {args.threads} threads")
    header = ("| model | input | ggufkit: time | ggufkit: peak RSS | two-step: time (bf16 + quantize) | "
              "two-step: peak RSS | speed-up | RSS ratio | identical bytes | CPU s: ggufkit / two-step (ratio) |")
    rows = []
    with tempfile.TemporaryDirectory(prefix="ggufkit-bench-", dir=ROOT / "models") as work:
        for name, src in models.items():
            r = bench_model(name, src, args.scheme, args.threads, Path(work))
            rows.append(f"| {name} | {r['src_gb']:.2f} GB | {r['one_s']:.1f} s | {r['one_mib']:.0f} MiB | "
                        f"{r['two_s']:.1f} s ({r['bf16_s']:.1f} + {r['quant_s']:.1f}) | {r['two_mib']:.0f} MiB | "
                        f"{r['two_s'] / r['one_s']:.2f}x | {r['one_mib'] / r['two_mib']:.2f} | "
                        f"{'yes' if r['identical'] else 'NO'} | {r['one_cpu']:.1f} / {r['two_cpu']:.1f} "
                        f"({r['two_cpu'] / r['one_cpu']:.2f}x) |")
            print(rows[-1], flush=True)
    print()
    print(header)
    print("|" + " --- |" * 10)
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
