"""Pre-quantized checkpoints ggufkit cannot read (issue 15) are one-line errors naming the method or the part,
with nothing written."""
from __future__ import annotations

import json
import shutil

import pytest

from ggufkit.conversion import convert, make_plan
from ggufkit.errors import InputError


def _with_config(demo_dir, tmp_path, qcfg):
    for f in demo_dir.iterdir():
        if f.name != "config.json":
            (tmp_path / f.name).symlink_to(f)
    config = json.loads((demo_dir / "config.json").read_text())
    config["quantization_config"] = qcfg
    (tmp_path / "config.json").write_text(json.dumps(config))
    return tmp_path


@pytest.mark.parametrize("qcfg,words", [
    ({"quant_method": "gptq", "bits": 5, "group_size": 128}, "gptq with 5 bits is not supported"),
    ({"quant_method": "awq", "bits": 4, "version": "gemv_fast"}, "awq version 'gemv_fast' is not supported"),
    ({"quant_method": "awq", "bits": 3, "version": "gemm"}, "awq with 3 bits is not supported"),
    ({"quant_method": "compressed-tensors", "format": "mxfp4-pack-quantized"},
     "compressed-tensors format 'mxfp4-pack-quantized' is not supported"),
    ({"quant_method": "compressed-tensors", "format": "nvfp4-pack-quantized",
      "config_groups": {"g": {"targets": ["Linear"], "weights": {"num_bits": 4, "type": "float", "group_size": 32}}}},
     "fp4 weights with group_size 32 are not supported"),
    ({"quant_method": "hqq"}, "pre-quantized hqq checkpoints are not supported"),
    ({"quant_method": "fp8", "fmt": "e5m2"}, "fp8 format 'e5m2' is not supported"),
    ({"quant_method": "bitsandbytes", "load_in_4bit": True, "bnb_4bit_quant_type": "int4"},
     "bitsandbytes 4-bit quant type 'int4' is not supported"),
    ({"quant_method": "compressed-tensors", "format": "marlin-24"},
     "compressed-tensors format 'marlin-24' is not supported"),
    ({"quant_method": "compressed-tensors", "format": "pack-quantized",
      "config_groups": {"g": {"targets": ["Linear"], "weights": {"num_bits": 1, "type": "int"}}}},
     "int1 weights are not supported"),
])
def test_unsupported_method_is_one_line(demo_dir, tmp_path, qcfg, words):
    (tmp_path / "m").mkdir()
    src = _with_config(demo_dir, tmp_path / "m", qcfg)
    out = tmp_path / "out.gguf"
    with pytest.raises(InputError) as e:
        convert(src, out, scheme="q8_0", quiet=True)
    assert words in str(e.value) and "config.json" in str(e.value) and "\n" not in str(e.value), str(e.value)
    assert not out.exists() and not list(tmp_path.glob(".out.gguf*"))


def test_missing_part_is_named(demo_dir, tmp_path):
    """A bitsandbytes weight whose absmax is gone: the error names the weight and the missing part."""
    from prequant_fixtures import bnb_checkpoint
    from safetensors.torch import load_file, save_file

    src = bnb_checkpoint(demo_dir, "nf4", True, "float32")
    broken = tmp_path / "broken"
    shutil.copytree(src, broken)
    state = load_file(broken / "model.safetensors")
    del state["model.layers.3.mlp.up_proj.weight.absmax"]
    save_file(state, broken / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(InputError, match=r"model\.safetensors: quantized tensor model\.layers\.3\.mlp\.up_proj\."
                                         r"weight has no model\.layers\.3\.mlp\.up_proj\.weight\.absmax"):
        make_plan(broken, "q8_0")
