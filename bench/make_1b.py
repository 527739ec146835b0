"""A 1B-class random llama checkpoint for bench/convert.py: hidden 2048, 16 layers, intermediate 8192, 32 heads
(8 KV heads), the demo model's tokenizer (vocab 49152, tied embeddings), BF16 in 3 safetensors shards + index,
~2.1 GB, in models/bench-1b/ (git-ignored). Deterministic; skipped when already complete.

    python bench/make_1b.py [OUT_DIR]

Tensors are drawn one by one with torch (N(0, 0.02) like a fresh init, norms at 1), so memory stays at one shard.
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "models" / "smollm2-135m-instruct"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")
CONFIG = {
    "model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 2048, "intermediate_size": 8192,
    "num_hidden_layers": 16, "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 64,
    "max_position_embeddings": 8192, "rms_norm_eps": 1e-5, "vocab_size": 49152, "tie_word_embeddings": True,
    "rope_parameters": {"rope_theta": 100000.0, "rope_type": "default"}, "hidden_act": "silu",
    "attention_bias": False, "mlp_bias": False, "bos_token_id": 1, "eos_token_id": 2, "dtype": "bfloat16",
}
N_SHARDS = 3


def tensor_shapes(c: dict) -> dict[str, tuple[int, ...]]:
    e, ff, hd = c["hidden_size"], c["intermediate_size"], c["head_dim"]
    q, kv = c["num_attention_heads"] * hd, c["num_key_value_heads"] * hd
    shapes = {"model.embed_tokens.weight": (c["vocab_size"], e)}
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        shapes |= {p + "input_layernorm.weight": (e,), p + "self_attn.q_proj.weight": (q, e),
                   p + "self_attn.k_proj.weight": (kv, e), p + "self_attn.v_proj.weight": (kv, e),
                   p + "self_attn.o_proj.weight": (e, q), p + "post_attention_layernorm.weight": (e,),
                   p + "mlp.gate_proj.weight": (ff, e), p + "mlp.up_proj.weight": (ff, e),
                   p + "mlp.down_proj.weight": (e, ff)}
    shapes["model.norm.weight"] = (e,)
    return shapes


def make(out: Path) -> Path:
    import torch
    from safetensors.torch import save_file

    if (out / ".complete").is_file():
        return out
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    shapes = tensor_shapes(CONFIG)
    names = list(shapes)
    per_shard = -(-len(names) // N_SHARDS)
    gen = torch.Generator().manual_seed(0)
    weight_map, total = {}, 0
    for s in range(N_SHARDS):
        fname = f"model-{s + 1:05d}-of-{N_SHARDS:05d}.safetensors"
        part = {}
        for name in names[s * per_shard:(s + 1) * per_shard]:
            shape = shapes[name]
            t = (torch.ones(shape) if len(shape) == 1 else torch.randn(shape, generator=gen) * 0.02)
            part[name] = t.to(torch.bfloat16)
            weight_map[name] = fname
            total += part[name].numel() * 2
        save_file(part, tmp / fname, metadata={"format": "pt"})
        print(f"  {fname}: {len(part)} tensors", flush=True)
        del part
    (tmp / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    (tmp / "config.json").write_text(json.dumps(CONFIG, indent=2))
    for f in TOKENIZER_FILES:
        shutil.copy(DEMO / f, tmp / f)
    (tmp / ".complete").write_text("bench/make_1b.py\n")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "models" / "bench-1b"
    print(make(target))
