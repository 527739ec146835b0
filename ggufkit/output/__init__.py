"""Writing GGUF files: streaming, atomic."""
