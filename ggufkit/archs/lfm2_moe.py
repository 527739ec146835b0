"""LFM2 MoE (LFM2-8B-A1B, LFM2-24B-A2B): HF `model_type` "lfm2_moe" -> GGUF arch "lfm2moe".

LFM2's hybrid conv / attention layers (archs/lfm2.py) with the FFN of every layer from `num_dense_layers` on a
mixture of experts (archs/moe.py): router `feed_forward.gate`, experts w1 (gate) / w2 (down) / w3 (up) of
`moe_intermediate_size`, and a per-expert routing bias (`feed_forward.expert_bias` -> exp_probs_b.bias) added to
the sigmoid scores for choosing experts only. The leading dense layers use intermediate_size as it stands.
llama.cpp's lfm2moe: sigmoid gating (expert_gating_func), renormalised top-k weights, no extra scaling, a bias
in every MoE layer; configs asking otherwise (`norm_topk_prob: false`, `routed_scaling_factor` != 1,
`use_expert_bias: false`) are refused.
"""
from __future__ import annotations

from typing import ClassVar

import gguf

from ggufkit.archs import RenamedCheckpoint
from ggufkit.archs.lfm2 import Lfm2
from ggufkit.archs.moe import MoE


def _bias_named(name: str, ref):
    """`feed_forward.expert_bias` (a buffer) seen as a bias tensor."""
    return (f"{name}.bias" if name.endswith(".expert_bias") else name), ref


class Lfm2Moe(MoE, Lfm2):
    model_type = "lfm2_moe"
    gguf_arch = gguf.MODEL_ARCH.LFM2MOE
    per_expert_names: ClassVar[dict[str, str]] = {"w1": "gate_proj", "w2": "down_proj", "w3": "up_proj"}

    def unhandled_features(self) -> list[str]:
        found = super().unhandled_features()
        if not self.config.get("norm_topk_prob", True):
            found.append("norm_topk_prob=false (llama.cpp's lfm2moe always renormalises the top-k weights)")
        if float(self.config.get("routed_scaling_factor", 1.0) or 1.0) != 1.0:
            found.append(f"routed_scaling_factor={self.config['routed_scaling_factor']} (llama.cpp's lfm2moe "
                         "does not scale the expert weights)")
        if not self.config.get("use_expert_bias", True):
            found.append("use_expert_bias=false (llama.cpp's lfm2moe needs the routing bias)")
        return found

    @property
    def n_dense(self) -> int:
        return int(self.config.get("num_dense_layers", 0) or 0)

    def moe_layer(self, i: int) -> bool:
        return i >= self.n_dense

    def write_hparams(self, w: gguf.GGUFWriter) -> None:
        super().write_hparams(w)
        w.add_leading_dense_block_count(self.n_dense)
        w.add_expert_gating_func(gguf.ExpertGatingFuncType.SIGMOID)

    def expert_shapes(self, block: str) -> dict[str, tuple[int, ...]]:
        return super().expert_shapes(block) | {f"{block}.exp_probs_b.bias": (self.n_expert,)}

    def tensors(self, ckpt) -> list:
        return super().tensors(RenamedCheckpoint(ckpt, _bias_named))
