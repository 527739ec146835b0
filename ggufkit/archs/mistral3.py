"""Mistral 3 multimodal (Mistral-Small-3.1/3.2, Ministral-3 releases): HF `model_type` "mistral3" -> GGUF arch
"mistral3", the text part of Mistral3ForConditionalGeneration.

Its `text_config` is a Mistral ("mistral", Mistral Small 3.x: plain rope) or a Ministral 3 ("ministral3": YaRN
and query scaling) text model; either converts as archs/ministral3.py describes, the Pixtral vision tower and
the projector are left out (archs/wrapper.py), as llama.cpp's converter writes the text GGUF. A text_config of
another kind is refused.
"""
from __future__ import annotations

from ggufkit.archs.ministral3 import Ministral3
from ggufkit.archs.wrapper import TextOfMultimodal
from ggufkit.errors import InputError

TEXT_CONFIGS = {"ministral3": "Ministral3Config", "mistral": "MistralConfig"}  # text model_type -> config class


class Mistral3(TextOfMultimodal, Ministral3):
    model_type = "mistral3"

    def __init__(self, config: dict, config_path):
        text = config.get("text_config")
        if isinstance(text, dict):
            kind = text.get("model_type", "mistral")  # Mistral3Config's default text model
            if kind not in TEXT_CONFIGS:
                raise InputError(f"text_config model_type {kind!r} (a mistral3 wrapper converts a "
                                 f"{' or '.join(TEXT_CONFIGS)} text model)", config_path)
            self.text_config_class = TEXT_CONFIGS[kind]
        super().__init__(config, config_path)
