"""ggufkit: Hugging Face checkpoints to llama.cpp GGUF files in one streaming pass, and a runtime for them."""

__version__ = "0.1.0"
