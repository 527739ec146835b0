"""Fuzzing validate_gguf: mutated and truncated copies of a valid small GGUF give a valid parse or an InputError,
never another exception and never a large allocation; a file ggufkit accepts is one llama.cpp accepts too.

Fixed examples (derandomized) so CI is repeatable; `make fuzz` (bench/fuzz_gguf.py) runs the same check for
longer with fresh randomness. Anything it finds goes into tests/corpus/gguf_cases.py as a regression case.
"""
from __future__ import annotations

import random

import pytest
from corpus.gguf_builder import small_model
from corpus.gguf_mutations import HEADER_SPAN, apply, check, mutation, random_edits
from corpus.llama_gguf import read_in_subprocess
from gguf import GGUFReader
from hypothesis import HealthCheck, given, settings

from ggufkit.errors import InputError
from ggufkit.sources.gguf import validate_gguf

SEED = small_model().to_bytes()


@settings(max_examples=600, derandomize=True, database=None, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(edits=mutation)
def test_mutated_gguf_is_valid_or_input_error(edits, tmp_path):
    path = tmp_path / "fuzz.gguf"
    if check(apply(SEED, edits), path) == "valid":
        GGUFReader(path)  # what ggufkit accepts, gguf-py can read (open_reader relies on it)


def test_every_truncation_is_rejected(tmp_path):
    # every cut inside the header, key-values and tensor infos; every 37th byte in the tensor data
    for size in [*range(HEADER_SPAN), *range(HEADER_SPAN, len(SEED), 37)]:
        assert check(SEED[:size], tmp_path / "cut.gguf") == "rejected", size


def test_ggufkit_and_llama_cpp_agree_on_random_mutants(tmp_path):
    """1000 fixed random mutants: every file ggufkit accepts, llama.cpp's reader accepts; every file only
    llama.cpp accepts has a name that is not UTF-8 or holds a NUL (see STRICTER_THAN_LLAMA_CPP in test_gguf_file.py)."""
    rng = random.Random(1234)
    paths, ours = [], []
    for i in range(1000):
        paths.append(tmp_path / f"m{i}.gguf")
        ours.append(check(apply(SEED, random_edits(rng)), paths[-1]) == "valid")
    theirs = [r["ok"] for r in read_in_subprocess(paths)]
    assert sum(ours) >= 50  # the mutations reach valid files too (metadata values, tensor data)
    assert [p.name for p, a, b in zip(paths, ours, theirs, strict=True) if a and not b] == []
    for path, a, b in zip(paths, ours, theirs, strict=True):
        if b and not a:
            with pytest.raises(InputError, match="is not valid UTF-8|contains a NUL byte"):
                validate_gguf(path)
