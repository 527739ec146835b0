"""Integer grids with per-group scales and zero points (GPTQ, AWQ, compressed-tensors pack-quantized): the part
every such format shares once its packing is undone, and the lossless paths into GGUF blocks.

    value[r, c] = scale[r, g(c)] * (q[r, c] - zero[r, g(c)])        g(c) = c // group_size, or g_idx[c]

computed exactly in f32 (a scale of at most 24 significant bits times a small integer), then rounded to the
scale's dtype, as the libraries' dequantize does (compressed-tensors computes in the scale dtype).

Lossless: a 4-bit grid (q in 0..15) whose groups are runs of whole 32-column blocks is exactly GGUF's
    Q4_0 when zero = 8 (symmetric):   block = [ d: f16 | qs: 16 B ],  value = d * (q - 8)
    Q4_1 otherwise:                    block = [ d: f16 | m: f16 | qs: 16 B ],  value = d * q + m, m = -d * zero
with d = the scale (exact when it is an f16 value) and qs byte j = q[j] | q[j + 16] << 4; and a symmetric 8-bit grid
is exactly Q8_0:                   block = [ d: f16 | qs: 32 x i8 ],  value = d * qs. Q4_0 reproduces the exact
product scale * (q - 8) (the library's own output rounds it once more to the scale dtype: within half a unit in
the last place of that dtype); Q4_1 rounds the minimum -scale * zero to f16 (at most 2^-11 relative to it).
"""
from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType as QT

from ggufkit.sources.prequant import QuantRef, round_to, take

SCALE_DTYPES = {"F16": "float16", "BF16": "bfloat16", "F32": "float32"}  # safetensors dtype -> numpy name


def unpack_bits(data: np.ndarray, bits: int, first_bit: int, count: int) -> np.ndarray:
    """Dense little-endian bit fields: (n, nbytes) u8 rows, each a stream of `bits`-wide values (a value may
    straddle bytes and words) -> the `count` values starting at bit first_bit of every row, (n, count) u8."""
    if bits == 8 and first_bit % 8 == 0:
        return data[:, first_bit // 8:first_bit // 8 + count]
    if bits == 4 and first_bit % 4 == 0:
        lo, hi = data & 0xF, data >> 4
        out = np.empty((data.shape[0], data.shape[1] * 2), dtype=np.uint8)
        out[:, 0::2], out[:, 1::2] = lo, hi
        return out[:, first_bit // 4:first_bit // 4 + count]
    stream = np.unpackbits(data, axis=1, bitorder="little")  # (n, nbytes*8) one bit per byte
    fields = stream[:, first_bit:first_bit + count * bits].reshape(data.shape[0], count, bits)
    return (fields.astype(np.uint16) << np.arange(bits, dtype=np.uint16)).sum(axis=2, dtype=np.uint16).astype(
        np.uint8)


def dequantize(q: np.ndarray, scale: np.ndarray, zero: np.ndarray, group: np.ndarray, dtype: str) -> np.ndarray:
    """q (n, cols) u8, scale (n, groups) f32, zero (n, groups) f32 or a scalar, group (cols,) int: the group of
    each column -> (n, cols) f32, rounded to the scale dtype."""
    s = scale[:, group]
    z = zero[:, group] if np.ndim(zero) else np.float32(zero)
    return round_to(s * (q.astype(np.float32) - z), dtype)  # exact in f32, then one rounding


def lossless_type(bits: int, symmetric: bool, group_size: int, cols: int, act_order: bool, scale_f16: bool):
    """The GGUF type that holds such a grid exactly, or None."""
    if act_order or not scale_f16 or cols % 32 or group_size % 32:
        return None
    if bits == 8 and symmetric:
        return QT.Q8_0
    if bits != 4:
        return None
    return QT.Q4_0 if symmetric else QT.Q4_1


def f16_exact(values: np.ndarray) -> bool:
    """Whether every value is an f16 number (so a Q4 block's d holds it without rounding)."""
    with np.errstate(over="ignore"):
        return bool(np.array_equal(values.astype(np.float16).astype(np.float32), values))


def q8_blocks(q: np.ndarray, scale: np.ndarray, group_size: int) -> np.ndarray:
    """q (n, cols) u8 holding value + 128, scale (n, cols/group_size) f32 (f16 values) -> Q8_0 rows:
    block = [ d: f16 | qs: 32 x i8 ], value = d * qs. (n, cols/32 * 34) u8."""
    n, cols = q.shape
    nb = cols // 32
    d = np.repeat(scale, group_size // 32, axis=1)[:, :nb].astype(np.float16)  # (n, nb); ragged last group cut
    out = np.empty((n, nb, 34), dtype=np.uint8)
    out[:, :, 0:2] = d.view(np.uint8).reshape(n, nb, 2)
    out[:, :, 2:] = (q.reshape(n, nb, 32) ^ 0x80)  # u8 value + 128 -> the i8 value's bits
    return out.reshape(n, -1)


def q4_blocks(q: np.ndarray, scale: np.ndarray, zero: np.ndarray | None, group_size: int) -> np.ndarray:
    """q (n, cols) u8 in 0..15, scale (n, cols/group_size) f32 (f16 values), zero likewise or None (symmetric,
    8) -> Q4_0 (zero None) or Q4_1 rows: (n, cols/32 * 18 or 20) u8."""
    n, cols = q.shape
    nb = cols // 32
    per = group_size // 32  # blocks per group
    d = np.repeat(scale, per, axis=1)[:, :nb].astype(np.float16)  # (n, nb); a ragged last group is cut
    qb = q.reshape(n, nb, 32)
    qs = (qb[:, :, :16] | (qb[:, :, 16:] << 4)).astype(np.uint8)  # (n, nb, 16)
    if zero is None:
        out = np.empty((n, nb, 18), dtype=np.uint8)
        out[:, :, 0:2] = d.view(np.uint8).reshape(n, nb, 2)
        out[:, :, 2:] = qs
    else:
        m = (-(np.repeat(scale, per, axis=1) * np.repeat(zero, per, axis=1))[:, :nb]).astype(np.float16)  # f16
        out = np.empty((n, nb, 20), dtype=np.uint8)
        out[:, :, 0:2] = d.view(np.uint8).reshape(n, nb, 2)
        out[:, :, 2:4] = m.view(np.uint8).reshape(n, nb, 2)
        out[:, :, 4:] = qs
    return out.reshape(n, -1)


class GridRef(QuantRef):
    """A QuantRef whose format unpacks to this module's grid. Subclasses set group (cols,) i64, group_size,
    dtype_name (the scale dtype) and implement _grid(start, stop) -> (q (n, cols), scale (n, groups) f32,
    zero (n, groups) f32) for output rows [start, stop)."""

    def decode(self, start: int, stop: int) -> np.ndarray:
        q, scale, zero = self._grid(start, stop)
        return dequantize(q, scale, zero, self.group, self.dtype_name)

    def read_blocks(self, start: int, stop: int, qtype) -> np.ndarray:
        """The rows' lossless GGUF blocks (qtype = self.lossless: Q4_0, Q4_1 or Q8_0)."""
        q, scale, zero = self._grid(start, stop)
        if qtype == QT.Q8_0:
            return q8_blocks(q, scale, self.group_size)
        return q4_blocks(q, scale, None if qtype == QT.Q4_0 else zero, self.group_size)


def group_modules(tensors: dict, make, extra: tuple[str, ...] = ()) -> dict:
    """Every module M with M.qweight, M.qzeros and M.scales (taken out of TENSORS; each name in EXTRA, e.g.
    "g_idx", popped if present) -> make(name, qweight, qzeros, scales, *extras), keyed `M.weight`."""
    out = {}
    for key in [k for k in tensors if k.endswith(".qweight")]:
        module = key[:-len(".qweight")]
        name = f"{module}.weight"
        parts = [take(tensors, f"{module}.{part}", name) for part in ("qweight", "qzeros", "scales")]
        out[name] = make(name, *parts, *(tensors.pop(f"{module}.{e}", None) for e in extra))
    return out
