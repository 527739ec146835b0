"""GPTQ checkpoints made by GPTQModel itself (issue 15): its GPTQ (Hessian-based rounding on a few calibration
sentences) on the CPU, from the tiny untied llama (and the demo model at 4-bit g128), saved in the GPTQ v1 and v2
formats, 3/4/8 bits, symmetric and asymmetric, group sizes 32/64/128, with and without act-order (desc_act: a
permuted g_idx).

The references are GPTQModel's own: its dequantize_weight of every quantized Linear after loading the file back
(tests/gptqmodel_tool.py, in a subprocess), and the codes / zero points it unpacks on the way. ggufkit's F32
output must equal the dequantized weights bit for bit; `--scheme source` must give Q4_0 (symmetric) / Q4_1
(asymmetric) / Q8_0 (8-bit symmetric) blocks holding exactly GPTQModel's grid where the groups are whole 32-column
blocks without act-order, and dequantize act-order files once; llama.cpp's logits from the F32 file must agree
with transformers' f32 forward on GPTQModel's dequantized weights."""
from __future__ import annotations

import json

import gguf
import numpy as np
import pytest
from convert_fixtures import converted, llama_cpp_logits, tensor_table, text_ids
from prequant_fixtures import (
    awq_model_logits,
    gptqmodel_checkpoint,
    gptqmodel_grid,
    gptqmodel_missing,
    gptqmodel_reference,
    to_gguf_layout,
)

if gptqmodel_missing():
    pytest.skip(gptqmodel_missing(), allow_module_level=True)

QT = gguf.GGMLQuantizationType
# (bits, group size, symmetric, desc_act, format)
VARIANTS = [(4, 128, True, False, "gptq"), (4, 32, False, False, "gptq_v2"), (4, 64, False, False, "gptq"),
            (4, 128, True, True, "gptq"), (4, 32, False, True, "gptq_v2"), (8, 128, True, False, "gptq"),
            (3, 32, False, False, "gptq")]


def _id(v) -> str:
    return f"int{v[0]}-g{v[1]}-{'sym' if v[2] else 'asym'}{'-act' if v[3] else ''}-{v[4]}"


def _lossless(bits, group, symmetric, desc_act):
    if desc_act or group % 32:
        return None
    return {(4, True): QT.Q4_0, (4, False): QT.Q4_1, (8, True): QT.Q8_0}.get((bits, symmetric))


# the demo model too, at the common hub setting (its 576 columns leave a last group of 64: a ragged group)
DEMO = (4, 128, True, False, "gptq")


@pytest.fixture(scope="module", params=[*VARIANTS, ("demo", DEMO)],
                ids=[*(_id(v) for v in VARIANTS), "demo-" + _id(DEMO)])
def gptq(request, tiny_checkpoint, demo_dir):
    if request.param[0] == "demo":
        return DEMO, gptqmodel_checkpoint(demo_dir, *DEMO)
    return request.param, gptqmodel_checkpoint(tiny_checkpoint("llama-untied"), *request.param)


def _config(model) -> dict:
    return json.loads((model / "config.json").read_text())


def test_f32_equals_gptqmodel_dequantize(gptq):
    _, model = gptq
    ref = to_gguf_layout(gptqmodel_reference(model), _config(model))
    table = {name: data for name, _, data in tensor_table(converted(model, "f32"))}
    assert len(ref) == _config(model)["num_hidden_layers"] * 7
    differ = [n for n, w in ref.items() if not np.array_equal(
        table[n].view(np.float32).reshape(w.shape).view(np.uint32), w.view(np.uint32))]
    assert not differ, f"{len(differ)} tensors differ from GPTQModel's dequantize_weight, first {differ[:1]}"


def test_act_order_files_carry_a_permuted_g_idx(gptq):
    """The fixture really is act-order (else the F32 test above would not cover g_idx)."""
    (_, group, _, desc_act, _), model = gptq
    permuted = [n for n, (_, _, _, g_idx) in gptqmodel_grid(model).items()
                if not np.array_equal(g_idx, np.arange(g_idx.size) // group)]
    assert bool(permuted) == desc_act, f"{len(permuted)} modules have a permuted g_idx"


def test_source_scheme_holds_the_grid(gptq):
    """Q4_0: d * (q - 8) with d GPTQModel's f16 scale, exactly its grid (GPTQModel's own values are those rounded
    to f16). Q4_1: d * q + m, m = -d * zero rounded to f16 (within half an f16 ulp of m of GPTQModel's values,
    plus its own f16 rounding). Q8_0: d * (q - 128). Act-order and other grids: dequantized once (Q8_0 from the
    F32 values), never a lossless claim."""
    (bits, group, symmetric, desc_act, _), model = gptq
    config = _config(model)
    expected = _lossless(bits, group, symmetric, desc_act)
    ref = to_gguf_layout(gptqmodel_reference(model), config)
    forms, bounds = {}, {}
    for name, (q, scale, zero, g_idx) in gptqmodel_grid(model).items():
        s, z = scale[:, g_idx], zero[:, g_idx]  # (rows, cols)
        if expected == QT.Q4_1:
            forms[name] = s * q + (-(s * z)).astype(np.float16).astype(np.float32)
            bounds[name] = 2.0 ** -11 * (np.abs(s * z) + np.abs(s * (q - z)))
        else:
            forms[name] = s * (q.astype(np.float32) - z)  # exact in f32
    forms, bounds = to_gguf_layout(forms, config), to_gguf_layout(bounds, config)
    table = {n: (t, d) for n, t, d in tensor_table(converted(model, "source"))}
    worst = 0.0
    for name, w in ref.items():
        qtype, data = table[name]
        if expected is None:
            assert qtype == QT.Q8_0, f"{name}: {QT(qtype).name}"  # quantized once from the f32 values
            continue
        assert qtype == expected, f"{name}: {QT(qtype).name}, expected {expected.name}"
        ours = gguf.quants.dequantize(np.asarray(data), expected).reshape(w.shape)
        assert np.array_equal(ours, forms[name]), f"{name}: {np.count_nonzero(ours != forms[name])} values differ"
        if expected == QT.Q4_1:
            assert np.all(np.abs(ours - w) <= bounds[name]), f"{name}: max |diff| {np.abs(ours - w).max()}"
        else:
            assert np.array_equal(ours.astype(np.float16).astype(np.float32), w), name
        worst = max(worst, float(np.abs(ours - w).max()))
    print(f"{model.name}: " + (f"{expected.name}, worst |ours - GPTQModel| {worst:.3g}" if expected else
                                  "no lossless type: Q8_0 from the F32 values"))


def test_dry_run_names_the_source(gptq, capsys):
    from ggufkit.conversion import convert

    (bits, group, symmetric, desc_act, fmt), model = gptq
    convert(model, model / "x.gguf", scheme="source", dry_run=True)
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("blk.1.ffn_down.weight"))
    source = (f"from gptq{'' if fmt == 'gptq' else ' v2'} int{bits} g{group} {'sym' if symmetric else 'asym'}"
              f"{' act-order' if desc_act else ''}")
    lossless = _lossless(bits, group, symmetric, desc_act) is not None
    assert line.endswith(source + ("  lossless" if lossless else "")), line


@pytest.mark.parametrize("variant", [VARIANTS[0], VARIANTS[4]], ids=[_id(VARIANTS[0]), _id(VARIANTS[4])])
def test_llama_cpp_logits_match_the_gptq_model(tiny_checkpoint, variant):
    model = gptqmodel_checkpoint(tiny_checkpoint("llama-untied"), *variant)
    ids = text_ids(model)
    ours = llama_cpp_logits(converted(model, "f32"), ids)
    ref = awq_model_logits(model, gptqmodel_reference(model), ids)
    diff = np.abs(ours - ref)
    top1 = ours.argmax(-1) == ref.argmax(-1)
    # a random tiny model has near-ties: a differing top-1 must be one (both tokens within the largest |diff| of
    # each other in transformers' logits)
    rows = np.flatnonzero(~top1)
    gaps = ref[rows, ref.argmax(-1)[rows]] - ref[rows, ours.argmax(-1)[rows]]
    summary = (f"top-1 {top1.mean():.3f} (gaps where not {np.round(gaps, 5).tolist()}), median "
               f"{np.median(diff):.5f}, max {diff.max():.5f}")
    print(summary)
    assert top1.mean() >= 0.95 and np.all(gaps <= 2 * diff.max()), summary
    assert np.median(diff) < 0.01 and diff.max() < 0.05, summary
