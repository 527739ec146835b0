"""FP8 e4m3 checkpoints as input (issue 15): block, per-tensor and per-channel scales (`weight_scale_inv`).

The fixtures are the demo model's linear weights cast to float8_e4m3fn by torch (no library quantizes FP8 on a
CPU); the reference is transformers' own FP8 dequantization (its CPU loader dequantizes FP8 checkpoints). ggufkit's
F32 output must equal it bit for bit, and llama.cpp's logits must agree with transformers running the model."""
from __future__ import annotations

import json

import numpy as np
import pytest
from convert_fixtures import converted, tensor_table
from prequant_fixtures import assert_logits_agree, fp8_checkpoint, fp8_reference, to_gguf_layout

from ggufkit.errors import InputError

SCALES = ["block64", "block128", "tensor", "channel"]


@pytest.fixture(scope="module", params=SCALES)
def fp8_model(request, demo_dir):
    return fp8_checkpoint(demo_dir, request.param)


def test_f32_equals_transformers_dequantize(fp8_model):
    ref = to_gguf_layout(fp8_reference(fp8_model), json.loads((fp8_model / "config.json").read_text()))
    assert len(ref) == 30 * 7
    table = {name: data for name, _, data in tensor_table(converted(fp8_model, "f32"))}
    differ = [n for n, w in ref.items() if not np.array_equal(
        table[n].view(np.float32).reshape(w.shape).view(np.uint32), w.view(np.uint32))]
    assert not differ, f"{len(differ)} tensors differ from transformers' FP8 dequantization, first {differ[0]}"


def test_llama_cpp_logits_match_transformers(demo_dir):
    model = fp8_checkpoint(demo_dir, "block64")
    print(assert_logits_agree(converted(model, "f32"), model))


def test_dry_run_names_the_scales(fp8_model, capsys):
    from ggufkit.conversion import convert

    convert(fp8_model, fp8_model / "x.gguf", scheme="q4_k_m", dry_run=True)
    q = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("blk.3.ffn_up.weight"))
    want = {"block64": "block 64x64", "block128": "block 128x128", "tensor": "per-tensor",
            "channel": "per-channel"}[fp8_model.name.split("-")[1]]
    assert q.endswith(f"from fp8 e4m3 {want}"), q


def test_other_fp8_formats_are_one_line_errors(demo_dir, tmp_path):
    import shutil

    from ggufkit.conversion import make_plan

    src = fp8_checkpoint(demo_dir, "tensor")
    for name in src.iterdir():
        (tmp_path / name.name).symlink_to(name)
    config = json.loads((src / "config.json").read_text())
    config["quantization_config"]["fmt"] = "e5m2"
    (tmp_path / "config.json").unlink()
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(InputError, match=r"config\.json: .*fp8 format 'e5m2' is not supported") as e:
        make_plan(tmp_path, "q8_0")
    assert "\n" not in str(e.value)
    shutil.rmtree(tmp_path)
