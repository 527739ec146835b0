"""Qwen 3.5 / 3.6 MoE text models (Qwen3.5-35B-A3B, ...): HF `model_type` "qwen3_5_moe_text" -> GGUF arch
"qwen35moe".

The Qwen 3.5 hybrid (archs/qwen3_5.py: gated delta-net and gated attention layers, their transforms and keys)
with every FFN a mixture of experts (archs/moe.py): router `mlp.gate` (softmax, top `num_experts_per_tok`,
renormalised - as llama.cpp's qwen35moe computes), `num_experts` SwiGLU experts of `moe_intermediate_size`, and a
shared expert of `shared_expert_intermediate_size` (ffn_{gate,up,down}_shexp) whose output is scaled by
sigmoid(shared_expert_gate . x): the gate is a (1, hidden) matrix in the checkpoint and a (hidden,) vector
(ffn_gate_inp_shexp) for llama.cpp.
"""
from __future__ import annotations

import gguf

from ggufkit.archs.moe import MoE
from ggufkit.archs.qwen3_5 import Qwen35Text
from ggufkit.archs.recurrent import squeezed
from ggufkit.archs.wrapper import TextOfMultimodal


class _SharedGateVector:
    """The checkpoint with each (1, hidden) shared_expert_gate seen as the (hidden,) vector llama.cpp reads."""

    def __init__(self, ckpt):
        self.weights_file = ckpt.weights_file
        self.tensors = {k: (squeezed(v, (v.shape[1],)) if k.endswith("shared_expert_gate.weight")
                            and len(v.shape) == 2 and v.shape[0] == 1 else v) for k, v in ckpt.tensors.items()}


class SharedGatedExpert(MoE):
    """Qwen's MoE block: a shared expert (shared_expert_intermediate_size wide) beside the routed ones, scaled by
    a sigmoid gate vector (ffn_gate_inp_shexp). Shared by Qwen2-MoE and Qwen 3.5 MoE."""

    def __init__(self, config: dict, config_path):
        super().__init__(config, config_path)
        self.n_ff_shexp = self.hparam("shared_expert_intermediate_size", int)

    def write_hparams(self, w: gguf.GGUFWriter) -> None:
        super().write_hparams(w)
        w.add_expert_shared_feed_forward_length(self.n_ff_shexp)

    def expert_shapes(self, block: str) -> dict[str, tuple[int, ...]]:
        e, s = self.n_embd, self.n_ff_shexp
        return super().expert_shapes(block) | {f"{block}.ffn_gate_inp_shexp.weight": (e,),
                                               f"{block}.ffn_gate_shexp.weight": (s, e),
                                               f"{block}.ffn_up_shexp.weight": (s, e),
                                               f"{block}.ffn_down_shexp.weight": (e, s)}

    def tensors(self, ckpt) -> list:
        return super().tensors(_SharedGateVector(ckpt))


class Qwen35MoeText(SharedGatedExpert, Qwen35Text):
    model_type = "qwen3_5_moe_text"
    gguf_arch = gguf.MODEL_ARCH.QWEN35MOE


class Qwen35Moe(TextOfMultimodal, Qwen35MoeText):
    """Qwen 3.5 MoE multimodal (Qwen3_5MoeForConditionalGeneration), converted to its text model"""
    model_type = "qwen3_5_moe"
    text_config_class = "Qwen3_5MoeTextConfig"
