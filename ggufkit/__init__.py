"""ggufkit: Hugging Face checkpoints to llama.cpp GGUF files in one streaming pass, and a runtime for them.

The library calls (ggufkit.api; imported on first use, so `import ggufkit` stays cheap):
    llm = ggufkit.load("HuggingFaceTB/SmolLM2-135M-Instruct", scheme="q4_k_m")   # a ready llama_cpp.Llama
    ggufkit.convert("./model", "model-Q4_K_M.gguf", scheme="q4_k_m", calibration="text.txt")
    im = ggufkit.imatrix("./model", "text.txt", out="model.imatrix.gguf")
    report = ggufkit.fit("./model", "rpi5-8gb", ctx=4096)
    ggufkit.quantize("model-BF16.gguf", "model-Q4_K_M.gguf", scheme="q4_k_m", tensor_types=["attn_v=q8_0"])
"""

__version__ = "0.1.0"
__all__ = ["__version__", "convert", "fit", "imatrix", "load", "quantize"]
_API = {"load", "convert", "imatrix", "fit", "quantize"}


def __getattr__(name: str):
    if name in _API:
        from ggufkit import api

        return getattr(api, name)
    raise AttributeError(f"module 'ggufkit' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | _API)
