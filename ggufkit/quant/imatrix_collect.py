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


def compute(model_dir: Path, text_path: Path, ctx: int = 512, chunks: int | None = None,
            process_output: bool = False, threads: int | None = None, progress: bool = True) -> Imatrix:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir, text_path = Path(model_dir), Path(text_path)
    if ctx < 16:
        raise InputError(f"--ctx {ctx} is too small (llama.cpp ignores batches under 16 tokens)")
    try:
        text = text_path.read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        raise InputError(f"cannot read calibration text: {e.strerror}", text_path) from None
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

    ids = tokenizer(text, add_special_tokens=True)["input_ids"]  # (n_tokens,)
    bos = tokenizer.bos_token_id
    adds_bos = bos is not None and len(ids) > 0 and ids[0] == bos and not text.startswith(tokenizer.bos_token)
    n_chunks = len(ids) // ctx
    if chunks is not None:
        n_chunks = min(n_chunks, chunks)
    if n_chunks < 1:
        raise InputError(f"{len(ids)} tokens are fewer than one chunk of {ctx}", text_path)

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

    from tqdm import tqdm

    with torch.no_grad():
        for c in tqdm(range(n_chunks), desc="imatrix", unit="chunk", disable=not progress):
            chunk = list(ids[c * ctx: (c + 1) * ctx])
            if adds_bos:
                chunk[0] = bos
            model(torch.tensor([chunk]), use_cache=False)
    for h in handles:
        h.remove()

    out = Imatrix(datasets=[text_path.name], chunk_count=n_chunks, chunk_size=ctx)
    for name in sorted(sums):
        out.entries[name] = ImatrixEntry(sums[name].numpy().astype(np.float32).reshape(1, -1),
                                         np.array([float(tokens[name])]))
    return out
