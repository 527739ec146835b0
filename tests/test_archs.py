"""One runner for every architecture: a tiny random checkpoint of each family (transformers' own config and model
classes, models/tiny.py) converts to F32, F16, Q8_0 and Q4_K_M; llama.cpp loads and runs each; the F32 logits
match transformers' float32 logits on 64 tokens of real text; the Q4_K_M tensors (types and bytes) equal what
llama.cpp's llama_model_quantize writes from ggufkit's own F32 file. Adding a family = one line in FAMILIES.
Plus: configs with a feature the converter does not handle fail with a one-line error naming it."""
from __future__ import annotations

import json

import gguf
import numpy as np
import pytest
from convert_fixtures import converted, llama_cpp_logits, llama_quantized, text_ids, transformers_logits

from ggufkit.errors import InputError

# (tiny checkpoint in models/tiny.py, GGUF architecture llama.cpp must see)
FAMILIES = [
    ("llama", "llama"),
    ("mistral", "llama"),
    ("qwen2", "qwen2"),
    ("qwen3", "qwen3"),
    ("gemma2", "gemma2"),
    ("gemma3", "gemma3"),
    ("phi-mini", "phi3"),
    ("phi-mini-longrope", "phi3"),
]
SCHEMES = ["f32", "f16", "q8_0", "q4_k_m"]
IDS = [name for name, _ in FAMILIES]


@pytest.fixture(params=FAMILIES, ids=IDS)
def family(request, tiny_checkpoint):
    name, arch = request.param
    return tiny_checkpoint(name), arch


def gguf_tensors(path):
    """[(name, type, raw bytes)] in file order, read with gguf-py."""
    return [(t.name, gguf.GGMLQuantizationType(t.tensor_type), np.asarray(t.data).view(np.uint8).reshape(-1))
            for t in gguf.GGUFReader(path).tensors]


def test_f32_logits_match_transformers(family):
    src, _ = family
    ids = text_ids(src)
    ours = llama_cpp_logits(converted(src, "f32"), ids)  # (64, vocab) f32
    ref = transformers_logits(src, tuple(ids))
    assert ours.shape == ref.shape
    diff = np.abs(ours - ref)
    top1 = (ours.argmax(-1) == ref.argmax(-1)).mean()
    summary = f"top-1 agreement {top1:.3f}, median |diff| {np.median(diff):.5f}, max {diff.max():.5f}"
    assert top1 == 1.0, summary
    assert np.median(diff) < 0.01, summary
    assert diff.max() < 0.05, summary


@pytest.mark.parametrize("scheme", SCHEMES)
def test_llama_cpp_loads_and_runs(family, scheme):
    import llama_cpp

    src, arch = family
    path = converted(src, scheme)
    llm = llama_cpp.Llama(str(path), n_ctx=64, n_threads=2, logits_all=True, verbose=False)
    try:
        assert llm.metadata["general.architecture"] == arch
        tokens = llm.tokenize(b"To be, or not to be", add_bos=False)
        llm.eval(tokens)
        logits = np.array(llm.scores[len(tokens) - 1])
    finally:
        llm.close()
    assert np.isfinite(logits).all() and logits.std() > 0


def test_q4_k_m_equals_llama_quantize(family):
    src, _ = family
    ours = gguf_tensors(converted(src, "q4_k_m"))
    ref = gguf_tensors(llama_quantized(converted(src, "f32"), "q4_k_m"))
    assert [n for n, _, _ in ours] == [n for n, _, _ in ref]
    wrong_type = [(n, a.name, b.name) for (n, a, _), (_, b, _) in zip(ours, ref) if a != b]
    assert not wrong_type, f"{len(wrong_type)} tensor types differ (name, ours, llama.cpp): {wrong_type[:5]}"
    wrong_bytes = [n for (n, _, a), (_, _, b) in zip(ours, ref) if a.shape != b.shape or not np.array_equal(a, b)]
    assert not wrong_bytes, f"{len(wrong_bytes)} of {len(ours)} tensors differ: {wrong_bytes[:5]}"


# ---- refused configs: one line naming the feature, before any tensor is read


def _config(tiny_checkpoint, name: str, **changes) -> dict:
    config = json.loads((tiny_checkpoint(name) / "config.json").read_text())
    return config | changes


REFUSED = [
    # (tiny checkpoint, config changes, words the error must contain)
    ("qwen2", {"use_sliding_window": True}, "use_sliding_window"),
    ("qwen2", {"rope_parameters": {"rope_type": "llama3", "factor": 8.0, "rope_theta": 1e6}}, "rope type"),
    ("qwen3", {"num_experts": 8}, "mixture of experts"),
    ("gemma2", {"query_pre_attn_scalar": 256}, "query_pre_attn_scalar"),
    ("gemma2", {"final_logit_softcapping": None}, "final_logit_softcapping"),
    ("gemma2", {"tie_word_embeddings": False}, "tie_word_embeddings"),
    ("gemma2", {"hidden_activation": "relu"}, "hidden_activation"),
    ("gemma3", {"attn_logit_softcapping": 50.0}, "attn_logit_softcapping"),
    ("phi-mini", {"rope_parameters": {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 1e4}}, "rope type"),
    ("phi-mini", {"hidden_act": "gelu"}, "hidden_act"),
]


@pytest.mark.parametrize("name,changes,words", REFUSED, ids=[f"{n}-{w}" for n, _, w in REFUSED])
def test_unhandled_feature_is_refused(tiny_checkpoint, tmp_path, name, changes, words):
    from ggufkit.archs import for_config

    path = tmp_path / "config.json"
    with pytest.raises(InputError) as err:
        for_config(_config(tiny_checkpoint, name, **changes), path)
    message = str(err.value)
    assert words in message and "\n" not in message, message
