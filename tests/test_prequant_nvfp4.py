"""compressed-tensors nvfp4-pack-quantized checkpoints as input (issue 15): fp4 e2m1 values, e4m3 scales per
group of 16, an f32 global scale.

The fixture is made by compressed-tensors itself (its NVFP4A16 preset, generate_gparam, calculate_qparams and
NVFP4PackedCompressor.compress) from the demo model. ggufkit's F32 output must equal the library's own
decompress bit for bit. No GGUF type holds the grid with its global scale (GGUF's NVFP4 needs a separate
`.scale` tensor that llama_model_quantize cannot carry), so every scheme, `source` included, dequantizes once."""
from __future__ import annotations

import json

import gguf
import numpy as np
import pytest
from convert_fixtures import converted, tensor_table
from prequant_fixtures import (
    assert_logits_agree,
    ct_dequantized_load,
    ct_nvfp4_checkpoint,
    ct_nvfp4_reference,
    to_gguf_layout,
)

pytest.importorskip("compressed_tensors")


@pytest.fixture(scope="module")
def model(demo_dir):
    return ct_nvfp4_checkpoint(demo_dir)


def test_f32_equals_compressed_tensors_decompress(model):
    ref = to_gguf_layout(ct_nvfp4_reference(model), json.loads((model / "config.json").read_text()))
    assert len(ref) == 30 * 7
    table = {name: data for name, _, data in tensor_table(converted(model, "f32"))}
    differ = [n for n, w in ref.items() if not np.array_equal(
        table[n].view(np.float32).reshape(w.shape).view(np.uint32), w.view(np.uint32))]
    assert not differ, f"{len(differ)} tensors differ from compressed-tensors' decompress, first {differ[0]}"


def test_source_scheme_dequantizes_once(model, capsys):
    from ggufkit.conversion import convert

    convert(model, model / "x.gguf", scheme="source", dry_run=True)
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("blk.3.ffn_up.weight"))
    assert " Q8_0 " in line and line.endswith("from compressed-tensors nvfp4 g16"), line
    types = {t for n, t, _ in tensor_table(converted(model, "source")) if n.endswith("ffn_up.weight")}
    assert types == {gguf.GGMLQuantizationType.Q8_0}


def test_llama_cpp_logits_match_transformers(model):
    # transformers' default route decompresses nvfp4 at the first forward into bf16 weights (the library's
    # unpacked dtype), which an f32 forward refuses; its dequantize=True route loads decompress's values
    print(assert_logits_agree(converted(model, "f32"), model, **ct_dequantized_load()))
