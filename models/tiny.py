"""Tiny random Hugging Face checkpoints, one per supported architecture, for tests.

Every weight matrix's row length is a multiple of 256, so K-quant types apply without fallbacks, and each
checkpoint carries a real tokenizer (the demo model's BPE tokenizer by default). Generated with transformers'
own config and model classes; deterministic for a given seed.

    python models/tiny.py ARCH OUT_DIR [--transformers4]     e.g. python models/tiny.py llama /tmp/tiny-llama

Architectures are data: TINY_CONFIGS maps a name to (model_type, config overrides). A variant of an
architecture (e.g. untied embeddings) is one more entry.
"""
from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEMO_DIR = HERE / "smollm2-135m-instruct"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json",
                   "tokenizer.model")

# Shared shape: hidden 256, 4 heads of 64, 2 KV heads, FFN 512, 2 layers. Vocab comes from the tokenizer.
BASE = dict(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=64, max_position_embeddings=2048, rms_norm_eps=1e-5)

TINY_CONFIGS: dict[str, tuple[str, dict]] = {
    "llama": ("llama", dict(tie_word_embeddings=True, rope_theta=10000.0)),
    "llama-untied": ("llama", dict(tie_word_embeddings=False, rope_theta=500000.0)),
    "llama3-rope": ("llama", dict(tie_word_embeddings=False, rope_theta=500000.0,
                                  rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                                "high_freq_factor": 4.0,
                                                "original_max_position_embeddings": 1024})),
    "mistral": ("mistral", dict(tie_word_embeddings=False, rope_theta=1000000.0, sliding_window=None)),
    "llama-spm": ("llama", dict(tie_word_embeddings=False, rope_theta=10000.0)),
}
# Entries whose tokenizer is not the demo model's BPE one: name -> kind. "spm" is a SentencePiece tokenizer
# trained locally by models/spm_tokenizer.py (cached next to the checkpoint, as `spm-tokenizer/`).
TINY_TOKENIZERS: dict[str, str] = {"llama-spm": "spm"}


def as_transformers4(out: Path, tokenizer_class: str = "GPT2TokenizerFast") -> None:
    """Rewrite a checkpoint's JSON files the way transformers 4 saved them, as most downloaded checkpoints are:
    `rope_theta` / `rope_scaling` at the top level instead of `rope_parameters`, and a named fast tokenizer class
    instead of `TokenizersBackend`."""
    cfg_path = out / "config.json"
    cfg = json.loads(cfg_path.read_text())
    rope = cfg.pop("rope_parameters", None) or {}
    if "rope_theta" in rope:
        cfg["rope_theta"] = rope.pop("rope_theta")
    if rope.get("rope_type", "default") != "default":
        cfg["rope_scaling"] = rope
    cfg["transformers_version"] = "4.46.0"
    cfg.pop("dtype", None)
    cfg["torch_dtype"] = "bfloat16"
    cfg_path.write_text(json.dumps(cfg, indent=2) + "\n")
    tok_path = out / "tokenizer_config.json"
    tok = json.loads(tok_path.read_text())
    tok["tokenizer_class"] = tokenizer_class
    for k in ("backend", "is_local", "local_files_only"):
        tok.pop(k, None)
    tok_path.write_text(json.dumps(tok, indent=2, ensure_ascii=False) + "\n")


def make_tiny(name: str, out: Path, seed: int = 0, tokenizer_dir: Path = DEMO_DIR,
              transformers4: bool = False) -> Path:
    """Write the tiny checkpoint `name` to `out` (skipped if already complete). Returns `out`.
    transformers4=True writes the config and tokenizer_config the way transformers 4 did (see as_transformers4)."""
    out = Path(out)
    if (out / ".complete").is_file():
        return out
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    if name not in TINY_CONFIGS:
        raise ValueError(f"unknown tiny architecture {name!r}; known: {', '.join(TINY_CONFIGS)}")
    model_type, overrides = TINY_CONFIGS[name]
    tokenizer_class = "GPT2TokenizerFast"
    if TINY_TOKENIZERS.get(name) == "spm" and tokenizer_dir == DEMO_DIR:
        tokenizer_dir, tokenizer_class = _spm_tokenizer_dir(out.parent / "spm-tokenizer"), "LlamaTokenizerFast"
    tok_json = json.loads((tokenizer_dir / "tokenizer.json").read_text())
    vocab_size = len(tok_json["model"]["vocab"]) + sum(
        1 for t in tok_json.get("added_tokens", []) if t["content"] not in tok_json["model"]["vocab"])
    vocab_size = (vocab_size + 255) // 256 * 256
    tok_cfg = json.loads((tokenizer_dir / "tokenizer_config.json").read_text())
    vocab = tok_json["model"]["vocab"]
    ids = {t["content"]: t["id"] for t in tok_json.get("added_tokens", [])} | vocab
    config = AutoConfig.for_model(model_type, vocab_size=vocab_size, **BASE, **overrides,
                                  bos_token_id=ids.get(tok_cfg.get("bos_token")),
                                  eos_token_id=ids.get(tok_cfg.get("eos_token")))
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():  # random init has tiny std (0.02); widen it so logits differ visibly between tokens
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.08)
    model = model.to(torch.bfloat16)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".", dir=out.parent))
    model.save_pretrained(tmp, safe_serialization=True)
    for f in TOKENIZER_FILES:
        if (tokenizer_dir / f).is_file():
            shutil.copy(tokenizer_dir / f, tmp / f)
    if transformers4:
        as_transformers4(tmp, tokenizer_class)
    tmp.chmod(0o755)
    (tmp / ".complete").write_text(f"models/tiny.py {name} seed={seed} transformers4={transformers4}\n")
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out


def _spm_tokenizer_dir(cache: Path) -> Path:
    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))
    import spm_tokenizer

    return spm_tokenizer.make_spm_tokenizer(cache)


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--transformers4"]
    if len(args) != 2:
        sys.exit(__doc__)
    print(make_tiny(args[0], Path(args[1]), transformers4="--transformers4" in sys.argv))
