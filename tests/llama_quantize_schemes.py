"""Reference for scheme plans: tiny F32 GGUF models written with gguf-py, quantized by llama.cpp's own
llama_model_quantize (through llama-cpp-python), and the tensor types read back with gguf-py's GGUFReader.

A layout is a model's GGUF tensor list with the real row lengths (what the type rules look at) but few rows, so
quantizing every scheme takes a fraction of a second. llama-quantize never checks tensor shapes against the
hyperparameters, which is what lets the rows shrink.
"""
from __future__ import annotations

import ctypes
import functools
import re
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

from ggufkit.plan.schemes import ModelInfo


@dataclass(frozen=True)
class Layout:
    """A test model: hyperparameters and its (gguf name, numpy shape) list in file order."""
    label: str
    info: ModelInfo
    n_ff: int
    tensors: tuple[tuple[str, tuple[int, ...]], ...]


def dense_layout(label: str, info: ModelInfo, n_ff: int, tied: bool, rows: int = 4,
                 extra: tuple[tuple[str, tuple[int, ...]], ...] = ()) -> Layout:
    """A llama-style dense decoder in convert_hf_to_gguf's tensor order, each matrix cut to `rows` rows.
    (rows, cols) numpy shapes: cols is the input width, the one the block-size rules test."""
    head_dim = info.n_embd // info.n_head
    q_width, kv_width = info.n_head * head_dim, info.n_head_kv * head_dim
    tensors: list[tuple[str, tuple[int, ...]]] = [("token_embd.weight", (rows, info.n_embd))]
    tensors += list(extra)
    for i in range(info.n_layer):
        b = f"blk.{i}."
        tensors += [
            (b + "attn_norm.weight", (info.n_embd,)),
            (b + "ffn_down.weight", (rows, n_ff)),
            (b + "ffn_gate.weight", (rows, info.n_embd)),
            (b + "ffn_up.weight", (rows, info.n_embd)),
            (b + "ffn_norm.weight", (info.n_embd,)),
            (b + "attn_k.weight", (min(rows, kv_width), info.n_embd)),
            (b + "attn_output.weight", (rows, q_width)),
            (b + "attn_q.weight", (rows, info.n_embd)),
            (b + "attn_v.weight", (min(rows, kv_width), info.n_embd)),
        ]
    if not tied:
        tensors.append(("output.weight", (rows, info.n_embd)))
    tensors.append(("output_norm.weight", (info.n_embd,)))
    return Layout(label, info, n_ff, tuple(tensors))


def moe_layout(label: str, info: ModelInfo, n_ff: int, rows: int = 2) -> Layout:
    """A Mixtral-style MoE: router (not quantized) and 3-D expert tensors (n_expert, rows, cols)."""
    e = info.n_expert
    tensors: list[tuple[str, tuple[int, ...]]] = [("token_embd.weight", (rows, info.n_embd))]
    for i in range(info.n_layer):
        b = f"blk.{i}."
        tensors += [
            (b + "attn_norm.weight", (info.n_embd,)),
            (b + "attn_q.weight", (rows, info.n_embd)),
            (b + "attn_k.weight", (rows, info.n_embd)),
            (b + "attn_v.weight", (rows, info.n_embd)),
            (b + "attn_output.weight", (rows, info.n_embd)),
            (b + "ffn_norm.weight", (info.n_embd,)),
            (b + "ffn_gate_inp.weight", (e, info.n_embd)),
            (b + "ffn_gate_exps.weight", (e, rows, info.n_embd)),
            (b + "ffn_down_exps.weight", (e, rows, n_ff)),
            (b + "ffn_up_exps.weight", (e, rows, info.n_embd)),
        ]
    tensors += [("output_norm.weight", (info.n_embd,)), ("output.weight", (rows, info.n_embd))]
    return Layout(label, info, n_ff, tuple(tensors))


def write_f32_gguf(path: Path, layout: Layout, seed: int = 0) -> Path:
    """An F32 GGUF llama.cpp's quantizer accepts: the hyperparameter keys its loader requires, random data."""
    info = layout.info
    rng = np.random.default_rng(seed)
    writer = gguf.GGUFWriter(str(path), info.arch)
    writer.add_block_count(info.n_layer)
    writer.add_context_length(256)
    writer.add_embedding_length(info.n_embd)
    writer.add_feed_forward_length(layout.n_ff)
    writer.add_head_count(info.n_head)
    writer.add_head_count_kv(info.n_head_kv)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_layer_norm_eps(1e-5)
    writer.add_rope_dimension_count(info.n_embd // info.n_head)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    if info.n_expert:
        writer.add_expert_count(info.n_expert)
        writer.add_expert_used_count(2)
    for name, shape in layout.tensors:
        writer.add_tensor(name, rng.standard_normal(shape, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


_LOG: list[str] = []


@functools.lru_cache(maxsize=1)
def _capture_llama_log() -> object:
    """Route llama.cpp's log (a line per tensor while quantizing) into _LOG instead of stderr; returns the
    callback, which must stay alive."""
    import llama_cpp

    def collect(level, text, user_data):
        _LOG.append(text.decode("utf-8", "replace"))

    callback = llama_cpp.llama_log_callback(collect)
    llama_cpp.llama_log_set(callback, ctypes.c_void_p(0))
    return callback


@dataclass
class Quantized:
    """What llama_model_quantize wrote: name -> (type, n_bytes) in file order, and its log text."""
    tensors: dict[str, tuple[gguf.GGMLQuantizationType, int]]
    log: str

    def quant_bpw(self) -> float:
        """The bits per weight llama.cpp reports ("quant size = X MiB (Y BPW)")."""
        m = re.search(r"quant size\s*=\s*[\d.]+ MiB \(([\d.]+) BPW\)", self.log)
        assert m, "no 'quant size' line in llama.cpp's log"
        return float(m.group(1))


def llama_quantize(src: Path, dst: Path, file_type: gguf.LlamaFileType,
                   imatrix_names: list[tuple[str, int]] | None = None, nthread: int = 2) -> Quantized:
    """Run llama_model_quantize(src -> dst, ftype) and read dst back with GGUFReader.
    imatrix_names: (tensor name, row length) pairs to pass an all-ones importance matrix for."""
    import llama_cpp

    _capture_llama_log()
    _LOG.clear()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = int(file_type)
    params.nthread = nthread
    keep_alive = []
    if imatrix_names:
        entries = (llama_cpp.llama_model_imatrix_data * (len(imatrix_names) + 1))()
        for slot, (name, n) in zip(entries, imatrix_names):
            values = (ctypes.c_float * n)(*([1.0] * n))
            keep_alive.append(values)
            slot.name, slot.data, slot.size = name.encode(), values, n
        entries[len(imatrix_names)].name = None
        params.imatrix = entries
        keep_alive.append(entries)
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    log = "".join(_LOG)
    if rc != 0:
        raise RuntimeError(f"llama_model_quantize({src.name}, {file_type.name}) failed ({rc}):\n{log[-2000:]}")
    reader = gguf.GGUFReader(str(dst))
    tensors = {t.name: (gguf.GGMLQuantizationType(t.tensor_type), int(t.n_bytes)) for t in reader.tensors}
    del reader
    return Quantized(tensors, log)


def falcon_layout(label: str, info: ModelInfo, n_ff: int, rows: int = 4) -> Layout:
    """A Falcon-style decoder: fused attn_qkv, no gate, biases on the norms (Falcon has its own rules)."""
    tensors: list[tuple[str, tuple[int, ...]]] = [("token_embd.weight", (rows, info.n_embd))]
    for i in range(info.n_layer):
        b = f"blk.{i}."
        tensors += [
            (b + "attn_norm.bias", (info.n_embd,)),
            (b + "attn_norm.weight", (info.n_embd,)),
            (b + "attn_qkv.weight", (rows, info.n_embd)),
            (b + "attn_output.weight", (rows, info.n_embd)),
            (b + "ffn_up.weight", (rows, info.n_embd)),
            (b + "ffn_down.weight", (rows, n_ff)),
        ]
    tensors += [("output_norm.bias", (info.n_embd,)), ("output_norm.weight", (info.n_embd,)),
                ("output.weight", (rows, info.n_embd))]
    return Layout(label, info, n_ff, tuple(tensors))
