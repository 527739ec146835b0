"""DeepSeek-V3 / R1 and their relatives (Moonlight, small MLA models): HF `model_type`
"deepseek_v3" -> GGUF arch "deepseek2".

Multi-head latent attention (MLA), as llama.cpp's deepseek2 runs it (absorbed form, one shared latent KV "head"):
- queries: `q_a_proj` (q_lora_rank, hidden) -> attn_q_a, its RMS norm `q_a_layernorm` -> attn_q_a_norm, and
  `q_b_proj` (n_head * (nope + rope), q_lora_rank) -> attn_q_b; without q_lora_rank a plain `q_proj` -> attn_q
  (q_lora_rank is then written as 0, which llama.cpp reads as "no query compression");
- keys/values: `kv_a_proj_with_mqa` (kv_lora_rank + rope, hidden) -> attn_kv_a_mqa (the compressed latent and the
  shared rotary key), `kv_a_layernorm` -> attn_kv_a_norm, and `kv_b_proj` (n_head * (nope + v), kv_lora_rank),
  whose per-head blocks of nope key rows then v value rows are split:
      attn_k_b  (n_head, kv_lora_rank, nope)  head h's key rows, transposed (the absorbed query side)
      attn_v_b  (n_head, v, kv_lora_rank)     head h's value rows as they are
- keys: kv_lora_rank, q_lora_rank, key_length kv_lora_rank + rope / value_length kv_lora_rank (the latent
  cache), key_length_mla nope + rope / value_length_mla v (the per-head sizes), rope dimension count = rope,
  head_count_kv 1;
- rope: llama.cpp's NORM rope on the last `qk_rope_head_dim` dims of each head. The checkpoints keep those rows
  in rotary pairs (`rope_interleave: true`, transformers de-interleaves at run time), which is the layout
  llama.cpp wants, so no row moves; with `rope_interleave: false` they are in two halves, and those rows of
  attn_q / attn_q_b (per head) and attn_kv_a_mqa (its last rows) are reordered to pairs, as llama's Q/K rows. YaRN: llama.cpp scales the attention by mscale^2 with mscale from
  `mscale_all_dim` (rope.scaling.yarn_log_mul, stored as 0.1 * mscale_all_dim as llama.cpp's loader expects);
  configs whose mscale differs from mscale_all_dim, or with an explicit attention_factor, are refused.
The FFN (DeepseekMoE below, shared with glm4_moe): the first `first_k_dense_replace` layers dense, then routed
experts with sigmoid scores, the `e_score_correction_bias` (-> exp_probs_b.bias) added for the choice only,
expert groups (`n_group`, the best `topk_group` groups by the sum of their two best scores; expert_group_count /
expert_group_used_count), top-k renormalised when `norm_topk_prob`, scaled by `routed_scaling_factor`, plus
`n_shared_experts` shared experts fused into one SwiGLU. Multi-token-prediction layers (model.layers.N for N >=
num_hidden_layers) are left out, as llama.cpp's converter does.
"""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import ClassVar

import gguf
import numpy as np

from ggufkit.archs import Architecture, OutputTensor
from ggufkit.archs.moe import MoE


class _Prepared:
    """The checkpoint without multi-token-prediction layers, the routing bias named as a bias, and (for MLA)
    each kv_b_proj split into its k_b / v_b parts."""

    def __init__(self, ckpt, n_layer: int, mla: tuple[int, int, int] | None = None):
        self.weights_file = ckpt.weights_file
        self.tensors = {}
        for name, ref in ckpt.tensors.items():
            m = re.match(r"model\.layers\.(\d+)\.", name)
            if m and int(m[1]) >= n_layer:
                continue
            if name.endswith(".e_score_correction_bias"):
                name = name[: -len("_bias")] + ".bias"
            if mla and name.endswith(".self_attn.kv_b_proj.weight") and len(ref.shape) == 2:
                n_head, nope, v = mla
                if ref.shape[0] == n_head * (nope + v):
                    prefix = name[: -len("kv_b_proj.weight")]
                    for part in (KvBPart(prefix + "k_b_proj.weight", ref, n_head, nope, v, "k"),
                                 KvBPart(prefix + "v_b_proj.weight", ref, n_head, nope, v, "v")):
                        self.tensors[part.name] = part
                    continue
            self.tensors[name] = ref


@dataclasses.dataclass
class KvBPart:
    """One half of an MLA kv_b_proj (n_head * (nope + v), kv_lora_rank): per head, nope key rows then v value rows.
        kind "k": (n_head, kv_lora_rank, nope)   head h's key rows transposed
        kind "v": (n_head, v, kv_lora_rank)      head h's value rows
    Read in rows of the stacked (n_head * rows, cols) layout, one head's source rows at a time."""
    name: str
    ref: object
    n_head: int
    nope: int
    v: int
    kind: str

    @property
    def shape(self) -> tuple[int, int, int]:
        lora = self.ref.shape[1]
        return (self.n_head, lora, self.nope) if self.kind == "k" else (self.n_head, self.v, lora)

    @property
    def file(self) -> Path:
        return self.ref.file

    @property
    def dtype(self) -> str:
        return self.ref.dtype

    @property
    def nbytes(self) -> int:
        part = self.nope if self.kind == "k" else self.v
        return self.ref.nbytes * part // (self.nope + self.v)

    def check_dtype(self) -> None:
        self.ref.check_dtype()

    def read_rows(self, start: int, stop: int) -> np.ndarray:
        """Stacked rows [start, stop) -> (stop-start, cols) f32."""
        per_head = self.shape[1]
        pieces = []
        row = start
        while row < stop:
            h, offset = divmod(row, per_head)
            n = min(stop - row, per_head - offset)
            first = h * (self.nope + self.v)
            if self.kind == "k":
                block = self.ref.read_rows(first, first + self.nope)  # (nope, kv_lora_rank) f32
                pieces.append(np.ascontiguousarray(block.T[offset:offset + n]))  # (n, nope)
            else:
                first += self.nope + offset
                pieces.append(self.ref.read_rows(first, first + n))  # (n, kv_lora_rank)
            row += n
        return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)


class DeepseekMoE(MoE):
    """DeepSeek-V3's FFN, also GLM-4.5's: leading dense layers, sigmoid-scored routed experts with a correction
    bias and expert groups, routed scaling, shared experts (see the module docstring)."""
    default_dense_layers: ClassVar[int] = 3  # transformers' DeepseekV3Config first_k_dense_replace
    expert_count_keys = ("n_routed_experts",)

    def __init__(self, config: dict, config_path):
        super().__init__(config, config_path)
        self.n_shared = self.hparam("n_shared_experts", int)
        self.n_dense = int(config.get("first_k_dense_replace", self.default_dense_layers) or 0)
        self.n_group = int(config.get("n_group", 1) or 1)
        self.topk_group = int(config.get("topk_group", 1) or 1)

    def unhandled_features(self) -> list[str]:
        found = super().unhandled_features()
        n_group, topk_group = int(self.config.get("n_group") or 1), int(self.config.get("topk_group") or 1)
        if self.n_expert % n_group or topk_group > n_group:
            found.append(f"n_group={n_group}, topk_group={topk_group} for {self.n_expert} experts (groups must "
                         "divide the experts, at most n_group chosen)")
        elif n_group > 1 and self.n_expert // n_group < 2:
            found.append(f"n_group={n_group}: groups of one expert (a group's score is its two best experts)")
        if self.config.get("scoring_func", "sigmoid") != "sigmoid":
            found.append(f"scoring_func={self.config['scoring_func']!r} (this family routes by sigmoid)")
        return found

    def write_hparams(self, w: gguf.GGUFWriter) -> None:
        super().write_hparams(w)
        w.add_expert_shared_count(self.n_shared)
        w.add_leading_dense_block_count(self.n_dense)
        w.add_expert_gating_func(gguf.ExpertGatingFuncType.SIGMOID)
        w.add_expert_weights_scale(float(self.config.get("routed_scaling_factor", 1.0) or 1.0))
        w.add_expert_weights_norm(bool(self.config.get("norm_topk_prob", True)))
        w.add_expert_group_count(self.n_group)
        w.add_expert_group_used_count(self.topk_group)

    def moe_layer(self, i: int) -> bool:
        return i >= self.n_dense

    def expert_shapes(self, block: str) -> dict[str, tuple[int, ...]]:
        e, s = self.n_embd, self.n_ff_exp * self.n_shared
        return super().expert_shapes(block) | {f"{block}.exp_probs_b.bias": (self.n_expert,),
                                               f"{block}.ffn_gate_shexp.weight": (s, e),
                                               f"{block}.ffn_up_shexp.weight": (s, e),
                                               f"{block}.ffn_down_shexp.weight": (e, s)}

    def mla_dims(self) -> tuple[int, int, int] | None:
        return None

    def tensors(self, ckpt) -> list:
        return super().tensors(_Prepared(ckpt, self.n_layer, self.mla_dims()))


class DeepseekV3(DeepseekMoE, Architecture):
    model_type = "deepseek_v3"
    gguf_arch = gguf.MODEL_ARCH.DEEPSEEK2
    rope_types = ("default", "yarn")

    def __init__(self, config: dict, config_path):
        # transformers saves head_dim = qk_rope_head_dim; MLA's sizes come from its own keys
        config = {k: v for k, v in config.items() if k != "head_dim"}
        self.config, self.config_path = config, Path(config_path)
        self.nope = self.hparam("qk_nope_head_dim", int)
        self.rope_dim = self.hparam("qk_rope_head_dim", int)
        self.v_dim = self.hparam("v_head_dim", int)
        self.kv_lora = self.hparam("kv_lora_rank", int)
        self.q_lora = self.hparam("q_lora_rank", int, default=0)
        super().__init__(config, config_path)
        self.head_dim = self.nope + self.rope_dim
        self.n_head_kv = 1  # for llama.cpp the shared latent is a single KV head (MQA)

    def unhandled_features(self) -> list[str]:
        found = super().unhandled_features()
        if self.config.get("hidden_act", "silu") != "silu":
            found.append(f"hidden_act={self.config['hidden_act']!r} (llama.cpp's deepseek2 uses silu)")
        if self.config.get("attention_bias"):
            found.append("attention_bias=true (llama.cpp's deepseek2 has no attention biases)")
        p = self.rope.params
        if self.rope.type not in self.rope_types:
            found.append(f"rope type {self.rope.type!r} (supported: {', '.join(self.rope_types)})")
        elif self.rope.type == "yarn":
            for key in ("factor", "original_max_position_embeddings", "mscale_all_dim"):
                if not p.get(key):
                    found.append(f"rope type 'yarn' without {key}")
            if p.get("mscale_all_dim") and float(p.get("mscale") or 0.0) != float(p["mscale_all_dim"]):
                found.append(f"rope mscale={p.get('mscale')!r} != mscale_all_dim={p['mscale_all_dim']!r} "
                             "(llama.cpp's deepseek2 uses mscale_all_dim for both)")
            if p.get("attention_factor") is not None:
                found.append("rope attention_factor (llama.cpp derives it from mscale_all_dim)")
        return found

    def mla_dims(self) -> tuple[int, int, int]:
        return (self.n_head, self.nope, self.v_dim)

    def transform(self, out: OutputTensor) -> OutputTensor:
        """With rope_interleave false: the rotary rows from two halves to llama.cpp's pairs (row 2i + j of a
        rotary block comes from row j * rope/2 + i), a whole head (or the whole kv_a) per row block."""
        if self.config.get("rope_interleave", True):
            return out
        r = self.rope_dim
        pairs = np.arange(r).reshape(2, r // 2).T.reshape(-1)  # (rope,) source row of each output row
        if out.name.endswith((".attn_q.weight", ".attn_q_b.weight")):
            block = self.head_dim  # one head: nope rows, then rope rows
        elif out.name.endswith(".attn_kv_a_mqa.weight"):
            block = out.rows  # the latent rows, then the shared rope rows
        else:
            return out
        order = np.arange(block)
        order[block - r:] = block - r + pairs
        source = out.read_rows

        def read_rows(start: int, stop: int) -> np.ndarray:
            x = source(start, stop)  # (whole blocks, cols) f32
            return np.ascontiguousarray(x.reshape(-1, block, x.shape[-1])[:, order]).reshape(x.shape)

        out.read_rows, out.row_align = read_rows, block
        out.read_blocks, out.lossless = None, None  # a pre-quantized source's blocks are re-read as rows
        return out

    # ---- GGUF metadata

    def write_hparams(self, w: gguf.GGUFWriter) -> None:
        super().write_hparams(w)
        w.add_q_lora_rank(self.q_lora)
        w.add_kv_lora_rank(self.kv_lora)
        w.add_key_length(self.kv_lora + self.rope_dim)
        w.add_value_length(self.kv_lora)
        w.add_key_length_mla(self.nope + self.rope_dim)
        w.add_value_length_mla(self.v_dim)
        w.add_rope_dimension_count(self.rope_dim)
        w.add_rope_freq_base(self.rope.theta)
        p = self.rope.params
        if self.rope.type == "yarn":
            w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
            w.add_rope_scaling_factor(float(p["factor"]))
            w.add_rope_scaling_orig_ctx_len(int(p["original_max_position_embeddings"]))
            w.add_rope_scaling_yarn_log_mul(0.1 * float(p["mscale_all_dim"]))
            for key, add in (("beta_fast", w.add_rope_scaling_yarn_beta_fast),
                             ("beta_slow", w.add_rope_scaling_yarn_beta_slow)):
                if p.get(key) is not None:
                    add(float(p[key]))

    # ---- tensors

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        e, h, v = self.n_embd, self.n_head, self.vocab_size
        shapes: dict[str, tuple[int, ...]] = {"token_embd.weight": (v, e)}
        for i in range(self.n_layer):
            b = f"blk.{i}"
            shapes[f"{b}.attn_norm.weight"] = (e,)
            if self.q_lora:
                shapes |= {f"{b}.attn_q_a_norm.weight": (self.q_lora,),
                           f"{b}.attn_q_a.weight": (self.q_lora, e),
                           f"{b}.attn_q_b.weight": (h * self.head_dim, self.q_lora)}
            else:
                shapes[f"{b}.attn_q.weight"] = (h * self.head_dim, e)
            shapes |= {f"{b}.attn_kv_a_norm.weight": (self.kv_lora,),
                       f"{b}.attn_kv_a_mqa.weight": (self.kv_lora + self.rope_dim, e),
                       f"{b}.attn_k_b.weight": (h, self.kv_lora, self.nope),
                       f"{b}.attn_v_b.weight": (h, self.v_dim, self.kv_lora),
                       f"{b}.attn_output.weight": (e, h * self.v_dim),
                       f"{b}.ffn_norm.weight": (e,)}
            if self.moe_layer(i):
                shapes |= self.expert_shapes(b)
            else:
                shapes |= {f"{b}.ffn_gate.weight": (self.n_ff, e), f"{b}.ffn_up.weight": (self.n_ff, e),
                           f"{b}.ffn_down.weight": (e, self.n_ff)}
        shapes["output_norm.weight"] = (e,)
        if not self.tied_embeddings:
            shapes["output.weight"] = (v, e)
        return shapes
