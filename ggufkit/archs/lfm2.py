"""LFM2 / LFM2.5 (Liquid AI, 350M-2.6B): HF `model_type` "lfm2" -> GGUF arch "lfm2".

A hybrid decoder: `layer_types` says per layer whether it is a gated short-convolution block ("conv") or
grouped-query attention ("full_attention"); every layer has the same SwiGLU FFN. How llama.cpp's lfm2 reads it:
- which layers are convolutions: head_count_kv is written as one value per layer, 0 for a conv layer;
- a conv layer: in_proj (3 * hidden, hidden) giving B, C and x; a depthwise causal conv over `conv_L_cache` taps,
  stored (hidden, 1, L) by PyTorch and (hidden, L) by llama.cpp (archs/recurrent.py); out_proj (hidden, hidden);
  shortconv.l_cache = conv_L_cache;
- attention layers: q/k RMS norms per head (q_layernorm / k_layernorm), NEOX rope (Q/K rows unchanged);
- norms: operator_norm -> attn_norm, ffn_norm, and the final `embedding_norm` -> token_embd_norm (llama.cpp's
  name for LFM2's output norm); eps from `norm_eps`;
- the FFN width: `block_ff_dim` / `intermediate_size`, shrunk to 2/3, scaled by block_ffn_dim_multiplier and
  rounded up to block_multiple_of when block_auto_adjust_ff_dim is set, as transformers sizes w1/w2/w3.
llama.cpp's shortconv has no bias: `conv_bias: true` is refused.
"""
from __future__ import annotations

import gguf

from ggufkit.archs import Architecture, OutputTensor
from ggufkit.archs.recurrent import squeezed

LAYER_KINDS = ("conv", "full_attention")


class _ConvSqueezed:
    """The checkpoint with each conv.conv weight seen as llama.cpp's (channels, taps) matrix."""

    def __init__(self, ckpt):
        self.weights_file = ckpt.weights_file
        self.tensors = {k: (squeezed(v, (v.shape[0], v.shape[2])) if k.endswith("conv.conv.weight")
                            and len(v.shape) == 3 and v.shape[1] == 1 else v) for k, v in ckpt.tensors.items()}


class Lfm2(Architecture):
    model_type = "lfm2"
    gguf_arch = gguf.MODEL_ARCH.LFM2

    def __init__(self, config: dict, config_path):
        config = {"rms_norm_eps": config.get("norm_eps", 1e-5), "tie_word_embeddings": True, **config}
        super().__init__(config, config_path)
        self.conv_kernel = self.hparam("conv_L_cache", int)
        self.n_ff = self.ffn_width()

    def layer_kinds(self) -> list[str]:
        kinds = self.config.get("layer_types")
        if kinds is None and isinstance(self.config.get("full_attn_idxs"), list):  # older configs
            return ["full_attention" if i in self.config["full_attn_idxs"] else "conv" for i in range(self.n_layer)]
        return list(kinds or [])

    def ffn_width(self) -> int:
        ff = self.hparam("block_ff_dim", int, default=None) or self.n_ff
        if self.config.get("block_auto_adjust_ff_dim"):
            ff = int(2 * ff / 3)
            if self.config.get("block_ffn_dim_multiplier") is not None:
                ff = int(float(self.config["block_ffn_dim_multiplier"]) * ff)
            multiple = self.hparam("block_multiple_of", int, default=256)
            ff = multiple * ((ff + multiple - 1) // multiple)
        return ff

    def unhandled_features(self) -> list[str]:
        found = super().unhandled_features()
        kinds = self.layer_kinds()
        if len(kinds) != self.n_layer or set(kinds) - set(LAYER_KINDS):
            found.append(f"layer_types={kinds!r} (expected one of {', '.join(LAYER_KINDS)} per layer)")
        if self.config.get("conv_bias"):
            found.append("conv_bias=true (llama.cpp's lfm2 short convolution has no bias)")
        if self.rope.type != "default":
            found.append(f"rope type {self.rope.type!r} (llama.cpp's lfm2 reads no rope scaling here)")
        if self.n_head * self.head_dim != self.n_embd:
            found.append(f"head_dim {self.head_dim} x {self.n_head} heads != hidden_size {self.n_embd} "
                         "(llama.cpp's lfm2 expects them equal)")
        return found

    # ---- GGUF metadata

    def head_count_kv(self) -> list[int]:
        return [self.n_head_kv if k == "full_attention" else 0 for k in self.layer_kinds()]

    def write_hparams(self, w: gguf.GGUFWriter) -> None:
        self.write_sizes(w)
        w.add_rope_freq_base(self.rope.theta)
        w.add_rope_dimension_count(self.head_dim)
        w.add_shortconv_l_cache(self.conv_kernel)

    # ---- tensors

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        e, hd, f = self.n_embd, self.head_dim, self.n_ff
        shapes: dict[str, tuple[int, ...]] = {"token_embd.weight": (self.vocab_size, e)}
        for i, kind in enumerate(self.layer_kinds()):
            b = f"blk.{i}"
            shapes[f"{b}.attn_norm.weight"] = (e,)
            if kind == "conv":
                shapes |= {f"{b}.shortconv.conv.weight": (e, self.conv_kernel),
                           f"{b}.shortconv.in_proj.weight": (3 * e, e),
                           f"{b}.shortconv.out_proj.weight": (e, e)}
            else:
                shapes |= {f"{b}.attn_q.weight": (self.n_head * hd, e),
                           f"{b}.attn_k.weight": (self.n_head_kv * hd, e),
                           f"{b}.attn_v.weight": (self.n_head_kv * hd, e),
                           f"{b}.attn_output.weight": (e, self.n_head * hd),
                           f"{b}.attn_q_norm.weight": (hd,), f"{b}.attn_k_norm.weight": (hd,)}
            shapes |= {f"{b}.ffn_norm.weight": (e,), f"{b}.ffn_gate.weight": (f, e), f"{b}.ffn_up.weight": (f, e),
                       f"{b}.ffn_down.weight": (e, f)}
        shapes["token_embd_norm.weight"] = (e,)
        if not self.tied_embeddings:
            shapes["output.weight"] = (self.vocab_size, e)
        return shapes

    def tensors(self, ckpt) -> list[OutputTensor]:
        return super().tensors(_ConvSqueezed(ckpt))
