"""Quantization kernel throughput: ggufkit vs llama.cpp's ggml_quantize_chunk, MB/s of f32 input.

Both quantize the same rows (default 64 MB: 4096 rows of 4096 normal floats); one thread and all threads (ggml
split into row ranges on Python threads: ctypes releases the GIL). Bytes are compared too, so a fast wrong kernel
cannot pass unnoticed. Prints a markdown table for BENCHMARKS.md.

One-thread numbers are the calling thread's CPU time (both quantizers run on it), which a machine shared with
other jobs disturbs far less than wall clock; the all-threads numbers are wall clock. The measurements of one type
alternate (ggml, each ggufkit path, repeated) so that load changes hit all of them alike. Where the CPU has
AVX-512, ggufkit's 1T column is given for both the AVX-512 path and the AVX2 path (GGUFKIT_FORCE_AVX2=1), with
their ratio; bytes are compared on every path.

    .venv/bin/python bench/kernels.py                       # K-quants, no imatrix
    .venv/bin/python bench/kernels.py --types Q4_K,Q6_K --imatrix --mb 16
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from ggml_ref import ggml_quantize
from gguf import GGMLQuantizationType

from ggufkit import quant


def best_of(fn, repeats: int, clock=time.perf_counter) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = clock()
        fn()
        best = min(best, clock() - t0)
    return best


def on_path(path: str | None):
    """Select a ggufkit path for the quantize calls that follow: None (the default) or 'avx2' (forced)."""
    os.environ.pop("GGUFKIT_FORCE_AVX2", None)
    if path == "avx2":
        os.environ["GGUFKIT_FORCE_AVX2"] = "1"


def ggml_threaded(x: np.ndarray, qtype, imatrix, threads: int) -> np.ndarray:
    if threads == 1:
        return ggml_quantize(x, qtype, imatrix)
    bounds = np.linspace(0, len(x), threads + 1).astype(int)
    with ThreadPoolExecutor(threads) as pool:
        parts = pool.map(lambda r: ggml_quantize(x[bounds[r]:bounds[r + 1]], qtype, imatrix), range(threads))
        return np.concatenate(list(parts))


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--types", default="Q2_K,Q3_K,Q4_K,Q5_K,Q6_K")
    ap.add_argument("--mb", type=float, default=64.0, help="MB of f32 input per measurement")
    ap.add_argument("--cols", type=int, default=4096)
    ap.add_argument("--imatrix", action="store_true", help="use a random positive importance matrix")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    rows = max(1, int(args.mb * 2**20 / 4 / args.cols))
    x = np.random.default_rng(0).standard_normal((rows, args.cols)).astype(np.float32)  # (rows, cols) f32
    im = np.random.default_rng(1).uniform(0.1, 4, args.cols).astype(np.float32) if args.imatrix else None
    mb = x.nbytes / 2**20
    all_threads = quant.default_threads()

    loadavg = " / ".join(f"{v:.1f}" for v in os.getloadavg())
    print(f"machine: {cpu_model()}, {os.cpu_count()} logical CPUs; {datetime.date.today()}; load average "
          f"{loadavg} (1/5/15 min); {rows} x {args.cols} f32 ({mb:.0f} MB), imatrix: "
          f"{'yes' if im is not None else 'no'}, ggufkit SIMD: "
          f"{'off (GGUFKIT_FORCE_SCALAR)' if os.environ.get('GGUFKIT_FORCE_SCALAR') else 'auto'}")
    print()
    print("| type | path | ggml 1T MB/s | ggufkit 1T MB/s | 1T ratio | AVX2 1T MB/s | AVX2 ratio | AVX-512 / AVX2 | "
          f"ggml {all_threads}T MB/s | ggufkit {all_threads}T MB/s | {all_threads}T ratio | bytes equal |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for name in args.types.split(","):
        qtype = GGMLQuantizationType[name.strip().upper()]
        on_path(None)
        path = quant.simd_path(qtype)
        paths = [None, "avx2"] if path == "avx512" else [None]
        ref = ggml_quantize(x, qtype, im)
        equal = True
        for p in paths:
            on_path(p)
            equal &= bool(np.array_equal(ref, quant.quantize(x, qtype, im, threads=all_threads)))
        cpu = {"ggml": float("inf"), **{p: float("inf") for p in paths}}
        for _ in range(args.repeats):  # alternate, one run each, keep the best of each
            cpu["ggml"] = min(cpu["ggml"], best_of(lambda q=qtype: ggml_quantize(x, q, im), 1, time.thread_time))
            for p in paths:
                on_path(p)
                cpu[p] = min(cpu[p], best_of(lambda q=qtype: quant.quantize(x, q, im, threads=1), 1, time.thread_time))
        on_path(None)
        t_ggml = best_of(lambda q=qtype: ggml_threaded(x, q, im, all_threads), args.repeats)
        t_ours = best_of(lambda q=qtype: quant.quantize(x, q, im, threads=all_threads), args.repeats)
        g1, o1 = mb / cpu["ggml"], mb / cpu[None]
        avx2 = (f"{mb / cpu['avx2']:.1f} | {cpu['ggml'] / cpu['avx2']:.2f}x | {cpu['avx2'] / cpu[None]:.2f}x"
                if "avx2" in cpu else "- | - | -")
        print(f"| {qtype.name} | {path} | {g1:.1f} | {o1:.1f} | {o1 / g1:.2f}x | {avx2} | {mb / t_ggml:.1f} | "
              f"{mb / t_ours:.1f} | {t_ggml / t_ours:.2f}x | {'yes' if equal else 'NO'} |", flush=True)


if __name__ == "__main__":
    main()
