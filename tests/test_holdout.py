"""Calibration in two halves (ggufkit.quant.holdout): the halves are the chunks llama-imatrix would take, split at
the middle without overlap, and the pooled statistics are those of both halves' tokens."""
from __future__ import annotations

import numpy as np
import pytest
from convert_fixtures import SHAKESPEARE

from ggufkit.errors import InputError
from ggufkit.quant import holdout
from ggufkit.quant.imatrix import Imatrix, ImatrixEntry
from ggufkit.quant.imatrix_collect import calibration_ids


@pytest.fixture(scope="module")
def tokenizer(demo_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(demo_dir)


@pytest.mark.parametrize("chunks", [2, 5, 8])
def test_halves_are_the_calibration_chunks_split_without_overlap(tokenizer, tmp_path, chunks):
    text = SHAKESPEARE.read_text(encoding="utf-8", errors="replace")
    ctx = 128
    whole = calibration_ids(tokenizer, SHAKESPEARE, ctx, chunks)   # what one calibrate() run would take
    first, second, na, nb = holdout.split_text(tokenizer, text, ctx, chunks)
    assert (na, nb) == (chunks // 2, chunks - chunks // 2)
    a = tmp_path / "a.txt"
    b = tmp_path / "b.txt"
    a.write_text(first, encoding="utf-8")
    b.write_text(second, encoding="utf-8")
    ca, cb = calibration_ids(tokenizer, a, ctx, na), calibration_ids(tokenizer, b, ctx, nb)
    assert len(ca) == na and len(cb) == nb
    # the first half's chunks are the whole run's first chunks, token for token
    assert ca == whole[:na]
    # no overlap: the second half's text begins after the last character of the first half's chunks
    offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    n_special = len(whole[0]) - len(tokenizer(text[:2000], add_special_tokens=False)["input_ids"][:ctx])
    assert len(text) - len(second) >= offsets[na * ctx - n_special - 1][1]
    # and it takes the whole run's next chunk from there (up to the first token at the cut)
    assert cb[0][1:ctx // 2] == whole[na][1:ctx // 2]


def test_two_chunks_are_needed(tokenizer):
    with pytest.raises(InputError, match="at least 2 calibration chunks"):
        holdout.split_text(tokenizer, "To be, or not to be: that is the question.", 16, None)


def test_merged_imatrix_sums_tokens():
    rng = np.random.default_rng(0)
    sa, sb = rng.random((1, 8)).astype(np.float32), rng.random((1, 8)).astype(np.float32)
    a = Imatrix({"blk.0.attn_q.weight": ImatrixEntry(sa, np.array([100.0]))}, chunk_count=1, chunk_size=100)
    b = Imatrix({"blk.0.attn_q.weight": ImatrixEntry(sb, np.array([300.0])),
                 "blk.0.ffn_up.weight": ImatrixEntry(sb, np.array([300.0]))}, chunk_count=3, chunk_size=100)
    m = holdout.merge_imatrix(a, b)
    np.testing.assert_allclose(m.column_weights("blk.0.attn_q.weight"), (sa[0] + sb[0]) / 400, rtol=1e-6)
    np.testing.assert_allclose(m.column_weights("blk.0.ffn_up.weight"), sb[0] / 300, rtol=1e-6)
    assert m.chunk_count == 4


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
