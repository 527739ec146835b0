"""EXAONE 4.0 (EXAONE-4.0-1.2B, EXAONE-4.0-32B): HF `model_type` "exaone4" -> GGUF arch "exaone4".

OLMo 2's layout (archs/olmo2.py: no pre-norms, an RMS norm on each sublayer's output before the residual add;
NEOX rope; square attention) with Qwen3-style Q/K norms - one (head_dim,) weight shared by all heads - and
Llama-3 rope scaling (a rope_freqs tensor, archs/llama.py). Tied embeddings are allowed (the 1.2B ties them).

The attention pattern. transformers: with `sliding_window` null every layer is full attention with rope; with a
window, the `layer_types` "sliding_attention" layers attend within it *with* rope and the "full_attention"
layers attend to everything *without* rope. llama.cpp's exaone4 switches that hybrid on only for a 64-layer
model (the 32B) - then the sliding layers (sliding_window_pattern, one flag per layer) rope and the others do
not - and runs every other layer count as full attention with rope. So a windowed config needs 64 layers and a
window-less one must not have 64; the other two combinations are refused (llama.cpp would compute another model).
"""
from __future__ import annotations

import gguf

from ggufkit.archs.olmo2 import Olmo2

LLAMA_CPP_SWA_LAYERS = 64  # llama.cpp's exaone4 enables sliding-window attention for this layer count only
LAYER_TYPES = ("sliding_attention", "full_attention")


class Exaone4(Olmo2):
    model_type = "exaone4"
    gguf_arch = gguf.MODEL_ARCH.EXAONE4
    rope_types = ("default", "linear", "yarn", "llama3")
    needs_output_tensor = False

    @property
    def windowed(self) -> bool:
        return self.config.get("sliding_window") is not None

    def sliding_layers(self) -> list[bool]:
        layer_types = self.config.get("layer_types")
        if layer_types is None:  # transformers' default: every `sliding_window_pattern`-th layer is global
            period = self.config.get("sliding_window_pattern", 4)
            if isinstance(period, str):  # e.g. "LLLG"
                return [period[i % len(period)] == "L" for i in range(self.n_layer)]
            return [(i + 1) % int(period) != 0 for i in range(self.n_layer)]
        return [t == "sliding_attention" for t in layer_types]

    def unhandled_features(self) -> list[str]:
        found = super().unhandled_features()
        layer_types = self.config.get("layer_types")
        period = self.config.get("sliding_window_pattern", 4)
        if layer_types is not None and (not isinstance(layer_types, list) or len(layer_types) != self.n_layer
                                        or set(layer_types) - set(LAYER_TYPES)):
            found.append(f"layer_types={layer_types!r} (expected one of {' / '.join(LAYER_TYPES)} per layer)")
        elif layer_types is None and self.windowed and not (
                (isinstance(period, int) and not isinstance(period, bool) and period > 0)
                or (isinstance(period, str) and period and set(period) <= {"L", "G"})):
            found.append(f"sliding_window_pattern={period!r} (expected a positive period or a string of L / G)")
        if self.windowed and self.n_layer != LLAMA_CPP_SWA_LAYERS:
            found.append(f"sliding_window={self.config['sliding_window']} with {self.n_layer} layers (llama.cpp's "
                         f"exaone4 has sliding-window attention only with {LLAMA_CPP_SWA_LAYERS} layers)")
        if not self.windowed and self.n_layer == LLAMA_CPP_SWA_LAYERS:
            found.append(f"sliding_window=null with {LLAMA_CPP_SWA_LAYERS} layers (llama.cpp's exaone4 always "
                         "runs a 64-layer model with sliding-window attention)")
        return found

    def qk_norm_shapes(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        return (self.head_dim,), (self.head_dim,)

    def write_hparams(self, w: gguf.GGUFWriter) -> None:
        super().write_hparams(w)
        if self.windowed:
            w.add_sliding_window(self.hparam("sliding_window", int))
            w.add_sliding_window_pattern(self.sliding_layers())
