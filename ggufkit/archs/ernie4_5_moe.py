"""ERNIE 4.5 MoE (ERNIE-4.5-21B-A3B-PT, ERNIE-4.5-300B-A47B-PT, their -Base): HF `model_type` "ernie4_5_moe" ->
GGUF arch "ernie4_5-moe".

ERNIE 4.5's attention (archs/ernie4_5.py: interleaved rope = llama.cpp's normal rope, rows unchanged) with the
FFN of every `moe_layer_interval`-th layer from `moe_layer_start_index` on a mixture of experts (archs/moe.py;
the leading layers keep a dense FFN of intermediate_size):
- router `mlp.gate` (n_expert, hidden): softmax; the top `moe_k` experts are chosen on the probabilities plus a
  per-expert correction bias (`mlp.moe_statics.e_score_correction_bias`, (1, n_expert) -> exp_probs_b.bias
  (n_expert,)) and weighted by their unbiased probabilities renormalised to sum to 1 - what llama.cpp's
  ernie4_5-moe computes;
- `moe_num_experts` SwiGLU experts of `moe_intermediate_size`, plus `moe_num_shared_experts` shared experts run
  as one SwiGLU of moe_intermediate_size * moe_num_shared_experts (mlp.shared_experts -> ffn_*_shexp), added.
llama.cpp has no `moe_layer_end_index`: a config whose MoE layers stop before the last layer is refused.
"""
from __future__ import annotations

import re
from typing import ClassVar

import gguf

from ggufkit.archs import RenamedCheckpoint
from ggufkit.archs.ernie4_5 import Ernie45
from ggufkit.archs.moe import MoE
from ggufkit.archs.recurrent import squeezed

_BIAS = re.compile(r"(?P<block>.+\.mlp)\.(?:gate\.)?moe_statics\.e_score_correction_bias")


def _bias_named(name: str, ref):
    """Each (1, n_expert) e_score_correction_bias (either name) seen as the (n_expert,)
    `mlp.moe_statics.e_score_correction.bias` gguf-py maps to exp_probs_b.bias."""
    if (m := _BIAS.fullmatch(name)) and len(ref.shape) == 2 and ref.shape[0] == 1:
        return f"{m['block']}.moe_statics.e_score_correction.bias", squeezed(ref, (ref.shape[1],))
    return name, ref


class Ernie45Moe(MoE, Ernie45):
    model_type = "ernie4_5_moe"
    gguf_arch = gguf.MODEL_ARCH.ERNIE4_5_MOE
    expert_count_keys: ClassVar[tuple[str, ...]] = ("moe_num_experts", "num_experts")
    expert_used_keys: ClassVar[tuple[str, ...]] = ("moe_k", "num_experts_per_tok")

    def __init__(self, config: dict, config_path):
        super().__init__(config, config_path)
        self.n_shared = int(self.hparam("moe_num_shared_experts", int, default=0) or 0)

    @property
    def moe_start(self) -> int:
        return int(self.config.get("moe_layer_start_index", 1))

    @property
    def moe_step(self) -> int:
        return int(self.config.get("moe_layer_interval", 1))

    def moe_layer(self, i: int) -> bool:
        """llama.cpp's rule: from the first MoE layer on, every moe_layer_interval-th layer."""
        return i >= self.moe_start and (i + 1) % self.moe_step == 0

    def unhandled_features(self) -> list[str]:
        found = super().unhandled_features()
        for key in ("moe_layer_start_index", "moe_layer_interval", "moe_layer_end_index"):
            value = self.config.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                found.append(f"{key}={value!r} (expected an integer)")
                return found
        if self.moe_step <= 0 or self.moe_start < 0:
            found.append(f"moe_layer_interval={self.moe_step}, moe_layer_start_index={self.moe_start} (expected a "
                         "positive interval and a start >= 0)")
            return found
        end = self.config.get("moe_layer_end_index", -1)
        end = self.n_layer - 1 if end == -1 else end
        hf = [(i + 1) % self.moe_step == 0 and self.moe_start <= i <= end for i in range(self.n_layer)]
        if hf != [self.moe_layer(i) for i in range(self.n_layer)]:
            found.append(f"moe_layer_end_index={end} before the last layer (llama.cpp's ernie4_5-moe has MoE "
                         "layers up to the last)")
        return found

    def write_hparams(self, w: gguf.GGUFWriter) -> None:
        super().write_hparams(w)
        w.add_interleave_moe_layer_step(self.moe_step)
        w.add_leading_dense_block_count(self.moe_start)
        w.add_expert_shared_count(self.n_shared)
        if self.n_shared:
            w.add_expert_shared_feed_forward_length(self.n_ff_exp * self.n_shared)

    def expert_shapes(self, block: str) -> dict[str, tuple[int, ...]]:
        e, s = self.n_embd, self.n_ff_exp * self.n_shared
        shapes = super().expert_shapes(block) | {f"{block}.exp_probs_b.bias": (self.n_expert,)}
        if self.n_shared:
            shapes |= {f"{block}.ffn_gate_shexp.weight": (s, e), f"{block}.ffn_up_shexp.weight": (s, e),
                       f"{block}.ffn_down_shexp.weight": (e, s)}
        return shapes

    def tensors(self, ckpt) -> list:
        return super().tensors(RenamedCheckpoint(ckpt, _bias_named))
