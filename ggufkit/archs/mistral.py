"""Mistral: HF `model_type` "mistral" -> GGUF arch "llama" (llama.cpp runs it as a llama: same tensors, same
Q/K reordering). The one Mistral-only config field, `sliding_window`, is not representable in llama.cpp's llama
arch; llama.cpp's own converter drops it too, so attention is exact up to the window length (4096 in Mistral
7B v0.1; None - i.e. full attention - from v0.2 on)."""
from __future__ import annotations

from ggufkit.archs.llama import Llama


class Mistral(Llama):
    model_type = "mistral"
