"""IBM Granite 4.0-H (granite-4.0-h-micro, -tiny, -small; Mamba-2 / attention hybrids, dense or MoE): HF `model_type`
"granitemoehybrid" -> GGUF arch "granitehybrid".

A hybrid decoder: `layer_types` marks each layer a Mamba-2 mixer ("mamba", saved by transformers 5 as
"linear_attention") or attention ("attention" / "full_attention"); every layer has the same FFN. What llama.cpp's
granitehybrid reads:
- which layers are recurrent: head_count_kv is written per layer, 0 for a Mamba-2 layer;
- Mamba-2 (archs/recurrent.py mamba2_tensor): in_proj (2 * d_inner + 2 * n_groups * d_state + n_heads, hidden)
  -> ssm_in, the depthwise conv (+ bias) -> ssm_conv1d, dt_bias -> ssm_dt.bias, A = -exp(A_log) -> ssm_a, D ->
  ssm_d, the gated norm -> ssm_norm (n_groups, d_inner / n_groups), out_proj -> ssm_out; keys ssm.conv_kernel,
  state_size, group_count, inner_size, time_step_rank (= mamba heads). llama.cpp wants d_inner = 2 * hidden
  (mamba_expand 2), head size d_inner / heads, no in_proj bias and no time-step clamp: others are refused;
- Granite's multipliers: embedding_multiplier -> embedding_scale, attention_multiplier -> attention.scale (the
  softmax scale instead of 1/sqrt(head_dim)), residual_multiplier -> residual_scale (on each block's output),
  logits_scaling -> logit_scale (the logits are divided by it);
- attention: llama's Q/K reordering; rope only with position_embedding_type "rope" (rope.scaling.finetuned is
  llama.cpp's switch for it), none for Granite 4.0-H ("nope");
- FFN: `num_local_experts` experts of `intermediate_size` (router block_sparse_moe.router.layer, softmax over
  the top-k logits; the fused input_linear (n_expert, 2 * n_ff, hidden) is the gate rows then the up rows,
  output_linear (n_expert, hidden, n_ff) the down projections) plus the always-on shared MLP of
  `shared_intermediate_size` (shared_mlp.input_linear split the same way, output_linear) added to them.
A dense hybrid (num_local_experts 0, e.g. granite-4.0-h-micro) has only the shared MLP, which llama.cpp loads as
the plain ffn_{gate,up,down} of feed_forward_length = shared_intermediate_size.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import gguf
import numpy as np

from ggufkit.archs import OutputTensor
from ggufkit.archs.llama import Llama
from ggufkit.archs.moe import ExpertStack, MoE
from ggufkit.archs.recurrent import default_time_step_limit, mamba2_a, mamba2_tensor

MAMBA = ("mamba", "linear_attention")
ATTENTION = ("attention", "full_attention")


@dataclasses.dataclass
class RowSlice:
    """Rows [first, first + rows) of a 2-D source tensor (one half of a fused gate/up matrix)."""
    name: str
    ref: object
    first: int
    rows: int

    @property
    def shape(self) -> tuple[int, int]:
        return (self.rows, self.ref.shape[1])

    @property
    def file(self) -> Path:
        return self.ref.file

    @property
    def dtype(self) -> str:
        return self.ref.dtype

    @property
    def nbytes(self) -> int:
        return self.ref.nbytes * self.rows // self.ref.shape[0]

    def check_dtype(self) -> None:
        self.ref.check_dtype()

    def read_rows(self, start: int, stop: int) -> np.ndarray:
        return self.ref.read_rows(self.first + start, self.first + stop)  # (stop-start, cols) f32


class _Prepared:
    """The checkpoint with the Mamba-2 tensors in llama.cpp's shapes and the fused FFN matrices split, under
    names gguf-py maps (experts as (n_expert, rows, cols) stacks)."""

    def __init__(self, ckpt, n_group: int, dense: bool):
        self.weights_file = ckpt.weights_file
        self.tensors = {}
        for name, ref in ckpt.tensors.items():
            name, ref = mamba2_tensor(name, ref, n_group)
            layer = name.rsplit(".", 3)[0]  # model.layers.N.<module>
            if name.endswith("block_sparse_moe.input_linear.weight") and len(ref.shape) == 3:
                e, rows, cols = ref.shape
                flat = dataclasses.replace(ref, shape=(e * rows, cols))  # (n_expert * 2 n_ff, hidden)
                for part, proj in enumerate(("w1", "w3")):  # gate rows, then up rows, of each expert
                    merged = f"{layer}.block_sparse_moe.experts.{proj}.weight"
                    self.tensors[merged] = ExpertStack(merged, [(flat, x * rows + part * rows // 2)
                                                                for x in range(e)], rows // 2, cols)
            elif name.endswith("block_sparse_moe.output_linear.weight") and len(ref.shape) == 3:
                e, rows, cols = ref.shape
                flat = dataclasses.replace(ref, shape=(e * rows, cols))
                self.tensors[name] = ExpertStack(name, [(flat, x * rows) for x in range(e)], rows, cols)
            elif name.endswith("shared_mlp.input_linear.weight") and len(ref.shape) == 2:
                half = ref.shape[0] // 2
                for part, proj in enumerate(("gate_proj", "up_proj")):
                    merged = f"{layer}.mlp.{'' if dense else 'shared_expert.'}{proj}.weight"
                    self.tensors[merged] = RowSlice(merged, ref, part * half, half)
            elif dense and name.endswith("shared_mlp.output_linear.weight"):
                self.tensors[f"{layer}.mlp.down_proj.weight"] = ref
            else:
                self.tensors[name] = ref


class GraniteMoeHybrid(MoE, Llama):
    model_type = "granitemoehybrid"
    gguf_arch = gguf.MODEL_ARCH.GRANITE_HYBRID
    expert_count_keys = ("num_local_experts",)
    expert_ff_key = None  # intermediate_size is the expert width (llama.cpp's feed_forward_length here)
    writes_expert_ff_length = False

    def __init__(self, config: dict, config_path):
        self.dense = config.get("num_local_experts") == 0
        if self.dense:  # no experts to count: the MoE mixin's reading is skipped, the shared MLP is the FFN
            self.n_expert = self.n_expert_used = 0
            self.n_ff_exp = 0
            Llama.__init__(self, config, config_path)
        else:
            super().__init__(config, config_path)
        self.n_ff_shexp = self.hparam("shared_intermediate_size", int)
        if self.dense:
            self.n_ff = self.n_ff_shexp
        self.d_inner = int(self.hparam("mamba_expand", int, default=2) * self.n_embd)
        self.n_ssm_head = self.hparam("mamba_n_heads", int)
        self.n_group = self.hparam("mamba_n_groups", int, default=1)
        self.d_state = self.hparam("mamba_d_state", int)
        self.d_conv = self.hparam("mamba_d_conv", int, default=4)

    def layer_kinds(self) -> list[str]:
        return ["mamba" if k in MAMBA else "attention" if k in ATTENTION else str(k)
                for k in self.config.get("layer_types") or []]

    def unhandled_features(self) -> list[str]:
        found = super().unhandled_features()
        c = self.config
        kinds = c.get("layer_types") or []
        if len(kinds) != self.n_layer or any(k not in MAMBA + ATTENTION for k in kinds):
            found.append(f"layer_types={kinds!r} (expected mamba / attention per layer)")
        if c.get("mamba_expand", 2) != 2:
            found.append(f"mamba_expand={c['mamba_expand']} (llama.cpp's granitehybrid needs d_inner = 2 * hidden)")
        heads, head = c.get("mamba_n_heads") or 1, c.get("mamba_d_head", "auto")
        if head not in ("auto", None) and head * heads != 2 * self.n_embd:
            found.append(f"mamba_d_head={head} x mamba_n_heads={heads} != d_inner {2 * self.n_embd} (llama.cpp "
                         "takes the head size as d_inner / heads)")
        if (2 * self.n_embd) % (c.get("mamba_n_groups") or 1):
            found.append(f"mamba_n_groups={c['mamba_n_groups']} does not divide d_inner {2 * self.n_embd}")
        if c.get("mamba_proj_bias"):
            found.append("mamba_proj_bias=true (llama.cpp's Mamba-2 in_proj / out_proj have no bias)")
        limit = c.get("time_step_limit")
        if limit is not None and not default_time_step_limit(limit):
            found.append(f"time_step_limit={limit!r} (llama.cpp's Mamba-2 scan does not clamp the time step)")
        if c.get("position_embedding_type") not in (None, "nope", "rope"):
            found.append(f"position_embedding_type={c['position_embedding_type']!r}")
        return found

    # ---- GGUF metadata

    def head_count_kv(self) -> list[int]:
        return [self.n_head_kv if k == "attention" else 0 for k in self.layer_kinds()]

    def write_hparams(self, w: gguf.GGUFWriter) -> None:
        super().write_hparams(w)
        c = self.config
        w.add_rope_scaling_finetuned(c.get("position_embedding_type") == "rope")  # llama.cpp's rope switch
        for key, add in (("embedding_multiplier", w.add_embedding_scale),
                         ("attention_multiplier", w.add_attention_scale),
                         ("residual_multiplier", w.add_residual_scale), ("logits_scaling", w.add_logit_scale)):
            if c.get(key) is not None:
                add(float(c[key]))
        w.add_ssm_conv_kernel(self.d_conv)
        w.add_ssm_state_size(self.d_state)
        w.add_ssm_group_count(self.n_group)
        w.add_ssm_inner_size(self.d_inner)
        w.add_ssm_time_step_rank(self.n_ssm_head)
        if not self.dense:
            w.add_expert_shared_feed_forward_length(self.n_ff_shexp)

    # ---- tensors

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        e, hd, v = self.n_embd, self.head_dim, self.vocab_size
        di, ng, ds, nh = self.d_inner, self.n_group, self.d_state, self.n_ssm_head
        conv_dim = di + 2 * ng * ds
        shapes: dict[str, tuple[int, ...]] = {"token_embd.weight": (v, e)}
        for i, kind in enumerate(self.layer_kinds()):
            b = f"blk.{i}"
            shapes[f"{b}.attn_norm.weight"] = (e,)
            if kind == "mamba":
                shapes |= {f"{b}.ssm_in.weight": (2 * di + 2 * ng * ds + nh, e),
                           f"{b}.ssm_conv1d.weight": (conv_dim, self.d_conv)}
                if self.config.get("mamba_conv_bias", True):
                    shapes[f"{b}.ssm_conv1d.bias"] = (conv_dim,)
                shapes |= {f"{b}.ssm_dt.bias": (nh,), f"{b}.ssm_a": (nh, 1), f"{b}.ssm_d": (nh, 1),
                           f"{b}.ssm_norm.weight": (ng, di // ng), f"{b}.ssm_out.weight": (e, di)}
            else:
                shapes |= {f"{b}.attn_q.weight": (self.n_head * hd, e),
                           f"{b}.attn_k.weight": (self.n_head_kv * hd, e),
                           f"{b}.attn_v.weight": (self.n_head_kv * hd, e),
                           f"{b}.attn_output.weight": (e, self.n_head * hd)}
            s = self.n_ff_shexp
            shapes[f"{b}.ffn_norm.weight"] = (e,)
            if self.dense:
                shapes |= {f"{b}.ffn_gate.weight": (s, e), f"{b}.ffn_up.weight": (s, e), f"{b}.ffn_down.weight": (e, s)}
            else:
                shapes |= self.expert_shapes(b) | {f"{b}.ffn_gate_shexp.weight": (s, e),
                                                   f"{b}.ffn_up_shexp.weight": (s, e),
                                                   f"{b}.ffn_down_shexp.weight": (e, s)}
        shapes["output_norm.weight"] = (e,)
        if not self.tied_embeddings:
            shapes["output.weight"] = (v, e)
        return shapes

    def tensors(self, ckpt) -> list:
        if self.dense:  # no experts to stack
            return Llama.tensors(self, _Prepared(ckpt, self.n_group, True))
        return super().tensors(_Prepared(ckpt, self.n_group, False))

    def transform(self, out: OutputTensor) -> OutputTensor:
        if out.name.endswith(".ssm_a"):
            out.read_rows = mamba2_a(out.read_rows)
            return out
        return super().transform(out)
