"""Seed-OSS (Seed-OSS-36B-Base / -Instruct): HF `model_type` "seed_oss" -> GGUF arch "seed_oss".

Qwen2's layout (Q/K/V biases - `attention_bias`, default true -, NEOX rope, pre-norms, SwiGLU) with a free head_dim
(the 36B: 80 heads of 128 on a 5120 hidden size, so the attention output is (hidden, heads * head_dim)). llama.cpp
names the norm before the MLP post_attention_norm (not ffn_norm). No output-projection bias in llama.cpp's
seed_oss: `attention_out_bias: true` is refused, as are MLP biases. Tied embeddings are allowed.
"""
from __future__ import annotations

import gguf

from ggufkit.archs.qwen2 import Qwen2


class SeedOss(Qwen2):
    model_type = "seed_oss"
    gguf_arch = gguf.MODEL_ARCH.SEED_OSS
    square_attention = False
    refused_bias_flags = ("mlp_bias", "attention_out_bias")

    @property
    def attention_biases(self) -> bool:
        return bool(self.config.get("attention_bias", True))

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        return {(name.replace(".ffn_norm.", ".post_attention_norm.") if name.endswith(".ffn_norm.weight") else name):
                shape for name, shape in super().expected_shapes().items()}
