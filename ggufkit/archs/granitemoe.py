"""IBM Granite 3.x MoE (granite-3.1-1b-a400m, granite-3.1-3b-a800m): HF `model_type` "granitemoe" -> GGUF arch
"granitemoe".

Granite's attention and multipliers (archs/granite.py) with every FFN a mixture of `num_local_experts` SwiGLU
experts of `intermediate_size` (archs/moe.py): the router's top `num_experts_per_tok` logits are softmaxed among
themselves - the same weights as llama.cpp's softmax over all experts renormalised over the chosen ones.
Checkpoints hold each layer's experts fused, under JetMoE's names:
    block_sparse_moe.input_linear.weight   (n_expert, 2 * n_ff, hidden)   gate rows, then up rows
    block_sparse_moe.output_linear.weight  (n_expert, hidden, n_ff)
    block_sparse_moe.router.layer.weight   (n_expert, hidden)
(transformers 5 holds them in memory as block_sparse_moe.experts.gate_up_proj / down_proj and router.weight;
either set of names is read). llama.cpp reads no expert feed-forward length for granitemoe (the experts are
feed_forward_length wide), so none is written.
"""
from __future__ import annotations

import re

import gguf

from ggufkit.archs.granite import Granite
from ggufkit.archs.moe import MoE
from ggufkit.archs.wrapper import TextPart

# JetMoE / transformers 5 names -> the qwen2moe-style names archs/moe.py and gguf-py know
_RENAMES = ((re.compile(r"(.*)\.block_sparse_moe\.(?:input_linear\.weight|experts\.gate_up_proj)"),
             r"\1.mlp.experts.gate_up_proj"),
            (re.compile(r"(.*)\.block_sparse_moe\.(?:output_linear\.weight|experts\.down_proj)"),
             r"\1.mlp.experts.down_proj"),
            (re.compile(r"(.*)\.block_sparse_moe\.router(?:\.layer)?\.weight"), r"\1.mlp.gate.weight"))


def _rename(name: str) -> str:
    for pattern, replacement in _RENAMES:
        if pattern.fullmatch(name):
            return pattern.sub(replacement, name)
    return name


class GraniteMoe(MoE, Granite):
    model_type = "granitemoe"
    gguf_arch = gguf.MODEL_ARCH.GRANITE_MOE
    expert_ff_key = None
    writes_expert_ff_length = False

    def unhandled_features(self) -> list[str]:
        found = super().unhandled_features()
        if self.config.get("shared_intermediate_size"):
            found.append(f"shared_intermediate_size={self.config['shared_intermediate_size']} (a shared expert: "
                         "that is model_type granitemoeshared)")
        return found

    def tensors(self, ckpt) -> list:
        return super().tensors(TextPart(ckpt, _rename))
