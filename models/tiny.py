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
    # Gemma 4 (issue 13), the E2B shape in small: sliding / full layers alternating (window 16), full layers with
    # their own head_dim 128 and 1 KV head whose keys are also the values (attention_k_eq_v), layers 2-3 reusing
    # the KV of layers 0-1 (num_kv_shared_layers) with a double-wide MLP, per-layer embeddings of 256 per layer,
    # proportional rope (a quarter of the full head rotated), final soft-cap. vocab_size_per_layer_input None:
    # make_tiny sets it to the tokenizer's vocab size.
    "gemma4": ("gemma4_text", dict(sliding_window=16, pad_token_id=0, num_hidden_layers=4,
                                   layer_types=["sliding_attention", "full_attention"] * 2,
                                   global_head_dim=128, num_global_key_value_heads=1, attention_k_eq_v=True,
                                   num_kv_shared_layers=2, use_double_wide_mlp=True,
                                   hidden_size_per_layer_input=256, vocab_size_per_layer_input=None,
                                   final_logit_softcapping=10.0,
                                   rope_parameters={"full_attention": {"rope_type": "proportional",
                                                                       "partial_rotary_factor": 0.25,
                                                                       "rope_theta": 1000000.0},
                                                    "sliding_attention": {"rope_type": "default",
                                                                          "rope_theta": 10000.0}})),
    # Gemma 4 without per-layer embeddings or KV sharing (the 31B's layout): full layers with head_dim 128 and their
    # own v_proj, one KV head count for all layers
    "gemma4-dense": ("gemma4_text", dict(sliding_window=16, pad_token_id=0, num_hidden_layers=2,
                                         layer_types=["sliding_attention", "full_attention"], global_head_dim=128,
                                         attention_k_eq_v=False, hidden_size_per_layer_input=0,
                                         final_logit_softcapping=30.0,
                                         rope_parameters={"full_attention": {"rope_type": "proportional",
                                                                             "partial_rotary_factor": 0.25,
                                                                             "rope_theta": 1000000.0},
                                                          "sliding_attention": {"rope_type": "default",
                                                                                "rope_theta": 10000.0}})),
    # Gemma 4 with its mixture-of-experts block (the 26B-A4B's layout): every layer has the dense MLP plus 4
    # experts of 256 (top 2), router scale and per-expert scales randomised with the other vectors
    "gemma4-moe": ("gemma4_text", dict(sliding_window=16, pad_token_id=0, num_hidden_layers=2,
                                       layer_types=["sliding_attention", "full_attention"], global_head_dim=128,
                                       num_global_key_value_heads=1, attention_k_eq_v=True,
                                       hidden_size_per_layer_input=0, final_logit_softcapping=30.0,
                                       enable_moe_block=True, num_experts=4, top_k_experts=2,
                                       moe_intermediate_size=256,
                                       rope_parameters={"full_attention": {"rope_type": "proportional",
                                                                           "partial_rotary_factor": 0.25,
                                                                           "rope_theta": 1000000.0},
                                                        "sliding_attention": {"rope_type": "default",
                                                                              "rope_theta": 10000.0}})),
    # Gemma 3n (issue 14): 4 layers (sliding, full, sliding, full) with AltUp over 4 streams, laurel rank 64 and
    # per-layer inputs of 256 (the sizes llama.cpp's gemma3n is built for), activation sparsity 0.95 on every layer
    # (llama.cpp applies it to the first 10), no KV sharing (llama.cpp's starts at layer 20); the per-layer
    # embedding table is 256 rows shorter than the vocabulary, as the real models' 262144 of 262400; final soft-cap
    # 30 (llama.cpp's gemma3n does not read the key and always caps at 30).
    "gemma3n": ("gemma3n_text", dict(sliding_window=16, pad_token_id=0, num_hidden_layers=4,
                                     layer_types=["sliding_attention", "full_attention"] * 2,
                                     hidden_size_per_layer_input=256, vocab_size_per_layer_input=48896,
                                     laurel_rank=64, altup_num_inputs=4, num_kv_shared_layers=0,
                                     activation_sparsity_pattern=[0.95] * 4, final_logit_softcapping=30.0,
                                     rope_parameters={"full_attention": {"rope_type": "default",
                                                                         "rope_theta": 1000000.0},
                                                      "sliding_attention": {"rope_type": "default",
                                                                            "rope_theta": 10000.0}})),
    # A dense model whose widths are not multiples of 256 (issue 13): hidden 576 (SmolLM2-135M's), 9 heads / 3 KV
    # heads of 64, FFN 1440, so K-quant rows fall back to llama.cpp's replacement types
    "qwen3-odd": ("qwen3", dict(tie_word_embeddings=False, rope_theta=1000000.0, pad_token_id=0, hidden_size=576,
                                num_attention_heads=9, num_key_value_heads=3, head_dim=64, intermediate_size=1440)),
}
# issue 14 (batch B)
TINY_CONFIGS |= {
    # Ministral 3: YaRN (factor 16) over an original context of 16 tokens, so the 64-token logits test runs
    # through the position-dependent query scaling (llama_4_scaling_beta) past position 16
    "ministral3": ("ministral3", dict(tie_word_embeddings=False, pad_token_id=0,
                                      rope_parameters={"rope_type": "yarn", "rope_theta": 1000000.0,
                                                       "factor": 16.0, "original_max_position_embeddings": 16,
                                                       "max_position_embeddings": 2048, "beta_fast": 32.0,
                                                       "beta_slow": 1.0, "mscale_all_dim": 1.0, "mscale": 1.0,
                                                       "llama_4_scaling_beta": 0.1})),
    # GLM-4.5 MoE: layer 0 dense, layer 1 routed experts (4, top 2, sigmoid + correction bias, scaled 2.5) and a
    # shared expert; q/k/v biases, q/k norms, rope on half of each head
    "glm4-moe": ("glm4_moe", dict(tie_word_embeddings=False, pad_token_id=0, attention_bias=True, use_qk_norm=True,
                                  n_routed_experts=4, num_experts_per_tok=2, moe_intermediate_size=256,
                                  n_shared_experts=1, first_k_dense_replace=1, routed_scaling_factor=2.5,
                                  norm_topk_prob=True, n_group=1, topk_group=1,
                                  rope_parameters={"rope_type": "default", "rope_theta": 1000000.0,
                                                   "partial_rotary_factor": 0.5})),
    # DeepSeek-V3 MLA: compressed queries (q_lora 256) and KV (kv_lora 256), nope 256 / rope 64 / v 128 per head;
    # 8 routed experts in 2 groups of which 1 is chosen, sigmoid + correction bias, scaled 2.5, one shared
    # expert, layer 0 dense; YaRN (factor 4 over 16 tokens, mscale 1) so the mscale^2 attention scale applies.
    # (rope_theta 1e4 gave two logits 0.0004 apart at one position - a coin flip for top-1 with either converter)
    "deepseek-v3": ("deepseek_v3", dict(tie_word_embeddings=False, pad_token_id=0, num_key_value_heads=4,
                                        q_lora_rank=256, kv_lora_rank=256, qk_nope_head_dim=256,
                                        qk_rope_head_dim=64, v_head_dim=128, n_routed_experts=8,
                                        num_experts_per_tok=2, n_group=2, topk_group=1, moe_intermediate_size=256,
                                        n_shared_experts=1, first_k_dense_replace=1, routed_scaling_factor=2.5,
                                        norm_topk_prob=True, scoring_func="sigmoid", rope_interleave=True,
                                        rope_parameters={"rope_type": "yarn", "rope_theta": 50000.0, "factor": 4.0,
                                                         "original_max_position_embeddings": 16, "mscale": 1.0,
                                                         "mscale_all_dim": 1.0, "beta_fast": 32.0,
                                                         "beta_slow": 1.0})),
    # DeepSeek-V2-Lite-style MLA with the real head sizes (nope 128, rope 64, v 128: attn_k_b rows of 128, not a
    # multiple of 256) and uncompressed queries (q_proj, no q_lora_rank)
    "deepseek-v3-mla": ("deepseek_v3", dict(tie_word_embeddings=False, pad_token_id=0, num_key_value_heads=4,
                                            q_lora_rank=None, kv_lora_rank=256, qk_nope_head_dim=128,
                                            qk_rope_head_dim=64, v_head_dim=128, n_routed_experts=4,
                                            num_experts_per_tok=2, n_group=1, topk_group=1,
                                            moe_intermediate_size=256, n_shared_experts=1, first_k_dense_replace=1,
                                            routed_scaling_factor=1.0, norm_topk_prob=True, scoring_func="sigmoid",
                                            rope_parameters={"rope_type": "default", "rope_theta": 10000.0})),
    # Llama 4 text: 4 layers, layer 3 without rope (and with temperature tuning), layers 1 and 3 MoE (4 experts,
    # top 1, sigmoid router, shared expert), q/k L2 norms, llama3 rope scaling (Scout's: factor 16, low = high 1)
    "llama4": ("llama4_text", dict(tie_word_embeddings=False, pad_token_id=0, num_hidden_layers=4,
                                   intermediate_size=256, intermediate_size_mlp=512, num_local_experts=4,
                                   num_experts_per_tok=1, interleave_moe_layer_step=2, use_qk_norm=True,
                                   attention_chunk_size=8192,
                                   rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 16.0,
                                                    "low_freq_factor": 1.0, "high_freq_factor": 1.0,
                                                    "original_max_position_embeddings": 8192})),
    # Granite 4.0-H: a Mamba-2 layer then an attention layer (no rope), every FFN 4 experts (top 2) plus the
    # shared MLP; Granite's multipliers at realistic values; Mamba-2 with 8 heads of 64, 2 groups (the gated norm
    # is per group), state 64, conv 4
    "granite-hybrid": ("granitemoehybrid", dict(tie_word_embeddings=False, pad_token_id=0,
                                                layer_types=["mamba", "attention"], position_embedding_type="nope",
                                                intermediate_size=256, shared_intermediate_size=256,
                                                num_local_experts=4, num_experts_per_tok=2, embedding_multiplier=12.0,
                                                attention_multiplier=0.015625, residual_multiplier=0.22,
                                                logits_scaling=2.0, mamba_n_heads=8, mamba_n_groups=2,
                                                mamba_d_state=64, mamba_d_head=64, mamba_d_conv=4, mamba_expand=2,
                                                mamba_conv_bias=True, mamba_proj_bias=False)),
    # Falcon-H1: attention and a Mamba-2 mixer side by side in every layer (8 heads of 64, d_ssm 512, state 64),
    # every one of its multipliers away from 1 so that each fold into the weights is checked
    "falcon-h1": ("falcon_h1", dict(tie_word_embeddings=False, pad_token_id=0, mamba_d_ssm=512, mamba_n_heads=8,
                                    mamba_d_head=64, mamba_n_groups=1, mamba_d_state=64, mamba_d_conv=4,
                                    mamba_rms_norm=False, lm_head_multiplier=0.5, embedding_multiplier=2.0,
                                    mlp_multipliers=[0.8, 1.2], key_multiplier=0.9, attention_in_multiplier=1.1,
                                    attention_out_multiplier=0.7, ssm_multipliers=[1.1, 0.9, 1.2, 0.8, 1.3],
                                    ssm_in_multiplier=0.95, ssm_out_multiplier=1.05,
                                    rope_parameters={"rope_type": "default", "rope_theta": 100000.0})),
    # Falcon-H1 with a Mamba-2 width that is not a multiple of 256 (d_ssm 384 = 6 heads of 64: ssm_out rows of
    # 384 take fallback types) and the gated RMS norm over 2 groups (mamba_rms_norm, after the gate)
    "falcon-h1-odd": ("falcon_h1", dict(tie_word_embeddings=False, pad_token_id=0, mamba_d_ssm=384,
                                        mamba_n_heads=6, mamba_d_head=64, mamba_n_groups=2, mamba_d_state=64,
                                        mamba_d_conv=4, mamba_rms_norm=True, mamba_norm_before_gate=False,
                                        embedding_multiplier=2.0, ssm_multipliers=[1.1, 0.9, 1.2, 0.8, 1.3],
                                        rope_parameters={"rope_type": "default", "rope_theta": 100000.0})),
    # Granite 4.0-H dense hybrid (granite-4.0-h-micro's kind: no experts, the shared MLP is the FFN), with rope
    # switched on (position_embedding_type "rope"), attention first
    "granite-hybrid-dense": ("granitemoehybrid", dict(tie_word_embeddings=True, pad_token_id=0,
                                                      layer_types=["attention", "mamba"], position_embedding_type="rope",
                                                      rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
                                                      intermediate_size=512, shared_intermediate_size=512,
                                                      num_local_experts=0, embedding_multiplier=12.0,
                                                      attention_multiplier=0.015625, residual_multiplier=0.22,
                                                      logits_scaling=2.0, mamba_n_heads=8, mamba_n_groups=1,
                                                      mamba_d_state=64, mamba_d_head=64, mamba_d_conv=4,
                                                      mamba_expand=2)),
}
TINY_CONFIGS["mistral3"] = TINY_CONFIGS["ministral3"]
TINY_CONFIGS["llama4-vision"] = TINY_CONFIGS["llama4"]  # the text part of a Llama4ForConditionalGeneration
# Falcon-H1 with tied embeddings and different embedding / lm_head multipliers (the small Falcon-H1 models' kind)
# (embedding_multiplier 1.5: with 2.0 two logits were 0.0002 apart at one position, a coin flip for top-1)
TINY_CONFIGS["falcon-h1-tied"] = ("falcon_h1", TINY_CONFIGS["falcon-h1"][1] | dict(tie_word_embeddings=True,
                                                                                  embedding_multiplier=1.5))
# DeepSeek-V3 MLA with its rotary rows in two halves (rope_interleave false): reordered to pairs on the way out
TINY_CONFIGS["deepseek-v3-halves"] = ("deepseek_v3", TINY_CONFIGS["deepseek-v3"][1] | dict(rope_interleave=False))
# Mistral Small 3.1 / 3.2's kind of Mistral3ForConditionalGeneration: a plain Mistral text model inside
TINY_CONFIGS["mistral3-small"] = ("mistral", dict(tie_word_embeddings=False, rope_theta=1000000000.0,
                                                  sliding_window=None, pad_token_id=0))  # the text part of a Mistral3ForConditionalGeneration
TINY_CONFIGS["qwen3-moe-fused"] = TINY_CONFIGS["qwen3-moe"]
TINY_CONFIGS["mixtral-fused"] = TINY_CONFIGS["mixtral"]
TINY_CONFIGS["gemma4-moe-split"] = TINY_CONFIGS["gemma4-moe"]
# Entries whose fused 3-D expert parameters (as save_pretrained writes Gemma 4's) are rewritten one tensor per
# expert (experts.<x>.gate_proj / up_proj / down_proj.weight), the layout other exporters use
TINY_SPLIT_EXPERTS = {"gemma4-moe-split"}
# Entries saved from the model's in-memory state dict: MoE experts as fused (n_expert, rows, cols) parameters
TINY_FUSED_EXPERTS = {"qwen3-moe-fused", "mixtral-fused"}
# Multimodal wrappers around a tiny text entry: name -> (model_type, text entry, config class, model class, tower
# configs). The language model's weights are exactly the text entry's (bf16 -> f32 -> bf16 is lossless); the
# towers are random.
TINY_TOWER_WRAPPERS: dict[str, tuple[str, str, str, str, dict]] = {
    "gemma4-vision": ("gemma4", "gemma4", "Gemma4Config", "Gemma4ForConditionalGeneration", {
        "vision_config": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 1,
                          "num_attention_heads": 2, "num_key_value_heads": 2, "head_dim": 32,
                          "position_embedding_size": 64},
        "audio_config": {"hidden_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
                         "subsampling_conv_channels": [8, 4], "output_proj_dims": 64}}),
}
# Multimodal wrappers: name -> (wrapper model_type, wrapper config fields); TINY_CONFIGS[name] is the text part.
# Built with AutoModelForImageTextToText, a tiny vision tower beside the text model.
TINY_WRAPPERS: dict[str, tuple[str, dict]] = {
    "mistral3": ("mistral3", dict(vision_config={"model_type": "pixtral", "hidden_size": 64, "intermediate_size": 128,
                                                 "num_hidden_layers": 1, "num_attention_heads": 2, "head_dim": 32,
                                                 "image_size": 28, "patch_size": 14}, tie_word_embeddings=False)),
    "mistral3-small": ("mistral3", dict(vision_config={"model_type": "pixtral", "hidden_size": 64,
                                                       "intermediate_size": 128, "num_hidden_layers": 1,
                                                       "num_attention_heads": 2, "head_dim": 32, "image_size": 28,
                                                       "patch_size": 14}, tie_word_embeddings=False)),
    "llama4-vision": ("llama4", dict(vision_config={"hidden_size": 64, "intermediate_size": 128,
                                                    "num_hidden_layers": 1, "num_attention_heads": 2,
                                                    "image_size": 28, "patch_size": 14, "vision_output_dim": 128,
                                                    "projector_input_dim": 128, "projector_output_dim": 128,
                                                    "pixel_shuffle_ratio": 0.5}, tie_word_embeddings=False)),
}
# Entries whose tokenizer is not the demo model's BPE one: name -> kind. "spm" is a SentencePiece tokenizer
# trained locally by models/spm_tokenizer.py (cached next to the checkpoint, as `spm-tokenizer/`).
TINY_TOKENIZERS: dict[str, str] = {"llama-spm": "spm"}
# Entries whose 1-D weights (norms, biases) are randomised too, so that a mix-up between them shows in the logits.
TINY_RANDOM_VECTORS = {"qwen2", "qwen3", "gemma2", "gemma3", "phi-mini", "phi-mini-longrope", "qwen3-moe",
                       "qwen3-moe-odd", "qwen3-moe-fused", "mixtral", "mixtral-fused", "smollm3",
                       "gpt-oss", "lfm2", "lfm2-moe", "qwen3.5", "qwen3.5-moe", "gemma4",
                       "gemma4-dense", "qwen3-odd", "gemma4-moe",
                       "gemma3n", "gemma4-moe-split"}
TINY_RANDOM_VECTORS |= {"ministral3", "mistral3", "glm4-moe", "deepseek-v3", "deepseek-v3-mla", "llama4",
                        "llama4-vision", "granite-hybrid", "falcon-h1", "falcon-h1-odd",
                        "granite-hybrid-dense", "mistral3-small", "falcon-h1-tied", "deepseek-v3-halves"}


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

    if name in TINY_TOWER_WRAPPERS:
        return _make_wrapper(name, out, seed, tokenizer_dir)
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
    overrides = {k: vocab_size if k == "vocab_size_per_layer_input" and v is None else v for k, v in overrides.items()}
    config = AutoConfig.for_model(model_type, vocab_size=vocab_size, **(BASE | overrides),
                                  bos_token_id=ids.get(tok_cfg.get("bos_token")),
                                  eos_token_id=ids.get(tok_cfg.get("eos_token")))
    torch.manual_seed(seed)
    if name in TINY_WRAPPERS:
        from transformers import AutoModelForImageTextToText

        wrapper_type, fields = TINY_WRAPPERS[name]
        config = AutoConfig.for_model(wrapper_type, text_config=config.to_dict(), **fields)
        model = AutoModelForImageTextToText.from_config(config, dtype=torch.float32)
    else:
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():  # random init has tiny std (0.02); widen it so logits differ visibly between tokens
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.08)
            elif name in TINY_RANDOM_VECTORS:
                p.add_(torch.randn_like(p) * 0.2)
        for buffer_name, b in model.named_buffers():  # saved routing biases (LFM2 MoE) are buffers
            if buffer_name.endswith(("expert_bias", "e_score_correction_bias")) and name in TINY_RANDOM_VECTORS:
                b.add_(torch.randn_like(b) * 0.2)
            elif buffer_name.endswith("layer_scalar") and name in TINY_RANDOM_VECTORS:  # Gemma 4's layer scale
                b.mul_(1.0 + torch.randn_like(b) * 0.2)
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
    if name in TINY_SPLIT_EXPERTS:
        _split_experts(tmp / "model.safetensors")
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


def _split_experts(path: Path) -> None:
    """Rewrite fused experts.gate_up_proj (n, 2f, e) / experts.down_proj (n, e, f) as one tensor per expert."""
    from safetensors.torch import load_file, save_file

    state, out = load_file(str(path)), {}
    for key, value in state.items():
        prefix, _, last = key.rpartition(".")
        if prefix.endswith(".experts") and last in ("gate_up_proj", "down_proj") and value.dim() == 3:
            for x in range(value.shape[0]):
                if last == "down_proj":
                    out[f"{prefix}.{x}.down_proj.weight"] = value[x].contiguous()
                else:
                    gate, up = value[x].chunk(2, dim=0)
                    out[f"{prefix}.{x}.gate_proj.weight"] = gate.contiguous()
                    out[f"{prefix}.{x}.up_proj.weight"] = up.contiguous()
        else:
            out[key] = value
    save_file(out, str(path), metadata={"format": "pt"})


def _make_wrapper(name: str, out: Path, seed: int, tokenizer_dir: Path) -> Path:
    """A TINY_TOWER_WRAPPERS entry: its text entry (made next to it if missing) inside the multimodal model class."""
    import torch
    import transformers

    _, text_name, config_class, model_class, towers = TINY_TOWER_WRAPPERS[name]
    text_dir = make_tiny(text_name, out.parent / text_name, seed, tokenizer_dir)
    text_config = json.loads((text_dir / "config.json").read_text())
    config = getattr(transformers, config_class)(text_config=text_config, **towers)
    torch.manual_seed(seed)
    model = getattr(transformers, model_class)(config)
    text_model = transformers.AutoModelForCausalLM.from_pretrained(text_dir, dtype=torch.float32)
    model.model.language_model.load_state_dict(text_model.model.state_dict())
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".", dir=out.parent))
    model.to(torch.bfloat16).save_pretrained(tmp)
    for f in TOKENIZER_FILES:
        if (text_dir / f).is_file():
            shutil.copy(text_dir / f, tmp / f)
    tmp.chmod(0o755)
    (tmp / ".complete").write_text(f"models/tiny.py {name} seed={seed} (language model of {text_name})\n")
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
