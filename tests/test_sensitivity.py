"""The sensitivity pass layer by layer (ggufkit.plan.sensitivity.Session): one decoder layer in memory at a time,
read from the safetensors. Its Fisher quantities must equal the whole model's forward and backward pass
(WholeModel: transformers' AutoModelForCausalLM with hooks), dense, tied and untied, with logit softcapping and a
scaled embedding (gemma2), mixture-of-experts, on the tiny checkpoints and the demo; its guard's KL must equal
the whole model's; and a few of its numbers must equal a hand computation from transformers' own outputs
(the gradients at its returned hidden states, the logits' gradient), not the hooks both passes share."""
from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch
from convert_fixtures import SHAKESPEARE

from ggufkit.plan.sensitivity import Session, WholeModel

QT = gguf.GGMLQuantizationType
RTOL = 1e-4


def assert_same_sensitivity(a: dict, b: dict):
    assert sorted(a) == sorted(b)
    for name, sb in b.items():
        sa = a[name]
        assert sa.tokens == sb.tokens, name
        assert sa.g2 == pytest.approx(sb.g2, rel=RTOL), name
        for va, vb in ((sa.x2, sb.x2), (sa.embd_g2, sb.embd_g2)):
            assert (va is None) == (vb is None), name
            if vb is not None:
                np.testing.assert_allclose(va, vb, rtol=RTOL, atol=RTOL * float(np.abs(vb).max()), err_msg=name)


@pytest.mark.parametrize("arch", ["llama", "llama-untied", "gemma2", "qwen3-moe"])
def test_layerwise_sensitivity_and_kl_equal_the_whole_model(arch, tiny_checkpoint):
    src = tiny_checkpoint(arch)
    layered = Session(src, SHAKESPEARE, ctx=64, fit_chunks=3, held_out=4, threads=2)
    whole = WholeModel(src, SHAKESPEARE, ctx=64, fit_chunks=3, held_out=4, threads=2)
    sens = layered.sensitivity()
    assert {"token_embd.weight", "output.weight", "blk.0.attn_q.weight", "blk.1.attn_output.weight"} <= set(sens)
    assert_same_sensitivity(sens, whole.sensitivity())
    assert_same_sensitivity(layered.sensitivity(seed=1), whole.sensitivity(seed=1))
    # the guard: a mix with the embedding, the output and every block matrix quantized scores the same KL
    mix = {name: QT.Q4_K for name in sens}
    mix["token_embd.weight"], mix["output.weight"] = QT.Q6_K, QT.Q5_K
    kl_layered, kl_whole = layered.kl(mix), whole.kl(mix)
    assert kl_whole[0] > 1e-4
    assert kl_layered[0] == pytest.approx(kl_whole[0], rel=RTOL) and abs(kl_layered[1] - kl_whole[1]) <= 1 / 64
    assert layered.kl({})[0] < 1e-9   # the weights were restored


def test_layerwise_sensitivity_equals_the_whole_model_on_the_demo(demo_dir):
    layered = Session(demo_dir, SHAKESPEARE, ctx=128, fit_chunks=2, held_out=2, threads=2).sensitivity()
    assert len(layered) == 30 * 7 + 2
    assert_same_sensitivity(layered, WholeModel(demo_dir, SHAKESPEARE, ctx=128, fit_chunks=2, held_out=2,
                                                threads=2).sensitivity())


def test_layerwise_sensitivity_equals_gradients_of_transformers_outputs(tiny_checkpoint):
    """By hand from transformers' model (tied llama, 2 layers): E[g^2] at the embedding's output = the loss's
    gradient at hidden_states[0]; at blk.0.ffn_down's output = at hidden_states[1] (it writes the residual
    stream, the layer's output); at the LM head's output = softmax - onehot(t); E[x^2] at the LM head's input =
    hidden_states[-1] (after the final norm)."""
    from transformers import AutoModelForCausalLM

    src = tiny_checkpoint("llama")
    session = Session(src, SHAKESPEARE, ctx=64, fit_chunks=2, held_out=3, threads=2)
    sens = session.sensitivity(seed=7)
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    gen = torch.Generator().manual_seed(7)
    emb, down, out_g2, out_x2 = 0, 0.0, 0.0, 0
    for chunk in session.fit_ids:
        o = model(input_ids=torch.tensor([chunk]), output_hidden_states=True)
        logp = torch.log_softmax(o.logits[0].float(), dim=-1)
        t = torch.multinomial(logp.detach().exp(), 1, generator=gen)
        g_emb, g_down = torch.autograd.grad(-logp.gather(1, t).sum(), [o.hidden_states[0], o.hidden_states[1]])
        emb = emb + (g_emb[0].double() ** 2).sum(0)
        down += float((g_down.double() ** 2).sum()) / g_down.shape[-1]
        g_out = logp.detach().exp() - torch.nn.functional.one_hot(t[:, 0], logp.shape[1])
        out_g2 += float((g_out.double() ** 2).sum()) / logp.shape[1]
        out_x2 = out_x2 + (o.hidden_states[-1][0].detach().double() ** 2).sum(0)
    n = 2 * 64
    assert sens["token_embd.weight"].tokens == n
    np.testing.assert_allclose(sens["token_embd.weight"].embd_g2, (emb / n).numpy(), rtol=RTOL)
    assert sens["blk.0.ffn_down.weight"].g2 == pytest.approx(down / n, rel=RTOL)
    assert sens["output.weight"].g2 == pytest.approx(out_g2 / n, rel=RTOL)
    np.testing.assert_allclose(sens["output.weight"].x2, (out_x2 / n).numpy(), rtol=RTOL)


def test_memory_needed_grows_with_the_largest_layer_not_the_layer_count():
    """memory_needed: the layers held one (two) at a time; more layers add only their boundary activations."""
    from types import SimpleNamespace

    from ggufkit.plan.sensitivity import memory_needed

    def plan(n_layer, hidden=2048, ff=8192, vocab=32000):
        shapes = {"token_embd.weight": (vocab, hidden), "output_norm.weight": (hidden,)}
        for i in range(n_layer):
            shapes.update({f"blk.{i}.attn_q.weight": (hidden, hidden), f"blk.{i}.ffn_up.weight": (ff, hidden)})
        return SimpleNamespace(tensors=[SimpleNamespace(tensor=SimpleNamespace(name=k, shape=v))
                                        for k, v in shapes.items()])

    small, deep = memory_needed(plan(16), 512, 2), memory_needed(plan(64), 512, 2)
    f32_deep = 4 * sum(int(np.prod(p.tensor.shape)) for p in plan(64).tensors)
    assert deep - small == 4 * 48 * 512 * 2 * 2048   # the 48 more layers' inputs, no weights
    assert deep < 0.6 * f32_deep
    assert memory_needed(plan(16, ff=16384), 512, 2) - small > 2 * 4 * 2048 * 8192   # a layer's weights twice
