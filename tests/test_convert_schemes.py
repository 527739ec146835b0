"""Every scheme: ggufkit's output equals what llama.cpp's llama_model_quantize writes from ggufkit's own F32
output of the same checkpoint (same tensors in the same order, same type and same bytes for each), and
llama.cpp loads and runs it."""
from __future__ import annotations

import gguf
import numpy as np
import pytest
from convert_fixtures import ALL_SCHEMES, converted, llama_cpp_logits, llama_quantized, tensor_table

QT = gguf.GGMLQuantizationType
MODELS = ["demo", "llama", "llama-untied", "mistral"]


@pytest.fixture(params=MODELS)
def model_dir(request, demo_dir, tiny_checkpoint):
    return demo_dir if request.param == "demo" else tiny_checkpoint(request.param)


@pytest.mark.parametrize("scheme", ALL_SCHEMES)
def test_tensors_equal_llama_quantize(model_dir, scheme):
    ours = tensor_table(converted(model_dir, scheme))
    ref = tensor_table(llama_quantized(converted(model_dir, "f32"), scheme))
    assert [n for n, _, _ in ours] == [n for n, _, _ in ref]
    wrong_type = [(n, QT(a).name, QT(b).name) for (n, a, _), (_, b, _) in zip(ours, ref) if a != b]
    assert not wrong_type, f"{len(wrong_type)} tensor types differ (name, ours, llama.cpp): {wrong_type[:5]}"
    wrong_bytes = [(n, QT(t).name, int((a != b).sum()) if a.shape == b.shape else f"{a.size} vs {b.size} bytes")
                   for (n, t, a), (_, _, b) in zip(ours, ref) if a.shape != b.shape or not np.array_equal(a, b)]
    assert not wrong_bytes, (f"{len(wrong_bytes)} of {len(ours)} tensors differ (name, type, bytes differing): "
                             f"{wrong_bytes[:5]}")


@pytest.mark.parametrize("scheme", ALL_SCHEMES)
def test_llama_cpp_loads_and_runs(model_dir, scheme):
    logits = llama_cpp_logits(converted(model_dir, scheme), [1, 504, 327, 30, 355, 441, 288, 327])
    assert logits.shape[0] == 8 and np.isfinite(logits).all() and logits[-1].std() > 0
