"""How much each tensor's output noise moves the logits: the diagonal Fisher of every linear layer's output.

    session = Session(model_dir, text_path, ctx=512, fit_chunks=2, held_out=32)   # the f32 model, the chunks
    sens = session.sensitivity()             # GGUF name -> Sensitivity, on the first fit_chunks chunks
    sens["blk.3.attn_v.weight"].g2          # mean over tokens and output rows of E[g_i^2]
    sens["blk.3.attn_v.weight"].x2          # (cols,) mean over tokens of x_j^2 (the layer's input)
    session.kl({name: qtype, ...}, imatrix)  # measured (KL, top-1) of a type mix on the held-out chunk

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

The guard (Session.kl): the allocation rests on this model; what a mix really costs is measured by writing its
weights into the float32 model (quantized and dequantized by ggufkit's kernels, row by row as in the file: the
rows of a tensor quantize independently, so the architecture's row permutations do not matter) and scoring
KL(reference || mix) on the held-out chunk, tokens the sensitivity did not see.

Cost: one forward and backward pass of the float32 model over the sensitivity chunks (the model is held whole),
and one forward pass of the held-out chunk per mix scored, plus the quantization of the tensors that differ.
The samples t ~ p are drawn with a fixed seed, so the result is deterministic for a text.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


def memory_needed(n_params: int) -> int:
    """Bytes a Session needs for a model of n_params parameters: the float32 model held whole, plus the pass's
    activations and gradients and the torch baseline (measured peak RSS: 1.2x the f32 size for the demo's 135M,
    2.6x for bench/make_1b.py's 1.07B with 2 chunks of 512 and one guard score: 11.3 GB; 3x + 1 GiB leaves room)."""
    return int(3 * 4 * n_params) + 2**30


@dataclass
class Sensitivity:
    g2: float                 # mean over tokens and output units of (d log p(t) / d y_i)^2
    x2: np.ndarray | None     # (cols,) f64 mean over tokens of the input squared (None: the embedding's input role)
    tokens: int
    embd_g2: np.ndarray | None = None   # token_embd only: (cols,) f64 E[g_j^2] at the embedding's output


class Session:
    """The float32 model of model_dir and chunks of ctx tokens of the text (calibration_ids): the first
    `fit_chunks` feed sensitivity(); kl() scores one held-out chunk, the one at index `held_out` (e.g. the first
    after the imatrix's chunks, so that neither saw it), else the text's last chunk."""

    def __init__(self, model_dir: Path, text_path: Path, ctx: int = 512, fit_chunks: int = 2, held_out: int = 2,
                 threads: int | None = None):
        import os

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from ggufkit.errors import InputError
        from ggufkit.quant.imatrix_collect import _gguf_names, calibration_ids
        from ggufkit.sources.hf import open_checkpoint

        model_dir = Path(model_dir)
        ckpt = open_checkpoint(model_dir)
        if threads:
            torch.set_num_threads(threads)
        self.threads = threads
        tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=False)
        ids = calibration_ids(tokenizer, Path(text_path), ctx, None)   # list of (ctx,) token id lists
        if len(ids) < 2:
            raise InputError(f"the size budget's sensitivity needs 2 chunks of {ctx} tokens of calibration text "
                             f"(one held out); it has {len(ids)}", text_path)
        fit_chunks = min(fit_chunks, len(ids) - 1)
        self.fit_ids = ids[:fit_chunks]
        self.held_ids = [ids[held_out] if fit_chunks <= held_out < len(ids) else ids[-1]]
        from transformers.utils import logging as hf_logging

        shown = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()   # no "Loading weights" bar on stderr (convert --json, --quiet)
        try:
            self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32,
                                                              trust_remote_code=False)
        finally:
            if shown:
                hf_logging.enable_progress_bar()
        self.model.eval()
        self.names = _gguf_names(self.model, model_dir, ckpt.config)   # module name -> GGUF name
        self.embed = self.model.get_input_embeddings()
        self.lm_head = self.model.get_output_embeddings()
        for module_name, module in self.model.named_modules():
            if module is self.lm_head:
                self.names[module_name] = "output.weight"
        self._ref = None   # the unquantized model's log-probabilities on the held-out chunks
        self._sens: dict = {}   # seed -> sensitivity(seed)

    def sensitivity(self, seed: int = 0) -> dict[str, Sensitivity]:
        """GGUF tensor name -> Sensitivity for every nn.Linear with a GGUF name, "output.weight" (the lm_head,
        tied or not) and "token_embd.weight" (its input role: x2 None, embd_g2 per dimension)."""
        import torch

        if seed in self._sens:
            return self._sens[seed]
        model = self.model
        x2: dict[str, torch.Tensor] = {}
        g2: dict[str, float] = {}
        emb_g2 = torch.zeros(self.embed.weight.shape[1], dtype=torch.float64)
        hooks = []

        def linear_hook(name):
            def hook(module, args, out):
                x = args[0].detach().reshape(-1, args[0].shape[-1]).double()   # (tokens, cols)
                x2[name] = x2.get(name, 0) + (x * x).sum(0)

                def grad_hook(g):   # g: (1, tokens, rows), d log p(t) / d y
                    g2[name] = g2.get(name, 0.0) + float((g.double() ** 2).sum()) / g.shape[-1]
                out.register_hook(grad_hook)
            return hook

        def embed_hook(module, args, out):
            def grad_hook(g):
                emb_g2.add_((g.double() ** 2).reshape(-1, g.shape[-1]).sum(0))
            out.register_hook(grad_hook)

        for module_name, module in model.named_modules():
            if module_name in self.names:
                hooks.append(module.register_forward_hook(linear_hook(self.names[module_name])))
        hooks.append(self.embed.register_forward_hook(embed_hook))
        gen = torch.Generator().manual_seed(seed)
        tokens = 0
        try:
            for chunk in self.fit_ids:
                logp = torch.log_softmax(model(input_ids=torch.tensor([chunk])).logits[0].float(), dim=-1)
                t = torch.multinomial(logp.detach().exp(), 1, generator=gen)   # (ctx, 1): t ~ p, the model's own
                (-logp.gather(1, t).sum()).backward()
                model.zero_grad(set_to_none=True)
                tokens += len(chunk)
        finally:
            for h in hooks:
                h.remove()
        out = {name: Sensitivity(g2[name] / tokens, (x2[name] / tokens).numpy(), tokens) for name in g2}
        out["token_embd.weight"] = Sensitivity(float(emb_g2.mean()) / tokens, None, tokens,
                                               embd_g2=(emb_g2 / tokens).numpy())
        self._sens[seed] = out
        return out

    def _logp(self):
        import torch

        with torch.no_grad():
            return [torch.log_softmax(self.model(input_ids=torch.tensor([c])).logits[0].float(), dim=-1)
                    for c in self.held_ids]   # per chunk (ctx, vocab)

    def kl(self, mix: dict, imatrix=None) -> tuple[float, float]:
        """(mean KL(reference || mix), top-1 agreement) on the held-out chunks, the weights of every tensor in
        MIX (GGUF name -> type) quantized as that type with imatrix(name)'s importance (name -> (cols,) or None).
        The model's weights are restored afterwards."""
        import torch

        from ggufkit import quant

        if self._ref is None:
            self._ref = self._logp()
        params = {}
        for module_name, module in self.model.named_modules():
            name = self.names.get(module_name) or ("token_embd.weight" if module is self.embed else None)
            if name is None or getattr(module, "weight", None) is None:
                continue
            if module is self.lm_head and self.lm_head.weight is self.embed.weight:
                continue   # tied: quantized once, as token_embd
            if name in mix and module.weight.dim() == 2:
                params[name] = module.weight
        saved = {}
        try:
            for name, w in params.items():
                qtype = mix[name]
                x = w.detach().numpy().astype(np.float32, copy=False)   # (rows, cols)
                imp = imatrix(name) if imatrix is not None else None
                if imp is not None and imp.shape != (x.shape[1],):
                    imp = None
                if qtype.name in ("F32",):
                    continue
                if qtype.name == "F16":
                    y = x.astype(np.float16).astype(np.float32)
                else:
                    data = quant.quantize(np.ascontiguousarray(x), qtype, imatrix=imp, threads=self.threads)
                    y = quant.dequantize(data, qtype, x.shape, threads=self.threads)
                saved[name] = w.detach().clone()
                with torch.no_grad():
                    w.copy_(torch.from_numpy(y))
            kls, agree, n = 0.0, 0, 0
            for ref, logp in zip(self._ref, self._logp()):
                kls += float((ref.exp() * (ref - logp)).sum())
                agree += int((ref.argmax(-1) == logp.argmax(-1)).sum())
                n += ref.shape[0]
            return kls / n, agree / n
        finally:
            with torch.no_grad():
                for name, w in saved.items():
                    params[name].copy_(w)
