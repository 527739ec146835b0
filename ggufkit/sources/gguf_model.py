"""A GGUF model as a tensor source: one file, or a split set in gguf-split's layout read as one model.

    model = open_gguf_model("model-00001-of-00003.gguf")   # or "model.gguf"
    model.metadata["general.architecture"]                  # the first part's key-values
    for t in model.tensors:                                 # every part's tensors, in file order
        with model.reader() as r:
            raw = r.rows(t, 0, t.n_rows)                    # (rows, row_bytes) u8, read with pread (no mmap)

Split sets (llama.cpp's llama_split_path naming, `<prefix>-%05d-of-%05d.gguf`):
    part 1: every key-value of the model + split.no (u16) = 0, split.count (u16) = N, split.tensors.count (i32)
    part k: split.no = k-1, split.count, split.tensors.count; its own tensor infos and data
Each part is a complete GGUF file whose tensor offsets count from its own data section. A set is accepted only
if every part exists, parses, and says it is part k of the same N, and the parts' tensors add up to
split.tensors.count with no name twice; anything else is one InputError naming the part and the problem.

Tensor data is read with pread into a reused buffer, not memory-mapped: mapped pages of a file count in the
process's resident set, and a quantizer reading a 2 GB input would "use" 2 GB that way.
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from ggufkit.errors import InputError
from ggufkit.sources.gguf import GGUFFile, TensorInfo, validate_gguf

SPLIT_NO = "split.no"
SPLIT_COUNT = "split.count"
SPLIT_TENSORS_COUNT = "split.tensors.count"
SPLIT_KEYS = (SPLIT_NO, SPLIT_COUNT, SPLIT_TENSORS_COUNT)

_SPLIT_NAME = re.compile(r"^(?P<prefix>.+)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$")


def split_path(prefix: str | os.PathLike, index: int, count: int) -> Path:
    """Part `index` (0-based) of `count`: "<prefix>-00001-of-00003.gguf", llama.cpp's naming."""
    return Path(f"{os.fspath(prefix)}-{index + 1:05d}-of-{count:05d}.gguf")


def split_prefix(path: Path, index: int, count: int) -> str | None:
    """The prefix of a part's file name if it follows the naming for (index, count), else None."""
    suffix = f"-{index + 1:05d}-of-{count:05d}.gguf"
    text = os.fspath(path)
    if len(text) > len(suffix) and text.endswith(suffix):
        return text[: -len(suffix)]
    return None


@dataclass(frozen=True)
class ModelTensor:
    """One tensor of the model: where its bytes are (part, absolute file offset) and what they hold."""
    name: str
    ne: tuple[int, ...]  # ggml order: ne[0] is the row length
    ggml_type: GGMLQuantizationType
    part: int
    file_offset: int
    n_bytes: int

    @property
    def shape(self) -> tuple[int, ...]:
        """numpy order (rows last): (n_expert, n_rows, n_cols) for an expert tensor."""
        return tuple(reversed(self.ne)) if self.ne else (1,)

    @property
    def row_len(self) -> int:
        return self.ne[0] if self.ne else 1

    @property
    def n_rows(self) -> int:
        return math.prod(self.ne[1:]) if len(self.ne) > 1 else 1

    @property
    def row_bytes(self) -> int:
        block, size = GGML_QUANT_SIZES[self.ggml_type]
        return self.row_len // block * size


@dataclass
class GGUFModel:
    """A validated single GGUF file or split set."""
    path: Path  # the (first) file
    parts: list[GGUFFile]
    tensors: list[ModelTensor] = field(default_factory=list)

    @property
    def metadata(self) -> dict[str, Any]:
        return self.parts[0].metadata

    @property
    def is_split(self) -> bool:
        return SPLIT_COUNT in self.metadata and int(self.metadata[SPLIT_COUNT]) > 1

    @property
    def architecture(self) -> str | None:
        return self.parts[0].architecture

    def kv_entries(self) -> list[tuple[str, bytes]]:
        """The first part's key-values as raw GGUF entries (key string, type, value), in file order."""
        g = self.parts[0]
        if g.byte_order != "<":
            raise InputError("big-endian GGUF files are not supported as input", g.path)
        with open(g.path, "rb") as f:
            end = max((e for _, e in g.kv_spans.values()), default=24)
            head = f.read(end)
        return [(key, head[start:stop]) for key, (start, stop) in g.kv_spans.items()]

    def as_gguf_file(self) -> GGUFFile:
        """One GGUFFile view of the whole set, for summaries: the first part's metadata, every part's tensors,
        the size of all parts together."""
        if len(self.parts) == 1:
            return self.parts[0]
        infos = [TensorInfo(t.name, t.ne, t.ggml_type, 0, t.file_offset, math.prod(t.ne), t.n_bytes)
                 for t in self.tensors]
        return replace(self.parts[0], file_size=sum(p.file_size for p in self.parts), tensors=infos)

    def reader(self) -> TensorReader:
        return TensorReader([p.path for p in self.parts])


class TensorReader:
    """Reads row ranges of a model's tensors with pread; one open descriptor per part."""

    def __init__(self, paths: list[Path]):
        self.paths = paths
        self._fds: list[int | None] = [None] * len(paths)

    def _fd(self, part: int) -> int:
        fd = self._fds[part]
        if fd is None:
            try:
                fd = os.open(self.paths[part], os.O_RDONLY)
            except OSError as e:
                raise InputError(f"cannot read: {e.strerror}", self.paths[part]) from None
            self._fds[part] = fd
        return fd

    def read_into(self, t: ModelTensor, offset: int, out: memoryview) -> None:
        """Fill `out` with the tensor's bytes from `offset` (relative to the tensor's first byte)."""
        fd, pos, view = self._fd(t.part), t.file_offset + offset, out.cast("B")
        done = 0
        while done < len(view):
            n = os.preadv(fd, [view[done:]], pos + done)
            if n <= 0:
                raise InputError(f"tensor {t.name}: file ended while reading its data", self.paths[t.part])
            done += n

    def rows(self, t: ModelTensor, start: int, stop: int, out: np.ndarray | None = None) -> np.ndarray:
        """Rows [start, stop) of t as raw bytes: (stop - start, row_bytes) u8 (into `out` if given)."""
        shape = (stop - start, t.row_bytes)
        if out is None or out.size < shape[0] * shape[1]:
            out = np.empty(shape, dtype=np.uint8)
        else:
            out = out.reshape(-1)[: shape[0] * shape[1]].reshape(shape)
        if out.size:
            self.read_into(t, start * t.row_bytes, memoryview(out))
        return out

    def close(self) -> None:
        for i, fd in enumerate(self._fds):
            if fd is not None:
                os.close(fd)
                self._fds[i] = None

    def __enter__(self) -> TensorReader:  # noqa: PYI034 (typing.Self needs Python 3.11)
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _tensors(g: GGUFFile, part: int) -> list[ModelTensor]:
    return [ModelTensor(t.name, tuple(int(d) for d in t.shape), t.ggml_type, part, t.file_offset, t.n_bytes)
            for t in g.tensors]


def _u16(g: GGUFFile, key: str) -> int | None:
    value = g.metadata.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputError(f"{key} is not an integer", g.path)
    return value


def open_gguf_model(path: str | os.PathLike) -> GGUFModel:
    """Validate a GGUF file, or the whole split set whose first part it is; InputError naming any problem."""
    path = Path(path)
    first = validate_gguf(path)
    count = _u16(first, SPLIT_COUNT)
    if count is None or count <= 1:
        return GGUFModel(path, [first], _tensors(first, 0))
    no = _u16(first, SPLIT_NO)
    if no is None:
        raise InputError(f"has {SPLIT_COUNT} = {count} but no {SPLIT_NO}", path)
    if no != 0:
        hint = ""
        prefix = split_prefix(path, no, count)
        if prefix is not None:
            hint = f"; give the first part, {split_path(prefix, 0, count).name}"
        raise InputError(f"is part {no + 1} of {count} of a split model{hint}", path)
    prefix = split_prefix(path, 0, count)
    if prefix is None:
        raise InputError(f"is part 1 of {count} of a split model, but its name does not end in "
                         f"-00001-of-{count:05d}.gguf, so the other parts cannot be found", path)
    parts, tensors = [first], _tensors(first, 0)
    arch = first.architecture
    for i in range(1, count):
        part_path = split_path(prefix, i, count)
        if not part_path.is_file():
            raise InputError(f"missing part {i + 1} of {count} of the split model {path.name}", part_path)
        g = validate_gguf(part_path)
        if _u16(g, SPLIT_NO) != i:
            raise InputError(f"{SPLIT_NO} is {g.metadata.get(SPLIT_NO)}, expected {i}: not part {i + 1} of "
                             f"{path.name}'s set", part_path)
        if _u16(g, SPLIT_COUNT) != count:
            raise InputError(f"{SPLIT_COUNT} is {g.metadata.get(SPLIT_COUNT)}, the first part says {count}: "
                             "the parts are from different sets", part_path)
        if g.architecture is not None and arch is not None and g.architecture != arch:
            raise InputError(f"architecture {g.architecture!r}, the first part has {arch!r}: the parts are from "
                             "different models", part_path)
        parts.append(g)
        tensors += _tensors(g, i)
    seen: dict[str, int] = {}
    for t in tensors:
        if t.name in seen:
            raise InputError(f"tensor {t.name!r} is in part {seen[t.name] + 1} and part {t.part + 1}",
                             split_path(prefix, t.part, count))
        seen[t.name] = t.part
    expected = first.metadata.get(SPLIT_TENSORS_COUNT)
    if isinstance(expected, int) and expected != len(tensors):
        raise InputError(f"the split set has {len(tensors)} tensors in {count} parts, {SPLIT_TENSORS_COUNT} "
                         f"says {expected}", path)
    return GGUFModel(path, parts, tensors)
