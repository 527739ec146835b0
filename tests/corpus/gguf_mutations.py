"""Byte mutations of a valid GGUF for fuzzing validate_gguf (tests/test_fuzz_gguf.py, bench/fuzz_gguf.py).

A mutation is a list of edits applied in order to small_model()'s bytes. Positions are drawn over the first
`HEADER_SPAN` bytes most of the time (the header, key-values and tensor infos, where structure lives) and are
taken modulo the current length. Integer overwrites use values that break readers: 0, 1, powers of two near
the type limits, the file size, "-1".
"""
from __future__ import annotations

import random
import struct
import tracemalloc
from pathlib import Path

from hypothesis import strategies as st

from ggufkit.commands.inspect import render_text
from ggufkit.errors import InputError
from ggufkit.sources.gguf import summarize, validate_gguf

INTERESTING_U64 = [0, 1, 2, 3, 4, 5, 8, 31, 32, 33, 64, 255, 256, 1024, 2**31 - 1, 2**31, 2**32 - 1, 2**32,
                   2**40, 2**62, 2**63 - 1, 2**63, 2**64 - 32, 2**64 - 1]
INTERESTING_U32 = [0, 1, 2, 3, 4, 7, 8, 9, 10, 12, 13, 30, 31, 32, 39, 42, 43, 64, 99, 2**31, 2**32 - 1]
HEADER_SPAN = 1200  # small_model()'s data section starts at 1120
MAX_PEAK_BYTES = 2_000_000  # a valid parse of the ~2.3 KB seed allocates well under 100 KB

_position = st.one_of(st.integers(0, HEADER_SPAN), st.integers(0, 4096))
edit = st.one_of(
    st.tuples(st.just("byte"), _position, st.integers(0, 255)),
    st.tuples(st.just("u32"), _position, st.sampled_from(INTERESTING_U32)),
    st.tuples(st.just("u64"), _position, st.sampled_from(INTERESTING_U64)),
    st.tuples(st.just("truncate"), _position, st.just(0)),
    st.tuples(st.just("insert"), _position, st.integers(1, 16)),
    st.tuples(st.just("delete"), _position, st.integers(1, 16)),
)
mutation = st.lists(edit, min_size=1, max_size=4)


def random_edits(rng: random.Random, max_edits: int = 3) -> list[tuple[str, int, int]]:
    """The same kind of edits as `mutation`, drawn from a plain RNG (for batch checks and the long fuzz run)."""
    edits = []
    for _ in range(rng.randint(1, max_edits)):
        pos = rng.randint(0, HEADER_SPAN) if rng.random() < 0.8 else rng.randint(0, 4096)
        op = rng.choice(["byte", "u32", "u64", "truncate", "insert", "delete"])
        arg = {"byte": rng.randint(0, 255), "u32": rng.choice(INTERESTING_U32),
               "u64": rng.choice(INTERESTING_U64), "truncate": 0, "insert": rng.randint(1, 16),
               "delete": rng.randint(1, 16)}[op]
        edits.append((op, pos, arg))
    return edits


def apply(seed: bytes, edits) -> bytes:
    data = bytearray(seed)
    for op, pos, arg in edits:
        pos %= len(data) + 1
        if op == "byte" and pos < len(data):
            data[pos] = arg
        elif op in ("u32", "u64"):
            raw = struct.pack("<I" if op == "u32" else "<Q", arg)
            data[pos:pos + len(raw)] = raw
        elif op == "truncate":
            del data[pos:]
        elif op == "insert":
            data[pos:pos] = bytes([0xA5]) * arg
        elif op == "delete":
            del data[pos:pos + arg]
    return bytes(data)


def check(data: bytes, path: Path) -> str:
    """Write data to path and validate it: "valid" or "rejected"; any other exception, or a parse that
    allocates more than MAX_PEAK_BYTES, propagates / fails an assertion."""
    path.write_bytes(data)
    tracemalloc.start()
    try:
        try:
            render_text(summarize(validate_gguf(path), with_tensors=True))  # what `inspect` prints
            outcome = "valid"
        except InputError as e:
            message = str(e)
            assert message.startswith(f"{path}: ") and "\n" not in message, message
            outcome = "rejected"
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < MAX_PEAK_BYTES, f"{peak} bytes allocated for a {len(data)}-byte file"
    return outcome
