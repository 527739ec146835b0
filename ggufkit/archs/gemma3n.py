"""Gemma 3n text models: HF `model_type` "gemma3n_text" -> GGUF arch "gemma3n"; and the multimodal wrapper "gemma3n"
(Gemma3nForConditionalGeneration: text_config + vision / audio towers), converted to its text model.

Gemma 3n keeps Gemma 3's attention block (q/k norms per head, sliding and full layers, tanh GELU, embeddings scaled
by sqrt(hidden) inside llama.cpp, final soft-cap) and adds what llama.cpp's gemma3n graph computes:
- Norm weights are applied as x * w (not 1 + w): every tensor goes out unchanged. V is RMS-normed without a weight,
  attention scores are not scaled (the q/k norms take that place).
- AltUp: the hidden state is carried as altup_num_inputs streams. altup_projections.{0,1,2} and
  altup_unembed_projections.{0,1,2} (hidden, hidden) each are stacked into altup_proj / altup_unembd_proj
  (3, hidden, hidden); per block altup.prediction_coefs (n^2, n) -> altup_predict_coef, correction_coefs (n, n) ->
  altup_correct_coef, modality_router (n, hidden) -> altup_router, router_norm -> altup_router_norm and
  correct_output_scale (hidden,) -> altup_correct_scale.weight.
- Laurel: linear_left (rank, hidden) -> laurel_l, linear_right (hidden, rank) -> laurel_r, post_laurel_norm.
- Per-layer inputs: embed_tokens_per_layer (vocab_size_per_layer_input, n_layer * 256) -> per_layer_token_embd,
  padded to the main vocabulary with copies of row 0 (transformers looks tokens beyond the table up as token 0;
  the real models' 262144-row table serves a 262400-token vocabulary), per_layer_model_projection,
  per_layer_projection_norm, and per block per_layer_input_gate / per_layer_projection / post_per_layer_input_norm.
- Activation sparsity: a Gaussian top-k on the FFN gate (cut at mean + std * icdf(p)); the keys
  activation_sparsity_scale (the multipliers), altup_active_idx, altup_num_inputs, embedding_length_per_layer_input
  and shared_kv_layers are written as llama.cpp's converter writes them.

llama.cpp 0.3.36's gemma3n fixes several of these sizes in code rather than reading them, so configs that differ
are refused (one line each): one FFN width for all layers, altup_num_inputs 4, altup_active_idx 0, altup_correct_scale true, laurel_rank 64,
hidden_size_per_layer_input 256, sparsity 0.95 on exactly the first 10 layers, KV sharing from layer 20 on (the
E2B / E4B layouts; a model of at most 20 layers shares none), final_logit_softcapping 30 (llama.cpp reads no key for
it: its default).
"""
from __future__ import annotations

import re
from statistics import NormalDist

import gguf
import numpy as np

from ggufkit.archs import OutputTensor
from ggufkit.archs.gemma3 import Gemma3Text
from ggufkit.archs.moe import ExpertStack
from ggufkit.archs.wrapper import TextOfMultimodal, TextPart

# what llama.cpp's gemma3n graph hard-codes (llama-hparams.h, models/models.h)
N_ALTUP, ALTUP_ACTIVE, LAUREL_RANK, N_EMBD_ALTUP = 4, 0, 64, 256
N_SPARSE_LAYERS, SPARSITY = 10, 0.95
KV_FROM_LAYER = 20
FINAL_SOFTCAP = 30.0
_STACKED = {"model.altup_projections": "altup_proj.weight", "model.altup_unembed_projections": "altup_unembd_proj.weight"}
_STACK_PART = re.compile(r"(model\.altup(?:_unembed)?_projections)\.(\d+)\.weight")


class _PaddedRows:
    """A (rows, cols) tensor seen with `n` rows: rows beyond its own read as copies of row 0."""

    def __init__(self, ref, n: int):
        self.ref, self.name, self.file, self.dtype = ref, ref.name, ref.file, ref.dtype
        self.shape = (n, ref.shape[1])
        self.nbytes = ref.nbytes // ref.shape[0] * n

    def check_dtype(self) -> None:
        self.ref.check_dtype()

    def read_rows(self, start: int, stop: int) -> np.ndarray:
        own = self.ref.shape[0]
        parts = []
        if start < own:
            parts.append(self.ref.read_rows(start, min(stop, own)))  # (k, cols) f32
        if stop > own:
            row0 = self.ref.read_rows(0, 1)  # (1, cols) f32
            parts.append(np.repeat(row0, stop - max(start, own), axis=0))
        return parts[0] if len(parts) == 1 else np.concatenate(parts)


class Gemma3nText(Gemma3Text):
    model_type = "gemma3n_text"
    gguf_arch = gguf.MODEL_ARCH.GEMMA3N

    def __init__(self, config: dict, config_path):
        ff = config.get("intermediate_size")
        self.n_ff_layers_cfg = list(ff) if isinstance(ff, list) else None
        if isinstance(ff, list) and ff:  # one width per layer (transformers 5 saves the list)
            config = {**config, "intermediate_size": ff[0]}
        super().__init__(config, config_path)
        self.n_ff_layers = self.n_ff_layers_cfg or [self.n_ff] * self.n_layer
        self.n_ple_vocab = self.hparam("vocab_size_per_layer_input", int, default=self.vocab_size)

    # ---- config

    def llama_cpp_query_scalar(self) -> int:
        return self.config.get("query_pre_attn_scalar", self.head_dim)  # unused on both sides (scale 1)

    def unhandled_features(self) -> list[str]:
        found = super().unhandled_features()
        fixed = {"altup_num_inputs": N_ALTUP, "altup_active_idx": ALTUP_ACTIVE, "laurel_rank": LAUREL_RANK,
                 "hidden_size_per_layer_input": N_EMBD_ALTUP}
        for key, want in fixed.items():
            if self.config.get(key, want) != want:
                found.append(f"{key}={self.config[key]!r} (llama.cpp's gemma3n is built for {want})")
        if self.config.get("altup_correct_scale", True) is not True:
            found.append("altup_correct_scale=false (llama.cpp's gemma3n always scales the corrected stream)")
        if self.config.get("final_logit_softcapping") != FINAL_SOFTCAP:
            found.append(f"final_logit_softcapping={self.config.get('final_logit_softcapping')!r} (llama.cpp's "
                         f"gemma3n reads no key for it and always soft-caps at {FINAL_SOFTCAP:g})")
        n = self.n_layer
        pattern = self.config.get("activation_sparsity_pattern")
        want = [SPARSITY] * min(n, N_SPARSE_LAYERS) + [0.0] * max(0, n - N_SPARSE_LAYERS)
        if not isinstance(pattern, list) or [float(p) for p in pattern] != want:
            found.append(f"activation_sparsity_pattern={pattern!r} (llama.cpp's gemma3n applies {SPARSITY} "
                         f"sparsity to exactly the first {N_SPARSE_LAYERS} layers)")
        shared = self.config.get("num_kv_shared_layers", 0)
        if shared != max(0, n - KV_FROM_LAYER):
            found.append(f"num_kv_shared_layers={shared!r} (llama.cpp's gemma3n shares KV from layer "
                         f"{KV_FROM_LAYER} on: {max(0, n - KV_FROM_LAYER)} for {n} layers)")
        ff = self.n_ff_layers_cfg
        if ff is not None and len(ff) != n:
            found.append(f"intermediate_size has {len(ff)} values for {n} layers")
        elif ff is not None and len(set(ff)) > 1:
            found.append(f"intermediate_size={ff!r} (llama.cpp's gemma3n gives every layer layer 0's FFN width)")
        if self.config.get("vocab_size_per_layer_input", 0) > self.config.get("vocab_size", 0):
            found.append(f"vocab_size_per_layer_input={self.config['vocab_size_per_layer_input']} is more than "
                         f"vocab_size {self.config.get('vocab_size')}")
        return found

    # ---- GGUF metadata

    def write_hparams(self, w: gguf.GGUFWriter) -> None:
        super().write_hparams(w)
        w.add_altup_active_idx(ALTUP_ACTIVE)
        w.add_altup_num_inputs(N_ALTUP)
        w.add_embedding_length_per_layer_input(N_EMBD_ALTUP)
        w.add_shared_kv_layers(int(self.config.get("num_kv_shared_layers") or 0))
        pattern = self.config["activation_sparsity_pattern"]
        # the Gaussian cut-off multiplier per layer: the normal distribution's quantile at p (0 where p is 0)
        w.add_activation_sparsity_scale([NormalDist().inv_cdf(float(p)) if p > 0 else 0.0 for p in pattern])

    # ---- tensors

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        e, v, d, n = self.n_embd, self.vocab_size, N_EMBD_ALTUP, N_ALTUP
        shapes: dict[str, tuple[int, ...]] = {
            "token_embd.weight": (v, e), "altup_proj.weight": (n - 1, e, e), "altup_unembd_proj.weight": (n - 1, e, e),
            "per_layer_token_embd.weight": (v, self.n_layer * d), "per_layer_model_proj.weight": (self.n_layer * d, e),
            "per_layer_proj_norm.weight": (d,)}
        hd = self.head_dim
        for i in range(self.n_layer):
            b, ff = f"blk.{i}", self.n_ff_layers[i]
            shapes |= {
                f"{b}.attn_norm.weight": (e,), f"{b}.attn_q.weight": (self.n_head * hd, e),
                f"{b}.attn_k.weight": (self.n_head_kv * hd, e), f"{b}.attn_v.weight": (self.n_head_kv * hd, e),
                f"{b}.attn_output.weight": (e, self.n_head * hd), f"{b}.attn_q_norm.weight": (hd,),
                f"{b}.attn_k_norm.weight": (hd,), f"{b}.post_attention_norm.weight": (e,),
                f"{b}.ffn_norm.weight": (e,), f"{b}.ffn_gate.weight": (ff, e), f"{b}.ffn_up.weight": (ff, e),
                f"{b}.ffn_down.weight": (e, ff), f"{b}.post_ffw_norm.weight": (e,),
                f"{b}.inp_gate.weight": (d, e), f"{b}.proj.weight": (e, d), f"{b}.post_norm.weight": (e,),
                f"{b}.altup_correct_coef.weight": (n, n), f"{b}.altup_correct_scale.weight": (e,),
                f"{b}.altup_predict_coef.weight": (n * n, n), f"{b}.altup_router.weight": (n, e),
                f"{b}.altup_router_norm.weight": (e,), f"{b}.laurel_l.weight": (LAUREL_RANK, e),
                f"{b}.laurel_r.weight": (e, LAUREL_RANK), f"{b}.laurel_post_norm.weight": (e,)}
        shapes["output_norm.weight"] = (e,)
        if not self.tied_embeddings:
            shapes["output.weight"] = (v, e)
        return shapes

    def gguf_name(self, name_map: gguf.TensorNameMap, hf_name: str) -> str | None:
        if hf_name in _STACKED:
            return _STACKED[hf_name]
        if hf_name.endswith(".altup.correct_output_scale"):  # saved without a .weight suffix
            return name_map.get_name(hf_name, try_suffixes=()) + ".weight"
        return super().gguf_name(name_map, hf_name)

    def transform(self, out: OutputTensor) -> OutputTensor:
        return out  # norms are applied as x * w: no 1 + w

    def tensors(self, ckpt) -> list[OutputTensor]:
        """AltUp's three (hidden, hidden) projections of each kind stacked into one (3, hidden, hidden) tensor, read
        projection by projection; the per-layer embedding table padded to the vocabulary."""
        view = TextPart(ckpt, lambda n: n)
        parts: dict[str, dict[int, object]] = {}
        for name in list(view.tensors):
            if m := _STACK_PART.fullmatch(name):
                parts.setdefault(m[1], {})[int(m[2])] = view.tensors.pop(name)
        for prefix, by_index in parts.items():
            refs = [by_index.get(x) for x in range(N_ALTUP - 1)]
            if None in refs or len(by_index) != N_ALTUP - 1:
                self.fail(f"{prefix}: expected tensors .0 to .{N_ALTUP - 2}, found {sorted(by_index)}")
            rows, cols = refs[0].shape
            view.tensors[prefix] = ExpertStack(prefix, [(r, 0) for r in refs], rows, cols)
        ple = view.tensors.get("model.embed_tokens_per_layer.weight")
        if ple is not None and len(ple.shape) == 2 and ple.shape[0] == self.n_ple_vocab < self.vocab_size:
            view.tensors["model.embed_tokens_per_layer.weight"] = _PaddedRows(ple, self.vocab_size)
        return super().tensors(view)


class Gemma3n(TextOfMultimodal, Gemma3nText):
    """Gemma 3n multimodal (Gemma3nForConditionalGeneration), converted to its text model"""
    model_type = "gemma3n"
    text_config_class = "Gemma3nTextConfig"
    other_towers = ("model.vision_tower.", "vision_tower.", "model.audio_tower.", "audio_tower.",
                    "model.embed_vision.", "embed_vision.", "model.embed_audio.", "embed_audio.")
