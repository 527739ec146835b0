"""GLM-4 (GLM-4-9B-0414, GLM-4-32B-0414, GLM-Z1): HF `model_type` "glm4" -> GGUF arch "glm4".

A Qwen2-like decoder (Q/K/V biases, switched by `attention_bias` - default true) with GLM's extra norms and
rope:
- four RMS norms per block: input_layernorm -> attn_norm, post_self_attn_layernorm (on the attention output,
  before the residual add) -> post_attention_norm, post_attention_layernorm (before the MLP) -> ffn_norm,
  post_mlp_layernorm (on the MLP output) -> post_ffw_norm;
- the MLP's gate and up projections are one `gate_up_proj` (gate rows, then up rows) -> ffn_up, kept fused:
  llama.cpp's glm4 splits it the same way (SwiGLU of the first half times the second); no ffn_gate tensor;
- partial rotary embedding (`partial_rotary_factor`, 0.5 in every release) on the interleaved pairs of the
  first rotary dimensions of each head - transformers' GLM rotation is llama.cpp's normal (GPT-J) rope, so Q/K
  rows go out unchanged; rope.dimension_count = head_dim * partial_rotary_factor;
- head_dim is free (attention output (hidden, heads * head_dim)); tied embeddings are allowed.
"""
from __future__ import annotations

import gguf

from ggufkit.archs.qwen2 import Qwen2


class Glm4(Qwen2):
    model_type = "glm4"
    gguf_arch = gguf.MODEL_ARCH.GLM4
    square_attention = False
    refused_bias_flags = ("mlp_bias",)

    def __init__(self, config: dict, config_path):
        super().__init__(config, config_path)
        factor = self.rope.params.get("partial_rotary_factor", config.get("partial_rotary_factor", 0.5))
        self.rope_dims = int(self.head_dim * float(factor))
        if self.rope_dims <= 0 or self.rope_dims % 2 or self.rope_dims > self.head_dim:
            self.fail(f"partial_rotary_factor={factor} gives {self.rope_dims} rotary dimensions of a "
                      f"{self.head_dim}-dimension head (need an even number, 2 to head_dim)")

    @property
    def attention_biases(self) -> bool:
        return bool(self.config.get("attention_bias", True))

    def unhandled_features(self) -> list[str]:
        found = super().unhandled_features()
        if self.rope.params.get("mrope_section") is not None:
            found.append("rope mrope_section (the multimodal GLM-4V rope; this converts text models)")
        return found

    def rope_dimension_count(self) -> int:
        return self.rope_dims

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        e = self.n_embd
        shapes: dict[str, tuple[int, ...]] = {}
        for name, shape in super().expected_shapes().items():
            block = name.rsplit(".", 2)[0]
            if name.endswith(".ffn_gate.weight"):
                continue  # fused into ffn_up
            if name.endswith(".ffn_up.weight"):
                shape = (2 * self.n_ff, e)
            shapes[name] = shape
            if name.endswith(".attn_output.weight"):
                shapes[f"{block}.post_attention_norm.weight"] = (e,)
            elif name.endswith(".ffn_down.weight"):
                shapes[f"{block}.post_ffw_norm.weight"] = (e,)
        return shapes
