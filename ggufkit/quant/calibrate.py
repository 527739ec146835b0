"""Calibration with bounded memory: the importance matrix and each linear layer's input covariance, computed one
decoder layer at a time straight from the safetensors.

    im, stats = calibrate(model_dir, "hamlet.txt", ctx=512, chunks=16, stats_dir="calib-stats")

The whole-model collector (imatrix_collect.compute) loads every weight in float32 (a 7B model: ~28 GB). Here:
  1. the model's own classes are built by transformers from config.json, with no decoder layer (embeddings,
     final norm, rotary tables: the few non-layer weights, read from the checkpoint);
  2. one forward per chunk runs with every decoder layer replaced by a catcher that records the arguments the
     model passes to it (hidden states, mask, position embeddings, per layer: hybrid models differ per layer)
     and stops before the last norm and the LM head;
  3. for each layer in turn: that layer alone is built with its transformers class, its weights read from the
     safetensors (per-expert tensors stacked into the fused 3-D parameters as transformers 5 runs them), run on
     every chunk's hidden states, which it replaces with its output; forward pre-hooks on its nn.Linear layers
     accumulate what llama-imatrix collects, and (with stats_dir) the input covariance; then it is freed.
Peak memory: one layer's float32 weights + the hidden states of all calibration tokens (tokens x hidden f32) +
one layer's covariance accumulators. No code from the model repository runs (trust_remote_code is off).

Input covariance (what GPTQ-style error feedback needs, ggufkit.quant.gptq): H = sum_t x_t x_t^T per distinct
linear input, (cols, cols) f32, written to stats_dir as <group>.npy and shared by the matrices that read the same
input (q/k/v, gate/up). Full, not diagonal + low-rank: error feedback's update W[:, later] -= E Hinv[block,
later] needs the whole inverse; a rank-r model of H with 8192-wide inputs and a few thousand calibration tokens
is nearly full rank anyway (rank <= tokens), and the full matrix costs only disk (cols^2 x 4 bytes per group,
~0.3 GB per layer of a 1B model) and one layer's worth of RAM while it is accumulated. Expert (3-D) tensors get
their imatrix, not a covariance (error feedback leaves them to the plain encoder).
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ggufkit.errors import InputError
from ggufkit.quant.imatrix import Imatrix, ImatrixEntry

STATS_INDEX = "statistics.json"


@dataclass
class Statistics:
    """Per-matrix input covariance on disk: GGUF tensor name -> group file (cols, cols) f32 and token count."""
    directory: Path
    groups: dict[str, str] = field(default_factory=dict)   # tensor name -> group file name
    tokens: dict[str, int] = field(default_factory=dict)   # group file name -> tokens summed

    def hessian(self, name: str) -> np.ndarray | None:
        """The mean input covariance (cols, cols) f32 of tensor `name` (sum x x^T / tokens), or None."""
        group = self.groups.get(name)
        if group is None:
            return None
        h = np.load(self.directory / group, mmap_mode="r")
        return np.asarray(h, dtype=np.float32) / np.float32(max(1, self.tokens[group]))

    def save(self) -> None:
        tmp = self.directory / f".{STATS_INDEX}.tmp"
        tmp.write_text(json.dumps({"groups": self.groups, "tokens": self.tokens}, indent=1))
        os.replace(tmp, self.directory / STATS_INDEX)

    @classmethod
    def load(cls, directory) -> Statistics:
        directory = Path(directory)
        try:
            index = json.loads((directory / STATS_INDEX).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise InputError(f"not a calibration statistics directory ({e})", directory) from None
        return cls(directory, dict(index["groups"]), {k: int(v) for k, v in index["tokens"].items()})


class _StopForward(Exception):
    pass


def _catchers(n_layer: int, calls: list):
    """Stand-ins for the decoder layers: record (layer, hidden states, kwargs) and pass the hidden states on."""
    import torch

    class Catcher(torch.nn.Module):
        def __init__(self, index: int):
            super().__init__()
            self.index = index

        def forward(self, hidden_states, *args, **kwargs):
            if args:
                raise InputError("layer-wise calibration: the model passes positional arguments to its decoder "
                                 "layers (not supported)")
            calls[-1].append({k: v for k, v in kwargs.items() if k not in ("cache", "past_key_values")})
            if self.index == 0:
                calls[-1].insert(0, hidden_states.detach().clone())
            if self.index == n_layer - 1:
                raise _StopForward
            return hidden_states

    return torch.nn.ModuleList([Catcher(i) for i in range(n_layer)])


def _layer_state(ckpt, prefix: str, module) -> dict:
    """The layer's state dict from the checkpoint: its own tensor names, or per-expert tensors stacked into the
    fused experts parameters (gate_up_proj = [gate; up] per expert, down_proj), as transformers 5 loads them."""
    import torch

    out = {}
    for key, ref in module.state_dict().items():
        name = prefix + key
        if name in ckpt.tensors:
            out[key] = torch.from_numpy(ckpt.tensors[name].read().astype(np.float32, copy=False))
            continue
        m = re.fullmatch(r"(.*experts)\.(gate_up_proj|down_proj)", key)
        if m is None or f"{prefix}{m.group(1)}.0.down_proj.weight" not in ckpt.tensors:
            raise InputError(f"layer-wise calibration: no tensor {name} in the checkpoint", ckpt.weights_file)
        base = f"{prefix}{m.group(1)}"
        parts = ("gate_proj", "up_proj") if m.group(2) == "gate_up_proj" else ("down_proj",)
        experts = []
        for e in range(ref.shape[0]):
            experts.append(np.concatenate([ckpt.tensors[f"{base}.{e}.{p}.weight"].read() for p in parts]))
        stacked = torch.from_numpy(np.stack(experts).astype(np.float32, copy=False))
        if tuple(stacked.shape) != tuple(ref.shape):  # e.g. is_transposed experts
            stacked = stacked.transpose(1, 2).contiguous()
        if tuple(stacked.shape) != tuple(ref.shape):
            raise InputError(f"layer-wise calibration: {name} is {tuple(ref.shape)}, the stacked experts are "
                             f"{tuple(stacked.shape)}", ckpt.weights_file)
        out[key] = stacked
    return out


BATCH_TOKENS = 2048  # chunks run through a layer together, up to this many tokens (bounds the temporaries)


def _same(a, b) -> bool:
    """Whether two layer arguments are equal (tensors by value, tuples element by element)."""
    import torch

    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape
                and a.dtype == b.dtype and bool(torch.equal(a, b)))
    if isinstance(a, (tuple, list)) or isinstance(b, (tuple, list)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    try:
        return bool(a == b)
    except (TypeError, ValueError, RuntimeError):
        return False


def _batches(chunk_kwargs: list[dict], most: int) -> list[list[int]]:
    """Consecutive chunks that may run through a layer as one batch: at most `most`, their arguments besides the
    hidden states (mask, positions, rotary tables: each chunk starts at position 0) equal, so the first chunk's
    broadcast over the batch. Larger matrix products and fewer thread barriers than one chunk at a time."""
    out: list[list[int]] = []
    for c, kw in enumerate(chunk_kwargs):
        head = chunk_kwargs[out[-1][0]] if out else None
        if out and len(out[-1]) < most and kw.keys() == head.keys() and all(_same(kw[k], head[k]) for k in kw):
            out[-1].append(c)
        else:
            out.append([c])
    return out


class LayerModel:
    """A checkpoint's model one decoder layer at a time, each layer's weights read from the safetensors when it is
    built (what calibrate and ggufkit.plan.sensitivity run):

        lm = LayerModel(model_dir, head=True)
        hidden, kwargs = lm.layer_inputs(chunks)   # per chunk the first layer's input, per layer its arguments
        for i, layer in lm.layers(range(lm.n_layer)):   # layer i built with its transformers class
            ...                                         # (del layer at the end of the body: one layer at a time)

    `shell` is the model around the layers, built by transformers from config.json with no decoder layer and its
    few weights read from the checkpoint: the base model (`decoder`: embeddings, rotary tables, final norm) or,
    with head=True, the causal LM (its LM head, tied or not, and whatever its forward does to the logits). The
    next layer's weights are read (file, bf16 -> f32) by a second thread while the current one computes. No code
    from the model repository runs (trust_remote_code is off)."""

    def __init__(self, model_dir: Path, head: bool = False):
        import gguf
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM
        from transformers.initialization import no_init_weights

        from ggufkit.archs import for_config
        from ggufkit.sources.hf import open_checkpoint

        model_dir = Path(model_dir)
        self.ckpt = ckpt = open_checkpoint(model_dir)
        config = AutoConfig.from_pretrained(model_dir, trust_remote_code=False)
        with torch.device("meta"):
            meta = AutoModelForCausalLM.from_config(config, trust_remote_code=False)
        base_meta = meta.get_decoder() if hasattr(meta, "get_decoder") else meta.model
        base_name = next(n for n, m in meta.named_modules() if m is base_meta)
        self.prefix = base_name + "." if base_name else ""
        if not isinstance(getattr(base_meta, "layers", None), torch.nn.ModuleList):
            raise InputError("layer-wise calibration: the model has no .layers list of decoder layers", ckpt.config_path)
        self.n_layer = len(base_meta.layers)
        self._meta_layers = list(base_meta.layers)
        self.config = base_meta.config
        top, top_prefix = (meta, "") if head else (base_meta, self.prefix)
        self.config.num_hidden_layers = 0
        try:
            with no_init_weights():  # every weight is read below: no random initialisation (was ~20% of the time)
                self.shell = type(top)(top.config).to(torch.float32)
        finally:
            self.config.num_hidden_layers = self.n_layer
        self.shell.eval()
        state, missing = {}, []
        for key in self.shell.state_dict():
            name = top_prefix + key
            if name in ckpt.tensors:
                state[key] = torch.from_numpy(ckpt.tensors[name].read().astype(np.float32, copy=False))
            else:
                missing.append(key)
        self.shell.load_state_dict(state, strict=False, assign=True)  # assign: the arrays read are the weights
        if missing:  # a tied LM head: the embedding's weight, tied as from_pretrained ties it
            self.shell.tie_weights()
            loaded = {id(v) for k, v in self.shell.state_dict(keep_vars=True).items() if k in state}
            untied = [k for k, v in self.shell.state_dict(keep_vars=True).items() if k in missing and id(v) not in loaded]
            if untied:
                raise InputError(f"layer-wise calibration: no tensor {top_prefix + untied[0]} in the checkpoint",
                                 ckpt.weights_file)
        del state
        self._shell_prefix = top_prefix
        self.decoder = self.shell.get_submodule(base_name) if head and base_name else self.shell
        arch = for_config(ckpt.config, ckpt.config_path)
        self.name_map = gguf.get_tensor_name_map(arch.gguf_arch, arch.n_layer)

    def layer_inputs(self, token_chunks: list) -> tuple[list, list]:
        """One run of the model without its layers per chunk, up to the first layer: -> (per chunk the first
        layer's hidden states (1, ctx, hidden) f32, per layer per chunk its keyword arguments: mask, positions,
        rotary tables, per layer since hybrid models differ per layer)."""
        import torch

        self.decoder.layers = _catchers(self.n_layer, calls := [])
        try:
            with torch.no_grad():
                for chunk in token_chunks:
                    calls.append([])
                    try:
                        self.decoder(input_ids=torch.tensor([chunk]), use_cache=False)
                    except _StopForward:
                        pass
        finally:
            self.decoder.layers = torch.nn.ModuleList()
        hidden = [c.pop(0) for c in calls]
        return hidden, [[c[i] for c in calls] for i in range(self.n_layer)]

    def reload(self, weight) -> None:
        """Read the shell's parameter WEIGHT back from the checkpoint (after it was overwritten in place)."""
        import torch

        key = next(k for k, v in self.shell.named_parameters() if v is weight)
        with torch.no_grad():
            weight.copy_(torch.from_numpy(self.ckpt.tensors[self._shell_prefix + key].read().astype(np.float32,
                                                                                                  copy=False)))

    def gguf_name(self, i: int, module_name: str) -> str | None:
        """The GGUF name of layer i's weight `module_name`.weight (None: not a tensor of the GGUF file)."""
        return self.name_map.get_name(f"{self.prefix}layers.{i}.{module_name}.weight", try_suffixes=(".weight",))

    def layers(self, order):
        """(i, layer i with its weights, in eval mode) for i in ORDER; the next one's weights read meanwhile."""
        import torch
        from transformers.initialization import no_init_weights

        order = list(order)
        if not order:
            return

        def read(i):
            return _layer_state(self.ckpt, f"{self.prefix}layers.{i}.", self._meta_layers[i])

        from concurrent.futures import ThreadPoolExecutor

        reader = ThreadPoolExecutor(max_workers=1)
        try:
            read_next = reader.submit(read, order[0])
            for k, i in enumerate(order):
                state = read_next.result()
                if k + 1 < len(order):
                    read_next = reader.submit(read, order[k + 1])
                with no_init_weights():
                    layer = type(self._meta_layers[i])(self.config, i).to(torch.float32)
                layer.load_state_dict(state, strict=True, assign=True)
                del state
                layer.eval()
                yield i, layer
                del layer
        finally:
            reader.shutdown(wait=True, cancel_futures=True)


def calibrate(model_dir: Path, text_path: Path, ctx: int = 512, chunks: int | None = None,
              process_output: bool = False, threads: int | None = None, progress: bool = True,
              stats_dir: Path | None = None, halves: bool = False) -> tuple[Imatrix, Statistics | tuple | None]:
    """The importance matrix (as imatrix_collect.compute, within float tolerance) and, with stats_dir, the input
    covariance of every 2-D block matrix, layer by layer. -> (Imatrix, Statistics or None).
    halves=True: two covariance accumulators in the same pass, one for the first len(chunks) // 2 chunks and
    one for the rest (stats_dir/a, stats_dir/b) -> (Imatrix of all chunks, (Statistics a, Statistics b) or None)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoTokenizer

    from ggufkit.quant.imatrix_collect import _expert_hook, calibration_ids

    model_dir = Path(model_dir)
    if threads:
        torch.set_num_threads(threads)
    tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=False)
    token_chunks = calibration_ids(tokenizer, Path(text_path), ctx, chunks)  # list of (ctx,) token id lists
    n_first = len(token_chunks) // 2 if halves else len(token_chunks)  # chunks [0, n_first) go to part 0
    if halves and n_first < 1:
        raise InputError(f"{len(token_chunks)} chunk of {ctx} tokens: error feedback needs at least 2 calibration "
                         f"chunks (one to fit, one to check)", text_path)
    # 1-2: the model without its layers, run once per chunk up to the first layer's arguments
    lm = LayerModel(model_dir)
    n_layer = lm.n_layer
    hidden, kwargs = lm.layer_inputs(token_chunks)   # per chunk (1, ctx, hidden) f32; per layer, per chunk
    final_norm = getattr(lm.decoder, "norm", None)
    lm.decoder.embed_tokens = None  # the largest non-layer weight: not needed any more

    # 3: one layer at a time
    sums: dict[str, torch.Tensor] = {}
    tokens: dict[str, int] = {}
    expert_sums: dict[str, torch.Tensor] = {}
    expert_tokens: dict[str, torch.Tensor] = {}
    parts: list[Statistics] = []   # one Statistics per part of the chunks (two with halves)
    if stats_dir is not None:
        dirs = [Path(stats_dir) / "a", Path(stats_dir) / "b"] if halves else [Path(stats_dir)]
        parts = [Statistics(d) for d in dirs]
        for part in parts:
            part.directory.mkdir(parents=True, exist_ok=True)

    from tqdm import tqdm

    for i, layer in tqdm(lm.layers(range(n_layer)), total=n_layer, desc="calibration", unit="layer",
                         disable=not progress):
        lp = f"{lm.prefix}layers.{i}."
        cov: list[dict[str, torch.Tensor]] = [{} for _ in parts]   # per part: group file -> (cols, cols) f32
        cov_tokens: list[dict[str, int]] = [{} for _ in parts]      # sum x x^T and its tokens
        last = {"x": None, "group": None, "sq_of": None, "sq": None, "cut": 0}  # cut: tokens of part 0
        handles = []

        def hook_for(gguf_name: str, cov=cov, cov_tokens=cov_tokens, last=last):
            def hook(_module, inputs):
                x = inputs[0].detach().reshape(-1, inputs[0].shape[-1])  # (tokens, n_cols)
                if last["sq_of"] is not inputs[0]:  # q/k/v and gate/up read one input: its squares once
                    xd = x.double()
                    last["sq_of"], last["sq"] = inputs[0], xd.mul_(xd).sum(dim=0)  # (n_cols,) f64
                sq = last["sq"]
                sums[gguf_name] = sq if gguf_name not in sums else sums[gguf_name] + sq
                tokens[gguf_name] = tokens.get(gguf_name, 0) + x.shape[0]
                if not parts:
                    return
                if last["x"] is inputs[0]:  # same input as the previous matrix (q/k/v, gate/up): shared
                    group = last["group"]
                else:
                    group = parts[0].groups.get(gguf_name) or f"{gguf_name.removesuffix('.weight')}.input.npy"
                    cut = last["cut"] if len(parts) == 2 else x.shape[0]
                    for p, xp in enumerate((x[:cut], x[cut:])[:len(parts)]):
                        if xp.shape[0] == 0:
                            continue
                        acc = cov[p].get(group)  # (n_cols, n_cols) f32 += x^T x, in place (no temporary)
                        cov[p][group] = xp.T @ xp if acc is None else acc.addmm_(xp.T, xp)
                        cov_tokens[p][group] = cov_tokens[p].get(group, 0) + xp.shape[0]
                    last["x"], last["group"] = inputs[0], group
                for part in parts:
                    part.groups.setdefault(gguf_name, group)
            return hook

        for module_name, module in layer.named_modules():
            if isinstance(module, torch.nn.Linear):
                gguf_name = lm.gguf_name(i, module_name)
                if gguf_name is not None and gguf_name.startswith("blk."):
                    handles.append(module.register_forward_pre_hook(hook_for(gguf_name)))
            params = dict(module.named_parameters(recurse=False))
            if params.get("gate_up_proj") is not None and getattr(params.get("down_proj"), "dim", lambda: 0)() == 3:
                exps = {part: lm.name_map.get_name(f"{lp}{module_name}.{part}_proj.weight", try_suffixes=(".weight",))
                        for part in ("gate", "up", "down")}
                if all(exps.values()):
                    handles.append(module.register_forward_pre_hook(
                        _expert_hook(module, exps, expert_sums, expert_tokens), with_kwargs=True))
        with torch.no_grad():
            for batch in _batches(kwargs[i], max(1, BATCH_TOKENS // ctx)):
                last["x"] = last["sq_of"] = None
                last["cut"] = sum(c < n_first for c in batch) * ctx  # the batch's chunks are consecutive
                x = hidden[batch[0]] if len(batch) == 1 else torch.cat([hidden[c] for c in batch])
                out = layer(x, **kwargs[i][batch[0]])
                out = out[0] if isinstance(out, tuple) else out       # (len(batch), ctx, hidden) f32
                for k, c in enumerate(batch):
                    hidden[c] = out[k:k + 1]
        for h in handles:
            h.remove()
        del layer
        for part, part_cov, part_tokens in zip(parts, cov, cov_tokens):
            for group, acc in part_cov.items():
                np.save(part.directory / group, acc.numpy())
                part.tokens[group] = part_tokens[group]
            part.save()
        del cov

    if process_output and final_norm is not None:
        with torch.no_grad():
            for h in hidden:
                x = final_norm(h).reshape(-1, h.shape[-1])
                sq = (x.double() ** 2).sum(0)
                sums["output.weight"] = sq if "output.weight" not in sums else sums["output.weight"] + sq
                tokens["output.weight"] = tokens.get("output.weight", 0) + x.shape[0]

    out = Imatrix(datasets=[Path(text_path).name], chunk_count=len(token_chunks), chunk_size=ctx)
    for name in sorted(sums):
        out.entries[name] = ImatrixEntry(sums[name].numpy().astype(np.float32).reshape(1, -1),
                                         np.array([float(tokens[name])]))
    for name in sorted(expert_sums):
        out.entries[name] = ImatrixEntry(expert_sums[name].numpy().astype(np.float32),
                                         expert_tokens[name].numpy().astype(np.float64))
    out.entries = dict(sorted(out.entries.items()))
    if not parts:
        return out, None
    return out, tuple(parts) if halves else parts[0]
