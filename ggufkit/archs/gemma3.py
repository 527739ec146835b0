"""Gemma 3 text models: HF `model_type` "gemma3_text" -> GGUF arch "gemma3"; and the multimodal wrapper
"gemma3" (Gemma3ForConditionalGeneration: text_config + vision_config), converted to its text model.

Gemma 3 is Gemma 2 (norms stored as w and applied as 1 + w, embeddings scaled by sqrt(hidden) inside llama.cpp,
post-attention / post-feedforward norms, tanh GELU) with these changes:
- q/k norms: an RMS norm over each head of Q and K before RoPE (attn_q_norm / attn_k_norm, (head_dim,), also
  1 + w), and no attention-logit soft-capping (a config asking for it is refused); final soft-capping only when
  the config sets it.
- Sliding-window layers: by default five of every six (pattern period 6), each layer's kind written as a bool
  array from `layer_types`. Local (sliding) layers use their own RoPE base (rope.freq_base_swa) and no scaling;
  global layers use rope_theta and the linear scaling factor of the 4B+ models. Without a sliding window every
  layer is global.
- Untied output projections are allowed (llama.cpp's gemma3 loads output.weight when present).

The wrapper "gemma3": its text_config is completed with transformers' own Gemma3TextConfig defaults (saved
configs leave most fields out), its language-model tensors are renamed to the text model's names
(`language_model.model.X` / `model.language_model.X` -> `model.X`), and the vision tower and projector are left
out - the GGUF is the text model, as llama.cpp's converter makes it (the vision part goes in a separate mmproj
file, which ggufkit does not write).
"""
from __future__ import annotations

import gguf

from ggufkit.archs.gemma2 import Gemma2
from ggufkit.archs.wrapper import TextOfMultimodal


class Gemma3Text(Gemma2):
    model_type = "gemma3_text"
    gguf_arch = gguf.MODEL_ARCH.GEMMA3
    rope_types = ("default", "linear")
    default_swa_period = 6
    needs_attn_softcap = False

    def unhandled_features(self) -> list[str]:
        found = super().unhandled_features()
        local = self.local_rope()
        if local.get("rope_type", "default") != "default":
            found.append(f"rope type {local['rope_type']!r} on sliding layers (llama.cpp scales only global "
                         "layers)")
        if self.rope.type == "linear" and "factor" not in self.rope.params:
            found.append("rope type 'linear' without a factor")
        if any(self.sliding_layers()) and not self.config.get("sliding_window"):
            found.append("sliding layers without a sliding_window size")
        return found

    def llama_cpp_query_scalar(self) -> int:
        return self.n_embd // self.n_head if self.n_layer == 62 else self.head_dim  # 62 layers: the 27B

    def untied_output_supported(self) -> bool:
        return True

    def local_rope(self) -> dict:
        """RoPE parameters of the sliding layers: transformers 5 `rope_parameters.sliding_attention`, or the
        transformers 4 top-level `rope_local_base_freq` (default rope)."""
        params = self.config.get("rope_parameters") or {}
        if isinstance(params.get("sliding_attention"), dict):
            return dict(params["sliding_attention"])
        return {"rope_type": "default", "rope_theta": self.config.get("rope_local_base_freq", 10000.0)}

    def write_hparams(self, w: gguf.GGUFWriter) -> None:
        super().write_hparams(w)
        if self.rope.type == "linear":
            w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
            w.add_rope_scaling_factor(float(self.rope.params["factor"]))

    def write_sliding_window(self, w: gguf.GGUFWriter) -> None:
        if not self.config.get("sliding_window") or not any(self.sliding_layers()):
            return  # no key: llama.cpp's gemma3 runs every layer with global attention
        super().write_sliding_window(w)
        w.add_rope_freq_base_swa(float(self.local_rope().get("rope_theta", 10000.0)))

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        shapes: dict[str, tuple[int, ...]] = {}
        for name, shape in super().expected_shapes().items():
            shapes[name] = shape
            if name.endswith(".attn_output.weight"):
                block = name.rsplit(".", 2)[0]
                shapes[f"{block}.attn_q_norm.weight"] = (self.head_dim,)
                shapes[f"{block}.attn_k_norm.weight"] = (self.head_dim,)
        return shapes


class Gemma3(TextOfMultimodal, Gemma3Text):
    """Gemma 3 multimodal (Gemma3ForConditionalGeneration), converted to its text model"""
    model_type = "gemma3"
    text_config_class = "Gemma3TextConfig"  # saved wrapper configs hold only fields that differ from its defaults
    # wrapper tensor-name prefix -> text model prefix (transformers 4 saves, then transformers 5 saves)
    text_prefixes = (("language_model.model.", "model."), ("language_model.lm_head.", "lm_head."),
                     ("model.language_model.", "model."))
    other_towers = ("vision_tower.", "multi_modal_projector.", "model.vision_tower.",
                    "model.multi_modal_projector.")

