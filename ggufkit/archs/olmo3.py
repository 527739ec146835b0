"""OLMo 3 (Olmo-3-7B, Olmo-3-32B, Instruct / Think): HF `model_type` "olmo3" -> GGUF arch "olmo2".

OLMo 2 (archs/olmo2.py: post-sublayer norms, whole-projection Q/K norms) with sliding-window attention on some
layers: `sliding_window` and one flag per layer from `layer_types` (HF's default: every layer sliding except
each 4th) -> sliding_window and sliding_window_pattern, which turn on llama.cpp's interleaved-window olmo2 graph.
RoPE settings come from rope_parameters["full_attention"] (YaRN in the long-context releases); llama.cpp rotates
sliding layers with plain rope at rope_freq_base_swa, so a sliding-layer rope that is scaled is refused.
"""
from __future__ import annotations

import gguf

from ggufkit.archs.olmo2 import Olmo2

LAYER_TYPES = ("sliding_attention", "full_attention")


class Olmo3(Olmo2):
    model_type = "olmo3"

    def sliding_layers(self) -> list[bool]:
        layer_types = self.config.get("layer_types")
        if layer_types is None:
            return [(i + 1) % 4 != 0 for i in range(self.n_layer)]
        return [t == "sliding_attention" for t in layer_types]

    def sliding_rope(self) -> dict:
        params = self.config.get("rope_parameters")
        if isinstance(params, dict) and isinstance(params.get("sliding_attention"), dict):
            return params["sliding_attention"]
        return {}

    def unhandled_features(self) -> list[str]:
        found = super().unhandled_features()
        layer_types = self.config.get("layer_types")
        if layer_types is not None and (not isinstance(layer_types, list) or len(layer_types) != self.n_layer
                                        or set(layer_types) - set(LAYER_TYPES)):
            found.append(f"layer_types={layer_types!r} (expected one of {' / '.join(LAYER_TYPES)} per layer)")
        sliding_type = self.sliding_rope().get("rope_type", "default")
        if sliding_type != "default":
            found.append(f"sliding_attention rope type {sliding_type!r} (llama.cpp's {self.arch_name} rotates "
                         "sliding layers with plain rope)")
        return found

    def write_hparams(self, w: gguf.GGUFWriter) -> None:
        super().write_hparams(w)
        w.add_sliding_window(self.hparam("sliding_window", int))
        w.add_sliding_window_pattern(self.sliding_layers())
        theta = self.sliding_rope().get("rope_theta")
        if theta is not None and float(theta) != self.rope.theta:
            w.add_rope_freq_base_swa(float(theta))
