"""compressed-tensors nvfp4-pack-quantized checkpoints as input (issue 15): fp4 e2m1 values, e4m3 scales per
group of 16, an f32 global scale.

The fixture is made by compressed-tensors itself (its NVFP4A16 preset, generate_gparam, calculate_qparams and
NVFP4PackedCompressor.compress) from the demo model. ggufkit's F32 output must equal the library's own
decompress bit for bit. `--scheme source` keeps the grid: GGUF NVFP4 blocks holding the library's own fp4 values
and e4m3 scales exactly, and a `<name>.scale` companion (1 / global, f32) that llama.cpp multiplies the matmul
by; rounded to bf16 as decompress rounds, those values are decompress's bit for bit."""
from __future__ import annotations

import json

import gguf
import numpy as np
import pytest
from convert_fixtures import converted, llama_cpp_logits, tensor_table, text_ids
from prequant_fixtures import (
    assert_logits_agree,
    ct_dequantized_load,
    ct_nvfp4_checkpoint,
    ct_nvfp4_reference,
    to_gguf_layout,
)

pytest.importorskip("compressed_tensors")
QT = gguf.GGMLQuantizationType


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


def _ct_grid(model) -> dict[str, tuple[np.ndarray, np.ndarray, float]]:
    """{HF name: (fp4 values (rows, cols) f32, e4m3 scales (rows, cols/16) f32, global scale)}, unpacked by
    compressed-tensors' own unpack_fp4_from_uint8 and torch's float8_e4m3fn."""
    import torch
    from compressed_tensors.compressors.nvfp4.helpers import unpack_fp4_from_uint8
    from safetensors.torch import load_file

    state = load_file(model / "model.safetensors")
    out = {}
    for key in [k for k in state if k.endswith(".weight_packed")]:
        module = key[:-len(".weight_packed")]
        packed = state[key]
        fp4 = unpack_fp4_from_uint8(packed, packed.shape[0], packed.shape[1] * 2, dtype=torch.float32)
        out[f"{module}.weight"] = (fp4.numpy(), state[f"{module}.weight_scale"].float().numpy(),
                                   float(state[f"{module}.weight_global_scale"].float().reshape(-1)[0]))
    return out


def test_source_scheme_keeps_the_grid_as_nvfp4(model, capsys):
    import torch

    from ggufkit.conversion import convert

    convert(model, model / "x.gguf", scheme="source", dry_run=True)
    lines = capsys.readouterr().out.splitlines()
    i = next(i for i, x in enumerate(lines) if x.startswith("blk.3.ffn_up.weight"))
    assert " NVFP4 " in lines[i] and lines[i].endswith("from compressed-tensors nvfp4 g16  lossless"), lines[i]
    assert lines[i + 1].split()[:3] == ["blk.3.ffn_up.scale", "1", "F32"], lines[i + 1]
    config = json.loads((model / "config.json").read_text())
    grid = _ct_grid(model)
    exact = to_gguf_layout({n: fp4 * np.repeat(s, 16, axis=1) for n, (fp4, s, _) in grid.items()}, config)
    inv = to_gguf_layout({n: np.full((fp4.shape[0], 1), 1.0 / g) for n, (fp4, _, g) in grid.items()}, config)
    ref = to_gguf_layout(ct_nvfp4_reference(model), config)
    table = {n: (t, d) for n, t, d in tensor_table(converted(model, "source"))}
    assert len(ref) == 30 * 7
    for name, w in exact.items():
        qtype, data = table[name]
        assert qtype == QT.NVFP4, f"{name}: {QT(qtype).name}"
        ours = gguf.quants.dequantize(np.asarray(data), QT.NVFP4).reshape(w.shape)
        assert np.array_equal(ours, w), f"{name}: {np.count_nonzero(ours != w)} values differ from fp4 * e4m3"
        stype, sdata = table[name.removesuffix(".weight") + ".scale"]
        scale = sdata.view(np.float32)
        assert stype == QT.F32 and scale.shape == (1,) and scale[0] == np.float32(inv[name][0, 0]), (name, scale)
        as_bf16 = torch.from_numpy(ours * scale[0]).to(torch.bfloat16).float().numpy()
        assert np.array_equal(as_bf16, ref[name]), f"{name}: {np.count_nonzero(as_bf16 != ref[name])} differ"


def test_llama_cpp_runs_the_nvfp4_file(model):
    """llama.cpp loads the NVFP4 + `.scale` file and its logits are as close to the F32 file's (the exact values)
    as those of a Q8_0 file quantized from the same values (both multiply by Q8_0 activations; a missing or wrong
    `.scale`, a factor ~1e-3, would be far off). Measured: median |diff| 0.173 (source) vs 0.156 (q8_0)."""
    ids = text_ids(model)
    f32 = llama_cpp_logits(converted(model, "f32"), ids)
    logits = {s: llama_cpp_logits(converted(model, s), ids) for s in ("source", "q8_0")}
    diffs = {s: np.abs(x - f32) for s, x in logits.items()}
    top1 = (logits["source"].argmax(-1) == f32.argmax(-1)).mean()
    summary = f"source top-1 {top1:.3f}; " + ", ".join(f"{s}: median {np.median(d):.4f} max {d.max():.4f}"
                                                      for s, d in diffs.items())
    print(summary)
    assert top1 >= 0.95 and np.median(diffs["source"]) <= 1.5 * np.median(diffs["q8_0"]), summary


def test_llama_cpp_logits_match_transformers(model):
    # transformers' default route decompresses nvfp4 at the first forward into bf16 weights (the library's
    # unpacked dtype), which an f32 forward refuses; its dequantize=True route loads decompress's values
    print(assert_logits_agree(converted(model, "f32"), model, **ct_dequantized_load()))
