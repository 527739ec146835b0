"""A better encoder for the same K-quant decoders: search scales and mins against the importance-weighted error.

    data = quant.quantize(x, "Q4_K", imatrix=w)        # llama.cpp's choice, byte-exact
    data = refine(x, "Q4_K", w, data)                  # never worse on sum w (x - x̂)^2, block by block

The decoder is fixed, the encoder is free. llama.cpp fits each 32-value sub-block's scale and min on its own,
against heuristic weights (w_i * sqrt(sigma^2 + x_i^2)), and then rounds the eight scales and mins to 6 bits
and the super-block factors d, dmin to f16 without refitting. Here, starting from its result, per super-block:

  1. for every sub-block, the 6-bit (scale, min) pair in a 5 x 5 neighbourhood of the current one that has the
     least weighted error, each value at its best level for those parameters (nearest level, clamped: optimal
     per value because the error is a sum over values);
  2. d and dmin refitted by weighted least squares for the current integer scales, mins and levels (the decoder
     is linear in them), rounded to f16, and the 3 x 3 f16 neighbourhood of that tried;
  3. repeated ROUNDS times, and a super-block is only replaced when its weighted error went down.

The objective is the importance-weighted squared error sum_i w_i (x_i - x̂_i)^2 with w the imatrix column
weights (ones without an imatrix): the output noise of the layer, as in ggufkit.plan.budget. Decoded values are
computed as ggml's dequantizer does (f32 d * sc, then (d*sc) * q - dmin*m in f32), and the error in f64.

Layouts (llama.cpp's block_q4_K / block_q5_K, 256 values in 8 sub-blocks of 32):

    Q4_K (144 B): d f16 | dmin f16 | scales[12] | qs[128]
    Q5_K (176 B): d f16 | dmin f16 | scales[12] | qh[32] | qs[128]
    scales: bytes 0-3   sc[j] (6 bits) | (sc[j+4] >> 4) << 6       (j = 0..3)
            bytes 4-7   m[j]  (6 bits) | (m[j+4]  >> 4) << 6
            bytes 8-11  (sc[j+4] & 15) | (m[j+4] & 15) << 4
    qs:     byte 32c + l holds value 64c + l (low nibble) and 64c + 32 + l (high nibble), c = 0..3
    qh:     bit 2c of byte l is bit 4 of value 64c + l, bit 2c+1 that of value 64c + 32 + l
    value:  x̂ = (d * sc[j]) * q - dmin * m[j]
"""
from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType as QT

__all__ = ["SUPPORTED", "decode", "enable", "pack", "refine", "unpack", "weighted_error"]

SUPPORTED = (QT.Q4_K, QT.Q5_K)
ROUNDS = 2
_NMAX = {QT.Q4_K: 15, QT.Q5_K: 31}
_BLOCK_BYTES = {QT.Q4_K: 144, QT.Q5_K: 176}


# ---- layout


def unpack(data: np.ndarray, qtype: QT) -> tuple[np.ndarray, ...]:
    """(nb, block bytes) u8 -> d (nb,) f32, dmin (nb,) f32, sc (nb, 8) i32, m (nb, 8) i32, q (nb, 256) i32."""
    b = np.ascontiguousarray(data).reshape(-1, _BLOCK_BYTES[qtype])
    d = b[:, 0:2].copy().view(np.float16)[:, 0].astype(np.float32)
    dmin = b[:, 2:4].copy().view(np.float16)[:, 0].astype(np.float32)
    s = b[:, 4:16].astype(np.int32)
    sc = np.concatenate([s[:, 0:4] & 63, (s[:, 8:12] & 15) | ((s[:, 0:4] >> 6) << 4)], axis=1)
    m = np.concatenate([s[:, 4:8] & 63, (s[:, 8:12] >> 4) | ((s[:, 4:8] >> 6) << 4)], axis=1)
    qs = b[:, -128:].astype(np.int32).reshape(-1, 4, 32)          # (nb, c, l)
    q = np.stack([qs & 15, qs >> 4], axis=2).reshape(-1, 256)     # value 64c + 32h + l
    if qtype == QT.Q5_K:
        qh = b[:, 16:48].astype(np.int32)                           # (nb, l)
        bits = np.stack([(qh >> (2 * c + h)) & 1 for c in range(4) for h in range(2)], axis=1)  # (nb, 8, 32)
        q = q + 16 * bits.reshape(-1, 256)
    return d, dmin, sc, m, q


def pack(d: np.ndarray, dmin: np.ndarray, sc: np.ndarray, m: np.ndarray, q: np.ndarray, qtype: QT) -> np.ndarray:
    """Inverse of unpack: -> (nb, block bytes) u8."""
    nb = len(d)
    out = np.zeros((nb, _BLOCK_BYTES[qtype]), dtype=np.uint8)
    out[:, 0:2] = d.astype(np.float16).reshape(-1, 1).view(np.uint8)
    out[:, 2:4] = dmin.astype(np.float16).reshape(-1, 1).view(np.uint8)
    sc, m = sc.astype(np.int32), m.astype(np.int32)
    out[:, 4:8] = (sc[:, 0:4] | ((sc[:, 4:8] >> 4) << 6)).astype(np.uint8)
    out[:, 8:12] = (m[:, 0:4] | ((m[:, 4:8] >> 4) << 6)).astype(np.uint8)
    out[:, 12:16] = ((sc[:, 4:8] & 15) | ((m[:, 4:8] & 15) << 4)).astype(np.uint8)
    qv = q.astype(np.int32).reshape(nb, 4, 2, 32)                   # (nb, c, h, l)
    out[:, -128:] = ((qv[:, :, 0] & 15) | ((qv[:, :, 1] & 15) << 4)).reshape(nb, 128).astype(np.uint8)
    if qtype == QT.Q5_K:
        hi = (qv >> 4) & 1
        qh = np.zeros((nb, 32), dtype=np.int32)
        for c in range(4):
            for h in range(2):
                qh |= hi[:, c, h] << (2 * c + h)
        out[:, 16:48] = qh.astype(np.uint8)
    return out


def decode(d, dmin, sc, m, q) -> np.ndarray:
    """(nb, 256) f32 as ggml's dequantizer computes it."""
    s = (d[:, None] * sc.astype(np.float32)).astype(np.float32)       # (nb, 8)
    mn = (dmin[:, None] * m.astype(np.float32)).astype(np.float32)
    qv = q.astype(np.float32).reshape(-1, 8, 32)
    return (s[:, :, None] * qv - mn[:, :, None]).astype(np.float32).reshape(-1, 256)


def weighted_error(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Per super-block sum w (x - y)^2 in f64: (nb, 256) x3 -> (nb,)."""
    diff = x.astype(np.float64) - y.astype(np.float64)
    return (w.astype(np.float64) * diff * diff).sum(axis=1)


# ---- the search


def _levels(x: np.ndarray, s: np.ndarray, mn: np.ndarray, nmax: int) -> np.ndarray:
    """Best levels for sub-block scales s and mins mn (broadcast over the last axis of x): nearest, clamped."""
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.rint((x + mn) / s)
    q = np.where(s > 0, q, 0)
    return np.clip(q, 0, nmax)


def _subblock_error(x, w, s, mn, nmax):
    """x, w (..., 32); s, mn (...,) f32 -> (error (...,) f64, levels (..., 32))."""
    q = _levels(x, s[..., None], mn[..., None], nmax)
    y = (s[..., None] * q.astype(np.float32) - mn[..., None]).astype(np.float32)
    diff = x.astype(np.float64) - y
    return (w * diff * diff).sum(axis=-1), q


def _step_scales(x, w, d, dmin, sc, m, nmax, reach=2):
    """Per sub-block, the best (sc, m) within +-reach of the current: returns new sc, m (nb, 8)."""
    xs, ws = x.reshape(-1, 8, 1, 32), w.reshape(-1, 8, 1, 32)
    offs = np.array([(a, b) for a in range(-reach, reach + 1) for b in range(-reach, reach + 1)])  # (K, 2)
    csc = np.clip(sc[:, :, None] + offs[None, None, :, 0], 0, 63)   # (nb, 8, K)
    cm = np.clip(m[:, :, None] + offs[None, None, :, 1], 0, 63)
    s = (d[:, None, None] * csc.astype(np.float32)).astype(np.float32)
    mn = (dmin[:, None, None] * cm.astype(np.float32)).astype(np.float32)
    err, _ = _subblock_error(xs, ws, s, mn, nmax)                   # (nb, 8, K)
    best = err.argmin(axis=2)[..., None]
    return np.take_along_axis(csc, best, 2)[..., 0], np.take_along_axis(cm, best, 2)[..., 0]


def _f16_neighbours(v: np.ndarray) -> list[np.ndarray]:
    """v (nb,) rounded to f16, and the f16 values one step below and above, as f32."""
    h = v.astype(np.float16)
    return [h.astype(np.float32), np.nextafter(h, np.float16(-np.inf)).astype(np.float32),
            np.nextafter(h, np.float16(np.inf)).astype(np.float32)]


def _refit_d(x, w, d, dmin, sc, m, nmax):
    """Weighted least squares for (d, dmin) given the integer scales, mins and current levels; then the best of
    the 3 x 3 f16 neighbourhood of the solution and the current pair, each with its best levels."""
    s = (d[:, None] * sc.astype(np.float32)).astype(np.float32)
    mn = (dmin[:, None] * m.astype(np.float32)).astype(np.float32)
    q = _levels(x.reshape(-1, 8, 32), s[..., None], mn[..., None], nmax)
    a = (sc[:, :, None] * q).reshape(-1, 256).astype(np.float64)    # x ≈ d a - dmin b
    bb = np.repeat(m, 32, axis=1).astype(np.float64)
    wx = w.astype(np.float64)
    xx = x.astype(np.float64)
    saa, sbb, sab = (wx * a * a).sum(1), (wx * bb * bb).sum(1), (wx * a * bb).sum(1)
    sxa, sxb = (wx * xx * a).sum(1), (wx * xx * bb).sum(1)
    det = saa * sbb - sab * sab
    ok = det > 1e-12 * np.maximum(saa * sbb, 1e-300)
    with np.errstate(divide="ignore", invalid="ignore"):
        d_ls = np.where(ok, (sxa * sbb - sxb * sab) / det, d)
        m_ls = np.where(ok, (sxa * sab - sxb * saa) / det, dmin)
    finite = np.isfinite(d_ls) & np.isfinite(m_ls) & (np.abs(d_ls) < 6e4) & (np.abs(m_ls) < 6e4)
    d_ls, m_ls = np.where(finite, d_ls, d), np.where(finite, m_ls, dmin)
    cands = [(d, dmin)] + [(dd, mm) for dd in _f16_neighbours(d_ls) for mm in _f16_neighbours(m_ls)]
    best_d, best_m = d.copy(), dmin.copy()
    best_err = None
    for dd, mm in cands:
        err = _block_error(x, w, dd, mm, sc, m, nmax)
        if best_err is None:
            best_err = err
            continue
        better = err < best_err
        best_d, best_m, best_err = np.where(better, dd, best_d), np.where(better, mm, best_m), \
            np.where(better, err, best_err)
    return best_d, best_m


def _block_error(x, w, d, dmin, sc, m, nmax):
    s = (d[:, None] * sc.astype(np.float32)).astype(np.float32)
    mn = (dmin[:, None] * m.astype(np.float32)).astype(np.float32)
    err, _ = _subblock_error(x.reshape(-1, 8, 32), w.reshape(-1, 8, 32), s, mn, nmax)
    return err.sum(axis=1)


def refine_blocks(x: np.ndarray, w: np.ndarray, data: np.ndarray, qtype: QT) -> np.ndarray:
    """x (nb, 256) f32, w (nb, 256) f32 importance, data (nb, block bytes) u8 (any valid encoding of x) ->
    (nb, block bytes) u8 whose weighted error is never larger, super-block by super-block."""
    nmax = _NMAX[qtype]
    d0, dmin0, sc0, m0, q0 = unpack(data, qtype)
    start_err = weighted_error(x, decode(d0, dmin0, sc0, m0, q0), w)
    d, dmin, sc, m = d0.copy(), dmin0.copy(), sc0.copy(), m0.copy()
    with np.errstate(over="ignore", invalid="ignore"):
        for _ in range(ROUNDS):
            sc, m = _step_scales(x, w, d, dmin, sc, m, nmax)
            d, dmin = _refit_d(x, w, d, dmin, sc, m, nmax)
        s = (d[:, None] * sc.astype(np.float32)).astype(np.float32)
        mn = (dmin[:, None] * m.astype(np.float32)).astype(np.float32)
        q = _levels(x.reshape(-1, 8, 32), s[..., None], mn[..., None], nmax).reshape(-1, 256).astype(np.int32)
    new = pack(d, dmin, sc, m, q, qtype)
    # judge the bytes as they will be read: decode what was packed
    new_err = weighted_error(x, decode(*unpack(new, qtype)), w)
    better = np.isfinite(new_err) & (new_err < start_err)
    out = np.ascontiguousarray(data).reshape(-1, _BLOCK_BYTES[qtype]).copy()
    out[better] = new[better]
    return out


METHOD = "scale-search-1 (Q4_K, Q5_K)"


def enable(plan) -> None:
    """Turn the search on for a conversion plan (ggufkit.conversion.Plan), and record it in the file."""
    plan.refine = refine
    plan.metadata["ggufkit.optimize.rounding"] = METHOD


def refine(x: np.ndarray, qtype, imatrix: np.ndarray | None, data: np.ndarray) -> np.ndarray:
    """Rows x (rows, cols) f32 and their encoding data (rows, row bytes) u8 -> a re-encoding, never worse on the
    importance-weighted error of any super-block. Types other than SUPPORTED come back unchanged."""
    qtype = QT[qtype.upper()] if isinstance(qtype, str) else QT(qtype)
    if qtype not in SUPPORTED:
        return data
    rows, cols = x.shape
    nb = rows * cols // 256
    w = np.ones(cols, dtype=np.float32) if imatrix is None else np.asarray(imatrix, dtype=np.float32)
    wb = np.broadcast_to(w, (rows, cols)).reshape(nb, 256)
    out = np.empty((nb, _BLOCK_BYTES[qtype]), dtype=np.uint8)
    step = 4096  # super-blocks per batch: bounds the temporaries (~100 MB)
    xb, db = x.reshape(nb, 256), np.ascontiguousarray(data).reshape(nb, -1)
    for i in range(0, nb, step):
        out[i:i + step] = refine_blocks(xb[i:i + step], wb[i:i + step], db[i:i + step], qtype)
    return out.reshape(rows, -1)
