"""Malformed safetensors weights: each case is the tiny llama checkpoint directory with a broken model.safetensors
(or a broken shard set). `expect` is a substring of ggufkit's one-line error (ggufkit/sources/hf.py's checks).

Every length, shape and offset here is one an attacker controls; none of them may size an allocation.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from corpus.checkpoint_dir import checkpoint, f32_tensor, safetensors_bytes
from corpus.framework import case

WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"


def weights_case(name: str, expect: str):
    """Register a function returning model.safetensors' bytes as a "safetensors" case (a checkpoint dir)."""
    def register(make: Callable[[], bytes]):
        def write(dest: Path) -> None:
            checkpoint(dest, {WEIGHTS: make()})
        case("safetensors", name, expect)(write)
        return make
    return register


def _two(a: dict, b: dict, data_len: int) -> bytes:
    return safetensors_bytes({"a": a, "b": b}, b"\0" * data_len)


# ---- the length prefix

@weights_case("empty", "too short for a header")
def _():
    return b""


@weights_case("five_bytes", "too short for a header")
def _():
    return b"\x10\0\0\0\0"


@weights_case("header_length_huge", "exceeds the file size")
def _():
    return safetensors_bytes({}, header_len=(1 << 64) - 1)  # 1.8e19: must not be allocated or read


@weights_case("header_length_beyond_file", "header length 4096 exceeds the file size")
def _():
    return safetensors_bytes({"a": f32_tensor([2])}, b"\0" * 8, header_len=4096)


@case("safetensors", "header_length_over_100mb", expect="is absurd")
def _(dest: Path) -> None:
    """A 200 MB file (sparse: costs no disk) claiming a 150 MB header, beyond the format's 100 MB cap."""
    checkpoint(dest, {WEIGHTS: safetensors_bytes(b"{", header_len=150 << 20)})
    os.truncate(dest / WEIGHTS, 200 << 20)


# ---- the JSON header

@weights_case("header_not_json", "not valid JSON")
def _():
    return safetensors_bytes(b'{"a": {"dtype": "F32", ')


@weights_case("header_not_utf8", "not valid JSON")
def _():
    return safetensors_bytes(b'{"\xff\xfe": 1}')


@weights_case("header_deeply_nested", "not valid JSON")
def _():
    return safetensors_bytes(b"[" * 100_000 + b"]" * 100_000)  # Python's json recurses once per level


@weights_case("header_not_object", "not a JSON object")
def _():
    return safetensors_bytes([{"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}], b"\0" * 4)


@weights_case("entry_not_object", "bad entry for tensor model.norm.weight")
def _():
    return safetensors_bytes({"model.norm.weight": [0, 4]}, b"\0" * 4)


@weights_case("entry_missing_offsets", "bad entry for tensor a")
def _():
    return safetensors_bytes({"a": {"dtype": "F32", "shape": [1]}}, b"\0" * 4)


@weights_case("shape_negative", "bad entry for tensor a")
def _():
    return safetensors_bytes({"a": {"dtype": "F32", "shape": [-1, 4], "data_offsets": [0, 16]}}, b"\0" * 16)


@weights_case("shape_float", "bad entry for tensor a")
def _():
    return safetensors_bytes({"a": {"dtype": "F32", "shape": [2.5], "data_offsets": [0, 10]}}, b"\0" * 10)


@weights_case("offsets_three", "bad entry for tensor a")
def _():
    return safetensors_bytes({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4, 8]}}, b"\0" * 8)


@weights_case("offsets_bool", "bad entry for tensor a")
def _():
    return safetensors_bytes({"a": {"dtype": "F32", "shape": [1], "data_offsets": [False, True]}}, b"\0" * 4)


@weights_case("unknown_dtype", "unknown dtype 'Q4_K'")
def _():
    return safetensors_bytes({"a": {"dtype": "Q4_K", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4)


# ---- offsets against shapes and the file

@weights_case("offsets_reversed", "has offsets [16, 0]")
def _():
    return safetensors_bytes({"a": {"dtype": "F32", "shape": [4], "data_offsets": [16, 0]}}, b"\0" * 16)


@weights_case("offset_negative", "has offsets [-16, 0]")
def _():
    return safetensors_bytes({"a": {"dtype": "F32", "shape": [4], "data_offsets": [-16, 0]}}, b"\0" * 16)


@weights_case("size_mismatch", "holds 8 bytes, its shape [2, 2] x F32 needs 16")
def _():
    return safetensors_bytes({"a": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 8]}}, b"\0" * 8)


@weights_case("shape_absurd", "needs 4835703278458516698824704")
def _():
    # 2^40 x 2^40 x 4 bytes = 4.8e24: a size to compare, never to allocate
    return safetensors_bytes({"a": {"dtype": "F32", "shape": [1 << 40, 1 << 40], "data_offsets": [0, 16]}},
                             b"\0" * 16)


@weights_case("offsets_out_of_range", "file is truncated: tensor b ends at byte")
def _():
    return _two(f32_tensor([4]), f32_tensor([4], begin=1 << 40), 16)


@weights_case("data_truncated", "file is truncated: tensor b")
def _():
    return _two(f32_tensor([4]), f32_tensor([64], begin=16), 100)  # b needs bytes 16..272


@weights_case("tensors_overlap", "tensors a and b overlap")
def _():
    return _two(f32_tensor([4]), f32_tensor([4], begin=8), 24)


@weights_case("tensor_inside_another", "overlap")
def _():
    return _two(f32_tensor([16]), f32_tensor([2], begin=8), 64)


# ---- shard sets (model.safetensors.index.json)

def _sharded(dest: Path, index: bytes | dict, shards: dict[str, bytes]) -> None:
    checkpoint(dest, {WEIGHTS: None, INDEX: index, **shards})


_SHARD = safetensors_bytes({"a": f32_tensor([4])}, b"\0" * 16)


@case("safetensors", "index_not_json", expect="not a valid safetensors index")
def _(dest: Path) -> None:
    _sharded(dest, b'{"weight_map": {', {"model-1.safetensors": _SHARD})


@case("safetensors", "index_without_weight_map", expect="no weight_map object")
def _(dest: Path) -> None:
    _sharded(dest, {"metadata": {}}, {"model-1.safetensors": _SHARD})


@case("safetensors", "index_shard_path_traversal", expect="bad shard name '../../../etc/passwd'")
def _(dest: Path) -> None:
    _sharded(dest, {"weight_map": {"a": "../../../etc/passwd"}}, {})


@case("safetensors", "index_shard_missing", expect="model-2.safetensors: shard listed in")
def _(dest: Path) -> None:
    _sharded(dest, {"weight_map": {"a": "model-1.safetensors", "b": "model-2.safetensors"}},
             {"model-1.safetensors": _SHARD})


@case("safetensors", "index_tensor_not_in_shard", expect="tensor b is listed in")
def _(dest: Path) -> None:
    _sharded(dest, {"weight_map": {"a": "model-1.safetensors", "b": "model-1.safetensors"}},
             {"model-1.safetensors": _SHARD})


@case("safetensors", "tensor_in_two_shards", expect="tensor a also appears in model-1.safetensors")
def _(dest: Path) -> None:
    _sharded(dest, {"weight_map": {"a": "model-1.safetensors", "b": "model-2.safetensors"}},
             {"model-1.safetensors": _SHARD,
              "model-2.safetensors": safetensors_bytes({"a": f32_tensor([4]), "b": f32_tensor([4], 16)},
                                                       b"\0" * 32)})


# ---- no usable weights file

@case("safetensors", "no_safetensors", expect="only safetensors checkpoints are supported")
def _(dest: Path) -> None:
    checkpoint(dest, {WEIGHTS: None, "pytorch_model.bin": b"PK\x03\x04 not really a pickle"})


@case("safetensors", "two_files_no_index", expect="2 safetensors files but no " + INDEX)
def _(dest: Path) -> None:
    checkpoint(dest, {WEIGHTS: None, "a.safetensors": _SHARD, "b.safetensors": _SHARD})


@case("safetensors", "weights_is_a_directory", expect="model.safetensors: cannot read")
def _(dest: Path) -> None:
    checkpoint(dest, {WEIGHTS: None})
    (dest / WEIGHTS).mkdir()

