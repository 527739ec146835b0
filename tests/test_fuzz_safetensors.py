"""Fuzzing the safetensors header checks (ggufkit/sources/hf.py read_safetensors_header) with hypothesis.

Properties, on mutated real files and on generated headers:
- the reader either returns tensors whose byte ranges lie inside the data part, match shape x dtype and do not
  overlap, or raises InputError (one line, naming the file) - never another exception;
- the safetensors library (the format's reference) agrees: every file it opens, we open with the same names,
  dtypes, shapes and bytes.
Regressions found here go into tests/corpus/safetensors_cases.py.
"""
from __future__ import annotations

import itertools
import json
import math
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ggufkit.errors import InputError
from ggufkit.sources.hf import KNOWN_DTYPES, SUPPORTED_DTYPES, read_safetensors_header

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _valid_file() -> bytes:
    from safetensors.numpy import save

    rng = np.random.default_rng(0)
    return save({"a": rng.standard_normal((4, 8)).astype(np.float32),
                 "b": rng.standard_normal(16).astype(np.float16),
                 "c": np.arange(6, dtype=np.int32).reshape(2, 3)}, metadata={"format": "np"})


VALID = _valid_file()


def _check(path: Path):
    """Our reader's verdict, with the structural guarantees checked; None when it rejects."""
    try:
        refs = read_safetensors_header(path)
    except InputError as e:
        assert "\n" not in str(e) and str(e).startswith(str(path)), str(e)
        return None
    size = path.stat().st_size
    spans = []
    for ref in refs.values():
        assert 8 <= ref.offset and ref.offset + ref.nbytes <= size
        assert ref.nbytes == math.prod(ref.shape) * KNOWN_DTYPES[ref.dtype]
        spans.append((ref.offset, ref.offset + ref.nbytes))
    spans.sort()
    assert all(e0 <= b1 for (_, e0), (b1, _) in itertools.pairwise(spans))
    return refs


def _reference(path: Path):
    """The safetensors library's reading: {name: (dtype, shape, raw bytes)}, or None if it refuses."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            out = {}
            for name in f.keys():  # noqa: SIM118 -- safe_open has keys(), not iteration
                x = f.get_tensor(name)
                out[name] = (x.dtype, tuple(x.shape), x.tobytes())
            return out
    except Exception:  # noqa: BLE001 -- any refusal by the reference
        return None


def _agree(path: Path) -> None:
    ours, theirs = _check(path), _reference(path)
    if theirs is None:
        return
    assert ours is not None, "the safetensors library opens this file, ggufkit refuses it"
    assert set(ours) == set(theirs)
    for name, (dtype, shape, raw) in theirs.items():
        ref = ours[name]
        assert ref.shape == shape
        if ref.dtype in SUPPORTED_DTYPES:
            np.testing.assert_array_equal(ref.read().ravel(), np.frombuffer(raw, dtype).astype(np.float32))


@FUZZ
@given(st.lists(st.tuples(st.integers(0, len(VALID) - 1), st.integers(0, 255)), min_size=1, max_size=8),
       st.integers(0, len(VALID)))
def test_mutated_file(tmp_path, edits, cut):
    blob = bytearray(VALID)
    for pos, value in edits:
        blob[pos] = value
    path = tmp_path / "m.safetensors"
    path.write_bytes(bytes(blob[:max(cut, 1)] if cut < 8 else blob))
    _agree(path)


def _entries():
    dims = st.one_of(st.integers(0, 8), st.integers(-2, 2**64), st.just(2.0), st.just(True))
    offsets = st.one_of(st.integers(-4, 600), st.integers(2**62, 2**65))
    entry = st.fixed_dictionaries({
        "dtype": st.sampled_from([*KNOWN_DTYPES, "Q4", "", "f32"]),
        "shape": st.lists(dims, max_size=3),
        "data_offsets": st.one_of(st.lists(offsets, min_size=2, max_size=2), st.lists(offsets, max_size=3)),
    })
    return st.dictionaries(st.sampled_from(["a", "b", "c", "__metadata__", "x.weight"]),
                           st.one_of(entry, st.integers(), st.text(max_size=3)), max_size=4)


@FUZZ
@given(_entries(), st.integers(0, 512), st.one_of(st.none(), st.integers(0, 2**64 - 1)))
def test_generated_header(tmp_path, header, data_len, header_len):
    raw = json.dumps(header).encode()
    n = len(raw) if header_len is None else header_len
    path = tmp_path / "g.safetensors"
    path.write_bytes(struct.pack("<Q", n) + raw + bytes(range(256)) * (data_len // 256) + bytes(data_len % 256))
    _agree(path)


@pytest.mark.parametrize("depth", [10, 1000, 100_000])
def test_nesting_depth(tmp_path, depth):
    """Found by the corpus: deeply nested JSON made Python's json raise RecursionError (a traceback)."""
    path = tmp_path / "n.safetensors"
    raw = b"[" * depth + b"]" * depth
    path.write_bytes(struct.pack("<Q", len(raw)) + raw)
    with pytest.raises(InputError, match="not a JSON object|not valid JSON"):
        read_safetensors_header(path)
