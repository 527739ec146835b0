"""IQ1_S, IQ1_M and IQ2_XXS on every x86-64 path the CPU has (AVX-512 for IQ2_XXS, AVX2 forced by
GGUFKIT_FORCE_AVX2, plain) against llama.cpp's ggml_quantize_chunk, with and without importance weights (IQ1_M
allows none), on the row kinds of test_kernels.py and on rows built to stress the lanes: many equal values (the
sort by ranks must give qsort's order of equal values), values on a coarse lattice (many groups on the grid, and
ties in the neighbour distances), and a mix of scales per sub-block (the split search's best changes often)."""
from __future__ import annotations

import numpy as np
import pytest
from ggml_ref import describe_mismatch, ggml_quantize
from gguf import GGMLQuantizationType as T
from test_kernels import ABORTS_ON_HUGE, KINDS, _imatrix, _rows
from test_kernels_k import HAS_AVX512, PATH_ENV

from ggufkit import quant

LANE_TYPES = [T.IQ1_S, T.IQ1_M, T.IQ2_XXS]
COLS = 256 * 5
PATHS = ["avx512", "simd", "scalar"] if HAS_AVX512 else ["simd", "scalar"]
WIDE = {T.IQ2_XXS}   # the types with an AVX-512 path (IQ1_S / IQ1_M measured slower there: they take AVX2)


def _lane_rows(kind: str, rows: int = 4, cols: int = COLS) -> np.ndarray:
    rng = np.random.default_rng([7, sum(map(ord, kind))])
    if kind == "ties":          # a few distinct values per row: equal values in every sub-block
        x = rng.integers(-3, 4, (rows, cols)) * 0.25
    elif kind == "lattice":     # odd multiples of a step: rounds onto lattice points exactly, equal distances
        x = (2 * rng.integers(0, 3, (rows, cols)) + 1) * np.where(rng.random((rows, cols)) < 0.5, -1, 1) * 0.1
    elif kind == "scales":      # per 16 values a scale from 1e-3 to 1e3
        x = rng.standard_normal((rows, cols)) * 10.0 ** rng.uniform(-3, 3, (rows, cols // 16)).repeat(16, axis=1)
    else:
        x = _rows(kind, rows=rows, cols=cols)
    return x.astype(np.float32)


def _quantize_on(path: str, x, qtype, im, monkeypatch):
    for name, value in PATH_ENV[path].items():
        monkeypatch.setenv(name, value)
    try:
        return quant.simd_path(qtype), quant.quantize(x, qtype, im, threads=1)
    finally:
        for name in PATH_ENV[path]:
            monkeypatch.delenv(name)


@pytest.mark.parametrize("variant", ["none", "positive", "with_zeros"])
@pytest.mark.parametrize("kind", [*KINDS, "ties", "lattice", "scales"])
@pytest.mark.parametrize("qtype", LANE_TYPES, ids=[t.name for t in LANE_TYPES])
def test_every_path_equals_llama_cpp(qtype, kind, variant, monkeypatch):
    if variant == "none" and qtype in quant.REQUIRES_IMATRIX:
        pytest.skip("llama.cpp quantizes this type only with importance weights (test_kernels.py checks the refusal)")
    x = _lane_rows(kind)
    im = _imatrix(variant, COLS)
    ref = None
    if not (kind == "huge" and qtype.name in ABORTS_ON_HUGE):   # llama.cpp aborts there: paths compared only
        ref = ggml_quantize(x, int(qtype), im)
    outs = {}
    for path in PATHS:
        taken, outs[path] = _quantize_on(path, x, qtype, im, monkeypatch)
        expected = {"avx512": "avx512" if qtype in WIDE else "avx2", "simd": "avx2", "scalar": "plain"}[path]
        assert taken == expected, (path, taken)
        if ref is not None:
            assert np.array_equal(outs[path], ref), f"{qtype.name} {kind} {variant} ({path}): " + describe_mismatch(
                outs[path], ref, quant._TRAITS[int(qtype)][2])
    for path in PATHS:
        assert np.array_equal(outs[path], outs["scalar"]), (qtype.name, kind, variant, path)
