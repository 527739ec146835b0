"""Qwen3 (dense): HF `model_type` "qwen3" -> GGUF arch "qwen3".

Qwen2 without the attention biases, plus an RMS norm over each head of Q and K before RoPE: attn_q_norm /
attn_k_norm, one (head_dim,) weight each, shared by all heads (used as stored: plain RMSNorm, not 1 + w).
head_dim is free (Qwen3 uses 128 whatever the hidden size), so the attention output is (hidden, heads*head_dim)
rather than square; llama.cpp reads head_dim from key_length. A config with `attention_bias: true` is refused
(through the llama checks): no released Qwen3 has biases.
"""
from __future__ import annotations

import gguf

from ggufkit.archs.qwen2 import Qwen2


class Qwen3(Qwen2):
    model_type = "qwen3"
    gguf_arch = gguf.MODEL_ARCH.QWEN3
    attention_biases = False
    square_attention = False

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        shapes: dict[str, tuple[int, ...]] = {}
        for name, shape in super().expected_shapes().items():
            shapes[name] = shape
            if name.endswith(".attn_output.weight"):  # the q/k norms go with the attention tensors
                block = name.rsplit(".", 2)[0]
                shapes[f"{block}.attn_q_norm.weight"] = (self.head_dim,)
                shapes[f"{block}.attn_k_norm.weight"] = (self.head_dim,)
        return shapes
