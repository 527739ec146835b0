"""GPTQ-style error feedback into the standard GGUF block types (K-quants, the legacy 32-value types, IQ4_NL/XS).

    enc = ErrorFeedback(stats)                           # stats: ggufkit.quant.calibrate.Statistics
    data = enc(x, "Q4_K", imatrix, data, name="blk.0.ffn_down.weight")   # same type, same decoder

A linear layer's output error for a weight error E = W - Ŵ (rows, cols) over inputs x is sum_t |E x_t|^2 =
tr(E H E^T) with H = sum_t x_t x_t^T, the input covariance from calibration. GPTQ (Frantar et al. 2022) rounds
the columns left to right and pushes each column's rounding error into the columns not yet rounded, through the
inverse of H: after rounding column j, W[:, k] -= e_j Hinv[j, k] / Hinv[j, j] for k > j, which is the least-
squares correction of the remaining columns (Optimal Brain Surgeon), done with the upper Cholesky factor U of
Hinv (Hinv = U^T U) in batches (W[:, later] -= E U[batch, later] once per batch of columns).

Block types fix a scale (and min) per block of columns: each group of columns one block wide (256 for K-quants,
32 for Q4_0/Q4_1/Q5_0/Q5_1/Q8_0/IQ4_NL) is first encoded by the native quantizer (llama.cpp's algorithm, with the
importance weights) from the *updated* weights, optionally improved by the scale search (quant.rounding, K-quants),
which fixes its scales; then its columns are rounded one by one to the nearest level under those scales, each
error fed forward. The levels replace the native ones in the same bytes, so the output is an ordinary block of
that type that every llama.cpp build decodes. Finally, per row, the encoding with the lower calibration error
e^T H e (e = w - ŵ, ŵ decoded natively) is kept: GPTQ's or the one it was given (llama.cpp's), so no row is
worse than llama.cpp's on the calibration statistics.

Whether to use it at all, and with how much damping, is chosen per tensor on held-out data when the statistics
come in two halves (ggufkit.quant.holdout.calibrate_halves): on up to SELECT_ROWS rows spread over the tensor
(the rows are encoded independently of each other, so a row sample estimates the whole tensor), encode with
dampings of DAMPS fitted on the first half's covariance (with the per-row choice on that half) and score tr(E H
E^T) on the second half's (one way: half the fits of scoring both ways); the damping with the lowest held-out
error wins if that error is below llama.cpp's encoding's on the same rows, else the tensor keeps llama.cpp's
bytes. Fitting on half the tokens is the harder case, so the pooled fit the file gets generalises at least as
well as the choice assumed. Without halves (one Statistics), the damping is DAMP for every tensor.

Layouts of the legacy blocks (ggml's block_q*):
    Q4_0 (18 B): d f16 | qs[16]                  value l: low nibble of qs[l], value l+16: high nibble; x = d (q-8)
    Q4_1 (20 B): d f16 | m f16 | qs[16]          x = d q + m
    Q5_0 (22 B): d f16 | qh u32 | qs[16]          bit 4 of value l at bit l of qh; x = d (q-16)
    Q5_1 (24 B): d f16 | m f16 | qh u32 | qs[16] x = d q + m
    Q8_0 (34 B): d f16 | qs[32] i8               x = d q
and of the non-uniform 4-bit ones (KVALUES = llama.cpp's kvalues_iq4nl):
    IQ4_NL (18 B): d f16 | qs[16]                value l: low nibble of qs[l], l+16: high; x = d KVALUES[q]
    IQ4_XS (136 B): d f16 | scales_h u16 | scales_l[4] | qs[128]    8 sub-blocks of 32, sub-block b at
                   qs[16b..16b+15] (nibbles as IQ4_NL); ls = (scales_l[b/2] >> 4(b%2)) & 15 | ((scales_h >> 2b)
                   & 3) << 4, x = (d (ls - 32)) KVALUES[q]
"""
from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType as QT

from ggufkit import quant
from ggufkit.quant import rounding

__all__ = ["DAMP", "DAMPS", "METHOD", "METHOD_HELD_OUT", "SUPPORTED", "ErrorFeedback", "cholesky_factor", "encode_rows",
           "output_error", "output_gain"]

DAMP = 0.5    # added to H's diagonal, as a fraction of its mean (GPTQ's percdamp; see BENCHMARKS.md)
DAMPS = (0.1, 0.3, 1.0, 3.0)   # the dampings tried per tensor on held-out halves
SELECT_ROWS = 256              # rows the per-tensor choice is made on
BATCH = 256   # columns per lazy batch update
# ErrorFeedback's factorisations (held-out fits and the final one) in f32, as GPTQ's reference code does: on
# bench-1b's blk.0.ffn_down (8192 wide, 2048 tokens) the final encoding's calibration error changed by -3e-5
# (Q4_K, damping 0.3) and +3.5e-4 (IQ4_XS, 0.1) relative to f64 with the same per-row choices, at 7.6 instead
# of 13.8 CPU s per factorisation (BENCHMARKS.md, 2026-12-01 late night)
FACTOR_DTYPE = np.float32

# legacy type -> (block bytes, has min, q range as stored, offset of the signed level, has qh)
LEGACY = {
    QT.Q4_0: (18, False, (0, 15), -8, False),
    QT.Q4_1: (20, True, (0, 15), 0, False),
    QT.Q5_0: (22, False, (0, 31), -16, True),
    QT.Q5_1: (24, True, (0, 31), 0, True),
    QT.Q8_0: (34, False, (-128, 127), 0, False),
}
# non-uniform 4-bit types: x = scale * KVALUES[q]; type -> (block bytes, values per block)
IQ4 = {QT.IQ4_NL: (18, 32), QT.IQ4_XS: (136, 256)}
KVALUES = np.array([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113], dtype=np.float32)
SUPPORTED = tuple(rounding.SUPPORTED) + tuple(LEGACY) + tuple(IQ4)
METHOD = f"gptq (damp {DAMP}; " + ", ".join(t.name for t in SUPPORTED) + ")"
METHOD_HELD_OUT = ("gptq (damping per tensor from " + "/".join(map(str, DAMPS)) + " or none, on a held-out "
                   "calibration half; " + ", ".join(t.name for t in SUPPORTED) + ")")


# ---- legacy layouts: bytes <-> (scale, offset, q)


def _legacy_unpack(b: np.ndarray, qtype: QT) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(nb, block bytes) u8 -> d (nb,) f32, m (nb,) f32 (zeros without a min), q (nb, 32) i32 as stored."""
    nbytes, has_min, _, _, has_qh = LEGACY[qtype]
    b = np.ascontiguousarray(b).reshape(-1, nbytes)
    d = b[:, 0:2].copy().view(np.float16)[:, 0].astype(np.float32)
    pos = 2
    m = np.zeros_like(d)
    if has_min:
        m = b[:, 2:4].copy().view(np.float16)[:, 0].astype(np.float32)
        pos = 4
    if qtype == QT.Q8_0:
        return d, m, b[:, 2:34].view(np.int8).astype(np.int32)
    qh = None
    if has_qh:
        qh = b[:, pos:pos + 4].copy().view("<u4")[:, 0].astype(np.int64)
        pos += 4
    qs = b[:, pos:pos + 16].astype(np.int32)
    q = np.concatenate([qs & 15, qs >> 4], axis=1)
    if qh is not None:
        q = q | (((qh[:, None] >> np.arange(32)) & 1) << 4).astype(np.int32)
    return d, m, q


def _legacy_pack(template: np.ndarray, q: np.ndarray, qtype: QT) -> np.ndarray:
    """The blocks of `template` (nb, block bytes) with their levels replaced by q (nb, 32) (as stored)."""
    nbytes, has_min, _, _, has_qh = LEGACY[qtype]
    out = np.ascontiguousarray(template).reshape(-1, nbytes).copy()
    if qtype == QT.Q8_0:
        out[:, 2:34] = q.astype(np.int8).view(np.uint8)
        return out
    pos = 4 if has_min else 2
    if has_qh:
        hi = ((q >> 4) & 1).astype(np.uint64) << np.arange(32, dtype=np.uint64)
        out[:, pos:pos + 4] = np.bitwise_or.reduce(hi, axis=1).astype("<u4").reshape(-1, 1).view(np.uint8)
        pos += 4
    out[:, pos:pos + 16] = ((q[:, :16] & 15) | ((q[:, 16:] & 15) << 4)).astype(np.uint8)
    return out


def _iq4_scales(b: np.ndarray, qtype: QT) -> np.ndarray:
    """(nb, block bytes) u8 -> the scale of every value (nb, values per block) f32."""
    d = b[:, 0:2].copy().view(np.float16)[:, 0].astype(np.float32)
    if qtype == QT.IQ4_NL:
        return np.repeat(d[:, None], 32, axis=1)
    sh = b[:, 2:4].copy().view("<u2")[:, 0].astype(np.int32)
    sl = b[:, 4:8].astype(np.int32)
    sub = np.arange(8)
    ls = ((sl[:, sub // 2] >> (4 * (sub % 2))) & 15) | (((sh[:, None] >> (2 * sub)) & 3) << 4)
    dl = (d[:, None] * (ls - 32).astype(np.float32)).astype(np.float32)       # (nb, 8)
    return np.repeat(dl, 32, axis=1)


def _iq4_pack(template: np.ndarray, q: np.ndarray, qtype: QT) -> np.ndarray:
    """The blocks of `template` with their 4-bit indices replaced by q (nb, values per block)."""
    nbytes, n = IQ4[qtype]
    out = np.ascontiguousarray(template).reshape(-1, nbytes).copy()
    qv = q.reshape(len(out), n // 32, 2, 16)                                   # (nb, sub-block, half, j)
    out[:, nbytes - n // 2:] = (qv[:, :, 0] | (qv[:, :, 1] << 4)).reshape(len(out), n // 2).astype(np.uint8)
    return out


# ---- one block of columns: scales from the bytes, levels by the caller


class _Group:
    """The encoding of one block-wide group of columns for every row: per value the decoder's scale s and
    offset o (x̂ = s q + o, q an integer in [lo, hi]; (g, rows): column-major, as encode_rows works), and how
    to write levels back."""

    def __init__(self, data: np.ndarray, qtype: QT):
        self.qtype, self.data = qtype, data               # (rows, block bytes) u8
        self.table = None
        if qtype in IQ4:
            self.table = KVALUES
            self.s = np.ascontiguousarray(_iq4_scales(data, qtype).T)         # (g, rows) f32
            self.o = np.zeros_like(self.s)
            self.lo, self.hi, self.shift = 0, 15, 0
        elif qtype in LEGACY:
            _, _, (lo, hi), shift, _ = LEGACY[qtype]
            d, m, _ = _legacy_unpack(data, qtype)
            self.lo, self.hi, self.shift = lo + shift, hi + shift, shift
            self.s = np.ascontiguousarray(np.repeat(d[None, :], 32, axis=0))  # (32, rows) f32
            self.o = np.ascontiguousarray(np.repeat(m[None, :], 32, axis=0))
        else:
            f = rounding.FORMS[qtype]
            self.parts = rounding.unpack(data, qtype)
            d, dmin, sc, mm, _ = self.parts
            s, mn = rounding._scales(d, dmin, sc, mm)      # (rows, n_sub) f32
            self.s = np.ascontiguousarray(np.repeat(s.T, f.sub_len, axis=0))  # (256, rows) f32
            self.o = np.ascontiguousarray(-np.repeat(mn.T, f.sub_len, axis=0))
            self.lo, self.hi = f.q_range
            self.shift = 0

    def round(self, w: np.ndarray, j: int) -> tuple[np.ndarray, np.ndarray]:
        """Column j of the group: w (rows,) f32 -> (levels (rows,) i32, decoded (rows,) f32)."""
        s, o = self.s[j], self.o[j]
        if self.table is not None:  # the nearest of the 16 levels
            cand = s[:, None] * self.table[None, :]                            # (rows, 16) f32
            q = np.abs(w[:, None] - cand).argmin(axis=1).astype(np.int32)
            return q, np.take_along_axis(cand, q[:, None], 1)[:, 0]
        with np.errstate(divide="ignore", invalid="ignore"):
            q = np.where(s != 0, np.rint((w - o) / s), 0)
        q = np.clip(q, self.lo, self.hi).astype(np.int32)
        return q, (s * q.astype(np.float32) + o).astype(np.float32)

    def bytes(self, levels: np.ndarray) -> np.ndarray:
        if self.qtype in IQ4:
            return _iq4_pack(self.data, levels, self.qtype)
        if self.qtype in LEGACY:
            return _legacy_pack(self.data, levels - self.shift, self.qtype)
        d, dmin, sc, m, _ = self.parts
        return rounding.pack(d, dmin, sc, m, levels, self.qtype)


def _block_width(qtype: QT) -> int:
    return 32 if qtype in LEGACY or qtype == QT.IQ4_NL else 256


def _invert_lower_(m, base: int = 512) -> None:
    """Inverts a lower triangular torch matrix (n, n) in place, by halves: [[A, 0], [B, C]]^-1 = [[A^-1, 0],
    [-C^-1 B A^-1, C^-1]] (matrix products instead of a triangular solve against an identity: ~20% less CPU;
    memory: the matrix and one (n/2, n/2) product)."""
    import torch

    n = m.shape[0]
    if n <= base:
        m.copy_(torch.linalg.solve_triangular(m, torch.eye(n, dtype=m.dtype), upper=False))
        return
    k = n // 2
    _invert_lower_(m[:k, :k], base)
    _invert_lower_(m[k:, k:], base)
    m[k:, :k] = m[k:, k:] @ (m[k:, :k] @ m[:k, :k])
    m[k:, :k].neg_()


def _reverse_cholesky(h: np.ndarray, damp: float, dtype):
    """The lower L of J (H + damp mean(diag H) I) J = L L^T (J the reversal) as a torch matrix of dtype, with
    columns that never saw an input (H[j, j] = 0) given a unit diagonal; more damping while H is not positive
    definite in float arithmetic. Memory: two (cols, cols) arrays of dtype at a time."""
    import torch

    diag = np.diagonal(h).astype(np.float64)
    dead = np.flatnonzero(diag <= 0)
    mean = float(np.where(diag <= 0, 1.0, diag).mean())
    for attempt in range(6):
        a = torch.flip(torch.from_numpy(np.asarray(h)), (0, 1)).to(torch.float64 if dtype == np.float64
                                                                    else torch.float32)   # J H J, a copy
        rev = a.shape[0] - 1 - torch.from_numpy(dead)
        a[rev, rev] = 1.0
        a.diagonal().add_(damp * (10 ** attempt) * mean)
        lower, info = torch.linalg.cholesky_ex(a)
        del a
        if int(info) == 0 and bool(torch.isfinite(lower).all()):
            yield lower
    raise ValueError("input covariance is not positive definite even with damping")


def inverse_factor(h: np.ndarray, damp: float = DAMP, dtype=np.float64) -> np.ndarray:
    """H (cols, cols) -> the upper Cholesky factor U of (H + damp mean(diag H) I)^-1, (cols, cols) f32. Columns
    that never saw an input (H[j, j] = 0) get a unit diagonal. More damping is added while H is not positive
    definite in float arithmetic. dtype: the precision of the factorisation (f32: half the time and memory, for
    the held-out choice, ErrorFeedback.choose)."""
    import torch

    # U without forming the inverse: with J the reversal, J A J = L L^T (Cholesky) gives A = (J L J)(J L J)^T with
    # J L J upper triangular, so A^-1 = U^T U for the upper U = (J L J)^-1 = J L^-1 J: one Cholesky and one
    # triangular inverse instead of Cholesky, cholesky_inverse and a second Cholesky (torch's cholesky_inverse
    # alone took 44 CPU s for one 8192-wide H; all of it 54 s -> 13 s; U equal to 5e-14). Memory: two (cols, cols)
    # arrays of dtype at a time (the reversed copy of H, then L and its inverse) and U.
    for lower in _reverse_cholesky(h, damp, dtype):
        _invert_lower_(lower)
        upper = torch.flip(lower.to(torch.float32), (0, 1))
        del lower
        if bool(torch.isfinite(upper).all()):
            return upper.numpy()
    raise ValueError("input covariance is not positive definite even with damping")


def cholesky_factor(h: np.ndarray, damp: float = DAMP, dtype=np.float64) -> np.ndarray:
    """H (cols, cols) -> the upper V with H + damp mean(diag H) I = V V^T, (cols, cols) f32: V = U^-1 for
    inverse_factor's U, without the triangular inverse (encode_rows(..., factor="cholesky") runs GPTQ from V:
    about half the CPU time of inverse_factor for an 8192-wide H, BENCHMARKS.md 2026-12-02 morning)."""
    import torch

    for lower in _reverse_cholesky(h, damp, dtype):   # V = J L J
        return torch.flip(lower.to(torch.float32), (0, 1)).numpy()
    raise ValueError("input covariance is not positive definite even with damping")


def _diagonal_inverses(v: np.ndarray, g: int) -> np.ndarray:
    """The inverses of the upper triangular (g, g) diagonal blocks of v (cols, cols) -> (cols // g, g, g) f32:
    the diagonal blocks of U = V^-1 (a triangular matrix's inverse has the inverses of its diagonal blocks)."""
    import torch

    n = v.shape[0] // g
    blocks = np.lib.stride_tricks.as_strided(v, (n, g, g), ((g * v.shape[1] + g) * v.itemsize,
                                                            v.strides[0], v.strides[1]))
    b = torch.from_numpy(np.array(blocks, dtype=np.float64))
    eye = torch.eye(g, dtype=torch.float64).expand(n, g, g)
    return torch.linalg.solve_triangular(b, eye, upper=True).to(torch.float32).numpy()


def encode_rows(w: np.ndarray, qtype, imatrix: np.ndarray | None, u: np.ndarray, search: bool = False,
                threads: int | None = None, reference: bool = False, factor: str = "inverse") -> np.ndarray:
    """GPTQ encoding of rows w (rows, cols) f32 with the inverse-Hessian factor u (cols, cols) (inverse_factor)
    -> (rows, row bytes) u8 of qtype. imatrix: the importance weights the native quantizer (and the scale search,
    search=True, K-quants only) use for each group's scales. The column loop inside each group runs in C
    (native/src/gptq.c); reference=True runs the numpy loop it is tested against (same bytes).

    factor="cholesky": u is instead V = U^-1 (cholesky_factor, H = V V^T), and the same encoding is computed
    without U's off-diagonal blocks. With Δ = W - Q (original weights minus the rounded ones) and Err the scaled
    errors (rows, cols), GPTQ's update w'_k = w_k - sum_{j<k} Err_j U_jk gives Δ = Err U, so Err = Δ V, and for a
    group G after the columns P before it (U's blocks: U_PG = -U_PP V_PG U_GG), the group's starting weights are
    w_G - Err_P U_PG = w_G + (Δ_P V_PG) U_GG. So the lazy batches accumulate Δ_P V_PG (the same GEMMs as with U),
    each group adds that times U_GG (its (g, g) diagonal block, the inverse of V_GG), and the column loop inside
    the group is the one above with U_GG. Equal to the U route up to float rounding (tests/test_gptq.py)."""
    qtype = QT[qtype.upper()] if isinstance(qtype, str) else QT(qtype)
    rows, cols = w.shape
    g = _block_width(qtype)
    chol = factor == "cholesky"
    if factor not in ("inverse", "cholesky") or (chol and reference):
        raise ValueError(f"factor={factor!r} (reference=True needs factor='inverse')")
    wt = np.array(w.T, dtype=np.float32, order="C")        # (cols, rows) f32: a column is contiguous; updated
    ut = np.ascontiguousarray(u)
    if chol:
        ug = _diagonal_inverses(ut, g)                      # (cols // g, g, g): U's diagonal blocks
        acc = np.zeros((cols, rows), dtype=np.float32)      # sum over rounded columns i of Δ_i V_ik
    out = np.empty((rows, quant.row_size(qtype, cols)), dtype=np.uint8)
    gbytes = out.shape[1] // (cols // g)
    for b0 in range(0, cols, BATCH):
        b1 = min(cols, b0 + BATCH)
        err = np.empty((b1 - b0, rows), dtype=np.float32)  # scaled errors of the batch's columns (Δ: cholesky)
        for a in range(b0, b1, g):
            im = None if imatrix is None else imatrix[a:a + g]
            if chol:   # the group's starting weights w_G + (Δ_P V_PG) U_GG, transposed
                ugg = ug[a // g]
                cur = wt[a:a + g] + ugg.T @ acc[a:a + g]
            else:
                cur = wt[a:a + g]
            block = np.ascontiguousarray(cur.T)             # (rows, g) f32
            data = quant.quantize(block, qtype, imatrix=im, threads=threads)
            if search and qtype in rounding.FORMS:
                wb = np.ones(g, np.float32) if im is None else im
                data = rounding.refine_blocks(block, np.broadcast_to(wb, (rows, g)), data, qtype)
            group = _Group(data, qtype)
            levels = np.empty((g, rows), dtype=np.int32)
            if reference:
                for j in range(g):  # column by column inside the group, the error fed to its later columns
                    c = a + j
                    levels[j], decoded = group.round(wt[c], j)
                    e = (wt[c] - decoded) / ut[c, c]
                    err[c - b0] = e
                    if j + 1 < g:
                        wt[c + 1:a + g] -= np.outer(ut[c, c + 1:a + g], e)
            else:  # the same loop in C (native/src/gptq.c: same bytes), rows over threads
                from ggufkit import _quants

                table = None if group.table is None else np.ascontiguousarray(group.table, dtype=np.float32)
                if chol:
                    e = err[a - b0:a - b0 + g]
                    _quants.gptq_group(cur, group.s, group.o, table, group.lo, group.hi, ugg.reshape(-1), g, g,
                                       rows, levels, e, quant._check_threads(threads))
                    # cur holds each column as it was rounded: decoded = cur - e U_cc, Δ = w - decoded
                    e *= np.diagonal(ugg)[:, None]
                    e += wt[a:a + g]
                    e -= cur
                else:
                    _quants.gptq_group(wt[a:a + g], group.s, group.o, table, group.lo, group.hi,
                                       ut[a:a + g].reshape(-1)[a:], cols, g, rows, levels, err[a - b0:a - b0 + g],
                                       quant._check_threads(threads))
            if a + g < b1:  # then the group's errors to the batch's later columns at once
                if chol:
                    acc[a + g:b1] += ut[a:a + g, a + g:b1].T @ err[a - b0:a - b0 + g]
                else:
                    wt[a + g:b1] -= ut[a:a + g, a + g:b1].T @ err[a - b0:a - b0 + g]
            out[:, (a // g) * gbytes:(a // g + 1) * gbytes] = group.bytes(np.ascontiguousarray(levels.T))
        if b1 < cols:
            if chol:
                acc[b1:] += ut[b0:b1, b1:].T @ err
            else:
                wt[b1:] -= ut[b0:b1, b1:].T @ err
    return out


def output_error(x: np.ndarray, data: np.ndarray, qtype, h: np.ndarray) -> np.ndarray:
    """Per row e^T H e for e = x - decode(data): (rows, cols) f32, bytes, H (cols, cols) -> (rows,) f64."""
    e = (x - quant.dequantize(data, qtype, x.shape)).astype(np.float64)
    return np.einsum("rc,rc->r", e @ np.asarray(h, dtype=np.float64), e)


def output_gain(x: np.ndarray, new: np.ndarray, base: np.ndarray, qtype, h: np.ndarray) -> np.ndarray:
    """Per row e_n^T H e_n - e_b^T H e_b for the errors of two encodings of x (negative where `new` is better):
    (rows, cols) f32, bytes, bytes, H (cols, cols) -> (rows,) f64. One product instead of two: with H symmetric,
    the difference is (e_n - e_b)^T H (e_n + e_b), and e_n - e_b = decode(base) - decode(new) is computed
    directly, so f32 is accurate relative to the difference itself (the GEMM's relative error, ~1e-6 sqrt(cols)
    of |e_n - e_b| |H| |e_n + e_b|), not to the two errors: a row's choice can flip only where the two encodings'
    errors agree to about that, where either choice is as good."""
    dn, db = quant.dequantize(new, qtype, x.shape), quant.dequantize(base, qtype, x.shape)
    diff = db - dn                                                   # (rows, cols) f32: e_n - e_b
    both = (x - dn) + (x - db)                                       # e_n + e_b
    return np.einsum("rc,rc->r", diff @ np.asarray(h, dtype=np.float32), both, dtype=np.float64)


def _spread_rows(n: int, k: int) -> np.ndarray:
    """Up to k row indices spread evenly over n rows."""
    return np.arange(n) if n <= k else np.unique(np.linspace(0, n - 1, k).round().astype(int))


class ErrorFeedback:
    """A conversion re-encoder (ggufkit.conversion.Plan.refine): GPTQ for every 2-D tensor of a SUPPORTED type
    that has an input covariance in `stats`; everything else comes back as given. The inverse factors are
    computed once per covariance group (q/k/v and gate/up share one) and damping, as V = U^-1 (cholesky_factor,
    encode_rows(..., factor="cholesky")), and kept only while later tensors of the group can use them (an
    8192-wide group's V is 256 MB).
    stats: ggufkit.quant.calibrate.Statistics (damping `damp` everywhere) or holdout.HalfStatistics (damping and
    whether to use feedback chosen per tensor on the held-out half, module docstring)."""

    def __init__(self, stats, search: bool = False, damp: float = DAMP, threads: int | None = None,
                 damps=DAMPS):
        self.stats, self.search, self.damp, self.threads, self.damps = stats, search, damp, threads, tuple(damps)
        self._group: str | None = None
        self._cache: dict = {}   # for the current group: "h" / "ha" / "hb" -> H, (which, damp) -> U
        self._left: dict[str, int] = {}  # group -> its tensors not encoded yet
        for group in stats.groups.values():
            self._left[group] = self._left.get(group, 0) + 1
        self.rows_kept = 0       # rows where GPTQ's encoding won
        self.rows_total = 0
        self.choices: dict[str, tuple[float | None, float]] = {}  # tensor -> (damping or None, held-out ratio)

    def _get(self, name: str, which: str, damp: float | None = None):
        group = self.stats.groups.get(name)
        if group != self._group:
            self._group, self._cache = group, {}
        if which not in self._cache:
            if which == "h":
                self._cache["h"] = self.stats.hessian(name)
            else:
                self._cache["ha"], self._cache["hb"] = self.stats.halves(name)
        if damp is None:
            return self._cache[which]
        key = (which, damp)
        if key not in self._cache:  # f32 factorisations (FACTOR_DTYPE), V = U^-1: no triangular inverse
            self._cache[key] = cholesky_factor(self._cache[which], damp, FACTOR_DTYPE)
        return self._cache[key]

    def _done(self, name: str) -> None:
        """`name` is encoded: its group's arrays go when no tensor of the group is left."""
        group = self.stats.groups.get(name)
        self._left[group] = self._left.get(group, 1) - 1
        if self._left[group] <= 0 and group == self._group:
            self._group, self._cache = None, {}

    def choose(self, x: np.ndarray, qtype: QT, imatrix, data: np.ndarray, name: str) -> tuple[float | None, float]:
        """(damping, held-out error ratio against `data`): fit on the first half, score on the second, on a row
        sample; damping None when no damping beats `data` on the held-out half.

        Every damping of DAMPS is scored: the held-out error is not unimodal in the damping (bench-1b's
        blk.0.ffn_down at Q4_K: 0.718, 0.673, 0.677, 0.652 of llama.cpp's for 0.1, 0.3, 1, 3), so a search that
        skips some would miss the best. The factorisations are in f32 (FACTOR_DTYPE): with a damping of at least
        0.1 mean(diag H) the factor is accurate to ~1e-4 relative, far below the differences the choice ranks."""
        ha, hb = self._get(name, "ha"), self._get(name, "hb")
        idx = _spread_rows(len(x), SELECT_ROWS)
        xs = np.ascontiguousarray(x[idx])
        base = np.ascontiguousarray(np.ascontiguousarray(data).reshape(len(x), -1)[idx])
        total = float(output_error(xs, base, qtype, hb).sum())
        best, best_ratio = None, 1.0
        for d in sorted(self.damps):
            new = encode_rows(xs, qtype, imatrix, self._get(name, "ha", d), search=self.search, threads=self.threads,
                              factor="cholesky")
            won = output_gain(xs, new, base, qtype, ha) < 0          # the per-row choice, as in __call__
            gain = output_gain(xs[won], new[won], base[won], qtype, hb).sum() if won.any() else 0.0
            ratio = (total + float(gain)) / max(total, 1e-300)
            if ratio < best_ratio:  # the least, below llama.cpp's encoding's (1)
                best, best_ratio = d, ratio
        if self._left.get(self.stats.groups.get(name), 1) <= 1:  # no later tensor of the group needs the halves
            for key in [k for k in self._cache if k in ("ha", "hb") or (isinstance(k, tuple) and k[0] == "ha")]:
                del self._cache[key]
        return best, best_ratio

    def __call__(self, x: np.ndarray, qtype, imatrix, data: np.ndarray, name: str | None = None) -> np.ndarray:
        qtype = QT[qtype.upper()] if isinstance(qtype, str) else QT(qtype)
        if qtype not in SUPPORTED or name is None or x.ndim != 2:
            return data
        group = self.stats.groups.get(name)
        if group is None:
            return data
        try:
            return self._encode(x, qtype, imatrix, data, name)
        finally:
            self._done(name)

    def _encode(self, x: np.ndarray, qtype: QT, imatrix, data: np.ndarray, name: str) -> np.ndarray:
        h = self._get(name, "h")
        if h is None or h.shape[0] != x.shape[1]:
            return data
        if self.search and qtype in rounding.FORMS:  # the given encoding, improved by the scale search, competes
            data = rounding.refine(x, qtype, imatrix, data)
        damp = self.damp
        if hasattr(self.stats, "halves"):
            damp, ratio = self.choose(x, qtype, imatrix, data, name)
            self.choices[name] = (damp, ratio)
            if damp is None:
                self.rows_total += len(x)
                return data
        new = encode_rows(x, qtype, imatrix, self._get(name, "h", damp), search=self.search, threads=self.threads,
                          factor="cholesky")
        data = np.ascontiguousarray(data).reshape(len(x), -1)
        better = output_gain(x, new, data, qtype, h) < 0
        self.rows_kept += int(better.sum())
        self.rows_total += len(better)
        out = data.copy()
        out[better] = new[better]
        return out


def enable(plan, stats, search: bool = True, threads: int | None = None) -> ErrorFeedback:
    """Turn error feedback on for a conversion plan (replaces the scale search's re-encoder: the search runs inside
    each group instead, on the updated weights), and record it in the file."""
    enc = ErrorFeedback(stats, search=search, threads=threads)
    plan.refine = enc
    plan.metadata["ggufkit.optimize.error_feedback"] = METHOD_HELD_OUT if hasattr(stats, "halves") else METHOD
    if search:
        plan.metadata["ggufkit.optimize.rounding"] = rounding.METHOD
    return enc
