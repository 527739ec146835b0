"""Q2_0 (GGML type 42), which the pinned gguf-py cannot name, so ggufkit.quant does not list it and the type-generic
tests in test_kernels.py do not reach it: the native core's bytes against ggml_quantize_chunk on every row kind,
with and without importance weights (ignored by both), and its dequantization against ggml's own to_float."""
from __future__ import annotations

import numpy as np
import pytest
from ggml_ref import describe_mismatch, ggml_dequantize, ggml_quantize
from test_kernels import IMATRIX, KINDS, _imatrix, _rows

from ggufkit import _quants

Q2_0, BLOCK, BYTES = 42, 64, 18
COLS = 9 * BLOCK * 4


def _ours(x: np.ndarray, im: np.ndarray | None) -> np.ndarray:
    rows, cols = x.shape
    out = np.empty((rows, cols // BLOCK * BYTES), np.uint8)
    _quants.quantize(Q2_0, np.ascontiguousarray(x), rows, cols, im, 2, out)
    return out


def test_q2_0_is_registered_natively():
    assert (Q2_0, "Q2_0", BLOCK, BYTES) in [row[:4] for row in _quants.types()]


@pytest.mark.parametrize("variant", IMATRIX)
@pytest.mark.parametrize("kind", KINDS)
def test_q2_0_bytes_equal_llama_cpp(kind, variant):
    x = _rows(kind, cols=COLS)
    im = _imatrix(variant, COLS)
    with np.errstate(all="ignore"):
        ref = ggml_quantize(x, Q2_0, im)
    ours = _ours(x, im)
    assert np.array_equal(ours, ref), f"Q2_0 {kind} imatrix {variant}: " + describe_mismatch(ours, ref, BYTES)


def test_q2_0_dequantize_equals_ggml():
    q = np.random.default_rng(3).integers(0, 256, (16, COLS // BLOCK * BYTES), dtype=np.uint8)
    q[:, 1::BYTES] &= 0x7b   # finite scales: ggml's half -> float conversion quiets NaN payloads, ours keeps them
    ours = np.empty((16, COLS), np.float32)
    _quants.dequantize(Q2_0, q, 16, COLS, 1, ours)
    ref = ggml_dequantize(q, Q2_0, 16, COLS)
    assert np.array_equal(ours.view(np.uint32), ref.view(np.uint32))
    x = _rows("normal", cols=COLS)
    back = np.empty_like(x)
    _quants.dequantize(Q2_0, _ours(x, None), x.shape[0], COLS, 1, back)
    # a real if coarse approximation (levels -d, 0, d: about 0.73 here; all zeros would give 1.0)
    assert np.linalg.norm(back - x) / np.linalg.norm(x) < 0.8
