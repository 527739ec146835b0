"""Qwen1.5-MoE / Qwen2-MoE (Qwen1.5-MoE-A2.7B, Qwen2-57B-A14B): HF `model_type` "qwen2_moe" -> GGUF arch
"qwen2moe".

Qwen2's attention (Q/K/V biases - `qkv_bias`, default true -, NEOX rope, square attention) with every FFN a
mixture of experts (archs/moe.py): router `mlp.gate`, softmax over `num_experts`, the top `num_experts_per_tok`
weights used as they are, `num_experts` SwiGLU experts of `moe_intermediate_size`, plus a shared expert of
`shared_expert_intermediate_size` (ffn_{gate,up,down}_shexp) scaled by sigmoid(shared_expert_gate . x); the gate
is a (1, hidden) matrix in the checkpoint and a (hidden,) vector (ffn_gate_inp_shexp) for llama.cpp.

What llama.cpp's qwen2moe graph fixes, and the configs it therefore cannot run (refused):
- top-k weights are never renormalised: `norm_topk_prob: true` is refused;
- every layer is an MoE layer with a shared expert: `mlp_only_layers` or `decoder_sparse_step` != 1 refused;
- the output projection is its own tensor: `tie_word_embeddings: true` is refused.
"""
from __future__ import annotations

import gguf

from ggufkit.archs.qwen2 import Qwen2
from ggufkit.archs.qwen3_5_moe import SharedGatedExpert


class Qwen2Moe(SharedGatedExpert, Qwen2):
    model_type = "qwen2_moe"
    gguf_arch = gguf.MODEL_ARCH.QWEN2MOE

    @property
    def attention_biases(self) -> bool:
        return bool(self.config.get("qkv_bias", True))

    def unhandled_features(self) -> list[str]:
        found = super().unhandled_features()
        if self.config.get("norm_topk_prob"):
            found.append("norm_topk_prob=true (llama.cpp's qwen2moe never renormalises the top-k expert weights)")
        if self.config.get("mlp_only_layers"):
            found.append(f"mlp_only_layers={self.config['mlp_only_layers']!r} (llama.cpp's qwen2moe has an MoE "
                         "FFN in every layer)")
        if self.config.get("decoder_sparse_step", 1) != 1:
            found.append(f"decoder_sparse_step={self.config['decoder_sparse_step']!r} (llama.cpp's qwen2moe has "
                         "an MoE FFN in every layer)")
        if self.tied_embeddings:
            found.append("tie_word_embeddings=true (llama.cpp's qwen2moe needs its own output tensor)")
        return found
