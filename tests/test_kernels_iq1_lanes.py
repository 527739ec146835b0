"""IQ1_S, IQ1_M, IQ2_XXS and IQ2_XS on every x86-64 path the CPU has (AVX-512 for the IQ2 types, AVX2 forced by
GGUFKIT_FORCE_AVX2, plain) against llama.cpp's ggml_quantize_chunk, with and without importance weights (IQ1_M
allows none), on the row kinds of test_kernels.py and on rows built to stress the lanes: many equal values (the
sort by ranks must give qsort's order of equal values), values on a coarse lattice (many groups on the grid, and
ties in the neighbour distances), and a mix of scales per sub-block (the split search's best changes often).

The split search in lanes (native/src/quants_iq1_split.h) prunes by a bound and hands back to the plain loop where
it cannot decide; rows for its edges: groups of 8 zeros (without imatrix their weights are zero: equal scores for
the shift pairs, which the lanes must walk as the plain loop does), magnitudes across the edge of its range guard
(sub-blocks of ~1e-7..1e-4: some in the lanes, some in the plain loop, in one row), one large value per 16
(near-equal best scores), and many sub-blocks so that the rare undecided case occurs."""
from __future__ import annotations

import numpy as np
import pytest
from ggml_ref import describe_mismatch, ggml_quantize
from gguf import GGMLQuantizationType as T
from test_kernels import ABORTS_ON_HUGE, KINDS, _imatrix, _rows
from test_kernels_k import HAS_AVX512, PATH_ENV

from ggufkit import quant

LANE_TYPES = [T.IQ1_S, T.IQ1_M, T.IQ2_XXS, T.IQ2_XS]
COLS = 256 * 5
PATHS = ["avx512", "simd", "scalar"] if HAS_AVX512 else ["simd", "scalar"]
WIDE = {T.IQ2_XXS, T.IQ2_XS}   # the types with an AVX-512 path (IQ1_S / IQ1_M measured slower there: they take AVX2)


def _lane_rows(kind: str, rows: int = 4, cols: int = COLS) -> np.ndarray:
    rng = np.random.default_rng([7, sum(map(ord, kind))])
    if kind == "ties":          # a few distinct values per row: equal values in every sub-block
        x = rng.integers(-3, 4, (rows, cols)) * 0.25
    elif kind == "lattice":     # odd multiples of a step: rounds onto lattice points exactly, equal distances
        x = (2 * rng.integers(0, 3, (rows, cols)) + 1) * np.where(rng.random((rows, cols)) < 0.5, -1, 1) * 0.1
    elif kind == "scales":      # per 16 values a scale from 1e-3 to 1e3
        x = rng.standard_normal((rows, cols)) * 10.0 ** rng.uniform(-3, 3, (rows, cols // 16)).repeat(16, axis=1)
    elif kind == "zero_groups":  # every other group of 8 all zero
        x = rng.standard_normal((rows, cols)) * (np.arange(cols) // 8 % 2 == 0)
    elif kind == "range_edge":  # per 16 values a scale from 1e-7 to 1e-4: both sides of the lanes' range guard
        x = rng.standard_normal((rows, cols)) * 10.0 ** rng.uniform(-7, -4, (rows, cols // 16)).repeat(16, axis=1)
    elif kind == "one_large":   # one value in 16 a hundred times the others
        x = rng.standard_normal((rows, cols)) * np.where(np.arange(cols) % 16 == 15, 100.0, 1.0)
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
@pytest.mark.parametrize("kind", [*KINDS, "ties", "lattice", "scales", "zero_groups", "range_edge", "one_large"])
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


CASES_MANY = [(T.IQ1_S, "normal", "cubed"), (T.IQ1_M, "normal", "cubed"), (T.IQ1_M, "one_large", "none")]


@pytest.mark.parametrize("qtype,kind,variant", CASES_MANY, ids=[f"{t.name}-{k}-{v}" for t, k, v in CASES_MANY])
def test_many_sub_blocks_equal_llama_cpp(qtype, kind, variant, monkeypatch):
    """64 rows of 4096 (8192 IQ1_S / 16384 IQ1_M sub-blocks), importance spread over decades (u^3) or none: enough
    that the split search in lanes meets candidates it cannot decide and hands the sub-block to the plain loop
    (1, 2 and 26 sub-blocks in these three cases, counted with an instrumented build)."""
    x = _lane_rows(kind, rows=64, cols=4096)
    im = None if variant == "none" else (np.random.default_rng(5).random(4096) ** 3).astype(np.float32)
    ref = ggml_quantize(x, int(qtype), im)
    for path in PATHS:
        taken, out = _quantize_on(path, x, qtype, im, monkeypatch)
        assert np.array_equal(out, ref), f"{qtype.name} {kind} {variant} ({path}, {taken}): " + describe_mismatch(
            out, ref, quant._TRAITS[int(qtype)][2])
