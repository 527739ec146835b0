"""The native K-quant scale search (native/src/search_k.c) against its reference, the numpy code in
ggufkit.quant.rounding (refine_blocks_reference): identical bytes, block for block, on random tensors of many
shapes and kinds, with and without an importance matrix, with per-block weights, for Q2_K..Q6_K, started from
llama.cpp's own encoding (ggml_quantize_chunk) and from degenerate blocks. The property that the search never
raises a block's weighted error against llama.cpp's choice is tests/test_rounding.py's, which runs the native path
(rounding.refine's default)."""
from __future__ import annotations

import numpy as np
import pytest
from ggml_ref import ggml_quantize
from test_rounding import random_rows

from ggufkit.quant import rounding

KINDS = ["normal", "heavy", "outliers", "positive", "sparse", "grid"]


def first_difference(a: np.ndarray, b: np.ndarray, qtype) -> str:
    bb = rounding.FORMS[qtype].block_bytes
    diff = np.flatnonzero((a.reshape(-1, bb) != b.reshape(-1, bb)).any(axis=1))
    return f"{len(diff)} of {a.size // bb} blocks differ; first: block {diff[0] if len(diff) else None}"


@pytest.mark.parametrize("qtype", list(rounding.SUPPORTED))
@pytest.mark.parametrize("weighted", [True, False])
def test_native_equals_numpy(qtype, weighted):
    for k, kind in enumerate(KINDS):
        rng = np.random.default_rng([int(qtype), k, weighted])
        x = random_rows(rng, kind, 12, 1536)
        w = (rng.random(x.shape[1]) ** 4 * 10 + 1e-3).astype(np.float32) if weighted else None
        ref = ggml_quantize(x, int(qtype), w)
        expected = rounding.refine(x, qtype, w, ref, reference=True)
        got = rounding.refine(x, qtype, w, ref, threads=3)
        assert np.array_equal(got, expected), f"{kind}: {first_difference(got, expected, qtype)}"
        assert not np.array_equal(got, ref)  # the search did change blocks: the comparison is not vacuous


@pytest.mark.parametrize("qtype", list(rounding.SUPPORTED))
def test_native_equals_numpy_per_block_weights_and_edges(qtype):
    """Every block its own weights (refine_blocks with a full (nb, 256) w, as no tensor-wide imatrix gives), and
    blocks the search must leave alone or handle without NaN: zeros, a constant, one spike, tiny values."""
    rng = np.random.default_rng(int(qtype))
    x = random_rows(rng, "heavy", 40, 256)
    x[0] = 0.0
    x[1] = 0.75
    x[2] = 0.0
    x[2, 17] = 5.0
    x[3] *= 1e-6
    x[4] = np.abs(x[4]) * 3e4                        # near f16's range for d
    w = (rng.random(x.shape) ** 3 * 5).astype(np.float32)
    w[5] = 0.0                                       # a block with no weight at all
    data = np.concatenate([ggml_quantize(x[i:i + 1], int(qtype), w[i]) for i in range(len(x))])
    expected = rounding.refine_blocks_reference(x, w, data, qtype)
    got = rounding.refine_blocks(x, w, data, qtype, threads=2)
    assert np.array_equal(got, expected), first_difference(got, expected, qtype)
    # the same weights for every block, as a broadcast view (encode_rows passes one), also without copying
    wb = np.broadcast_to(w[7], x.shape)
    data = ggml_quantize(x, int(qtype), w[7])
    assert np.array_equal(rounding.refine_blocks(x, wb, data, qtype),
                          rounding.refine_blocks_reference(x, wb, data, qtype))


def test_threads_do_not_change_bytes():
    rng = np.random.default_rng(5)
    x = random_rows(rng, "normal", 37, 512)
    data = ggml_quantize(x, 12, None)
    one = rounding.refine(x, "Q4_K", None, data, threads=1)
    assert all(np.array_equal(one, rounding.refine(x, "Q4_K", None, data, threads=t)) for t in (2, 5, 64))
