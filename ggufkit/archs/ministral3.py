"""Ministral 3 (Ministral-3-3B/8B/14B, text part): HF `model_type` "ministral3" -> GGUF arch "mistral3".

A Llama-shaped decoder (llama's Q/K row reordering for llama.cpp's rope, free head_dim, no biases) with the
two things llama.cpp's mistral3 reads beyond llama:
- YaRN rope with `mscale_all_dim` -> rope.scaling.yarn_log_mul. llama.cpp then computes the attention factor
  as get_mscale(factor, 1) / get_mscale(factor, mscale_all_dim): it assumes `mscale` 1, so another mscale (or
  an explicit attention_factor, which llama.cpp overrides for YaRN) is refused;
- position-dependent query scaling ("llama 4 scaling"): queries are multiplied by
  1 + beta * log(1 + floor(pos / original_max_position_embeddings)); beta (`llama_4_scaling_beta`) ->
  attention.temperature_scale, the floor divisor is the YaRN original context.
llama.cpp's mistral3 has no sliding-window attention: a `sliding_window` shorter than the context is refused.
"""
from __future__ import annotations

import gguf

from ggufkit.archs.llama import Llama


class Ministral3(Llama):
    model_type = "ministral3"
    gguf_arch = gguf.MODEL_ARCH.MISTRAL3
    rope_types = ("default", "yarn")

    def unhandled_features(self) -> list[str]:
        found = super().unhandled_features()
        p = self.rope.params
        window = self.hparam("sliding_window", int, default=None)
        if window and window < self.n_ctx:
            found.append(f"sliding_window={self.config['sliding_window']} (llama.cpp's mistral3 has no "
                         "sliding-window attention)")
        if self.rope.type == "yarn":
            if p.get("mscale_all_dim") and float(p.get("mscale") or 0.0) != 1.0:
                found.append(f"rope mscale={p.get('mscale')!r} with mscale_all_dim (llama.cpp's mistral3 "
                             "assumes mscale 1)")
            if p.get("attention_factor") is not None:
                found.append("rope attention_factor (llama.cpp derives it from factor and mscale_all_dim)")
        if p.get("llama_4_scaling_beta") and self.rope.type != "yarn":
            found.append("llama_4_scaling_beta without yarn rope (llama.cpp takes its divisor from the YaRN "
                         "original context)")
        return found

    def write_hparams(self, w: gguf.GGUFWriter) -> None:
        super().write_hparams(w)
        p = self.rope.params
        if self.rope.type == "yarn" and p.get("mscale_all_dim"):
            w.add_rope_scaling_yarn_log_mul(float(p["mscale_all_dim"]))
        if p.get("llama_4_scaling_beta"):
            w.add_attn_temperature_scale(float(p["llama_4_scaling_beta"]))
