// The lane-per-block K-quant quantizers, written once for every SIMD backend: KQ_LANES (8 for AVX2 and NEON, 16
// for AVX-512) 256-float blocks of a row at a time, block b in lane b of a KQ_LANES-lane float vector.
//
// Exactness: lane b performs, for its own block, exactly the float operations of the plain-C fitting in
// quants_k.c, in the same order (sums run element by element within a block; nothing is reordered or
// reassociated). Data-dependent branches become per-lane masks and picks; a lane that the scalar code would skip
// (a `continue`, an early `break`) computes throw-away values that are never picked. Division and sqrt are the
// IEEE-exact instructions, and the including files are built with -ffp-contract=off and use separate multiply and
// add. A backend may replace a step by a shorter one that gives the same value bit for bit, each behind a switch
// that says when it applies (KQ_AFFINE_SHORT: rounding in floats where the range proves it is the magic rounding;
// KQ_DIV_SHARED: division by a shared divisor through its reciprocal and one FMA correction, where the divisor's
// range and the quotient's make it the IEEE quotient; KQ_POSITIVE_LANES, KQ_Q3K_HEADER_LANES: per-block header
// steps in lanes). Without them (AVX2, NEON) the per-block header steps run through the shared plain-C code. The
// per-group fits run here, and so does the packing of Q3_K's and Q6_K's levels (pure data movement). Blocks left over when a row holds fewer than KQ_LANES go through KQ_TAIL(t)
// (the next narrower path: AVX-512 hands them to AVX2, which hands its own leftovers to the plain path).
//
// The including file (quants_k_avx2.c, quants_k_neon.c, quants_k_avx512.c) defines, before including this header:
//   KQ_TARGET                function attribute (target ISA) or nothing
//   KQ_LANES                 lanes per vector (8 or 16)
//   KQ_ROW_NAME(t)           the row entry point's name for type t (kq_quantize_row_<t>_<isa>)
//   KQ_TAIL(t)               the row function that takes the blocks left over (fewer than KQ_LANES)
//   kv, km, kvi              KQ_LANES floats, lane masks, int32
//   v_set v_zero v_add v_sub v_mul v_div v_sqrt v_abs v_neg    float lane arithmetic (IEEE, no fusion)
//   v_gt v_lt v_eq (ordered: false on NaN) v_ne (true on NaN), m_and m_or m_true m_any m_all
//   m_bits(m)                the mask as an int, bit b = lane b
//   v_pick(a, b, m)          m ? b : a per lane
//   v_round_clamp(v, lo, hi) kq_round_magic per lane, clamped to [lo, hi] as an int, returned as an exact float
//   v_round_clamp_small(v, lo, hi)  the same for |v| < 2^22, where kq_round_magic is round-to-nearest-even (a
//                            shorter sequence where the ISA has one); lanes beyond that may differ
//   v_load(p) v_store(p, v)  KQ_LANES consecutive floats
//   vi_from(v)               exact small-integer floats -> int32 lanes;  vi_and vi_or vi_shl vi_shr vi_set
//   to_lanes(src, dst)       KQ_LANES blocks of 256 floats (block b at src + 256b) -> dst[e] lane b = element e
//                            of block b (a generic 8-lane version from transpose8 is below when KQ_LANES is 8)
//   vi_store_block_rows(w, y, stride)  w: 8 kvi, lane b of w[k] = word k of block b -> 32 bytes at y + b*stride
//
// Lane layout (one pass): x[e] lane b = element e of block b, e = 0..255, b = 0..KQ_LANES-1; the packed output
// bytes the same way, bytes[p] lane b = byte p of block b, then transposed 32 bytes at a time into the blocks.
#ifndef GGUFKIT_QUANTS_K_LANES_H
#define GGUFKIT_QUANTS_K_LANES_H

#include <math.h>
#include <string.h>

#include "quants_k_internal.h"

// ---- transposes between block-major rows and lane-major vectors

#if KQ_LANES == 8
// src: 8 blocks of 256 floats, block b at src + b*256 -> dst[e] = element e of the 8 blocks (lane b = block b).
KQ_TARGET static void to_lanes(const float *src, kv *dst) {
    for (int e = 0; e < 256; e += 8) {
        kv rows[8];
        for (int b = 0; b < KQ_LANES; b++) rows[b] = v_load(src + 256 * b + e);
        transpose8(rows, dst + e);
    }
}
#endif

// (256, KQ_LANES) lane-major levels (exact small integers as floats) -> lane b's 256 levels as bytes.
KQ_TARGET static void lane_levels_u8(const kv *q, int lane, uint8_t *out) {
    const float *f = (const float *)q;
    for (int e = 0; e < 256; e++) out[e] = (uint8_t)(int)f[KQ_LANES * e + lane];
}

// Packed bytes in lanes -> blocks: bytes[p] lane b is byte p of block b (0..255), n a multiple of 32; byte p goes
// to y + b*stride + p.
KQ_TARGET static void store_lane_bytes(const kvi *bytes, int n, uint8_t *y, int stride) {
    for (int c = 0; c < n; c += 32) {
        kvi words[8];  // lane b of words[k]: bytes c+4k .. c+4k+3 of block b, little-endian
        for (int k = 0; k < 8; k++) {
            const kvi *p = bytes + c + 4 * k;
            words[k] = vi_or(vi_or(p[0], vi_shl(p[1], 8)), vi_or(vi_shl(p[2], 16), vi_shl(p[3], 24)));
        }
        vi_store_block_rows(words, y + c, stride);
    }
}

// ---- fitting, KQ_LANES groups at once (see the plain versions in quants_k.c for what each computes)

// kq_fit_affine per lane, KQ_AFFINE_GROUPS groups at once (x, w and q hold them one after another, n each); q[i]
// receives the levels as floats. Each trial's steps depend on the one before through the running min, and the sums
// and errors are chains of adds, so a single group leaves the vector units idle between trials; G independent
// groups interleaved element by element fill them. Per group the operations and their order are kq_fit_affine's.
//
// Short rounding (KQ_AFFINE_SHORT, where the backend has v_round_small, v_minf and v_maxf): a level is
// clamp(round(t * (x[i] - min)), 0, nmax) with t > 0, and x[i] - min lies in [xmin - min, max - min] (rounding is
// monotone), so bottom = t * (xmin - min) <= the rounded product <= top = t * (max - min). When every lane that is
// not flat has both inside (-2^22, 2^22) (for t = inf or NaN, top is inf or NaN and fails the test), the
// magic-number rounding is round-to-nearest-even, which v_round_small does in floats; the clamp at 0 is needed only
// if some bottom <= -0.5, the one at nmax only if some top >= nmax + 0.5 (most trials stretch the range by less).
// Flat lanes (max == min) compute throw-away levels and are discarded at the end.
#ifndef KQ_AFFINE_SHORT
#define KQ_AFFINE_SHORT 0
#endif
#ifndef KQ_DIV_SHARED
#define KQ_DIV_SHARED 0  // see requantize_v
#endif
#ifndef KQ_AFFINE_GROUPS
#define KQ_AFFINE_GROUPS 1
#endif
// rounding modes: FULL (kq_round_magic and clamp), or SHORT plus the clamps that are needed
enum { KQ_ROUND_FULL = 0, KQ_ROUND_SHORT = 1, KQ_CLAMP_LO = 2, KQ_CLAMP_HI = 4 };

#if KQ_AFFINE_SHORT
KQ_TARGET static inline int affine_round_mode(kv t, kv max, kv min, kv xmin, km flat, int nmax) {
    const kv top = v_mul(t, v_sub(max, min)), bottom = v_mul(t, v_sub(xmin, min));
    const kv big = v_set(4194304.0f);
    if (!m_all(m_or(m_and(v_lt(top, big), v_gt(bottom, v_neg(big))), flat))) return KQ_ROUND_FULL;
    const int flat_bits = m_bits(flat);
    const int lo = (m_bits(v_gt(bottom, v_set(-0.5f))) | flat_bits) == m_bits(m_true()) ? 0 : KQ_CLAMP_LO;
    const int hi = (m_bits(v_lt(top, v_set((float)nmax + 0.5f))) | flat_bits) == m_bits(m_true()) ? 0 : KQ_CLAMP_HI;
    return KQ_ROUND_SHORT | lo | hi;
}
#define KQ_AFFINE_LEVEL(v, nmax, mode)                                                                          \
    ((mode) == KQ_ROUND_FULL ? v_round_clamp(v, 0, nmax)                                                       \
     : (mode) == (KQ_ROUND_SHORT | KQ_CLAMP_LO | KQ_CLAMP_HI)                                                    \
         ? v_maxf(v_minf(v_round_small(v), v_set((float)(nmax))), v_zero())                                     \
     : (mode) == (KQ_ROUND_SHORT | KQ_CLAMP_LO) ? v_maxf(v_round_small(v), v_zero())                            \
     : (mode) == (KQ_ROUND_SHORT | KQ_CLAMP_HI) ? v_minf(v_round_small(v), v_set((float)(nmax)))                \
                                                : v_round_small(v))
#else
#define KQ_AFFINE_LEVEL(v, nmax, mode) v_round_clamp(v, 0, nmax)
#endif

// One trial of the range-stretch search for G groups: levels for scale t[g] against min[g], and the weighted sums.
__attribute__((always_inline)) KQ_TARGET static inline void affine_trial_sums(const int G, int n, int nmax,
                                                                               const kv *x, const kv *w,
                                                                               const kv *t, const kv *min, kv *tq,
                                                                               kv *sum_l, kv *sum_l2, kv *sum_xl,
                                                                               const int mode) {
    for (int g = 0; g < G; g++) sum_l[g] = sum_l2[g] = sum_xl[g] = v_zero();
    for (int i = 0; i < n; i++) {
        for (int g = 0; g < G; g++) {
            const int e = n * g + i;
            const kv l = KQ_AFFINE_LEVEL(v_mul(t[g], v_sub(x[e], min[g])), nmax, mode);
            tq[e] = l;
            const kv wl = v_mul(w[e], l);
            sum_l[g] = v_add(sum_l[g], wl);
            sum_l2[g] = v_add(sum_l2[g], v_mul(wl, l));
            sum_xl[g] = v_add(sum_xl[g], v_mul(wl, x[e]));
        }
    }
}

// The mode shared by the G groups (the union of the clamps each needs; FULL if any needs it), then the trial.
__attribute__((always_inline)) KQ_TARGET static inline void affine_trial(const int G, int n, int nmax, const kv *x,
                                                                          const kv *w, const kv *t, const kv *max,
                                                                          const kv *min, const kv *xmin,
                                                                          const km *flat, kv *tq, kv *sum_l,
                                                                          kv *sum_l2, kv *sum_xl) {
#if KQ_AFFINE_SHORT
    int mode = KQ_ROUND_SHORT;
    for (int g = 0; g < G && mode != KQ_ROUND_FULL; g++) {
        const int m = affine_round_mode(t[g], max[g], min[g], xmin[g], flat[g], nmax);
        mode = m == KQ_ROUND_FULL ? KQ_ROUND_FULL : mode | m;
    }
    switch (mode) {
    case KQ_ROUND_SHORT:
        affine_trial_sums(G, n, nmax, x, w, t, min, tq, sum_l, sum_l2, sum_xl, KQ_ROUND_SHORT);
        return;
    case KQ_ROUND_SHORT | KQ_CLAMP_LO:
        affine_trial_sums(G, n, nmax, x, w, t, min, tq, sum_l, sum_l2, sum_xl, KQ_ROUND_SHORT | KQ_CLAMP_LO);
        return;
    case KQ_ROUND_SHORT | KQ_CLAMP_HI:
        affine_trial_sums(G, n, nmax, x, w, t, min, tq, sum_l, sum_l2, sum_xl, KQ_ROUND_SHORT | KQ_CLAMP_HI);
        return;
    case KQ_ROUND_SHORT | KQ_CLAMP_LO | KQ_CLAMP_HI:
        affine_trial_sums(G, n, nmax, x, w, t, min, tq, sum_l, sum_l2, sum_xl,
                          KQ_ROUND_SHORT | KQ_CLAMP_LO | KQ_CLAMP_HI);
        return;
    default: break;
    }
#else
    (void)max, (void)xmin, (void)flat;
#endif
    affine_trial_sums(G, n, nmax, x, w, t, min, tq, sum_l, sum_l2, sum_xl, KQ_ROUND_FULL);
}

__attribute__((always_inline)) KQ_TARGET static inline void fit_affine_gv(const int G, int n, int nmax, const kv *x,
                                                                           const kv *w, kv *q, kv *neg_min_out,
                                                                           kv *scale_out, float rmin, float rdelta,
                                                                           int nstep, int use_mad) {
    kv trial_q[KQ_AFFINE_GROUPS * 32];
    const kv zero = v_zero();
    kv min[KQ_AFFINE_GROUPS], max[KQ_AFFINE_GROUPS], sum_w[KQ_AFFINE_GROUPS], sum_x[KQ_AFFINE_GROUPS];
    kv flat_neg_min[KQ_AFFINE_GROUPS], scale[KQ_AFFINE_GROUPS], best_err[KQ_AFFINE_GROUPS];
    kv xmin[KQ_AFFINE_GROUPS], inv[KQ_AFFINE_GROUPS], best_t[KQ_AFFINE_GROUPS], best_m[KQ_AFFINE_GROUPS];
    kv sum_l[KQ_AFFINE_GROUPS], sum_l2[KQ_AFFINE_GROUPS], sum_xl[KQ_AFFINE_GROUPS];
    km flat[KQ_AFFINE_GROUPS];
    for (int g = 0; g < G; g++) {
        const kv *xg = x + n * g, *wg = w + n * g;
        min[g] = xg[0];
        max[g] = xg[0];
        sum_w[g] = wg[0];
        sum_x[g] = v_mul(sum_w[g], xg[0]);
    }
    for (int i = 1; i < n; i++) {
        for (int g = 0; g < G; g++) {
            const kv xi = x[n * g + i], wi = w[n * g + i];
            min[g] = v_pick(min[g], xi, v_lt(xi, min[g]));
            max[g] = v_pick(max[g], xi, v_gt(xi, max[g]));
            sum_w[g] = v_add(sum_w[g], wi);
            sum_x[g] = v_add(sum_x[g], v_mul(wi, xi));
        }
    }
    for (int g = 0; g < G; g++) {
        xmin[g] = min[g];
        min[g] = v_pick(min[g], zero, v_gt(min[g], zero));
        flat[g] = v_eq(max[g], min[g]);
        flat_neg_min[g] = v_neg(min[g]);
        inv[g] = v_div(v_set((float)nmax), v_sub(max[g], min[g]));
        scale[g] = v_div(v_set(1.0f), inv[g]);
        best_err[g] = zero;
        best_t[g] = inv[g];
        best_m[g] = min[g];
    }
    affine_trial(G, n, nmax, x, w, inv, max, min, xmin, flat, q, sum_l, sum_l2, sum_xl);  // sums unused
    for (int i = 0; i < n; i++) {
        for (int g = 0; g < G; g++) {
            const int e = n * g + i;
            kv diff = v_sub(v_add(v_mul(scale[g], q[e]), min[g]), x[e]);
            diff = use_mad ? v_abs(diff) : v_mul(diff, diff);
            best_err[g] = v_add(best_err[g], v_mul(w[e], diff));
        }
    }
    for (int k = 0; k <= nstep; k++) {
        // min is the best fit so far: it moves when a trial is taken, and so do the range and the levels
        kv trial[KQ_AFFINE_GROUPS];
        for (int g = 0; g < G; g++) trial[g] = v_div(v_set(rmin + rdelta * k + nmax), v_sub(max[g], min[g]));
        affine_trial(G, n, nmax, x, w, trial, max, min, xmin, flat, trial_q, sum_l, sum_l2, sum_xl);
        km solvable[KQ_AFFINE_GROUPS];
        kv t_scale[KQ_AFFINE_GROUPS], t_min[KQ_AFFINE_GROUPS], err[KQ_AFFINE_GROUPS];
        int any = 0;
        for (int g = 0; g < G; g++) {
            const kv det = v_sub(v_mul(sum_w[g], sum_l2[g]), v_mul(sum_l[g], sum_l[g]));
            solvable[g] = v_gt(det, zero);
            any |= m_any(solvable[g]);
            t_scale[g] = v_div(v_sub(v_mul(sum_w[g], sum_xl[g]), v_mul(sum_x[g], sum_l[g])), det);
            t_min[g] = v_div(v_sub(v_mul(sum_l2[g], sum_x[g]), v_mul(sum_l[g], sum_xl[g])), det);
            const km positive_min = v_gt(t_min[g], zero);
            t_min[g] = v_pick(t_min[g], zero, positive_min);
            t_scale[g] = v_pick(t_scale[g], v_div(sum_xl[g], sum_l2[g]), positive_min);
            err[g] = zero;
        }
        if (!any) continue;
        for (int i = 0; i < n; i++) {
            for (int g = 0; g < G; g++) {
                const int e = n * g + i;
                kv diff = v_sub(v_add(v_mul(t_scale[g], trial_q[e]), t_min[g]), x[e]);
                diff = use_mad ? v_abs(diff) : v_mul(diff, diff);
                err[g] = v_add(err[g], v_mul(w[e], diff));
            }
        }
        for (int g = 0; g < G; g++) {
            const km take = m_and(solvable[g], v_lt(err[g], best_err[g]));
            best_err[g] = v_pick(best_err[g], err[g], take);
            best_t[g] = v_pick(best_t[g], trial[g], take);
            best_m[g] = v_pick(best_m[g], min[g], take);
            scale[g] = v_pick(scale[g], t_scale[g], take);
            min[g] = v_pick(min[g], t_min[g], take);
        }
    }
    // the levels of the trial taken last (or the start), from its scale and the min it was computed against: the
    // same function of (t, min, x) the trials computed, whichever rounding they took
    for (int g = 0; g < G; g++) {
        for (int i = 0; i < n; i++)
            q[n * g + i] = v_pick(v_round_clamp(v_mul(best_t[g], v_sub(x[n * g + i], best_m[g])), 0, nmax), zero,
                                  flat[g]);
        neg_min_out[g] = v_pick(v_neg(min[g]), flat_neg_min[g], flat[g]);
        scale_out[g] = v_pick(scale[g], zero, flat[g]);
    }
}

// KQ_AFFINE_GROUPS groups of n at x, w, q (one after another): scales and negated mins to scales[g], neg_mins[g].
KQ_TARGET static void fit_affine_v(int n, int nmax, const kv *x, const kv *w, kv *q, kv *neg_mins, kv *scales,
                                   float rmin, float rdelta, int nstep, int use_mad) {
    fit_affine_gv(KQ_AFFINE_GROUPS, n, nmax, x, w, q, neg_mins, scales, rmin, rdelta, nstep, use_mad);
}

// Largest magnitude per lane and the signed value holding it (first occurrence wins, like the scalar scan).
KQ_TARGET static void signed_absmax_v(int n, const kv *x, kv *amax, kv *max) {
    kv a_best = v_zero(), m_best = v_zero();
    for (int i = 0; i < n; i++) {
        const kv a = v_abs(x[i]);
        const km bigger = v_gt(a, a_best);
        a_best = v_pick(a_best, a, bigger);
        m_best = v_pick(m_best, x[i], bigger);
    }
    *amax = a_best;
    *max = m_best;
}

// kq_fit_symmetric per lane (w == NULL: weights x^2), n <= 16. q[i] receives the levels (offset by nmax) as
// floats. w*x and (for w == NULL) x*x are computed once: the scalar code's w * x[i] * l is (w * x[i]) * l, the
// same rounding. A trial's levels are recomputed when it is taken instead of being stored for every trial.
// data != 0: x are a block's (finite) values. Then every rounded product is small: trial = -(nmax + 0.1k) / max with
// max the value of largest magnitude, so |trial * x[i]| <= nmax + 0.9 (lanes with max ~ 0 are discarded), and the
// short rounding is exact. data == 0 (the fit of Q3_K's group scales, which may be inf or NaN): the full rounding.
#define KQ_ROUND_SYM(v, lo, hi) (data ? v_round_clamp_small(v, lo, hi) : v_round_clamp(v, lo, hi))

// Trials of the symmetric fit computed together (KQ_SYM_TRIALS: 1, 2, 3, 6 or 9): each trial's sums are two chains
// of n dependent adds and the take that follows waits on them; interleaving trials fills the vector units between.
#ifndef KQ_SYM_TRIALS
#define KQ_SYM_TRIALS 1
#endif

#if KQ_AFFINE_SHORT
// Which clamps a trial of the symmetric fit needs (its products lie between trial * xhi and trial * xlo): below,
// where some lane reaches -nmax - 0.5 (rounding to -nmax - 1 or beyond), above where one reaches nmax - 0.5.
// KQ_ROUND_SHORT | KQ_CLAMP_LO | KQ_CLAMP_HI is returned as KQ_ROUND_FULL (the cvtps2dq sequence is as short).
KQ_TARGET static inline int symmetric_round_mode(kv trial, kv xhi, kv xlo, km all_zero, int nmax) {
    const kv a = v_mul(trial, xhi), b = v_mul(trial, xlo);
    const kv lower = v_pick(a, b, v_lt(b, a)), upper = v_pick(a, b, v_gt(b, a));
    const int skip = m_bits(all_zero), all = m_bits(m_true());
    const int lo = (m_bits(v_gt(lower, v_set(-(float)nmax - 0.5f))) | skip) == all ? 0 : KQ_CLAMP_LO;
    const int hi = (m_bits(v_lt(upper, v_set((float)nmax - 0.5f))) | skip) == all ? 0 : KQ_CLAMP_HI;
    return lo && hi ? KQ_ROUND_FULL : KQ_ROUND_SHORT | lo | hi;
}

// T trials at once, their chains of adds interleaved, with the clamps any of them needs (a clamp that no lane
// reaches changes nothing).
__attribute__((always_inline)) KQ_TARGET static inline void symmetric_trial_sums(const int T, int n, int nmax,
                                                                                  const kv *x, const kv *w,
                                                                                  const kv *wx, const kv *trial,
                                                                                  kv *tlx, kv *tl2, const int mode) {
    for (int t = 0; t < T; t++) tlx[t] = tl2[t] = v_zero();
    for (int i = 0; i < n; i++) {
        for (int t = 0; t < T; t++) {
            kv l = v_round_small(v_mul(trial[t], x[i]));
            if (mode & KQ_CLAMP_LO) l = v_maxf(l, v_set((float)-nmax));
            if (mode & KQ_CLAMP_HI) l = v_minf(l, v_set((float)(nmax - 1)));
            tlx[t] = v_add(tlx[t], v_mul(wx[i], l));
            tl2[t] = v_add(tl2[t], v_mul(v_mul(w[i], l), l));
        }
    }
}
#endif

KQ_TARGET static kv fit_symmetric_v(int n, int nmax, const kv *x, const kv *w_in, kv *q, int data) {
    kv w[16], wx[16];
    const kv zero = v_zero(), offset = v_set((float)nmax);
    kv amax, max;
    signed_absmax_v(n, x, &amax, &max);
    const km all_zero = v_lt(amax, v_set(1e-15f));
    for (int i = 0; i < n; i++) {
        w[i] = w_in ? w_in[i] : v_mul(x[i], x[i]);
        wx[i] = v_mul(w[i], x[i]);
    }
    const kv inv = v_div(v_set((float)-nmax), max);
#if KQ_DIV_SHARED
    // the 18 trial scales c / max by one division and a correction each (requantize_v says when that is exact):
    // lanes that are all zero (discarded) divide by 1 instead
    const kv max_n = v_pick(max, v_set(1.0f), all_zero), amax_n = v_abs(max_n);
    const int shared = m_all(m_and(v_lt(amax_n, v_set(0x1p64f)), v_gt(amax_n, v_set(0x1p-64f))));
    const kv r_max = v_div(v_set(1.0f), max_n);
#endif
    kv sumlx = zero, suml2 = zero;
    for (int i = 0; i < n; i++) {
        const kv l = KQ_ROUND_SYM(v_mul(inv, x[i]), -nmax, nmax - 1);
        sumlx = v_add(sumlx, v_mul(wx[i], l));
        suml2 = v_add(suml2, v_mul(v_mul(w[i], l), l));
    }
    kv scale = v_pick(zero, v_div(sumlx, suml2), v_ne(suml2, zero));
    kv best = v_mul(scale, sumlx), best_t = inv;
#if KQ_AFFINE_SHORT
    kv xhi = x[0], xlo = x[0];  // the largest and smallest value: trial * x lies between their products
    for (int i = 1; i < n; i++) {
        xhi = v_pick(xhi, x[i], v_gt(x[i], xhi));
        xlo = v_pick(xlo, x[i], v_lt(x[i], xlo));
    }
#endif
    // the 18 trials k = -9..-1, 1..9, KQ_SYM_TRIALS at a time; the takes in order of k
    for (int j = 0; j < 18; j += KQ_SYM_TRIALS) {
        kv trial[KQ_SYM_TRIALS], tlx[KQ_SYM_TRIALS], tl2[KQ_SYM_TRIALS];
        for (int t = 0; t < KQ_SYM_TRIALS; t++) {
            const int k = j + t < 9 ? j + t - 9 : j + t - 8;
#if KQ_DIV_SHARED
            trial[t] = shared ? v_div_recip(v_set(-(nmax + 0.1f * k)), max_n, r_max)
                              : v_div(v_set(-(nmax + 0.1f * k)), max);
#else
            trial[t] = v_div(v_set(-(nmax + 0.1f * k)), max);
#endif
        }
#if KQ_AFFINE_SHORT
        // data: every product is below 2^22 (above), so round_small is the magic rounding; the clamps at -nmax and
        // nmax - 1 only where some lane that is not all zero reaches -nmax - 0.5 or nmax - 0.5 in one of the trials
        int mode = KQ_ROUND_SHORT;
        for (int t = 0; t < KQ_SYM_TRIALS && mode != KQ_ROUND_FULL; t++) {
            const int m = data ? symmetric_round_mode(trial[t], xhi, xlo, all_zero, nmax) : KQ_ROUND_FULL;
            mode = m == KQ_ROUND_FULL || (mode | m) == (KQ_ROUND_SHORT | KQ_CLAMP_LO | KQ_CLAMP_HI) ? KQ_ROUND_FULL
                                                                                                    : mode | m;
        }
        switch (mode) {
        case KQ_ROUND_SHORT:
            symmetric_trial_sums(KQ_SYM_TRIALS, n, nmax, x, w, wx, trial, tlx, tl2, KQ_ROUND_SHORT);
            break;
        case KQ_ROUND_SHORT | KQ_CLAMP_LO:
            symmetric_trial_sums(KQ_SYM_TRIALS, n, nmax, x, w, wx, trial, tlx, tl2, KQ_ROUND_SHORT | KQ_CLAMP_LO);
            break;
        case KQ_ROUND_SHORT | KQ_CLAMP_HI:
            symmetric_trial_sums(KQ_SYM_TRIALS, n, nmax, x, w, wx, trial, tlx, tl2, KQ_ROUND_SHORT | KQ_CLAMP_HI);
            break;
        default:
#endif
            for (int t = 0; t < KQ_SYM_TRIALS; t++) tlx[t] = tl2[t] = zero;
            for (int i = 0; i < n; i++) {
                for (int t = 0; t < KQ_SYM_TRIALS; t++) {
                    const kv l = KQ_ROUND_SYM(v_mul(trial[t], x[i]), -nmax, nmax - 1);
                    tlx[t] = v_add(tlx[t], v_mul(wx[i], l));
                    tl2[t] = v_add(tl2[t], v_mul(v_mul(w[i], l), l));
                }
            }
#if KQ_AFFINE_SHORT
        }
#endif
        for (int t = 0; t < KQ_SYM_TRIALS; t++) {
            const km take = m_and(v_gt(tl2[t], zero), v_gt(v_mul(tlx[t], tlx[t]), v_mul(best, tl2[t])));
            const kv t_scale = v_div(tlx[t], tl2[t]);
            scale = v_pick(scale, t_scale, take);
            best = v_pick(best, v_mul(t_scale, tlx[t]), take);
            best_t = v_pick(best_t, trial[t], take);
        }
    }
    // the levels of the trial taken last (or the start): the same function of (t, x) the trials computed
    for (int i = 0; i < n; i++)
        q[i] = v_pick(v_add(KQ_ROUND_SYM(v_mul(best_t, x[i]), -nmax, nmax - 1), offset), zero, all_zero);
    return v_pick(scale, zero, all_zero);
}

// kq_fit_symmetric_descent per lane for Q3_K (16 values, nmax 4), on KQ_DESCENT_GROUPS groups at once: x and q
// hold the groups one after another (16 each). A group's lane stops after the first pass that changes none of its
// levels. Each step of the descent depends on the one before (the running sums), so the groups are interleaved
// element by element: independent chains the CPU can overlap.
// Most groups (~80% of normal data) move no level in their first pass and are done; in lanes, a pass runs while
// any of the KQ_LANES x KQ_DESCENT_GROUPS groups still moves, which took 3.2 passes on average for 8 lanes (3.6
// for 16) where the plain code takes 1.25. So the lanes run KQ_DESCENT_LANE_PASSES passes, and the groups still
// moving after them continue one by one through the plain pass (kq_descent_pass: the same operations). The
// including file may set KQ_DESCENT_LANE_PASSES (default 1) and KQ_DESCENT_GROUPS (default 4, divides 16).
#ifndef KQ_DESCENT_GROUPS
#define KQ_DESCENT_GROUPS 4
#endif
#ifndef KQ_DESCENT_LANE_PASSES
#define KQ_DESCENT_LANE_PASSES 1
#endif

KQ_TARGET static void fit_descent_v(const kv *x, kv *q, kv *scales) {
    enum { N = 16, NMAX = 4, G = KQ_DESCENT_GROUPS };
    const kv zero = v_zero();
    kv w[G * N], wx[G * N], sumlx[G], suml2[G];
    km all_zero[G], active[G];
    for (int g = 0; g < G; g++) {
        const kv *xg = x + N * g;
        kv amax, max;
        signed_absmax_v(N, xg, &amax, &max);
        all_zero[g] = v_lt(amax, v_set(1e-15f));
        const kv inv = v_div(v_set((float)-NMAX), max);
        sumlx[g] = zero;
        suml2[g] = zero;
        for (int i = 0; i < N; i++) {
            kv *qi = q + N * g + i;
            *qi = v_round_clamp_small(v_mul(inv, xg[i]), -NMAX, NMAX - 1);  // |inv * x| <= 4
            w[N * g + i] = v_mul(xg[i], xg[i]);
            wx[N * g + i] = v_mul(w[N * g + i], xg[i]);
            sumlx[g] = v_add(sumlx[g], v_mul(wx[N * g + i], *qi));
            suml2[g] = v_add(suml2[g], v_mul(v_mul(w[N * g + i], *qi), *qi));
        }
        active[g] = m_true();
    }
    for (int pass = 0; pass < KQ_DESCENT_LANE_PASSES; pass++) {
        km changed[G], any = active[0];
        for (int g = 1; g < G; g++) any = m_or(any, active[g]);
        if (!m_any(any)) break;
        for (int g = 0; g < G; g++) changed[g] = v_lt(zero, zero);
        for (int i = 0; i < N; i++) {
            for (int g = 0; g < G; g++) {
                const int e = N * g + i;
                kv slx = v_sub(sumlx[g], v_mul(wx[e], q[e]));
                const km can = v_gt(slx, zero);
                kv sl2 = v_sub(suml2[g], v_mul(v_mul(w[e], q[e]), q[e]));
                const kv l = v_round_clamp(v_div(v_mul(x[e], sl2), slx), -NMAX, NMAX - 1);
                const km differs = v_ne(l, q[e]);
                slx = v_add(slx, v_mul(wx[e], l));
                sl2 = v_add(sl2, v_mul(v_mul(w[e], l), l));
                const km better = m_and(v_gt(sl2, zero), v_gt(v_mul(v_mul(slx, slx), suml2[g]),
                                                              v_mul(v_mul(sumlx[g], sumlx[g]), sl2)));
                const km take = m_and(m_and(active[g], can), m_and(differs, better));
                q[e] = v_pick(q[e], l, take);
                sumlx[g] = v_pick(sumlx[g], slx, take);
                suml2[g] = v_pick(suml2[g], sl2, take);
                changed[g] = m_or(changed[g], take);
            }
        }
        for (int g = 0; g < G; g++) active[g] = m_and(active[g], changed[g]);
    }
    for (int g = 0; g < G; g++) {
        const int moving = m_bits(active[g]) & ~m_bits(all_zero[g]);  // all-zero lanes are discarded anyway
        if (!moving) continue;
        float slx_f[KQ_LANES], sl2_f[KQ_LANES];
        v_store(slx_f, sumlx[g]);
        v_store(sl2_f, suml2[g]);
        float *qf = (float *)(q + N * g);  // (16, KQ_LANES) lane-major
        const float *xf = (const float *)(x + N * g);
        for (int b = 0; b < KQ_LANES; b++) {
            if (!(moving >> b & 1)) continue;
            float xs[N];
            int8_t qs[N];
            for (int i = 0; i < N; i++) {
                xs[i] = xf[KQ_LANES * i + b];
                qs[i] = (int8_t)qf[KQ_LANES * i + b];
            }
            for (int pass = KQ_DESCENT_LANE_PASSES; pass < KQ_DESCENT_PASSES; pass++)
                if (!kq_descent_pass(N, NMAX, xs, qs, &slx_f[b], &sl2_f[b])) break;
            for (int i = 0; i < N; i++) qf[KQ_LANES * i + b] = (float)qs[i];
        }
        sumlx[g] = v_load(slx_f);
        suml2[g] = v_load(sl2_f);
    }
    const kv offset = v_set((float)NMAX);
    for (int g = 0; g < G; g++) {
        for (int i = 0; i < N; i++) q[N * g + i] = v_pick(v_add(q[N * g + i], offset), zero, all_zero[g]);
        const kv scale = v_pick(zero, v_div(sumlx[g], suml2[g]), v_gt(suml2[g], zero));
        scales[g] = v_pick(scale, zero, all_zero[g]);
    }
}

// kq_fit_positive per lane (KQ_POSITIVE_LANES, where the backend has v_round_byte and v_wrap_byte): the super-block
// scale of a block's group scales (or mins), n <= 16 values per lane; q[i] receives the levels as the scalar
// code's bytes, as floats. The scalar code keeps int levels (clamped above only, so a negative value gives a
// negative level) where it sums and compares, and bytes (wrapped) where it stores: both are kept here. The
// descent stops when no lane changed in a pass: a pass that changes nothing leaves its lane as it was, so running
// more of them on a lane the scalar code has stopped is a no-op.
#ifndef KQ_POSITIVE_LANES
#define KQ_POSITIVE_LANES 0
#endif
#if KQ_POSITIVE_LANES
KQ_TARGET static kv fit_positive_v(int n, int nmax, const kv *x, const kv *w, kv *q) {
    const kv zero = v_zero();
    const int lowest = -0x400000;  // kq_round_magic's smallest result: a clamp there is none
    kv max = zero;
    for (int i = 0; i < n; i++) max = v_pick(x[i], max, v_gt(max, x[i]));
    const km all_zero = v_lt(max, v_set(1e-15f));
    kv inv = v_div(v_set((float)nmax), max);
    for (int i = 0; i < n; i++) q[i] = v_round_byte(v_mul(inv, x[i]));
    const kv scale = v_div(v_set(1.0f), inv);
    kv best_err = zero;
    for (int i = 0; i < n; i++) {
        const kv diff = v_sub(x[i], v_mul(scale, q[i]));
        best_err = v_add(best_err, v_mul(v_mul(w[i], diff), diff));
    }
    for (int k = -4; k <= 4; k++) {
        if (k == 0) continue;
        const kv t_inv = v_div(v_set(0.1f * k + nmax), max);
        const kv t_scale = v_div(v_set(1.0f), t_inv);
        kv err = zero;
        for (int i = 0; i < n; i++) {
            const kv l = v_round_clamp(v_mul(t_inv, x[i]), lowest, nmax);
            const kv diff = v_sub(x[i], v_mul(t_scale, l));
            err = v_add(err, v_mul(v_mul(w[i], diff), diff));
        }
        const km better = v_lt(err, best_err);
        best_err = v_pick(best_err, err, better);
        inv = v_pick(inv, t_inv, better);
    }
    kv sumlx = zero, suml2 = zero, wx[16];
    for (int i = 0; i < n; i++) {
        const kv l = v_round_clamp(v_mul(inv, x[i]), lowest, nmax);
        q[i] = v_wrap_byte(l);
        wx[i] = v_mul(w[i], x[i]);
        sumlx = v_add(sumlx, v_mul(wx[i], l));
        suml2 = v_add(suml2, v_mul(v_mul(w[i], l), l));
    }
    for (int pass = 0; pass < 5; pass++) {
        km changed = v_lt(zero, zero);
        for (int i = 0; i < n; i++) {
            kv slx = v_sub(sumlx, v_mul(wx[i], q[i]));
            kv sl2 = v_sub(suml2, v_mul(v_mul(w[i], q[i]), q[i]));
            const km can = m_and(v_gt(slx, zero), v_gt(sl2, zero));
            const kv l = v_round_clamp(v_div(v_mul(x[i], sl2), slx), lowest, nmax);
            const km differs = v_ne(l, q[i]);
            slx = v_add(slx, v_mul(wx[i], l));
            sl2 = v_add(sl2, v_mul(v_mul(w[i], l), l));
            const km better = v_gt(v_mul(v_mul(slx, slx), suml2), v_mul(v_mul(sumlx, sumlx), sl2));
            const km take = m_and(m_and(can, differs), better);
            q[i] = v_pick(q[i], v_wrap_byte(l), take);
            sumlx = v_pick(sumlx, slx, take);
            suml2 = v_pick(suml2, sl2, take);
            changed = m_or(changed, take);
        }
        if (!m_any(changed)) break;
    }
    for (int i = 0; i < n; i++) q[i] = v_pick(q[i], zero, all_zero);
    return v_pick(v_pick(zero, v_div(sumlx, suml2), v_gt(suml2, zero)), zero, all_zero);
}

// The weighted header of KQ_LANES blocks in lanes: super-block scale and min fitted over the group scales and mins
// (n groups) -> per lane the levels as bytes and the two scales.
KQ_TARGET static void fit_positive_pair_v(int n, int nmax, float scales[][KQ_LANES], float mins[][KQ_LANES],
                                          float group_w[][KQ_LANES], uint8_t ls[][16], uint8_t lm[][16],
                                          float *d, float *dmin) {
    kv sc[16], mn[16], gw[16], qs[16], qm[16];
    for (int g = 0; g < n; g++) {
        sc[g] = v_load(scales[g]);
        mn[g] = v_load(mins[g]);
        gw[g] = v_load(group_w[g]);
    }
    v_store(d, fit_positive_v(n, nmax, sc, gw, qs));
    v_store(dmin, fit_positive_v(n, nmax, mn, gw, qm));
    for (int g = 0; g < n; g++) {
        float fs[KQ_LANES], fm[KQ_LANES];
        v_store(fs, qs[g]);
        v_store(fm, qm[g]);
        for (int b = 0; b < KQ_LANES; b++) {
            ls[b][g] = (uint8_t)(int)fs[b];
            lm[b][g] = (uint8_t)(int)fm[b];
        }
    }
}
#endif

// ---- shared per-group weight helpers

// Per lane: the sum of x^2 over the whole 256-block, in element order.
KQ_TARGET static kv block_sumsq_v(const kv *x) {
    kv s = v_zero();
    for (int e = 0; e < 256; e++) s = v_add(s, v_mul(x[e], x[e]));
    return s;
}

// w[i] = im[i] * sqrt(sigma2 + x[i]^2) for one group; returns the group's sum of w in element order.
KQ_TARGET static kv importance_weights_v(int n, const kv *x, const kv *im, kv sigma2, kv *w) {
    kv sw = v_zero();
    for (int i = 0; i < n; i++) w[i] = v_mul(im[i], v_sqrt(v_add(sigma2, v_mul(x[i], x[i]))));
    for (int i = 0; i < n; i++) sw = v_add(sw, w[i]);
    return sw;
}

// ---- requantization against the stored scales, KQ_LANES blocks at once

// For each group g of `size` elements: lanes whose stored scale dg is non-zero get
// clamp(round((x + mg) / dg), lo, hi) + offset (x / dg when mg is NULL); the others keep their fitted levels.
// With KQ_DIV_SHARED (the backend has v_div_recip(x, d, r): q = x * r, then one FMA correction
// q + r * (x - q * d), Markstein's division by a shared divisor with r = 1/d correctly rounded), the divisions of a
// group become one division and three multiply-adds per value. That is the IEEE quotient when r and the products
// stay normal: so only groups whose non-kept scales all lie in [2^-64, 2^64] take it (the stored scales are at most
// 65504 * 128, at least 2^-24: all real ones), and a vector whose quotient has |q| >= 2^22, inf or NaN in any lane
// (huge x, overflow: where the magic rounding's garbage depends on the exact quotient) is divided again. Tiny
// quotients (an underflowing remainder) round to level 0 either way.
#ifndef KQ_DIV_SHARED
#define KQ_DIV_SHARED 0
#endif

KQ_TARGET static void requantize_v(const kv *x, kv *q, int groups, int size, float dg[][KQ_LANES], float mg[][KQ_LANES], int lo,
                                   int hi, float offset) {
    const kv zero = v_zero(), off = v_set(offset);
    for (int g = 0; g < groups; g++) {
        const kv d = v_load(dg[g]);
        const km keep = v_eq(d, zero);
        if (m_all(keep)) continue;
        const kv m = mg ? v_load(mg[g]) : zero;
#if KQ_DIV_SHARED
        const kv ad = v_abs(d);
        const km normal = m_and(v_lt(ad, v_set(0x1p64f)), v_gt(ad, v_set(0x1p-64f)));
        if (m_all(m_or(normal, keep))) {
            const kv dn = v_pick(d, v_set(1.0f), keep), r = v_div(v_set(1.0f), dn), limit = v_set(4194304.0f);
            for (int i = size * g; i < size * (g + 1); i++) {
                const kv num = mg ? v_add(x[i], m) : x[i];
                kv v = v_div_recip(num, dn, r);
                if (!m_all(v_lt(v_abs(v), limit))) v = v_div(num, d);
                q[i] = v_pick(v_add(v_round_clamp(v, lo, hi), off), q[i], keep);
            }
            continue;
        }
#endif
        for (int i = size * g; i < size * (g + 1); i++) {
            const kv v = mg ? v_div(v_add(x[i], m), d) : v_div(x[i], d);
            q[i] = v_pick(v_add(v_round_clamp(v, lo, hi), off), q[i], keep);
        }
    }
}

// ---- packing in lanes (the same bytes as kq_q3k_requantize_pack / kq_q6k_requantize_pack)

// Q3_K levels 0..7 -> 96 bytes: hmask[j] bit k = bit 2 of level 32k + j; qs[32h + j] bits 2k..2k+1 = low 2 bits
// of level 128h + 32k + j.
KQ_TARGET static void pack_q3k_v(const kv *q, kvi *bytes) {
    const kvi one = vi_set(1), three = vi_set(3);
    for (int j = 0; j < 32; j++) {
        kvi h = vi_set(0), lo0 = vi_set(0), lo1 = vi_set(0);
        for (int k = 0; k < 8; k++) {
            const kvi l = vi_from(q[32 * k + j]);
            h = vi_or(h, vi_shl(vi_and(vi_shr(l, 2), one), k));
            if (k < 4) lo0 = vi_or(lo0, vi_shl(vi_and(l, three), 2 * k));
            else lo1 = vi_or(lo1, vi_shl(vi_and(l, three), 2 * (k - 4)));
        }
        bytes[j] = h;
        bytes[32 + j] = lo0;
        bytes[64 + j] = lo1;
    }
}

// Q6_K levels 0..63 -> 192 bytes: per half h (levels 128h + 32k + j): ql[64h + j] = low nibbles of k = 0 | k = 2,
// ql[64h + 32 + j] = k = 1 | k = 3, qh[32h + j] bits 2k..2k+1 = the top 2 bits of level k.
KQ_TARGET static void pack_q6k_v(const kv *q, kvi *bytes) {
    const kvi low4 = vi_set(15);
    for (int h = 0; h < 2; h++) {
        for (int j = 0; j < 32; j++) {
            kvi l[4];
            for (int k = 0; k < 4; k++) l[k] = vi_from(q[128 * h + 32 * k + j]);
            bytes[64 * h + j] = vi_or(vi_and(l[0], low4), vi_shl(vi_and(l[2], low4), 4));
            bytes[64 * h + 32 + j] = vi_or(vi_and(l[1], low4), vi_shl(vi_and(l[3], low4), 4));
            bytes[128 + 32 * h + j] = vi_or(vi_or(vi_shr(l[0], 4), vi_shl(vi_shr(l[1], 4), 2)),
                                            vi_or(vi_shl(vi_shr(l[2], 4), 4), vi_shl(vi_shr(l[3], 4), 6)));
        }
    }
}

// ---- the KQ_LANES-block drivers

typedef struct {
    kv x[256];      // (256 elements, KQ_LANES lanes) the blocks' values
    kv im[256];     // (256, KQ_LANES) importance, when given
    kv q[256];      // (256, KQ_LANES) fitted levels
    kv w[32 * KQ_AFFINE_GROUPS];  // the weights of the groups being fitted
    kvi bytes[192]; // (packed byte, KQ_LANES lanes)
    float scales[16][KQ_LANES], mins[16][KQ_LANES], group_w[16][KQ_LANES];
    float dg[16][KQ_LANES], mg[16][KQ_LANES];  // per group and lane: the stored scale and min as floats
} lanes_t;

KQ_TARGET static void load_lanes(lanes_t *s, const float *x, const float *imatrix) {
    to_lanes(x, s->x);
    if (imatrix) to_lanes(imatrix, s->im);
}

static inline void lane_column(float src[][KQ_LANES], int groups, int lane, float *out) {
    for (int g = 0; g < groups; g++) out[g] = src[g][lane];
}

static inline void set_lane_column(float dst[][KQ_LANES], int groups, int lane, const float *in) {
    for (int g = 0; g < groups; g++) dst[g][lane] = in[g];
}

// The affine K-quants' finish (Q2_K: nmax 3, Q4_K: 15, Q5_K: 31) from the fitted group scales and mins in s: each
// block's header (super-block scales, group scale and min levels: the weighted fit in lanes where the backend has
// it, else the shared plain steps), the stored scales as factors, the requantization in lanes, and the packing.
__attribute__((always_inline)) KQ_TARGET static inline void affine_finish(lanes_t *s, const float *imatrix,
                                                                           uint8_t *y, const int nmax) {
    const int q2 = nmax == 3, groups = q2 ? 16 : 8, block_bytes = q2 ? 84 : nmax == 15 ? 144 : 176;
#if KQ_POSITIVE_LANES
    uint8_t ls[KQ_LANES][16], lm[KQ_LANES][16];
    float d[KQ_LANES], dmin[KQ_LANES];
    if (imatrix) fit_positive_pair_v(groups, q2 ? 15 : 63, s->scales, s->mins, s->group_w, ls, lm, d, dmin);
#endif
    for (int b = 0; b < KQ_LANES; b++) {
        uint8_t levels[256];  // unused until packing: the header step does not read it
        float scales[16], mins[16], group_w[16], dg[16], mg[16];
        uint8_t *blk = y + block_bytes * b;
        lane_column(s->scales, groups, b, scales);
        lane_column(s->mins, groups, b, mins);
#if KQ_POSITIVE_LANES
        if (imatrix) {
            if (q2) kq_q2k_write_header(blk, ls[b], lm[b], d[b], dmin[b]);
            else kq_q45k_write_header(blk, ls[b], lm[b], d[b], dmin[b], nmax);
        } else
#endif
        if (imatrix) {
            lane_column(s->group_w, groups, b, group_w);
            if (q2) kq_q2k_finish_weighted(NULL, blk, scales, mins, group_w, levels);
            else kq_q45k_finish_weighted(NULL, blk, scales, mins, group_w, levels, nmax);
        } else if (q2) {
            kq_q2k_finish_plain(NULL, blk, scales, mins, levels);
        } else {
            kq_q45k_finish_plain(NULL, blk, scales, mins, levels, nmax);
        }
        if (q2) kq_q2k_group_factors(blk, dg, mg);
        else kq_q45k_group_factors(blk, dg, mg);
        set_lane_column(s->dg, groups, b, dg);
        set_lane_column(s->mg, groups, b, mg);
    }
    requantize_v(s->x, s->q, groups, 256 / groups, s->dg, s->mg, 0, nmax, 0.0f);
    for (int b = 0; b < KQ_LANES; b++) {
        uint8_t levels[256];
        lane_levels_u8(s->q, b, levels);
        if (q2) kq_q2k_requantize_pack(NULL, y + block_bytes * b, levels);
        else kq_q45k_requantize_pack(NULL, y + block_bytes * b, levels, nmax);
    }
}

KQ_TARGET static void q2k_eight(lanes_t *s, const float *x, const float *imatrix, uint8_t *y) {
    load_lanes(s, x, imatrix);
    kv sigma2 = v_zero();
    if (imatrix) sigma2 = v_div(block_sumsq_v(s->x), v_set(256.0f));
    for (int g = 0; g < 16; g += KQ_AFFINE_GROUPS) {
        const kv *xg = s->x + 16 * g;
        kv neg_min[KQ_AFFINE_GROUPS], scale[KQ_AFFINE_GROUPS];
        if (imatrix) {
            for (int j = 0; j < KQ_AFFINE_GROUPS; j++)
                v_store(s->group_w[g + j],
                        importance_weights_v(16, xg + 16 * j, s->im + 16 * (g + j), sigma2, s->w + 16 * j));
            fit_affine_v(16, 3, xg, s->w, s->q + 16 * g, neg_min, scale, -0.9f, 0.05f, 36, 0);
        } else {
            for (int i = 0; i < 16 * KQ_AFFINE_GROUPS; i++) s->w[i] = v_abs(xg[i]);
            fit_affine_v(16, 3, xg, s->w, s->q + 16 * g, neg_min, scale, -0.5f, 0.1f, 15, 1);
        }
        for (int j = 0; j < KQ_AFFINE_GROUPS; j++) {
            v_store(s->scales[g + j], scale[j]);
            v_store(s->mins[g + j], neg_min[j]);
        }
    }
    affine_finish(s, imatrix, y, 3);
}

// Q3_K with importance: the sixteen group scales of each block are fitted to 6 bits (kq_q3k_finish_weighted's
// kq_fit_symmetric over the scales, weighted by the group weights) in lanes too.
KQ_TARGET static void q3k_scales_weighted(lanes_t *s, uint8_t *y) {
    kv sc[16], gw[16], ls[16];
    for (int g = 0; g < 16; g++) {
        sc[g] = v_load(s->scales[g]);
        gw[g] = v_load(s->group_w[g]);
    }
    float d[KQ_LANES], ls_f[16][KQ_LANES];
    v_store(d, fit_symmetric_v(16, 32, sc, gw, ls, 0));
    for (int g = 0; g < 16; g++) v_store(ls_f[g], ls[g]);
    for (int b = 0; b < KQ_LANES; b++) {
        uint8_t s6[16];
        for (int g = 0; g < 16; g++) s6[g] = (uint8_t)(int)ls_f[g][b];
        kq_q3k_write_header(y + 110 * b, s6, d[b]);
    }
}

// kq_q3k_finish_plain's header in lanes (KQ_Q3K_HEADER_LANES, where the backend has v_round_int8): the scale
// of largest magnitude maps to -32, each group scale to (int8_t)round(inv * scale) clamped to [-32, 31], stored
// +32; a block whose largest-magnitude scale is 0 gets zero scales and d = 0 (its bytes are then all zero, as
// the scalar memset's).
#ifndef KQ_Q3K_HEADER_LANES
#define KQ_Q3K_HEADER_LANES 0
#endif
#if KQ_Q3K_HEADER_LANES
KQ_TARGET static void q3k_header_plain_v(lanes_t *s, uint8_t *y) {
    kv sc[16], amax, max;
    for (int g = 0; g < 16; g++) sc[g] = v_load(s->scales[g]);
    signed_absmax_v(16, sc, &amax, &max);
    const km zero_max = v_eq(max, v_zero());
    const kv inv = v_div(v_set(-32.0f), max);
    float d[KQ_LANES], l_f[16][KQ_LANES];
    v_store(d, v_pick(v_div(v_set(1.0f), inv), v_zero(), zero_max));
    for (int g = 0; g < 16; g++) {
        const kv l = v_round_int8(v_mul(inv, sc[g]));
        const kv clamped = v_maxf(v_minf(l, v_set(31.0f)), v_set(-32.0f));
        v_store(l_f[g], v_pick(v_add(clamped, v_set(32.0f)), v_zero(), zero_max));
    }
    for (int b = 0; b < KQ_LANES; b++) {
        uint8_t s6[16];
        for (int g = 0; g < 16; g++) s6[g] = (uint8_t)(int)l_f[g][b];
        kq_q3k_write_header(y + 110 * b, s6, d[b]);
    }
}
#endif

KQ_TARGET static void q3k_eight(lanes_t *s, const float *x, const float *imatrix, uint8_t *y) {
    load_lanes(s, x, imatrix);
    if (imatrix) {
        const kv sigma2 = v_div(v_mul(v_set(2.0f), block_sumsq_v(s->x)), v_set(256.0f));
        for (int g = 0; g < 16; g++) {
            const kv *xg = s->x + 16 * g;
            v_store(s->group_w[g], importance_weights_v(16, xg, s->im + 16 * g, sigma2, s->w));
            v_store(s->scales[g], fit_symmetric_v(16, 4, xg, s->w, s->q + 16 * g, 1));
        }
        q3k_scales_weighted(s, y);
    } else {
        for (int g = 0; g < 16; g += KQ_DESCENT_GROUPS) {
            kv scales[KQ_DESCENT_GROUPS];
            fit_descent_v(s->x + 16 * g, s->q + 16 * g, scales);
            for (int j = 0; j < KQ_DESCENT_GROUPS; j++) v_store(s->scales[g + j], scales[j]);
        }
#if KQ_Q3K_HEADER_LANES
        q3k_header_plain_v(s, y);
#else
        for (int b = 0; b < KQ_LANES; b++) {
            int8_t levels[256];  // unused: the header step does not read it
            float scales[16];
            lane_column(s->scales, 16, b, scales);
            kq_q3k_finish_plain(NULL, y + 110 * b, scales, levels);
        }
#endif
    }
    for (int b = 0; b < KQ_LANES; b++) {
        float dg[16];
        kq_q3k_group_factors(y + 110 * b, dg);
        set_lane_column(s->dg, 16, b, dg);
    }
    requantize_v(s->x, s->q, 16, 16, s->dg, NULL, -4, 3, 4.0f);
    pack_q3k_v(s->q, s->bytes);
    store_lane_bytes(s->bytes, 96, y, 110);
}

KQ_TARGET static void q45k_eight(lanes_t *s, const float *x, const float *imatrix, uint8_t *y, int nmax) {
    load_lanes(s, x, imatrix);
    kv sigma2 = v_zero();
    if (imatrix) sigma2 = v_div(v_mul(v_set(2.0f), block_sumsq_v(s->x)), v_set(256.0f));
    for (int g = 0; g < 8; g += KQ_AFFINE_GROUPS) {
        const kv *xg = s->x + 32 * g;
        kv neg_min[KQ_AFFINE_GROUPS], scale[KQ_AFFINE_GROUPS];
        if (imatrix) {
            for (int j = 0; j < KQ_AFFINE_GROUPS; j++)
                v_store(s->group_w[g + j],
                        importance_weights_v(32, xg + 32 * j, s->im + 32 * (g + j), sigma2, s->w + 32 * j));
            fit_affine_v(32, nmax, xg, s->w, s->q + 32 * g, neg_min, scale, -0.9f, 0.05f, 36, 0);
        } else {
            for (int j = 0; j < KQ_AFFINE_GROUPS; j++) {
                const kv *xj = xg + 32 * j;
                kv sumsq = v_zero();
                for (int i = 0; i < 32; i++) sumsq = v_add(sumsq, v_mul(xj[i], xj[i]));
                const kv av = v_sqrt(v_div(sumsq, v_set(32.0f)));
                for (int i = 0; i < 32; i++) s->w[32 * j + i] = v_add(av, v_abs(xj[i]));
            }
            fit_affine_v(32, nmax, xg, s->w, s->q + 32 * g, neg_min, scale, KQ_Q45K_RMIN(nmax), 0.1f,
                         KQ_Q45K_NSTEP(nmax), 0);
        }
        for (int j = 0; j < KQ_AFFINE_GROUPS; j++) {
            v_store(s->scales[g + j], scale[j]);
            v_store(s->mins[g + j], neg_min[j]);
        }
    }
    affine_finish(s, imatrix, y, nmax);
}

KQ_TARGET static void q6k_eight(lanes_t *s, const float *x, const float *imatrix, uint8_t *y) {
    load_lanes(s, x, imatrix);
    for (int g = 0; g < 16; g++)
        v_store(s->scales[g],
                fit_symmetric_v(16, 32, s->x + 16 * g, imatrix ? s->im + 16 * g : NULL, s->q + 16 * g, 1));
    int done[KQ_LANES];
#if KQ_POSITIVE_LANES
    // kq_q6k_header in lanes (v_wrap_byte: the backend has the byte wrap): the signed scale of largest magnitude,
    // inv = -128 / it, levels kq_round_magic(inv * scale) capped at 127 and stored as bytes, d = 1 / inv
    kv sc[16], amax, max;
    for (int g = 0; g < 16; g++) sc[g] = v_load(s->scales[g]);
    signed_absmax_v(16, sc, &amax, &max);
    const int zero_bits = m_bits(v_lt(amax, v_set(1e-15f)));  // KQ_ZERO_GROUP: the block is all zero
    const kv inv = v_div(v_set(-128.0f), max);
    float d[KQ_LANES], l_f[16][KQ_LANES];
    v_store(d, v_div(v_set(1.0f), inv));
    for (int g = 0; g < 16; g++) v_store(l_f[g], v_wrap_byte(v_round_clamp(v_mul(inv, sc[g]), INT32_MIN, 127)));
#endif
    for (int b = 0; b < KQ_LANES; b++) {
        float scales[16], dg[16];
#if KQ_POSITIVE_LANES
        (void)scales;
        done[b] = zero_bits >> b & 1;
        if (done[b]) {
            memset(y + 210 * b, 0, 210);
        } else {
            uint8_t s8[16];
            for (int g = 0; g < 16; g++) s8[g] = (uint8_t)(int)l_f[g][b];
            kq_q6k_write_header(y + 210 * b, s8, d[b]);
        }
#else
        lane_column(s->scales, 16, b, scales);
        done[b] = kq_q6k_header(y + 210 * b, scales);
#endif
        if (done[b]) memset(dg, 0, sizeof dg);  // all-zero block: written, nothing to requantize
        else kq_q6k_group_factors(y + 210 * b, dg);
        set_lane_column(s->dg, 16, b, dg);
    }
    requantize_v(s->x, s->q, 16, 16, s->dg, NULL, -32, 31, 32.0f);
    pack_q6k_v(s->q, s->bytes);
    store_lane_bytes(s->bytes, 192, y, 210);
    for (int b = 0; b < KQ_LANES; b++)
        if (done[b]) memset(y + 210 * b, 0, 192);  // the header step wrote the whole (zero) block
}

// ---- row entry points

#define KQ_LANES_ROW(t, block_bytes, eight_call)                                                               \
    KQ_TARGET void KQ_ROW_NAME(t)(const float *x, void *vy, int64_t n, const float *imatrix) {                 \
        uint8_t *y = (uint8_t *)vy;                                                                            \
        const int64_t blocks = n / 256;                                                                        \
        lanes_t s __attribute__((aligned(64)));                                                                \
        int64_t b = 0;                                                                                         \
        for (; b + KQ_LANES <= blocks; b += KQ_LANES) {                                                        \
            const float *xb = x + 256 * b, *ib = imatrix ? imatrix + 256 * b : NULL;                           \
            uint8_t *yb = y + (block_bytes) * b;                                                               \
            eight_call;                                                                                        \
        }                                                                                                      \
        if (b < blocks) KQ_TAIL(t)(x + 256 * b, y + (block_bytes) * b, 256 * (blocks - b),                     \
                                   imatrix ? imatrix + 256 * b : NULL);                                        \
    }

KQ_LANES_ROW(q2_k, 84, q2k_eight(&s, xb, ib, yb))
KQ_LANES_ROW(q3_k, 110, q3k_eight(&s, xb, ib, yb))
KQ_LANES_ROW(q4_k, 144, q45k_eight(&s, xb, ib, yb, 15))
KQ_LANES_ROW(q5_k, 176, q45k_eight(&s, xb, ib, yb, 31))
KQ_LANES_ROW(q6_k, 210, q6k_eight(&s, xb, ib, yb))

#endif
