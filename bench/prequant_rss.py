"""Peak RSS of converting pre-quantized checkpoints of the demo model against a plain conversion of it.

    python bench/prequant_rss.py [--scheme q4_k_m]

Checkpoints (made once under /tmp by the test fixtures' recipes, i.e. by the real tools): bitsandbytes NF4 with
double quantization (transformers + bitsandbytes on CPU), compressed-tensors int4 g32 symmetric (its own
compressor; the same grid as a 4-bit GPTQ group of 32), FP8 e4m3 with 64x64 blocks. Each conversion runs as
`ggufkit convert SRC --scheme SCHEME` in a fresh process (bench/convert.py's launcher: ru_maxrss of the child);
the plain conversion is the demo's own bf16 checkpoint at the same scheme.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "models"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scheme", default="q4_k_m")
    args = ap.parse_args()
    from convert import timed
    from prequant_fixtures import bnb_checkpoint, ct_packed_checkpoint, fp8_checkpoint

    demo = (ROOT / "models" / "smollm2-135m-instruct").resolve()
    sources = {"plain bf16": demo,
               "bnb nf4 dq": bnb_checkpoint(demo, "nf4", True, "float32"),
               "compressed-tensors int4 g32": ct_packed_checkpoint(demo, 4, True, 32, "float16"),
               "fp8 block 64": fp8_checkpoint(demo, "block64")}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, src in sources.items():
            for scheme in [args.scheme] + (["source"] if "int4" in label else []):
                out = Path(tmp) / f"{src.name}-{scheme}.gguf"
                wall, rss = timed([sys.executable, "-m", "ggufkit.cli", "convert", str(src), "--scheme", scheme,
                                   "-o", str(out), "-q"])
                rows.append((label, scheme, wall, rss))
                print(f"{label:<30} {scheme:<8} {wall:6.1f} s  peak RSS {rss:6.1f} MiB", flush=True)
    base = rows[0][3]
    print("\n| input | scheme | time | peak RSS | RSS vs plain |\n| --- | --- | --- | --- | --- |")
    for label, scheme, wall, rss in rows:
        print(f"| {label} | {scheme} | {wall:.1f} s | {rss:.0f} MiB | {rss / base:.2f} |")


if __name__ == "__main__":
    main()
