"""Llama (Llama 2, Llama 3.x, SmolLM, TinyLlama, ...): HF `model_type` "llama" -> GGUF arch "llama".

What differs from the base decoder:
- Q and K rows are reordered per head: HF keeps the two rotary halves of a head apart (rows [0, d/2) and
  [d/2, d)), llama.cpp's rope wants them interleaved (row pairs). Output row h*d + 2i + j comes from source row
  h*d + j*d/2 + i (i < d/2, j in {0, 1}).
- RoPE: freq_base, dimension count, linear / YaRN scaling keys, and Llama-3 scaling as a `rope_freqs` tensor of
  per-frequency divisors (llama.cpp has no key for it).
"""
from __future__ import annotations

import math

import gguf
import numpy as np

from ggufkit.archs import Architecture, OutputTensor


class Llama(Architecture):
    model_type = "llama"
    gguf_arch = gguf.MODEL_ARCH.LLAMA
    rope_types = ("default", "linear", "yarn", "llama3")
    refused_bias_flags = ("attention_bias", "mlp_bias")  # config switches for biases llama's graph has no use for
    hidden_act = "silu"  # the FFN activation llama.cpp's graph computes

    def unhandled_features(self) -> list[str]:
        found = super().unhandled_features()
        if self.config.get("hidden_act", self.hidden_act) != self.hidden_act:
            found.append(f"hidden_act={self.config['hidden_act']!r} (llama.cpp's {self.arch_name} uses "
                         f"{self.hidden_act})")
        for key in self.refused_bias_flags:
            if self.config.get(key):
                found.append(f"{key}=true")
        if self.rope.type not in self.rope_types:
            found.append(f"rope type {self.rope.type!r} (supported: {', '.join(self.rope_types)})")
        elif self.rope.type != "default" and "factor" not in self.rope.params:
            found.append(f"rope type {self.rope.type!r} without a factor")
        if self.rope.type == "yarn" and "original_max_position_embeddings" not in self.rope.params:
            found.append("rope type 'yarn' without original_max_position_embeddings")
        return found

    def write_hparams(self, w: gguf.GGUFWriter) -> None:
        super().write_hparams(w)
        w.add_rope_dimension_count(self.rope_dimension_count())
        w.add_rope_freq_base(self.rope_freq_base())
        p = self.rope.params
        if self.rope.type == "linear":
            w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
            w.add_rope_scaling_factor(float(p["factor"]))
        elif self.rope.type == "yarn":
            w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
            w.add_rope_scaling_factor(float(p["factor"]))
            w.add_rope_scaling_orig_ctx_len(int(p["original_max_position_embeddings"]))
            optional = {"extrapolation_factor": w.add_rope_scaling_yarn_ext_factor,
                        "beta_fast": w.add_rope_scaling_yarn_beta_fast,
                        "beta_slow": w.add_rope_scaling_yarn_beta_slow}
            for key, add in optional.items():
                if p.get(key) is not None:
                    add(float(p[key]))
            if p.get("attention_factor") is not None:
                w.add_rope_scaling_attn_factors(self.yarn_attn_factor())

    def yarn_attn_factor(self) -> float:
        """transformers scales YaRN's cos/sin by the config's attention_factor as given. llama.cpp (this version)
        ignores yarn_attn_factor under YaRN: its rope always applies 1 + 0.1 ln(factor) and multiplies that by
        rope.scaling.attn_factor - so that key carries the ratio. (llama.cpp's own converter writes
        yarn_attn_factor, which is lost: a non-default attention_factor runs wrong from its files.)"""
        factor = float(self.rope.params["factor"])
        default = 1.0 + 0.1 * math.log(factor) if factor > 1.0 else 1.0
        return float(self.rope.params["attention_factor"]) / default

    def rope_freq_base(self) -> float:
        """rope.freq_base: the config's theta (families that stretch the base override)."""
        return self.rope.theta

    def rope_dimension_count(self) -> int:
        """How many dimensions of each head rope rotates (all of them; partial-rotary families override)."""
        return self.head_dim

    # ---- tensors

    def transform(self, out: OutputTensor) -> OutputTensor:
        if out.name.endswith((".attn_q.weight", ".attn_k.weight")):
            return self.rope_interleaved(out)
        return out

    def rope_interleaved(self, out: OutputTensor) -> OutputTensor:
        """Reorder each head's rows from HF's split halves to llama.cpp's interleaved pairs, head by head, so
        row blocks stay streamable (a block is whole heads: row_align = head_dim)."""
        d = self.head_dim
        source = out.read_rows

        def permute(x: np.ndarray) -> np.ndarray:  # (heads*d, any) -> same shape, rows of each head reordered
            heads = x.shape[0] // d
            return np.ascontiguousarray(x.reshape(heads, 2, d // 2, -1).swapaxes(1, 2)).reshape(x.shape)

        def read_rows(start: int, stop: int) -> np.ndarray:
            return permute(source(start, stop))  # (heads*d, cols) f32

        out.read_rows, out.row_align = read_rows, d
        if out.read_blocks is not None:  # a pre-quantized source's blocks: the same rows, moved whole
            blocks = out.read_blocks
            out.read_blocks = lambda start, stop: permute(blocks(start, stop))  # (heads*d, row_bytes) u8
        return out

    def extra_tensors(self) -> list[OutputTensor]:
        if self.rope.type != "llama3":
            return []
        factors = self.llama3_rope_factors()  # (head_dim/2,) f32
        return [OutputTensor("rope_freqs.weight", factors.shape, lambda a, b: factors.reshape(1, -1),
                             self.config_path, "rope_parameters (llama3)")]

    def llama3_rope_factors(self) -> np.ndarray:
        """Llama-3 RoPE scaling as llama.cpp takes it: a divisor per rotary frequency. Long wavelengths (beyond
        the original context / low_freq_factor) are divided by `factor`, short ones (below original context /
        high_freq_factor) kept, and the band between blends the two smoothly."""
        p, d = self.rope.params, self.head_dim
        factor = float(p["factor"])
        low, high = float(p.get("low_freq_factor", 1.0)), float(p.get("high_freq_factor", 4.0))
        old_ctx = float(p.get("original_max_position_embeddings",
                              self.config.get("original_max_position_embeddings", 8192)))
        inv_freq = 1.0 / (np.float32(self.rope.theta) ** (np.arange(0, d, 2, dtype=np.float32) / np.float32(d)))
        result = []
        for f in inv_freq.astype(np.float32):
            wavelen = 2 * math.pi / float(f)
            if wavelen < old_ctx / high:
                result.append(1.0)
            elif wavelen > old_ctx / low:
                result.append(factor)
            else:
                smooth = (old_ctx / wavelen - low) / (high - low)
                result.append(1.0 / ((1 - smooth) / factor + smooth))
        return np.array(result, dtype=np.float32)
