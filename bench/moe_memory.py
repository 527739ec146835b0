"""Peak RSS of converting a mixture-of-experts checkpoint vs a dense one of the same size, both expert layouts.

    python bench/moe_memory.py [--scheme q4_k_m]

Builds (once, under models/) random checkpoints with transformers' own classes: a Mixtral-shaped MoE with
8 experts of 1024 x 2048 in each of 2 layers (every stacked expert tensor is 64 MiB in f32), the same weights
saved as fused 3-D parameters, and a llama whose dense FFN is as wide as all experts together (the same bytes
per layer). Each conversion runs in a fresh process; peak RSS is its ru_maxrss (see bench/convert.py's
launcher). Streaming keeps one row block (16 MiB of f32) in flight, so the MoE peak should equal the dense peak,
not grow by a stacked tensor.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "models"))

SHAPE = {"hidden_size": 1024, "num_hidden_layers": 2, "num_attention_heads": 8, "num_key_value_heads": 4,
         "head_dim": 128, "tie_word_embeddings": False, "rope_theta": 1000000.0}
CASES = {
    "mixtral 8 x (1024 x 2048), per-expert tensors": ("mixtral", dict(SHAPE, num_local_experts=8,
                                                                      num_experts_per_tok=2,
                                                                      intermediate_size=2048), False),
    "mixtral 8 x (1024 x 2048), fused 3-D experts": ("mixtral", dict(SHAPE, num_local_experts=8,
                                                                     num_experts_per_tok=2,
                                                                     intermediate_size=2048), True),
    "llama, dense FFN 1024 x 16384 (same bytes)": ("llama", dict(SHAPE, intermediate_size=16384), False),
}


def build(label: str, model_type: str, overrides: dict, fused: bool) -> Path:
    import tiny

    key = "bench-moe-" + "".join(c if c.isalnum() else "-" for c in label)[:40]
    tiny.TINY_CONFIGS[key] = (model_type, overrides)
    if fused:
        tiny.TINY_FUSED_EXPERTS.add(key)
    return tiny.make_tiny(key, ROOT / "models" / key)


def main() -> int:
    from convert import timed

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scheme", default="q4_k_m")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="ggufkit-bench-", dir=ROOT / "models") as work:
        for label, (model_type, overrides, fused) in CASES.items():
            src = build(label, model_type, overrides, fused)
            out = Path(work) / "out.gguf"
            wall, mib = timed([sys.executable, "-m", "ggufkit.cli", "convert", str(src), "--quiet", "--scheme",
                               args.scheme, "--threads", str(args.threads), "-o", str(out)])
            gb = sum(f.stat().st_size for f in src.glob("*.safetensors")) / 1e9
            rows.append(f"| {label} | {gb:.2f} GB | {wall:.1f} s | {mib:.0f} MiB | {out.stat().st_size / 1e6:.0f} MB |")
            print(rows[-1], flush=True)
    print(f"\nscheme {args.scheme}, {args.threads} threads")
    print("| checkpoint | input (bf16) | time | peak RSS | output |\n| --- | --- | --- | --- | --- |")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
