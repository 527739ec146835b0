"""Multimodal wrappers (ggufkit/archs/wrapper.py) convert to their text model: a Qwen3_5ForConditionalGeneration
checkpoint (tiny vision tower) whose language model is exactly the tiny qwen3.5 text checkpoint gives the text
model's tensors, byte for byte, and llama.cpp's logits agree with transformers running the wrapper on text."""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from convert_fixtures import converted, tensor_table
from test_convert import assert_logits_agree

from ggufkit.errors import InputError

VISION = {"depth": 1, "hidden_size": 64, "intermediate_size": 128, "num_heads": 2, "out_hidden_size": 256,
          "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2}


def _wrapped(text_dir: Path, config_class: str, model_class: str) -> Path:
    """The wrapper checkpoint around text_dir's weights (bf16 -> f32 -> bf16 is lossless), cached beside it."""
    out = text_dir.parent / f"{text_dir.name}-vision"
    if (out / ".complete").is_file():
        return out
    import torch
    import transformers
    from transformers import AutoModelForCausalLM

    text_config = json.loads((text_dir / "config.json").read_text())
    config = getattr(transformers, config_class)(text_config=text_config, vision_config=VISION)
    model = getattr(transformers, model_class)(config)
    text_model = AutoModelForCausalLM.from_pretrained(text_dir, dtype=torch.float32)
    model.model.language_model.load_state_dict(text_model.model.state_dict())
    model.lm_head.load_state_dict(text_model.lm_head.state_dict())
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".", dir=out.parent))
    model.to(torch.bfloat16).save_pretrained(tmp)
    for f in text_dir.iterdir():
        if f.name.startswith("tokenizer") or f.name in ("chat_template.jinja", "special_tokens_map.json"):
            shutil.copy(f, tmp / f.name)
    (tmp / ".complete").write_text("tests/test_wrappers.py\n")
    tmp.chmod(0o755)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


WRAPPERS = [("qwen3.5", "Qwen3_5Config", "Qwen3_5ForConditionalGeneration"),
            ("qwen3.5-moe", "Qwen3_5MoeConfig", "Qwen3_5MoeForConditionalGeneration")]


@pytest.mark.parametrize("text,config_class,model_class", WRAPPERS, ids=[w[0] for w in WRAPPERS])
def test_wrapper_converts_to_its_text_model(tiny_checkpoint, text, config_class, model_class):
    text_dir = tiny_checkpoint(text)
    wrapper = _wrapped(text_dir, config_class, model_class)
    from ggufkit.sources.hf import open_checkpoint

    assert any(n.startswith("model.visual.") for n in open_checkpoint(wrapper).tensors)  # a real vision tower
    ours, plain = tensor_table(converted(wrapper, "f32")), tensor_table(converted(text_dir, "f32"))
    assert [(n, t) for n, t, _ in ours] == [(n, t) for n, t, _ in plain]  # no vision tensor, same names, types
    assert all(np.array_equal(a, b) for (_, _, a), (_, _, b) in zip(ours, plain))
    assert_logits_agree(converted(wrapper, "f32"), wrapper)  # transformers runs the wrapper on text alone


def test_wrapper_without_text_config_is_refused(tiny_checkpoint, tmp_path):
    from ggufkit.archs import for_config

    config = {"model_type": "qwen3_5", "vision_config": VISION}
    with pytest.raises(InputError) as err:
        for_config(config, tmp_path / "config.json")
    assert "without a text_config" in str(err.value) and "\n" not in str(err.value)
