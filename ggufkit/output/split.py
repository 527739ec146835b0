"""GGUF output from raw key-value entries and streamed tensor data: one file, or a split set in gguf-split's
layout. The writer knows bytes, not models: key-values come encoded (copied from an input file, or from
`encode_kv`), tensors as (name, ne, type) slots whose data arrives in order.

One file (GGUF v3, little-endian):
    "GGUF" u32 3 | u64 n_tensors | u64 n_kv | kv entries | tensor infos | pad to 32 | data, each tensor padded to 32
    tensor info = str name | u32 n_dims (ggml_n_dims: trailing 1s dropped) | n_dims x u64 ne | u32 type | u64 offset

A split set (llama.cpp's naming "<prefix>-00001-of-00003.gguf"): every part is such a file with its own
tensors and offsets. Part 1 carries all key-values, the others none; every part then gets split.no (u16),
split.count (u16) and split.tensors.count (i32), in the order the caller's tool writes them (gguf-split:
no, tensors.count, count; llama-quantize --keep-split: no, count, tensors.count).

Which tensors go to which part follows gguf-split: --split-max-tensors N starts a new part every N tensors;
--split-max-size S starts one before the tensor that would take the part's padded tensor bytes above S (sizes
in decimal units, 2G = 2 * 1000**3); a part that would be left without tensors is an error.

All parts are written to temp files next to their destination and renamed into place only when every part is
complete; on any error nothing appears at the destination.
"""
from __future__ import annotations

import os
import re
import secrets
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType

from ggufkit.errors import OutputError
from ggufkit.output.writer import _output_error

ALIGNMENT = 32
GGUF_VERSION = 3
SPLIT_NO, SPLIT_COUNT, SPLIT_TENSORS_COUNT = "split.no", "split.count", "split.tensors.count"
GGUF_SPLIT_ORDER = (SPLIT_NO, SPLIT_TENSORS_COUNT, SPLIT_COUNT)   # gguf-split
KEEP_SPLIT_ORDER = (SPLIT_NO, SPLIT_COUNT, SPLIT_TENSORS_COUNT)   # llama_model_quantize with keep_split

_SCALAR_CODES = {GGUFValueType.UINT8: "B", GGUFValueType.INT8: "b", GGUFValueType.UINT16: "H",
                 GGUFValueType.INT16: "h", GGUFValueType.UINT32: "I", GGUFValueType.INT32: "i",
                 GGUFValueType.FLOAT32: "f", GGUFValueType.UINT64: "Q", GGUFValueType.INT64: "q",
                 GGUFValueType.FLOAT64: "d", GGUFValueType.BOOL: "?"}


def _str(text: str | bytes) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return struct.pack("<Q", len(raw)) + raw


def encode_kv(key: str, vtype: GGUFValueType, value) -> tuple[str, bytes]:
    """One scalar or string key-value as its raw GGUF entry."""
    if vtype == GGUFValueType.STRING:
        body = _str(value)
    else:
        body = struct.pack("<" + _SCALAR_CODES[vtype], value)
    return key, _str(key) + struct.pack("<I", int(vtype)) + body


def parse_size(text: str) -> int:
    """gguf-split's --split-max-size: N followed by M (10**6 bytes) or G (10**9 bytes)."""
    m = re.fullmatch(r"\s*(\d+)\s*([MG])\s*", text)
    if not m or int(m.group(1)) <= 0:
        raise ValueError(f"split size {text!r}: expected a positive number followed by M or G, e.g. 2G")
    return int(m.group(1)) * (10**6 if m.group(2) == "M" else 10**9)


@dataclass(frozen=True)
class TensorSlot:
    name: str
    ne: tuple[int, ...]  # ggml order
    ggml_type: GGMLQuantizationType

    @property
    def n_bytes(self) -> int:
        block, size = GGML_QUANT_SIZES[self.ggml_type]
        n = 1
        for d in self.ne:
            n *= d
        return n // block * size


def _pad(n: int) -> int:
    return -(-n // ALIGNMENT) * ALIGNMENT


def assign_parts(slots: Sequence[TensorSlot], max_size: int | None = None,
                 max_tensors: int | None = None) -> list[int]:
    """Part index of every tensor, by gguf-split's rules (see the module doc)."""
    if max_size is not None and max_tensors is not None:
        raise ValueError("give either a maximum split size or a maximum tensor count, not both")
    parts, part, used = [], 0, 0
    for i, s in enumerate(slots):
        size = _pad(s.n_bytes)
        if max_tensors is not None:
            if i > 0 and i % max_tensors == 0:
                part += 1
        elif max_size is not None and used + size > max_size:
            if i == 0:
                raise ValueError(f"tensor {s.name} ({size} bytes) alone is larger than the split size "
                                 f"{max_size}: a part would have no tensors")
            part, used = part + 1, 0
        used += size
        parts.append(part)
    return parts


def ggml_n_dims(ne: Sequence[int]) -> int:
    n = len(ne)
    while n > 1 and ne[n - 1] == 1:
        n -= 1
    return max(n, 1)


def part_paths(out: Path, n_parts: int) -> list[Path]:
    """Destination of each part: OUT itself for one unsplit file, else "<OUT without .gguf>-0000k-of-0000n.gguf"."""
    prefix = str(out).removesuffix(".gguf")
    return [Path(f"{prefix}-{k + 1:05d}-of-{n_parts:05d}.gguf") for k in range(n_parts)]


class GGUFSetWriter:
    """Streams tensors into one GGUF file or a split set.

        w = GGUFSetWriter(out, kv_entries, slots, parts=assign_parts(slots, max_size=2 * 10**9))
        w.open()                                           # temp files (fails fast on an unwritable place)
        for slot in slots: w.begin_tensor(slot.name); w.write(bytes...); w.end_tensor()
        w.commit()                                         # fsync + rename every part
    parts=None writes one file at OUT with no split keys.
    """

    def __init__(self, out: Path, kv: Sequence[tuple[str, bytes]], slots: Sequence[TensorSlot],
                 parts: Sequence[int] | None = None, split_order: Sequence[str] = GGUF_SPLIT_ORDER):
        self.out = Path(out)
        self.slots = list(slots)
        self.split = parts is not None
        self.parts = list(parts) if parts is not None else [0] * len(self.slots)
        n_parts = (max(self.parts) + 1) if self.parts else 1
        if sorted(self.parts) != self.parts:
            raise ValueError("tensors must be given in part order")
        self.paths = part_paths(self.out, n_parts) if self.split else [self.out]
        self.headers = [self._header(k, n_parts, kv, split_order) for k in range(n_parts)]
        self._tmps: list[Path] = []
        self._f = None
        self._part = -1
        self._next = 0
        self._written = 0

    def _header(self, k: int, n_parts: int, kv, split_order) -> bytes:
        entries = [e for key, e in kv if key not in (SPLIT_NO, SPLIT_COUNT, SPLIT_TENSORS_COUNT)] if k == 0 else []
        # llama_model_quantize with keep_split writes the split keys only when there is more than one part
        if self.split and not (n_parts == 1 and tuple(split_order) == KEEP_SPLIT_ORDER):
            values = {SPLIT_NO: (GGUFValueType.UINT16, k), SPLIT_COUNT: (GGUFValueType.UINT16, n_parts),
                      SPLIT_TENSORS_COUNT: (GGUFValueType.INT32, len(self.slots))}
            entries += [encode_kv(key, *values[key])[1] for key in split_order]
        mine = [s for s, p in zip(self.slots, self.parts) if p == k]
        infos, offset = [], 0
        for s in mine:
            n_dims = ggml_n_dims(s.ne)
            infos.append(_str(s.name) + struct.pack(f"<I{n_dims}QIQ", n_dims, *s.ne[:n_dims], int(s.ggml_type),
                                                    offset))
            offset += _pad(s.n_bytes)
        head = b"GGUF" + struct.pack("<IQQ", GGUF_VERSION, len(mine), len(entries)) + b"".join(entries) \
            + b"".join(infos)
        return head + b"\0" * (_pad(len(head)) - len(head))

    @property
    def n_parts(self) -> int:
        return len(self.paths)

    def open(self) -> None:
        """Create every part's temp file next to its destination."""
        if self._tmps:
            return
        for path in self.paths:
            parent = path.parent
            if not parent.is_dir():
                self.abort()
                raise OutputError("output directory does not exist", parent)
            tmp = parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
            try:
                os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
            except OSError as e:
                self.abort()
                raise _output_error(parent, e) from None
            self._tmps.append(tmp)

    def _start_part(self, k: int) -> None:
        self._close_part()
        self._part = k
        try:
            self._f = open(self._tmps[k], "wb")  # noqa: SIM115 (stays open across tensors; closed in _close_part)
            self._f.write(self.headers[k])
        except OSError as e:
            raise _output_error(self.paths[k], e) from None

    def _close_part(self) -> None:
        if self._f is None:
            return
        try:
            self._f.flush()
            os.fsync(self._f.fileno())
            self._f.close()
        except OSError as e:
            raise _output_error(self.paths[self._part], e) from None
        self._f = None

    def begin_tensor(self, name: str) -> None:
        self.open()
        slot = self.slots[self._next]
        if name != slot.name:
            raise RuntimeError(f"tensor {name} written out of order (expected {slot.name})")
        if self.parts[self._next] != self._part:
            self._start_part(self.parts[self._next])
        self._written = 0

    def write(self, data) -> None:
        buf = memoryview(np.ascontiguousarray(data)).cast("B")
        try:
            self._f.write(buf)
        except OSError as e:
            raise _output_error(self.paths[self._part], e) from None
        self._written += len(buf)

    def end_tensor(self) -> None:
        slot = self.slots[self._next]
        if self._written != slot.n_bytes:
            raise RuntimeError(f"tensor {slot.name}: wrote {self._written} bytes, declared {slot.n_bytes}")
        try:
            self._f.write(b"\0" * (_pad(slot.n_bytes) - slot.n_bytes))
        except OSError as e:
            raise _output_error(self.paths[self._part], e) from None
        self._next += 1

    def commit(self) -> list[Path]:
        """Every tensor written: fsync and rename every part into place; the part paths."""
        if self._next != len(self.slots):
            raise RuntimeError(f"only {self._next} of {len(self.slots)} tensors written")
        self.open()
        for k in range(self._part + 1, self.n_parts):  # parts without tensors (none, or a model with none)
            self._start_part(k)
        self._close_part()
        try:
            for tmp, path in zip(self._tmps, self.paths):
                os.replace(tmp, path)
            self._tmps = []
            for parent in {p.parent for p in self.paths}:
                fd = os.open(parent, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        except OSError as e:
            raise _output_error(self.out, e) from None
        return list(self.paths)

    def abort(self) -> None:
        if self._f is not None:
            try:
                self._f.close()
            except OSError:
                pass
            self._f = None
        for tmp in self._tmps:
            try:
                tmp.unlink()
            except OSError:
                pass
        self._tmps = []

    def __enter__(self) -> GGUFSetWriter:  # noqa: PYI034 (typing.Self needs Python 3.11)
        return self

    def __exit__(self, *exc) -> None:
        self.abort()


# ---- the streaming interface of output.writer.StreamingGGUF, for a split set

def kv_entries(w) -> list[tuple[str, bytes]]:
    """A gguf-py GGUFWriter's key-values (after every add_*) as raw entries, encoded by gguf-py itself."""
    return [(key, w._pack_val(key, GGUFValueType.STRING, add_vtype=False)
             + w._pack_val(v.value, v.type, add_vtype=True, sub_type=v.sub_type)) for key, v in w.kv_data[0].items()]


class SplitStreamingGGUF:
    """StreamingGGUF's interface (kv, add_tensor_info, open, start, begin_tensor, write, end_tensor, commit)
    writing a split set by gguf-split's rules (max_size bytes of tensor data or max_tensors tensors per part)."""

    def __init__(self, out: Path, arch: str, max_size: int | None = None, max_tensors: int | None = None):
        import gguf

        self.out = Path(out)
        self.kv = gguf.GGUFWriter(path=None, arch=arch)
        self.max_size, self.max_tensors = max_size, max_tensors
        self._slots: list[TensorSlot] = []
        self._w: GGUFSetWriter | None = None
        self.paths: list[Path] = []

    def add_tensor_info(self, name: str, shape: tuple[int, ...], qtype: GGMLQuantizationType) -> int:
        slot = TensorSlot(name, tuple(int(d) for d in reversed(shape)), qtype)
        self._slots.append(slot)
        return slot.n_bytes

    def open(self) -> None:
        parent = self.out.parent
        if not parent.is_dir():
            raise OutputError("output directory does not exist", parent)

    def start(self) -> None:
        parts = assign_parts(self._slots, self.max_size, self.max_tensors)
        self._w = GGUFSetWriter(self.out, kv_entries(self.kv), self._slots, parts)
        self._w.open()

    def begin_tensor(self, name: str) -> None:
        self._w.begin_tensor(name)

    def write(self, data) -> None:
        self._w.write(data)

    def end_tensor(self) -> None:
        self._w.end_tensor()

    def commit(self) -> list[Path]:
        self.paths = self._w.commit()
        return self.paths

    def abort(self) -> None:
        if self._w is not None:
            self._w.abort()

    def __enter__(self) -> SplitStreamingGGUF:  # noqa: PYI034 (typing.Self needs Python 3.11)
        return self

    def __exit__(self, *exc) -> None:
        self.abort()
