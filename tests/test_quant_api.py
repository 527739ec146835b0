"""ggufkit.quant's API contract: shapes, bad input, thread invariance, and one type checked end to end against
llama.cpp. (Per-type byte-exactness on many distributions lives in test_kernels.py.)"""
from __future__ import annotations

import numpy as np
import pytest
from ggml_ref import describe_mismatch, ggml_quantize
from gguf import GGMLQuantizationType as T
from gguf.quants import dequantize as gguf_dequantize

from ggufkit import quant


def test_q8_0_bytes_equal_llama_cpp_and_dequantize_equals_gguf_py():
    x = np.random.default_rng(1).standard_normal((16, 512)).astype(np.float32)
    ours = quant.quantize(x, "q8_0")
    ref = ggml_quantize(x, T.Q8_0)
    assert np.array_equal(ours, ref), describe_mismatch(ours, ref, 34)
    back = quant.dequantize(ours, T.Q8_0, x.shape)
    assert np.array_equal(back, gguf_dequantize(ours, T.Q8_0).reshape(x.shape))


def test_row_size():
    assert quant.row_size("Q8_0", 4096) == 4096 // 32 * 34
    with pytest.raises(ValueError, match="multiple of the block size 32"):
        quant.row_size("Q8_0", 100)


def test_threads_do_not_change_bytes():
    x = np.random.default_rng(2).standard_normal((37, 256)).astype(np.float32)
    one = quant.quantize(x, "Q8_0", threads=1)
    for n in (2, 3, 8, 64):
        assert np.array_equal(one, quant.quantize(x, "Q8_0", threads=n))


@pytest.mark.parametrize("bad, message", [
    (np.zeros((2, 100), np.float32), "cols=100 is not a positive multiple of the block size 32"),
    (np.zeros((2, 64), np.float64), "float32"),
    (np.zeros(64, np.float32), "2-D"),
])
def test_bad_input_is_named(bad, message):
    with pytest.raises(ValueError, match=message):
        quant.quantize(bad, "Q8_0")


def test_nonfinite_input_reports_count_and_first_position():
    x = np.zeros((3, 64), np.float32)
    x[1, 5] = np.nan
    x[2, 0] = np.inf
    with pytest.raises(ValueError, match=r"2 non-finite .*row 1, col 5"):
        quant.quantize(x, "Q8_0")


@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_K"])
@pytest.mark.parametrize("threads", [1, 4])
def test_nonfinite_found_by_the_rows_while_quantizing(qtype, threads):
    """The check runs inside the native row workers: the first bad value over all threads' ranges is reported, and
    the count is over the whole input, wherever the values are."""
    x = np.random.default_rng(0).standard_normal((40, 512)).astype(np.float32)
    x[37, 100] = -np.inf  # in the last thread's range
    with pytest.raises(ValueError, match=r"1 non-finite .*row 37, col 100"):
        quant.quantize(x, qtype, threads=threads)
    x[12, 3] = np.nan  # an earlier range too
    x[12, 400] = np.nan
    with pytest.raises(ValueError, match=r"3 non-finite .*row 12, col 3\)"):
        quant.quantize(x, qtype, threads=threads)


def test_imatrix_of_wrong_length_is_refused():
    with pytest.raises(ValueError, match=r"imatrix has shape \(32,\), expected \(64,\)"):
        quant.quantize(np.zeros((1, 64), np.float32), "Q8_0", imatrix=np.ones(32, np.float32))


def test_unknown_type_is_refused():
    with pytest.raises(ValueError, match="unknown quantization type"):
        quant.quantize(np.zeros((1, 64), np.float32), "Q9_9")


@pytest.mark.parametrize("rows", [1, 3, 7, 33])
def test_nonfinite_count_equals_numpy_at_any_position(rows):
    """The finiteness scan (AVX-512, AVX2 or plain, whichever this CPU runs) counts NaN (any payload) and +-inf
    wherever they sit: vector bodies and the tails after them (total lengths not a multiple of 16, 64 or 128)."""
    rng = np.random.default_rng(rows)
    x = rng.standard_normal((rows, 96)).astype(np.float32)
    bits = x.view(np.uint32).reshape(-1)
    where = rng.choice(bits.size, size=min(bits.size, 5 + rows), replace=False)
    specials = np.array([0x7F800000, 0xFF800000, 0x7FC00000, 0x7F800001, 0xFFFFFFFF], np.uint32)
    bits[where] = specials[np.arange(where.size) % specials.size]
    bits[-1] = 0x7F7FFFFF  # the largest finite float is not counted
    expected = int((~np.isfinite(x)).sum())
    first = int(np.flatnonzero(~np.isfinite(x).reshape(-1))[0])
    with pytest.raises(ValueError, match=rf"{expected} non-finite .*row {first // 96}, col {first % 96}\)"):
        quant.quantize(x, "Q8_0")
