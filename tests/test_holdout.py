"""Calibration in two halves (ggufkit.quant.holdout): the halves are the calibration chunks llama-imatrix would
take, split at the middle, gathered in one pass, and the pooled statistics are those of all the chunks."""
from __future__ import annotations

import numpy as np
import pytest
from convert_fixtures import SHAKESPEARE
from test_calibrate import assert_same_imatrix

from ggufkit.errors import InputError
from ggufkit.quant import holdout
from ggufkit.quant.calibrate import calibrate
from ggufkit.quant.imatrix_collect import calibration_ids


@pytest.fixture(scope="module")
def tokenizer(demo_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(demo_dir)


@pytest.mark.parametrize("chunks", [2, 5])
def test_halves_are_the_first_and_the_second_half_of_the_chunks(tiny_checkpoint, tmp_path, chunks):
    """One pass with two accumulators: half a's covariance is a run over the first chunks // 2 chunks alone (which
    are the whole run's first chunks), the pooled one and the importance matrix are the whole run's, and half b
    holds the remaining tokens."""
    src = tiny_checkpoint("llama")
    ctx, na = 64, chunks // 2
    im, halves = holdout.calibrate_halves(src, SHAKESPEARE, ctx=ctx, chunks=chunks, progress=False,
                                          stats_dir=tmp_path / "halves")
    im_all, whole = calibrate(src, SHAKESPEARE, ctx=ctx, chunks=chunks, progress=False, stats_dir=tmp_path / "all")
    _, first = calibrate(src, SHAKESPEARE, ctx=ctx, chunks=na, progress=False, stats_dir=tmp_path / "first")
    assert_same_imatrix(im, im_all)
    assert sorted(halves.groups) == sorted(whole.groups)
    for name in whole.groups:
        ga, gb = halves.a.groups[name], halves.b.groups[name]
        assert (halves.a.tokens[ga], halves.b.tokens[gb]) == (na * ctx, (chunks - na) * ctx)
        h_all, h_first = whole.hessian(name), first.hessian(name)
        tol = {"rtol": 1e-4, "atol": 1e-6 * float(np.abs(h_all).max())}
        np.testing.assert_allclose(halves.a.hessian(name), h_first, **tol, err_msg=name)
        np.testing.assert_allclose(halves.hessian(name), h_all, **tol, err_msg=name)
        rest = (h_all.astype(np.float64) * chunks - h_first.astype(np.float64) * na) / (chunks - na)
        np.testing.assert_allclose(halves.b.hessian(name), rest, rtol=1e-3, atol=1e-5 * float(np.abs(h_all).max()),
                                   err_msg=name)


def test_two_chunks_are_needed(tiny_checkpoint, tmp_path):
    with pytest.raises(InputError, match="at least 2 calibration chunks"):
        holdout.calibrate_halves(tiny_checkpoint("llama"), SHAKESPEARE, ctx=64, chunks=1, progress=False,
                                 stats_dir=tmp_path)


@pytest.mark.parametrize("call", ["halves", "whole-model", "chunks"])
def test_bad_calibration_text_is_one_line_naming_the_file(demo_dir, tmp_path, tokenizer, call):
    """A missing text and a context under 16 tokens: one-line InputErrors, the same from every calibration entry."""
    from ggufkit.quant.imatrix_collect import compute

    missing = tmp_path / "no-such-text.txt"
    run = {"halves": lambda p, ctx: holdout.calibrate_halves(demo_dir, p, ctx=ctx, chunks=2, progress=False),
           "whole-model": lambda p, ctx: compute(demo_dir, p, ctx=ctx, chunks=2, progress=False),
           "chunks": lambda p, ctx: calibration_ids(tokenizer, p, ctx, 2)}[call]
    with pytest.raises(InputError) as e:
        run(missing, 128)
    assert "cannot read calibration text" in str(e.value) and "no-such-text.txt" in str(e.value)
    assert "\n" not in str(e.value)
    with pytest.raises(InputError, match="--ctx 8 is too small"):
        run(SHAKESPEARE, 8)
