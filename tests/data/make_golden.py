"""Writes tests/data/golden_blocks.npz: bytes produced by llama.cpp's own quantizers (ggml_quantize_chunk in the
libggml-base of llama-cpp-python, pinned to the version below) for one fixed input row, with and without
importance weights. tests/test_kernels.py checks that the reference still produces them (a rebuilt reference,
e.g. with FMA contraction, would not) and that ggufkit does.

The input comes from integer arithmetic only (no numpy random streams, no libm), so it is the same on every
machine and numpy version.

Run from the repo root:  .venv/bin/python tests/data/make_golden.py
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
GOLDEN = HERE / "golden_blocks.npz"
REFERENCE_VERSION = "0.3.36"  # llama-cpp-python
COLS = 256  # one 256-float super-block, eight 32-float blocks
TYPES = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_NL", "IQ4_XS",
         "TQ1_0", "TQ2_0", "Q1_0", "MXFP4", "NVFP4", "IQ3_XXS", "IQ3_S",
         "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ1_S", "IQ1_M"]


def _lcg(n: int, seed: int) -> np.ndarray:
    """n 32-bit values of the LCG s -> 1664525 s + 1013904223 (mod 2^32), exact in Python integers."""
    out, s = [], seed
    for _ in range(n):
        s = (1664525 * s + 1013904223) % 2**32
        out.append(s)
    return np.array(out, dtype=np.uint64)


def golden_input() -> tuple[np.ndarray, np.ndarray]:
    """(1, COLS) f32 row and (COLS,) f32 importance weights.

    Values: uniform 24-bit fractions in [-1, 1), cubed for heavier tails, scaled per 32-block by 2^k, k in -6..5;
    one block all zero, one constant, one with a single outlier. Every step is exact or correctly rounded."""
    u = (_lcg(COLS, 7) >> np.uint64(8)).astype(np.float64) / 2**24 * 2 - 1      # (COLS,) exact 24-bit values
    k = (_lcg(COLS // 32, 11) >> np.uint64(28)).astype(np.int64) % 12 - 6        # (COLS/32,) exponents
    x = (u**3).reshape(-1, 32) * np.ldexp(1.0, k)[:, None]
    x[2] = 0.0
    x[5] = 0.375
    x[6] = 0.001 * x[6]
    x[6, 17] = 40.0
    im = (_lcg(COLS, 13) >> np.uint64(16)).astype(np.float64) / 2**16 * 4 + 0.0625  # (COLS,) in [1/16, 4 1/16)
    im[100:140] = 0.0
    return x.reshape(1, COLS).astype(np.float32), im.astype(np.float32)


def main() -> None:
    sys.path.insert(0, str(HERE.parent))
    import llama_cpp
    from ggml_ref import ggml_quantize
    from gguf import GGMLQuantizationType

    if llama_cpp.__version__ != REFERENCE_VERSION:
        raise SystemExit(f"llama-cpp-python {llama_cpp.__version__} is installed; the golden blocks come from "
                         f"{REFERENCE_VERSION}")
    x, im = golden_input()
    names, rows = [], []
    for name in TYPES:
        t = int(GGMLQuantizationType[name])
        # llama.cpp quantizes these only with importance weights (it aborts without): no plain entry
        needs_im = name in ("IQ2_XXS", "IQ2_XS", "IQ1_S")
        for suffix, weights in (("", None), ("+imatrix", im))[needs_im:]:
            names.append(name + suffix)
            rows.append(ggml_quantize(x, t, weights)[0])
    offsets = np.cumsum([0] + [len(r) for r in rows]).astype(np.int64)
    np.savez(GOLDEN, names=np.array(names, dtype="S"), offsets=offsets, data=np.concatenate(rows))
    print(f"{GOLDEN}: {len(names)} entries, {GOLDEN.stat().st_size} bytes")


def load_golden() -> dict[str, np.ndarray]:
    """{"Q4_0": (row_bytes,) u8, "Q4_0+imatrix": ..., ...} as written by main()."""
    with np.load(GOLDEN) as z:
        names, offsets, data = list(z["names"]), z["offsets"], z["data"]
    return {n.decode(): data[offsets[i]:offsets[i + 1]] for i, n in enumerate(names)}


if __name__ == "__main__":
    main()
