"""IBM Granite 3.x dense (granite-3.3-2b/8b-instruct, ...): HF `model_type` "granite" -> GGUF arch "granite".

A llama (same tensors, same Q/K row reordering for llama.cpp's pair-wise rope) with four scalar multipliers, each
a GGUF key that llama.cpp's granite graph applies where transformers does:
- embedding_multiplier -> embedding_scale: token embeddings are multiplied by it;
- attention_multiplier -> attention.scale: the attention logits' scale (in place of 1/sqrt(head_dim));
- residual_multiplier -> residual_scale: each block's attention and FFN output is multiplied by it before the
  residual add;
- logits_scaling -> logit_scale: the final logits are *divided* by it (llama.cpp requires the key).
llama.cpp's granite graph takes head_dim as hidden_size / num_attention_heads and its converter drops a stated
`head_dim`: a config whose head_dim differs is refused.
"""
from __future__ import annotations

import gguf

from ggufkit.archs.llama import Llama

# HF config field -> GGUF writer method, with transformers' default (1.0 for all four)
MULTIPLIERS = (("embedding_multiplier", "add_embedding_scale"), ("attention_multiplier", "add_attention_scale"),
               ("residual_multiplier", "add_residual_scale"), ("logits_scaling", "add_logit_scale"))


class Granite(Llama):
    model_type = "granite"
    gguf_arch = gguf.MODEL_ARCH.GRANITE
    rope_types = ("default", "linear", "yarn")

    def unhandled_features(self) -> list[str]:
        found = super().unhandled_features()
        if self.n_head * self.head_dim != self.n_embd:
            found.append(f"head_dim {self.head_dim} x {self.n_head} heads != hidden_size {self.n_embd} "
                         f"(llama.cpp's {self.arch_name} takes head_dim as hidden_size / num_attention_heads)")
        for key, _ in MULTIPLIERS:
            value = self.config.get(key, 1.0)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                found.append(f"{key}={value!r} (llama.cpp needs a positive number)")
        return found

    def write_hparams(self, w: gguf.GGUFWriter) -> None:
        super().write_hparams(w)
        for key, add in MULTIPLIERS:
            getattr(w, add)(float(self.config.get(key, 1.0)))
