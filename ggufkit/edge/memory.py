"""How much RAM a GGUF model needs under llama-cpp-python: a prediction from the tensor list alone.

    shape = shape_from_gguf("model.gguf")                  # or shape_from_checkpoint("./hf-dir", "q4_k_m")
    est = estimate(shape, n_ctx=4096, features=dev.features)
    est.total                                             # predicted peak RSS in bytes
    est.as_dict()                                         # the parts, in MiB

Predicted peak RSS = weights + repacked weight copies + KV cache + compute working set + runtime overhead:

  weights    every tensor's bytes. llama.cpp mmaps the file (use_mmap, the default); every weight is read on
             each token, so every page of the file ends up resident and counts in RSS (as file-backed pages).
  repacked   on CPUs where llama.cpp has interleaved matmul kernels for a type (AVX2: Q4_0, Q4_K, IQ4_NL;
             ARM dotprod: Q4_0, Q4_K, Q5_K, Q6_K, IQ4_NL, Q8_0 ...), it copies those 2-D matmul weights into an
             anonymous "CPU_REPACK" buffer at load. The mmapped pages it read them from stay resident too, so
             they count twice in RSS. The second copy is clean page cache the kernel can drop under pressure:
             `reclaimable` reports it, and `ggufkit fit` judges the fit on total - reclaimable.
  kv_cache   K and V per layer, f16: n_ctx cells (padded to 256) x (K width + V width) x 2 bytes, where a width is
             n_head_kv x head size, read off the attn_k / attn_v weight shapes (so per-layer GQA works).
             llama.cpp clears the cache at load, so all of it is resident from the start.
  compute    what a full prompt batch (n_ubatch tokens) touches when the context is full, without flash
             attention (llama-cpp-python's default): the f32 attention scores n_head x n_ubatch x n_ctx, the f16
             copy of them ggml makes for the V product, the f32 mask n_ctx x n_ubatch, and a few activations of
             n_ubatch x n_embd. llama.cpp reserves more (a graph with all n_ubatch logits), but pages never
             written are not resident. A short prompt in a fresh context touches far less: this is the peak a
             long conversation reaches.
  overhead   the Python interpreter with llama_cpp imported, plus llama.cpp's vocabulary tables (per token).

The constants are calibrated against llama-cpp-python 0.3.36 on x86-64 (see BENCHMARKS.md, "Memory model");
tests/test_fit_memory.py checks predictions against measured VmHWM within 15%. Not modelled: flash attention,
sliding-window caches (Gemma 2/3), quantized KV caches, MoE expert tensors, and vocabularies far larger than the
demo's 49k tokens.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from gguf import GGML_QUANT_SIZES
from gguf import GGMLQuantizationType as T

__all__ = [
    "MIB",
    "MemoryEstimate",
    "ModelShape",
    "estimate",
    "host_features",
    "measure_peak_rss",
    "model_info_from_gguf",
    "repacked_types",
    "shape_from_checkpoint",
    "shape_from_gguf",
    "shape_from_tensors",
    "with_scheme",
]

MIB = 1 << 20

# ---- calibrated constants (llama-cpp-python 0.3.36, x86-64, Python 3.11; see BENCHMARKS.md)

RUNTIME_BASE = 40 * MIB          # VmHWM of `python -c "import llama_cpp"`: interpreter, numpy, libllama, libggml
VOCAB_BYTES_PER_TOKEN = 420      # llama.cpp's vocab maps + llama-cpp-python's metadata: ~19.5 MiB at 49152 tokens
EVAL_FIXED = 2 * MIB             # per-thread work buffers, batch arrays, allocator slack
KV_CELL_PAD = 256                # llama.cpp rounds the cache size up to this many cells
DEFAULT_UBATCH = 512             # llama-cpp-python's n_batch / n_ubatch default

# ---- which weight types llama.cpp repacks (facts from ggml-cpu/repack.cpp, llama.cpp in llama-cpp-python 0.3.36)
# type -> [(features the CPU needs, rows must be a multiple of)], the first match wins; no match: not repacked.
_REPACK_RULES: dict[T, tuple[tuple[frozenset[str], int], ...]] = {
    T.Q4_0: ((frozenset({"avx2"}), 8), (frozenset({"neon", "i8mm"}), 4), (frozenset({"neon", "dotprod"}), 4)),
    T.Q4_K: ((frozenset({"avx2"}), 8), (frozenset({"neon", "i8mm"}), 8), (frozenset({"neon", "dotprod"}), 8)),
    T.Q5_K: ((frozenset({"neon", "i8mm"}), 8), (frozenset({"neon", "dotprod"}), 8)),
    T.Q6_K: ((frozenset({"neon", "i8mm"}), 8), (frozenset({"neon", "dotprod"}), 8)),
    T.Q2_K: ((frozenset({"avx512"}), 8),),
    T.IQ4_NL: ((frozenset({"avx2"}), 8), (frozenset({"neon", "dotprod"}), 4)),
    T.Q8_0: ((frozenset({"neon", "i8mm"}), 4), (frozenset({"neon", "dotprod"}), 4)),
}

# Weights multiplied by activations (GGML_OP_MUL_MAT) in a llama-style block; only these can be repacked.
# token_embd is looked up (GET_ROWS) and stays in the mapping even when the output layer reuses it (tied).
_MATMUL_WEIGHT = re.compile(r"^(blk\.\d+\.(attn_(q|k|v|output|qkv)|ffn_(gate|up|down))|output)\.weight$")


def repacked_types(features) -> dict[T, int]:
    """Types llama.cpp repacks on a CPU with these features -> the row multiple it needs."""
    features = frozenset(features)
    out = {}
    for qtype, rules in _REPACK_RULES.items():
        for needs, rows in rules:
            if needs <= features:
                out[qtype] = rows
                break
    return out


def host_features() -> frozenset[str]:
    """This machine's features in llama.cpp's names (from /proc/cpuinfo; x86-64 and AArch64 Linux)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    flags = set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            flags.update(line.split(":", 1)[1].split())
    names = {"avx2": "avx2", "fma": "fma", "f16c": "f16c", "avx512f": "avx512",
             "asimd": "neon", "asimddp": "dotprod", "i8mm": "i8mm", "fphp": "fp16", "sve": "sve"}
    return frozenset(names[f] for f in flags if f in names)


# ---- the model's shape, from any tensor list

@dataclass(frozen=True)
class ModelShape:
    """What the memory model needs to know about a model. Shapes are numpy order: (rows, cols)."""
    name: str
    n_layer: int
    n_head: int
    n_embd: int
    n_vocab: int
    kv_width: int                                        # sum over layers of (K width + V width), elements
    tensors: tuple[tuple[str, tuple[int, ...], T], ...]  # (gguf name, numpy shape, type)

    @property
    def weight_bytes(self) -> int:
        return sum(tensor_bytes(t, s) for _, s, t in self.tensors)


def tensor_bytes(qtype: T, shape) -> int:
    block, size = GGML_QUANT_SIZES[qtype]
    n = 1
    for d in shape:
        n *= int(d)
    return n // block * size


def shape_from_tensors(name: str, tensors, n_head: int) -> ModelShape:
    """tensors: (gguf name, numpy shape, type) for every tensor. Hyperparameters are read off the shapes:
    token_embd (n_vocab, n_embd), blk.N.attn_k / attn_v (n_head_kv x head size, n_embd)."""
    tensors = tuple((n, tuple(int(d) for d in s), T(t)) for n, s, t in tensors)
    by_name = {n: s for n, s, _ in tensors}
    if "token_embd.weight" not in by_name:
        raise ValueError(f"{name}: no token_embd.weight tensor")
    n_vocab, n_embd = by_name["token_embd.weight"]
    layers = {int(m.group(1)) for n in by_name if (m := re.match(r"blk\.(\d+)\.", n))}
    kv_width = 0
    for i in layers:
        k, v = by_name.get(f"blk.{i}.attn_k.weight"), by_name.get(f"blk.{i}.attn_v.weight")
        if k is None or v is None:
            raise ValueError(f"{name}: layer {i} has no separate attn_k/attn_v weights (not supported by the "
                             "memory model)")
        kv_width += k[0] + v[0]
    return ModelShape(name, len(layers), int(n_head), int(n_embd), int(n_vocab), kv_width, tensors)


def shape_from_gguf(path) -> ModelShape:
    """From a GGUF file's (or a whole split set's) tensor infos and its head count (validated by
    ggufkit.sources.gguf_model)."""
    from ggufkit.errors import InputError
    from ggufkit.sources.gguf_model import open_gguf_model

    model = open_gguf_model(path)
    arch = model.architecture
    n_head = model.metadata.get(f"{arch}.attention.head_count")
    if not isinstance(n_head, int) or n_head <= 0:
        raise InputError(f"no {arch}.attention.head_count in the metadata", path)
    tensors = [(t.name, t.shape, t.ggml_type) for t in model.tensors]  # numpy order (rows last)
    try:
        return shape_from_tensors(Path(path).name, tensors, n_head)
    except ValueError as e:
        raise InputError(str(e).split(": ", 1)[1], path) from None


def file_bytes(path) -> int:
    """Bytes on disk of a GGUF file, or of every part of the split set whose first part it is."""
    from ggufkit.sources.gguf_model import open_gguf_model

    return sum(p.file_size for p in open_gguf_model(path).parts)


def shape_from_checkpoint(src, scheme: str = "F32"):
    """From a Hugging Face checkpoint and a scheme: the tensor types ggufkit.conversion would write (no data read).
    Returns (ModelShape, ggufkit.plan.schemes.ModelInfo)."""
    from ggufkit.conversion import make_plan

    plan = make_plan(src, scheme)
    tensors = [(t.tensor.name, tuple(t.tensor.shape), t.qtype) for t in plan.tensors]
    info = plan.arch.model_info()
    return shape_from_tensors(plan.checkpoint.name, tensors, info.n_head), info


def model_info_from_gguf(path):
    """ggufkit.plan.schemes.ModelInfo from a GGUF's metadata (what the scheme rules need)."""
    from ggufkit.errors import InputError
    from ggufkit.plan.schemes import ModelInfo
    from ggufkit.sources.gguf import validate_gguf

    g = validate_gguf(path)
    arch = g.architecture

    def get(key, default=None):
        value = g.get(f"{arch}.{key}", default)
        if not isinstance(value, int) or isinstance(value, bool):
            raise InputError(f"{arch}.{key} missing or not an integer", path)
        return value

    return ModelInfo(arch=arch, n_layer=get("block_count"), n_head=get("attention.head_count"),
                     n_head_kv=get("attention.head_count_kv", get("attention.head_count")),
                     n_embd=get("embedding_length"), n_expert=get("expert_count", 0))


def with_scheme(shape: ModelShape, info, scheme) -> ModelShape:
    """The same model with every tensor typed as llama-quantize's `scheme` would type it (ggufkit.plan.schemes)."""
    from ggufkit.plan import schemes

    sch = schemes.get_scheme(scheme) if isinstance(scheme, str) else scheme
    types = schemes.plan(sch, [(n, s) for n, s, _ in shape.tensors], info)
    tensors = tuple((n, s, T(types[n])) for n, s, _ in shape.tensors)
    return ModelShape(shape.name, shape.n_layer, shape.n_head, shape.n_embd, shape.n_vocab, shape.kv_width, tensors)


# ---- the estimate

@dataclass(frozen=True)
class MemoryEstimate:
    weights: int
    repacked: int
    kv_cache: int
    compute: int
    overhead: int
    n_ctx: int

    @property
    def total(self) -> int:
        """Predicted peak RSS (VmHWM) of a llama-cpp-python process."""
        return self.weights + self.repacked + self.kv_cache + self.compute + self.overhead

    @property
    def reclaimable(self) -> int:
        """File pages counted in total that the kernel may drop under pressure (the repacked tensors' originals)."""
        return self.repacked

    @property
    def needed(self) -> int:
        """RAM the process needs to run without thrashing: total minus reclaimable."""
        return self.total - self.reclaimable

    def as_dict(self) -> dict:
        parts = ("weights", "repacked", "kv_cache", "compute", "overhead", "total", "needed")
        return {"n_ctx": self.n_ctx, **{f"{p}_mib": round(getattr(self, p) / MIB, 1) for p in parts}}


def kv_cells(n_ctx: int) -> int:
    return -(-int(n_ctx) // KV_CELL_PAD) * KV_CELL_PAD


def estimate(shape: ModelShape, n_ctx: int, features=frozenset(), n_ubatch: int = DEFAULT_UBATCH,
             n_tokens: int | None = None) -> MemoryEstimate:
    """Predicted peak RSS of llama-cpp-python running this model with n_ctx on a CPU with these features, once
    n_tokens tokens (default n_ctx: a full context, the peak) have been evaluated in batches of n_ubatch."""
    if n_ctx < 1:
        raise ValueError(f"n_ctx={n_ctx} must be >= 1")
    n_tokens = n_ctx if n_tokens is None else n_tokens
    if not 1 <= n_tokens <= n_ctx:
        raise ValueError(f"n_tokens={n_tokens} must be in 1..n_ctx ({n_ctx})")
    repack = repacked_types(features)
    weights = repacked = 0
    for name, s, t in shape.tensors:
        nbytes = tensor_bytes(t, s)
        weights += nbytes
        if t in repack and len(s) == 2 and s[0] % repack[t] == 0 and _MATMUL_WEIGHT.match(name):
            repacked += nbytes
    cells = kv_cells(n_ctx)
    kv = cells * shape.kv_width * 2                                   # f16 K and V
    u = min(n_ubatch, n_tokens)                                       # the largest batch ...
    kv_len = min(cells, kv_cells(n_tokens))                           # ... attending to the filled cells
    scores = shape.n_head * u * kv_len * (4 + 2)                      # f32 scores + their f16 copy for V
    mask = kv_len * u * 4                                             # f32 causal mask
    activations = u * shape.n_embd * 4 * 4                            # residual, normed input, q, attention out
    compute = scores + mask + activations + shape.n_vocab * 4 + EVAL_FIXED
    overhead = RUNTIME_BASE + shape.n_vocab * VOCAB_BYTES_PER_TOKEN
    return MemoryEstimate(weights, repacked, kv, compute, overhead, int(n_ctx))


# ---- measuring the real thing

_PROBE = r"""
import json, re, sys
import llama_cpp
from ggufkit.runtime import backends
backends.ensure()
path, n_ctx, n_prompt, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
def status():
    text = open("/proc/self/status").read()
    return {k: int(re.search(k + r":\s+(\d+) kB", text).group(1)) * 1024 for k in ("VmHWM", "RssFile", "RssAnon")}
llm = llama_cpp.Llama(path, n_ctx=n_ctx, n_threads=threads, verbose=False)
loaded = status()
# token ids spread over the vocabulary; the content does not matter for memory
n_vocab = llm.n_vocab()
tokens = [llm.token_bos()] + [(i * 7919) % (n_vocab - 200) + 100 for i in range(n_prompt - 1)]
llm.eval(tokens)
print(json.dumps({"loaded": loaded, "evaluated": status()}))
"""


def measure_peak_rss(gguf_path, n_ctx: int, n_prompt: int | None = None, threads: int = 2,
                     timeout: float = 1800) -> dict:
    """Load the model in a fresh llama-cpp-python process with n_ctx, evaluate n_prompt tokens (default: fill
    the context but 8 cells) and return {"loaded": {...}, "evaluated": {...}} with VmHWM, RssFile and RssAnon
    in bytes from /proc/self/status. Linux only."""
    n_prompt = n_ctx - 8 if n_prompt is None else n_prompt
    if not 1 <= n_prompt <= n_ctx:
        raise ValueError(f"n_prompt={n_prompt} must be in 1..n_ctx ({n_ctx})")
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    proc = subprocess.run([sys.executable, "-c", _PROBE, str(gguf_path), str(n_ctx), str(n_prompt), str(threads)],
                          capture_output=True, text=True, timeout=timeout, env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{gguf_path}: measuring process failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])
