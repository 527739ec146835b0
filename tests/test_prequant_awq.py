"""AWQ checkpoints as input (issue 15): AutoAWQ's GEMM and GEMV packings (qweight / qzeros / scales, the AWQ
nibble order of GEMM), lossless to Q4_1 where the group is a multiple of 32.

Fixtures are made by AutoAWQ 0.2.9 itself on the CPU (its activation-aware scale search on a few calibration
sentences, its packing, its save_quantized) from the tiny untied llama. The reference is AutoAWQ's own
dequantize_gemm of the GEMM file; AutoAWQ has no CPU dequantize for GEMV, so the GEMV file of the same
(deterministic) run is checked against the GEMM file's dequantization: the same grid, packed the other way."""
from __future__ import annotations

import json

import gguf
import numpy as np
import pytest
from convert_fixtures import converted, llama_cpp_logits, tensor_table, text_ids
from prequant_fixtures import awq_checkpoint, awq_grid, awq_model_logits, awq_reference, to_gguf_layout

pytest.importorskip("awq")

QT = gguf.GGMLQuantizationType
VARIANTS = [("gemm", 64), ("gemv", 64), ("gemm", 16)]


@pytest.fixture(scope="module")
def tiny(tiny_checkpoint):
    return tiny_checkpoint("llama-untied")


def _reference(tiny, group_size: int) -> dict[str, np.ndarray]:
    model = awq_checkpoint(tiny, "gemm", group_size)
    return to_gguf_layout(awq_reference(model), json.loads((model / "config.json").read_text()))


def _f32(path) -> dict[str, np.ndarray]:
    return {name: data for name, _, data in tensor_table(path)}


@pytest.mark.parametrize("version,group_size", VARIANTS, ids=[f"{v}-g{g}" for v, g in VARIANTS])
def test_f32_equals_autoawq_dequantize(tiny, version, group_size):
    ref = _reference(tiny, group_size)
    table = _f32(converted(awq_checkpoint(tiny, version, group_size), "f32"))
    assert len(ref) == 2 * 7
    differ = [n for n, w in ref.items() if not np.array_equal(
        table[n].view(np.float32).reshape(w.shape).view(np.uint32), w.view(np.uint32))]
    assert not differ, f"{len(differ)} tensors differ from AutoAWQ's dequantize_gemm, first {differ[:1]}"


@pytest.mark.parametrize("version,group_size", VARIANTS, ids=[f"{v}-g{g}" for v, g in VARIANTS])
def test_source_scheme_is_q4_1_within_the_f16_minimum(tiny, version, group_size):
    """Q4_1 holds d * q + m with d the AWQ scale (an f16) and m = -scale * zero rounded to f16: the blocks'
    values (gguf-py's dequantize) are exactly that form of the grid AutoAWQ's unpack gives, and within the f16
    rounding of m plus the library's own f16 rounding of its products from AutoAWQ's values (worst printed)."""
    model = awq_checkpoint(tiny, version, group_size)
    gemm = awq_checkpoint(tiny, "gemm", group_size)
    config = json.loads((gemm / "config.json").read_text())
    ref = to_gguf_layout(awq_reference(gemm), config)
    forms, bounds = {}, {}
    for name, (q, scale, zero) in awq_grid(gemm).items():
        s = np.repeat(scale, group_size, axis=1)
        z = np.repeat(zero, group_size, axis=1)
        m = (-(s * z)).astype(np.float16).astype(np.float32)  # Q4_1's minimum, rounded to f16
        forms[name] = s * q + m
        bounds[name] = 2.0 ** -11 * (np.abs(s * z) + np.abs(s * (q - z)))  # half an f16 ulp of m, of the value
    forms, bounds = to_gguf_layout(forms, config), to_gguf_layout(bounds, config)
    table = {n: (t, d) for n, t, d in tensor_table(converted(model, "source"))}
    worst = 0.0
    for name, w in ref.items():
        qtype, data = table[name]
        if group_size % 32:
            assert qtype == QT.Q8_0, name  # no lossless type: quantized once from the f32 values
            continue
        assert qtype == QT.Q4_1, f"{name}: {QT(qtype).name}"
        ours = gguf.quants.dequantize(np.asarray(data), QT.Q4_1).reshape(w.shape)
        assert np.array_equal(ours, forms[name]), f"{name}: {np.count_nonzero(ours != forms[name])} values differ"
        assert np.all(np.abs(ours - w) <= bounds[name]), f"{name}: max |diff| {np.abs(ours - w).max()}"
        worst = max(worst, float(np.abs(ours - w).max()))
    print(f"awq {version} g{group_size}: worst |Q4_1 - AutoAWQ| {worst:.3g}")


def test_llama_cpp_logits_match_the_awq_model(tiny):
    model = awq_checkpoint(tiny, "gemm", 64)
    ids = text_ids(model)
    ours = llama_cpp_logits(converted(model, "f32"), ids)
    ref = awq_model_logits(model, awq_reference(model), ids)
    diff = np.abs(ours - ref)
    summary = f"top-1 {(ours.argmax(-1) == ref.argmax(-1)).mean():.3f}, median {np.median(diff):.5f}, max {diff.max():.5f}"
    print(summary)
    assert (ours.argmax(-1) == ref.argmax(-1)).mean() == 1.0, summary
    assert np.median(diff) < 0.01 and diff.max() < 0.05, summary


def test_dry_run_names_the_packing(tiny, capsys):
    from ggufkit.conversion import convert

    model = awq_checkpoint(tiny, "gemv", 64)
    convert(model, model / "x.gguf", scheme="source", dry_run=True)
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("blk.1.ffn_down.weight"))
    assert line.endswith("from awq gemv int4 g64 asym  lossless"), line
