"""ggufkit quantize against llama.cpp's llama_model_quantize on the same BF16 GGUF, side by side in one run.

    python bench/quantize.py [--threads N] [--schemes q4_k_m,q6_k,q8_0] [--models demo,1b]

For each model (the demo SmolLM2-135M, and the 1B-class random llama from bench/make_1b.py) a BF16 GGUF is made
once with `ggufkit convert --scheme bf16`; then per scheme, each in a fresh process with the same thread count:
  ggufkit:   ggufkit quantize IN-BF16.gguf --scheme S -o A.gguf
  llama.cpp: llama_model_quantize(IN-BF16.gguf, B.gguf, ftype S, nthread) through llama-cpp-python
timed by wall clock, peak RSS from os.wait4 (bench/convert.py's launcher), outputs compared byte for byte.
The input file is read once before the runs so that both start from a warm page cache.
"""
from __future__ import annotations

import argparse
import filecmp
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "models"))

from convert import QUANTIZE, timed  # bench/convert.py: the same launcher and reference call


def warm(path: Path) -> None:
    with open(path, "rb") as f:
        while f.read(64 << 20):
            pass


def bench_scheme(name: str, bf16: Path, scheme: str, threads: int, work: Path) -> dict:
    py = sys.executable
    ours, ref = work / f"{name}-{scheme}-ggufkit.gguf", work / f"{name}-{scheme}-llama.gguf"
    warm(bf16)
    t_ref, r_ref = timed([py, "-c", QUANTIZE, str(bf16), str(ref), scheme, str(threads)])
    warm(bf16)
    t_ours, r_ours = timed([py, "-m", "ggufkit.cli", "quantize", str(bf16), "--scheme", scheme, "-o", str(ours),
                            "--threads", str(threads), "--quiet"])
    same = filecmp.cmp(ours, ref, shallow=False)
    size = ours.stat().st_size / 1e6
    for f in (ours, ref):
        f.unlink()
    return {"ours_s": t_ours, "ours_mib": r_ours, "ref_s": t_ref, "ref_mib": r_ref, "identical": same,
            "out_mb": size}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--models", default="demo,1b")
    ap.add_argument("--schemes", default="q4_k_m,q6_k,q8_0")
    args = ap.parse_args()
    py = sys.executable
    print(f"{args.threads} threads")
    rows = []
    with tempfile.TemporaryDirectory(prefix="ggufkit-bench-quantize-", dir=ROOT / "models") as tmp:
        work = Path(tmp)
        for m in args.models.split(","):
            if m == "demo":
                import build_demo

                name, src = "demo (SmolLM2-135M)", build_demo.build()
            else:
                import make_1b

                name, src = "random llama 1B", make_1b.make(ROOT / "models" / "bench-1b")
            bf16 = work / f"{m}-bf16.gguf"
            timed([py, "-m", "ggufkit.cli", "convert", str(src), "--scheme", "bf16", "-o", str(bf16), "--quiet"])
            for scheme in args.schemes.split(","):
                r = bench_scheme(m, bf16, scheme, args.threads, work)
                rows.append(f"| {name} | {bf16.stat().st_size / 1e9:.2f} GB BF16 | {scheme.upper()} | "
                            f"{r['ours_s']:.1f} s | {r['ours_mib']:.0f} MiB | {r['ref_s']:.1f} s | "
                            f"{r['ref_mib']:.0f} MiB | {r['ref_s'] / r['ours_s']:.2f}x | "
                            f"{r['ours_mib'] / r['ref_mib']:.2f} | {'yes' if r['identical'] else 'NO'} |")
                print(rows[-1], flush=True)
            bf16.unlink()
    print()
    print("| model | input | scheme | ggufkit: time | ggufkit: peak RSS | llama_model_quantize: time | "
          "llama: peak RSS | speed-up | RSS ratio | identical bytes |")
    print("|" + " --- |" * 10)
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
