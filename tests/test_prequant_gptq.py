"""GPTQ-format checkpoints as input (issue 15): qweight / qzeros / scales / g_idx, v1 and v2 zero points, 2-8 bits.

These fixtures hold a grid made by compressed-tensors on the demo model (prequant_fixtures.gptq_checkpoint: its
qparams, packed into GPTQ's layout with its own pack_to_int32; files made by GPTQModel itself are the subject of
test_prequant_gptqmodel.py), and the
reference is compressed-tensors' decompress of the same grid in its own format: ggufkit's F32 output of the GPTQ
file must equal it bit for bit. `--scheme source` must keep 4-bit groups as Q4_0 (v1, symmetric) / Q4_1 and
8-bit symmetric channels as Q8_0, with the bytes of the compressed-tensors file's lossless conversion."""
from __future__ import annotations

import json

import numpy as np
import pytest
from convert_fixtures import converted, tensor_table
from prequant_fixtures import ct_packed_checkpoint, ct_reference, gptq_checkpoint, to_gguf_layout

pytest.importorskip("compressed_tensors")

# (bits, symmetric, group size or None, scale dtype, v1 zero points)
VARIANTS = [(4, True, 32, "float16", True), (4, False, 64, "bfloat16", False), (3, False, 32, "float16", False),
            (8, True, None, "float16", True), (2, True, 64, "bfloat16", True)]


def _id(v) -> str:
    return f"int{v[0]}-{'sym' if v[1] else 'asym'}-{v[2] or 'channel'}-{v[3]}-{'v1' if v[4] else 'v2'}"


@pytest.fixture(scope="module", params=VARIANTS, ids=[_id(v) for v in VARIANTS])
def gptq_model(request, demo_dir):
    return request.param, gptq_checkpoint(demo_dir, *request.param), ct_packed_checkpoint(demo_dir,
                                                                                          *request.param[:4])


def test_f32_equals_the_grid_as_compressed_tensors_decompresses_it(gptq_model):
    _, model, ct = gptq_model
    ref = to_gguf_layout(ct_reference(ct), json.loads((model / "config.json").read_text()))
    table = {name: data for name, _, data in tensor_table(converted(model, "f32"))}
    differ = [n for n, w in ref.items() if not np.array_equal(
        table[n].view(np.float32).reshape(w.shape).view(np.uint32), w.view(np.uint32))]
    assert len(ref) == 30 * 7 and not differ, f"{len(differ)} tensors differ, first {differ[:1]}"


def test_source_scheme_equals_the_compressed_tensors_lossless_bytes(gptq_model):
    (bits, symmetric, *_), model, ct = gptq_model
    if (bits, symmetric) not in ((4, True), (4, False), (8, True)):
        pytest.skip("no lossless GGUF type for this grid")
    ours = {n: (t, bytes(d)) for n, t, d in tensor_table(converted(model, "source"))}
    theirs = {n: (t, bytes(d)) for n, t, d in tensor_table(converted(ct, "source"))}
    assert ours == theirs  # test_prequant_ct checks those blocks against the exact grid


def test_dry_run_names_the_format(gptq_model, capsys):
    from ggufkit.conversion import convert

    (bits, symmetric, group, _, v1), model, _ = gptq_model
    convert(model, model / "x.gguf", scheme="q4_k_m", dry_run=True)
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("blk.0.attn_v.weight"))
    assert line.removesuffix("  lossless").endswith(f"from gptq{'' if v1 else ' v2'} int{bits} {f'g{group}' if group else 'channel'} "
                         f"{'sym' if symmetric else 'asym'}"), line
