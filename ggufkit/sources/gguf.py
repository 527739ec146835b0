"""Safe GGUF reading: validate a GGUF file's whole structure before anything trusts a number in it.

`validate_gguf(path) -> GGUFFile` walks the header, the key-values and the tensor infos with bounds checks at every
step, then checks that every tensor's data lies inside the file. Any problem is one `InputError`
(`<file>: <problem>`); nothing is allocated from a length until that length has been checked against the bytes
that are left in the file, and no loop runs on a count before the count has been checked the same way.

Why this walk is our own code and not gguf-py's `GGUFReader` (used for everything the walk does not do):
- GGUFReader trusts lengths and counts: on a corrupt file it loops on absurd counts, reshapes short memmap views
  and raises bare ValueError / KeyError / IndexError / UnicodeDecodeError / OverflowError from deep inside numpy.
- It builds one numpy view per string: 100k views for the demo model's vocabulary, 4 s of CPU on a 98 MB file,
  where this walk takes a fraction of a second. `inspect` runs on every file a user downloads.
The format facts checked here are llama.cpp's (gguf.cpp): magic "GGUF", versions 2-3, GGML_MAX_DIMS = 4,
GGML_MAX_NAME = 64, `general.alignment` a power-of-two u32, tensors stored in order, each at the running offset
padded to the alignment, row length a multiple of the type's block size, element counts below 2**63.
`open_reader(path)` gives gguf-py's GGUFReader (memory-mapped tensor data) for a file that passed validation.

File layout (little-endian unless the file is byte-swapped; GGUF version 2 and 3):
    "GGUF" u32 version | u64 n_tensors | u64 n_kv
    n_kv x      [ str key | u32 value_type | value ]        str = u64 length + bytes
                value: scalar | str | u32 item_type + u64 count + count items (no nested arrays)
    n_tensors x [ str name | u32 n_dims | n_dims x u64 ne | u32 ggml_type | u64 offset ]
    padding to the alignment | tensor data (offset relative to here)
"""
from __future__ import annotations

import math
import mmap
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGML_QUANT_SIZES, GGUF_DEFAULT_ALIGNMENT, GGMLQuantizationType, GGUFValueType, LlamaFileType

from ggufkit.errors import InputError

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
MAX_DIMS = 4  # GGML_MAX_DIMS
MAX_NAME_BYTES = 63  # GGML_MAX_NAME (64) including the terminating NUL
HEADER_BYTES = 24  # magic + version + n_tensors + n_kv
MIN_KV_BYTES = 8 + 4 + 1  # empty key, type, a one-byte value
MIN_TENSOR_INFO_BYTES = 8 + 4 + 4 + 8  # empty name, n_dims = 0, type, offset

# value type -> (struct code, numpy dtype char, size in bytes); strings and arrays are handled apart
_SCALARS: dict[GGUFValueType, tuple[str, str, int]] = {
    GGUFValueType.UINT8: ("B", "u1", 1), GGUFValueType.INT8: ("b", "i1", 1),
    GGUFValueType.UINT16: ("H", "u2", 2), GGUFValueType.INT16: ("h", "i2", 2),
    GGUFValueType.UINT32: ("I", "u4", 4), GGUFValueType.INT32: ("i", "i4", 4),
    GGUFValueType.FLOAT32: ("f", "f4", 4), GGUFValueType.BOOL: ("?", "?", 1),
    GGUFValueType.UINT64: ("Q", "u8", 8), GGUFValueType.INT64: ("q", "i8", 8),
    GGUFValueType.FLOAT64: ("d", "f8", 8),
}


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # ggml order: ne[0] (row length) first
    ggml_type: GGMLQuantizationType
    offset: int  # from the start of the data section
    file_offset: int  # from the start of the file
    n_elements: int
    n_bytes: int


@dataclass(frozen=True)
class GGUFArray:
    """An array value: item type and items (a numpy array for numbers, a list of str for strings)."""
    item_type: GGUFValueType
    items: Any

    def __len__(self) -> int:
        return len(self.items)


@dataclass
class GGUFFile:
    """The validated structure of a GGUF file: metadata values and tensor infos (no tensor data)."""
    path: Path
    file_size: int
    version: int
    byte_order: str  # "<" little-endian, ">" big-endian
    alignment: int
    data_offset: int
    metadata: dict[str, Any] = field(default_factory=dict)  # key -> int | float | bool | str | GGUFArray
    value_types: dict[str, GGUFValueType] = field(default_factory=dict)
    tensors: list[TensorInfo] = field(default_factory=list)
    kv_spans: dict[str, tuple[int, int]] = field(default_factory=dict)  # key -> (start, end) of its raw entry

    def get(self, key: str, default=None):
        return self.metadata.get(key, default)

    @property
    def architecture(self) -> str | None:
        arch = self.metadata.get("general.architecture")
        return arch if isinstance(arch, str) else None

    @property
    def file_type_name(self) -> str | None:
        ftype = self.metadata.get("general.file_type")
        if not isinstance(ftype, int) or isinstance(ftype, bool):
            return None
        try:
            return LlamaFileType(ftype).name.removeprefix("MOSTLY_").removeprefix("ALL_")
        except ValueError:
            return f"unknown ({ftype})"


class _Cursor:
    """Bounds-checked reads from the mapped file; every failure is an InputError naming the offset."""

    def __init__(self, buf, size: int, path: Path, order: str):
        self.buf, self.size, self.path, self.order, self.pos = buf, size, path, order, 0

    def fail(self, problem: str):
        raise InputError(problem, self.path)

    def need(self, n: int, what: str) -> None:
        if n > self.size - self.pos:
            self.fail(f"truncated: {what} at offset {self.pos} needs {n} bytes, only {self.size - self.pos} left")

    def unpack(self, code: str, size: int, what: str):
        self.need(size, what)
        value = struct.unpack_from(self.order + code, self.buf, self.pos)[0]
        self.pos += size
        return value

    def u32(self, what: str) -> int:
        return self.unpack("I", 4, what)

    def u64(self, what: str) -> int:
        return self.unpack("Q", 8, what)

    def raw_string(self, what: str) -> bytes:
        length = self.u64(f"{what} length")
        if length > self.size - self.pos:
            self.fail(f"{what} length {length} at offset {self.pos - 8} exceeds the {self.size - self.pos} "
                      "bytes left in the file")
        data = self.buf[self.pos:self.pos + length]
        self.pos += length
        return data

    def name(self, what: str) -> str:
        """A key or tensor name: UTF-8 without NUL (llama.cpp looks names up as C strings)."""
        raw = self.raw_string(what)
        if b"\0" in raw:
            self.fail(f"{what} at offset {self.pos - len(raw)} contains a NUL byte")
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            self.fail(f"{what} at offset {self.pos - len(raw)} is not valid UTF-8")

    def text(self, what: str) -> str:
        # values are shown, not matched: undecodable bytes become U+FFFD instead of failing the file
        return self.raw_string(what).decode("utf-8", errors="replace")

    def value_type(self, raw: int, key: str) -> GGUFValueType:
        try:
            return GGUFValueType(raw)
        except ValueError:
            self.fail(f"key {key!r} has unknown value type {raw}")


def _string_items(cur: _Cursor, count: int, key: str) -> list[str]:
    """The items of a string array: the same checks as _Cursor.text, in one tight loop (vocabularies hold
    100k+ strings; this is most of the time validate_gguf takes)."""
    buf, pos, size = cur.buf, cur.pos, cur.size
    unpack_length = struct.Struct(cur.order + "Q").unpack_from
    items = []
    for i in range(count):
        if size - pos < 8:
            cur.pos = pos
            cur.need(8, f"item {i} of {key!r} length")
        (length,) = unpack_length(buf, pos)
        pos += 8
        if length > size - pos:
            cur.fail(f"item {i} of {key!r} length {length} at offset {pos - 8} exceeds the {size - pos} bytes "
                     "left in the file")
        items.append(buf[pos:pos + length].decode("utf-8", errors="replace"))
        pos += length
    cur.pos = pos
    return items


def _read_value(cur: _Cursor, vtype: GGUFValueType, key: str):
    if vtype == GGUFValueType.STRING:
        return cur.text(f"value of {key!r}")
    if vtype in _SCALARS:
        code, _, size = _SCALARS[vtype]
        return cur.unpack(code, size, f"value of {key!r}")
    # ARRAY
    item_type = cur.value_type(cur.u32(f"array type of {key!r}"), key)
    count = cur.u64(f"array length of {key!r}")
    if item_type == GGUFValueType.ARRAY:
        cur.fail(f"key {key!r} is an array of arrays, which GGUF readers do not support")
    item_min = 8 if item_type == GGUFValueType.STRING else _SCALARS[item_type][2]
    left = cur.size - cur.pos
    if count > left // item_min:
        cur.fail(f"key {key!r}: array length {count} at offset {cur.pos - 8} cannot fit in the {left} bytes "
                 "left in the file")
    if item_type == GGUFValueType.STRING:
        items = _string_items(cur, count, key)
    else:
        _, dtype, size = _SCALARS[item_type]
        # (count,) copied out of the map so the file can be closed; count*size was checked above
        items = np.frombuffer(cur.buf, dtype=cur.order + dtype, count=count, offset=cur.pos).copy()
        cur.pos += count * size
    return GGUFArray(item_type, items)


def _read_header(cur: _Cursor) -> tuple[int, int, int]:
    if cur.size < 4:
        cur.fail(f"not a GGUF file: {cur.size} bytes, too short for the magic")
    magic = bytes(cur.buf[0:4])
    if magic != GGUF_MAGIC:
        cur.fail(f"not a GGUF file: magic {magic!r}, expected b'GGUF'")
    cur.pos = 4
    version = cur.u32("version")
    if version & 0xFFFF == 0 and version != 0:
        # a version like 0x03000000: the file was written on a machine of the other byte order
        cur.order = ">" if cur.order == "<" else "<"
        version = struct.unpack_from(cur.order + "I", cur.buf, 4)[0]
    if version not in SUPPORTED_VERSIONS:
        cur.fail(f"unsupported GGUF version {version} (supported: 2, 3)")
    n_tensors = cur.u64("tensor count")
    n_kv = cur.u64("key-value count")
    left = cur.size - cur.pos
    if n_kv > left // MIN_KV_BYTES:
        cur.fail(f"key-value count {n_kv} cannot fit in the {left} bytes after the header")
    if n_tensors > left // MIN_TENSOR_INFO_BYTES:
        cur.fail(f"tensor count {n_tensors} cannot fit in the {left} bytes after the header")
    return version, n_tensors, n_kv


def _read_tensor_info(cur: _Cursor, index: int) -> tuple[str, tuple[int, ...], GGMLQuantizationType, int]:
    name = cur.name(f"name of tensor {index}")
    if len(name.encode()) > MAX_NAME_BYTES:
        cur.fail(f"tensor {index} name is {len(name.encode())} bytes long, the limit is {MAX_NAME_BYTES}")
    n_dims = cur.u32(f"dimension count of {name!r}")
    if n_dims > MAX_DIMS:
        cur.fail(f"tensor {name!r} has {n_dims} dimensions, the limit is {MAX_DIMS}")
    shape = tuple(cur.u64(f"dimension {d} of {name!r}") for d in range(n_dims))
    raw_type = cur.u32(f"type of {name!r}")
    offset = cur.u64(f"data offset of {name!r}")
    if any(ne >= 2**63 for ne in shape):
        cur.fail(f"tensor {name!r} has a negative dimension {shape}")
    n_elements = math.prod(shape)
    if n_elements >= 2**63:
        cur.fail(f"tensor {name!r} shape {shape} has more than 2**63 elements")
    try:
        ggml_type = GGMLQuantizationType(raw_type)
    except ValueError:
        cur.fail(f"tensor {name!r} has unknown ggml type {raw_type}")
    block_size = GGML_QUANT_SIZES[ggml_type][0]
    row = shape[0] if shape else 1  # missing dimensions count as 1, as in ggml
    if row % block_size:
        cur.fail(f"tensor {name!r} of type {ggml_type.name} has rows of {row} elements, not a multiple "
                 f"of its block size {block_size}")
    return name, shape, ggml_type, offset


def _check_alignment(cur: _Cursor, metadata: dict, types: dict) -> int:
    if "general.alignment" not in metadata:
        return GGUF_DEFAULT_ALIGNMENT
    if types["general.alignment"] != GGUFValueType.UINT32:
        cur.fail(f"general.alignment has type {types['general.alignment'].name}, expected UINT32")
    alignment = metadata["general.alignment"]
    if alignment == 0 or alignment & (alignment - 1):
        cur.fail(f"general.alignment {alignment} is not a power of two")
    return alignment


def _parse(buf, size: int, path: Path) -> GGUFFile:
    cur = _Cursor(buf, size, path, "<")
    version, n_tensors, n_kv = _read_header(cur)

    metadata: dict[str, Any] = {}
    types: dict[str, GGUFValueType] = {}
    spans: dict[str, tuple[int, int]] = {}
    for i in range(n_kv):
        start = cur.pos
        key = cur.name(f"key {i}")
        if key in metadata:
            cur.fail(f"duplicate key {key!r}")
        vtype = cur.value_type(cur.u32(f"value type of {key!r}"), key)
        metadata[key] = _read_value(cur, vtype, key)
        types[key] = vtype
        spans[key] = (start, cur.pos)
    alignment = _check_alignment(cur, metadata, types)

    infos = []
    seen: set[str] = set()
    for i in range(n_tensors):
        info = _read_tensor_info(cur, i)
        if info[0] in seen:
            cur.fail(f"duplicate tensor name {info[0]!r}")
        seen.add(info[0])
        infos.append(info)

    data_offset = -(-cur.pos // alignment) * alignment
    tensors = []
    expected = 0  # tensors are packed in order, each padded to the alignment
    for name, shape, ggml_type, offset in infos:
        block_size, type_size = GGML_QUANT_SIZES[ggml_type]
        n_elements = math.prod(shape)
        n_bytes = n_elements // block_size * type_size
        if offset % alignment:
            cur.fail(f"tensor {name!r} data offset {offset} is not a multiple of the alignment {alignment}")
        if offset != expected:
            cur.fail(f"tensor {name!r} data offset {offset}, expected {expected} (tensors must follow each other "
                     "in order)")
        end = data_offset + offset + n_bytes
        if end > size:
            cur.fail(f"tensor {name!r} data (bytes {data_offset + offset}..{end}) lies beyond the end of the "
                     f"file ({size} bytes)")
        tensors.append(TensorInfo(name, shape, ggml_type, offset, data_offset + offset, n_elements, n_bytes))
        expected = offset + -(-n_bytes // alignment) * alignment
    return GGUFFile(path, size, version, cur.order, alignment, data_offset, metadata, types, tensors, spans)


def validate_gguf(path: str | os.PathLike) -> GGUFFile:
    """Check the whole structure of a GGUF file; its metadata and tensor infos, or InputError naming the problem."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size == 0:
                raise InputError("empty file (0 bytes), not a GGUF file", path)
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
                return _parse(mapped, size, path)
    except IsADirectoryError:
        raise InputError("is a directory, not a GGUF file", path) from None
    except FileNotFoundError:
        raise InputError("no such file", path) from None
    except PermissionError:
        raise InputError("permission denied", path) from None
    except OSError as e:
        raise InputError(f"cannot read: {e.strerror or e}", path) from None


def open_reader(path: str | os.PathLike):
    """gguf-py's GGUFReader (tensor data memory-mapped) for a file that validate_gguf accepts."""
    from gguf import GGUFReader

    validate_gguf(path)
    try:
        return GGUFReader(path)
    except (ValueError, KeyError, IndexError, OverflowError, TypeError) as e:  # validation should prevent these
        raise InputError(f"gguf-py cannot read it: {e}", path) from None


# ---- summary (what `inspect` shows and `eval`/`run` can print)

# {arch}.<suffix> hyperparameters shown first, in this order, when present
KEY_HPARAMS = ("context_length", "embedding_length", "block_count", "feed_forward_length",
               "attention.head_count", "attention.head_count_kv", "rope.freq_base", "rope.dimension_count",
               "rope.scaling.type", "rope.scaling.factor", "vocab_size", "expert_count", "expert_used_count")


def _plain(value):
    """A metadata value as JSON-ready Python; arrays become a short description."""
    if isinstance(value, GGUFArray):
        return f"[{len(value)} x {value.item_type.name}]"
    if isinstance(value, np.generic):
        return value.item()
    return value


def _token_text(g: GGUFFile, key: str) -> str | None:
    tokens = g.metadata.get("tokenizer.ggml.tokens")
    token_id = g.metadata.get(key)
    if not isinstance(tokens, GGUFArray) or tokens.item_type != GGUFValueType.STRING:
        return None
    if isinstance(token_id, int) and not isinstance(token_id, bool) and 0 <= token_id < len(tokens):
        return tokens.items[token_id]
    return None


def _tokenizer_summary(g: GGUFFile) -> dict:
    out: dict[str, Any] = {}
    for key, value in g.metadata.items():
        if not key.startswith("tokenizer.ggml.") or isinstance(value, GGUFArray):
            continue
        out[key.removeprefix("tokenizer.ggml.")] = _plain(value)
    for key, name in (("tokens", "vocab_size"), ("merges", "merges"), ("scores", "scores"),
                      ("token_type", "token_types")):
        value = g.metadata.get(f"tokenizer.ggml.{key}")
        if isinstance(value, GGUFArray):
            out[name] = len(value)
    for which in ("bos", "eos", "unknown", "padding"):
        text = _token_text(g, f"tokenizer.ggml.{which}_token_id")
        if text is not None:
            out[f"{which}_token"] = text
    out["chat_template"] = isinstance(g.metadata.get("tokenizer.chat_template"), str)
    return out


def summarize(g: GGUFFile, with_tensors: bool = False) -> dict:
    """JSON-ready summary: architecture, key metadata, tokenizer, tensor-type histogram, size, bits per weight."""
    arch = g.architecture or ""
    hparams = {}
    for suffix in KEY_HPARAMS:
        if f"{arch}.{suffix}" in g.metadata:
            hparams[suffix] = _plain(g.metadata[f"{arch}.{suffix}"])
    for key, value in g.metadata.items():
        if arch and key.startswith(arch + ".") and key.removeprefix(arch + ".") not in hparams:
            hparams[key.removeprefix(arch + ".")] = _plain(value)

    histogram: dict[str, dict[str, int]] = {}
    for t in g.tensors:
        row = histogram.setdefault(t.ggml_type.name, {"count": 0, "parameters": 0, "bytes": 0})
        row["count"] += 1
        row["parameters"] += t.n_elements
        row["bytes"] += t.n_bytes
    n_params = sum(t.n_elements for t in g.tensors)
    n_bytes = sum(t.n_bytes for t in g.tensors)
    general = {k.removeprefix("general."): _plain(v) for k, v in g.metadata.items()
               if k.startswith("general.") and k not in ("general.architecture", "general.file_type")}
    summary = {
        "file": str(g.path),
        "file_size": g.file_size,
        "gguf_version": g.version,
        "alignment": g.alignment,
        "architecture": g.architecture,
        "file_type": g.file_type_name,
        "general": general,
        "hyperparameters": hparams,
        "tokenizer": _tokenizer_summary(g),
        "metadata_keys": len(g.metadata),
        "tensor_count": len(g.tensors),
        "parameters": n_params,
        "tensor_bytes": n_bytes,
        "bits_per_weight": round(n_bytes * 8 / n_params, 4) if n_params else None,
        "tensor_types": dict(sorted(histogram.items(), key=lambda kv: -kv[1]["bytes"])),
    }
    if with_tensors:
        summary["tensors"] = [{"name": t.name, "shape": list(t.shape), "type": t.ggml_type.name,
                               "bytes": t.n_bytes, "offset": t.file_offset} for t in g.tensors]
    return summary
