"""Broken Hugging Face checkpoint directories for the corpus: the tiny llama checkpoint (models/tiny.py) with one
file replaced, and a byte-level safetensors builder for headers no library would write.

Unchanged large files (model.safetensors, tokenizer.json) are symlinked to the cached tiny checkpoint rather than
copied, so the ~40 directory cases cost a few KB each.

Safetensors layout (what `safetensors_bytes` writes):

    +---------------------+----------------------------+------------------------------+
    | u64 LE header length | header: JSON object, UTF-8 | data: tensors at data_offsets |
    +---------------------+----------------------------+------------------------------+
                          | {"name": {"dtype": "F32", "shape": [2, 2], "data_offsets": [begin, end]}, ...,
                          |  "__metadata__": {...}}   offsets count from the start of the data part
"""
from __future__ import annotations

import json
import os
import struct
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
TINY_DIR = ROOT / "models" / "tiny-cache" / "llama"
LARGE_FILES = ("model.safetensors", "tokenizer.json")


def tiny_dir() -> Path:
    """The tiny llama checkpoint (built once by models/tiny.py, cached under models/tiny-cache/llama)."""
    if not (TINY_DIR / ".complete").exists():
        sys.path.insert(0, str(ROOT / "models"))
        import tiny

        tiny.make_tiny("llama", TINY_DIR)
    return TINY_DIR


def tiny_config() -> dict:
    return json.loads((tiny_dir() / "config.json").read_text())


def checkpoint(dest: Path, replace: dict[str, bytes | str | dict | None] | None = None) -> Path:
    """dest/ = the tiny checkpoint, except each `replace` entry: bytes/str written as is, a dict as JSON,
    None = the file is left out."""
    replace = replace or {}
    src = tiny_dir()
    dest.mkdir(parents=True, exist_ok=True)
    for f in sorted(src.iterdir()):
        if f.name.startswith(".") or f.name in replace:
            continue
        if f.name in LARGE_FILES:
            os.symlink(f, dest / f.name)
        else:
            (dest / f.name).write_bytes(f.read_bytes())
    for name, content in replace.items():
        if content is None:
            continue
        if isinstance(content, dict):
            content = json.dumps(content)
        (dest / name).write_bytes(content.encode() if isinstance(content, str) else content)
    return dest


def safetensors_bytes(header: dict | list | bytes | str, data: bytes = b"", header_len: int | None = None) -> bytes:
    """A safetensors file from its parts; `header_len` overrides the true length prefix."""
    raw = header if isinstance(header, bytes) else (header if isinstance(header, str) else json.dumps(header)).encode()
    n = len(raw) if header_len is None else header_len
    return struct.pack("<Q", n) + raw + data


def f32_tensor(shape: list[int], begin: int = 0) -> dict:
    """A header entry for an F32 tensor of `shape` whose data starts at `begin`, with consistent offsets."""
    n = 4
    for s in shape:
        n *= s
    return {"dtype": "F32", "shape": shape, "data_offsets": [begin, begin + n]}
