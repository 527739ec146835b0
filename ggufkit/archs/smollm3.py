"""SmolLM3: HF `model_type` "smollm3" -> GGUF arch "smollm3".

A llama (same tensors, same Q/K row reordering for llama.cpp's pair-wise rope, tied embeddings) whose every
fourth layer uses no rotary embedding at all ("NoPE" layers). HF states the pattern per layer in
`no_rope_layers` (1 = rope, 0 = none) built from `no_rope_layer_interval`; llama.cpp has no GGUF key for it and
hard-codes the interval: layer i uses rope unless (i + 1) % 4 == 0. A config whose pattern is anything else is
refused, as is sliding-window attention (llama.cpp's smollm3 graph has none) and Llama-3 rope scaling (the graph
reads no rope_freqs tensor).
"""
from __future__ import annotations

import gguf

from ggufkit.archs.llama import Llama

LLAMA_CPP_NO_ROPE_STEP = 4  # llama.cpp's hparams.n_no_rope_layer_step for smollm3


class SmolLM3(Llama):
    model_type = "smollm3"
    gguf_arch = gguf.MODEL_ARCH.SMOLLM3
    rope_types = ("default", "linear", "yarn")

    def rope_layers(self) -> list[bool]:
        """One flag per layer: True where the layer applies rope (HF's no_rope_layers, or its default)."""
        flags = self.config.get("no_rope_layers")
        if flags is None:
            step = self.config.get("no_rope_layer_interval", LLAMA_CPP_NO_ROPE_STEP)
            return [(i + 1) % step != 0 for i in range(self.n_layer)]
        return [bool(f) for f in flags]

    def unhandled_features(self) -> list[str]:
        found = super().unhandled_features()
        llama_cpp = [(i + 1) % LLAMA_CPP_NO_ROPE_STEP != 0 for i in range(self.n_layer)]
        flags = self.config.get("no_rope_layers")
        if flags is not None and (not isinstance(flags, list) or len(flags) != self.n_layer):
            found.append(f"no_rope_layers={flags!r} (expected one 0/1 per layer)")
        elif self.rope_layers() != llama_cpp:
            found.append("a no-rope layer pattern other than every 4th layer (no_rope_layers / "
                         "no_rope_layer_interval; llama.cpp's smollm3 fixes it at 4)")
        if self.config.get("use_sliding_window"):
            found.append("use_sliding_window=true (llama.cpp's smollm3 has no sliding-window attention)")
        layer_types = self.config.get("layer_types") or []
        if any(t != "full_attention" for t in layer_types):
            found.append(f"layer_types with {sorted(set(layer_types) - {'full_attention'})} (llama.cpp's "
                         "smollm3 runs full attention in every layer)")
        return found
