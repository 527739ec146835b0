"""Hunyuan dense (Hunyuan-0.5B/1.8B/4B/7B-Instruct, -Pretrain): HF `model_type` "hunyuan_v1_dense" -> GGUF arch
"hunyuan-dense".

Qwen3's shape (per-head Q/K RMS norms of head_dim - `query_layernorm` / `key_layernorm`, applied after rope here,
as llama.cpp's graph does too -, NEOX rope so Q/K rows go out unchanged, free head_dim, no biases); tied
embeddings are allowed.

RoPE: the releases say rope type "dynamic" with an `alpha` (NTK-aware alpha scaling, 1000 for the 256k-context
models). With a fixed alpha the frequencies do not depend on the sequence: transformers stretches the base to
rope_theta * alpha ** (head_dim / (head_dim - 2)), and that is what rope.freq_base carries (plain rope otherwise).
"dynamic" without an alpha (sequence-length-dependent NTK scaling, which llama.cpp does not have) is refused, as
are Q/K/V, output and MLP biases.
"""
from __future__ import annotations

import gguf

from ggufkit.archs.qwen3 import Qwen3


class HunyuanV1Dense(Qwen3):
    model_type = "hunyuan_v1_dense"
    gguf_arch = gguf.MODEL_ARCH.HUNYUAN_DENSE
    rope_types = ("default", "dynamic")

    def unhandled_features(self) -> list[str]:
        found = super().unhandled_features()
        if self.rope.type == "dynamic":
            alpha = self.rope.params.get("alpha")
            if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or alpha <= 0:
                found.append(f"rope type 'dynamic' with alpha={alpha!r} (sequence-dependent NTK scaling; "
                             "llama.cpp has it only as a fixed alpha)")
        return found

    def rope_freq_base(self) -> float:
        if self.rope.type != "dynamic":
            return self.rope.theta
        d = self.head_dim
        return self.rope.theta * float(self.rope.params["alpha"]) ** (d / (d - 2))

    def write_hparams(self, w: gguf.GGUFWriter) -> None:
        super().write_hparams(w)
        if self.rope.type == "dynamic":
            w.add_rope_scaling_type(gguf.RopeScalingType.NONE)  # the stretch is in freq_base
