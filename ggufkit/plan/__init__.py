"""What each tensor becomes: llama-quantize's schemes as data."""
