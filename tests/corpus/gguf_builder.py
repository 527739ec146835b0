"""A byte-level GGUF builder for tests: writes valid small files and, field by field, invalid ones.

gguf-py's GGUFWriter is the right tool for real output (ggufkit/output/writer.py uses it), but it refuses to write the
broken counts, lengths, types and offsets the corpus needs; this builder writes whatever it is told. A test checks
that its unmodified output (`small_model()`) is accepted by gguf-py and by llama.cpp, so each corpus case differs
from a valid file by exactly the defect it names.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType

_SCALAR_CODES = {GGUFValueType.UINT8: "B", GGUFValueType.INT8: "b", GGUFValueType.UINT16: "H",
                 GGUFValueType.INT16: "h", GGUFValueType.UINT32: "I", GGUFValueType.INT32: "i",
                 GGUFValueType.FLOAT32: "f", GGUFValueType.BOOL: "?", GGUFValueType.UINT64: "Q",
                 GGUFValueType.INT64: "q", GGUFValueType.FLOAT64: "d"}


def gguf_string(text: str | bytes, length: int | None = None) -> bytes:
    """u64 length + bytes; `length` overrides the stored length (for absurd-length cases)."""
    raw = text.encode() if isinstance(text, str) else text
    return struct.pack("<Q", len(raw) if length is None else length) + raw


def encode_value(vtype: GGUFValueType, value) -> bytes:
    if vtype == GGUFValueType.STRING:
        return gguf_string(value)
    return struct.pack("<" + _SCALAR_CODES[vtype], value)


@dataclass
class KV:
    key: str | bytes
    vtype: int  # a GGUFValueType, or any u32 for unknown-type cases
    payload: bytes  # the encoded value

    @classmethod
    def scalar(cls, key, vtype: GGUFValueType, value) -> KV:
        return cls(key, int(vtype), encode_value(vtype, value))

    @classmethod
    def array(cls, key, item_type: GGUFValueType, items, length: int | None = None) -> KV:
        """u32 item type | u64 count | items; `length` overrides the stored count."""
        body = b"".join(encode_value(item_type, v) for v in items)
        count = len(items) if length is None else length
        return cls(key, int(GGUFValueType.ARRAY), struct.pack("<IQ", int(item_type), count) + body)


@dataclass
class Tensor:
    name: str | bytes
    dims: list[int]  # ggml order, ne[0] first
    ggml_type: int
    data: bytes
    offset: int | None = None  # None: the next aligned position, as a valid writer would put it


def tensor_nbytes(dims: list[int], ggml_type: GGMLQuantizationType) -> int:
    block, size = GGML_QUANT_SIZES[ggml_type]
    n = 1
    for d in dims:
        n *= d
    return n // block * size


@dataclass
class RawGGUF:
    kvs: list[KV] = field(default_factory=list)
    tensors: list[Tensor] = field(default_factory=list)
    magic: bytes = b"GGUF"
    version: int = 3
    alignment: int = 32  # used for padding; write a general.alignment KV to change what readers use
    n_kv: int | None = None  # overrides for the counts in the header
    n_tensors: int | None = None
    offsets: dict[str, int] = field(default_factory=dict)  # filled by to_bytes(): where each part starts

    def to_bytes(self) -> bytes:
        out = bytearray(self.magic)
        out += struct.pack("<I", self.version)
        self.offsets["n_tensors"] = len(out)
        out += struct.pack("<Q", len(self.tensors) if self.n_tensors is None else self.n_tensors)
        self.offsets["n_kv"] = len(out)
        out += struct.pack("<Q", len(self.kvs) if self.n_kv is None else self.n_kv)
        for kv in self.kvs:
            name = kv.key if isinstance(kv.key, str) else kv.key.decode(errors="replace")
            self.offsets[f"kv:{name}"] = len(out)
            out += gguf_string(kv.key) + struct.pack("<I", kv.vtype)
            self.offsets[f"value:{name}"] = len(out)
            out += kv.payload
        self.offsets["tensor_infos"] = len(out)
        data = bytearray()
        for t in self.tensors:
            name = t.name if isinstance(t.name, str) else t.name.decode(errors="replace")
            offset = len(data) if t.offset is None else t.offset
            self.offsets[f"tensor:{name}"] = len(out)
            out += gguf_string(t.name) + struct.pack("<I", len(t.dims))
            out += b"".join(struct.pack("<Q", d) for d in t.dims)
            out += struct.pack("<IQ", t.ggml_type, offset)
            data += t.data
            data += bytes(-len(data) % self.alignment)
        out += bytes(-len(out) % self.alignment)
        self.offsets["data"] = len(out)
        return bytes(out + data)


def _tensor(rng: np.random.Generator, name: str, dims: list[int], ggml_type: GGMLQuantizationType) -> Tensor:
    if ggml_type == GGMLQuantizationType.F32:
        data = rng.standard_normal(int(np.prod(dims))).astype("<f4").tobytes()
    else:  # block bytes: any pattern is a well-formed block layout
        data = rng.integers(0, 256, tensor_nbytes(dims, ggml_type), dtype=np.uint8).tobytes()
    return Tensor(name, dims, int(ggml_type), data)


def small_model(seed: int = 0) -> RawGGUF:
    """A valid ~3 KB llama-style GGUF: metadata, a 6-token BPE vocabulary, four tensors of four types."""
    rng = np.random.default_rng(seed)
    tokens = ["<unk>", "<s>", "</s>", "a", "b", "ab"]
    T, V = GGMLQuantizationType, GGUFValueType
    kvs = [
        KV.scalar("general.architecture", V.STRING, "llama"),
        KV.scalar("general.name", V.STRING, "corpus-tiny"),
        KV.scalar("general.file_type", V.UINT32, 7),  # MOSTLY_Q8_0
        KV.scalar("llama.context_length", V.UINT32, 128),
        KV.scalar("llama.embedding_length", V.UINT32, 32),
        KV.scalar("llama.block_count", V.UINT32, 1),
        KV.scalar("llama.attention.head_count", V.UINT32, 4),
        KV.scalar("llama.rope.freq_base", V.FLOAT32, 10000.0),
        KV.scalar("tokenizer.ggml.model", V.STRING, "gpt2"),
        KV.array("tokenizer.ggml.tokens", V.STRING, tokens),
        KV.array("tokenizer.ggml.token_type", V.INT32, [3, 3, 3, 1, 1, 1]),
        KV.array("tokenizer.ggml.merges", V.STRING, ["a b"]),
        KV.scalar("tokenizer.ggml.bos_token_id", V.UINT32, 1),
        KV.scalar("tokenizer.ggml.eos_token_id", V.UINT32, 2),
        KV.scalar("tokenizer.ggml.add_bos_token", V.BOOL, True),
        KV.scalar("tokenizer.chat_template", V.STRING, "{% for m in messages %}{{ m.content }}{% endfor %}"),
        KV.scalar("general.quantization_version", V.UINT32, 2),
    ]
    tensors = [
        _tensor(rng, "token_embd.weight", [32, len(tokens)], T.Q8_0),
        _tensor(rng, "output_norm.weight", [32], T.F32),
        _tensor(rng, "blk.0.attn_q.weight", [32, 32], T.Q4_0),
        _tensor(rng, "blk.0.ffn_up.weight", [256, 2], T.Q4_K),
    ]
    return RawGGUF(kvs, tensors)
