"""How much each tensor's output noise moves the logits: the diagonal Fisher of every linear layer's output.

    sens = output_sensitivity(model_dir, text_path, ctx=512, chunks=2)   # GGUF name -> Sensitivity
    sens["blk.3.attn_v.weight"].g2          # mean over tokens and output rows of E[g_i^2]
    sens["blk.3.attn_v.weight"].x2          # (cols,) mean over tokens of x_j^2 (the layer's input)

Why. For small noise the KL divergence of the quantized model's next-token distribution from the reference's is
KL ~ 1/2 dz^T F dz, F the Fisher information of the logits z. Noise dy added to a hidden vector y reaches the
logits through the rest of the network; to second order KL ~ 1/2 E[dy^T F_y dy] with F_y = E_{t~p}[g g^T],
g = d log p(t) / d y, t drawn from the model's own distribution. A linear layer y = W x quantized to W + E adds
dy = E x; rounding errors of different entries are independent, so E[dy_i^2] = sum_j E_ij^2 E[x_j^2] and

    KL(tensor) ~ 1/2 sum_i E[g_i^2] sum_j E_ij^2 E[x_j^2]   ~   1/2 mean_i(E[g_i^2]) sum_ij E_ij^2 E[x_j^2]

(the last step drops the correlation between a row's rounding error and its gradient). This measures what the
error model otherwise assumes: how much of a q/k error survives the softmax, what a V error does after the
attention average, what the output matrix's and the tied embedding's errors weigh against the blocks'. The tied
embedding has two roles: the output matrix (g = the logits' gradient; its input is the final normed stream) and
the input rows (noise on the embedding vector of each token: per dimension E[g_j^2] at the embedding's output).

Cost: one forward and backward pass of the float32 model over the chunks (the model is held whole). The samples
t ~ p are drawn with a fixed seed, so the result is deterministic for a text.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class Sensitivity:
    g2: float                 # mean over tokens and output units of (d log p(t) / d y_i)^2
    x2: np.ndarray | None     # (cols,) f64 mean over tokens of the input squared (None: the embedding's input role)
    tokens: int


def output_sensitivity(model_dir: Path, text_path: Path, ctx: int = 512, chunks: int = 2,
                       threads: int | None = None, seed: int = 0) -> dict[str, Sensitivity]:
    """GGUF tensor name -> Sensitivity for every nn.Linear with a GGUF name, "token_embd.weight" (the input
    role: x2 None, g2 per dimension in `embd_g2`) and "output.weight" (the lm_head, tied or not)."""
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ggufkit.quant.imatrix_collect import _gguf_names, calibration_ids
    from ggufkit.sources.hf import open_checkpoint

    model_dir = Path(model_dir)
    ckpt = open_checkpoint(model_dir)
    if threads:
        torch.set_num_threads(threads)
    tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=False)
    ids = calibration_ids(tokenizer, Path(text_path), ctx, chunks)   # list of (ctx,) token id lists
    model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32, trust_remote_code=False)
    model.eval()
    names = _gguf_names(model, model_dir, ckpt.config)
    lm_head = model.get_output_embeddings()
    embed = model.get_input_embeddings()
    for module_name, module in model.named_modules():
        if module is lm_head:
            names[module_name] = "output.weight"
    x2: dict[str, torch.Tensor] = {}
    g2: dict[str, float] = {}
    emb_g2 = torch.zeros(embed.weight.shape[1], dtype=torch.float64)
    hooks = []

    def linear_hook(name):
        def hook(module, args, out):
            x = args[0].detach().reshape(-1, args[0].shape[-1]).double()   # (tokens, cols)
            x2[name] = x2.get(name, 0) + (x * x).sum(0)

            def grad_hook(g):
                g2[name] = g2.get(name, 0.0) + float((g.double() ** 2).sum()) / g.shape[-1]
            out.register_hook(grad_hook)
        return hook

    def embed_hook(module, args, out):
        def grad_hook(g):
            emb_g2.add_((g.double() ** 2).reshape(-1, g.shape[-1]).sum(0))
        out.register_hook(grad_hook)

    for module_name, module in model.named_modules():
        if module_name in names:
            hooks.append(module.register_forward_hook(linear_hook(names[module_name])))
    hooks.append(embed.register_forward_hook(embed_hook))
    gen = torch.Generator().manual_seed(seed)
    tokens = 0
    try:
        for chunk in ids:
            inp = torch.tensor([chunk])
            logits = model(input_ids=inp).logits[0].float()   # (ctx, vocab)
            logp = torch.log_softmax(logits, dim=-1)
            t = torch.multinomial(logp.detach().exp(), 1, generator=gen)   # (ctx, 1): t ~ p, the model's own
            (-logp.gather(1, t).sum()).backward()
            model.zero_grad(set_to_none=True)
            tokens += len(chunk)
    finally:
        for h in hooks:
            h.remove()
    out = {name: Sensitivity(g2[name] / tokens, (x2[name] / tokens).numpy(), tokens) for name in g2}
    out["token_embd.weight"] = Sensitivity(float(emb_g2.mean()) / tokens, None, tokens)
    out["token_embd.weight"].embd_g2 = (emb_g2 / tokens).numpy()
    return out
