"""Gemma 2: HF `model_type` "gemma2" -> GGUF arch "gemma2".

What llama.cpp's gemma2 expects, and how the HF checkpoint maps onto it:
- RMS norms are stored by HF as w and applied as x * (1 + w); llama.cpp applies x * w, so every norm weight goes
  out as 1 + w (computed in f32). Four norms per block: attn_norm (input), post_attention_norm, ffn_norm
  (pre-feedforward), post_ffw_norm.
- Embeddings are tied (llama.cpp always reads the output projection from token_embd) and scaled by
  sqrt(hidden_size) inside llama.cpp's graph: the weights go out unscaled.
- Soft-capping of attention logits and final logits (GGUF keys); llama.cpp always applies both, so a config
  without either values is refused rather than silently capped at llama.cpp's defaults.
- Sliding-window attention on some layers: the window size and the per-layer pattern (written as one bool per
  layer, from `layer_types`, or HF's default: every other layer from the first).
- Query scaling: llama.cpp has no key for query_pre_attn_scalar; it uses 1/sqrt(head_dim), or
  1/sqrt(hidden/heads) for the 46-layer (27B) model. A config asking for anything else is refused.
- GELU (tanh approximation) feed-forward; NEOX-style RoPE, so Q/K rows go out unchanged.
"""
from __future__ import annotations

import gguf
import numpy as np

from ggufkit.archs import Architecture, OutputTensor

TANH_GELUS = ("gelu_pytorch_tanh", "gelu_new", "gelu_fast")  # the tanh approximation llama.cpp computes


class Gemma2(Architecture):
    model_type = "gemma2"
    gguf_arch = gguf.MODEL_ARCH.GEMMA2
    rope_types: tuple[str, ...] = ("default",)
    default_swa_period = 2  # HF and llama.cpp default: layer i is sliding unless (i + 1) % period == 0
    needs_attn_softcap = True  # llama.cpp's gemma2 caps attention logits unconditionally
    text_causal_bidirectional: tuple[str, ...] = ()  # use_bidirectional_attention values that keep text causal

    def __init__(self, config: dict, config_path):
        # Gemma's configs default to tied embeddings (the base assumes untied when the key is absent)
        super().__init__({"tie_word_embeddings": True, **config}, config_path)

    # ---- config

    def unhandled_features(self) -> list[str]:
        found = super().unhandled_features()
        act = self.config.get("hidden_activation") or self.config.get("hidden_act") or "gelu_pytorch_tanh"
        if act not in TANH_GELUS:
            found.append(f"hidden_activation={act!r} (llama.cpp's {self.arch_name} uses tanh-approximated gelu)")
        if self.config.get("attention_bias"):
            found.append("attention_bias=true")
        bidirectional = self.config.get("use_bidirectional_attention")
        if bidirectional and bidirectional not in self.text_causal_bidirectional:
            found.append(f"use_bidirectional_attention={bidirectional!r} (an embedding model, not a causal LM)")
        if self.rope.type not in self.rope_types:
            found.append(f"rope type {self.rope.type!r} (supported: {', '.join(self.rope_types)})")
        if self.needs_attn_softcap:
            for key in ("attn_logit_softcapping", "final_logit_softcapping"):
                if not self.config.get(key):
                    found.append(f"{key}={self.config.get(key)!r} (llama.cpp's {self.arch_name} always "
                                 "soft-caps; it needs a value)")
        elif self.config.get("attn_logit_softcapping"):
            found.append(f"attn_logit_softcapping={self.config['attn_logit_softcapping']} (llama.cpp's "
                         f"{self.arch_name} does not soft-cap attention logits)")
        scalar = self.config.get("query_pre_attn_scalar", self.head_dim)
        if scalar != self.llama_cpp_query_scalar():
            found.append(f"query_pre_attn_scalar={scalar} (llama.cpp's {self.arch_name} scales queries by "
                         f"1/sqrt({self.llama_cpp_query_scalar()}) for this shape)")
        if not self.tied_embeddings and not self.untied_output_supported():
            found.append(f"tie_word_embeddings=false (llama.cpp's {self.arch_name} reads the output projection "
                         "from token_embd)")
        layer_types = self.config.get("layer_types")
        if layer_types is not None and (len(layer_types) != self.n_layer or
                                        set(layer_types) - {"sliding_attention", "full_attention"}):
            found.append(f"layer_types={layer_types!r} (expected one of sliding_attention / full_attention "
                         "per layer)")
        return found

    def llama_cpp_query_scalar(self) -> int:
        """What llama.cpp divides queries by the square root of (it derives it from the shape)."""
        return self.n_embd // self.n_head if self.n_layer == 46 else self.head_dim

    def untied_output_supported(self) -> bool:
        return False

    def sliding_layers(self) -> list[bool]:
        """One flag per layer: True where attention is sliding-window."""
        layer_types = self.config.get("layer_types")
        if layer_types is not None:
            return [t == "sliding_attention" for t in layer_types]
        period = int(self.config.get("sliding_window_pattern") or self.default_swa_period)
        return [(i + 1) % period != 0 for i in range(self.n_layer)]

    # ---- GGUF metadata

    def write_hparams(self, w: gguf.GGUFWriter) -> None:
        super().write_hparams(w)
        w.add_rope_dimension_count(self.head_dim)
        w.add_rope_freq_base(self.rope.theta)
        if self.config.get("attn_logit_softcapping"):
            w.add_attn_logit_softcapping(float(self.config["attn_logit_softcapping"]))
        if self.config.get("final_logit_softcapping"):
            w.add_final_logit_softcapping(float(self.config["final_logit_softcapping"]))
        self.write_sliding_window(w)

    def write_sliding_window(self, w: gguf.GGUFWriter) -> None:
        w.add_sliding_window(self.hparam("sliding_window", int))
        w.add_sliding_window_pattern(self.sliding_layers())

    # ---- tensors

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        e = self.n_embd
        shapes: dict[str, tuple[int, ...]] = {}
        for name, shape in super().expected_shapes().items():
            shapes[name] = shape
            if name.endswith(".attn_output.weight"):
                shapes[name.replace("attn_output", "post_attention_norm")] = (e,)
            elif name.endswith(".ffn_down.weight"):
                shapes[name.replace("ffn_down", "post_ffw_norm")] = (e,)
        return shapes

    def skip_tensor(self, hf_name: str, gguf_name: str | None) -> bool:
        # gguf-py maps no lm_head for gemma2 (tied by construction); some exports still save the tied copy
        return super().skip_tensor(hf_name, gguf_name) or (self.tied_embeddings and hf_name == "lm_head.weight")

    def transform(self, out: OutputTensor) -> OutputTensor:
        if out.name.endswith("norm.weight"):
            source = out.read_rows

            def read_rows(start: int, stop: int) -> np.ndarray:
                return source(start, stop) + np.float32(1.0)  # (1, n) f32: HF applies x * (1 + w)

            out.read_rows = read_rows
        return out
