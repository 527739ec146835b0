"""compressed-tensors pack-quantized checkpoints as input (issue 15), and the lossless paths into GGUF blocks.

Fixtures are made by compressed-tensors itself (its calculate_qparams and PackedQuantizationCompressor) from the
demo model. ggufkit's F32 output must equal compressed-tensors' own decompress bit for bit; `--scheme source`
must store 4-bit symmetric groups as Q4_0 and asymmetric ones as Q4_1 (8-bit symmetric as Q8_0) whose values,
dequantized by gguf-py, are the source grid scale * (q - zero) exactly (Q4_1: up to the f16 rounding of its
minimum, measured here); llama.cpp's logits must agree with transformers running the compressed-tensors model."""
from __future__ import annotations

import json

import gguf
import numpy as np
import pytest
from convert_fixtures import converted, tensor_table
from prequant_fixtures import (
    assert_logits_agree,
    ct_dequantized_load,
    ct_grid,
    ct_packed_checkpoint,
    ct_reference,
    to_gguf_layout,
)

pytest.importorskip("compressed_tensors")

# (bits, symmetric, group size or None for per channel, scale dtype)
VARIANTS = [(4, True, 32, "float16"), (4, False, 64, "bfloat16"), (8, True, None, "float16"),
            (3, False, 32, "float16"), (2, True, 64, "bfloat16")]
LOSSLESS = {(4, True): gguf.GGMLQuantizationType.Q4_0, (4, False): gguf.GGMLQuantizationType.Q4_1,
            (8, True): gguf.GGMLQuantizationType.Q8_0}


def _id(v) -> str:
    return f"int{v[0]}-{'sym' if v[1] else 'asym'}-{v[2] or 'channel'}-{v[3]}"


@pytest.fixture(scope="module", params=VARIANTS, ids=[_id(v) for v in VARIANTS])
def ct_model(request, demo_dir):
    return request.param, ct_packed_checkpoint(demo_dir, *request.param)


def _config(model) -> dict:
    return json.loads((model / "config.json").read_text())


def test_f32_equals_compressed_tensors_decompress(ct_model):
    _, model = ct_model
    ref = to_gguf_layout(ct_reference(model), _config(model))
    assert len(ref) == 30 * 7
    table = {name: data for name, _, data in tensor_table(converted(model, "f32"))}
    differ = [n for n, w in ref.items() if not np.array_equal(
        table[n].view(np.float32).reshape(w.shape).view(np.uint32), w.view(np.uint32))]
    assert not differ, f"{len(differ)} tensors differ from compressed-tensors' decompress, first {differ[0]}"


def test_source_scheme_keeps_the_grid(ct_model):
    (bits, symmetric, _, dtype), model = ct_model
    want = LOSSLESS.get((bits, symmetric))
    table = {name: (t, data) for name, t, data in tensor_table(converted(model, "source"))}
    offset = np.float32(1 << (bits - 1))
    grid, exact = {}, {}
    for name, (q, scale, zero) in ct_grid(model).items():  # signed q and zero, as compressed-tensors unpacks them
        g = q.shape[1] // scale.shape[1]
        s, z = np.repeat(scale, g, axis=1), np.repeat(zero, g, axis=1)
        exact[name] = s * (q - z)  # the grid's values, exact in f32
        # Q4_1's form d * q + m, with q unsigned and its minimum m = -d * zero rounded to f16
        m = (-(s * (z + offset))).astype(np.float16).astype(np.float32)
        grid[name] = s * (q + offset) + m
    config = _config(model)
    exact, grid = to_gguf_layout(exact, config), to_gguf_layout(grid, config)
    library = to_gguf_layout(ct_reference(model), config)
    worst = 0.0
    for name, v in exact.items():
        qtype, data = table[name]
        if want is None:
            assert qtype == gguf.GGMLQuantizationType.Q8_0, name  # no lossless type: the q8_0 rules
            continue
        assert qtype == want, f"{name}: {gguf.GGMLQuantizationType(qtype).name}, expected {want.name}"
        ours = gguf.quants.dequantize(np.asarray(data), want).reshape(v.shape)
        if want == gguf.GGMLQuantizationType.Q4_1:
            assert np.array_equal(ours, grid[name]), f"{name}: {np.count_nonzero(ours != grid[name])} differ"
            worst = max(worst, float(np.abs(ours - v).max()))
        else:
            assert np.array_equal(ours, v), f"{name}: {np.count_nonzero(ours != v)} values differ from the grid"
            # the library's own values are this grid rounded once more, to the scale dtype
            half_ulp = 2.0 ** -11 if dtype == "float16" else 2.0 ** -8
            assert np.all(np.abs(ours - library[name]) <= np.abs(library[name]) * half_ulp), name
    print(f"{want.name if want else 'none'}: worst |GGUF - exact grid| {worst:.3g}")


def test_dry_run_shows_source_and_lossless(ct_model, capsys):
    from ggufkit.conversion import convert

    (bits, symmetric, group, _), model = ct_model
    convert(model, model / "x.gguf", scheme="source", dry_run=True)
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("blk.2.ffn_down.weight"))
    assert f"from compressed-tensors int{bits} {f'g{group}' if group else 'channel'} " \
           f"{'sym' if symmetric else 'asym'}" in line, line
    assert line.endswith("lossless") == ((bits, symmetric) in LOSSLESS), line


def test_llama_cpp_logits_match_transformers(demo_dir):
    # the reference runs the library's decompress (ct_dequantized_load): transformers' default route computes
    # with exact f32 products instead, which measured max 0.055 here (that docstring has the numbers)
    model = ct_packed_checkpoint(demo_dir, 4, True, 32, "float16")
    print(assert_logits_agree(converted(model, "f32"), model, **ct_dequantized_load()))
