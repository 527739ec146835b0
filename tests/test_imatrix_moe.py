"""Importance matrices of mixture-of-experts models: per-expert statistics and token counts (what llama-imatrix
collects at a MUL_MAT_ID), written in llama.cpp's imatrix GGUF layout, and used by convert per expert exactly as
llama_model_quantize uses the same file (same bytes, expert tensors included)."""
from __future__ import annotations

import gguf
import numpy as np
import pytest
from convert_fixtures import OUT_DIR, SHAKESPEARE, converted
from test_imatrix import llama_quantize_with_imatrix

from ggufkit.conversion import convert
from ggufkit.quant.imatrix_collect import compute

CTX, CHUNKS = 64, 2
MOE = ["qwen3-moe", "mixtral", "gpt-oss", "lfm2-moe"]


@pytest.fixture(scope="module", params=MOE)
def moe_imatrix(request, tiny_checkpoint):
    src = tiny_checkpoint(request.param)
    im = compute(src, SHAKESPEARE, ctx=CTX, chunks=CHUNKS, progress=False)
    return src, im, im.save(OUT_DIR / f"{request.param}.imatrix.gguf")


def _layer_inputs_and_routes(src, layer: int):
    """The MoE block input of `layer` and each token's chosen experts, from transformers' own modules: a hook on
    the block (not on the experts) and one on its router, whose third output is the experts it picked."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    text = SHAKESPEARE.read_text(encoding="utf-8", errors="replace")
    ids = AutoTokenizer.from_pretrained(src)(text)["input_ids"][:CTX * CHUNKS]
    decoder_layer = model.model.layers[layer]
    block = getattr(decoder_layer, "mlp", None) or decoder_layer.feed_forward
    router = getattr(block, "gate", None) or block.router
    seen, routes = [], []
    hooks = [block.register_forward_pre_hook(lambda _m, args: seen.append(args[0].reshape(-1, args[0].shape[-1]))),
             router.register_forward_hook(lambda _m, _args, out: routes.append(out[2].reshape(-1, out[2].shape[-1])))]
    with torch.no_grad():
        for c in range(CHUNKS):
            model(torch.tensor([ids[c * CTX:(c + 1) * CTX]]), use_cache=False)
    for h in hooks:
        h.remove()
    return torch.cat(seen).double().numpy(), torch.cat(routes).numpy()


def test_per_expert_sums_and_counts_are_the_routed_tokens(moe_imatrix):
    src, im, path = moe_imatrix
    x, routes = _layer_inputs_and_routes(src, 1)  # (tokens, n_embd), (tokens, top_k)
    n_expert = im.entries["blk.1.ffn_gate_exps.weight"].sums.shape[0]
    for name in ("blk.1.ffn_gate_exps.weight", "blk.1.ffn_up_exps.weight"):
        e = im.entries[name]
        assert e.sums.shape == (n_expert, x.shape[1])
        for expert in range(n_expert):
            routed = (routes == expert).any(-1)
            assert e.counts[expert] == routed.sum()
            np.testing.assert_allclose(e.sums[expert], (x[routed] ** 2).sum(0), rtol=1e-4, atol=1e-6)
    down = im.entries["blk.1.ffn_down_exps.weight"]
    assert down.counts.tolist() == im.entries["blk.1.ffn_gate_exps.weight"].counts.tolist()
    assert down.counts.sum() == routes.size  # every (token, chosen expert) pair counted once
    # the file: per expert one row of in_sum2 and one count (gguf-py reads it back)
    tensors = {t.name: t for t in gguf.GGUFReader(path).tensors}
    assert list(tensors["blk.1.ffn_down_exps.weight.in_sum2"].shape) == [down.sums.shape[1], n_expert]
    assert list(tensors["blk.1.ffn_down_exps.weight.counts"].shape) == [1, n_expert]


def reference_weights(path) -> dict[str, np.ndarray]:
    """What llama-quantize hands llama_model_quantize from an imatrix GGUF (read with gguf-py): per tensor and
    per expert, in_sum2 / count, and ones for an expert that saw no token."""
    tensors = {t.name: np.array(t.data, dtype=np.float32) for t in gguf.GGUFReader(path).tensors}
    out = {}
    for name, sums in tensors.items():
        if name.endswith(".in_sum2"):
            base = name[: -len(".in_sum2")]
            counts = tensors[base + ".counts"].reshape(-1)
            sums = sums.reshape(len(counts), -1)
            out[base] = np.concatenate([s / c if c > 0 else np.ones_like(s) for s, c in zip(sums, counts)])
    return out


def test_convert_with_moe_imatrix_equals_llama_quantize(moe_imatrix):
    from ggufkit.plan.schemes import get_scheme

    src, _, path = moe_imatrix
    ours = convert(src, OUT_DIR / f"{src.name}-imatrix-q4_k_m.gguf", scheme="q4_k_m", quiet=True, imatrix=path)
    ref = llama_quantize_with_imatrix(converted(src, "f32"), OUT_DIR / f"{src.name}-imatrix-ref-q4_k_m.gguf",
                                      int(get_scheme("q4_k_m").file_type), reference_weights(path))
    a = {t.name: t for t in gguf.GGUFReader(ours).tensors}
    b = {t.name: t for t in gguf.GGUFReader(ref).tensors}
    assert set(a) == set(b)
    differing = [n for n in a if a[n].tensor_type != b[n].tensor_type or
                 not np.array_equal(np.asarray(a[n].data).view(np.uint8), np.asarray(b[n].data).view(np.uint8))]
    assert not differing, f"{len(differing)} tensors differ from llama_model_quantize: {differing[:5]}"
    plain = {t.name: t for t in gguf.GGUFReader(converted(src, "q4_k_m")).tensors}
    changed = [n for n in a if "_exps" in n and not np.array_equal(np.asarray(a[n].data), np.asarray(plain[n].data))]
    assert changed, "the per-expert importance changed no expert tensor"
