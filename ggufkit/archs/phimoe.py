"""Phi-3.5-MoE (Phi-3.5-MoE-instruct): HF `model_type` "phimoe" -> GGUF arch "phimoe".

Phi-3's rope handling (archs/phi3.py: NEOX rope, LongRoPE factor tensors and attn_factor) with separate Q/K/V
projections, biases almost everywhere, and every FFN a mixture of `num_local_experts` SwiGLU experts of
`intermediate_size` (archs/moe.py; per-expert w1 / w2 / w3 under block_sparse_moe, or transformers 5's fused
form):
- Q/K/V and output projections carry biases (`attention_bias`, true in the release; llama.cpp requires the
  output bias, so false is refused); the LM head carries one (`lm_head_bias`; required too) -> output.bias;
- the three norms (input, post-attention, final) carry weight and bias -> attn_norm / ffn_norm / output_norm
  .weight + .bias; the output projection is its own tensor (tied embeddings refused).

How llama.cpp's phimoe differs from transformers' (not representable in GGUF - measured on the tiny checkpoint
in tests/test_archs.py, with llama.cpp's own converter giving the same numbers):
- its norms are RMS norms plus the bias, where transformers uses LayerNorm (which also subtracts the mean);
- routing: a softmax over the router logits, top `num_experts_per_tok`, renormalised; transformers' inference
  path is SparseMixer (the top expert, then the best of the rest, each weighted by a softmax over only the
  experts within 2 * router_jitter_noise of it, relative), which gives weights near 1 each, not summing to 1.
"""
from __future__ import annotations

import gguf

from ggufkit.archs.moe import MoE
from ggufkit.archs.phi3 import Phi3


class PhiMoe(MoE, Phi3):
    model_type = "phimoe"
    gguf_arch = gguf.MODEL_ARCH.PHIMOE
    fused_projections = False
    expert_ff_key = None
    writes_expert_ff_length = False

    def unhandled_features(self) -> list[str]:
        found = super().unhandled_features()
        for key in ("attention_bias", "lm_head_bias"):
            if not self.config.get(key, False):
                found.append(f"{key}=false (llama.cpp's phimoe requires the biases)")
        if self.tied_embeddings:
            found.append("tie_word_embeddings=true (llama.cpp's phimoe needs its own output tensor)")
        return found

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        with_bias = (".attn_q.weight", ".attn_k.weight", ".attn_v.weight", ".attn_output.weight",
                     "attn_norm.weight", "ffn_norm.weight", "output_norm.weight", "output.weight")
        shapes: dict[str, tuple[int, ...]] = {}
        for name, shape in super().expected_shapes().items():
            shapes[name] = shape
            if name.endswith(with_bias):
                shapes[name.replace(".weight", ".bias")] = (shape[0],)
        return shapes
