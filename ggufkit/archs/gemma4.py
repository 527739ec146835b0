"""Gemma 4 text models: HF `model_type` "gemma4_text" -> GGUF arch "gemma4"; and the multimodal wrapper "gemma4"
(Gemma4ForConditionalGeneration: text_config + vision / audio towers), converted to its text model.

Gemma 4 keeps Gemma 3's block (pre/post attention and feed-forward norms, q/k norms per head, tanh GELU, tied
embeddings scaled by sqrt(hidden) inside llama.cpp, sliding and full layers from `layer_types`, final soft-cap when
set) and changes the rest. What llama.cpp's gemma4 reads, and how the HF checkpoint maps onto it:
- Norm weights are applied as x * w (not 1 + w): every tensor goes out unchanged. V is RMS-normed without a weight
  (nothing stored); attention scores are not scaled (f_attention_scale 1, the q/k norms take its place), so a
  query_pre_attn_scalar in the config means nothing to either side.
- Two head shapes: sliding layers use head_dim (attention.key_length_swa / value_length_swa), full layers their own
  (per_layer_config[i].head_dim, or global_head_dim in older configs; attention.key_length / value_length), and
  full layers may have their own KV head count (head_count_kv then one value per layer).
- attention_k_eq_v: full layers have no v_proj; llama.cpp uses the key projection as values when attn_v is absent.
- RoPE: sliding layers rotate the whole head at rope.freq_base_swa (rope.dimension_count_swa = head_dim); full
  layers use "proportional" rope: the first partial_rotary_factor of the frequency pairs rotate with exponents over
  the full head_dim, the rest do not. llama.cpp runs NEOX rope over the whole head (rope.dimension_count = full
  head_dim) and divides each frequency by rope_freqs.weight: 1 for the rotated pairs, 1e30 for the others (the
  tensor is shared by the full layers). A "default" full-layer rope is the same with every factor 1.
- KV sharing: the last num_kv_shared_layers layers have no k/v projections or k norm and reuse the cache of an
  earlier layer (attention.shared_kv_layers). llama.cpp takes it from layer first_shared - 1 for full layers and
  first_shared - 2 for sliding ones; HF from the last earlier layer of the same type: configs where those differ
  are refused. use_double_wide_mlp doubles the FFN width of the shared layers (feed_forward_length per layer).
- Per-layer embeddings (hidden_size_per_layer_input > 0, the E2B / E4B models): per_layer_token_embd (vocab,
  n_layer * d), per_layer_model_proj (n_layer * d, hidden), per_layer_proj_norm (d,), and per block inp_gate
  (d, hidden), proj (hidden, d), post_norm (hidden,); embedding_length_per_layer_input = d (0 without them).
- layer_scalar (a saved buffer of shape (1,)) -> blk.N.layer_output_scale.weight.

- The mixture-of-experts block (enable_moe_block, the 26B-A4B): each layer keeps its dense MLP (ffn_gate/up/down,
  post_ffw_norm_1) and adds num_experts experts: router.proj -> ffn_gate_inp.weight, router.scale ->
  ffn_gate_inp.scale, router.per_expert_scale -> ffn_down_exps.scale, the fused experts.gate_up_proj
  (n_expert, 2 * moe_intermediate_size, hidden) -> ffn_gate_up_exps.weight as it is (gate rows, then up rows),
  experts.down_proj -> ffn_down_exps.weight, pre_feedforward_layernorm_2 / post_feedforward_layernorm_2 ->
  pre_ffw_norm_2 / post_ffw_norm_2; expert_count, expert_used_count (top_k_experts), expert_feed_forward_length.
  Experts saved one tensor per expert (experts.<x>.gate_proj / up_proj / down_proj) are stacked into the same
  tensors, a row block at a time.

Refused (one line each): attention bias, fully bidirectional attention ("all"), a per-layer embedding vocabulary other than
the main one, head sizes llama.cpp cannot express (sliding layers with their own head_dim, full layers with
different ones), proportional rope with a scaling factor, KV sharing llama.cpp maps to other layers, and a model
without sliding layers (llama.cpp's gemma4 always builds its sliding-window cache).
"""
from __future__ import annotations

import dataclasses
import re

import gguf
import numpy as np

from ggufkit.archs import OutputTensor
from ggufkit.archs.gemma3 import Gemma3Text
from ggufkit.archs.moe import ExpertStack, _flat
from ggufkit.archs.wrapper import TextOfMultimodal, TextPart
from ggufkit.errors import InputError

PER_LAYER_KEYS = ("head_dim", "num_key_value_heads")  # per_layer_config fields llama.cpp can express
UNROTATED = 1e30  # rope_freqs divisor that stops a frequency pair from rotating
# checkpoint tensors gguf-py's map does not name as llama.cpp's gemma4 loads them: HF suffix -> GGUF suffix
_OWN_NAMES = {"layer_scalar": "layer_output_scale.weight", "router.scale": "ffn_gate_inp.scale",
              "router.per_expert_scale": "ffn_down_exps.scale", "experts.gate_up_proj": "ffn_gate_up_exps.weight",
              "experts.down_proj": "ffn_down_exps.weight"}
_OWN_NAME = re.compile(r"model\.layers\.(\d+)\.(" + "|".join(re.escape(k) for k in _OWN_NAMES) + ")")


_PER_EXPERT = re.compile(r"(model\.layers\.\d+\.experts)\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight")


class _RowConcat:
    """One expert's gate (f, e) and up (f, e) projections seen as its (2f, e) gate_up matrix, gate rows first."""

    def __init__(self, gate, up):
        self.gate, self.up, self.name, self.file, self.dtype = gate, up, gate.name, gate.file, gate.dtype
        if gate.shape != up.shape:
            raise InputError(f"tensor {up.name} has shape {list(up.shape)}, its gate_proj {list(gate.shape)}",
                             up.file)
        self.shape = (2 * gate.shape[0], gate.shape[1]) if len(gate.shape) == 2 else gate.shape
        self.nbytes = gate.nbytes + up.nbytes
        self.rows, self.cols = self.shape[0], self.shape[-1]

    def check_dtype(self) -> None:
        self.gate.check_dtype()
        self.up.check_dtype()

    def read_rows(self, start: int, stop: int) -> np.ndarray:
        f = self.gate.shape[0]
        parts = []
        if start < f:
            parts.append(self.gate.read_rows(start, min(stop, f)))  # (k, e) f32
        if stop > f:
            parts.append(self.up.read_rows(max(start, f) - f, stop - f))
        return parts[0] if len(parts) == 1 else np.concatenate(parts)


class Gemma4Text(Gemma3Text):
    model_type = "gemma4_text"
    gguf_arch = gguf.MODEL_ARCH.GEMMA4
    rope_types = ("proportional", "default")  # of the full-attention layers
    text_causal_bidirectional = ("vision",)  # bidirectional among image tokens only: text stays causal
    spm_bpe_tokenizer = "gemma4"  # Gemma 4's tokenizer.json goes out as llama.cpp's "gemma4" BPE tokenizer

    def __init__(self, config: dict, config_path):
        super().__init__(config, config_path)
        self.sliding = self.sliding_layers()
        full = [i for i, s in enumerate(self.sliding) if not s]
        self.head_dim_full = self.layer_value(full[0], "head_dim", self.head_dim) if full else self.head_dim
        self.n_head_kv_layers = [self.layer_value(i, "num_key_value_heads", self.n_head_kv)
                                 for i in range(self.n_layer)]
        self.n_shared = int(self.config.get("num_kv_shared_layers") or 0)
        self.first_shared = self.n_layer - self.n_shared
        double = bool(self.config.get("use_double_wide_mlp"))
        self.n_ff_layers = [self.n_ff * 2 if double and i >= self.first_shared else self.n_ff
                            for i in range(self.n_layer)]
        self.n_ple = int(self.config.get("hidden_size_per_layer_input") or 0)
        self.k_eq_v = bool(self.config.get("attention_k_eq_v"))
        self.moe = bool(self.config.get("enable_moe_block"))
        if self.moe:
            self.n_expert = self.hparam("num_experts", int)
            self.n_expert_used = self.hparam("top_k_experts", int)
            self.n_ff_exp = self.hparam("moe_intermediate_size", int)
            if self.n_expert_used > self.n_expert:
                self.fail(f"top_k_experts = {self.n_expert_used} is more than the {self.n_expert} experts")

    # ---- config

    def layer_value(self, i: int, key: str, default: int) -> int:
        """A layer's head_dim / num_key_value_heads: per_layer_config (transformers 5.24 configs), else the
        global_* fields of older configs for full layers, else the model-wide value."""
        per_layer = self.config.get("per_layer_config")
        if isinstance(per_layer, dict):
            entry = per_layer.get(str(i), per_layer.get(i)) or {}
            return int(entry.get(key, default))
        if not self.sliding_layers()[i]:
            if key == "head_dim":
                return int(self.config.get("global_head_dim") or 512)  # transformers' default
            if self.config.get("attention_k_eq_v", True) and self.config.get("num_global_key_value_heads"):
                return int(self.config["num_global_key_value_heads"])
        return default

    def llama_cpp_query_scalar(self) -> int:
        # no query scaling on either side (scale 1, q_norm instead): whatever the config says is unused
        return self.config.get("query_pre_attn_scalar", self.head_dim)

    def unhandled_features(self) -> list[str]:
        found = super().unhandled_features()
        sliding = self.sliding_layers()
        if not any(sliding):
            found.append("no sliding_attention layer (llama.cpp's gemma4 always builds a sliding-window cache)")
        per_layer = self.config.get("per_layer_config")
        if per_layer is not None and not isinstance(per_layer, dict):
            found.append(f"per_layer_config={per_layer!r} is not an object")
            per_layer = {}
        for key, entry in (per_layer or {}).items():
            extra = sorted(set(entry or {}) - set(PER_LAYER_KEYS)) if isinstance(entry, dict) else [repr(entry)]
            if extra:
                found.append(f"per_layer_config[{key}] sets {', '.join(extra)} (llama.cpp's gemma4 varies only "
                             f"{' and '.join(PER_LAYER_KEYS)} per layer)")
        if not found:
            found += self._head_features(sliding)
        params = (self.config.get("rope_parameters") or {}).get("full_attention") or {}
        if float(params.get("factor", 1.0)) != 1.0:
            found.append(f"rope factor {params['factor']} on full layers (llama.cpp's gemma4 has no key for it)")
        ple_vocab = self.config.get("vocab_size_per_layer_input", self.vocab_size)
        if self.config.get("hidden_size_per_layer_input") and ple_vocab != self.vocab_size:
            found.append(f"vocab_size_per_layer_input={ple_vocab} != vocab_size {self.vocab_size} (llama.cpp "
                         "indexes both embeddings with the same token ids)")
        found += self._kv_sharing_features(sliding)
        return found

    def expert_features(self) -> list[str]:
        return []  # enable_moe_block decides; the expert counts are read with it

    def _head_features(self, sliding: list[bool]) -> list[str]:
        found = []
        hd = [self.layer_value(i, "head_dim", self.head_dim) for i in range(self.n_layer)]
        kv = [self.layer_value(i, "num_key_value_heads", self.n_head_kv) for i in range(self.n_layer)]
        if {d for d, s in zip(hd, sliding) if s} - {self.head_dim}:
            found.append(f"sliding layers with a head_dim other than {self.head_dim} (llama.cpp's gemma4 has one "
                         "sliding head size)")
        full = sorted({d for d, s in zip(hd, sliding) if not s})
        if len(full) > 1:
            found.append(f"full layers with different head_dims {full} (llama.cpp's gemma4 has one)")
        for i, n in enumerate(kv):
            if n <= 0 or self.n_head % n:
                found.append(f"layer {i}: num_attention_heads {self.n_head} is not a multiple of its "
                             f"num_key_value_heads {n}")
        return found

    def _kv_sharing_features(self, sliding: list[bool]) -> list[str]:
        n_shared = self.config.get("num_kv_shared_layers") or 0
        if not isinstance(n_shared, int) or n_shared < 0 or n_shared > self.n_layer - 2:
            return [(f"num_kv_shared_layers={n_shared!r} (llama.cpp's gemma4 needs at least 2 layers with their own "
                     f"KV of the {self.n_layer})")]
        if n_shared == 0:
            return []
        first = self.n_layer - n_shared
        if sliding[first - 1] or not sliding[first - 2]:
            return [(f"num_kv_shared_layers={n_shared} with layers {first - 2}, {first - 1} of types "
                     f"{self.config.get('layer_types', [])[first - 2:first]} (llama.cpp's gemma4 reuses the KV of "
                     "a sliding then a full layer just before the shared ones)")]
        return []

    # ---- GGUF metadata

    def write_hparams(self, w: gguf.GGUFWriter) -> None:
        w.add_vocab_size(self.vocab_size)
        w.add_context_length(self.n_ctx)
        w.add_embedding_length(self.n_embd)
        w.add_block_count(self.n_layer)
        uniform_ff = len(set(self.n_ff_layers)) == 1
        w.add_feed_forward_length(self.n_ff if uniform_ff else self.n_ff_layers)
        w.add_head_count(self.n_head)
        uniform_kv = len(set(self.n_head_kv_layers)) == 1
        w.add_head_count_kv(self.n_head_kv_layers[0] if uniform_kv else self.n_head_kv_layers)
        w.add_layer_norm_rms_eps(self.rms_eps)
        w.add_key_length(self.head_dim_full)
        w.add_value_length(self.head_dim_full)
        w.add_key_length_swa(self.head_dim)
        w.add_value_length_swa(self.head_dim)
        w.add_rope_dimension_count(self.head_dim_full)  # the whole head; rope_freqs stops the unrotated pairs
        w.add_rope_dimension_count_swa(self.head_dim)
        w.add_rope_freq_base(self.rope.theta)
        w.add_rope_freq_base_swa(float(self.local_rope().get("rope_theta", 10000.0)))
        if self.config.get("final_logit_softcapping"):
            w.add_final_logit_softcapping(float(self.config["final_logit_softcapping"]))
        w.add_sliding_window(self.hparam("sliding_window", int))
        w.add_sliding_window_pattern(self.sliding)
        w.add_shared_kv_layers(self.n_shared)
        w.add_embedding_length_per_layer_input(self.n_ple)
        if self.moe:
            w.add_expert_count(self.n_expert)
            w.add_expert_used_count(self.n_expert_used)
            w.add_expert_feed_forward_length(self.n_ff_exp)

    def model_info(self):
        info = super().model_info()
        return dataclasses.replace(info, n_expert=self.n_expert) if self.moe else info

    # ---- tensors

    def rope_factors(self) -> np.ndarray:
        """(head_dim_full / 2,) f32: 1 for the pairs proportional rope rotates, 1e30 for the rest."""
        half = self.head_dim_full // 2
        factor = float(self.rope.params.get("partial_rotary_factor", 1.0)) if self.rope.type == "proportional" else 1.0
        n_rot = int(factor * self.head_dim_full // 2)
        return np.array([1.0] * n_rot + [UNROTATED] * (half - n_rot), dtype=np.float32)

    def extra_tensors(self) -> list[OutputTensor]:
        factors = self.rope_factors()
        return [OutputTensor("rope_freqs.weight", factors.shape, lambda a, b: factors.reshape(1, -1),
                             self.config_path, f"rope_parameters.full_attention ({self.rope.type})")]

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        e, v, d = self.n_embd, self.vocab_size, self.n_ple
        shapes: dict[str, tuple[int, ...]] = {"token_embd.weight": (v, e)}
        if d:
            shapes |= {"per_layer_token_embd.weight": (v, self.n_layer * d),
                       "per_layer_model_proj.weight": (self.n_layer * d, e), "per_layer_proj_norm.weight": (d,)}
        for i in range(self.n_layer):
            b, hd, kv, ff = f"blk.{i}", self.head_dim if self.sliding[i] else self.head_dim_full, \
                self.n_head_kv_layers[i], self.n_ff_layers[i]
            shapes |= {f"{b}.attn_norm.weight": (e,), f"{b}.attn_q.weight": (self.n_head * hd, e)}
            if i < self.first_shared:
                shapes[f"{b}.attn_k.weight"] = (kv * hd, e)
                if self.sliding[i] or not self.k_eq_v:
                    shapes[f"{b}.attn_v.weight"] = (kv * hd, e)
            shapes |= {f"{b}.attn_output.weight": (e, self.n_head * hd), f"{b}.attn_q_norm.weight": (hd,)}
            if i < self.first_shared:
                shapes[f"{b}.attn_k_norm.weight"] = (hd,)
            shapes |= {f"{b}.post_attention_norm.weight": (e,), f"{b}.ffn_norm.weight": (e,),
                       f"{b}.ffn_gate.weight": (ff, e), f"{b}.ffn_up.weight": (ff, e), f"{b}.ffn_down.weight": (e, ff)}
            if self.moe:
                n, fe = self.n_expert, self.n_ff_exp
                shapes |= {f"{b}.post_ffw_norm_1.weight": (e,), f"{b}.ffn_gate_inp.weight": (n, e),
                           f"{b}.ffn_gate_inp.scale": (e,), f"{b}.pre_ffw_norm_2.weight": (e,),
                           f"{b}.ffn_gate_up_exps.weight": (n, 2 * fe, e), f"{b}.ffn_down_exps.weight": (n, e, fe),
                           f"{b}.ffn_down_exps.scale": (n,), f"{b}.post_ffw_norm_2.weight": (e,)}
            shapes[f"{b}.post_ffw_norm.weight"] = (e,)
            if d:
                shapes |= {f"{b}.inp_gate.weight": (d, e), f"{b}.proj.weight": (e, d), f"{b}.post_norm.weight": (e,)}
            shapes[f"{b}.layer_output_scale.weight"] = (1,)
        shapes["output_norm.weight"] = (e,)
        if not self.tied_embeddings:
            shapes["output.weight"] = (v, e)
        return shapes

    def transform(self, out: OutputTensor) -> OutputTensor:
        return out  # norms are applied as x * w: no 1 + w

    def tensors(self, ckpt) -> list[OutputTensor]:
        """The fused expert parameters (n_expert, rows, cols) go out as they are (ffn_gate_up_exps keeps gate rows
        before up rows, as llama.cpp splits it), read as stacked rows one expert at a time. Experts saved one
        tensor per expert (experts.<x>.gate_proj / up_proj / down_proj) are stacked into the same tensors."""
        def stacked(name: str):
            ref = ckpt.tensors[name]
            if ".experts." not in name or len(ref.shape) != 3:
                return ref
            e, rows, cols = ref.shape
            return ExpertStack(name, [(_flat(ref, e * rows, cols), x * rows) for x in range(e)], rows, cols)

        view = TextPart(ckpt, lambda n: n)
        view.tensors = {name: stacked(name) for name in view.tensors}
        if self.moe:
            self._stack_per_expert(view)
        return super().tensors(view)

    def _stack_per_expert(self, view) -> None:
        groups: dict[str, dict[tuple[int, str], object]] = {}
        for name in list(view.tensors):
            if m := _PER_EXPERT.fullmatch(name):
                if int(m[2]) >= self.n_expert:
                    raise InputError(f"tensor {name} is expert {m[2]}, the config has {self.n_expert} experts",
                                     view.tensors[name].file)
                groups.setdefault(m[1], {})[(int(m[2]), m[3])] = view.tensors.pop(name)
        for prefix, parts in groups.items():
            for x in range(self.n_expert):
                for proj in ("gate_proj", "up_proj", "down_proj"):
                    if (x, proj) not in parts:
                        raise InputError(f"tensor {prefix}.{x}.{proj}.weight is missing (expert {x} of "
                                         f"{self.n_expert})", view.weights_file)
            gate_up = [_RowConcat(parts[(x, "gate_proj")], parts[(x, "up_proj")]) for x in range(self.n_expert)]
            down = [parts[(x, "down_proj")] for x in range(self.n_expert)]
            for name, refs in ((f"{prefix}.gate_up_proj", gate_up), (f"{prefix}.down_proj", down)):
                if any(r.shape != refs[0].shape or len(r.shape) != 2 for r in refs):
                    raise InputError(f"{name}: experts of different shapes {sorted({r.shape for r in refs})}",
                                     refs[0].file)
                view.tensors[name] = ExpertStack(name, [(r, 0) for r in refs], *refs[0].shape)

    def gguf_name(self, name_map: gguf.TensorNameMap, hf_name: str) -> str | None:
        if m := _OWN_NAME.fullmatch(hf_name):
            return f"blk.{m[1]}.{_OWN_NAMES[m[2]]}"
        return super().gguf_name(name_map, hf_name)


class Gemma4(TextOfMultimodal, Gemma4Text):
    """Gemma 4 multimodal (Gemma4ForConditionalGeneration), converted to its text model"""
    model_type = "gemma4"
    text_config_class = "Gemma4TextConfig"
    text_prefixes = (("model.language_model.", "model."), ("language_model.model.", "model."),
                     ("language_model.lm_head.", "lm_head."))
    other_towers = ("model.vision_tower.", "vision_tower.", "model.audio_tower.", "audio_tower.",
                    "model.embed_vision.", "embed_vision.", "model.embed_audio.", "embed_audio.",
                    "model.multi_modal_projector.", "multi_modal_projector.")
