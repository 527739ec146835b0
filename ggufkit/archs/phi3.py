"""Phi-3 / Phi-3.5 / Phi-4-mini: HF `model_type` "phi3" -> GGUF arch "phi3".

How the HF checkpoint maps onto what llama.cpp's phi3 reads:
- Fused projections, kept fused: `qkv_proj` -> attn_qkv (rows: all Q heads, then K heads, then V heads) and
  `gate_up_proj` -> ffn_up holding 2 * intermediate_size rows, gate half first, as llama.cpp's SwiGLU splits it.
  No ffn_gate tensor. NEOX-style RoPE: no Q/K row reordering.
- Partial rotary embedding (Phi-4-mini: 0.75): rope.dimension_count = head_dim * partial_rotary_factor.
- LongRoPE (rope type "longrope", formerly "su"): the per-frequency divisors go out as two tensors,
  rope_factors_long / rope_factors_short ((rotary_dims/2,) f32; llama.cpp picks long when the context exceeds
  original_max_position_embeddings, as transformers does by sequence length), the cos/sin scale as
  rope.scaling.attn_factor (the config's attention_factor, or transformers' default
  sqrt(1 + ln(factor) / ln(original_max_position_embeddings))).
- `sliding_window` is written (0 when none) but llama.cpp currently runs phi3 with full attention whatever it
  says: identical up to the window length (2047 tokens in Phi-3-mini-4k), as with llama.cpp's own converter.
"""
from __future__ import annotations

import math

import gguf
import numpy as np

from ggufkit.archs import Architecture, OutputTensor


class Phi3(Architecture):
    model_type = "phi3"
    gguf_arch = gguf.MODEL_ARCH.PHI3
    rope_types = ("default", "longrope", "su")
    fused_projections = True  # qkv_proj and gate_up_proj (Phi-3.5-MoE has separate Q/K/V and experts)

    def __init__(self, config: dict, config_path):
        super().__init__(config, config_path)
        factor = float(self.rope.params.get("partial_rotary_factor", config.get("partial_rotary_factor", 1.0)))
        self.rope_dims = int(self.head_dim * factor)

    # ---- config

    def unhandled_features(self) -> list[str]:
        found = super().unhandled_features()
        if self.config.get("hidden_act", "silu") != "silu":
            found.append(f"hidden_act={self.config['hidden_act']!r} (llama.cpp's phi3 uses silu)")
        if self.n_head * self.head_dim != self.n_embd:
            found.append(f"head_dim {self.head_dim} x {self.n_head} heads != hidden_size {self.n_embd} "
                         "(llama.cpp's phi3 expects them equal)")
        if self.rope.type not in self.rope_types:
            found.append(f"rope type {self.rope.type!r} (supported: {', '.join(self.rope_types)})")
        elif self.is_longrope:
            for key in ("long_factor", "short_factor"):
                if not isinstance(self.rope.params.get(key), list):
                    found.append(f"rope type {self.rope.type!r} without a {key} list")
        return found

    @property
    def is_longrope(self) -> bool:
        return self.rope.type in ("longrope", "su")

    @property
    def original_context(self) -> int:
        return int(self.rope.params.get("original_max_position_embeddings",
                                        self.config.get("original_max_position_embeddings", self.n_ctx)))

    def longrope_attn_factor(self) -> float:
        """The scale on cos/sin, as transformers computes it for LongRoPE."""
        given = self.rope.params.get("attention_factor")
        if given is not None:
            return float(given)
        factor = float(self.rope.params.get("factor") or self.n_ctx / self.original_context)
        return 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(self.original_context))

    # ---- GGUF metadata

    def write_hparams(self, w: gguf.GGUFWriter) -> None:
        super().write_hparams(w)
        w.add_rope_dimension_count(self.rope_dims)
        w.add_rope_freq_base(self.rope.theta)
        w.add_rope_scaling_orig_ctx_len(self.original_context)
        w.add_sliding_window(int(self.config.get("sliding_window") or 0))
        if self.is_longrope:
            w.add_rope_scaling_type(gguf.RopeScalingType.LONGROPE)
            w.add_rope_scaling_attn_factors(self.longrope_attn_factor())

    # ---- tensors

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        e, hd = self.n_embd, self.head_dim
        qkv_rows = (self.n_head + 2 * self.n_head_kv) * hd
        shapes: dict[str, tuple[int, ...]] = {}
        if not self.fused_projections:
            return super().expected_shapes()
        for name, shape in super().expected_shapes().items():
            if name.endswith((".attn_q.weight", ".attn_k.weight", ".ffn_gate.weight")):
                continue
            if name.endswith(".attn_v.weight"):
                shapes[name.replace("attn_v", "attn_qkv")] = (qkv_rows, e)
            elif name.endswith(".ffn_up.weight"):
                shapes[name] = (2 * self.n_ff, e)
            else:
                shapes[name] = shape
        return shapes

    def extra_tensors(self) -> list[OutputTensor]:
        if not self.is_longrope:
            return []
        out = []
        for kind in ("long", "short"):
            factors = np.asarray(self.rope.params[f"{kind}_factor"], dtype=np.float32)  # (rope_dims/2,) f32
            if factors.shape != (self.rope_dims // 2,):
                self.fail(f"rope {kind}_factor has {factors.size} values, {self.rope_dims // 2} expected "
                          f"(half of {self.rope_dims} rotary dimensions)")
            out.append(OutputTensor(f"rope_factors_{kind}.weight", factors.shape,
                                    lambda a, b, f=factors: f.reshape(1, -1), self.config_path,
                                    f"rope_parameters ({kind}_factor)"))
        return out
