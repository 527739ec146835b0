"""The independent reference: llama.cpp's own quantizers, loaded with ctypes from the libggml-base that
llama-cpp-python ships (built by `make setup` with FMA contraction off; see DESIGN.md, "Kernels")."""
from __future__ import annotations

import ctypes
import functools
from pathlib import Path

import numpy as np


@functools.lru_cache(maxsize=1)
def libggml_base() -> ctypes.CDLL:
    import llama_cpp

    lib_dir = Path(llama_cpp.__file__).resolve().parent / "lib"
    candidates = sorted(lib_dir.glob("libggml-base.so*")) + sorted(lib_dir.glob("libggml-base.dylib"))
    if not candidates:
        raise FileNotFoundError(f"{lib_dir}: no libggml-base shared library in llama-cpp-python")
    lib = ctypes.CDLL(str(candidates[0]))
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                        ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
    lib.ggml_row_size.restype = ctypes.c_size_t
    lib.ggml_row_size.argtypes = [ctypes.c_int, ctypes.c_int64]
    lib.ggml_quantize_init.restype = None
    lib.ggml_quantize_init.argtypes = [ctypes.c_int]
    return lib


def ggml_quantize(x: np.ndarray, qtype: int, imatrix: np.ndarray | None = None) -> np.ndarray:
    """(rows, cols) f32 -> (rows, row_bytes) u8 through ggml_quantize_chunk."""
    lib = libggml_base()
    x = np.ascontiguousarray(x, dtype=np.float32)
    rows, cols = x.shape
    lib.ggml_quantize_init(int(qtype))
    row_bytes = lib.ggml_row_size(int(qtype), cols)
    out = np.zeros((rows, row_bytes), dtype=np.uint8)
    im = None if imatrix is None else np.ascontiguousarray(imatrix, dtype=np.float32)
    written = lib.ggml_quantize_chunk(int(qtype), x.ctypes.data, out.ctypes.data, 0, rows, cols,
                                      None if im is None else im.ctypes.data)
    assert written == rows * row_bytes, (written, rows * row_bytes)
    return out


def describe_mismatch(ours: np.ndarray, ref: np.ndarray, block_bytes: int) -> str:
    """'N of M blocks differ; first at row r, block b: ours=.. ref=..' for assertion messages."""
    a = ours.reshape(-1, block_bytes)
    b = ref.reshape(-1, block_bytes)
    bad = np.nonzero((a != b).any(axis=1))[0]
    if not len(bad):
        return "identical"
    blocks_per_row = ours.shape[1] // block_bytes
    first = int(bad[0])
    return (f"{len(bad)} of {len(a)} blocks differ; first at row {first // blocks_per_row}, block "
            f"{first % blocks_per_row}:\n  ours={a[first].tobytes().hex()}\n  ref ={b[first].tobytes().hex()}")


class _TypeTraits(ctypes.Structure):
    """ggml.h's struct ggml_type_traits (the fields up to the row converters)."""
    _fields_ = [("type_name", ctypes.c_char_p), ("blck_size", ctypes.c_int64),
                ("blck_size_interleave", ctypes.c_int64), ("type_size", ctypes.c_size_t),
                ("is_quantized", ctypes.c_bool),
                ("to_float", ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)),
                ("from_float_ref", ctypes.c_void_p)]


def ggml_dequantize(data: np.ndarray, qtype: int, rows: int, cols: int) -> np.ndarray:
    """(rows, row_bytes) u8 -> (rows, cols) f32 through ggml's own to_float (for types gguf-py cannot decode)."""
    lib = libggml_base()
    lib.ggml_get_type_traits.restype = ctypes.POINTER(_TypeTraits)
    lib.ggml_get_type_traits.argtypes = [ctypes.c_int]
    traits = lib.ggml_get_type_traits(int(qtype)).contents
    q = np.ascontiguousarray(data, dtype=np.uint8).reshape(rows, -1)
    out = np.zeros((rows, cols), dtype=np.float32)
    for r in range(rows):   # row by row: ggml's converters take a row count of values, not a byte count
        traits.to_float(q[r].ctypes.data, out[r].ctypes.data, cols)
    return out
