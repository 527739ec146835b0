"""Pre-quantized checkpoints of the demo model made by the real tools on CPU (bitsandbytes through transformers'
BitsAndBytesConfig, ...), cached per test session, and the references they are checked against: each library's
own dequantization of every quantized weight, mapped to GGUF names and llama.cpp's row order."""
from __future__ import annotations

import functools
import shutil
from pathlib import Path

import numpy as np
from convert_fixtures import OUT_DIR

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json")


def _copy_tokenizer(src: Path, dst: Path) -> None:
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copy(src / name, dst / name)


@functools.cache
def bnb_checkpoint(demo_dir: Path, kind: str, double_quant: bool = False, dtype: str = "float32") -> Path:
    """transformers + bitsandbytes (CPU backend): the demo model loaded with BitsAndBytesConfig and saved.
    kind: "nf4", "fp4" or "int8"."""
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    out = OUT_DIR / f"bnb-{kind}{'-dq' if double_quant else ''}-{dtype}"
    torch_dtype = getattr(torch, dtype)
    if kind == "int8":
        cfg = BitsAndBytesConfig(load_in_8bit=True)
    else:
        cfg = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=kind, bnb_4bit_use_double_quant=double_quant,
                                 bnb_4bit_compute_dtype=torch_dtype)
    model = AutoModelForCausalLM.from_pretrained(demo_dir, quantization_config=cfg, device_map="cpu",
                                                 dtype=torch_dtype)
    model.save_pretrained(out)
    _copy_tokenizer(demo_dir, out)
    return out


def bnb_reference(model_dir: Path) -> dict[str, np.ndarray]:
    """{HF weight name: (rows, cols) f32} for every bitsandbytes-quantized weight, dequantized by bitsandbytes
    (transformers' dequantize_bnb_weight: bitsandbytes.functional.dequantize_4bit / int8_vectorwise_dequant)."""
    from transformers import AutoModelForCausalLM
    from transformers.integrations.bitsandbytes import dequantize_bnb_weight

    model = AutoModelForCausalLM.from_pretrained(model_dir, device_map="cpu")
    out = {}
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if type(weight).__name__ in ("Params4bit", "Int8Params"):
            out[f"{name}.weight"] = dequantize_bnb_weight(weight, getattr(module, "state", None)).float().numpy()
    return out


def to_gguf_layout(weights: dict[str, np.ndarray], config: dict) -> dict[str, np.ndarray]:
    """HF names -> GGUF names (gguf-py's TensorNameMap), and llama.cpp's Q/K row order (each head's two rotary
    halves interleaved, as llama.cpp's converter permutes them)."""
    import gguf

    n_layer, n_head = config["num_hidden_layers"], config["num_attention_heads"]
    n_kv = config.get("num_key_value_heads", n_head)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, n_layer)
    out = {}
    for hf, w in weights.items():
        name = names.get_name(hf, try_suffixes=(".weight",))
        heads = n_head if name.endswith("attn_q.weight") else n_kv if name.endswith("attn_k.weight") else 0
        if heads:
            w = w.reshape(heads, 2, w.shape[0] // heads // 2, w.shape[1]).swapaxes(1, 2).reshape(w.shape)
        out[name] = w
    return out


def bnb_exact_cpu_path(model) -> None:
    """bitsandbytes on a CPU with AVX512-BF16 repacks 4-bit weights and multiplies in bf16 (a faster, rounded
    path), and a checkpoint saved from a bf16/f16 model computes in that dtype; switch every Linear4bit to its
    reference path in f32 (dequantize_4bit - values rounded to the state's dtype as stored - then an f32 matmul),
    which is what llama.cpp's F32 file computes too."""
    import torch

    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
            module.compute_dtype, module.compute_type_is_set = torch.float32, True
    for param in model.parameters():  # transformers keeps the unquantized parts in the checkpoint's dtype
        if param.dtype in (torch.bfloat16, torch.float16):
            param.data = param.data.float()
    for module in model.modules():  # and the rotary inverse frequencies
        for key, buf in list(module.named_buffers(recurse=False)):
            if buf.dtype in (torch.bfloat16, torch.float16):
                setattr(module, key, buf.float())
    from transformers.integrations.bitsandbytes import dequantize_bnb_weight

    for module in model.modules():
        if type(module).__name__ == "Linear8bitLt":
            # LLM.int8's forward quantizes the activations to int8 too (and splits outlier columns): no float
            # runtime computes that. Run bitsandbytes' dequantized weight in f32 instead.
            weight = dequantize_bnb_weight(module.weight, module.state).float()
            module.forward = lambda x, w=weight: torch.nn.functional.linear(x, w)


def quantized_logits(model_dir: Path, ids: list[int], prepare=None) -> np.ndarray:
    """transformers' float32 logits (n_tokens, vocab) from a pre-quantized checkpoint, run by its library."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, device_map="cpu")
    model.eval()
    if prepare is not None:
        prepare(model)
    with torch.no_grad():
        return model(torch.tensor([list(ids)])).logits[0].float().numpy()


def assert_logits_agree(gguf_path: Path, model_dir: Path, prepare=None) -> str:
    """llama.cpp on gguf_path vs transformers on the quantized model_dir: the families runner's tolerances."""
    from convert_fixtures import llama_cpp_logits, text_ids

    ids = text_ids(model_dir)
    ours = llama_cpp_logits(gguf_path, ids)
    ref = quantized_logits(model_dir, ids, prepare)
    diff = np.abs(ours - ref)
    top1 = (ours.argmax(-1) == ref.argmax(-1)).mean()
    summary = f"top-1 agreement {top1:.3f}, median |diff| {np.median(diff):.5f}, max {diff.max():.5f}"
    assert top1 == 1.0, summary
    assert np.median(diff) < 0.01, summary
    assert diff.max() < 0.05, summary
    return summary
