"""Qwen2 / Qwen2.5: HF `model_type` "qwen2" -> GGUF arch "qwen2".

A llama-shaped decoder with two differences that matter for conversion:
- Q, K and V projections carry biases (always; the config has no switch for them) -> attn_{q,k,v}.bias.
- RoPE is NEOX-style in llama.cpp: it rotates dimension i with i + d/2, the same split halves HF uses, so Q and K
  rows go out unchanged (no per-head reordering as for llama).
llama.cpp's qwen2 graph has no sliding window and no rope_freqs tensor: configs that need either are refused.
"""
from __future__ import annotations

import gguf

from ggufkit.archs import OutputTensor
from ggufkit.archs.llama import Llama


class Qwen2(Llama):
    model_type = "qwen2"
    gguf_arch = gguf.MODEL_ARCH.QWEN2
    rope_types = ("default", "linear", "yarn")
    attention_biases = True  # attn_q/k/v carry a bias vector each
    square_attention = True  # llama.cpp's qwen2 shapes attn_output (hidden, hidden): heads * head_dim == hidden

    def unhandled_features(self) -> list[str]:
        found = super().unhandled_features()
        if self.config.get("use_sliding_window"):
            found.append("use_sliding_window=true (llama.cpp's qwen2 has no sliding-window attention)")
        if self.square_attention and self.n_head * self.head_dim != self.n_embd:
            found.append(f"head_dim {self.head_dim} x {self.n_head} heads != hidden_size {self.n_embd} "
                         "(llama.cpp's qwen2 expects them equal)")
        return found

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        shapes = super().expected_shapes()
        if not self.attention_biases:
            return shapes
        with_bias: dict[str, tuple[int, ...]] = {}
        for name, shape in shapes.items():
            with_bias[name] = shape
            if name.endswith((".attn_q.weight", ".attn_k.weight", ".attn_v.weight")):
                with_bias[name.replace(".weight", ".bias")] = (shape[0],)
        return with_bias

    def transform(self, out: OutputTensor) -> OutputTensor:
        return out  # NEOX rope: HF's layout is llama.cpp's layout
