"""Layer-wise calibration (ggufkit.quant.calibrate): one decoder layer in memory at a time, read from the
safetensors. Its importance matrix must equal the whole-model collector's (transformers' full model with hooks,
imatrix_collect.compute), dense and mixture-of-experts, and its input covariance must equal a hand computation
from the HF weights."""
from __future__ import annotations

import numpy as np
import pytest
from convert_fixtures import SHAKESPEARE

from ggufkit.quant.calibrate import Statistics, calibrate
from ggufkit.quant.imatrix_collect import compute

CTX, CHUNKS = 64, 2


def assert_same_imatrix(a, b, rtol=1e-5):
    assert sorted(a.entries) == sorted(b.entries)
    for name in a.entries:
        ea, eb = a.entries[name], b.entries[name]
        np.testing.assert_array_equal(ea.counts, eb.counts, err_msg=name)
        np.testing.assert_allclose(ea.sums, eb.sums, rtol=rtol, atol=1e-6 * float(np.abs(eb.sums).max()),
                                   err_msg=name)
    assert (a.chunk_count, a.chunk_size) == (b.chunk_count, b.chunk_size)


@pytest.mark.parametrize("arch", ["llama", "qwen3-moe", "qwen2"])
def test_layerwise_imatrix_equals_whole_model(arch, tiny_checkpoint, tmp_path):
    src = tiny_checkpoint(arch)
    whole = compute(src, SHAKESPEARE, ctx=CTX, chunks=CHUNKS, progress=False, process_output=True)
    layered, _ = calibrate(src, SHAKESPEARE, ctx=CTX, chunks=CHUNKS, progress=False, process_output=True,
                           stats_dir=tmp_path)
    assert_same_imatrix(layered, whole)
    # every 2-D block matrix with an imatrix entry has a covariance whose diagonal is that entry
    loaded = Statistics.load(tmp_path)
    for name, e in whole.entries.items():
        if name.startswith("blk.") and e.sums.shape[0] == 1:
            h = loaded.hessian(name)
            assert h is not None, name
            np.testing.assert_allclose(np.diag(h), whole.column_weights(name), rtol=1e-4, err_msg=name)


def test_layerwise_imatrix_equals_whole_model_on_the_demo(demo_dir):
    whole = compute(demo_dir, SHAKESPEARE, ctx=128, chunks=2, progress=False)
    layered, _ = calibrate(demo_dir, SHAKESPEARE, ctx=128, chunks=2, progress=False)
    assert_same_imatrix(layered, whole)


def test_covariance_equals_a_hand_computation(tiny_checkpoint, tmp_path):
    """Layer 0's attention input is RMSNorm(embedding) * input_layernorm.weight: its x^T x, by hand from the HF
    weights, is the covariance shared by q, k and v; the MLP input of layer 0 is not that one."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = tiny_checkpoint("llama")
    _, stats = calibrate(src, SHAKESPEARE, ctx=CTX, chunks=CHUNKS, progress=False, stats_dir=tmp_path)
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    ids = AutoTokenizer.from_pretrained(src)(SHAKESPEARE.read_text(encoding="utf-8", errors="replace"))["input_ids"]
    ids = ids[:CTX * CHUNKS]  # this tokenizer adds no BOS, so the chunks are the text's first tokens
    emb = model.model.embed_tokens.weight[torch.tensor(ids)].detach().double()  # (tokens, hidden)
    w = model.model.layers[0].input_layernorm.weight.detach().double()
    x = emb * torch.rsqrt(emb.pow(2).mean(-1, keepdim=True) + model.config.rms_norm_eps) * w
    expected = (x.T @ x / x.shape[0]).numpy()
    for name in ("blk.0.attn_q.weight", "blk.0.attn_k.weight", "blk.0.attn_v.weight"):
        np.testing.assert_allclose(stats.hessian(name), expected, rtol=1e-3, atol=1e-5 * np.abs(expected).max())
    assert stats.groups["blk.0.attn_q.weight"] == stats.groups["blk.0.attn_v.weight"]
    assert stats.groups["blk.0.ffn_gate.weight"] == stats.groups["blk.0.ffn_up.weight"]
    assert stats.groups["blk.0.ffn_gate.weight"] != stats.groups["blk.0.attn_q.weight"]
    assert stats.tokens[stats.groups["blk.0.ffn_down.weight"]] == CTX * CHUNKS


def test_imatrix_command_layer_by_layer_writes_the_same_file_contents(tiny_checkpoint, tmp_path):
    from click.testing import CliRunner

    from ggufkit.cli import cli
    from ggufkit.quant import imatrix as imatrix_files

    src = tiny_checkpoint("llama")
    out = tmp_path / "layers.imatrix.gguf"
    run = CliRunner().invoke(cli, ["imatrix", str(src), "--text", str(SHAKESPEARE), "--ctx", str(CTX), "--chunks",
                                   str(CHUNKS), "--layer-by-layer", "-o", str(out), "--quiet"])
    assert run.exit_code == 0, run.output
    assert_same_imatrix(imatrix_files.load(out), compute(src, SHAKESPEARE, ctx=CTX, chunks=CHUNKS, progress=False))
