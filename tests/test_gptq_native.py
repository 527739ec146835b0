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


def test_cholesky_factor_is_the_inverse_of_u_and_factors_the_damped_h():
    """V (upper, positive diagonal) with V V^T = H + damp mean(diag H) I (numpy's product) and V U = I for
    inverse_factor's U, with a dead column (unit diagonal, as inverse_factor gives it)."""
    rng = np.random.default_rng(5)
    cols = 600
    x = rng.standard_normal((2 * cols, cols)) * np.exp(rng.standard_normal(cols))
    h = x.T @ x / len(x)
    h[:, 7] = h[7, :] = 0.0
    v = gptq.cholesky_factor(h, damp=0.1).astype(np.float64)
    a = h.copy()
    a[7, 7] = 1.0
    a[np.diag_indices(cols)] += 0.1 * np.diag(a).mean()
    assert np.array_equal(v, np.triu(v)) and (np.diag(v) > 0).all()
    np.testing.assert_allclose(v @ v.T, a, rtol=1e-5, atol=1e-5 * np.abs(a).max())
    u = gptq.inverse_factor(h, damp=0.1).astype(np.float64)
    np.testing.assert_allclose(v @ u, np.eye(cols), atol=1e-4)


@pytest.mark.parametrize("qtype", gptq.SUPPORTED, ids=lambda t: t.name)
def test_cholesky_route_is_the_numpy_gptq_up_to_rounding(qtype):
    """encode_rows(..., factor="cholesky") from V = U^-1 against the numpy loop with U (reference=True): the same
    encoding up to float rounding — most rows byte-identical (a level that flips on a near-tie changes the rest
    of its row) and the output error tr(E H E^T) within 0.5%, with and without the imatrix."""
    cols = 768 if qtype in rounding.FORMS or qtype.name == "IQ4_XS" else 320
    rng = np.random.default_rng(int(qtype))
    x = rng.standard_normal((2 * cols, cols)).astype(np.float32) * rng.uniform(0.2, 3, cols).astype(np.float32)
    h = x.T @ x / len(x)
    w, _, im = _problem(int(qtype), rows=77, cols=cols)
    u, v = gptq.inverse_factor(h, 0.3), gptq.cholesky_factor(h, 0.3)
    for imatrix in (im, None):
        ref = gptq.encode_rows(w, qtype, imatrix, u, reference=True)
        got = gptq.encode_rows(w, qtype, imatrix, v, factor="cholesky", threads=2)
        assert (got == ref).all(1).mean() >= 0.75, qtype.name
        e_ref, e_got = gptq.output_error(w, ref, qtype, h).sum(), gptq.output_error(w, got, qtype, h).sum()
        assert abs(e_got / e_ref - 1) < 5e-3, (qtype.name, e_got / e_ref)
