"""OLMo 2 (OLMo-2-1124-7B/13B, OLMo-2-0425-1B, OLMo-2-0325-32B): HF `model_type` "olmo2" -> GGUF arch "olmo2".

A Qwen2-like decoder (NEOX rope, so Q/K rows go out unchanged; square attention) with OLMo's norm placement:
- no norm before attention or the FFN; instead an RMS norm on each sublayer's *output*, before the residual add:
  post_attention_layernorm -> post_attention_norm, post_feedforward_layernorm -> post_ffw_norm;
- Q and K are RMS-normed over the whole projection (all heads together, before rope): q_norm (heads*head_dim,)
  and k_norm (kv_heads*head_dim,) -> attn_q_norm / attn_k_norm - not per head as in Qwen3.
No attention biases; llama.cpp's olmo2 always reads its own output tensor, so tied embeddings are refused.
"""
from __future__ import annotations

import gguf

from ggufkit.archs.qwen2 import Qwen2


class Olmo2(Qwen2):
    model_type = "olmo2"
    gguf_arch = gguf.MODEL_ARCH.OLMO2
    attention_biases = False
    needs_output_tensor = True  # llama.cpp's olmo2 has no fallback to token_embd

    def unhandled_features(self) -> list[str]:
        found = super().unhandled_features()
        if self.tied_embeddings and self.needs_output_tensor:
            found.append(f"tie_word_embeddings=true (llama.cpp's {self.arch_name} needs its own output tensor)")
        return found

    def qk_norm_shapes(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """attn_q_norm's and attn_k_norm's shapes: OLMo norms the whole projection."""
        return (self.n_head * self.head_dim,), (self.n_head_kv * self.head_dim,)

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        e = self.n_embd
        q_norm, k_norm = self.qk_norm_shapes()
        shapes: dict[str, tuple[int, ...]] = {}
        for name, shape in super().expected_shapes().items():
            if name.endswith((".attn_norm.weight", ".ffn_norm.weight")):
                continue  # no pre-norms: the norms follow the sublayers
            shapes[name] = shape
            block = name.rsplit(".", 2)[0]
            if name.endswith(".attn_output.weight"):
                shapes[f"{block}.attn_q_norm.weight"] = q_norm
                shapes[f"{block}.attn_k_norm.weight"] = k_norm
                shapes[f"{block}.post_attention_norm.weight"] = (e,)
            elif name.endswith(".ffn_down.weight"):
                shapes[f"{block}.post_ffw_norm.weight"] = (e,)
        return shapes
