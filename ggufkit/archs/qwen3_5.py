"""Qwen 3.5 / 3.6 dense text models: HF `model_type` "qwen3_5_text" -> GGUF arch "qwen35".

A hybrid decoder: `layer_types` marks each layer "linear_attention" (a gated delta-net, a linear-attention
recurrence) or "full_attention" (gated softmax attention, every `full_attention_interval`-th layer); every layer
has the same SwiGLU FFN. What llama.cpp's qwen35 reads, and the transforms on the way (facts from llama.cpp's
loader and converter):
- RMS norms apply (1 + w): input / post-attention / q / k / final norms go out as 1 + w (in f32), except the
  delta-net's gated output norm (linear_attn.norm), used as stored;
- full attention: q_proj gives each head's query and its output gate side by side (2 * head_dim rows per head,
  kept as is); q/k norms; NEOX rope on the first partial_rotary_factor * head_dim dimensions, as multi-section
  rope (rope.dimension_sections, [11, 11, 10, 0] unless the config says; text positions make it plain rope);
- delta-net layers: in_proj_qkv -> attn_qkv, in_proj_z -> attn_gate, in_proj_a/b -> ssm_alpha/ssm_beta,
  conv1d (channels, 1, k) -> ssm_conv1d (channels, k), A_log -> ssm_a = -exp(A_log), dt_bias -> ssm_dt.bias,
  out_proj -> ssm_out; with fewer key heads than value heads every value-head axis (V rows of qkv and conv, z
  rows, a/b rows, A and dt, out_proj columns) is reordered from grouped to tiled (archs/recurrent.py);
- keys: ssm.conv_kernel, ssm.state_size (head dim), ssm.group_count (key heads), ssm.time_step_rank (value heads),
  ssm.inner_size, attention.recurrent_layers (one bool per layer), full_attention_interval.
Multi-token-prediction weights (`mtp.*`, in the released checkpoints) are left out: the GGUF is the plain model,
as llama.cpp's converter writes it with --no-mtp.
"""
from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np

from ggufkit.archs import Architecture, OutputTensor
from ggufkit.archs.recurrent import gather_rows, row_index, squeezed, v_head_order
from ggufkit.archs.wrapper import TextOfMultimodal

LAYER_KINDS = ("linear_attention", "full_attention")
DEFAULT_MROPE_SECTION = [11, 11, 10, 0]  # transformers' Qwen3.5 default, which llama.cpp needs written


class _Prepared:
    """The checkpoint with conv1d weights squeezed to (channels, k), bare parameters named as weights, and the
    multi-token-prediction tensors dropped."""

    def __init__(self, ckpt):
        self.weights_file = ckpt.weights_file
        self.tensors = {}
        for name, ref in ckpt.tensors.items():
            if name.startswith(("mtp.", "model.mtp.")):
                continue
            if name.endswith(".conv1d.weight") and len(ref.shape) == 3 and ref.shape[1] == 1:
                ref = squeezed(ref, (ref.shape[0], ref.shape[2]))
            elif name.endswith(".dt_bias"):
                name = name[: -len(".dt_bias")] + ".dt_proj.bias"
            self.tensors[name] = ref


class Qwen35Text(Architecture):
    model_type = "qwen3_5_text"
    gguf_arch = gguf.MODEL_ARCH.QWEN35

    def __init__(self, config: dict, config_path):
        self.config, self.config_path = config, Path(config_path)  # for hparam() before the base __init__
        self.n_k_heads = self.hparam("linear_num_key_heads", int)
        self.n_v_heads = self.hparam("linear_num_value_heads", int)
        self.k_head_dim = self.hparam("linear_key_head_dim", int)
        self.v_head_dim = self.hparam("linear_value_head_dim", int)
        self.conv_kernel = self.hparam("linear_conv_kernel_dim", int)
        if self.n_v_heads % self.n_k_heads:
            self.fail(f"linear_num_value_heads {self.n_v_heads} is not a multiple of linear_num_key_heads "
                      f"{self.n_k_heads}")
        super().__init__(config, config_path)

    def layer_kinds(self) -> list[str]:
        kinds = self.config.get("layer_types")
        if kinds is None:
            interval = int(self.config.get("full_attention_interval", 4))
            return ["full_attention" if (i + 1) % interval == 0 else "linear_attention" for i in range(self.n_layer)]
        return list(kinds)

    def unhandled_features(self) -> list[str]:
        found = super().unhandled_features()
        kinds = self.layer_kinds()
        if len(kinds) != self.n_layer or set(kinds) - set(LAYER_KINDS):
            found.append(f"layer_types={kinds!r} (expected one of {', '.join(LAYER_KINDS)} per layer)")
        if self.config.get("hidden_act", "silu") != "silu":
            found.append(f"hidden_act={self.config['hidden_act']!r} (llama.cpp's qwen35 uses silu)")
        if self.config.get("attention_bias"):
            found.append("attention_bias=true (llama.cpp's qwen35 has no attention biases)")
        if self.rope.type != "default":
            found.append(f"rope type {self.rope.type!r} (llama.cpp's qwen35 reads no rope scaling)")
        if self.v_head_dim != self.k_head_dim:
            found.append(f"linear_value_head_dim {self.v_head_dim} != linear_key_head_dim {self.k_head_dim} "
                         "(llama.cpp's qwen35 takes both from ssm.state_size)")
        return found

    @property
    def rope_dims(self) -> int:
        factor = float(self.rope.params.get("partial_rotary_factor",
                                            self.config.get("partial_rotary_factor", 0.25)))
        return int(self.head_dim * factor)

    # ---- GGUF metadata

    def write_hparams(self, w: gguf.GGUFWriter) -> None:
        super().write_hparams(w)
        w.add_rope_freq_base(self.rope.theta)
        w.add_ssm_conv_kernel(self.conv_kernel)
        w.add_ssm_state_size(self.k_head_dim)
        w.add_ssm_group_count(self.n_k_heads)
        w.add_ssm_time_step_rank(self.n_v_heads)
        w.add_ssm_inner_size(self.v_head_dim * self.n_v_heads)
        # {arch}.attention.recurrent_layers: the gguf-py pinned here has no add_ method for it yet
        w.add_array(f"{self.arch_name}.attention.recurrent_layers",
                    [k == "linear_attention" for k in self.layer_kinds()])
        w.add_full_attention_interval(int(self.config.get("full_attention_interval", 4)))
        w.add_rope_dimension_count(self.rope_dims)
        section = list(self.rope.params.get("mrope_section") or DEFAULT_MROPE_SECTION)
        w.add_rope_dimension_sections((section + [0] * 4)[:4])

    # ---- tensors

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        e, hd, f, v = self.n_embd, self.head_dim, self.n_ff, self.vocab_size
        key_dim, value_dim = self.k_head_dim * self.n_k_heads, self.v_head_dim * self.n_v_heads
        shapes: dict[str, tuple[int, ...]] = {"token_embd.weight": (v, e)}
        for i, kind in enumerate(self.layer_kinds()):
            b = f"blk.{i}"
            shapes[f"{b}.attn_norm.weight"] = (e,)
            if kind == "full_attention":
                shapes |= {f"{b}.attn_q.weight": (2 * self.n_head * hd, e),
                           f"{b}.attn_k.weight": (self.n_head_kv * hd, e),
                           f"{b}.attn_v.weight": (self.n_head_kv * hd, e),
                           f"{b}.attn_output.weight": (e, self.n_head * hd),
                           f"{b}.attn_q_norm.weight": (hd,), f"{b}.attn_k_norm.weight": (hd,)}
            else:
                shapes |= {f"{b}.attn_qkv.weight": (2 * key_dim + value_dim, e),
                           f"{b}.attn_gate.weight": (value_dim, e),
                           f"{b}.ssm_conv1d.weight": (2 * key_dim + value_dim, self.conv_kernel),
                           f"{b}.ssm_dt.bias": (self.n_v_heads,), f"{b}.ssm_a": (self.n_v_heads,),
                           f"{b}.ssm_beta.weight": (self.n_v_heads, e), f"{b}.ssm_alpha.weight": (self.n_v_heads, e),
                           f"{b}.ssm_norm.weight": (self.v_head_dim,), f"{b}.ssm_out.weight": (e, value_dim)}
            shapes |= {f"{b}.post_attention_norm.weight": (e,), f"{b}.ffn_gate.weight": (f, e),
                       f"{b}.ffn_up.weight": (f, e), f"{b}.ffn_down.weight": (e, f)}
        shapes["output_norm.weight"] = (e,)
        if not self.tied_embeddings:
            shapes["output.weight"] = (v, e)
        return shapes

    def tensors(self, ckpt) -> list[OutputTensor]:
        return super().tensors(_Prepared(ckpt))

    def transform(self, out: OutputTensor) -> OutputTensor:
        name = out.name
        if name.endswith("norm.weight") and not name.endswith(".ssm_norm.weight"):
            source = out.read_rows
            out.read_rows = lambda a, b: source(a, b) + np.float32(1.0)  # (1, n) f32: HF applies (1 + w)
            return out
        if name.endswith(".ssm_a"):
            source = out.read_rows
            out.read_rows = lambda a, b: -np.exp(source(a, b))  # (1, n_v_heads) f32: A = -exp(A_log)
        if self.n_k_heads == self.n_v_heads:
            return out
        return self.tiled_value_heads(out)

    def tiled_value_heads(self, out: OutputTensor) -> OutputTensor:
        """Reorder the value-head axis of a delta-net tensor from grouped to tiled (see archs/recurrent.py)."""
        order = v_head_order(self.n_k_heads, self.n_v_heads)
        kind = out.name.rsplit(".", 2)[-2] if out.name.endswith((".weight", ".bias")) else out.name.rsplit(".")[-1]
        qk_rows = 2 * self.k_head_dim * self.n_k_heads
        if kind in ("attn_qkv", "ssm_conv1d"):  # only the V rows, after the q and k rows
            idx = row_index(out.rows, qk_rows, self.v_head_dim, order)
        elif kind == "attn_gate":
            idx = row_index(out.rows, 0, self.v_head_dim, order)
        elif kind in ("ssm_alpha", "ssm_beta"):
            idx = row_index(out.rows, 0, 1, order)
        elif kind in ("ssm_a", "ssm_dt"):  # (n_v_heads,) vectors: one row, reorder the columns
            source = out.read_rows
            out.read_rows = lambda a, b: np.ascontiguousarray(source(a, b)[:, order])
            return out
        elif kind == "ssm_out":  # columns are the value heads
            cols = row_index(out.cols, 0, self.v_head_dim, order)
            source = out.read_rows
            out.read_rows = lambda a, b: np.ascontiguousarray(source(a, b)[:, cols])
            return out
        else:
            return out
        out.read_rows = gather_rows(out.read_rows, idx)
        return out


class Qwen35(TextOfMultimodal, Qwen35Text):
    """Qwen 3.5 multimodal (Qwen3_5ForConditionalGeneration), converted to its text model"""
    model_type = "qwen3_5"
    text_config_class = "Qwen3_5TextConfig"
