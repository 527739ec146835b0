"""GLM-4.5 / GLM-4.6 / GLM-4.7 MoE (GLM-4.5-Air, ...): HF `model_type` "glm4_moe" -> GGUF arch "glm4moe".

Attention as Qwen2's (NEOX rope, so Q/K rows go out unchanged; q/k/v biases when `attention_bias`; free
head_dim) with partial rotary embeddings (the first `partial_rotary_factor` of each head, 0.5 by default) and,
with `use_qk_norm`, per-head q/k RMS norms. The norm before the FFN is called post_attention_norm in llama.cpp.
The first `first_k_dense_replace` layers have a dense SwiGLU FFN; every later one a mixture of experts
(archs/moe.py) plus a shared expert:
- router `mlp.gate` (n_routed_experts, hidden), sigmoid scores; the experts are chosen on score +
  `e_score_correction_bias` (-> exp_probs_b.bias) and weighted by the plain scores, renormalised when
  `norm_topk_prob` (expert_weights_norm) and multiplied by `routed_scaling_factor` (expert_weights_scale);
- `n_shared_experts` shared experts fused into one SwiGLU of n_shared * moe_intermediate_size
  (ffn_{gate,up,down}_shexp), added to the routed output.
llama.cpp's glm4moe has no expert-group selection: `topk_group` < `n_group` (a group-limited choice) is refused.
Multi-token-prediction layers (`model.layers.N` for N >= num_hidden_layers, num_nextn_predict_layers) are left
out, as llama.cpp's converter does with --no-mtp.
"""
from __future__ import annotations

import re

import gguf

from ggufkit.archs.moe import MoE
from ggufkit.archs.qwen2 import Qwen2


class _Prepared:
    """The checkpoint without the multi-token-prediction layers, the routing bias named as a bias."""

    def __init__(self, ckpt, n_layer: int):
        self.weights_file = ckpt.weights_file
        self.tensors = {}
        for name, ref in ckpt.tensors.items():
            m = re.match(r"model\.layers\.(\d+)\.", name)
            if m and int(m[1]) >= n_layer:
                continue
            if name.endswith(".e_score_correction_bias"):
                name = name[: -len("_bias")] + ".bias"
            self.tensors[name] = ref


class Glm4Moe(MoE, Qwen2):
    model_type = "glm4_moe"
    gguf_arch = gguf.MODEL_ARCH.GLM4_MOE
    rope_types = ("default",)
    square_attention = False
    default_rotary_factor = 0.5  # transformers' Glm4MoeConfig default

    def __init__(self, config: dict, config_path):
        super().__init__(config, config_path)
        self.n_shared = self.hparam("n_shared_experts", int)
        self.n_dense = int(config.get("first_k_dense_replace", 1) or 0)

    @property
    def attention_biases(self) -> bool:
        return bool(self.config.get("attention_bias", False))

    @property
    def rope_dims(self) -> int:
        factor = self.rope.params.get("partial_rotary_factor",
                                      self.config.get("partial_rotary_factor", self.default_rotary_factor))
        return int(self.head_dim * float(factor))

    def unhandled_features(self) -> list[str]:
        # q/k/v biases are this family's (the llama checks refuse attention_bias for others)
        found = [f for f in super().unhandled_features() if not f.startswith("attention_bias")]
        n_group, topk_group = int(self.config.get("n_group", 1) or 1), int(self.config.get("topk_group", 1) or 1)
        if topk_group < n_group:
            found.append(f"topk_group={topk_group} < n_group={n_group} (llama.cpp's {self.arch_name} has no "
                         "group-limited expert choice)")
        return found

    # ---- GGUF metadata

    def write_hparams(self, w: gguf.GGUFWriter) -> None:
        super().write_hparams(w)
        w.add_expert_shared_count(self.n_shared)
        w.add_leading_dense_block_count(self.n_dense)
        w.add_expert_gating_func(gguf.ExpertGatingFuncType.SIGMOID)
        w.add_expert_weights_scale(float(self.config.get("routed_scaling_factor", 1.0) or 1.0))
        w.add_expert_weights_norm(bool(self.config.get("norm_topk_prob", True)))

    # ---- tensors

    def moe_layer(self, i: int) -> bool:
        return i >= self.n_dense

    def expert_shapes(self, block: str) -> dict[str, tuple[int, ...]]:
        e, s = self.n_embd, self.n_ff_exp * self.n_shared
        return super().expert_shapes(block) | {f"{block}.exp_probs_b.bias": (self.n_expert,),
                                               f"{block}.ffn_gate_shexp.weight": (s, e),
                                               f"{block}.ffn_up_shexp.weight": (s, e),
                                               f"{block}.ffn_down_shexp.weight": (e, s)}

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        shapes: dict[str, tuple[int, ...]] = {}
        for name, shape in super().expected_shapes().items():
            if name.endswith(".ffn_norm.weight"):
                name = name.replace(".ffn_norm.", ".post_attention_norm.")
            shapes[name] = shape
            if name.endswith(".attn_output.weight") and self.config.get("use_qk_norm"):
                block = name.rsplit(".", 2)[0]
                shapes[f"{block}.attn_q_norm.weight"] = (self.head_dim,)
                shapes[f"{block}.attn_k_norm.weight"] = (self.head_dim,)
        return shapes

    def tensors(self, ckpt) -> list:
        return super().tensors(_Prepared(ckpt, self.n_layer))
