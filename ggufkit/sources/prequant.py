"""Checkpoints already quantized by another tool (bitsandbytes, FP8, GPTQ, ...): the shared part.

A quantized checkpoint stores each quantized linear weight as several safetensors entries (packed integers,
scales, zero points, code tables, a JSON state). `wrap(tensors, config, path)` groups them into one
`QuantRef` per weight, named and shaped like the float weight it stands for, so the architecture code sees an
ordinary checkpoint. A QuantRef reads row blocks as f32, decoding only the packed bytes of those rows:

    ref = ckpt.tensors["model.layers.0.mlp.down_proj.weight"]   # a QuantRef
    ref.source                                                  # "bnb nf4 g64 dq" (what the source was)
    ref.read_rows(0, 64)                                        # (64, cols) f32, the tool's own dequantization
    ref.lossless                                                # GGUF type whose blocks hold the grid exactly
    ref.read_blocks(0, 64, ref.lossless)                        # (64, row_bytes) u8, no rounding at all

One module per format (bnb.py, fp8.py, gptq.py, awq.py) provides `group(tensors, qcfg, config_path) -> {name: ref}`; the
entries it consumed are removed from the checkpoint. Unsupported methods are a one-line error naming them.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from ggufkit.errors import InputError

# safetensors dtype -> numpy dtype of its raw elements (floats narrower than f16 stay raw bytes)
RAW_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<u2", "I64": "<i8", "I32": "<i4", "I16": "<i2",
              "I8": "i1", "U64": "<u8", "U32": "<u4", "U16": "<u2", "U8": "u1", "BOOL": "u1",
              "F8_E4M3": "u1", "F8_E5M2": "u1", "F8_E8M0": "u1"}


def pread(ref, start: int, stop: int) -> bytearray:
    """Bytes [start, stop) of a TensorRef's data."""
    want = stop - start
    buf = bytearray(want)
    view = memoryview(buf)
    fd = os.open(ref.file, os.O_RDONLY)
    try:
        done = 0
        while done < want:
            n = os.preadv(fd, [view[done:]], ref.offset + start + done)
            if n <= 0:
                raise InputError(f"file is truncated: tensor {ref.name} ends at byte {ref.offset + ref.nbytes}",
                                 ref.file)
            done += n
    except OSError as e:
        raise InputError(f"cannot read tensor {ref.name}: {e.strerror or e}", ref.file) from None
    finally:
        os.close(fd)
    return buf


def read_elements(ref, start: int, stop: int) -> np.ndarray:
    """Flat elements [start, stop) of a TensorRef in its own dtype (bf16 as u16 bits, fp8 as u8 bytes)."""
    dt = np.dtype(RAW_DTYPES[ref.dtype])
    return np.frombuffer(pread(ref, start * dt.itemsize, stop * dt.itemsize), dtype=dt)


def read_all(ref) -> np.ndarray:
    return read_elements(ref, 0, math.prod(ref.shape)).reshape(ref.shape)


def read_window(ref, row0: int, row1: int, col0: int, col1: int) -> np.ndarray:
    """A 2-D TensorRef's rows [row0, row1) x columns [col0, col1) in its own dtype: one read per row when the
    window is narrower than the tensor (transposed layouts such as GPTQ's qweight are read this way)."""
    cols = math.prod(ref.shape[1:])
    if col0 == 0 and col1 == cols:
        return read_elements(ref, row0 * cols, row1 * cols).reshape(row1 - row0, cols)
    dt = np.dtype(RAW_DTYPES[ref.dtype])
    out = np.empty((row1 - row0, col1 - col0), dtype=dt)
    for i in range(row0, row1):
        out[i - row0] = np.frombuffer(pread(ref, (i * cols + col0) * dt.itemsize, (i * cols + col1) * dt.itemsize),
                                      dtype=dt)
    return out


def to_f32(raw: np.ndarray, dtype: str) -> np.ndarray:
    """Raw elements of a float dtype (as read_elements returns them) -> f32."""
    if dtype == "BF16":
        return (raw.astype(np.uint32) << 16).view(np.float32)
    if dtype == "F8_E4M3":
        return E4M3_TABLE[raw]
    if dtype == "F8_E5M2":
        return E5M2_TABLE[raw]
    return raw.astype(np.float32)


def round_to(x: np.ndarray, dtype: str) -> np.ndarray:
    """f32 -> the nearest value of `dtype` ("float16", "bfloat16", "float32"; round to nearest even, as torch's
    .to()), widened back to f32."""
    if dtype in ("float32", "F32", None):
        return x
    if dtype in ("float16", "F16"):
        return x.astype(np.float16).astype(np.float32)
    if dtype in ("bfloat16", "BF16"):
        bits = x.view(np.uint32)
        rounded = (bits + (0x7FFF + ((bits >> 16) & 1))) & 0xFFFF0000
        return np.where(np.isnan(x), x, rounded.astype(np.uint32).view(np.float32))
    raise ValueError(dtype)


def _fp8_table(exp_bits: int, man_bits: int, bias: int, nan_all_ones: bool) -> np.ndarray:
    """The 256 values of an 8-bit float format (sign, exp_bits, man_bits), as f32."""
    codes = np.arange(256)
    sign = np.where(codes & 0x80, -1.0, 1.0)
    exp = (codes >> man_bits) & ((1 << exp_bits) - 1)
    man = codes & ((1 << man_bits) - 1)
    normal = (1 + man / (1 << man_bits)) * 2.0 ** (exp - bias)
    sub = (man / (1 << man_bits)) * 2.0 ** (1 - bias)
    vals = sign * np.where(exp == 0, sub, normal)
    if nan_all_ones:  # e4m3fn: only S.1111.111 is NaN, no infinities
        vals[(codes & 0x7F) == 0x7F] = np.nan
    else:  # e5m2: IEEE-like, exponent all ones is Inf/NaN
        top = exp == (1 << exp_bits) - 1
        vals[top] = np.where(man[top] == 0, sign[top] * np.inf, np.nan)
    return vals.astype(np.float32)


E4M3_TABLE = _fp8_table(4, 3, 7, True)    # (256,) f32: float8_e4m3fn
E5M2_TABLE = _fp8_table(5, 2, 15, False)  # (256,) f32: float8_e5m2


class QuantRef:
    """A quantized weight standing in for the float TensorRef of the same name (see the module docstring).
    Subclasses set `parts` (the TensorRefs it reads) and implement decode(start, stop) -> (n, cols) f32."""
    dtype = "F32"  # what read_rows yields
    lossless = None  # a gguf.GGMLQuantizationType whose blocks hold this grid exactly, or None
    lossless_note = ""

    def __init__(self, name: str, shape: tuple[int, ...], parts: list, source: str):
        self.name = name
        self.shape = tuple(int(d) for d in shape)
        self.parts = parts
        self.file: Path = parts[0].file
        self.nbytes = sum(p.nbytes for p in parts)
        self.source = source

    @property
    def rows(self) -> int:
        return self.shape[0] if len(self.shape) > 1 else 1

    @property
    def cols(self) -> int:
        return math.prod(self.shape[1:]) if len(self.shape) > 1 else self.shape[0]

    def check_dtype(self) -> None:
        pass

    def fail(self, message: str):
        raise InputError(f"tensor {self.name}: {message}", self.file)

    def read_rows(self, start: int, stop: int) -> np.ndarray:
        return np.ascontiguousarray(self.decode(start, stop), dtype=np.float32)

    def read(self) -> np.ndarray:
        return self.read_rows(0, self.rows).reshape(self.shape)

    def decode(self, start: int, stop: int) -> np.ndarray:
        raise NotImplementedError

    def read_blocks(self, start: int, stop: int, qtype) -> np.ndarray:
        raise NotImplementedError


def take(tensors: dict, name: str, owner: str, config_path: Path | None = None, required: bool = True):
    """Remove and return tensors[name] (a part of `owner`); a missing required part is a one-line error."""
    ref = tensors.pop(name, None)
    if ref is None and required:
        some = next(iter(tensors.values()), None)
        raise InputError(f"quantized tensor {owner} has no {name}", some.file if some else config_path)
    return ref


def method_of(qcfg: dict) -> str:
    return str(qcfg.get("quant_method", "unknown")).lower()


def _module(method: str):
    from ggufkit.sources import awq, bnb, compressed_tensors, fp8, gptq, mxfp4

    return {"bitsandbytes": bnb, "fp8": fp8, "compressed-tensors": compressed_tensors, "gptq": gptq,
            "awq": awq, "mxfp4": mxfp4}.get(method)


SUPPORTED = "bitsandbytes, fp8, compressed-tensors, gptq, awq, mxfp4"


def unsupported(qcfg) -> str | None:
    """Why a quantization_config cannot be read (a short phrase), or None when it can."""
    if not isinstance(qcfg, dict):
        return "quantization_config is not an object"
    method = method_of(qcfg)
    mod = _module(method)
    if mod is None:
        return f"pre-quantized {method} checkpoints are not supported (supported: {SUPPORTED})"
    return mod.unsupported(qcfg)


def wrap(tensors: dict, config: dict, config_path: Path) -> dict:
    """Replace the parts of every quantized weight in `tensors` (name -> TensorRef, in file order) by one QuantRef.
    A checkpoint without quantization_config is returned as is."""
    qcfg = config.get("quantization_config")
    if not qcfg:
        return tensors
    reason = unsupported(qcfg)
    if reason:
        raise InputError(reason, config_path)
    rest = dict(tensors)
    grouped = _module(method_of(qcfg)).group(rest, qcfg, config_path)
    out = {}
    for name in tensors:  # keep file order: a QuantRef takes the place of its first part
        if name in grouped:
            out[name] = grouped.pop(name)
        elif name in rest:
            out[name] = rest[name]
    out.update(grouped)
    return out


def describe(ref) -> str:
    """What a tensor was in the source: "bnb nf4 g64 dq", or its float dtype ("BF16")."""
    return getattr(ref, "source", None) or ref.dtype


def summarize_checkpoint(ckpt, with_tensors: bool = False) -> dict:
    """What a (pre-quantized) HF checkpoint holds, per source format: {"quantization": method or None,
    "groups": {source: {count, parameters, bytes, lossless}}, "tensors": [...] if with_tensors}. `lossless` is the
    GGUF type `--scheme source` keeps the grid in (a type name, "mixed" when a group's tensors differ, or None)."""
    qcfg = ckpt.config.get("quantization_config") or None
    groups: dict[str, dict] = {}
    tensors = []
    for name, ref in ckpt.tensors.items():
        source = describe(ref)
        lossless = getattr(ref, "lossless", None)
        lossless = None if lossless is None else lossless.name
        n = math.prod(ref.shape)
        g = groups.setdefault(source, {"count": 0, "parameters": 0, "bytes": 0, "lossless": lossless})
        g["count"] += 1
        g["parameters"] += n
        g["bytes"] += ref.nbytes
        if g["lossless"] != lossless:
            g["lossless"] = "mixed"
        if with_tensors:
            tensors.append({"name": name, "shape": list(ref.shape), "source": source, "bytes": ref.nbytes,
                            "lossless": lossless})
    out = {"dir": str(ckpt.dir), "model_type": ckpt.config.get("model_type"),
           "quantization": method_of(qcfg) if isinstance(qcfg, dict) else None,
           "tensor_count": len(ckpt.tensors), "groups": groups}
    if with_tensors:
        out["tensors"] = tensors
    return out
