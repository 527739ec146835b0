"""Quantization kernel throughput: ggufkit vs llama.cpp's ggml_quantize_chunk, MB/s of f32 input.

Both quantize the same rows (default 64 MB: 4096 rows of 4096 normal floats); one thread and all threads (ggml
split into row ranges on Python threads: ctypes releases the GIL). Bytes are compared too, so a fast wrong kernel
cannot pass unnoticed. Prints a markdown table for BENCHMARKS.md.

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


def best_of(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


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
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()

    rows = max(1, int(args.mb * 2**20 / 4 / args.cols))
    x = np.random.default_rng(0).standard_normal((rows, args.cols)).astype(np.float32)  # (rows, cols) f32
    im = np.random.default_rng(1).uniform(0.1, 4, args.cols).astype(np.float32) if args.imatrix else None
    mb = x.nbytes / 2**20
    all_threads = quant.default_threads()

    print(f"machine: {cpu_model()}, {os.cpu_count()} logical CPUs; {datetime.date.today()}; "
          f"{rows} x {args.cols} f32 ({mb:.0f} MB), imatrix: {'yes' if im is not None else 'no'}, "
          f"ggufkit SIMD: {'off (GGUFKIT_FORCE_SCALAR)' if os.environ.get('GGUFKIT_FORCE_SCALAR') else 'auto'}")
    print()
    print("| type | SIMD | ggml 1T MB/s | ggufkit 1T MB/s | 1T ratio | "
          f"ggml {all_threads}T MB/s | ggufkit {all_threads}T MB/s | {all_threads}T ratio | bytes equal |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for name in args.types.split(","):
        qtype = GGMLQuantizationType[name.strip().upper()]
        ref = ggml_quantize(x, qtype, im)
        ours = quant.quantize(x, qtype, im, threads=all_threads)
        equal = bool(np.array_equal(ref, ours))
        speeds = []
        for threads in (1, all_threads):
            t_ggml = best_of(lambda q=qtype, n=threads: ggml_threaded(x, q, im, n), args.repeats)
            t_ours = best_of(lambda q=qtype, n=threads: quant.quantize(x, q, im, threads=n), args.repeats)
            speeds.append((mb / t_ggml, mb / t_ours))
        (g1, o1), (gn, on) = speeds
        print(f"| {qtype.name} | {'yes' if quant.simd_active(qtype) else 'no'} | {g1:.1f} | {o1:.1f} | "
              f"{o1 / g1:.2f}x | {gn:.1f} | {on:.1f} | {on / gn:.2f}x | {'yes' if equal else 'NO'} |", flush=True)


if __name__ == "__main__":
    main()
