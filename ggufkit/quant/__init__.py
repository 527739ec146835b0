"""numpy-facing API over the native block-quantization core (ggufkit._quants).

    quantize(x, qtype, imatrix=None, threads=None)   (rows, cols) f32 -> (rows, row_bytes) u8
    dequantize(data, qtype, shape)                   (rows, row_bytes) u8 -> (rows, cols) f32
    row_size(qtype, cols)                            bytes of one quantized row

qtype is a gguf.GGMLQuantizationType, its name ("Q4_K", case-insensitive) or its integer id.
"""
from __future__ import annotations

import os

import numpy as np
from gguf import GGMLQuantizationType

from ggufkit import _quants

__all__ = ["REQUIRES_IMATRIX", "default_threads", "dequantize", "quantize", "row_size", "simd_active", "simd_path",
           "supported_types"]

# ggml_type id -> (name, block_size, type_size, simd_feature, simd_active, path), for the types gguf-py can name (the
# native core may hold types newer than the pinned gguf-py, e.g. Q2_0; they stay reachable through _quants only)
_KNOWN_IDS = {int(t) for t in GGMLQuantizationType}
_TRAITS = {t[0]: t[1:] for t in _quants.types() if t[0] in _KNOWN_IDS}


# Types llama.cpp quantizes only with importance weights (ggml_quantize_requires_imatrix): quantize() needs one.
REQUIRES_IMATRIX = frozenset({GGMLQuantizationType.IQ2_XXS, GGMLQuantizationType.IQ2_XS, GGMLQuantizationType.IQ1_S})


def _resolve(qtype) -> GGMLQuantizationType:
    if isinstance(qtype, GGMLQuantizationType):
        result = qtype
    elif isinstance(qtype, str):
        try:
            result = GGMLQuantizationType[qtype.upper()]
        except KeyError:
            raise ValueError(f"unknown quantization type {qtype!r}") from None
    else:
        result = GGMLQuantizationType(int(qtype))
    if int(result) not in _TRAITS:
        names = ", ".join(sorted(t[0] for t in _TRAITS.values()))
        raise ValueError(f"no native quantizer for {result.name} (available: {names})")
    return result


def supported_types() -> list[GGMLQuantizationType]:
    """The types the native core quantizes, in registry order."""
    return [GGMLQuantizationType(k) for k in _TRAITS]


def simd_active(qtype) -> bool:
    """Whether quantize() takes the SIMD path for this type here (CPU feature present, not forced scalar)."""
    t = _resolve(qtype)
    return any(row[0] == int(t) and row[5] for row in _quants.types())


def simd_path(qtype) -> str:
    """The path quantize() takes for this type here: "avx512", "avx2", "neon" or "plain" (the widest the CPU runs,
    lowered by GGUFKIT_FORCE_AVX2=1 or GGUFKIT_FORCE_SCALAR=1)."""
    t = _resolve(qtype)
    return next(row[6] for row in _quants.types() if row[0] == int(t))


def default_threads() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))


def row_size(qtype, cols: int) -> int:
    name, block, type_size = _TRAITS[int(_resolve(qtype))][:3]
    if cols <= 0 or cols % block:
        raise ValueError(f"{name}: cols={cols} is not a positive multiple of the block size {block}")
    return cols // block * type_size


def _check_threads(threads) -> int:
    if threads is None:
        return default_threads()
    if int(threads) < 1:
        raise ValueError(f"threads={threads} must be >= 1")
    return int(threads)


def quantize(x: np.ndarray, qtype, imatrix: np.ndarray | None = None, threads: int | None = None) -> np.ndarray:
    """Quantize rows: x (rows, cols) f32 -> (rows, row_size(qtype, cols)) u8, byte-exact with llama.cpp."""
    t = _resolve(qtype)
    if not isinstance(x, np.ndarray) or x.dtype != np.float32:
        raise ValueError(f"x must be a float32 numpy array, got {getattr(x, 'dtype', type(x).__name__)}")
    if x.ndim != 2:
        raise ValueError(f"x must be 2-D (rows, cols), got shape {x.shape}")
    rows, cols = x.shape
    nbytes = row_size(t, cols)
    x = np.ascontiguousarray(x)
    im = None
    if imatrix is None and t in REQUIRES_IMATRIX:
        raise ValueError(f"{t.name} is quantized only with importance weights (as in llama.cpp): pass an imatrix")
    if imatrix is not None:
        im = np.ascontiguousarray(imatrix, dtype=np.float32)
        if im.shape != (cols,):
            raise ValueError(f"imatrix has shape {im.shape}, expected ({cols},) for x of shape {x.shape}")
        count, first = _quants.scan_nonfinite(im)
        if count:
            raise ValueError(f"imatrix has {count} non-finite value(s); first at col {first}")
    out = np.empty((rows, nbytes), dtype=np.uint8)
    if rows:
        # x is checked for NaN/Inf by the native rows as they are quantized (no separate pass over the input)
        count, first = _quants.quantize(int(t), x, rows, cols, im, _check_threads(threads), out)
        if count:
            raise ValueError(f"x has {count} non-finite value(s) (NaN/Inf); first at (row {first // cols}, "
                             f"col {first % cols})")
    return out


def dequantize(data: np.ndarray, qtype, shape: tuple[int, int], threads: int | None = None) -> np.ndarray:
    """Inverse of quantize: (rows, row_bytes) u8 (or flat bytes) -> (rows, cols) f32."""
    t = _resolve(qtype)
    rows, cols = (int(s) for s in shape)
    nbytes = row_size(t, cols)
    buf = np.ascontiguousarray(np.frombuffer(data, dtype=np.uint8) if isinstance(data, (bytes, bytearray))
                               else data).view(np.uint8).reshape(-1)
    if buf.size != rows * nbytes:
        raise ValueError(f"{t.name}: {buf.size} bytes do not hold shape {shape} ({rows * nbytes} expected)")
    out = np.empty((rows, cols), dtype=np.float32)
    if rows:
        _quants.dequantize(int(t), buf, rows, cols, _check_threads(threads), out)
    return out
