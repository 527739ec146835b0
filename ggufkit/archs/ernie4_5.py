"""ERNIE 4.5 dense (ERNIE-4.5-0.3B-PT / -Base-PT): HF `model_type` "ernie4_5" -> GGUF arch "ernie4_5".

A llama-shaped decoder (pre-norms, SwiGLU, no biases) whose rope already is llama.cpp's: transformers' ERNIE
rotation pairs interleaved dimensions (2i, 2i + 1), the normal (GPT-J) rope of llama.cpp's ernie4_5, so Q/K rows
go out unchanged - no per-head reordering as for llama. head_dim is free (attention output (hidden,
heads * head_dim)); tied embeddings (the 0.3B) are allowed. Biases (`use_bias: true`) are refused: llama.cpp's
ernie4_5 reads no Q/K/V/FFN biases and no released ERNIE 4.5 has them. Llama-3 rope scaling (a rope_freqs
tensor) is refused: the graph reads none. (Paddle-style fused `qkv_proj` / `up_gate_proj` checkpoints are not
read; the -PT releases use transformers' names.)
"""
from __future__ import annotations

import gguf

from ggufkit.archs import OutputTensor
from ggufkit.archs.llama import Llama


class Ernie45(Llama):
    model_type = "ernie4_5"
    gguf_arch = gguf.MODEL_ARCH.ERNIE4_5
    rope_types = ("default", "linear", "yarn")

    def unhandled_features(self) -> list[str]:
        found = super().unhandled_features()
        if self.config.get("use_bias"):
            found.append(f"use_bias=true (llama.cpp's {self.arch_name} has no Q/K/V or FFN biases)")
        return found

    def transform(self, out: OutputTensor) -> OutputTensor:
        return out  # transformers' interleaved rope is llama.cpp's normal rope: no reordering
