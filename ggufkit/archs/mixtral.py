"""Mixtral (Mixtral-8x7B, 8x22B and MoE models that reuse its layout): HF `model_type` "mixtral" -> GGUF arch
"llama" with experts, as llama.cpp runs it.

Mistral's attention (llama's Q/K row reordering for llama.cpp's rope, no biases) with every FFN a mixture of
`num_local_experts` SwiGLU experts of `intermediate_size` (archs/moe.py): router `block_sparse_moe.gate`,
softmax, top `num_experts_per_tok`, weights renormalised - what llama.cpp's llama graph computes when the file
has experts. Checkpoints name the expert projections w1 (gate), w2 (down), w3 (up) per expert; the fused
transformers 5 form (`mlp.experts.gate_up_proj` / `down_proj`, router `mlp.gate`) converts to the same file.

llama.cpp reads no expert feed-forward length for llama (the experts are intermediate_size wide), so none is
written, as with llama.cpp's own converter. With 8 experts llama-quantize's 8-expert rules apply (attn_v and
attn_k at Q8_0, attn_output at Q5_K for the K-quant mixes); plan/schemes.py holds them.
"""
from __future__ import annotations

from ggufkit.archs.mistral import Mistral
from ggufkit.archs.moe import MoE


class Mixtral(MoE, Mistral):
    model_type = "mixtral"
    expert_ff_key = None
    writes_expert_ff_length = False
