"""OLMoE (OLMoE-1B-7B-0924 / -0125, Instruct): HF `model_type` "olmoe" -> GGUF arch "olmoe".

A Qwen2-like decoder (NEOX rope, square attention, no biases, pre-norms as llama) with OLMo's whole-projection
Q/K RMS norms (q_norm / k_norm over all heads together -> attn_q_norm / attn_k_norm) and every FFN a mixture of
`num_experts` SwiGLU experts of `intermediate_size` (archs/moe.py): router `mlp.gate`, softmax, the top
`num_experts_per_tok` weights used as they are.

What llama.cpp's olmoe fixes, and the configs it therefore cannot run (refused): both Q/K norms are hidden_size
wide, so `num_key_value_heads` must equal `num_attention_heads`; top-k weights are never renormalised
(`norm_topk_prob: true`); no clamping of Q/K/V (`clip_qkv`); its own output tensor (tied embeddings). The experts
are feed_forward_length wide there: no expert feed-forward length is written.
"""
from __future__ import annotations

import gguf

from ggufkit.archs.moe import MoE
from ggufkit.archs.qwen2 import Qwen2


class Olmoe(MoE, Qwen2):
    model_type = "olmoe"
    gguf_arch = gguf.MODEL_ARCH.OLMOE
    attention_biases = False
    expert_ff_key = None
    writes_expert_ff_length = False

    def unhandled_features(self) -> list[str]:
        found = super().unhandled_features()
        if self.n_head_kv != self.n_head:
            found.append(f"num_key_value_heads={self.n_head_kv} != num_attention_heads={self.n_head} (llama.cpp's "
                         "olmoe has a hidden_size-wide K norm)")
        if self.config.get("norm_topk_prob"):
            found.append("norm_topk_prob=true (llama.cpp's olmoe never renormalises the top-k expert weights)")
        if self.config.get("clip_qkv") is not None:
            found.append(f"clip_qkv={self.config['clip_qkv']} (llama.cpp's olmoe does not clamp Q/K/V)")
        if self.tied_embeddings:
            found.append("tie_word_embeddings=true (llama.cpp's olmoe needs its own output tensor)")
        return found

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        shapes: dict[str, tuple[int, ...]] = {}
        for name, shape in super().expected_shapes().items():
            shapes[name] = shape
            if name.endswith(".attn_output.weight"):  # whole-projection norms, after the attention tensors
                block = name.rsplit(".", 2)[0]
                shapes[f"{block}.attn_q_norm.weight"] = (self.n_head * self.head_dim,)
                shapes[f"{block}.attn_k_norm.weight"] = (self.n_head_kv * self.head_dim,)
        return shapes
