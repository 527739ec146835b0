"""The GPTQ column loop in C (native/src/gptq.c) against the numpy loop it replaces (gptq.encode_rows(...,
reference=True)): the same bytes for every block type error feedback handles, with and without the scale search,
any thread count, row counts that are not a multiple of the kernel's tile, and blocks with zero scales."""
from __future__ import annotations

import numpy as np
import pytest

from ggufkit.quant import gptq, rounding


def _problem(seed: int, rows: int, cols: int):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2 * cols, cols)).astype(np.float32) * rng.uniform(0.2, 3, cols).astype(np.float32)
    u = gptq.inverse_factor(x.T @ x / len(x), 0.3)                      # (cols, cols) f32
    w = (rng.standard_normal((rows, cols)) * rng.uniform(0.01, 0.2, (rows, 1))).astype(np.float32)
    w[1, :] = 0.0                                                       # a row of zero blocks: scale 0
    w[2, :32] = 0.0                                                     # a zero 32-value block in a row
    im = rng.uniform(0.1, 2, cols).astype(np.float32)
    return w, u, im


@pytest.mark.parametrize("qtype", gptq.SUPPORTED, ids=lambda t: t.name)
def test_native_column_loop_gives_the_numpy_bytes(qtype):
    w, u, im = _problem(int(qtype), rows=77, cols=768 if qtype in rounding.FORMS or qtype.name == "IQ4_XS" else 320)
    for search in (False, True) if qtype in rounding.FORMS else (False,):
        for imatrix in (im, None):
            ref = gptq.encode_rows(w, qtype, imatrix, u, search=search, reference=True)
            for threads in (1, 3):
                got = gptq.encode_rows(w, qtype, imatrix, u, search=search, threads=threads)
                assert np.array_equal(got, ref), (qtype.name, search, imatrix is None, threads)


def test_bad_buffers_are_one_line_errors():
    from ggufkit import _quants

    plane = np.zeros((4, 8), np.float32)
    with pytest.raises(ValueError, match="buffer sizes"):
        _quants.gptq_group(plane, plane, plane, None, 0, 15, np.zeros(3, np.float32), 4, 4, 8,
                           np.zeros((4, 8), np.int32), plane.copy(), 1)
    with pytest.raises(ValueError, match="g=0"):
        _quants.gptq_group(plane, plane, plane, None, 0, 15, plane, 4, 0, 8, np.zeros((4, 8), np.int32), plane, 1)
