"""A better encoder for the same K-quant decoders: search scales and mins against the importance-weighted error.

    data = quant.quantize(x, "Q4_K", imatrix=w)        # llama.cpp's choice, byte-exact
    data = refine(x, "Q4_K", w, data)                  # never worse on sum w (x - x̂)^2, block by block

The decoder is fixed, the encoder is free. llama.cpp fits each sub-block's scale (and min) on its own, against
heuristic weights (e.g. w_i * sqrt(sigma^2 + x_i^2) for Q4_K), then rounds the scales to their few bits and the
super-block factors d, dmin to f16 without refitting them jointly. Here, starting from its result, per super-block:

  1. for every sub-block, the integer scale (and min) in a small neighbourhood of the current one with the least
     weighted error, each value at its best level for those parameters (nearest level, clamped: optimal per
     value, because the error is a sum over values);
  2. d (and dmin) refitted by weighted least squares for the current integer scales, mins and levels (the
     decoder is linear in them), rounded to f16, and the 3 (x 3) f16 neighbourhood of that tried;
  3. repeated ROUNDS times; a super-block is only replaced when its weighted error went down.

The objective is the importance-weighted squared error sum_i w_i (x_i - x̂_i)^2 with w the imatrix column
weights (ones without an imatrix): the output noise of the layer, as in ggufkit.plan.budget. Decoded values are
computed as ggml's dequantizers do (f32 s = d * sc, then s * q - dmin * m in f32), the error in f64.

Every type is one decoder form over 256 values in n_sub contiguous sub-blocks:
    asymmetric (Q2_K, Q4_K, Q5_K):  x̂ = (d * sc[j]) * q - dmin * m[j],   q in 0..nmax, sc, m in 0..smax
    symmetric  (Q3_K, Q6_K):        x̂ = (d * sc[j]) * q,                 q in qmin..qmax, sc signed

Layouts (llama.cpp's block_q*_K; c = 128-value half, k = 32-value quarter inside it, l = index in the quarter):
    Q2_K  (84 B): scales[16] (sc | m << 4) | qs[64] | d f16 | dmin f16      16 x 16 values
                  value 128c + 32k + l: bits 2k of qs[32c + l]
    Q3_K (110 B): hmask[32] | qs[64] | scales[12] | d f16                  16 x 16, q = low2 - (hbit ? 0 : 4)
                  value 128c + 32k + l: low 2 bits at bit 2k of qs[32c + l], hbit = bit 4c + k of hmask[l];
                  scale s_i + 32 (6 bits): bytes 0-3 low nibbles s_0..3 / high s_8..11, bytes 4-7 low s_4..7 /
                  high s_12..15, bytes 8-11 the top 2 bits of s_b, s_b+4, s_b+8, s_b+12 at bits 0, 2, 4, 6
    Q4_K (144 B): d f16 | dmin f16 | scales[12] | qs[128]                   8 x 32 values
    Q5_K (176 B): d f16 | dmin f16 | scales[12] | qh[32] | qs[128]
                  scales: bytes 0-3 sc[j] | (sc[j+4] >> 4) << 6, bytes 4-7 m[j] | (m[j+4] >> 4) << 6,
                  bytes 8-11 (sc[j+4] & 15) | (m[j+4] & 15) << 4 (j = 0..3)
                  qs: byte 32h + l holds value 64h + l (low nibble) and 64h + 32 + l (high), h = 0..3;
                  qh: bit 2h of byte l is bit 4 of value 64h + l, bit 2h+1 that of value 64h + 32 + l
    Q6_K (210 B): ql[128] | qh[64] | scales[16] (int8) | d f16              16 x 16, q = 6-bit - 32
                  value 128c + 32k + l: 4 bits of ql[64c + 32(k & 1) + l] (low nibble for k < 2, high
                  otherwise), 2 bits at bit 2k of qh[32c + l]
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from gguf import GGMLQuantizationType as QT

__all__ = ["METHOD", "SUPPORTED", "decode", "enable", "pack", "refine", "refine_blocks", "refine_blocks_reference",
           "unpack", "weighted_error"]

ROUNDS = 2


@dataclass(frozen=True)
class Form:
    """One K-quant type's decoder: sub-blocks, integer ranges, block bytes."""
    n_sub: int
    block_bytes: int
    asym: bool
    sc_range: tuple[int, int]
    q_range: tuple[int, int]
    reach: int   # neighbourhood of the integer scale (and min) searched per sub-block

    @property
    def sub_len(self) -> int:
        return 256 // self.n_sub


FORMS = {
    QT.Q2_K: Form(16, 84, True, (0, 15), (0, 3), 2),
    QT.Q3_K: Form(16, 110, False, (-32, 31), (-4, 3), 4),
    QT.Q4_K: Form(8, 144, True, (0, 63), (0, 15), 2),
    QT.Q5_K: Form(8, 176, True, (0, 63), (0, 31), 2),
    QT.Q6_K: Form(16, 210, False, (-128, 127), (-32, 31), 4),
}
SUPPORTED = tuple(FORMS)
METHOD = "scale-search-2 (" + ", ".join(t.name for t in SUPPORTED) + ")"


# ---- layouts: bytes <-> (d, dmin, sc, m, q)


def _f16(b: np.ndarray) -> np.ndarray:
    return b.copy().view(np.float16)[:, 0].astype(np.float32)


def _half_bytes(v: np.ndarray) -> np.ndarray:
    return v.astype(np.float16).reshape(-1, 1).view(np.uint8)


def _k4_scales(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q4_K/Q5_K scales[12] (nb, 12) i32 -> sc, m (nb, 8)."""
    sc = np.concatenate([s[:, 0:4] & 63, (s[:, 8:12] & 15) | ((s[:, 0:4] >> 6) << 4)], axis=1)
    m = np.concatenate([s[:, 4:8] & 63, (s[:, 8:12] >> 4) | ((s[:, 4:8] >> 6) << 4)], axis=1)
    return sc, m


def _k4_scale_bytes(sc: np.ndarray, m: np.ndarray) -> np.ndarray:
    return np.concatenate([sc[:, 0:4] | ((sc[:, 4:8] >> 4) << 6), m[:, 0:4] | ((m[:, 4:8] >> 4) << 6),
                           (sc[:, 4:8] & 15) | ((m[:, 4:8] & 15) << 4)], axis=1).astype(np.uint8)


def _split_2bit(qs: np.ndarray) -> np.ndarray:
    """qs (nb, 64) i32 -> (nb, 256) 2-bit fields: value 128c + 32k + l at bit 2k of qs[32c + l]."""
    q = qs.reshape(-1, 2, 1, 32) >> (2 * np.arange(4).reshape(1, 1, 4, 1))
    return (q & 3).reshape(-1, 256)


def _join_2bit(v: np.ndarray) -> np.ndarray:
    v = v.reshape(-1, 2, 4, 32) << (2 * np.arange(4).reshape(1, 1, 4, 1))
    return np.bitwise_or.reduce(v, axis=2).reshape(-1, 64).astype(np.uint8)


def unpack(data: np.ndarray, qtype: QT) -> tuple[np.ndarray, ...]:
    """(nb, block bytes) u8 -> d (nb,) f32, dmin (nb,) f32 (zeros for symmetric types), sc (nb, n_sub) i32,
    m (nb, n_sub) i32 (zeros for symmetric types), q (nb, 256) i32 (the signed level for symmetric types)."""
    f = FORMS[qtype]
    b = np.ascontiguousarray(data).reshape(-1, f.block_bytes)
    nb = len(b)
    zeros_d, zeros_m = np.zeros(nb, np.float32), np.zeros((nb, f.n_sub), np.int32)
    if qtype in (QT.Q4_K, QT.Q5_K):
        d, dmin = _f16(b[:, 0:2]), _f16(b[:, 2:4])
        sc, m = _k4_scales(b[:, 4:16].astype(np.int32))
        qs = b[:, -128:].astype(np.int32).reshape(-1, 4, 32)
        q = np.stack([qs & 15, qs >> 4], axis=2).reshape(-1, 256)
        if qtype == QT.Q5_K:
            qh = b[:, 16:48].astype(np.int32)
            bits = np.stack([(qh >> i) & 1 for i in range(8)], axis=1)  # bit 2h + half -> value 64h + 32 half + l
            q = q + 16 * bits.reshape(-1, 256)
        return d, dmin, sc, m, q
    if qtype == QT.Q2_K:
        s = b[:, 0:16].astype(np.int32)
        return _f16(b[:, 80:82]), _f16(b[:, 82:84]), s & 15, s >> 4, _split_2bit(b[:, 16:80].astype(np.int32))
    if qtype == QT.Q3_K:
        B = b[:, 96:108].astype(np.int32)
        lo, hi2 = B[:, 0:8], B[:, 8:12]
        sc = np.concatenate([(lo[:, 0:4] & 15) | ((hi2 & 3) << 4), (lo[:, 4:8] & 15) | (((hi2 >> 2) & 3) << 4),
                             (lo[:, 0:4] >> 4) | (((hi2 >> 4) & 3) << 4), (lo[:, 4:8] >> 4) | (((hi2 >> 6) & 3) << 4)],
                            axis=1) - 32
        low = _split_2bit(b[:, 32:96].astype(np.int32))
        hm = b[:, 0:32].astype(np.int32)                                 # bit 4c + k of hmask[l]
        hbit = np.stack([(hm >> (4 * c + k)) & 1 for c in range(2) for k in range(4)], axis=1).reshape(-1, 256)
        return _f16(b[:, 108:110]), zeros_d, sc, zeros_m, low - 4 * (1 - hbit)
    # Q6_K
    ql = b[:, 0:128].astype(np.int32).reshape(-1, 2, 2, 32)             # (nb, c, k & 1, l)
    qh = b[:, 128:192].astype(np.int32).reshape(-1, 2, 1, 32)
    low = np.concatenate([ql & 15, ql >> 4], axis=2)                      # (nb, c, k, l), k = 0..3
    high = (qh >> (2 * np.arange(4).reshape(1, 1, 4, 1))) & 3
    q = (low | (high << 4)).reshape(-1, 256) - 32
    sc = b[:, 192:208].view(np.int8).astype(np.int32)
    return _f16(b[:, 208:210]), zeros_d, sc, zeros_m, q


def pack(d: np.ndarray, dmin: np.ndarray, sc: np.ndarray, m: np.ndarray, q: np.ndarray, qtype: QT) -> np.ndarray:
    """Inverse of unpack: -> (nb, block bytes) u8."""
    f = FORMS[qtype]
    nb = len(d)
    out = np.zeros((nb, f.block_bytes), dtype=np.uint8)
    sc, m, q = sc.astype(np.int32), m.astype(np.int32), q.astype(np.int32)
    if qtype in (QT.Q4_K, QT.Q5_K):
        out[:, 0:2], out[:, 2:4] = _half_bytes(d), _half_bytes(dmin)
        out[:, 4:16] = _k4_scale_bytes(sc, m)
        qv = q.reshape(nb, 4, 2, 32)                                      # (nb, h, half, l)
        out[:, -128:] = ((qv[:, :, 0] & 15) | ((qv[:, :, 1] & 15) << 4)).reshape(nb, 128).astype(np.uint8)
        if qtype == QT.Q5_K:
            hi = ((qv >> 4) & 1).reshape(nb, 8, 32) << np.arange(8).reshape(1, 8, 1)
            out[:, 16:48] = np.bitwise_or.reduce(hi, axis=1).astype(np.uint8)
        return out
    if qtype == QT.Q2_K:
        out[:, 0:16] = (sc | (m << 4)).astype(np.uint8)
        out[:, 16:80] = _join_2bit(q)
        out[:, 80:82], out[:, 82:84] = _half_bytes(d), _half_bytes(dmin)
        return out
    if qtype == QT.Q3_K:
        s = sc + 32
        out[:, 96:100] = ((s[:, 0:4] & 15) | ((s[:, 8:12] & 15) << 4)).astype(np.uint8)
        out[:, 100:104] = ((s[:, 4:8] & 15) | ((s[:, 12:16] & 15) << 4)).astype(np.uint8)
        out[:, 104:108] = ((s[:, 0:4] >> 4) | ((s[:, 4:8] >> 4) << 2) | ((s[:, 8:12] >> 4) << 4)
                           | ((s[:, 12:16] >> 4) << 6)).astype(np.uint8)
        u = q + 4                                                         # 0..7
        out[:, 32:96] = _join_2bit(u & 3)
        hbit = ((u >> 2) & 1).reshape(nb, 8, 32) << np.arange(8).reshape(1, 8, 1)
        out[:, 0:32] = np.bitwise_or.reduce(hbit, axis=1).astype(np.uint8)
        out[:, 108:110] = _half_bytes(d)
        return out
    u = (q + 32).reshape(nb, 2, 4, 32)                                    # Q6_K (nb, c, k, l)
    low, high = u & 15, u >> 4
    out[:, 0:128] = (low[:, :, 0:2] | (low[:, :, 2:4] << 4)).reshape(nb, 128).astype(np.uint8)
    hb = high << (2 * np.arange(4).reshape(1, 1, 4, 1))
    out[:, 128:192] = np.bitwise_or.reduce(hb, axis=2).reshape(nb, 64).astype(np.uint8)
    out[:, 192:208] = sc.astype(np.int8).view(np.uint8)
    out[:, 208:210] = _half_bytes(d)
    return out


# ---- decoding and the error


def _scales(d, dmin, sc, m) -> tuple[np.ndarray, np.ndarray]:
    s = (d[..., None] * sc.astype(np.float32)).astype(np.float32)
    mn = (dmin[..., None] * m.astype(np.float32)).astype(np.float32)
    return s, mn


def decode(d, dmin, sc, m, q) -> np.ndarray:
    """(nb, 256) f32 as ggml's dequantizers compute it."""
    n_sub = sc.shape[1]
    s, mn = _scales(d, dmin, sc, m)
    qv = q.astype(np.float32).reshape(len(d), n_sub, -1)
    return (s[:, :, None] * qv - mn[:, :, None]).astype(np.float32).reshape(-1, 256)


def weighted_error(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Per super-block sum w (x - y)^2 in f64: (nb, 256) x3 -> (nb,)."""
    diff = x.astype(np.float64) - y.astype(np.float64)
    return (w.astype(np.float64) * diff * diff).sum(axis=1)


# ---- the search


def _levels(x, s, mn, f: Form):
    """Best levels for sub-block scales s and mins mn (broadcast against x): nearest, clamped."""
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.rint((x + mn) / s)
    q = np.where(s != 0, q, 0)
    return np.clip(q, *f.q_range)


def _sub_error(x, w, s, mn, f: Form):
    """x, w (..., sub_len) f32; s, mn (...) f32 -> error (...) at the best levels. In f32: it only ranks the
    candidates (refine_blocks accepts a result on its f64 error)."""
    q = _levels(x, s[..., None], mn[..., None], f)
    diff = x - (s[..., None] * q.astype(np.float32) - mn[..., None])
    return (w * diff * diff).sum(axis=-1, dtype=np.float32)


def _block_error(x, w, d, dmin, sc, m, f: Form):
    s, mn = _scales(d, dmin, sc, m)
    shape = (-1, f.n_sub, f.sub_len)
    return _sub_error(x.reshape(shape), w.reshape(shape), s, mn, f).sum(axis=1)


def _step_scales(x, w, d, dmin, sc, m, f: Form):
    """Per sub-block, the best integer (sc, m) within reach of the current ones."""
    r = f.reach
    if f.asym:
        offs = np.array([(a, b) for a in range(-r, r + 1) for b in range(-r, r + 1)])
    else:
        offs = np.array([(a, 0) for a in range(-r, r + 1)])
    lo, hi = f.sc_range
    csc = np.clip(sc[:, :, None] + offs[:, 0], lo, hi)                    # (nb, n_sub, K)
    cm = np.clip(m[:, :, None] + offs[:, 1], lo, hi) if f.asym else np.zeros_like(csc)
    s, mn = _scales(d[:, None], dmin[:, None], csc, cm)
    shape = (-1, f.n_sub, 1, f.sub_len)
    err = _sub_error(x.reshape(shape), w.reshape(shape), s, mn, f)        # (nb, n_sub, K)
    best = err.argmin(axis=2)[..., None]
    return np.take_along_axis(csc, best, 2)[..., 0], np.take_along_axis(cm, best, 2)[..., 0]


def _f16_neighbours(v: np.ndarray) -> list[np.ndarray]:
    """v (nb,) rounded to f16, and the f16 values one step below and above, as f32."""
    h = v.astype(np.float16)
    return [h.astype(np.float32), np.nextafter(h, np.float16(-np.inf)).astype(np.float32),
            np.nextafter(h, np.float16(np.inf)).astype(np.float32)]


def _refit_d(x, w, d, dmin, sc, m, f: Form):
    """Weighted least squares for d (and dmin) given integer scales, mins and the current levels (x ≈ d a - dmin b);
    then the best of the f16 neighbourhood of the solution and the current factors, at their best levels."""
    s, mn = _scales(d, dmin, sc, m)
    shape = (-1, f.n_sub, f.sub_len)
    q = _levels(x.reshape(shape), s[..., None], mn[..., None], f)
    a = (sc[:, :, None] * q).reshape(-1, 256).astype(np.float64)
    wx, xx = w.astype(np.float64), x.astype(np.float64)
    saa, sxa = (wx * a * a).sum(1), (wx * xx * a).sum(1)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if f.asym:
            bb = np.repeat(m, f.sub_len, axis=1).astype(np.float64)
            sbb, sab, sxb = (wx * bb * bb).sum(1), (wx * a * bb).sum(1), (wx * xx * bb).sum(1)
            det = saa * sbb - sab * sab
            ok = det > 1e-12 * np.maximum(saa * sbb, 1e-300)
            d_ls = np.where(ok, (sxa * sbb - sxb * sab) / det, d)
            m_ls = np.where(ok, (sxa * sab - sxb * saa) / det, dmin)
        else:
            d_ls = np.where(saa > 0, sxa / saa, d)
            m_ls = dmin
    finite = np.isfinite(d_ls) & np.isfinite(m_ls) & (np.abs(d_ls) < 6e4) & (np.abs(m_ls) < 6e4)
    d_ls, m_ls = np.where(finite, d_ls, d), np.where(finite, m_ls, dmin)
    mins = _f16_neighbours(m_ls) if f.asym else [dmin]
    best_d, best_m = d.copy(), dmin.copy()
    best_err = _block_error(x, w, d, dmin, sc, m, f)
    for dd in _f16_neighbours(d_ls):
        for mm in mins:
            err = _block_error(x, w, dd, mm, sc, m, f)
            better = err < best_err
            best_d, best_m, best_err = np.where(better, dd, best_d), np.where(better, mm, best_m), \
                np.where(better, err, best_err)
    return best_d, best_m


def refine_blocks(x: np.ndarray, w: np.ndarray, data: np.ndarray, qtype: QT, threads: int | None = None) -> np.ndarray:
    """x (nb, 256) f32, w (nb, 256) f32 importance, data (nb, block bytes) u8 (any valid encoding of x) ->
    (nb, block bytes) u8 whose weighted error is never larger, super-block by super-block. The native search
    (native/src/search_k.c: the same bytes as refine_blocks_reference, threads, the GIL released); w may be a
    broadcast view (rows of one block's weights repeated), which is passed without copying."""
    f = FORMS[QT(qtype)]
    x = np.ascontiguousarray(x, dtype=np.float32).reshape(-1, 256)
    nb = len(x)
    w = np.asarray(w)
    if w.ndim == 2 and w.shape[0] == nb and w.strides[0] == 0:
        w = w[:1]
    w = np.ascontiguousarray(w, dtype=np.float32).reshape(-1, 256)
    if len(w) not in (1, nb):
        raise ValueError(f"w has {len(w)} blocks for {nb} blocks of x")
    return _native_search(x, w, data, QT(qtype), f, threads)


def _native_search(x, w, data, qtype, f: Form, threads) -> np.ndarray:
    """x (nb, 256) f32 contiguous, w (w_blocks, 256) f32 (block b uses row b % w_blocks), data (nb, block bytes)."""
    from ggufkit import _quants, quant

    nb = len(x)
    data = np.ascontiguousarray(data, dtype=np.uint8).reshape(nb, f.block_bytes)
    out = np.empty_like(data)
    _quants.search_k(int(qtype), x, w, len(w), data, nb, quant._check_threads(threads), out)
    return out


def refine_blocks_reference(x: np.ndarray, w: np.ndarray, data: np.ndarray, qtype: QT) -> np.ndarray:
    """The search in numpy: the reference the native one is tested against (same arguments as refine_blocks)."""
    f = FORMS[qtype]
    d0, dmin0, sc0, m0, q0 = unpack(data, qtype)
    start_err = weighted_error(x, decode(d0, dmin0, sc0, m0, q0), w)
    d, dmin, sc, m = d0.copy(), dmin0.copy(), sc0.copy(), m0.copy()
    with np.errstate(over="ignore", invalid="ignore"):
        for _ in range(ROUNDS):
            sc, m = _step_scales(x, w, d, dmin, sc, m, f)
            d, dmin = _refit_d(x, w, d, dmin, sc, m, f)
        s, mn = _scales(d, dmin, sc, m)
        shape = (-1, f.n_sub, f.sub_len)
        q = _levels(x.reshape(shape), s[..., None], mn[..., None], f).reshape(-1, 256).astype(np.int32)
    new = pack(d, dmin, sc, m, q, qtype)
    # judge the bytes as they will be read: decode what was packed
    new_err = weighted_error(x, decode(*unpack(new, qtype)), w)
    better = np.isfinite(new_err) & (new_err < start_err)
    out = np.ascontiguousarray(data).reshape(-1, f.block_bytes).copy()
    out[better] = new[better]
    return out


def enable(plan) -> None:
    """Turn the search on for a conversion plan (ggufkit.conversion.Plan), and record it in the file."""
    plan.refine = refine
    plan.metadata["ggufkit.optimize.rounding"] = METHOD


def refine(x: np.ndarray, qtype, imatrix: np.ndarray | None, data: np.ndarray, name: str | None = None,
           threads: int | None = None, reference: bool = False) -> np.ndarray:
    """Rows x (rows, cols) f32 and their encoding data (rows, row bytes) u8 -> a re-encoding, never worse on the
    importance-weighted error of any super-block. Types other than SUPPORTED come back unchanged. name: the
    tensor's (unused: every tensor is searched alike). The native search (threads: default all CPUs);
    reference=True runs the numpy code instead (the same bytes, ~100x slower)."""
    qtype = QT[qtype.upper()] if isinstance(qtype, str) else QT(qtype)
    if qtype not in FORMS:
        return data
    rows, cols = x.shape
    nb = rows * cols // 256
    w = np.ones(cols, dtype=np.float32) if imatrix is None else np.asarray(imatrix, dtype=np.float32)
    if not reference:  # w's cols / 256 blocks repeat on every row: block b of the tensor uses b % (cols / 256)
        xb = np.ascontiguousarray(x, dtype=np.float32).reshape(nb, 256)
        out = _native_search(xb, np.ascontiguousarray(w).reshape(-1, 256), data, qtype, FORMS[qtype], threads)
        return out.reshape(rows, -1)
    wb = np.broadcast_to(w, (rows, cols)).reshape(nb, 256)
    out = np.empty((nb, FORMS[qtype].block_bytes), dtype=np.uint8)
    step = 2048  # super-blocks per batch: bounds the temporaries (~100 MB)
    xb, db = x.reshape(nb, 256), np.ascontiguousarray(data).reshape(nb, -1)
    for i in range(0, nb, step):
        out[i:i + step] = refine_blocks_reference(xb[i:i + step], wb[i:i + step], db[i:i + step], qtype)
    return out.reshape(rows, -1)
