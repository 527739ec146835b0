"""MXFP4 checkpoints (gpt-oss releases) as input (issue 15): the `*_blocks` / `*_scales` experts.

The fixture is the tiny gpt-oss checkpoint with its experts quantized by llama.cpp's own MXFP4 reference
quantizer and repacked into the released layout (prequant_fixtures.mxfp4_checkpoint); transformers reads it
back with its mxfp4 integration (dequantized on the CPU), which is the reference for the F32 output and the
logits. Under `--scheme source` the experts become GGUF MXFP4 blocks equal, byte for byte, to the reference
quantizer's, whose values (gguf-py's dequantize) are transformers' bit for bit."""
from __future__ import annotations

import gguf
import numpy as np
import pytest
from convert_fixtures import converted, tensor_table
from prequant_fixtures import assert_logits_agree, mxfp4_checkpoint, mxfp4_reference

QT = gguf.GGMLQuantizationType


@pytest.fixture(scope="module")
def model(tiny_checkpoint):
    return mxfp4_checkpoint(tiny_checkpoint("gpt-oss"))


@pytest.fixture(scope="module")
def reference(model):
    return mxfp4_reference(model)


def test_f32_experts_equal_transformers_dequantize(model, reference):
    table = {n: d for n, _, d in tensor_table(converted(model, "f32"))}
    assert len(reference) == 2 * 3
    for name, w in reference.items():
        ours = table[name].view(np.float32).reshape(w.shape)
        assert np.array_equal(ours.view(np.uint32), w.view(np.uint32)), f"{name}: {np.count_nonzero(ours != w)} differ"


def test_source_scheme_keeps_the_mxfp4_blocks(model, reference, tiny_checkpoint):
    from ggml_ref import ggml_quantize
    from safetensors.torch import load_file

    table = {n: (t, d) for n, t, d in tensor_table(converted(model, "source"))}
    for name, w in reference.items():
        qtype, data = table[name]
        assert qtype == QT.MXFP4, f"{name}: {QT(qtype).name}"
        values = gguf.quants.dequantize(np.asarray(data), QT.MXFP4).reshape(w.shape)
        assert np.array_equal(values, w), f"{name}: {np.count_nonzero(values != w)} values differ"
    # and the bytes are the reference quantizer's own blocks, from the original bf16 weights
    src = load_file(tiny_checkpoint("gpt-oss") / "model.safetensors")
    gate_up = src["model.layers.1.mlp.experts.gate_up_proj"].float().numpy()  # (E, n_embd, 2 n_ff)
    gate = np.ascontiguousarray(gate_up[:, :, 0::2].transpose(0, 2, 1))  # (E, n_ff, n_embd)
    want = ggml_quantize(gate.reshape(-1, gate.shape[-1]), QT.MXFP4)
    assert np.array_equal(np.asarray(table["blk.1.ffn_gate_exps.weight"][1]).reshape(want.shape), want)
    assert table["blk.0.attn_q.weight"][0] == QT.Q8_0  # everything else: the q8_0 rules


def test_other_schemes_dequantize_once(model, capsys):
    from ggufkit.conversion import convert

    convert(model, model / "x.gguf", scheme="q4_k_m", dry_run=True)
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("blk.0.ffn_up_exps.weight"))
    assert line.endswith("from mxfp4 e2m1 g32 e8m0") and "MXFP4" not in line, line


def test_llama_cpp_logits_match_transformers(model):
    print(assert_logits_agree(converted(model, "f32"), model))
