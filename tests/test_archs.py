"""One runner for every architecture: a tiny random checkpoint of each family (transformers' own config and model
classes, models/tiny.py) converts to F32, F16, Q8_0 and Q4_K_M; llama.cpp loads and runs each; the F32 logits
match transformers' float32 logits on 64 tokens of real text; the Q4_K_M tensors (types and bytes) equal what
llama.cpp's llama_model_quantize writes from ggufkit's own F32 file. Adding a family = one line in FAMILIES.
Plus: configs with a feature the converter does not handle fail with a one-line error naming it."""
from __future__ import annotations

import json

import numpy as np
import pytest
from convert_fixtures import (
    converted,
    forget,
    llama_quantized,
    tensor_table,
)
from test_convert import assert_logits_agree

from ggufkit.errors import InputError

# (tiny checkpoint in models/tiny.py, GGUF architecture llama.cpp must see)
FAMILIES = [
    ("llama", "llama"),
    ("mistral", "llama"),
    ("qwen2", "qwen2"),
    ("qwen3", "qwen3"),
    ("gemma2", "gemma2"),
    ("gemma3", "gemma3"),
    ("phi-mini", "phi3"),
    ("phi-mini-longrope", "phi3"),
    # issue 13
    ("qwen3-moe", "qwen3moe"),
    ("qwen3-moe-odd", "qwen3moe"),  # expert rows of 160: fallback types in the experts
    ("mixtral", "llama"),  # 8 experts: llama-quantize's 8-expert rules
    ("smollm3", "smollm3"),
    ("gpt-oss", "gpt-oss"),
    ("lfm2", "lfm2"),
    ("lfm2-moe", "lfm2moe"),
    ("qwen3.5", "qwen35"),
    ("qwen3.5-moe", "qwen35moe"),
    # issue 13: gemma 4
    ("gemma4", "gemma4"),  # per-layer embeddings, shared KV layers, double-wide MLP, k=v full layers
    ("gemma4-vision", "gemma4"),  # the multimodal wrapper (vision + audio towers), converted to its text model
    ("gemma4-dense", "gemma4"),  # no per-layer embeddings or KV sharing (the 31B layout), one KV head count
    ("gemma4-moe", "gemma4"),  # the mixture-of-experts block beside the dense MLP (the 26B-A4B layout)
    ("qwen3-odd", "qwen3"),  # dense, widths 576 / 1440 (not multiples of 256): fallback types in the K-quants
    # issue 14: gemma 3n
    ("gemma3n", "gemma3n"),  # AltUp, laurel, per-layer inputs (table shorter than the vocabulary), sparsity
    # issue 14 (batch B)
    ("ministral3", "mistral3"),  # YaRN + query scaling past its 16-token original context
    ("mistral3", "mistral3"),  # the Mistral3ForConditionalGeneration wrapper (Pixtral tower left out)
    ("glm4-moe", "glm4moe"),
    ("deepseek-v3", "deepseek2"),  # MLA with q/kv compression, expert groups, YaRN mscale
    ("deepseek-v3-mla", "deepseek2"),  # MLA head sizes 128/64/128 (attn_k_b rows of 128), no q compression
    ("llama4", "llama4"),  # a no-rope layer, MoE every 2nd layer with a shared expert, fused input-major experts
    ("llama4-vision", "llama4"),  # the Llama4ForConditionalGeneration wrapper (vision model left out)
    ("granite-hybrid", "granitehybrid"),  # Mamba-2 + attention, experts + shared MLP, Granite's multipliers
    ("granite-hybrid-dense", "granitehybrid"),  # no experts (the shared MLP is the FFN), rope on, tied
    ("falcon-h1", "falcon-h1"),  # attention and Mamba-2 in parallel, muP multipliers folded into the weights
    ("falcon-h1-odd", "falcon-h1"),  # d_ssm 384 (ssm_out rows not a multiple of 256), grouped gated norm
    # issue 14 (batch A). Logits of llama.cpp's own converter (vendored convert_hf_to_gguf.py, --outtype f32) on
    # the same tiny checkpoint vs transformers, top-1 / median / max; ggufkit's F32 tensors were identical and so
    # were its figures, unless noted:
    #   granite 1.000 / 0.00000 / 0.0001, granitemoe 1.000 / 0.00001 / 0.0001, qwen2-moe 1.000 / 0.00058 / 0.0069,
    #   qwen2-moe-odd 1.000 / 0.00061 / 0.0066, olmo2 1.000 / 0.00041 / 0.0056,
    #   olmo3 0.859 / 0.03669 / 0.4792 - its converter writes YaRN's attention_factor as yarn_attn_factor, which
    #   this llama.cpp ignores under YaRN; ggufkit writes the ratio to llama.cpp's own factor as
    #   rope.scaling.attn_factor (archs/llama.py) and gives 1.000 / 0.00050 / 0.0056
    #   olmoe 1.000 / 0.00054 / 0.0073, exaone4 1.000 / 0.00044 / 0.0049, exaone4-swa 1.000 / 0.00074 / 0.0096
    #   (ggufkit 0.0097; its rope_freqs differ from the converter's by 1e-6, float rounding),
    #   glm4 1.000 / 0.00052 / 0.0077, glm4-odd 1.000 / 0.00052 / 0.0059 (the converter needs GLM's <|user|>
    #   token: measured on a copy whose <|im_start|> was renamed so), ernie4.5 1.000 / 0.00065 / 0.0058,
    #   ernie4.5-moe 1.000 / 0.00070 / 0.0071 (the converter writes the shared experts' width as intermediate_size /
    #   num_key_value_heads - true of the releases and of this checkpoint; ggufkit computes it from the experts),
    #   phimoe 0.156 / 0.58421 / 4.9174 (see LLAMA_CPP_GRAPH_DIFFERS; measured on a copy whose architectures entry
    #   was renamed to the hub's PhiMoEForCausalLM, the only name the converter knows),
    #   seed-oss 1.000 / 0.00059 / 0.0063, apertus 1.000 / 0.00034 / 0.0037 (rope_freqs differ by float rounding),
    #   hunyuan 1.000 / 0.00050 / 0.0052 (the converter asserts max_position_embeddings 32k or 256k and writes a
    #   256k context for alpha rope; ggufkit writes the config's)
    ("granite", "granite"),
    ("granitemoe", "granitemoe"),
    ("qwen2-moe", "qwen2moe"),
    ("qwen2-moe-odd", "qwen2moe"),  # expert rows of 176, shared expert rows of 704: fallback types
    ("olmo2", "olmo2"),
    ("olmo3", "olmo2"),  # sliding window 24 on layer 0, YaRN with a non-default attention_factor on layer 1
    ("olmoe", "olmoe"),
    ("exaone4", "exaone4"),
    ("exaone4-swa", "exaone4"),  # 64 layers: llama.cpp's sliding-window / no-rope global layer pattern
    ("glm4", "glm4"),
    ("glm4-odd", "glm4"),  # FFN 384 wide (GLM-4-9B: 13696): fallback types in ffn_down; head_dim 128, tied
    ("ernie4.5", "ernie4_5"),
    ("ernie4.5-moe", "ernie4_5-moe"),  # layer 0 dense, 1-2 MoE with a routing correction bias and shared experts
    ("phimoe", "phimoe"),  # see LLAMA_CPP_GRAPH_DIFFERS and test_phimoe_matches_transformers_with_llama_cpp_graph
    ("seed-oss", "seed_oss"),
    ("apertus", "apertus"),
    ("hunyuan", "hunyuan-dense"),
]
# Max |logit difference| limits other than assert_logits_agree's default, each measured once with llama.cpp's
# own converter (vendored convert_hf_to_gguf.py, --outtype f32) on the same tiny checkpoint. Its F32 tensors
# were identical to ggufkit's for these, and so were its logits' top-1 / median / max against transformers:
#   qwen3-moe 1.000 / 0.00056 / 0.0079, qwen3-moe-odd 1.000 / 0.00041 / 0.0054, smollm3 1.000 / 0.00082 / 0.0108,
#   gpt-oss 1.000 / 0.00162 / 0.0285, lfm2 1.000 / 0.00015 / 0.0019, lfm2-moe 1.000 / 0.00012 / 0.0018,
#   qwen3.5 1.000 / 0.00003 / 0.0006 (its converter run with --no-mtp; ssm_a = -exp(A_log) differs by 1e-6).
#   qwen3.5-moe: the converter stops at this checkpoint's tokenizer ("BPE pre-tokenizer was not recognized":
#   transformers picks another tokenizer class for model_type qwen3_5_moe_text); ggufkit's file gives
#   1.000 / 0.00005 / 0.0008, inside the default limits.
#   gemma4 1.000 / 0.00089 / 0.0311, gemma4-vision the same, gemma4-dense 1.000 / 0.00060 / 0.0279 (the converter's
#   set_vocab swapped for its gpt2 one: gguf-py's LlamaHfVocab reads only SentencePiece-style BPE and the tiny
#   checkpoints carry the demo's byte-level BPE; its tensors and hparams were identical to ggufkit's).
#   gemma4-moe 1.000 / 0.00060 / 0.0140 (same converter swap, identical F32 tensors and hparams).
#   qwen3-odd 1.000 / 0.00081 / 0.0081 (identical F32 tensors).
#   mixtral 1.000 / 0.00077 / 1.750 - a router near-tie that float rounding resolves the other way at one
#   position (routing is discontinuous), hence its own limit.
MAX_LOGIT_DIFF = {"mixtral": 2.0, "gemma3n": 0.1}
# Top-1 agreement limits below 1 (dense models otherwise agree everywhere), measured the same way:
#   gemma3n 0.984 / 0.00302 / 0.0781 with llama.cpp's converter and with ggufkit (identical F32 tensors but for
#   the per-layer embedding rows past the table, zeros there, row 0's copies here - transformers reads token 0's):
#   one near-tie flips at position 1 (transformers' top two 0.012 apart, llama.cpp's 0.002); AltUp and the
#   Gaussian top-k activation sparsity leave llama.cpp's graph ~0.02 from transformers' per position.
MIN_TOP1 = {"gemma3n": 0.984}
# issue 14 (batch B), top-1 / median / max of llama.cpp's converter's file and of ggufkit's (tensors identical
# unless said):
#   ministral3 1.000 / 0.00068 / 0.0075 both; mistral3 1.000 / 0.00068 / 0.0080 both.
#   glm4-moe 1.000 / 0.00048 / 0.0049 both (the converter's GLM vocab step wants GLM's special tokens: run with
#   the plain GPT-2 vocab step; it also counts an MTP block that the checkpoint does not have, block_count 3).
#   deepseek-v3 1.000 / 0.00075 / 0.0087 both. deepseek-v3-mla: ggufkit 1.000 / 0.00059 / 0.0065; llama.cpp's
#   file does not load ("key not found: deepseek2.attention.q_lora_rank": its converter writes no key without
#   query compression, the loader wants one unless the layer count is a known Lite model's; ggufkit writes 0).
#   llama4 1.000 / 0.00055 / 0.0062 both; llama4-vision 1.000 / 0.00053 / 0.0064 both.
#   granite-hybrid 1.000 / 0.00001 / 0.0002 both - llama.cpp's converter run on a copy whose config spells
#   layer_types "mamba" / "attention" as hub configs do: it reads transformers 5's "linear_attention" /
#   "full_attention" as all-Mamba and its file does not load; ssm_a = -exp(A_log) differs by float rounding.
#   falcon-h1 1.000 / 0.00027 / 0.0035 both (the folded multipliers bit-identical, ssm_a by float rounding);
#   falcon-h1-odd 1.000 / 0.00028 / 0.0031 both.
#   granite-hybrid-dense: ggufkit 1.000 / 0.00001 / 0.0003; llama.cpp's file (config spelled the hub way) aborts
#   llama.cpp at load (GGML_ASSERT n_expert_used <= n_expert: it writes expert_count 0 with the config's
#   num_experts_per_tok 2; ggufkit writes 0 for both).
# Families whose llama.cpp graph computes another function than transformers' model: llama.cpp's own converter's
# file gives the same logits as ggufkit's (its tensors are identical), the logits test is an expected failure
# (asserted to fail), and a separate test checks the conversion against transformers patched to llama.cpp's graph.
LLAMA_CPP_GRAPH_DIFFERS = {
    "phimoe": "llama.cpp's phimoe uses RMS norm + bias where transformers has LayerNorm, and softmax top-k "
              "routing where transformers has SparseMixer: top-1 0.156 / median 0.58 / max 4.9 vs transformers "
              "with ggufkit's and with llama.cpp's own converter alike",
}
SCHEMES = ["f16", "q8_0", "q4_k_m"]  # F32 is loaded and run by the logits test
IDS = [name for name, _ in FAMILIES]


@pytest.fixture(params=FAMILIES, ids=IDS, scope="module")
def family(request, tiny_checkpoint):
    """Module scope: pytest runs each family's tests together, and its converted files are removed after them
    (a whole run of every family would otherwise keep ~20 GB in the session's OUT_DIR)."""
    name, arch = request.param
    yield tiny_checkpoint(name), arch
    forget(name)


def test_f32_logits_match_transformers(family):
    src, _ = family
    limit = MAX_LOGIT_DIFF.get(src.name, 0.05)
    if src.name in LLAMA_CPP_GRAPH_DIFFERS:  # must still disagree: if it agrees, llama.cpp changed - look again
        with pytest.raises(AssertionError):
            assert_logits_agree(converted(src, "f32"), src, limit)
        pytest.xfail(LLAMA_CPP_GRAPH_DIFFERS[src.name])
    assert_logits_agree(converted(src, "f32"), src, limit, MIN_TOP1.get(src.name, 1.0))


@pytest.mark.parametrize("scheme", SCHEMES)
def test_llama_cpp_loads_and_runs(family, scheme):
    import llama_cpp

    src, arch = family
    path = converted(src, scheme)
    llm = llama_cpp.Llama(str(path), n_ctx=64, n_threads=2, logits_all=True, verbose=False)
    try:
        assert llm.metadata["general.architecture"] == arch
        tokens = llm.tokenize(b"To be, or not to be", add_bos=False)
        llm.eval(tokens)
        logits = np.array(llm.scores[len(tokens) - 1])
    finally:
        llm.close()
    assert np.isfinite(logits).all() and logits.std() > 0


def test_q4_k_m_equals_llama_quantize(family):
    src, _ = family
    ours = tensor_table(converted(src, "q4_k_m"))
    ref = tensor_table(llama_quantized(converted(src, "f32"), "q4_k_m"))
    assert [n for n, _, _ in ours] == [n for n, _, _ in ref]
    wrong_type = [(n, a, b) for (n, a, _), (_, b, _) in zip(ours, ref) if a != b]
    assert not wrong_type, f"{len(wrong_type)} tensor types differ (name, ours, llama.cpp): {wrong_type[:5]}"
    wrong_bytes = [n for (n, _, a), (_, _, b) in zip(ours, ref) if a.shape != b.shape or not np.array_equal(a, b)]
    assert not wrong_bytes, f"{len(wrong_bytes)} of {len(ours)} tensors differ: {wrong_bytes[:5]}"


# ---- refused configs: one line naming the feature, before any tensor is read


def _config(tiny_checkpoint, name: str, **changes) -> dict:
    config = json.loads((tiny_checkpoint(name) / "config.json").read_text())
    return config | changes


_YARN = {"rope_type": "yarn", "rope_theta": 1e6, "factor": 16.0, "original_max_position_embeddings": 16,
         "mscale_all_dim": 1.0, "mscale": 1.0, "llama_4_scaling_beta": 0.1}

REFUSED = [
    # (tiny checkpoint, config changes, words the error must contain)
    ("qwen2", {"use_sliding_window": True}, "use_sliding_window"),
    ("qwen2", {"rope_parameters": {"rope_type": "llama3", "factor": 8.0, "rope_theta": 1e6}}, "rope type"),
    ("qwen3", {"num_experts": 8}, "mixture of experts"),
    ("gemma2", {"query_pre_attn_scalar": 256}, "query_pre_attn_scalar"),
    ("gemma2", {"final_logit_softcapping": None}, "final_logit_softcapping"),
    ("gemma2", {"tie_word_embeddings": False}, "tie_word_embeddings"),
    ("gemma2", {"hidden_activation": "relu"}, "hidden_activation"),
    ("gemma3", {"attn_logit_softcapping": 50.0}, "attn_logit_softcapping"),
    ("gemma3", {"model_type": "gemma3"}, "text_config"),  # the multimodal wrapper needs its text part
    ("phi-mini", {"rope_parameters": {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 1e4}}, "rope type"),
    ("phi-mini", {"hidden_act": "gelu"}, "hidden_act"),
    # issue 13
    ("qwen3-moe", {"norm_topk_prob": False}, "norm_topk_prob"),
    ("qwen3-moe", {"mlp_only_layers": [1]}, "mlp_only_layers"),
    ("qwen3-moe", {"decoder_sparse_step": 2}, "decoder_sparse_step"),
    ("qwen3-moe", {"num_experts_per_tok": 5}, "num_experts_per_tok"),
    ("qwen3-moe", {"num_local_experts": None}, "num_local_experts"),
    ("qwen3-moe", {"shared_expert_intermediate_size": 256}, "shared expert"),
    ("mixtral", {"hidden_act": "gelu"}, "hidden_act"),
    ("smollm3", {"no_rope_layers": [1, 1, 1, 1]}, "no-rope layer pattern"),
    ("smollm3", {"no_rope_layers": None, "no_rope_layer_interval": 2}, "no-rope layer pattern"),
    ("smollm3", {"use_sliding_window": True}, "use_sliding_window"),
    ("smollm3", {"rope_parameters": {"rope_type": "llama3", "factor": 8.0, "rope_theta": 1e6}}, "rope type"),
    ("gpt-oss", {"swiglu_limit": 10.0}, "swiglu_limit"),
    ("gpt-oss", {"swiglu_alpha": 1.0}, "swiglu_alpha"),
    ("gpt-oss", {"quantization_config": {"quant_method": "hqq"}}, "pre-quantized hqq"),  # mxfp4: sources/mxfp4.py
    ("gpt-oss", {"tie_word_embeddings": True}, "tie_word_embeddings"),
    ("gpt-oss", {"layer_types": ["sliding_attention", "chunked_attention"]}, "layer_types"),
    ("lfm2", {"conv_bias": True}, "conv_bias"),
    ("lfm2", {"layer_types": ["conv", "sliding_attention", "conv", "full_attention"]}, "layer_types"),
    ("lfm2", {"layer_types": ["conv", "full_attention"]}, "layer_types"),
    ("lfm2-moe", {"norm_topk_prob": False}, "norm_topk_prob"),
    ("lfm2-moe", {"routed_scaling_factor": 2.5}, "routed_scaling_factor"),
    ("lfm2-moe", {"use_expert_bias": False}, "use_expert_bias"),
    ("qwen3.5", {"layer_types": ["linear_attention"] * 3 + ["sliding_attention"]}, "layer_types"),
    ("qwen3.5", {"linear_num_value_heads": 3}, "not a multiple of linear_num_key_heads"),
    ("qwen3.5", {"linear_value_head_dim": 128}, "linear_value_head_dim"),
    ("qwen3.5", {"rope_parameters": {"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e7}}, "rope type"),
    ("qwen3.5-moe", {"shared_expert_intermediate_size": None}, "shared_expert_intermediate_size"),
    ("qwen3.5-moe", {"num_experts_per_tok": 9}, "num_experts_per_tok"),
    # issue 13: gemma 4
    ("gemma4-moe", {"top_k_experts": 5}, "top_k_experts"),
    ("gemma4-moe", {"moe_intermediate_size": None}, "moe_intermediate_size"),
    ("gemma4", {"attention_bias": True}, "attention_bias"),
    ("gemma4", {"use_bidirectional_attention": "all"}, "use_bidirectional_attention"),
    ("gemma4", {"hidden_activation": "silu"}, "hidden_activation"),
    ("gemma4", {"layer_types": ["full_attention"] * 4}, "no sliding_attention layer"),
    ("gemma4", {"num_kv_shared_layers": 1}, "num_kv_shared_layers"),  # layer 2 (sliding) just before: not full
    ("gemma4", {"num_kv_shared_layers": 3}, "num_kv_shared_layers"),
    ("gemma4", {"vocab_size_per_layer_input": 1024}, "vocab_size_per_layer_input"),
    ("gemma4", {"per_layer_config": {"0": {"head_dim": 128}}}, "sliding layers with a head_dim"),
    ("gemma4", {"per_layer_config": {"1": {"head_dim": 128}, "3": {"head_dim": 256}}}, "different head_dims"),
    ("gemma4", {"per_layer_config": {"1": {"intermediate_size": 1024}}}, "per_layer_config[1] sets"),
    ("gemma4", {"rope_parameters": {"full_attention": {"rope_type": "proportional", "factor": 8.0,
                                                       "partial_rotary_factor": 0.25, "rope_theta": 1e6},
                                    "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}}},
     "rope factor"),
    ("gemma4", {"rope_parameters": {"full_attention": {"rope_type": "yarn", "factor": 8.0, "rope_theta": 1e6},
                                    "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}}},
     "rope type"),
    ("gemma4", {"attn_logit_softcapping": 50.0}, "attn_logit_softcapping"),
    ("gemma4-vision", {"text_config": None}, "text_config"),  # a vision / audio checkpoint without its text part
    ("gemma4-vision", {"model_type": "gemma4_vision"}, "'gemma4_vision' is not supported"),  # a tower as a model
    ("gemma4-vision", {"model_type": "gemma4_audio"}, "'gemma4_audio' is not supported"),
    # issue 14: gemma 3n (the sizes llama.cpp's gemma3n fixes in code)
    ("gemma3n", {"altup_num_inputs": 2}, "altup_num_inputs"),
    ("gemma3n", {"altup_active_idx": 1}, "altup_active_idx"),
    ("gemma3n", {"laurel_rank": 32}, "laurel_rank"),
    ("gemma3n", {"hidden_size_per_layer_input": 128}, "hidden_size_per_layer_input"),
    ("gemma3n", {"altup_correct_scale": False}, "altup_correct_scale"),
    ("gemma3n", {"final_logit_softcapping": 10.0}, "final_logit_softcapping"),
    ("gemma3n", {"activation_sparsity_pattern": [0.95, 0.95, 0.0, 0.0]}, "activation_sparsity_pattern"),
    ("gemma3n", {"num_kv_shared_layers": 2}, "num_kv_shared_layers"),
    ("gemma3n", {"intermediate_size": [512, 512]}, "intermediate_size"),
    ("gemma3n", {"intermediate_size": [512, 768, 512, 768]}, "layer 0's FFN width"),  # llama.cpp: wrong shape
    ("gemma3n", {"vocab_size_per_layer_input": 50000}, "vocab_size_per_layer_input"),
    ("gemma3n", {"model_type": "gemma3n"}, "text_config"),
    ("gemma3n", {"model_type": "gemma3n_vision"}, "'gemma3n_vision' is not supported"),
    # issue 14 (batch B)
    ("ministral3", {"sliding_window": 512}, "sliding_window"),
    ("ministral3", {"rope_parameters": _YARN | {"mscale": 0.707}}, "mscale"),
    ("ministral3", {"rope_parameters": _YARN | {"attention_factor": 1.2}}, "attention_factor"),
    ("mistral3", {"text_config": None}, "text_config"),
    ("mistral3", {"text_config": {"model_type": "pixtral"}}, "text_config model_type 'pixtral'"),
    ("glm4-moe", {"n_group": 3, "topk_group": 1}, "groups must divide the experts"),
    ("glm4-moe", {"n_shared_experts": None}, "n_shared_experts"),
    ("glm4-moe", {"rope_parameters": {"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e6,
                                      "original_max_position_embeddings": 512}}, "rope type"),
    ("deepseek-v3", {"rope_parameters": _YARN | {"mscale": 0.707}}, "mscale"),
    ("deepseek-v3", {"rope_parameters": _YARN | {"mscale_all_dim": None}}, "without mscale_all_dim"),
    ("deepseek-v3", {"attention_bias": True}, "attention_bias"),
    ("deepseek-v3", {"n_group": 3}, "groups must divide the experts"),
    ("deepseek-v3", {"scoring_func": "softmax"}, "scoring_func"),
    ("deepseek-v3", {"n_routed_experts": None}, "n_routed_experts"),
    ("llama4", {"attention_chunk_size": 16}, "attention_chunk_size"),
    ("llama4", {"no_rope_layers": [1, 0, 1, 1]}, "no-rope layer pattern"),
    ("llama4", {"no_rope_layers": None, "no_rope_layer_interval": 2}, "no-rope layer pattern"),
    ("llama4", {"use_qk_norm": False}, "use_qk_norm"),
    ("llama4", {"attn_temperature_tuning": False}, "attn_temperature_tuning"),
    ("llama4", {"floor_scale": 4096}, "floor_scale"),
    ("llama4", {"moe_layers": [0, 1, 2, 3]}, "moe_layers"),
    ("llama4-vision", {"text_config": None}, "text_config"),
    ("llama4-vision", {"text_config": {"model_type": "llama4_vision_model"}}, "text_config model_type"),
    ("mistral3", {"model_type": "pixtral"}, "'pixtral' is not supported"),  # the vision tower's own config
    ("granite-hybrid", {"mamba_expand": 4}, "mamba_expand"),
    ("granite-hybrid", {"mamba_d_head": 32}, "mamba_d_head"),
    ("granite-hybrid", {"mamba_proj_bias": True}, "mamba_proj_bias"),
    ("granite-hybrid", {"time_step_limit": [0.0, 10.0]}, "time_step_limit"),
    ("granite-hybrid", {"layer_types": ["mamba", "sliding_attention"]}, "layer_types"),
    ("granite-hybrid", {"num_local_experts": None}, "num_local_experts"),
    ("falcon-h1", {"mamba_proj_bias": True}, "mamba_proj_bias"),
    ("falcon-h1", {"time_step_limit": [0.001, 100.0]}, "time_step_limit"),
    ("falcon-h1", {"mamba_rms_norm": True, "mamba_norm_before_gate": True}, "mamba_norm_before_gate"),
    ("falcon-h1", {"ssm_multipliers": [1.0, 1.0]}, "ssm_multipliers"),
    # issue 14 (batch A)
    ("granite", {"head_dim": 128}, "head_dim"),
    ("granite", {"logits_scaling": 0}, "logits_scaling"),
    ("granitemoe", {"shared_intermediate_size": 256}, "shared_intermediate_size"),
    ("qwen2-moe", {"norm_topk_prob": True}, "norm_topk_prob"),
    ("qwen2-moe", {"mlp_only_layers": [0]}, "mlp_only_layers"),
    ("qwen2-moe", {"tie_word_embeddings": True}, "tie_word_embeddings"),
    ("olmo2", {"tie_word_embeddings": True}, "tie_word_embeddings"),
    ("olmo2", {"attention_bias": True}, "attention_bias"),
    ("olmo3", {"layer_types": ["sliding_attention", "chunked_attention"]}, "layer_types"),
    ("olmo3", {"rope_parameters": {"full_attention": {"rope_type": "default", "rope_theta": 5e5},
                                   "sliding_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 5e5}}},
     "sliding_attention rope type"),
    ("olmoe", {"num_key_value_heads": 2}, "num_key_value_heads"),
    ("olmoe", {"norm_topk_prob": True}, "norm_topk_prob"),
    ("olmoe", {"clip_qkv": 8.0}, "clip_qkv"),
    ("exaone4", {"sliding_window": 16, "layer_types": ["sliding_attention", "full_attention"]}, "sliding_window"),
    ("exaone4-swa", {"sliding_window": None}, "sliding_window=null"),
    ("exaone4", {"rope_parameters": {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 1e6}}, "rope type"),
    ("glm4", {"rope_parameters": {"rope_type": "default", "rope_theta": 1e4, "partial_rotary_factor": 0.5,
                                  "mrope_section": [8, 12, 12]}}, "mrope_section"),
    ("glm4", {"rope_parameters": {"rope_type": "default", "rope_theta": 1e4, "partial_rotary_factor": 0.3}},
     "partial_rotary_factor"),
    ("glm4", {"mlp_bias": True}, "mlp_bias"),
    ("ernie4.5", {"use_bias": True}, "use_bias"),
    ("ernie4.5", {"rope_parameters": {"rope_type": "llama3", "factor": 8.0, "rope_theta": 5e5}}, "rope type"),
    ("ernie4.5-moe", {"moe_layer_end_index": 1}, "moe_layer_end_index"),
    ("ernie4.5-moe", {"moe_k": 5}, "moe_k"),
    ("phimoe", {"lm_head_bias": False}, "lm_head_bias"),
    ("phimoe", {"attention_bias": False}, "attention_bias"),
    ("seed-oss", {"attention_out_bias": True}, "attention_out_bias"),
    ("seed-oss", {"mlp_bias": True}, "mlp_bias"),
    ("apertus", {"tie_word_embeddings": True}, "tie_word_embeddings"),
    ("apertus", {"hidden_act": "silu"}, "hidden_act"),
    ("hunyuan", {"rope_parameters": {"rope_type": "dynamic", "rope_theta": 1e4, "factor": 2.0}}, "alpha"),
    ("hunyuan", {"attention_bias": True}, "attention_bias"),
]


@pytest.mark.parametrize("name,changes,words", REFUSED, ids=[f"{n}-{w}" for n, _, w in REFUSED])
def test_unhandled_feature_is_refused(tiny_checkpoint, tmp_path, name, changes, words):
    from ggufkit.archs import for_config

    path = tmp_path / "config.json"
    with pytest.raises(InputError) as err:
        for_config(_config(tiny_checkpoint, name, **changes), path)
    message = str(err.value)
    assert words in message and "\n" not in message, message


# ---- the Gemma 3 multimodal wrapper (model_type "gemma3"): converted to its text model


@pytest.fixture(scope="session")
def gemma3_vision(tiny_checkpoint):
    """A Gemma3ForConditionalGeneration checkpoint (tiny SigLIP tower) whose language model is exactly the tiny
    gemma3 text checkpoint's (bf16 -> f32 -> bf16 is lossless). Cached next to the other tiny checkpoints."""
    import shutil
    import tempfile
    from pathlib import Path

    text_dir = tiny_checkpoint("gemma3")
    out = text_dir.parent / "gemma3-vision"
    if (out / ".complete").is_file():
        return out
    import torch
    from transformers import AutoModelForCausalLM, Gemma3Config, Gemma3ForConditionalGeneration

    text_config = json.loads((text_dir / "config.json").read_text())
    vision_config = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 1, "num_attention_heads": 2,
                     "image_size": 28, "patch_size": 14}
    config = Gemma3Config(text_config=text_config, vision_config=vision_config, mm_tokens_per_image=4)
    model = Gemma3ForConditionalGeneration(config)
    text_model = AutoModelForCausalLM.from_pretrained(text_dir, dtype=torch.float32)
    model.model.language_model.load_state_dict(text_model.model.state_dict())
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".", dir=out.parent))
    model.to(torch.bfloat16).save_pretrained(tmp)
    for f in text_dir.iterdir():
        if f.name.startswith("tokenizer") or f.name in ("chat_template.jinja", "special_tokens_map.json"):
            shutil.copy(f, tmp / f.name)
    (tmp / ".complete").write_text("tests/test_archs.py gemma3_vision\n")
    tmp.chmod(0o755)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def test_gemma3_wrapper_converts_to_its_text_model(gemma3_vision, tiny_checkpoint):
    wrapper = converted(gemma3_vision, "f32")
    ours = tensor_table(wrapper)
    text = tensor_table(converted(tiny_checkpoint("gemma3"), "f32"))
    assert [(n, t) for n, t, _ in ours] == [(n, t) for n, t, _ in text]  # no vision tensor, same names, types
    assert all(np.array_equal(a, b) for (_, _, a), (_, _, b) in zip(ours, text))
    assert_logits_agree(wrapper, gemma3_vision)  # transformers runs Gemma3ForConditionalGeneration on text alone


# ---- the Gemma 3n multimodal wrapper (model_type "gemma3n"): converted to its text model. Its vision tower needs
# timm (not installed), so the wrapper checkpoint is laid out by hand: the tiny gemma3n text model's tensors under
# model.language_model., plus tower tensors, with the wrapper's config.json.


@pytest.fixture(scope="session")
def gemma3n_wrapped(tiny_checkpoint):
    import shutil

    text_dir = tiny_checkpoint("gemma3n")
    out = text_dir.parent / "gemma3n-wrapped"
    if (out / ".complete").is_file():
        return out
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    text_config = json.loads((text_dir / "config.json").read_text())
    config = {"model_type": "gemma3n", "architectures": ["Gemma3nForConditionalGeneration"],
              "text_config": text_config, "vision_config": {"model_type": "gemma3n_vision", "hidden_size": 64},
              "audio_config": {"model_type": "gemma3n_audio", "hidden_size": 64}}
    (tmp / "config.json").write_text(json.dumps(config, indent=2))
    import torch
    from safetensors.torch import load_file as load_torch
    from safetensors.torch import save_file as save_torch

    tensors = {k.replace("model.", "model.language_model.", 1): v
               for k, v in load_torch(str(text_dir / "model.safetensors")).items()}
    tensors |= {"model.vision_tower.timm_model.conv_stem.conv.weight": torch.zeros(8, 3, 3, 3, dtype=torch.bfloat16),
                "model.audio_tower.conformer.0.attention.attn.q_proj.weight": torch.zeros(64, 64, dtype=torch.bfloat16),
                "model.embed_vision.embedding.weight": torch.zeros(128, 64, dtype=torch.bfloat16),
                "model.embed_audio.embedding.weight": torch.zeros(128, 64, dtype=torch.bfloat16)}
    save_torch(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    for f in text_dir.iterdir():
        if f.name.startswith("tokenizer") or f.name in ("chat_template.jinja", "special_tokens_map.json"):
            shutil.copy(f, tmp / f.name)
    (tmp / ".complete").write_text("tests/test_archs.py gemma3n_wrapped\n")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def test_gemma3n_wrapper_converts_to_its_text_model(gemma3n_wrapped, tiny_checkpoint):
    ours = tensor_table(converted(gemma3n_wrapped, "f32"))
    text = tensor_table(converted(tiny_checkpoint("gemma3n"), "f32"))
    assert [(n, t) for n, t, _ in ours] == [(n, t) for n, t, _ in text]  # no tower tensor, same names, types
    assert all(np.array_equal(a, b) for (_, _, a), (_, _, b) in zip(ours, text))


def test_gemma3n_tokens_past_the_per_layer_table(tiny_checkpoint):
    """Ids beyond vocab_size_per_layer_input (the real models' vision / audio ids) get token 0's per-layer input
    in transformers; ggufkit pads the table with row 0's copies, so llama.cpp agrees there too. Measured once:
    max |diff| at those 4 positions 0.022 (llama.cpp's converter pads with zeros: 2.70)."""
    from convert_fixtures import llama_cpp_logits, text_ids, transformers_logits

    src = tiny_checkpoint("gemma3n")
    table = json.loads((src / "config.json").read_text())["vocab_size_per_layer_input"]
    text = text_ids(src)
    ids = text[:24] + [table, table + 104, table + 255, table + 54] + text[24:36]
    ours = llama_cpp_logits(converted(src, "f32"), ids)
    ref = transformers_logits(src, tuple(ids))
    diff = np.abs(ours - ref)
    assert diff[24:28].max() < 0.1 and np.median(diff) < 0.01, (diff[24:28].max(), np.median(diff))
# ---- Granite 4.0-H: hub configs spell the layer kinds "mamba" / "attention" (transformers 5 saves
# "linear_attention" / "full_attention"); both convert to the same file


def test_granite_hybrid_hub_layer_names(tiny_checkpoint, tmp_path):
    src = tiny_checkpoint("granite-hybrid")
    hub = tmp_path / "granite-hybrid-hub"
    hub.mkdir()
    for f in src.iterdir():
        (hub / f.name).symlink_to(f)
    config = json.loads((src / "config.json").read_text())
    assert config["layer_types"] == ["linear_attention", "full_attention"]
    (hub / "config.json").unlink()
    (hub / "config.json").write_text(json.dumps(config | {"layer_types": ["mamba", "attention"]}))
    ours = tensor_table(converted(hub, "f32"))
    ref = tensor_table(converted(src, "f32"))
    assert [(n, t) for n, t, _ in ours] == [(n, t) for n, t, _ in ref]
    assert all(np.array_equal(a, b) for (_, _, a), (_, _, b) in zip(ours, ref))
    assert "blk.0.ssm_in.weight" in {n for n, _, _ in ours} and "blk.1.attn_q.weight" in {n for n, _, _ in ours}


# ---- Mistral 3 wrappers around a plain Mistral text model (Mistral Small 3.1 / 3.2): the same text GGUF path
# as a Ministral 3 text part, without YaRN (the FAMILIES line "mistral3" runs the Ministral 3 kind). Measured
# once: 1.000 / 0.00064 / 0.0065 with ggufkit's file and with llama.cpp's converter's (tensors identical).


def test_mistral3_wrapper_with_a_mistral_text_model(tiny_checkpoint):
    src = tiny_checkpoint("mistral3-small")
    assert json.loads((src / "config.json").read_text())["text_config"]["model_type"] == "mistral"
    names = {n for n, _, _ in tensor_table(converted(src, "f32"))}
    assert "output.weight" in names and not any(n.startswith(("v.", "mm.")) for n in names)
    assert_logits_agree(converted(src, "f32"), src)


# ---- Falcon-H1 with tied embeddings and different embedding / lm_head multipliers: output.weight is written as
# its own tensor (embeddings x lm_head_multiplier). Measured once: ggufkit 1.000 / 0.00029 / 0.0033; llama.cpp's
# converter's file reuses token_embd (with the embedding multiplier in it) as the output, so its logits come out
# scaled by embedding / lm_head multiplier (3x here): 1.000 / 0.856 / 6.60.


def test_falcon_h1_tied_embeddings_with_two_multipliers(tiny_checkpoint):
    src = tiny_checkpoint("falcon-h1-tied")
    config = json.loads((src / "config.json").read_text())
    assert config["tie_word_embeddings"] and config["embedding_multiplier"] != config["lm_head_multiplier"]
    table = {n: a for n, _, a in tensor_table(converted(src, "f32"))}
    embd, out = (table[n].view(np.float32) for n in ("token_embd.weight", "output.weight"))
    ratio = config["lm_head_multiplier"] / config["embedding_multiplier"]
    assert np.allclose(out, embd * np.float32(ratio), rtol=1e-6, atol=0)  # one source, two multipliers
    assert_logits_agree(converted(src, "f32"), src)


# ---- DeepSeek-V3 with rope_interleave false (rotary rows in halves): reordered to llama.cpp's pairs. Measured
# once: ggufkit 1.000 / 0.00075 / 0.0096; llama.cpp's converter leaves the rows as they are: 0.188 / 0.524 / 7.10.


def test_deepseek_v3_rotary_rows_in_halves(tiny_checkpoint):
    src = tiny_checkpoint("deepseek-v3-halves")
    assert json.loads((src / "config.json").read_text())["rope_interleave"] is False
    ours = {n: a for n, _, a in tensor_table(converted(src, "f32"))}
    pairs = {n: a for n, _, a in tensor_table(converted(tiny_checkpoint("deepseek-v3"), "f32"))}
    assert np.array_equal(ours["blk.0.attn_v_b.weight"], pairs["blk.0.attn_v_b.weight"])  # same weights
    assert not np.array_equal(ours["blk.0.attn_q_b.weight"], pairs["blk.0.attn_q_b.weight"])  # rows moved
    assert_logits_agree(converted(src, "f32"), src)
# ---- Phi-3.5-MoE: the conversion checked against transformers run the way llama.cpp's phimoe graph runs


def test_phimoe_matches_transformers_with_llama_cpp_graph(tiny_checkpoint):
    """transformers' Phimoe with its LayerNorms computed as RMS norm + bias and its SparseMixer routing replaced
    by softmax top-k renormalised (llama.cpp's phimoe graph) gives llama.cpp's logits from ggufkit's F32 file:
    the two documented differences are the only ones."""
    import torch
    from convert_fixtures import llama_cpp_logits, text_ids
    from transformers import AutoModelForCausalLM

    src = tiny_checkpoint("phimoe")
    ids = text_ids(src)
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    routers = 0
    for m in model.modules():
        if isinstance(m, torch.nn.LayerNorm):
            m.forward = lambda x, m=m: x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + m.eps) * m.weight + m.bias
        elif type(m).__name__ == "PhimoeTopKRouter":
            routers += 1

            def route(h, m=m):  # (tokens, hidden) -> logits, (tokens, k) weights, (tokens, k) expert ids
                logits = torch.nn.functional.linear(h, m.weight)
                weights, chosen = torch.softmax(logits.float(), -1).topk(m.top_k, -1)
                return logits, (weights / weights.sum(-1, keepdim=True)).to(h.dtype), chosen
            m.forward = route
    assert routers == model.config.num_hidden_layers
    with torch.no_grad():
        ref = model(torch.tensor([ids])).logits[0].numpy()  # (n_tokens, vocab) f32
    diff = np.abs(llama_cpp_logits(converted(src, "f32"), ids) - ref)
    assert np.median(diff) < 0.01 and diff.max() < 0.05, f"median {np.median(diff):.5f}, max {diff.max():.5f}"


# ---- Apertus: the xIELU scalars are read from the checkpoint into GGUF keys


def test_apertus_xielu_keys_hold_the_checkpoint_scalars(tiny_checkpoint):
    import gguf
    from safetensors.torch import load_file

    src = tiny_checkpoint("apertus")
    (weights,) = src.glob("*.safetensors")
    tensors = load_file(weights)
    reader = gguf.GGUFReader(converted(src, "f32"))
    n_layer = json.loads((src / "config.json").read_text())["num_hidden_layers"]
    for param in ("alpha_n", "alpha_p", "beta", "eps"):
        values = reader.get_field(f"xielu.{param}").contents()  # the key has no arch prefix (nor in llama.cpp)
        expected = [tensors[f"model.layers.{i}.mlp.act_fn.{param}"].float().item() for i in range(n_layer)]
        assert np.array_equal(np.float32(values), np.float32(expected)), (param, values, expected)
    assert not any("act_fn" in t.name for t in reader.tensors)


def test_apertus_missing_xielu_scalar_is_named(tiny_checkpoint, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    from ggufkit.conversion import convert

    src = tmp_path / "apertus"
    shutil.copytree(tiny_checkpoint("apertus"), src)
    (weights,) = src.glob("*.safetensors")
    tensors = load_file(weights)
    del tensors["model.layers.1.mlp.act_fn.beta"]
    save_file(tensors, str(weights), metadata={"format": "pt"})
    with pytest.raises(InputError) as err:
        convert(src, tmp_path / "out.gguf", scheme="f32", quiet=True)
    assert "model.layers.1.mlp.act_fn.beta is missing" in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "out.gguf").exists()
