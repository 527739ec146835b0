"""Every scheme: ggufkit's output equals what llama.cpp's llama_model_quantize writes from ggufkit's own F32
output of the same checkpoint (same tensors in the same order, same type and same bytes for each; in fact the
same file, byte for byte), and llama.cpp loads and runs it."""
from __future__ import annotations

import gguf
import numpy as np
import pytest
from convert_fixtures import ALL_SCHEMES, converted, llama_cpp_logits, llama_quantized, tensor_table

QT = gguf.GGMLQuantizationType
# Byte equality on the real model (tied embeddings, rows of 576: every fallback rule) and on a tiny untied one
# (output.weight rules, rows of 256); mistral and tied tiny llama differ from these in nothing the rules see.
BYTE_MODELS = ["demo", "llama-untied"]
LOAD_MODELS = ["demo", "llama", "llama-untied", "mistral"]


def checkpoint(name, demo_dir, tiny_checkpoint):
    return demo_dir if name == "demo" else tiny_checkpoint(name)


@pytest.mark.parametrize("scheme", ALL_SCHEMES)
@pytest.mark.parametrize("model", BYTE_MODELS)
def test_tensors_equal_llama_quantize(model, scheme, demo_dir, tiny_checkpoint):
    model_dir = checkpoint(model, demo_dir, tiny_checkpoint)
    ours_path, ref_path = converted(model_dir, scheme), llama_quantized(converted(model_dir, "f32"), scheme)
    ours, ref = tensor_table(ours_path), tensor_table(ref_path)
    assert [n for n, _, _ in ours] == [n for n, _, _ in ref]
    wrong_type = [(n, QT(a).name, QT(b).name) for (n, a, _), (_, b, _) in zip(ours, ref) if a != b]
    assert not wrong_type, f"{len(wrong_type)} tensor types differ (name, ours, llama.cpp): {wrong_type[:5]}"
    wrong_bytes = [(n, QT(t).name, int((a != b).sum()) if a.shape == b.shape else f"{a.size} vs {b.size} bytes")
                   for (n, t, a), (_, _, b) in zip(ours, ref) if a.shape != b.shape or not np.array_equal(a, b)]
    assert not wrong_bytes, (f"{len(wrong_bytes)} of {len(ours)} tensors differ (name, type, bytes differing): "
                             f"{wrong_bytes[:5]}")
    # and the whole file: same key-values in the same order, same layout
    assert ours_path.read_bytes() == ref_path.read_bytes(), "tensors equal, but metadata or layout differ"


@pytest.mark.parametrize("scheme", ALL_SCHEMES)
@pytest.mark.parametrize("model", LOAD_MODELS)
def test_llama_cpp_loads_and_runs(model, scheme, demo_dir, tiny_checkpoint):
    model_dir = checkpoint(model, demo_dir, tiny_checkpoint)
    logits = llama_cpp_logits(converted(model_dir, scheme), [1, 504, 327, 30, 355, 441, 288, 327])
    assert logits.shape[0] == 8 and np.isfinite(logits).all() and logits[-1].std() > 0


def test_imatrix_reaches_the_quantizer(tiny_checkpoint, tmp_path):
    """With an importance matrix, each weight's bytes equal llama.cpp's ggml_quantize_chunk on the same rows with
    the same per-column weights (source read with safetensors/torch, independently of ggufkit)."""
    import torch
    from ggml_ref import ggml_quantize
    from safetensors.torch import load_file

    from ggufkit.conversion import convert

    src = tiny_checkpoint("llama-untied")
    hf = load_file(src / "model.safetensors")
    rng = np.random.default_rng(0)
    checks = {"blk.1.ffn_down.weight": "model.layers.1.mlp.down_proj.weight",
              "blk.0.attn_v.weight": "model.layers.0.self_attn.v_proj.weight",
              "blk.0.ffn_up.weight": "model.layers.0.mlp.up_proj.weight"}
    imatrix = {name: rng.uniform(0.01, 4.0, hf[hf_name].shape[1]).astype(np.float32)
               for name, hf_name in checks.items()}
    out = convert(src, tmp_path / "im.gguf", scheme="q4_k_m", quiet=True, imatrix=imatrix)
    table = {name: (qtype, data) for name, qtype, data in tensor_table(out)}
    for name, hf_name in checks.items():
        qtype, data = table[name]
        x = hf[hf_name].to(torch.float32).numpy()
        ref = ggml_quantize(x, qtype, imatrix[name]).reshape(-1)
        plain = ggml_quantize(x, qtype).reshape(-1)
        assert np.array_equal(data, ref), f"{name} ({QT(qtype).name}): bytes differ from llama.cpp's with imatrix"
        assert not np.array_equal(data, plain), f"{name}: the imatrix made no difference"
