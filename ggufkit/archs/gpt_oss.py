"""gpt-oss (gpt-oss-20b, gpt-oss-120b) in bf16/f16/f32: HF `model_type` "gpt_oss" -> GGUF arch "gpt-oss".

A mixture-of-experts decoder (archs/moe.py) with these parts, as llama.cpp's gpt-oss graph reads them:
- attention with biases on q/k/v/o, NEOX rope with YaRN scaling (Q/K rows unchanged), and a learned
  "attention sink" logit per head (`self_attn.sinks` -> attn_sinks, (n_head,));
- alternating sliding-window / full layers (`layer_types`, written as one bool per layer) with one window size;
- the FFN norm is called post_attention_norm; the router has a bias (ffn_gate_inp.bias) and routes by softmax
  over the top-k logits;
- experts with biases, stored fused and input-major: `experts.gate_up_proj` (n_expert, n_embd, 2 * n_ff) with
  gate and up in alternating columns (gate first) and `gate_up_proj_bias` (n_expert, 2 * n_ff) alike;
  `experts.down_proj` (n_expert, n_ff, n_embd). They become ffn_{gate,up,down}_exps (+ .bias) in llama.cpp's
  (n_expert, out, in) order: each expert is transposed, one expert in memory at a time;
- the clamped SwiGLU (alpha 1.702, limit 7.0): llama.cpp hard-codes both, so other values are refused.
The released checkpoints store the experts as MXFP4 blocks (`quantization_config` mxfp4): sources/mxfp4.py reads
them, already stacked in llama.cpp's order (lossless into GGUF's MXFP4 under --scheme source).
"""
from __future__ import annotations

import gguf

from ggufkit.archs import RenamedCheckpoint
from ggufkit.archs.moe import MoE
from ggufkit.archs.qwen2 import Qwen2

LLAMA_CPP_SWIGLU = {"swiglu_alpha": 1.702, "swiglu_limit": 7.0}  # constants of llama.cpp's swiglu_oai


def _sinks_named(name: str, ref):
    """`self_attn.sinks` (a bare parameter) seen as `self_attn.sinks.weight`."""
    return (f"{name}.weight" if name.endswith(".sinks") else name), ref


class GptOss(MoE, Qwen2):
    model_type = "gpt_oss"
    gguf_arch = gguf.MODEL_ARCH.GPT_OSS
    square_attention = False
    expert_ff_key = None  # intermediate_size is the expert width
    fused_layout = "interleaved_transposed"

    def __init__(self, config: dict, config_path):
        super().__init__({"attention_bias": True, **config}, config_path)

    def unhandled_features(self) -> list[str]:
        # q/k/v/o biases are part of this family (the llama checks refuse attention_bias for others)
        found = [f for f in super().unhandled_features() if not f.startswith("attention_bias")]
        if not self.config.get("attention_bias", True):
            found.append("attention_bias=false (llama.cpp's gpt-oss needs the attention biases)")
        for key, value in LLAMA_CPP_SWIGLU.items():
            if key in self.config and abs(float(self.config[key]) - value) > 1e-6:
                found.append(f"{key}={self.config[key]} (llama.cpp's gpt-oss fixes it at {value})")
        layer_types = self.config.get("layer_types")
        if layer_types is not None and (len(layer_types) != self.n_layer or
                                        set(layer_types) - {"sliding_attention", "full_attention"}):
            found.append(f"layer_types={layer_types!r} (expected sliding_attention / full_attention per layer)")
        if any(self.sliding_layers()) and not self.config.get("sliding_window"):
            found.append("sliding layers without a sliding_window size")
        if self.tied_embeddings:
            found.append("tie_word_embeddings=true (llama.cpp's gpt-oss needs its own output.weight)")
        return found

    def sliding_layers(self) -> list[bool]:
        """HF's layer_types, or its default: even layers sliding, odd layers full."""
        layer_types = self.config.get("layer_types")
        if layer_types is None:
            return [i % 2 == 0 for i in range(self.n_layer)]
        return [t == "sliding_attention" for t in layer_types]

    def write_hparams(self, w: gguf.GGUFWriter) -> None:
        super().write_hparams(w)
        w.add_sliding_window(self.hparam("sliding_window", int, default=0))
        w.add_sliding_window_pattern(self.sliding_layers())

    def expert_shapes(self, block: str) -> dict[str, tuple[int, ...]]:
        shapes = super().expert_shapes(block)
        n, f, e = self.n_expert, self.n_ff_exp, self.n_embd
        return shapes | {f"{block}.ffn_gate_inp.bias": (n,), f"{block}.ffn_gate_exps.bias": (n, f),
                         f"{block}.ffn_up_exps.bias": (n, f), f"{block}.ffn_down_exps.bias": (n, e)}

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        shapes: dict[str, tuple[int, ...]] = {}
        for name, shape in super().expected_shapes().items():
            if name.endswith(".ffn_norm.weight"):
                name = name.replace(".ffn_norm.", ".post_attention_norm.")
            shapes[name] = shape
            if name.endswith(".attn_output.weight"):
                block = name.rsplit(".", 2)[0]
                shapes[f"{block}.attn_output.bias"] = (self.n_embd,)
                shapes[f"{block}.attn_sinks.weight"] = (self.n_head,)
        return shapes

    def tensors(self, ckpt) -> list:
        return super().tensors(RenamedCheckpoint(ckpt, _sinks_named))
