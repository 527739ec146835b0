"""Where tensors come from: Hugging Face checkpoints (hf), GGUF files (gguf)."""
