"""GLM-4.5 / GLM-4.6 / GLM-4.7 MoE (GLM-4.5-Air, ...): HF `model_type` "glm4_moe" -> GGUF arch "glm4moe".

Attention as Qwen2's (NEOX rope, so Q/K rows go out unchanged; q/k/v biases when `attention_bias`; free
head_dim) with partial rotary embeddings (the first `partial_rotary_factor` of each head, 0.5 by default) and,
with `use_qk_norm`, per-head q/k RMS norms. The norm before the FFN is called post_attention_norm in llama.cpp.
The FFN is DeepSeek-V3's (archs/deepseek_v3.py DeepseekMoE): the first `first_k_dense_replace` layers dense,
then sigmoid-routed experts with a correction bias (exp_probs_b) and expert groups, routed scaling, shared
experts; multi-token-prediction layers (`model.layers.N` for N >= num_hidden_layers) left out, as llama.cpp's
converter does with --no-mtp.
"""
from __future__ import annotations

import gguf

from ggufkit.archs.deepseek_v3 import DeepseekMoE
from ggufkit.archs.qwen2 import Qwen2


class Glm4Moe(DeepseekMoE, Qwen2):
    model_type = "glm4_moe"
    gguf_arch = gguf.MODEL_ARCH.GLM4_MOE
    rope_types = ("default",)
    square_attention = False
    default_rotary_factor = 0.5  # transformers' Glm4MoeConfig default
    default_dense_layers = 1

    @property
    def attention_biases(self) -> bool:
        return bool(self.config.get("attention_bias", False))

    def rope_dimension_count(self) -> int:
        factor = self.rope.params.get("partial_rotary_factor",
                                      self.config.get("partial_rotary_factor", self.default_rotary_factor))
        return int(self.head_dim * float(factor))

    def unhandled_features(self) -> list[str]:
        # q/k/v biases are this family's (the llama checks refuse attention_bias for others)
        return [f for f in super().unhandled_features() if not f.startswith("attention_bias")]

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        shapes: dict[str, tuple[int, ...]] = {}
        for name, shape in super().expected_shapes().items():
            if name.endswith(".ffn_norm.weight"):
                name = name.replace(".ffn_norm.", ".post_attention_norm.")
            shapes[name] = shape
            if name.endswith(".attn_output.weight") and self.config.get("use_qk_norm"):
                block = name.rsplit(".", 2)[0]
                shapes[f"{block}.attn_q_norm.weight"] = (self.head_dim,)
                shapes[f"{block}.attn_k_norm.weight"] = (self.head_dim,)
        return shapes
