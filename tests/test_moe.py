"""Mixture-of-experts conversion (ggufkit/archs/moe.py), beyond what the shared runner (test_archs.py) checks:
- both checkpoint layouts (one tensor per expert, transformers 5's fused 3-D parameters) give identical files;
- the stacked expert tensors are streamed: a row block reads exactly its rows from the expert tensors, and the
  rows equal transformers' own in-memory expert parameters (gate/up halves, down);
- damaged expert sets (a missing expert, an expert beyond the config's count, a fused tensor with the wrong
  number of experts) are one-line errors naming the tensor."""
from __future__ import annotations

import json
import shutil

import gguf
import numpy as np
import pytest
from convert_fixtures import converted, tensor_table

from ggufkit.errors import InputError

PAIRS = [("qwen3-moe", "qwen3-moe-fused"), ("mixtral", "mixtral-fused"),
         ("gemma4-moe-split", "gemma4-moe"),  # Gemma 4 saves fused experts; the split twin is made from them
         ("granitemoe", "granitemoe-fused"), ("ernie4.5-moe", "ernie4.5-moe-fused")]  # issue 14 (batch A)


def _metadata(path) -> dict:
    reader = gguf.GGUFReader(path)
    return {k: f.contents() for k, f in reader.fields.items()
            if not k.startswith("GGUF.") and k != "general.name"}


@pytest.mark.parametrize("scheme", ["f32", "q4_k_m"])
@pytest.mark.parametrize("per_expert,fused", PAIRS, ids=[p for p, _ in PAIRS])
def test_both_expert_layouts_give_identical_files(tiny_checkpoint, per_expert, fused, scheme):
    a, b = converted(tiny_checkpoint(per_expert), scheme), converted(tiny_checkpoint(fused), scheme)
    ta, tb = tensor_table(a), tensor_table(b)
    assert [(n, t) for n, t, _ in ta] == [(n, t) for n, t, _ in tb]
    assert any("_exps" in n for n, _, _ in ta)
    differ = [n for (n, _, x), (_, _, y) in zip(ta, tb) if not np.array_equal(x, y)]
    assert not differ, f"{len(differ)} tensors differ: {differ[:5]}"
    assert _metadata(a) == _metadata(b)  # every key but the name (the directory's)


@pytest.mark.parametrize("name", ["qwen3-moe", "qwen3-moe-fused"])
def test_expert_stacks_stream_the_rows_transformers_holds(tiny_checkpoint, name, monkeypatch):
    import torch
    from transformers import AutoModelForCausalLM

    from ggufkit.archs.moe import ExpertView
    from ggufkit.sources.hf import TensorRef, open_checkpoint

    log: list = []  # every read from disk: (tensor, first row, end row)
    read_rows = TensorRef.read_rows

    def counted(self, start, stop):
        log.append((self.name, start, stop))
        return read_rows(self, start, stop)

    monkeypatch.setattr(TensorRef, "read_rows", counted)
    src = tiny_checkpoint(name)
    ckpt = open_checkpoint(src)
    n_expert = ckpt.config["num_local_experts"]
    view = ExpertView(ckpt, n_expert)
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    experts = model.model.layers[1].mlp.experts
    gate_up = experts.gate_up_proj.detach().numpy()  # (n_expert, 2 * n_ff, n_embd) f32
    down = experts.down_proj.detach().numpy()  # (n_expert, n_embd, n_ff) f32
    n_ff = gate_up.shape[1] // 2
    want = {"gate_proj": gate_up[:, :n_ff], "up_proj": gate_up[:, n_ff:], "down_proj": down}
    for proj, full in want.items():
        stack = view.tensors[f"model.layers.1.mlp.experts.{proj}.weight"]
        assert stack.shape == full.shape
        rows = full.shape[1]
        start, stop = rows - 3, 2 * rows + 5  # the last 3 rows of expert 0, all of expert 1, 5 of expert 2
        log.clear()
        got = stack.read_rows(start, stop)  # (stop-start, cols) f32
        np.testing.assert_array_equal(got, full.reshape(-1, full.shape[-1])[start:stop])
        assert sum(b - a for _, a, b in log) == stop - start  # nothing read beyond the block
        assert len(log) == 3  # one read per expert touched


def test_gpt_oss_experts_are_transposed_and_deinterleaved(tiny_checkpoint):
    """gpt-oss stores experts input-major with gate/up in alternating columns; the stacks are llama.cpp's
    (n_expert, out, in) matrices, and the biases split the same way (reference: transformers' parameters)."""
    import torch
    from transformers import AutoModelForCausalLM

    from ggufkit.archs.moe import ExpertView
    from ggufkit.sources.hf import open_checkpoint

    src = tiny_checkpoint("gpt-oss")
    view = ExpertView(open_checkpoint(src), 4, layout="interleaved_transposed")
    experts = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).model.layers[0].mlp.experts
    gate_up = experts.gate_up_proj.detach().numpy()  # (n_expert, n_embd, 2 * n_ff) f32
    bias = experts.gate_up_proj_bias.detach().numpy()  # (n_expert, 2 * n_ff) f32
    want = {"gate_proj.weight": gate_up[:, :, 0::2].transpose(0, 2, 1),
            "up_proj.weight": gate_up[:, :, 1::2].transpose(0, 2, 1),
            "down_proj.weight": experts.down_proj.detach().numpy().transpose(0, 2, 1),
            "gate_proj.bias": bias[:, 0::2], "up_proj.bias": bias[:, 1::2],
            "down_proj.bias": experts.down_proj_bias.detach().numpy()}
    for name, full in want.items():
        stack = view.tensors[f"model.layers.0.mlp.experts.{name}"]
        assert tuple(stack.shape) == full.shape, name
        flat = full.reshape(-1, full.shape[-1])
        got = np.concatenate([stack.read_rows(a, min(a + 100, len(flat))) for a in range(0, len(flat), 100)])
        np.testing.assert_array_equal(got, flat, err_msg=name)


def _damaged_copy(tiny_checkpoint, tmp_path, name, edit):
    """A copy of a tiny checkpoint whose tensors dict went through edit(tensors) -> tensors."""
    from safetensors.torch import load_file, save_file

    src = tiny_checkpoint(name)
    out = tmp_path / name
    shutil.copytree(src, out, ignore=shutil.ignore_patterns("*.safetensors"))
    tensors = edit({k: v for k, v in load_file(src / "model.safetensors").items()})
    save_file({k: v.clone().contiguous() for k, v in tensors.items()}, out / "model.safetensors")
    return out


DAMAGED = [
    ("qwen3-moe", lambda t: {k: v for k, v in t.items() if k != "model.layers.1.mlp.experts.2.up_proj.weight"},
     "model.layers.1.mlp.experts.2.up_proj.weight is missing (expert 2 of 4)"),
    ("qwen3-moe", lambda t: t | {"model.layers.0.mlp.experts.4.down_proj.weight":
                                 t["model.layers.0.mlp.experts.0.down_proj.weight"]},
     "model.layers.0.mlp.experts.4.down_proj.weight is expert 4, the config has 4 experts"),
    ("qwen3-moe", lambda t: t | {"model.layers.0.mlp.experts.1.up_proj.weight":
                                 t["model.layers.0.mlp.experts.1.up_proj.weight"][:128]},
     "model.layers.0.mlp.experts.1.up_proj.weight has shape [128, 256], expert 0's is [256, 256]"),
    ("qwen3-moe-fused", lambda t: t | {"model.layers.0.mlp.experts.down_proj":
                                       t["model.layers.0.mlp.experts.down_proj"][:3]},
     "model.layers.0.mlp.experts.down_proj holds 3 experts, the config has 4"),
    ("qwen3-moe-fused", lambda t: t | {"model.layers.0.mlp.experts.gate_up_proj":
                                       t["model.layers.0.mlp.experts.gate_up_proj"][:, :511]},
     "an odd number of gate+up rows"),
    ("gemma4-moe-split", lambda t: {k: v for k, v in t.items() if k != "model.layers.1.experts.3.up_proj.weight"},
     "model.layers.1.experts.3.up_proj.weight is missing (expert 3 of 4)"),
    ("gemma4-moe-split", lambda t: t | {"model.layers.0.experts.4.down_proj.weight":
                                        t["model.layers.0.experts.0.down_proj.weight"]},
     "model.layers.0.experts.4.down_proj.weight is expert 4, the config has 4 experts"),
    ("gemma4-moe-split", lambda t: t | {"model.layers.0.experts.2.up_proj.weight":
                                        t["model.layers.0.experts.2.up_proj.weight"][:128]},
     "model.layers.0.experts.2.up_proj.weight has shape [128, 256], its gate_proj [256, 256]"),
    ("gemma4-moe", lambda t: t | {"model.layers.0.experts.down_proj": t["model.layers.0.experts.down_proj"][:3]},
     "model.layers.0.experts.down_proj has shape [3, 256, 256], the config implies [4, 256, 256]"),
]


@pytest.mark.parametrize("name,edit,words", DAMAGED, ids=[w.split(" ", 1)[1][:30] for _, _, w in DAMAGED])
def test_damaged_expert_set_is_a_one_line_error(tiny_checkpoint, tmp_path, name, edit, words):
    from ggufkit.conversion import make_plan

    src = _damaged_copy(tiny_checkpoint, tmp_path, name, edit)
    with pytest.raises(InputError) as err:
        make_plan(src, "q4_k_m")
    message = str(err.value)
    assert words in message and "\n" not in message, message
    assert "model.safetensors" in message, message


def test_moe_metadata_is_what_llama_cpp_reads(tiny_checkpoint):
    """The expert keys llama.cpp's loader reads, from the config (the shared runner checks that it runs)."""
    src = tiny_checkpoint("qwen3-moe")
    config = json.loads((src / "config.json").read_text())
    meta = _metadata(converted(src, "f32"))
    assert meta["qwen3moe.expert_count"] == config["num_local_experts"]
    assert meta["qwen3moe.expert_used_count"] == config["num_experts_per_tok"]
    assert meta["qwen3moe.expert_feed_forward_length"] == config["moe_intermediate_size"]
    mixtral = _metadata(converted(tiny_checkpoint("mixtral"), "f32"))
    assert mixtral["llama.expert_count"] == 8 and "llama.expert_feed_forward_length" not in mixtral
