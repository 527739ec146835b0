"""Llama 4 text models (Llama-4-Scout-17B-16E, Maverick-17B-128E, text part): HF `model_type` "llama4_text" ->
GGUF arch "llama4"; and the multimodal wrapper "llama4" (Llama4ForConditionalGeneration), converted to its
text model.

A Llama decoder with these parts, as llama.cpp's llama4 graph runs them:
- rope in rotary pairs: transformers' Llama 4 rotates adjacent pairs (complex multiplication), which is
  llama.cpp's layout, so Q/K rows are not reordered (unlike llama); Llama-3-style rope scaling -> rope_freqs;
- interleaved no-rope layers: every 4th layer has no rope, attends globally and multiplies its queries by
  1 + attn_scale * log(1 + floor((pos + 1) / floor_scale)) (temperature tuning); the other three use rope,
  chunked attention (`attention_chunk_size`) and, with `use_qk_norm`, an L2 norm (RMS norm without weight)
  over each head of Q and K after rope. llama.cpp hard-codes all of it (interval 4, chunk 8192, floor_scale
  8192, attn_scale 0.1, q/k norms unless the model has 128 experts): configs with other values are refused;
- MoE every `interleave_moe_layer_step`-th layer (archs/moe.py): router `feed_forward.router`, top-k by the
  router logits, sigmoid weights applied to the input of the chosen experts, plus a shared expert of the same
  width (`intermediate_size`, expert_feed_forward_length); the dense layers' FFN is `intermediate_size_mlp`
  wide. The experts are stored fused and input-major: gate_up_proj (n_expert, hidden, 2 * n_ff) with the gate
  columns first, down_proj (n_expert, n_ff, hidden); each expert is transposed on its way out.
"""
from __future__ import annotations

import gguf

from ggufkit.archs import OutputTensor
from ggufkit.archs.llama import Llama
from ggufkit.archs.moe import MoE
from ggufkit.archs.wrapper import TextOfMultimodal

# what llama.cpp's llama4 fixes (src/models/llama4.cpp)
NO_ROPE_INTERVAL = 4
LLAMA_CPP_FIXED = {"attention_chunk_size": 8192, "floor_scale": 8192, "attn_scale": 0.1}


class Llama4Text(MoE, Llama):
    model_type = "llama4_text"
    gguf_arch = gguf.MODEL_ARCH.LLAMA4
    expert_ff_key = None  # intermediate_size is the expert width; intermediate_size_mlp the dense FFN's
    fused_layout = "split_transposed"

    def __init__(self, config: dict, config_path):
        super().__init__(config, config_path)
        self.n_ff = self.hparam("intermediate_size_mlp", int)
        self.moe_step = self.hparam("interleave_moe_layer_step", int, default=1)

    def unhandled_features(self) -> list[str]:
        found = super().unhandled_features()
        n = self.n_layer
        step = int(self.config.get("interleave_moe_layer_step", 1) or 1)
        moe_layers = self.config.get("moe_layers")
        if moe_layers is not None and list(moe_layers) != list(range(step - 1, n, step)):
            found.append(f"moe_layers={moe_layers!r} (llama.cpp's llama4 puts experts in every "
                         f"interleave_moe_layer_step-th layer)")
        no_rope = self.config.get("no_rope_layers")
        expected = [int((i + 1) % NO_ROPE_INTERVAL != 0) for i in range(n)]
        if (no_rope and list(no_rope) != expected) or \
                (not no_rope and self.config.get("no_rope_layer_interval", NO_ROPE_INTERVAL) != NO_ROPE_INTERVAL):
            found.append(f"no-rope layer pattern {no_rope or self.config.get('no_rope_layer_interval')!r} "
                         f"(llama.cpp's llama4 leaves out rope in every {NO_ROPE_INTERVAL}th layer)")
        for key, value in LLAMA_CPP_FIXED.items():
            if key in self.config and self.config[key] != value:
                found.append(f"{key}={self.config[key]!r} (llama.cpp's llama4 fixes it at {value})")
        if not self.config.get("attn_temperature_tuning", True):
            found.append("attn_temperature_tuning=false (llama.cpp's llama4 always tunes the no-rope layers)")
        layer_types = self.config.get("layer_types")
        kinds = ["chunked_attention" if r else "full_attention" for r in expected]
        if layer_types is not None and list(layer_types) != kinds:
            found.append(f"layer_types={layer_types!r} (llama.cpp's llama4: chunked attention on the rope "
                         "layers, full on the others)")
        if bool(self.config.get("use_qk_norm", True)) != (self.n_expert != 128):
            found.append(f"use_qk_norm={self.config.get('use_qk_norm', True)} with {self.n_expert} experts "
                         "(llama.cpp's llama4 normalises q/k unless the model has 128 experts)")
        return found

    def write_hparams(self, w: gguf.GGUFWriter) -> None:
        super().write_hparams(w)
        w.add_interleave_moe_layer_step(self.moe_step)

    def moe_layer(self, i: int) -> bool:
        return (i + 1) % self.moe_step == 0

    def expert_shapes(self, block: str) -> dict[str, tuple[int, ...]]:
        e, f = self.n_embd, self.n_ff_exp
        return super().expert_shapes(block) | {f"{block}.ffn_gate_shexp.weight": (f, e),
                                               f"{block}.ffn_up_shexp.weight": (f, e),
                                               f"{block}.ffn_down_shexp.weight": (e, f)}

    def transform(self, out: OutputTensor) -> OutputTensor:
        return out  # rotary pairs already (see the module docstring)


class Llama4(TextOfMultimodal, Llama4Text):
    """Llama 4 multimodal (Llama4ForConditionalGeneration), converted to its text model"""
    model_type = "llama4"
    text_config_class = "Llama4TextConfig"
    other_towers = ("vision_model.", "multi_modal_projector.", "model.vision_model.",
                    "model.multi_modal_projector.")
