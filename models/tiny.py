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
    # More families (issue 5). Sliding windows of 16 tokens and strong soft-caps, so a 64-token logits test
    # exercises them; Gemma's query_pre_attn_scalar is head_dim, the value llama.cpp derives for these shapes.
    # Phi names avoid "phi3": llama.cpp special-cases models *named* phi3 and then needs Phi-3's own tokens.
    "qwen2": ("qwen2", dict(tie_word_embeddings=True, rope_theta=1000000.0, pad_token_id=0)),
    "qwen3": ("qwen3", dict(tie_word_embeddings=False, rope_theta=1000000.0, pad_token_id=0, head_dim=128)),
    "gemma2": ("gemma2", dict(rope_theta=10000.0, sliding_window=16, query_pre_attn_scalar=64,
                              attn_logit_softcapping=5.0, final_logit_softcapping=10.0, pad_token_id=0)),
    "gemma3": ("gemma3_text", dict(sliding_window=16, query_pre_attn_scalar=64, pad_token_id=0,
                                   layer_types=["sliding_attention", "full_attention"],
                                   rope_parameters={"full_attention": {"rope_type": "linear", "factor": 8.0,
                                                                       "rope_theta": 1000000.0},
                                                    "sliding_attention": {"rope_type": "default",
                                                                          "rope_theta": 10000.0}})),
    "phi-mini": ("phi3", dict(tie_word_embeddings=False, rope_theta=10000.0, pad_token_id=0,
                              sliding_window=None)),
    "phi-mini-longrope": ("phi3", dict(tie_word_embeddings=True, pad_token_id=0,
                                       original_max_position_embeddings=512,
                                       rope_parameters={"rope_type": "longrope", "rope_theta": 10000.0,
                                                        "partial_rotary_factor": 0.5,
                                                        "long_factor": [1.0 + 0.5 * i for i in range(16)],
                                                        "short_factor": [1.0 + 0.25 * i for i in range(16)]})),
    # Mixtures of experts (issue 13). Per-expert tensors on disk, as save_pretrained writes them; the "-fused"
    # twins hold the same weights as transformers 5's fused 3-D parameters (TINY_FUSED_EXPERTS). Mixtral has 8
    # experts, so llama-quantize's 8-expert rules apply; "qwen3-moe-odd" has expert rows that are not a multiple
    # of 256 (fallback types).
    "qwen3-moe": ("qwen3_moe", dict(tie_word_embeddings=False, rope_theta=1000000.0, pad_token_id=0, head_dim=64,
                                    num_experts=4, num_experts_per_tok=2, moe_intermediate_size=256,
                                    norm_topk_prob=True)),
    "qwen3-moe-odd": ("qwen3_moe", dict(tie_word_embeddings=False, rope_theta=1000000.0, pad_token_id=0,
                                        head_dim=64, num_experts=6, num_experts_per_tok=2,
                                        moe_intermediate_size=160, norm_topk_prob=True)),
    "mixtral": ("mixtral", dict(tie_word_embeddings=False, rope_theta=1000000.0, sliding_window=None,
                                num_local_experts=8, num_experts_per_tok=2, intermediate_size=256)),
    # SmolLM3 (issue 13): 4 layers, so that layer 3 is one of its no-rope layers
    "smollm3": ("smollm3", dict(tie_word_embeddings=True, rope_theta=2000000.0, pad_token_id=0,
                                num_hidden_layers=4)),
    # gpt-oss (issue 13): experts fused input-major with interleaved gate/up (its only layout); sliding window 16
    # on the even layers, attention sinks, YaRN rope (transformers' defaults)
    "gpt-oss": ("gpt_oss", dict(tie_word_embeddings=False, pad_token_id=0, intermediate_size=256,
                                num_local_experts=4, num_experts_per_tok=2, sliding_window=16,
                                layer_types=["sliding_attention", "full_attention"])),
    # LFM2 (issue 13): conv, attention, conv, attention; intermediate 768 -> FFN width 512 (LFM2's 2/3 rule)
    "lfm2": ("lfm2", dict(tie_word_embeddings=True, pad_token_id=0, intermediate_size=768, num_hidden_layers=4,
                          layer_types=["conv", "full_attention", "conv", "full_attention"])),
    # LFM2 MoE: layer 0 dense, layers 1-3 MoE (4 experts, routing bias randomised with the other vectors)
    "lfm2-moe": ("lfm2_moe", dict(tie_word_embeddings=True, pad_token_id=0, num_hidden_layers=4,
                                  layer_types=["conv", "full_attention", "conv", "full_attention"],
                                  num_experts=4, num_experts_per_tok=2, moe_intermediate_size=256,
                                  num_dense_layers=1)),
    # Qwen 3.5 (issue 13): 3 gated delta-net layers then 1 full-attention layer; 2 key heads, 4 value heads (so
    # the V-head reordering matters), partial rope (0.25 of head_dim 64)
    "qwen3.5": ("qwen3_5_text", dict(tie_word_embeddings=False, pad_token_id=0, num_hidden_layers=4,
                                     linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=64,
                                     linear_value_head_dim=64, linear_conv_kernel_dim=4,
                                     rope_parameters={"rope_type": "default", "rope_theta": 10000000.0,
                                                      "partial_rotary_factor": 0.25})),
    "qwen3.5-moe": ("qwen3_5_moe_text", dict(tie_word_embeddings=False, pad_token_id=0, num_hidden_layers=4,
                                             linear_num_key_heads=2, linear_num_value_heads=4,
                                             linear_key_head_dim=64, linear_value_head_dim=64,
                                             linear_conv_kernel_dim=4, num_experts=4, num_experts_per_tok=2,
                                             moe_intermediate_size=256, shared_expert_intermediate_size=256,
                                             rope_parameters={"rope_type": "default", "rope_theta": 10000000.0,
                                                              "partial_rotary_factor": 0.25})),
}
TINY_CONFIGS["qwen3-moe-fused"] = TINY_CONFIGS["qwen3-moe"]
TINY_CONFIGS["mixtral-fused"] = TINY_CONFIGS["mixtral"]
# Entries saved from the model's in-memory state dict: MoE experts as fused (n_expert, rows, cols) parameters
TINY_FUSED_EXPERTS = {"qwen3-moe-fused", "mixtral-fused"}
# Entries whose tokenizer is not the demo model's BPE one: name -> kind. "spm" is a SentencePiece tokenizer
# trained locally by models/spm_tokenizer.py (cached next to the checkpoint, as `spm-tokenizer/`).
TINY_TOKENIZERS: dict[str, str] = {"llama-spm": "spm"}
# Entries whose 1-D weights (norms, biases) are randomised too, so that a mix-up between them shows in the logits.
TINY_RANDOM_VECTORS = {"qwen2", "qwen3", "gemma2", "gemma3", "phi-mini", "phi-mini-longrope", "qwen3-moe",
                       "qwen3-moe-odd", "qwen3-moe-fused", "mixtral", "mixtral-fused", "smollm3",
                       "gpt-oss", "lfm2", "lfm2-moe", "qwen3.5", "qwen3.5-moe"}


# issue 14 (batch A). Granite's multipliers at granite-3.x-like values, so that each one shows in the logits.
TINY_BATCH_A: dict[str, tuple[str, dict]] = {
    "granite": ("granite", dict(tie_word_embeddings=True, rope_theta=10000.0, pad_token_id=0,
                                embedding_multiplier=12.0, attention_multiplier=0.015625, residual_multiplier=0.22,
                                logits_scaling=8.0)),
    "granitemoe": ("granitemoe", dict(tie_word_embeddings=False, rope_theta=10000.0, pad_token_id=0,
                                      intermediate_size=256, num_local_experts=4, num_experts_per_tok=2,
                                      embedding_multiplier=12.0, attention_multiplier=0.015625,
                                      residual_multiplier=0.22, logits_scaling=6.0)),
    "qwen2-moe": ("qwen2_moe", dict(tie_word_embeddings=False, rope_theta=1000000.0, pad_token_id=0,
                                    num_experts=4, num_experts_per_tok=2, moe_intermediate_size=256,
                                    shared_expert_intermediate_size=512, norm_topk_prob=False)),
    # Qwen1.5-MoE's experts are 1408 wide, its shared expert 5632: expert rows of 176 here (fallback types)
    "qwen2-moe-odd": ("qwen2_moe", dict(tie_word_embeddings=False, rope_theta=1000000.0, pad_token_id=0,
                                        num_experts=6, num_experts_per_tok=4, moe_intermediate_size=176,
                                        shared_expert_intermediate_size=704, norm_topk_prob=False)),
    "olmo2": ("olmo2", dict(tie_word_embeddings=False, rope_theta=500000.0, pad_token_id=0)),
    # OLMo 3: a 16-token window on layer 0, YaRN on the full-attention layer (as the long-context releases)
    "olmo3": ("olmo3", dict(tie_word_embeddings=False, pad_token_id=0, sliding_window=24,
                            layer_types=["sliding_attention", "full_attention"],
                            rope_parameters={"full_attention": {"rope_type": "yarn", "rope_theta": 500000.0,
                                                                "factor": 8.0,
                                                                "original_max_position_embeddings": 256,
                                                                "attention_factor": 1.3, "beta_fast": 32.0,
                                                                "beta_slow": 1.0},
                                             "sliding_attention": {"rope_type": "default",
                                                                   "rope_theta": 500000.0}})),
    "olmoe": ("olmoe", dict(tie_word_embeddings=False, rope_theta=10000.0, pad_token_id=0, num_key_value_heads=4,
                            intermediate_size=256, num_experts=4, num_experts_per_tok=2, norm_topk_prob=False)),
    # EXAONE 4: as the 1.2B (no window, rope everywhere, tied) and as the 32B (64 layers: llama.cpp's only
    # windowed layer count; three 24-token sliding layers with rope, then a global layer without, repeated)
    "exaone4": ("exaone4", dict(tie_word_embeddings=True, pad_token_id=0, sliding_window=None,
                                layer_types=["full_attention"] * 2,
                                rope_parameters={"rope_type": "llama3", "rope_theta": 1000000.0, "factor": 16.0,
                                                 "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                                 "original_max_position_embeddings": 256})),
    "exaone4-swa": ("exaone4", dict(tie_word_embeddings=True, pad_token_id=0, num_hidden_layers=64,
                                    intermediate_size=256, sliding_window=24, sliding_window_pattern=4,
                                    rope_parameters={"rope_type": "llama3", "rope_theta": 1000000.0,
                                                     "factor": 16.0, "low_freq_factor": 1.0,
                                                     "high_freq_factor": 4.0,
                                                     "original_max_position_embeddings": 256})),
    "glm4": ("glm4", dict(tie_word_embeddings=False, pad_token_id=0,
                          rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                           "partial_rotary_factor": 0.5})),
    # GLM-4-9B's FFN is 13696 wide (a multiple of 128, not 256): ffn_down rows of 384 here (fallback types)
    "glm4-odd": ("glm4", dict(tie_word_embeddings=True, pad_token_id=0, intermediate_size=384, head_dim=128,
                              rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                               "partial_rotary_factor": 0.5})),
    "ernie4.5": ("ernie4_5", dict(tie_word_embeddings=True, rope_theta=500000.0, pad_token_id=0, head_dim=128)),
    # ERNIE 4.5 MoE: layer 0 dense, layers 1-2 MoE (routing correction bias randomised), 2 shared experts; the
    # dense FFN is 1024 = 2 kv heads x 512 shared-expert width, the relation llama.cpp's converter assumes
    "ernie4.5-moe": ("ernie4_5_moe", dict(tie_word_embeddings=False, rope_theta=500000.0, pad_token_id=0,
                                          num_hidden_layers=3, intermediate_size=1024, moe_num_experts=4, moe_k=2,
                                          moe_intermediate_size=256, moe_num_shared_experts=2,
                                          moe_layer_start_index=1, moe_layer_interval=1)),
    "phimoe": ("phimoe", dict(tie_word_embeddings=False, rope_theta=10000.0, pad_token_id=0, sliding_window=None,
                              intermediate_size=256, num_local_experts=4, num_experts_per_tok=2,
                              attention_bias=True, lm_head_bias=True,
                              original_max_position_embeddings=2048)),
    "seed-oss": ("seed_oss", dict(tie_word_embeddings=False, rope_theta=10000000.0, pad_token_id=0, head_dim=128)),
    # Apertus: transformers' default llama3 rope (theta 12e6, factor 8 from 8192); xIELU alphas randomised too
    "apertus": ("apertus", dict(tie_word_embeddings=False, pad_token_id=0, max_position_embeddings=65536)),
    # Hunyuan: NTK alpha rope as the releases state it (type "dynamic", alpha 1000 -> a stretched base)
    "hunyuan": ("hunyuan_v1_dense", dict(tie_word_embeddings=True, pad_token_id=0, head_dim=128,
                                         max_position_embeddings=32768,
                                         rope_parameters={"rope_type": "dynamic", "rope_theta": 10000.0,
                                                          "alpha": 1000.0, "factor": 1.0})),
}
# the same weights under transformers 5's in-memory names (fused experts; granitemoe's router.weight, ERNIE's
# gate.moe_statics bias), for tests/test_moe.py's layout pairs
TINY_BATCH_A |= {"granitemoe-fused": TINY_BATCH_A["granitemoe"], "ernie4.5-moe-fused": TINY_BATCH_A["ernie4.5-moe"]}
TINY_FUSED_EXPERTS |= {"granitemoe-fused", "ernie4.5-moe-fused"}
TINY_CONFIGS.update(TINY_BATCH_A)
# ERNIE 4.5 and Phi-3.5-MoE ship SentencePiece tokenizers (llama.cpp's converters need one)
TINY_TOKENIZERS |= {"ernie4.5": "spm", "ernie4.5-moe": "spm", "ernie4.5-moe-fused": "spm", "phimoe": "spm"}
TINY_RANDOM_VECTORS |= set(TINY_BATCH_A)


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
    config = AutoConfig.for_model(model_type, vocab_size=vocab_size, **(BASE | overrides),
                                  bos_token_id=ids.get(tok_cfg.get("bos_token")),
                                  eos_token_id=ids.get(tok_cfg.get("eos_token")))
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():  # random init has tiny std (0.02); widen it so logits differ visibly between tokens
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.08)
            elif name in TINY_RANDOM_VECTORS:
                p.add_(torch.randn_like(p) * 0.2)
        for buffer_name, b in model.named_buffers():  # saved routing biases (LFM2 MoE) are buffers
            if buffer_name.endswith("expert_bias") and name in TINY_RANDOM_VECTORS:
                b.add_(torch.randn_like(b) * 0.2)
    model = model.to(torch.bfloat16)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".", dir=out.parent))
    model.save_pretrained(tmp, safe_serialization=True)
    if name in TINY_FUSED_EXPERTS:  # the same weights under the in-memory (fused expert) names
        from safetensors.torch import save_file

        for f in tmp.glob("*.safetensors*"):
            f.unlink()
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
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
