"""Compute an importance matrix by running the Hugging Face model on calibration text (CPU, float32).

Follows llama-imatrix's procedure: tokenize the whole text once, cut it into chunks of `ctx` tokens (the first
token of each chunk replaced by BOS when the tokenizer adds one), evaluate each chunk, and for every weight matrix
of the transformer blocks (and output.weight only if asked) accumulate the squared input activations per column
and the number of tokens. Forward pre-hooks on nn.Linear see exactly the matrix inputs llama.cpp's collector sees.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from ggufkit.errors import InputError
from ggufkit.quant.imatrix import Imatrix, ImatrixEntry


def _gguf_names(model, model_dir: Path, config: dict) -> dict[str, str]:
    """nn.Linear module name -> GGUF tensor name of its weight, via the architecture's own name map."""
    import gguf
    import torch

    from ggufkit.archs import for_config

    arch = for_config(config, model_dir / "config.json")
    name_map = gguf.get_tensor_name_map(arch.gguf_arch, arch.n_layer)
    names = {}
    for module_name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            gguf_name = name_map.get_name(module_name + ".weight", try_suffixes=(".weight",))
            if gguf_name is not None:
                names[module_name] = gguf_name
    return names


def calibration_text(text_path: Path, ctx: int) -> str:
    """The calibration text, after checking the context length: a one-line InputError naming the file otherwise."""
    if ctx < 16:
        raise InputError(f"--ctx {ctx} is too small (llama.cpp ignores batches under 16 tokens)")
    try:
        return Path(text_path).read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        raise InputError(f"cannot read calibration text: {e.strerror}", text_path) from None


def calibration_ids(tokenizer, text_path: Path, ctx: int, chunks: int | None, text: str | None = None) -> list:
    """llama-imatrix's chunks: the whole text tokenized once, cut into `ctx` tokens, the first token of each chunk
    BOS when the tokenizer adds one. -> list of (ctx,) token id lists (at most `chunks`)."""
    if text is None:
        text = calibration_text(text_path, ctx)
    ids = tokenizer(text, add_special_tokens=True)["input_ids"]  # (n_tokens,)
    bos = tokenizer.bos_token_id
    adds_bos = bos is not None and len(ids) > 0 and ids[0] == bos and not text.startswith(tokenizer.bos_token)
    n_chunks = len(ids) // ctx
    if chunks is not None:
        n_chunks = min(n_chunks, chunks)
    if n_chunks < 1:
        raise InputError(f"{len(ids)} tokens are fewer than one chunk of {ctx}", text_path)
    out = []
    for c in range(n_chunks):
        chunk = list(ids[c * ctx: (c + 1) * ctx])
        if adds_bos:
            chunk[0] = bos
        out.append(chunk)
    return out


def compute(model_dir: Path, text_path: Path, ctx: int = 512, chunks: int | None = None,
            process_output: bool = False, threads: int | None = None, progress: bool = True) -> Imatrix:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir, text_path = Path(model_dir), Path(text_path)
    text = calibration_text(text_path, ctx)
    config = json.loads((model_dir / "config.json").read_text())
    if threads:
        torch.set_num_threads(threads)
    tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=False)
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    if not progress:  # transformers draws its own "Loading weights" bar
        hf_logging.disable_progress_bar()
    try:
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, trust_remote_code=False)
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    model.eval()

    token_chunks = calibration_ids(tokenizer, text_path, ctx, chunks, text)
    n_chunks = len(token_chunks)

    names = _gguf_names(model, model_dir, config)
    sums: dict[str, torch.Tensor] = {}
    tokens: dict[str, int] = {}

    def hook_for(gguf_name: str):
        def hook(_module, inputs):
            x = inputs[0].detach().reshape(-1, inputs[0].shape[-1])  # (tokens, n_cols)
            acc = sums.get(gguf_name)
            sq = (x.double() ** 2).sum(dim=0)
            sums[gguf_name] = sq if acc is None else acc + sq
            tokens[gguf_name] = tokens.get(gguf_name, 0) + x.shape[0]
        return hook

    handles = []
    for module_name, module in model.named_modules():
        gguf_name = names.get(module_name)
        if gguf_name and (gguf_name.startswith("blk.") or (process_output and gguf_name == "output.weight")):
            handles.append(module.register_forward_pre_hook(hook_for(gguf_name)))
    expert_sums: dict[str, torch.Tensor] = {}  # (n_expert, n_cols) f64 per 3-D expert tensor
    expert_tokens: dict[str, torch.Tensor] = {}  # (n_expert,) tokens routed to each expert
    for module_name, module, exps in _expert_modules(model, model_dir, config):
        handles.append(module.register_forward_pre_hook(_expert_hook(module, exps, expert_sums, expert_tokens),
                                                        with_kwargs=True))

    from tqdm import tqdm

    with torch.no_grad():
        for chunk in tqdm(token_chunks, desc="imatrix", unit="chunk", disable=not progress):
            model(torch.tensor([chunk]), use_cache=False)
    for h in handles:
        h.remove()

    out = Imatrix(datasets=[text_path.name], chunk_count=n_chunks, chunk_size=ctx)
    for name in sorted(sums):
        out.entries[name] = ImatrixEntry(sums[name].numpy().astype(np.float32).reshape(1, -1),
                                         np.array([float(tokens[name])]))
    for name in sorted(expert_sums):
        out.entries[name] = ImatrixEntry(expert_sums[name].numpy().astype(np.float32),
                                         expert_tokens[name].numpy().astype(np.float64))
    out.entries = dict(sorted(out.entries.items()))
    return out


# ---- mixture-of-experts layers

def _expert_modules(model, model_dir: Path, config: dict):
    """(module name, module, {"gate"/"up"/"down": GGUF name}) for each transformers 5 experts module: the fused
    3-D parameters gate_up_proj and down_proj, named as archs/moe.py stacks them (ffn_{gate,up,down}_exps)."""
    import gguf

    from ggufkit.archs import for_config

    arch = for_config(config, model_dir / "config.json")
    name_map = gguf.get_tensor_name_map(arch.gguf_arch, arch.n_layer)
    for module_name, module in model.named_modules():
        params = dict(module.named_parameters(recurse=False))
        if params.get("gate_up_proj") is None or params.get("down_proj") is None or params["down_proj"].dim() != 3:
            continue
        exps = {part: name_map.get_name(f"{module_name}.{part}_proj.weight", try_suffixes=(".weight",))
                for part in ("gate", "up", "down")}
        if all(exps.values()):
            yield module_name, module, exps


def _expert_hook(module, exps: dict[str, str], sums: dict, tokens: dict):
    """What llama-imatrix collects at a MUL_MAT_ID: per expert, the squared inputs of the tokens routed to it
    (gate and up see the layer input, down the gated intermediate) and their number. The intermediate is
    recomputed with the experts module's own transformers 5 interface (is_transposed, has_bias, _apply_gate:
    SwiGLU for qwen3_moe / mixtral, gpt-oss's clamped variant)."""
    import torch

    transposed = getattr(module, "is_transposed", False)  # (n_expert, in, out) instead of (n_expert, out, in)
    biases = getattr(module, "has_bias", False)

    def linear(x, w, b):
        y = x @ w if transposed else torch.nn.functional.linear(x, w)
        return y + b if b is not None else y

    def hook(_module, args, kwargs):
        x = args[0] if args else kwargs["hidden_states"]
        x = x.detach().reshape(-1, x.shape[-1])  # (tokens, n_embd)
        index = args[1] if len(args) > 1 else kwargs.get("top_k_index", kwargs.get("router_indices"))
        index = index.reshape(x.shape[0], -1)  # (tokens, top_k) expert ids
        gate_up, down = module.gate_up_proj.detach(), module.down_proj.detach()
        n_expert = gate_up.shape[0]
        n_ff = down.shape[1] if transposed else down.shape[2]
        sq_in = torch.zeros(n_expert, x.shape[1], dtype=torch.float64)
        sq_mid = torch.zeros(n_expert, n_ff, dtype=torch.float64)
        count = torch.zeros(n_expert, dtype=torch.float64)
        for e in range(n_expert):
            rows = (index == e).nonzero()[:, 0]  # a token picks an expert at most once
            if len(rows) == 0:
                continue
            xe = x[rows]  # (routed tokens, n_embd)
            bias = module.gate_up_proj_bias.detach()[e] if biases else None
            mid = module._apply_gate(linear(xe, gate_up[e], bias))  # (routed tokens, n_ff)
            sq_in[e] = (xe.double() ** 2).sum(0)
            sq_mid[e] = (mid.double() ** 2).sum(0)
            count[e] = len(rows)
        for part, sq in (("gate", sq_in), ("up", sq_in), ("down", sq_mid)):
            name = exps[part]
            sums[name] = sq if name not in sums else sums[name] + sq
            tokens[name] = count if name not in tokens else tokens[name] + count
    return hook
