"""Multimodal wrappers converted to their text model (Qwen 3.5's Qwen3_5ForConditionalGeneration, ...): the
config's `text_config` is the model, its tensors live under `model.language_model.` (transformers 5) or
`language_model.model.` (transformers 4), and the vision tower / projector / multi-token-prediction tensors are
left out - the GGUF is the text model, as llama.cpp's converter makes it (vision goes into a separate mmproj file,
which ggufkit does not write).

    class Qwen35(TextOfMultimodal, Qwen35Text):
        model_type = "qwen3_5"
        text_config_class = "Qwen3_5TextConfig"

Saved wrapper configs may leave text_config fields at their defaults; transformers' own text config class fills
them in (a config class only: no model code runs).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

from ggufkit.errors import InputError


class TextPart:
    """A checkpoint seen through a wrapper: the language model's tensors under the text model's names."""

    def __init__(self, ckpt, rename: Callable[[str], str | None]):
        self.weights_file = ckpt.weights_file
        self.tensors = {new: ref for name, ref in ckpt.tensors.items() if (new := rename(name)) is not None}


class TextOfMultimodal:
    """Mixin before the text architecture: reads text_config, renames the language model's tensors, drops the
    other towers."""
    text_config_class: ClassVar[str] = ""  # transformers config class that completes text_config
    text_prefixes: ClassVar[tuple[tuple[str, str], ...]] = (
        ("model.language_model.", "model."), ("language_model.model.", "model."),
        ("language_model.lm_head.", "lm_head."))
    other_towers: ClassVar[tuple[str, ...]] = (
        "model.visual.", "visual.", "model.vision_tower.", "vision_tower.", "model.multi_modal_projector.",
        "multi_modal_projector.", "model.audio_tower.", "audio_tower.", "mtp.", "model.mtp.")

    def __init__(self, config: dict, config_path):
        text = config.get("text_config")
        if not isinstance(text, dict):
            raise InputError(f"model_type {config.get('model_type')!r} without a text_config object (a wrapper "
                             "converts to its text model)", config_path)
        import transformers

        config_class = getattr(transformers, self.text_config_class)
        if text.get("model_type", config_class.model_type) != config_class.model_type:  # e.g. a vision tower's
            raise InputError(f"text_config model_type {text['model_type']!r} (a {config.get('model_type')} wrapper "
                             f"converts a {config_class.model_type} text model)", config_path)
        try:
            full = config_class(**text).to_dict()
        except (TypeError, ValueError) as e:
            raise InputError(f"text_config is not a valid {self.text_config_class}: {e}", config_path) from None
        for key in ("tie_word_embeddings", "quantization_config"):
            if key in config:
                full[key] = config[key]
        super().__init__(full, config_path)

    def text_name(self, name: str) -> str | None:
        """Wrapper tensor name -> the text model's name; None for the other towers."""
        if name.startswith(self.other_towers):
            return None
        for old, new in self.text_prefixes:
            if name.startswith(old):
                return new + name[len(old):]
        return name

    def tensors(self, ckpt) -> list:
        return super().tensors(TextPart(ckpt, self.text_name))
