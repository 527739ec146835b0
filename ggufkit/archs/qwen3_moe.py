"""Qwen3 MoE (Qwen3-30B-A3B, Qwen3-235B-A22B, Qwen3-Coder-30B-A3B): HF `model_type` "qwen3_moe" -> GGUF arch
"qwen3moe".

Qwen3's attention (q/k norms, free head_dim, NEOX RoPE, no biases) with every FFN replaced by a mixture of
experts (archs/moe.py): a router `mlp.gate` and `num_experts` SwiGLU experts of `moe_intermediate_size`, the top
`num_experts_per_tok` of a softmax over the router logits chosen per token.

What llama.cpp's qwen3moe graph fixes, and the configs it therefore cannot run (refused):
- the top-k routing weights are always renormalised to sum to 1: `norm_topk_prob: false` is refused (all
  released Qwen3 MoE models set it true; transformers' config class defaults to false);
- every layer is an MoE layer: `mlp_only_layers` non-empty or `decoder_sparse_step` != 1 is refused;
- no shared expert (that is qwen2_moe).
"""
from __future__ import annotations

import gguf

from ggufkit.archs.moe import MoE
from ggufkit.archs.qwen3 import Qwen3


class Qwen3Moe(MoE, Qwen3):
    model_type = "qwen3_moe"
    gguf_arch = gguf.MODEL_ARCH.QWEN3MOE

    def unhandled_features(self) -> list[str]:
        found = super().unhandled_features()
        if not self.config.get("norm_topk_prob", False):
            found.append("norm_topk_prob=false (llama.cpp's qwen3moe always renormalises the top-k expert "
                         "weights)")
        if self.config.get("mlp_only_layers"):
            found.append(f"mlp_only_layers={self.config['mlp_only_layers']!r} (llama.cpp's qwen3moe has an MoE "
                         "FFN in every layer)")
        if self.config.get("decoder_sparse_step", 1) != 1:
            found.append(f"decoder_sparse_step={self.config['decoder_sparse_step']!r} (llama.cpp's qwen3moe "
                         "has an MoE FFN in every layer)")
        for key in ("shared_expert_intermediate_size", "n_shared_experts"):
            if self.config.get(key):
                found.append(f"{key}={self.config[key]} (llama.cpp's qwen3moe has no shared expert)")
        return found
