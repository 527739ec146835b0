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

Layer by layer (Session): the model is never held whole. A forward pass runs one decoder layer at a time from the
safetensors (ggufkit.quant.calibrate.LayerModel, the calibration's layer loading and transformers' own layer
classes) and keeps only each layer's input hidden states for the sensitivity chunks (n_layer x tokens x hidden
f32: 134 MB for a 1B model and 2 chunks of 512); the causal LM's head (final norm, LM head, tied or not) gives
the logits, the sampled tokens and the gradient at the last layer's output; then the layers again in reverse:
layer i rebuilt, its forward recomputed from its saved input with autograd, the gradient at its output
propagated back to its input, its linear layers' E[g^2] and E[x^2] read on the way by hooks; last the
embedding, whose output gradient is the first layer's input gradient through whatever the model does between
them. No weight gradient is computed (only activations need one). The same quantities as the whole model's
forward and backward (WholeModel, kept as the reference the tests hold it to), within float tolerance.
Peak memory: one layer's float32 weights (two, with the next one read meanwhile), the non-layer weights, the
boundary activations, one layer's autograd graph and one chunk's logits (memory_needed).

Cost: one forward pass and one forward-and-backward pass over the sensitivity chunks (each layer read twice), and
one forward pass of the held-out chunk per mix scored (the guard: each layer read and its tensors of the mix
quantized, one at a time), plus one forward pass for the reference log-probabilities (with the first pass).
The samples t ~ p are drawn with a fixed seed, so the result is deterministic for a text.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


def memory_needed(plan, ctx: int, fit_chunks: int) -> int:
    """Bytes a Session needs for the model of PLAN (its tensors' shapes) with FIT_CHUNKS sensitivity chunks of CTX
    tokens: the largest layer's float32 weights twice (the next one is read meanwhile) and its autograd graph, the
    non-layer weights (embedding, LM head, final norm), the boundary activations (every layer's input for the
    sensitivity chunks), one chunk's logits and their gradient and the reference log-probabilities, plus the
    torch baseline (1 GiB). Against the measured peak on the demo and the 1B: BENCHMARKS.md, "The sensitivity pass
    layer by layer"."""
    import re

    from ggufkit.quant.calibrate import BATCH_TOKENS

    layers: dict[str, int] = {}
    other, hidden, vocab, widest = 0, 0, 0, 0
    for p in plan.tensors:
        n = int(np.prod(p.tensor.shape))
        m = re.match(r"blk\.(\d+)\.", p.tensor.name)
        if m:
            layers[m.group(1)] = layers.get(m.group(1), 0) + n
            widest = max(widest, *p.tensor.shape[:2])
        else:
            other += n
        if p.tensor.name == "token_embd.weight":
            hidden, vocab = int(min(p.tensor.shape)), int(max(p.tensor.shape))
    tokens = ctx * fit_chunks
    boundary = 4 * len(layers) * tokens * hidden
    graph = 4 * 16 * max(ctx, min(tokens, BATCH_TOKENS)) * widest   # ~16 widest-sized activations saved by autograd
    logits = 4 * 5 * ctx * vocab   # logits, log-probabilities, probabilities, their gradient, the reference
    return 4 * (2 * max(layers.values(), default=0) + other) + boundary + graph + logits + 2**30


@dataclass
class Sensitivity:
    g2: float                 # mean over tokens and output units of (d log p(t) / d y_i)^2
    x2: np.ndarray | None     # (cols,) f64 mean over tokens of the input squared (None: the embedding's input role)
    tokens: int
    embd_g2: np.ndarray | None = None   # token_embd only: (cols,) f64 E[g_j^2] at the embedding's output


def _chunks(model_dir: Path, text_path: Path, ctx: int, fit_chunks: int, held_out: int) -> tuple[list, list]:
    """(the sensitivity's chunks, [the held-out chunk]) of the calibration text, as lists of ctx token ids."""
    from transformers import AutoTokenizer

    from ggufkit.errors import InputError
    from ggufkit.quant.imatrix_collect import calibration_ids

    tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=False)
    ids = calibration_ids(tokenizer, Path(text_path), ctx, None)   # list of (ctx,) token id lists
    if len(ids) < 2:
        raise InputError(f"the size budget's sensitivity needs 2 chunks of {ctx} tokens of calibration text "
                         f"(one held out); it has {len(ids)}", text_path)
    fit_chunks = min(fit_chunks, len(ids) - 1)
    return ids[:fit_chunks], [ids[held_out] if fit_chunks <= held_out < len(ids) else ids[-1]]


class _Fisher:
    """The sums the hooks accumulate: per GGUF name sum_t x_t^2 (cols,) f64 at a linear layer's input and
    sum_t mean_i g_i^2 at its output; per dimension sum_t g_j^2 at the embedding's output."""

    def __init__(self):
        self.x2: dict = {}
        self.g2: dict[str, float] = {}
        self.emb_g2 = None
        self.tokens = 0

    def linear_hook(self, name: str):
        def hook(module, args, out):
            x = args[0].detach().reshape(-1, args[0].shape[-1]).double()   # (tokens, cols)
            self.x2[name] = self.x2.get(name, 0) + (x * x).sum(0)

            def grad_hook(g):   # g: (batch, tokens, rows), d log p(t) / d y
                self.g2[name] = self.g2.get(name, 0.0) + float((g.double() ** 2).sum()) / g.shape[-1]
            out.register_hook(grad_hook)
        return hook

    def embed_hook(self, module, args, out):
        out = out.detach().requires_grad_(True)   # the gradient at the embedding's output, not at its weights

        def grad_hook(g):
            s = (g.double() ** 2).reshape(-1, g.shape[-1]).sum(0)
            self.emb_g2 = s if self.emb_g2 is None else self.emb_g2 + s
        out.register_hook(grad_hook)
        return out

    def result(self) -> dict[str, Sensitivity]:
        n = self.tokens
        out = {name: Sensitivity(self.g2[name] / n, (self.x2[name] / n).numpy(), n) for name in self.g2}
        out["token_embd.weight"] = Sensitivity(float(self.emb_g2.mean()) / n, None, n,
                                               embd_g2=(self.emb_g2 / n).numpy())
        return out


def _sample_loss(logits, gen):
    """-sum_t log p(t) over the chunk's positions, t drawn from the model's own distribution p = softmax(logits)."""
    import torch

    logp = torch.log_softmax(logits.float(), dim=-1)
    t = torch.multinomial(logp.detach().exp(), 1, generator=gen)   # (ctx, 1): t ~ p
    return -logp.gather(1, t).sum()


def _requantized(w, qtype, imp, threads):
    """The (rows, cols) weights w as the GGUF file stores them at qtype (ggufkit's kernels with importance imp,
    dequantized) as a torch tensor, or None for F32 (unchanged)."""
    import torch

    from ggufkit import quant

    x = w.detach().numpy().astype(np.float32, copy=False)   # (rows, cols)
    if imp is not None and imp.shape != (x.shape[1],):
        imp = None
    if qtype.name == "F32":
        return None
    if qtype.name == "F16":
        return torch.from_numpy(x.astype(np.float16).astype(np.float32))
    data = quant.quantize(np.ascontiguousarray(x), qtype, imatrix=imp, threads=threads)
    return torch.from_numpy(quant.dequantize(data, qtype, x.shape, threads=threads))


def _kl(refs, logps) -> tuple[float, float]:
    """(mean KL(ref || logp), top-1 agreement) over the positions of the chunks' log-probabilities."""
    kls, agree, n = 0.0, 0, 0
    for ref, logp in zip(refs, logps):
        kls += float((ref.exp() * (ref - logp)).sum())
        agree += int((ref.argmax(-1) == logp.argmax(-1)).sum())
        n += ref.shape[0]
    return kls / n, agree / n


def _standins(n_layer: int, fn):
    """Decoder layers replaced by fn(index, hidden_states) (the model's other arguments ignored)."""
    import torch

    class Standin(torch.nn.Module):
        def __init__(self, index: int):
            super().__init__()
            self.index = index

        def forward(self, hidden_states, *args, **kwargs):
            return fn(self.index, hidden_states)

    return torch.nn.ModuleList([Standin(i) for i in range(n_layer)])


def _start(obj, model_dir: Path, text_path: Path, ctx: int, fit_chunks: int, held_out: int,
           threads: int | None) -> None:
    """What both passes do first: offline hub, torch's thread count, and the fit and held-out chunks on obj."""
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    if threads:
        torch.set_num_threads(threads)
    obj.threads = threads
    obj.fit_ids, obj.held_ids = _chunks(model_dir, text_path, ctx, fit_chunks, held_out)


class Session:
    """The model of model_dir, one decoder layer at a time, and chunks of ctx tokens of the text
    (calibration_ids): the first `fit_chunks` feed sensitivity(); kl() scores one held-out chunk, the one at
    index `held_out` (e.g. the first after the imatrix's chunks, so that neither saw it), else the text's last."""

    def __init__(self, model_dir: Path, text_path: Path, ctx: int = 512, fit_chunks: int = 2, held_out: int = 2,
                 threads: int | None = None):
        from ggufkit.quant.calibrate import LayerModel

        model_dir = Path(model_dir)
        _start(self, model_dir, text_path, ctx, fit_chunks, held_out, threads)
        self.ctx = ctx
        self.lm = LayerModel(model_dir, head=True)
        self.lm.shell.requires_grad_(False)
        self.embed = self.lm.shell.get_input_embeddings()
        self.lm_head = self.lm.shell.get_output_embeddings()
        # per chunk (sensitivity chunks, then the held-out one) the first layer's input; per layer the arguments
        self.hidden, self.kwargs = self.lm.layer_inputs(self.fit_ids + self.held_ids)
        self._ref = None   # the unquantized model's log-probabilities on the held-out chunk
        self._sens: dict = {}   # seed -> sensitivity(seed)

    def _linears(self, i: int, layer):
        """(GGUF name, module) of layer i's nn.Linear layers that are tensors of the file."""
        import torch

        for module_name, module in layer.named_modules():
            if isinstance(module, torch.nn.Linear):
                name = self.lm.gguf_name(i, module_name)
                if name is not None:
                    yield name, module

    def _through(self, layer, i: int, chunks: list[int], hs: list, grads: list | None = None) -> list:
        """Layer i's outputs for the hidden states hs of CHUNKS (indices into self.kwargs' chunks), chunks with
        equal arguments batched; with grads (the loss's gradient at each output), the gradient at each input."""
        import torch

        from ggufkit.quant.calibrate import BATCH_TOKENS, _batches

        kw = [self.kwargs[i][c] for c in chunks]
        out = [None] * len(hs)
        for batch in _batches(kw, max(1, BATCH_TOKENS // self.ctx)):
            x = torch.cat([hs[k] for k in batch]) if len(batch) > 1 else hs[batch[0]]
            if grads is None:
                with torch.no_grad():
                    y = layer(x, **kw[batch[0]])
                y = y[0] if isinstance(y, tuple) else y
            else:
                x = x.detach().requires_grad_(True)
                with torch.enable_grad():
                    y = layer(x, **kw[batch[0]])
                    y = y[0] if isinstance(y, tuple) else y
                    y.backward(torch.cat([grads[k] for k in batch]))
                y = x.grad
            for j, k in enumerate(batch):
                out[k] = y[j:j + 1]
        return out

    def _logits(self, h, ids):
        """The logits (ctx, vocab) of the last layer's output h (1, ctx, hidden): the causal LM's own forward with
        its layers replaced (final norm, LM head, whatever it does to the logits)."""
        import torch

        n = self.lm.n_layer
        self.lm.decoder.layers = _standins(n, lambda index, hidden: h if index == n - 1 else hidden)
        try:
            return self.lm.shell(input_ids=torch.tensor([ids]), use_cache=False).logits[0]
        finally:
            self.lm.decoder.layers = torch.nn.ModuleList()

    def sensitivity(self, seed: int = 0) -> dict[str, Sensitivity]:
        """GGUF tensor name -> Sensitivity for every nn.Linear with a GGUF name, "output.weight" (the lm_head,
        tied or not) and "token_embd.weight" (its input role: x2 None, embd_g2 per dimension)."""
        import torch

        from ggufkit.quant.calibrate import _StopForward

        if seed in self._sens:
            return self._sens[seed]
        lm, n = self.lm, self.lm.n_layer
        fit = len(self.fit_ids)
        chunks = list(range(fit + (self._ref is None)))   # index fit: the held-out chunk, for the reference
        h = [self.hidden[c] for c in chunks]
        inputs = []   # per layer, per sensitivity chunk: its input hidden states (1, ctx, hidden) f32
        for i, layer in lm.layers(range(n)):
            inputs.append(h[:fit])
            h = self._through(layer, i, chunks, h)
            del layer
        if self._ref is None:
            with torch.no_grad():
                self._ref = [torch.log_softmax(self._logits(h[fit], self.held_ids[0]).float(), dim=-1)]
        fisher = _Fisher()
        gen = torch.Generator().manual_seed(seed)
        grads = []   # per chunk, the gradient of the loss at the current layer's output
        handle = self.lm_head.register_forward_hook(fisher.linear_hook("output.weight"))
        try:
            for c in range(fit):
                x = h[c].detach().requires_grad_(True)
                with torch.enable_grad():
                    _sample_loss(self._logits(x, self.fit_ids[c]), gen).backward()
                grads.append(x.grad)
                fisher.tokens += len(self.fit_ids[c])
        finally:
            handle.remove()
        del h
        for i, layer in lm.layers(reversed(range(n))):
            handles = [m.register_forward_hook(fisher.linear_hook(name)) for name, m in self._linears(i, layer)]
            try:
                grads = self._through(layer, i, list(range(fit)), inputs[i], grads)
            finally:
                for handle in handles:
                    handle.remove()
            inputs[i] = None
            del layer
        # the embedding: its output's gradient is the first layer's input gradient through what lies between them
        first = []

        def stop(index, hidden):
            first.append(hidden)
            raise _StopForward

        lm.decoder.layers = _standins(n, stop)
        handle = self.embed.register_forward_hook(fisher.embed_hook)
        try:
            for c in range(fit):
                with torch.enable_grad():
                    try:
                        lm.decoder(input_ids=torch.tensor([self.fit_ids[c]]), use_cache=False)
                    except _StopForward:
                        pass
                    first.pop().backward(grads[c])
        finally:
            handle.remove()
            lm.decoder.layers = torch.nn.ModuleList()
        self._sens[seed] = out = fisher.result()
        return out

    def kl(self, mix: dict, imatrix=None) -> tuple[float, float]:
        """(mean KL(reference || mix), top-1 agreement) on the held-out chunk, the weights of every tensor in MIX
        (GGUF name -> type) quantized as that type with imatrix(name)'s importance (name -> (cols,) or None),
        one layer at a time. The model's weights are restored afterwards."""
        import torch

        def requantized(name, w):
            qtype = mix.get(name)
            if qtype is None or w.dim() != 2:
                return None
            return _requantized(w, qtype, imatrix(name) if imatrix is not None else None, self.threads)

        changed = {}
        try:
            with torch.no_grad():
                if self._ref is None:
                    self._ref = [self._held_logp(requantized=lambda name, w: None)]
                ends = [("token_embd.weight", self.embed)]
                if self.lm_head.weight is not self.embed.weight:   # tied: quantized once, as token_embd
                    ends.append(("output.weight", self.lm_head))
                for name, module in ends:
                    changed[name] = module.weight   # before the copy: an interrupted one is restored too
                    y = requantized(name, module.weight)
                    if y is None:
                        del changed[name]
                        continue
                    module.weight.copy_(y)
                    del y
                logp = self._held_logp(requantized, fresh_input="token_embd.weight" in changed)
        finally:
            for w in changed.values():   # read back from the checkpoint: no f32 copy held meanwhile
                self.lm.reload(w)
        return _kl(self._ref, [logp])

    def _held_logp(self, requantized, fresh_input: bool = False):
        """The log-probabilities (ctx, vocab) on the held-out chunk, each layer's tensors replaced by
        requantized(name, weight) where that is not None; fresh_input: the first layer's input recomputed (the
        embedding's weights were replaced)."""
        import torch

        held = len(self.fit_ids)
        h = self.lm.layer_inputs(self.held_ids)[0] if fresh_input else [self.hidden[held]]
        for i, layer in self.lm.layers(range(self.lm.n_layer)):
            for name, module in self._linears(i, layer):
                y = requantized(name, module.weight)
                if y is not None:
                    module.weight.data = y
            h = self._through(layer, i, [held], h)
            del layer
        return torch.log_softmax(self._logits(h[0], self.held_ids[0]).float(), dim=-1)


class WholeModel:
    """The reference the layer-wise Session is tested and measured against: the same quantities from the float32
    model held whole (transformers' AutoModelForCausalLM, one forward and backward pass per chunk with hooks on
    its nn.Linear layers and its embedding). Peak RSS 2.6x the f32 size on a 1B model (BENCHMARKS.md)."""

    def __init__(self, model_dir: Path, text_path: Path, ctx: int = 512, fit_chunks: int = 2, held_out: int = 2,
                 threads: int | None = None):
        model_dir = Path(model_dir)
        _start(self, model_dir, text_path, ctx, fit_chunks, held_out, threads)
        import torch
        from transformers import AutoModelForCausalLM
        from transformers.utils import logging as hf_logging

        from ggufkit.quant.imatrix_collect import _gguf_names
        from ggufkit.sources.hf import open_checkpoint

        shown = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()   # no "Loading weights" bar on stderr
        try:
            self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32,
                                                              trust_remote_code=False)
        finally:
            if shown:
                hf_logging.enable_progress_bar()
        self.model.eval()
        self.names = _gguf_names(self.model, model_dir, open_checkpoint(model_dir).config)   # module -> GGUF name
        self.embed = self.model.get_input_embeddings()
        self.lm_head = self.model.get_output_embeddings()
        for module_name, module in self.model.named_modules():
            if module is self.lm_head:
                self.names[module_name] = "output.weight"
        self._ref = None

    def sensitivity(self, seed: int = 0) -> dict[str, Sensitivity]:
        import torch

        fisher = _Fisher()
        hooks = [module.register_forward_hook(fisher.linear_hook(self.names[module_name]))
                 for module_name, module in self.model.named_modules() if module_name in self.names]
        hooks.append(self.embed.register_forward_hook(fisher.embed_hook))
        gen = torch.Generator().manual_seed(seed)
        try:
            for chunk in self.fit_ids:
                _sample_loss(self.model(input_ids=torch.tensor([chunk])).logits[0], gen).backward()
                self.model.zero_grad(set_to_none=True)
                fisher.tokens += len(chunk)
        finally:
            for h in hooks:
                h.remove()
        return fisher.result()

    def _logp(self):
        import torch

        with torch.no_grad():
            return [torch.log_softmax(self.model(input_ids=torch.tensor([c])).logits[0].float(), dim=-1)
                    for c in self.held_ids]

    def kl(self, mix: dict, imatrix=None) -> tuple[float, float]:
        import torch

        if self._ref is None:
            self._ref = self._logp()
        saved = {}
        try:
            for module_name, module in self.model.named_modules():
                name = self.names.get(module_name) or ("token_embd.weight" if module is self.embed else None)
                if name not in mix or getattr(module, "weight", None) is None or module.weight.dim() != 2:
                    continue
                if module is self.lm_head and self.lm_head.weight is self.embed.weight:
                    continue   # tied: quantized once, as token_embd
                y = _requantized(module.weight, mix[name], imatrix(name) if imatrix is not None else None,
                                 self.threads)
                if y is not None:
                    saved[name] = (module, module.weight.detach().clone())
                    with torch.no_grad():
                        module.weight.copy_(y)
            return _kl(self._ref, self._logp())
        finally:
            with torch.no_grad():
                for module, w in saved.values():
                    module.weight.copy_(w)
