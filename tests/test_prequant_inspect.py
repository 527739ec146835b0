"""`ggufkit inspect DIR` on pre-quantized checkpoints (issue 15): the source format per tensor group, checked
against the files as safetensors lists them and against the types `convert --scheme source` really writes."""
from __future__ import annotations

import json
import math

import gguf
from convert_fixtures import converted, tensor_table
from prequant_fixtures import ct_packed_checkpoint, mxfp4_checkpoint

from ggufkit.cli import main


def _inspect(capsys, *args) -> tuple[int, str]:
    code = main(["inspect", *map(str, args)])
    return code, capsys.readouterr().out


def test_compressed_tensors_groups(capsys, demo_dir):
    from safetensors import safe_open

    model = ct_packed_checkpoint(demo_dir, 4, False, 64, "bfloat16")
    code, out = _inspect(capsys, model, "--json")
    assert code == 0
    s = json.loads(out)
    with safe_open(model / "model.safetensors", "np") as f:
        keys = list(f.keys())
        packed = [k for k in keys if k.endswith(".weight_packed")]
        params = sum(math.prod(f.get_tensor(k.replace("_packed", "_shape")).tolist()) for k in packed)
        floats = [k for k in keys if ".weight_" not in k]
    assert s["quantization"] == "compressed-tensors" and s["model_type"] == "llama"
    grid = s["groups"]["compressed-tensors int4 g64 asym"]
    assert grid["count"] == len(packed) == 210 and grid["parameters"] == params
    assert grid["lossless"] == "Q4_1"
    assert s["groups"]["BF16"]["count"] == len(floats) and s["groups"]["BF16"]["lossless"] is None
    written = {gguf.GGMLQuantizationType(t).name for n, t, _ in tensor_table(converted(model, "source"))
               if n.endswith(("attn_q.weight", "ffn_down.weight"))}
    assert written == {"Q4_1"}
    code, text = _inspect(capsys, model)
    line = next(x for x in text.splitlines() if "compressed-tensors int4 g64 asym" in x)
    assert line.split()[-1] == "Q4_1" and line.split()[-5] == "210", line


def test_mxfp4_experts_per_tensor(capsys, tiny_checkpoint):
    model = mxfp4_checkpoint(tiny_checkpoint("gpt-oss"))
    code, out = _inspect(capsys, model, "--json", "--tensors")
    assert code == 0
    s = json.loads(out)
    experts = [t for t in s["tensors"] if t["source"] == "mxfp4 e2m1 g32 e8m0"]
    assert sorted(t["name"].rsplit(".", 2)[-2] for t in experts) == ["down_proj"] * 2 + ["gate_proj"] * 2 + \
        ["up_proj"] * 2
    assert {t["lossless"] for t in experts} == {"MXFP4"}
    assert all(t["shape"][0] == 4 for t in experts)  # (n_expert, rows, cols), llama.cpp's order
    assert s["groups"]["mxfp4 e2m1 g32 e8m0"]["parameters"] == sum(math.prod(t["shape"]) for t in experts)


def test_a_directory_without_config_is_one_line(capsys, tmp_path):
    code = main(["inspect", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert code == 1 and "config.json" in err and "\n" not in err, err
