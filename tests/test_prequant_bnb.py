"""bitsandbytes checkpoints as input (issue 15): NF4 / FP4 with and without double quantization, LLM.int8.

Fixtures are made by bitsandbytes itself (CPU backend) through transformers on the demo model. ggufkit's F32
output must equal bitsandbytes' own dequantization bit for bit, tensor by tensor; llama.cpp's logits on it must
agree with transformers running the bitsandbytes model."""
from __future__ import annotations

import json

import numpy as np
import pytest
from convert_fixtures import converted, tensor_table
from prequant_fixtures import (
    assert_logits_agree,
    bnb_checkpoint,
    bnb_exact_cpu_path,
    bnb_reference,
    to_gguf_layout,
)

pytest.importorskip("bitsandbytes")

VARIANTS = [("nf4", True, "float32"), ("nf4", False, "bfloat16"), ("fp4", False, "float32"),
            ("fp4", True, "float16"), ("int8", False, "float32")]


@pytest.fixture(scope="module", params=VARIANTS, ids=[f"{k}{'-dq' if d else ''}-{t}" for k, d, t in VARIANTS])
def bnb_model(request, demo_dir):
    return bnb_checkpoint(demo_dir, *request.param)


def test_f32_equals_bitsandbytes_dequantize(bnb_model):
    ref = to_gguf_layout(bnb_reference(bnb_model), json.loads((bnb_model / "config.json").read_text()))
    assert len(ref) == 30 * 7
    table = {name: data for name, _, data in tensor_table(converted(bnb_model, "f32"))}
    differ = [n for n, w in ref.items() if not np.array_equal(
        table[n].view(np.float32).reshape(w.shape).view(np.uint32), w.view(np.uint32))]
    assert not differ, f"{len(differ)} tensors differ from bitsandbytes' dequantization, first {differ[0]}"


def test_llama_cpp_logits_match_transformers(bnb_model):
    # nf4 from a bf16 model measured median 0.0149 / max 0.183 against bitsandbytes' own forward: that forward
    # skips the rounding to bf16 that its dequantize_4bit (the values in the F32 file) applies (the test below);
    # with the dequantized weights in f32 (bnb_exact_cpu_path) it is median 0.0026 / max 0.020.
    print(assert_logits_agree(converted(bnb_model, "f32"), bnb_model, bnb_exact_cpu_path))


def test_the_4bit_forward_skips_the_dtype_rounding():
    """Why nf4 from a bf16 model needs the dequantized weights as the logits reference: with an f32 compute
    dtype bitsandbytes' 4-bit matmul dequantizes straight to f32 (code * absmax, unrounded), while its
    dequantize_4bit returns those products rounded to the state's dtype (bf16 here), up to 2^-8 relative."""
    import bitsandbytes as bnb
    import bitsandbytes.functional as F
    import torch

    torch.manual_seed(0)
    weight = (torch.randn(576, 576) * 0.05).to(torch.bfloat16)
    linear = bnb.nn.Linear4bit(576, 576, bias=False, compute_dtype=torch.float32, quant_type="nf4")
    linear.weight = bnb.nn.Params4bit(weight, requires_grad=False, quant_type="nf4", compress_statistics=False)
    linear = linear.to("cpu")  # quantizes
    linear.support_avx512bf16_for_cpu = False  # the reference path, not the bf16 repacking
    state = linear.weight.quant_state
    x = torch.randn(4, 576)
    with torch.no_grad():
        y = linear(x)
        rounded = F.dequantize_4bit(linear.weight.data, state).float()  # (576, 576), bf16 values
        exact = torch.ops.bitsandbytes.dequantize_4bit.default(linear.weight.data.view(-1, 1), state.absmax,
                                                               state.blocksize, state.quant_type, state.shape,
                                                               torch.float32)
    assert state.dtype == torch.bfloat16 and torch.equal(rounded, exact.to(torch.bfloat16).float())
    assert torch.equal(y, torch.nn.functional.linear(x, exact))  # the same f32 matmul on the unrounded products
    assert not torch.equal(y, torch.nn.functional.linear(x, rounded))


def test_dry_run_names_the_source(bnb_model, capsys):
    from ggufkit.conversion import convert

    convert(bnb_model, bnb_model / "x.gguf", scheme="q8_0", dry_run=True)
    lines = capsys.readouterr().out.splitlines()
    kind = bnb_model.name.split("-")[1]
    want = "bnb int8" if kind == "int8" else f"bnb {kind} g64" + (" dq" if "-dq-" in bnb_model.name else "")
    q = next(line for line in lines if line.startswith("blk.0.attn_q.weight"))
    assert q.endswith(f"from {want}"), q
    assert "from" not in next(line for line in lines if line.startswith("blk.0.attn_norm.weight"))
