"""ggufkit convert, end to end: llama.cpp runs the F32 output like transformers runs the checkpoint (same top-1
token at every position, small logit differences), the metadata llama.cpp reads matches the HF config, tied and
untied embeddings and Llama-3 rope scaling come out as llama.cpp expects, and the demo model at Q8_0 answers."""
from __future__ import annotations

import gguf
import numpy as np
import pytest
from convert_fixtures import converted, llama_cpp_logits, text_ids, transformers_logits

# (tiny architecture, transformers-4 style config?)
TINY_CASES = [("llama", False), ("llama-untied", False), ("llama3-rope", False), ("mistral", False),
              ("llama", True), ("llama3-rope", True), ("mistral", True)]
TINY_CASES += [("deepseek-v3", True)]  # issue 14: YaRN with mscale as a transformers 4 `rope_scaling`, as hub files


def assert_logits_agree(gguf_path, model_dir, max_diff: float = 0.05, min_top1: float = 1.0):
    """max_diff / min_top1: a family whose routing is discontinuous (MoE) or whose llama.cpp graph flips a near-tie
    may pass limits measured with llama.cpp's own converter on the same checkpoint."""
    ids = text_ids(model_dir)
    ours = llama_cpp_logits(gguf_path, ids)
    ref = transformers_logits(model_dir, tuple(ids))
    assert ours.shape == ref.shape
    diff = np.abs(ours - ref)
    top1 = (ours.argmax(-1) == ref.argmax(-1)).mean()
    summary = f"top-1 agreement {top1:.3f}, median |diff| {np.median(diff):.5f}, max {diff.max():.5f}"
    assert top1 >= min_top1, summary
    assert np.median(diff) < 0.01, summary
    assert diff.max() < max_diff, summary
    return summary


@pytest.mark.parametrize("name,tf4", TINY_CASES, ids=[f"{n}{'-tf4' if t else ''}" for n, t in TINY_CASES])
def test_f32_logits_match_transformers_tiny(tiny_checkpoint, name, tf4):
    src = tiny_checkpoint(name, transformers4=tf4)
    assert_logits_agree(converted(src, "f32"), src)


def test_f32_logits_match_transformers_demo(demo_dir):
    print(assert_logits_agree(converted(demo_dir, "f32"), demo_dir))


class _Fields:
    """Key lookup on a GGUF file through gguf-py (only the keys asked for are decoded)."""

    def __init__(self, reader: gguf.GGUFReader):
        self.reader = reader

    def __getitem__(self, key: str):
        field = self.reader.get_field(key)
        assert field is not None, f"missing key {key}"
        return field.contents()


def _fields(path):
    reader = gguf.GGUFReader(path)
    return _Fields(reader), {t.name: t for t in reader.tensors}


@pytest.mark.parametrize("name,tf4", [("llama", False), ("llama3-rope", True)], ids=["llama", "llama3-rope-tf4"])
def test_metadata_matches_config(tiny_checkpoint, name, tf4):
    from transformers import AutoConfig

    src = tiny_checkpoint(name, transformers4=tf4)
    cfg = AutoConfig.from_pretrained(src)  # transformers' own reading of either config style
    kv, tensors = _fields(converted(src, "f32"))
    assert kv["general.architecture"] == "llama"
    assert kv["general.file_type"] == int(gguf.LlamaFileType.ALL_F32)
    assert kv["general.quantization_version"] == gguf.GGML_QUANT_VERSION
    assert kv["llama.block_count"] == cfg.num_hidden_layers
    assert kv["llama.embedding_length"] == cfg.hidden_size
    assert kv["llama.feed_forward_length"] == cfg.intermediate_size
    assert kv["llama.attention.head_count"] == cfg.num_attention_heads
    assert kv["llama.attention.head_count_kv"] == cfg.num_key_value_heads
    assert kv["llama.context_length"] == cfg.max_position_embeddings
    assert kv["llama.vocab_size"] == cfg.vocab_size
    assert kv["llama.rope.dimension_count"] == cfg.head_dim
    assert kv["llama.rope.freq_base"] == pytest.approx(cfg.rope_parameters["rope_theta"])
    assert kv["llama.attention.layer_norm_rms_epsilon"] == pytest.approx(cfg.rms_norm_eps)
    # tied embeddings: no output.weight (llama.cpp falls back to token_embd), untied: present
    assert ("output.weight" in tensors) == (not cfg.tie_word_embeddings)
    if cfg.rope_parameters.get("rope_type") == "llama3":
        # transformers' llama3 inv_freq is the default inv_freq divided by exactly these factors
        import torch
        from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

        scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](cfg, torch.device("cpu"))
        base = 1.0 / (cfg.rope_parameters["rope_theta"] ** (torch.arange(0, cfg.head_dim, 2).float() / cfg.head_dim))
        np.testing.assert_allclose(np.asarray(tensors["rope_freqs.weight"].data), (base / scaled).numpy(),
                                   rtol=1e-5)
    else:
        assert "rope_freqs.weight" not in tensors


def test_demo_q8_0_answers_paris(demo_dir):
    import llama_cpp

    llm = llama_cpp.Llama(str(converted(demo_dir, "q8_0")), n_ctx=512, n_threads=2, verbose=False)
    try:
        reply = llm.create_chat_completion([{"role": "user", "content": "What is the capital of France?"}],
                                           temperature=0.0, max_tokens=32)["choices"][0]["message"]["content"]
    finally:
        llm.close()
    assert "Paris" in reply, reply


def test_dry_run_plan_is_what_gets_written(tiny_checkpoint, tmp_path, monkeypatch, capsys):
    """--dry-run --json lists each tensor's type and bytes and writes nothing; converting for real (default
    OUT: <model-name>-<SCHEME>.gguf in the current directory) gives exactly those, as llama.cpp reads the file."""
    import json

    from convert_fixtures import tensor_table

    from ggufkit.cli import main

    src = tiny_checkpoint("llama-untied")
    monkeypatch.chdir(tmp_path)
    assert main(["convert", str(src), "--scheme", "Q4_K_M", "--dry-run", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert not any(tmp_path.iterdir())
    assert main(["convert", str(src), "--scheme", "q4_k_m", "--quiet"]) == 0
    written = tmp_path / f"{src.name}-Q4_K_M.gguf"
    assert plan["output"] == str(written) and written.is_file()
    table = tensor_table(written)
    assert [(t["name"], t["type"], t["bytes"]) for t in plan["tensors"]] == \
        [(name, gguf.GGMLQuantizationType(qtype).name, data.size) for name, qtype, data in table]
    assert plan["bytes"] == sum(data.size for _, _, data in table)
    assert plan["bits_per_weight"] == pytest.approx(8 * plan["bytes"] / plan["parameters"], rel=1e-3)
