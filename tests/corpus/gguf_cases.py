"""Malformed GGUF files: each is the valid small_model() with one defect (or a file that is not GGUF at all).

`expect` is a substring of ggufkit's one-line error; tests also check that llama.cpp rejects every one of them.
"""
from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path

from gguf import GGMLQuantizationType, GGUFValueType

from corpus.framework import case
from corpus.gguf_builder import KV, RawGGUF, gguf_string, small_model

V = GGUFValueType


def gguf_case(name: str, expect: str):
    """Register a function returning the file's bytes as a "gguf" corpus case."""
    def register(make_bytes: Callable[[], bytes]):
        def write(dest: Path) -> None:
            dest.write_bytes(make_bytes())
        case("gguf", name, expect, suffix=".gguf")(write)
        return make_bytes
    return register


def _valid() -> tuple[RawGGUF, bytes]:
    model = small_model()
    return model, model.to_bytes()


def _patch(blob: bytes, offset: int, fmt: str, value) -> bytes:
    out = bytearray(blob)
    struct.pack_into("<" + fmt, out, offset, value)
    return bytes(out)


def _with_kv(key: str, new: KV | None) -> bytes:
    """small_model() with the KV `key` replaced by `new` (or removed)."""
    model = small_model()
    i = next(i for i, kv in enumerate(model.kvs) if kv.key == key)
    model.kvs[i:i + 1] = [new] if new is not None else []
    return model.to_bytes()


def _with_tensor(index: int, **changes) -> bytes:
    model = small_model()
    for attr, value in changes.items():
        setattr(model.tensors[index], attr, value)
    return model.to_bytes()


# ---- not GGUF at all

@gguf_case("empty", "empty file")
def _():
    return b""


@gguf_case("two_bytes", "too short for the magic")
def _():
    return b"GG"


@gguf_case("bad_magic", "magic b'GGML'")
def _():
    return b"GGML" + _valid()[1][4:]


@gguf_case("text_file", "not a GGUF file")
def _():
    return b'{"model_type": "llama", "hidden_size": 576}\n'


# ---- header

@gguf_case("version_1", "unsupported GGUF version 1")
def _():
    return _patch(_valid()[1], 4, "I", 1)


@gguf_case("version_0", "unsupported GGUF version 0")
def _():
    return _patch(_valid()[1], 4, "I", 0)


@gguf_case("version_4", "unsupported GGUF version 4")
def _():
    return _patch(_valid()[1], 4, "I", 4)


@gguf_case("truncated_header", "truncated: tensor count")
def _():
    return _valid()[1][:12]


@gguf_case("absurd_kv_count", "key-value count 9223372036854775807 cannot fit")
def _():
    model, blob = _valid()
    return _patch(blob, model.offsets["n_kv"], "Q", 2**63 - 1)


@gguf_case("absurd_tensor_count", "tensor count 4611686018427387904 cannot fit")
def _():
    model, blob = _valid()
    return _patch(blob, model.offsets["n_tensors"], "Q", 2**62)


# ---- key-values

@gguf_case("truncated_in_kv", "truncated: value of 'general.quantization_version'")
def _():
    model, blob = _valid()
    return blob[:model.offsets["value:general.quantization_version"] + 2]


@gguf_case("truncated_in_string_array", "item 5 of 'tokenizer.ggml.tokens' length 2")
def _():
    model, blob = _valid()
    # u32 type + u64 count, items "<unk>" (8+5) "<s>" (8+3) "</s>" (8+4) "a" (8+1) "b" (8+1) "ab" (8+2):
    # cut after the first byte of the last item's text
    return blob[:model.offsets["value:tokenizer.ggml.tokens"] + 12 + 54 + 8 + 1]


@gguf_case("absurd_key_length", "key 0 length 1152921504606846976")
def _():
    model, blob = _valid()
    return _patch(blob, model.offsets["kv:general.architecture"], "Q", 2**60)


@gguf_case("absurd_string_value_length", "value of 'general.name' length 1099511627776")
def _():
    model, blob = _valid()
    return _patch(blob, model.offsets["value:general.name"], "Q", 2**40)


@gguf_case("absurd_string_array_length", "array length 2305843009213693952")
def _():
    return _with_kv("tokenizer.ggml.tokens", KV.array("tokenizer.ggml.tokens", V.STRING, ["a"], length=2**61))


@gguf_case("absurd_int_array_length", "'tokenizer.ggml.token_type': array length 1125899906842624")
def _():
    return _with_kv("tokenizer.ggml.token_type",
                    KV.array("tokenizer.ggml.token_type", V.INT32, [1, 1], length=2**50))


@gguf_case("absurd_array_item_length", "item 1 of 'tokenizer.ggml.merges' length")
def _():
    kv = KV(b"tokenizer.ggml.merges", int(V.ARRAY),
            struct.pack("<IQ", int(V.STRING), 2) + gguf_string("a b") + gguf_string("x", length=2**33))
    return _with_kv("tokenizer.ggml.merges", kv)


@gguf_case("unknown_value_type", "key 'general.name' has unknown value type 13")
def _():
    return _with_kv("general.name", KV("general.name", 13, gguf_string("x")))


@gguf_case("unknown_array_item_type", "key 'tokenizer.ggml.token_type' has unknown value type 77")
def _():
    return _with_kv("tokenizer.ggml.token_type",
                    KV("tokenizer.ggml.token_type", int(V.ARRAY), struct.pack("<IQ", 77, 1) + b"\0" * 8))


@gguf_case("nested_array", "array of arrays")
def _():
    inner = struct.pack("<IQ", int(V.UINT8), 1) + b"\1"
    kv = KV("general.tags", int(V.ARRAY), struct.pack("<IQ", int(V.ARRAY), 1) + inner)
    return _with_kv("general.name", kv)


@gguf_case("duplicate_key", "duplicate key 'llama.block_count'")
def _():
    model = small_model()
    model.kvs.append(KV.scalar("llama.block_count", V.UINT32, 2))
    return model.to_bytes()


@gguf_case("key_not_utf8", "key 1 at offset")
def _():
    return _with_kv("general.name", KV(b"general.\xff\xfename", int(V.UINT32), struct.pack("<I", 1)))


@gguf_case("alignment_not_power_of_two", "general.alignment 48 is not a power of two")
def _():
    model = small_model()
    model.kvs.append(KV.scalar("general.alignment", V.UINT32, 48))
    return model.to_bytes()


@gguf_case("alignment_zero", "general.alignment 0 is not a power of two")
def _():
    model = small_model()
    model.kvs.append(KV.scalar("general.alignment", V.UINT32, 0))
    return model.to_bytes()


@gguf_case("alignment_wrong_type", "general.alignment has type UINT64")
def _():
    model = small_model()
    model.kvs.append(KV.scalar("general.alignment", V.UINT64, 32))
    return model.to_bytes()


# ---- tensor infos

@gguf_case("truncated_in_tensor_infos", "truncated: dimension 1 of 'token_embd.weight'")
def _():
    model, blob = _valid()
    # name (8 + 17) + n_dims (4) + dim 0 (8), then 3 of dim 1's 8 bytes
    return blob[:model.offsets["tensor:token_embd.weight"] + 8 + 17 + 4 + 8 + 3]


@gguf_case("absurd_tensor_name_length", "name of tensor 2 length 18446744073709551615")
def _():
    model, blob = _valid()
    return _patch(blob, model.offsets["tensor:blk.0.attn_q.weight"], "Q", 2**64 - 1)


@gguf_case("tensor_name_too_long", "tensor 1 name is 64 bytes long")
def _():
    return _with_tensor(1, name="output_norm." + "w" * 52)


@gguf_case("tensor_name_not_utf8", "name of tensor 1 at offset")
def _():
    return _with_tensor(1, name=b"output_norm.\xc3\x28")


@gguf_case("tensor_name_with_nul", "name of tensor 3 at offset")
def _():
    return _with_tensor(3, name=b"blk.0\0ffn_up.weight")


@gguf_case("duplicate_tensor_name", "duplicate tensor name 'token_embd.weight'")
def _():
    return _with_tensor(2, name="token_embd.weight")


@gguf_case("unknown_ggml_type", "tensor 'output_norm.weight' has unknown ggml type 99")
def _():
    return _with_tensor(1, ggml_type=99)


@gguf_case("removed_ggml_type", "tensor 'output_norm.weight' has unknown ggml type 4")
def _():
    return _with_tensor(1, ggml_type=4)  # Q4_2, removed from ggml


@gguf_case("too_many_dims", "tensor 'output_norm.weight' has 5 dimensions, the limit is 4")
def _():
    return _with_tensor(1, dims=[32, 1, 1, 1, 1])


@gguf_case("negative_dim", "tensor 'output_norm.weight' has a negative dimension")
def _():
    return _with_tensor(1, dims=[2**64 - 32])


@gguf_case("absurd_dims", "more than 2**63 elements")
def _():
    return _with_tensor(1, dims=[2**32, 2**32, 2**32])


@gguf_case("row_not_multiple_of_block", "rows of 40 elements, not a multiple of its block size 32")
def _():
    return _with_tensor(2, dims=[40, 32])


# ---- tensor data

@gguf_case("tensor_offset_misaligned", "tensor 'output_norm.weight' data offset 193 is not a multiple")
def _():
    return _with_tensor(1, offset=193)


@gguf_case("tensor_offset_gap", "tensor 'output_norm.weight' data offset 256, expected 224")
def _():
    return _with_tensor(1, offset=256)  # token_embd.weight is 6 rows x 34 bytes = 204, padded to 224


@gguf_case("tensor_offset_huge", "data offset 18446744073709551584")
def _():
    return _with_tensor(3, offset=2**64 - 32)


@gguf_case("tensor_data_beyond_end", "tensor 'blk.0.ffn_up.weight' data")
def _():
    return _with_tensor(3, dims=[256, 2000])


@gguf_case("truncated_data", "lies beyond the end of the file")
def _():
    blob = _valid()[1]
    return blob[:len(blob) - 100]


@gguf_case("dims_overflow_size", "lies beyond the end of the file")
def _():
    return _with_tensor(3, dims=[2**40, 2**20], ggml_type=int(GGMLQuantizationType.F32))


# ---- regressions found by fuzzing (tests/test_fuzz_gguf.py, bench/fuzz_gguf.py)

@gguf_case("name_with_newline", r"tensor 'output_norm\nweight' has unknown ggml type 99")
def _():
    # a control character in a name must not split the one-line error
    return _with_tensor(1, name="output_norm\nweight", ggml_type=99)


@gguf_case("scalar_tensor_of_block_type", "tensor 'blk.0.ffn_up.weight' of type Q4_K has rows of 1 elements")
def _():
    return _with_tensor(3, dims=[], data=b"")  # no dimensions: one element, less than a Q4_K block
