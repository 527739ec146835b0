// AVX2 K-quant quantizers: eight 256-float blocks of a row at a time, one block per SIMD lane.
//
// Exactness: lane b performs, for its own block, exactly the float operations of the plain-C fitting in
// quants_k.c, in the same order (sums run element by element within a block; nothing is reordered or
// reassociated). Data-dependent branches become per-lane masks and blends; a lane that the scalar code would
// skip (a `continue`, an early `break`) computes throw-away values that are never blended in. Division and sqrt
// are the IEEE-exact AVX instructions; no reciprocal approximations, no FMA (this file is built with
// -ffp-contract=off and only targets "avx2", not "fma"). The per-group fits (the expensive part) run here; each
// block is then finished (super-block scales, packing) by the shared plain-C code. Blocks left over when a row
// holds fewer than eight go through the plain path.
#if defined(__x86_64__) || defined(__i386__)

#include <immintrin.h>
#include <math.h>
#include <string.h>

#include "quants_k_internal.h"

#define KQ_AVX2 __attribute__((target("avx2")))

// ---- lane primitives

KQ_AVX2 static inline __m256 v_set(float f) { return _mm256_set1_ps(f); }
KQ_AVX2 static inline __m256 v_add(__m256 a, __m256 b) { return _mm256_add_ps(a, b); }
KQ_AVX2 static inline __m256 v_sub(__m256 a, __m256 b) { return _mm256_sub_ps(a, b); }
KQ_AVX2 static inline __m256 v_mul(__m256 a, __m256 b) { return _mm256_mul_ps(a, b); }
KQ_AVX2 static inline __m256 v_div(__m256 a, __m256 b) { return _mm256_div_ps(a, b); }
KQ_AVX2 static inline __m256 v_abs(__m256 a) { return _mm256_and_ps(a, _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff))); }
KQ_AVX2 static inline __m256 v_neg(__m256 a) { return _mm256_xor_ps(a, v_set(-0.0f)); }
// C comparisons: ordered (false on NaN) except !=, which is true on NaN.
KQ_AVX2 static inline __m256 v_gt(__m256 a, __m256 b) { return _mm256_cmp_ps(a, b, _CMP_GT_OQ); }
KQ_AVX2 static inline __m256 v_lt(__m256 a, __m256 b) { return _mm256_cmp_ps(a, b, _CMP_LT_OQ); }
KQ_AVX2 static inline __m256 v_eq(__m256 a, __m256 b) { return _mm256_cmp_ps(a, b, _CMP_EQ_OQ); }
KQ_AVX2 static inline __m256 v_ne(__m256 a, __m256 b) { return _mm256_cmp_ps(a, b, _CMP_NEQ_UQ); }
KQ_AVX2 static inline __m256 v_and(__m256 a, __m256 b) { return _mm256_and_ps(a, b); }
KQ_AVX2 static inline __m256 v_or(__m256 a, __m256 b) { return _mm256_or_ps(a, b); }
// mask ? b : a, per lane
KQ_AVX2 static inline __m256 v_pick(__m256 a, __m256 b, __m256 mask) { return _mm256_blendv_ps(a, b, mask); }
KQ_AVX2 static inline int v_any(__m256 mask) { return _mm256_movemask_ps(mask) != 0; }

// kq_round_magic per lane, clamped to [lo, hi] and returned as (exact) floats.
KQ_AVX2 static inline __m256 v_round_clamp(__m256 v, int lo, int hi) {
    __m256i bits = _mm256_castps_si256(_mm256_add_ps(v, v_set(12582912.0f)));
    __m256i r = _mm256_sub_epi32(_mm256_and_si256(bits, _mm256_set1_epi32(0x007fffff)), _mm256_set1_epi32(0x00400000));
    r = _mm256_min_epi32(_mm256_max_epi32(r, _mm256_set1_epi32(lo)), _mm256_set1_epi32(hi));
    return _mm256_cvtepi32_ps(r);
}

// ---- transposes between block-major rows and lane-major vectors

// src: 8 blocks of 256 floats, block b at src + b*256 -> dst[e] = element e of the 8 blocks (lane b = block b).
KQ_AVX2 static void to_lanes(const float *src, __m256 *dst) {
    for (int e = 0; e < 256; e += 8) {
        __m256 r0 = _mm256_loadu_ps(src + 0 * 256 + e), r1 = _mm256_loadu_ps(src + 1 * 256 + e);
        __m256 r2 = _mm256_loadu_ps(src + 2 * 256 + e), r3 = _mm256_loadu_ps(src + 3 * 256 + e);
        __m256 r4 = _mm256_loadu_ps(src + 4 * 256 + e), r5 = _mm256_loadu_ps(src + 5 * 256 + e);
        __m256 r6 = _mm256_loadu_ps(src + 6 * 256 + e), r7 = _mm256_loadu_ps(src + 7 * 256 + e);
        __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1);
        __m256 t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3);
        __m256 t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5);
        __m256 t6 = _mm256_unpacklo_ps(r6, r7), t7 = _mm256_unpackhi_ps(r6, r7);
        __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
        __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
        __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
        __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
        dst[e + 0] = _mm256_permute2f128_ps(u0, u4, 0x20);
        dst[e + 1] = _mm256_permute2f128_ps(u1, u5, 0x20);
        dst[e + 2] = _mm256_permute2f128_ps(u2, u6, 0x20);
        dst[e + 3] = _mm256_permute2f128_ps(u3, u7, 0x20);
        dst[e + 4] = _mm256_permute2f128_ps(u0, u4, 0x31);
        dst[e + 5] = _mm256_permute2f128_ps(u1, u5, 0x31);
        dst[e + 6] = _mm256_permute2f128_ps(u2, u6, 0x31);
        dst[e + 7] = _mm256_permute2f128_ps(u3, u7, 0x31);
    }
}

// (256, 8) lane-major levels (exact small integers as floats) -> lane b's 256 levels as bytes.
KQ_AVX2 static void lane_levels_u8(const __m256 *q, int lane, uint8_t *out) {
    const float *f = (const float *)q;
    for (int e = 0; e < 256; e++) out[e] = (uint8_t)(int)f[8 * e + lane];
}

KQ_AVX2 static void lane_levels_i8(const __m256 *q, int lane, int8_t *out) {
    const float *f = (const float *)q;
    for (int e = 0; e < 256; e++) out[e] = (int8_t)(int)f[8 * e + lane];
}

// ---- fitting, eight groups at once (see the plain versions in quants_k.c for what each computes)

// kq_fit_affine per lane. q[i] receives the levels as floats.
KQ_AVX2 static __m256 fit_affine_v(int n, int nmax, const __m256 *x, const __m256 *w, __m256 *q, __m256 *neg_min,
                                   float rmin, float rdelta, int nstep, int use_mad) {
    __m256 trial_q[32];
    const __m256 zero = _mm256_setzero_ps();
    __m256 min = x[0], max = x[0];
    __m256 sum_w = w[0];
    __m256 sum_x = v_mul(sum_w, x[0]);
    for (int i = 1; i < n; i++) {
        min = v_pick(min, x[i], v_lt(x[i], min));
        max = v_pick(max, x[i], v_gt(x[i], max));
        sum_w = v_add(sum_w, w[i]);
        sum_x = v_add(sum_x, v_mul(w[i], x[i]));
    }
    min = v_pick(min, zero, v_gt(min, zero));
    const __m256 flat = v_eq(max, min);
    const __m256 flat_neg_min = v_neg(min);
    const __m256 inv = v_div(v_set((float)nmax), v_sub(max, min));
    __m256 scale = v_div(v_set(1.0f), inv);
    __m256 best_err = zero;
    for (int i = 0; i < n; i++) {
        q[i] = v_round_clamp(v_mul(inv, v_sub(x[i], min)), 0, nmax);
        __m256 diff = v_sub(v_add(v_mul(scale, q[i]), min), x[i]);
        diff = use_mad ? v_abs(diff) : v_mul(diff, diff);
        best_err = v_add(best_err, v_mul(w[i], diff));
    }
    for (int k = 0; k <= nstep; k++) {
        // min is the best fit so far: it moves when a trial is taken, and so do the range and the levels
        const __m256 trial = v_div(v_set(rmin + rdelta * k + nmax), v_sub(max, min));
        __m256 sum_l = zero, sum_l2 = zero, sum_xl = zero;
        for (int i = 0; i < n; i++) {
            const __m256 l = v_round_clamp(v_mul(trial, v_sub(x[i], min)), 0, nmax);
            trial_q[i] = l;
            const __m256 wl = v_mul(w[i], l);
            sum_l = v_add(sum_l, wl);
            sum_l2 = v_add(sum_l2, v_mul(wl, l));
            sum_xl = v_add(sum_xl, v_mul(wl, x[i]));
        }
        const __m256 det = v_sub(v_mul(sum_w, sum_l2), v_mul(sum_l, sum_l));
        const __m256 solvable = v_gt(det, zero);
        if (!v_any(solvable)) continue;
        __m256 t_scale = v_div(v_sub(v_mul(sum_w, sum_xl), v_mul(sum_x, sum_l)), det);
        __m256 t_min = v_div(v_sub(v_mul(sum_l2, sum_x), v_mul(sum_l, sum_xl)), det);
        const __m256 positive_min = v_gt(t_min, zero);
        t_min = v_pick(t_min, zero, positive_min);
        t_scale = v_pick(t_scale, v_div(sum_xl, sum_l2), positive_min);
        __m256 err = zero;
        for (int i = 0; i < n; i++) {
            __m256 diff = v_sub(v_add(v_mul(t_scale, trial_q[i]), t_min), x[i]);
            diff = use_mad ? v_abs(diff) : v_mul(diff, diff);
            err = v_add(err, v_mul(w[i], diff));
        }
        const __m256 take = v_and(solvable, v_lt(err, best_err));
        if (!v_any(take)) continue;
        for (int i = 0; i < n; i++) q[i] = v_pick(q[i], trial_q[i], take);
        best_err = v_pick(best_err, err, take);
        scale = v_pick(scale, t_scale, take);
        min = v_pick(min, t_min, take);
    }
    for (int i = 0; i < n; i++) q[i] = v_pick(q[i], zero, flat);
    *neg_min = v_pick(v_neg(min), flat_neg_min, flat);
    return v_pick(scale, zero, flat);
}

// Largest magnitude per lane and the signed value holding it (first occurrence wins, like the scalar scan).
KQ_AVX2 static void signed_absmax_v(int n, const __m256 *x, __m256 *amax, __m256 *max) {
    __m256 a_best = _mm256_setzero_ps(), m_best = _mm256_setzero_ps();
    for (int i = 0; i < n; i++) {
        const __m256 a = v_abs(x[i]);
        const __m256 bigger = v_gt(a, a_best);
        a_best = v_pick(a_best, a, bigger);
        m_best = v_pick(m_best, x[i], bigger);
    }
    *amax = a_best;
    *max = m_best;
}

// kq_fit_symmetric per lane (w == NULL: weights x^2). q[i] receives the levels (offset by nmax) as floats.
KQ_AVX2 static __m256 fit_symmetric_v(int n, int nmax, const __m256 *x, const __m256 *w, __m256 *q) {
    __m256 trial_q[16];
    const __m256 zero = _mm256_setzero_ps(), offset = v_set((float)nmax);
    __m256 amax, max;
    signed_absmax_v(n, x, &amax, &max);
    const __m256 all_zero = v_lt(amax, v_set(1e-15f));
    const __m256 inv = v_div(v_set((float)-nmax), max);
    __m256 sumlx = zero, suml2 = zero;
    for (int i = 0; i < n; i++) {
        const __m256 l = v_round_clamp(v_mul(inv, x[i]), -nmax, nmax - 1);
        q[i] = v_add(l, offset);
        const __m256 wi = w ? w[i] : v_mul(x[i], x[i]);
        sumlx = v_add(sumlx, v_mul(v_mul(wi, x[i]), l));
        suml2 = v_add(suml2, v_mul(v_mul(wi, l), l));
    }
    __m256 scale = v_pick(zero, v_div(sumlx, suml2), v_ne(suml2, zero));
    __m256 best = v_mul(scale, sumlx);
    for (int k = -9; k <= 9; k++) {
        if (k == 0) continue;
        const __m256 trial = v_div(v_set(-(nmax + 0.1f * k)), max);
        __m256 tlx = zero, tl2 = zero;
        for (int i = 0; i < n; i++) {
            const __m256 l = v_round_clamp(v_mul(trial, x[i]), -nmax, nmax - 1);
            trial_q[i] = v_add(l, offset);
            const __m256 wi = w ? w[i] : v_mul(x[i], x[i]);
            tlx = v_add(tlx, v_mul(v_mul(wi, x[i]), l));
            tl2 = v_add(tl2, v_mul(v_mul(wi, l), l));
        }
        const __m256 take = v_and(v_gt(tl2, zero), v_gt(v_mul(tlx, tlx), v_mul(best, tl2)));
        if (!v_any(take)) continue;
        for (int i = 0; i < n; i++) q[i] = v_pick(q[i], trial_q[i], take);
        const __m256 t_scale = v_div(tlx, tl2);
        scale = v_pick(scale, t_scale, take);
        best = v_pick(best, v_mul(t_scale, tlx), take);
    }
    for (int i = 0; i < n; i++) q[i] = v_pick(q[i], zero, all_zero);
    return v_pick(scale, zero, all_zero);
}

// kq_fit_symmetric_descent per lane: a lane stops after the first pass that changes none of its levels.
KQ_AVX2 static __m256 fit_descent_v(int n, int nmax, const __m256 *x, __m256 *q) {
    const __m256 zero = _mm256_setzero_ps();
    __m256 amax, max;
    signed_absmax_v(n, x, &amax, &max);
    const __m256 all_zero = v_lt(amax, v_set(1e-15f));
    const __m256 inv = v_div(v_set((float)-nmax), max);
    __m256 sumlx = zero, suml2 = zero;
    for (int i = 0; i < n; i++) {
        q[i] = v_round_clamp(v_mul(inv, x[i]), -nmax, nmax - 1);
        const __m256 wi = v_mul(x[i], x[i]);
        sumlx = v_add(sumlx, v_mul(v_mul(wi, x[i]), q[i]));
        suml2 = v_add(suml2, v_mul(v_mul(wi, q[i]), q[i]));
    }
    __m256 active = _mm256_castsi256_ps(_mm256_set1_epi32(-1));
    for (int pass = 0; pass < 5 && v_any(active); pass++) {
        __m256 changed = zero;
        for (int i = 0; i < n; i++) {
            const __m256 wi = v_mul(x[i], x[i]);
            const __m256 wx = v_mul(wi, x[i]);
            __m256 slx = v_sub(sumlx, v_mul(wx, q[i]));
            const __m256 can = v_gt(slx, zero);
            __m256 sl2 = v_sub(suml2, v_mul(v_mul(wi, q[i]), q[i]));
            const __m256 l = v_round_clamp(v_div(v_mul(x[i], sl2), slx), -nmax, nmax - 1);
            const __m256 differs = v_ne(l, q[i]);
            slx = v_add(slx, v_mul(wx, l));
            sl2 = v_add(sl2, v_mul(v_mul(wi, l), l));
            const __m256 better = v_and(v_gt(sl2, zero),
                                        v_gt(v_mul(v_mul(slx, slx), suml2), v_mul(v_mul(sumlx, sumlx), sl2)));
            const __m256 take = v_and(v_and(active, can), v_and(differs, better));
            q[i] = v_pick(q[i], l, take);
            sumlx = v_pick(sumlx, slx, take);
            suml2 = v_pick(suml2, sl2, take);
            changed = v_or(changed, take);
        }
        active = v_and(active, changed);
    }
    const __m256 offset = v_set((float)nmax);
    for (int i = 0; i < n; i++) q[i] = v_pick(v_add(q[i], offset), zero, all_zero);
    const __m256 scale = v_pick(zero, v_div(sumlx, suml2), v_gt(suml2, zero));
    return v_pick(scale, zero, all_zero);
}

// ---- shared per-group weight helpers

// Per lane: the sum of x^2 over the whole 256-block, in element order.
KQ_AVX2 static __m256 block_sumsq_v(const __m256 *x) {
    __m256 s = _mm256_setzero_ps();
    for (int e = 0; e < 256; e++) s = v_add(s, v_mul(x[e], x[e]));
    return s;
}

// w[i] = im[i] * sqrt(sigma2 + x[i]^2) for one group; returns the group's sum of w in element order.
KQ_AVX2 static __m256 importance_weights_v(int n, const __m256 *x, const __m256 *im, __m256 sigma2, __m256 *w) {
    __m256 sw = _mm256_setzero_ps();
    for (int i = 0; i < n; i++) w[i] = v_mul(im[i], _mm256_sqrt_ps(v_add(sigma2, v_mul(x[i], x[i]))));
    for (int i = 0; i < n; i++) sw = v_add(sw, w[i]);
    return sw;
}

// ---- requantization against the stored scales, eight blocks at once

// For each group g of `size` elements: lanes whose stored scale dg is non-zero get
// clamp(round((x + mg) / dg), lo, hi) + offset (x / dg when mg is NULL); the others keep their fitted levels.
KQ_AVX2 static void requantize_v(const __m256 *x, __m256 *q, int groups, int size, float dg[][8], float mg[][8],
                                 int lo, int hi, float offset) {
    const __m256 zero = _mm256_setzero_ps(), off = v_set(offset);
    for (int g = 0; g < groups; g++) {
        const __m256 d = _mm256_loadu_ps(dg[g]);
        const __m256 keep = v_eq(d, zero);
        if (_mm256_movemask_ps(keep) == 0xff) continue;
        const __m256 m = mg ? _mm256_loadu_ps(mg[g]) : zero;
        for (int i = size * g; i < size * (g + 1); i++) {
            const __m256 v = mg ? v_div(v_add(x[i], m), d) : v_div(x[i], d);
            q[i] = v_pick(v_add(v_round_clamp(v, lo, hi), off), q[i], keep);
        }
    }
}

// ---- the eight-block drivers

typedef struct {
    __m256 x[256];      // (256 elements, 8 lanes) the blocks' values
    __m256 im[256];     // (256, 8) importance, when given
    __m256 q[256];      // (256, 8) fitted levels
    __m256 w[32];       // one group's weights
    float scales[16][8], mins[16][8], group_w[16][8];
    float dg[16][8], mg[16][8];  // per group and lane: the stored scale and min as floats
} lanes8;

KQ_AVX2 static void load_lanes(lanes8 *s, const float *x, const float *imatrix) {
    to_lanes(x, s->x);
    if (imatrix) to_lanes(imatrix, s->im);
}

KQ_AVX2 static void store_group(float dst[8], __m256 v) { _mm256_storeu_ps(dst, v); }

static inline void lane_column(float src[][8], int groups, int lane, float *out) {
    for (int g = 0; g < groups; g++) out[g] = src[g][lane];
}

static inline void set_lane_column(float dst[][8], int groups, int lane, const float *in) {
    for (int g = 0; g < groups; g++) dst[g][lane] = in[g];
}

KQ_AVX2 static void q2k_eight(lanes8 *s, const float *x, const float *imatrix, uint8_t *y) {
    load_lanes(s, x, imatrix);
    __m256 sigma2 = _mm256_setzero_ps();
    if (imatrix) sigma2 = v_div(block_sumsq_v(s->x), v_set(256.0f));
    for (int g = 0; g < 16; g++) {
        const __m256 *xg = s->x + 16 * g;
        __m256 neg_min, scale;
        if (imatrix) {
            store_group(s->group_w[g], importance_weights_v(16, xg, s->im + 16 * g, sigma2, s->w));
            scale = fit_affine_v(16, 3, xg, s->w, s->q + 16 * g, &neg_min, -0.9f, 0.05f, 36, 0);
        } else {
            for (int i = 0; i < 16; i++) s->w[i] = v_abs(xg[i]);
            scale = fit_affine_v(16, 3, xg, s->w, s->q + 16 * g, &neg_min, -0.5f, 0.1f, 15, 1);
        }
        store_group(s->scales[g], scale);
        store_group(s->mins[g], neg_min);
    }
    for (int b = 0; b < 8; b++) {
        uint8_t levels[256];  // unused until packing: the header step does not read it
        float scales[16], mins[16], group_w[16];
        lane_column(s->scales, 16, b, scales);
        lane_column(s->mins, 16, b, mins);
        if (imatrix) {
            lane_column(s->group_w, 16, b, group_w);
            kq_q2k_finish_weighted(NULL, y + 84 * b, scales, mins, group_w, levels);
        } else {
            kq_q2k_finish_plain(NULL, y + 84 * b, scales, mins, levels);
        }
        float dg[16], mg[16];
        kq_q2k_group_factors(y + 84 * b, dg, mg);
        set_lane_column(s->dg, 16, b, dg);
        set_lane_column(s->mg, 16, b, mg);
    }
    requantize_v(s->x, s->q, 16, 16, s->dg, s->mg, 0, 3, 0.0f);
    for (int b = 0; b < 8; b++) {
        uint8_t levels[256];
        lane_levels_u8(s->q, b, levels);
        kq_q2k_requantize_pack(NULL, y + 84 * b, levels);
    }
}

KQ_AVX2 static void q3k_eight(lanes8 *s, const float *x, const float *imatrix, uint8_t *y) {
    load_lanes(s, x, imatrix);
    __m256 sigma2 = _mm256_setzero_ps();
    if (imatrix) sigma2 = v_div(v_mul(v_set(2.0f), block_sumsq_v(s->x)), v_set(256.0f));
    for (int g = 0; g < 16; g++) {
        const __m256 *xg = s->x + 16 * g;
        __m256 scale;
        if (imatrix) {
            store_group(s->group_w[g], importance_weights_v(16, xg, s->im + 16 * g, sigma2, s->w));
            scale = fit_symmetric_v(16, 4, xg, s->w, s->q + 16 * g);
        } else {
            scale = fit_descent_v(16, 4, xg, s->q + 16 * g);
        }
        store_group(s->scales[g], scale);
    }
    for (int b = 0; b < 8; b++) {
        int8_t levels[256];
        float scales[16], group_w[16];
        lane_column(s->scales, 16, b, scales);
        if (imatrix) {
            lane_column(s->group_w, 16, b, group_w);
            kq_q3k_finish_weighted(NULL, y + 110 * b, scales, group_w, levels);
        } else {
            kq_q3k_finish_plain(NULL, y + 110 * b, scales, levels);
        }
        float dg[16];
        kq_q3k_group_factors(y + 110 * b, dg);
        set_lane_column(s->dg, 16, b, dg);
    }
    requantize_v(s->x, s->q, 16, 16, s->dg, NULL, -4, 3, 4.0f);
    for (int b = 0; b < 8; b++) {
        int8_t levels[256];
        lane_levels_i8(s->q, b, levels);
        kq_q3k_requantize_pack(NULL, y + 110 * b, levels);
    }
}

KQ_AVX2 static void q45k_eight(lanes8 *s, const float *x, const float *imatrix, uint8_t *y, int nmax) {
    const int block_bytes = nmax == 15 ? 144 : 176;
    load_lanes(s, x, imatrix);
    __m256 sigma2 = _mm256_setzero_ps();
    if (imatrix) sigma2 = v_div(v_mul(v_set(2.0f), block_sumsq_v(s->x)), v_set(256.0f));
    for (int g = 0; g < 8; g++) {
        const __m256 *xg = s->x + 32 * g;
        __m256 neg_min, scale;
        if (imatrix) {
            store_group(s->group_w[g], importance_weights_v(32, xg, s->im + 32 * g, sigma2, s->w));
            scale = fit_affine_v(32, nmax, xg, s->w, s->q + 32 * g, &neg_min, -0.9f, 0.05f, 36, 0);
        } else {
            __m256 sumsq = _mm256_setzero_ps();
            for (int i = 0; i < 32; i++) sumsq = v_add(sumsq, v_mul(xg[i], xg[i]));
            const __m256 av = _mm256_sqrt_ps(v_div(sumsq, v_set(32.0f)));
            for (int i = 0; i < 32; i++) s->w[i] = v_add(av, v_abs(xg[i]));
            scale = fit_affine_v(32, nmax, xg, s->w, s->q + 32 * g, &neg_min, KQ_Q45K_RMIN(nmax), 0.1f,
                                 KQ_Q45K_NSTEP(nmax), 0);
        }
        store_group(s->scales[g], scale);
        store_group(s->mins[g], neg_min);
    }
    for (int b = 0; b < 8; b++) {
        uint8_t levels[256];
        float scales[8], mins[8], group_w[8];
        lane_column(s->scales, 8, b, scales);
        lane_column(s->mins, 8, b, mins);
        if (imatrix) {
            lane_column(s->group_w, 8, b, group_w);
            kq_q45k_finish_weighted(NULL, y + block_bytes * b, scales, mins, group_w, levels, nmax);
        } else {
            kq_q45k_finish_plain(NULL, y + block_bytes * b, scales, mins, levels, nmax);
        }
        float dg[8], mg[8];
        kq_q45k_group_factors(y + block_bytes * b, dg, mg);
        set_lane_column(s->dg, 8, b, dg);
        set_lane_column(s->mg, 8, b, mg);
    }
    requantize_v(s->x, s->q, 8, 32, s->dg, s->mg, 0, nmax, 0.0f);
    for (int b = 0; b < 8; b++) {
        uint8_t levels[256];
        lane_levels_u8(s->q, b, levels);
        kq_q45k_requantize_pack(NULL, y + block_bytes * b, levels, nmax);
    }
}

KQ_AVX2 static void q6k_eight(lanes8 *s, const float *x, const float *imatrix, uint8_t *y) {
    load_lanes(s, x, imatrix);
    for (int g = 0; g < 16; g++)
        store_group(s->scales[g], fit_symmetric_v(16, 32, s->x + 16 * g, imatrix ? s->im + 16 * g : NULL,
                                                  s->q + 16 * g));
    int done[8];
    for (int b = 0; b < 8; b++) {
        float scales[16], dg[16];
        lane_column(s->scales, 16, b, scales);
        done[b] = kq_q6k_header(y + 210 * b, scales);
        if (done[b]) memset(dg, 0, sizeof dg);  // all-zero block: written, nothing to requantize
        else kq_q6k_group_factors(y + 210 * b, dg);
        set_lane_column(s->dg, 16, b, dg);
    }
    requantize_v(s->x, s->q, 16, 16, s->dg, NULL, -32, 31, 32.0f);
    for (int b = 0; b < 8; b++) {
        if (done[b]) continue;
        int8_t levels[256];
        lane_levels_i8(s->q, b, levels);
        kq_q6k_requantize_pack(NULL, y + 210 * b, levels);
    }
}

// ---- row entry points

#define KQ_AVX2_ROW(name, block_bytes, eight_call, plain_row)                                                  \
    KQ_AVX2 void name(const float *x, void *vy, int64_t n, const float *imatrix) {                             \
        uint8_t *y = (uint8_t *)vy;                                                                            \
        const int64_t blocks = n / 256;                                                                        \
        lanes8 s __attribute__((aligned(32)));                                                                 \
        int64_t b = 0;                                                                                         \
        for (; b + 8 <= blocks; b += 8) {                                                                      \
            const float *xb = x + 256 * b, *ib = imatrix ? imatrix + 256 * b : NULL;                           \
            uint8_t *yb = y + (block_bytes) * b;                                                               \
            eight_call;                                                                                        \
        }                                                                                                      \
        if (b < blocks) plain_row(x + 256 * b, y + (block_bytes) * b, 256 * (blocks - b),                      \
                                  imatrix ? imatrix + 256 * b : NULL);                                         \
    }

KQ_AVX2_ROW(kq_quantize_row_q2_k_avx2, 84, q2k_eight(&s, xb, ib, yb), kq_quantize_row_q2_k)
KQ_AVX2_ROW(kq_quantize_row_q3_k_avx2, 110, q3k_eight(&s, xb, ib, yb), kq_quantize_row_q3_k)
KQ_AVX2_ROW(kq_quantize_row_q4_k_avx2, 144, q45k_eight(&s, xb, ib, yb, 15), kq_quantize_row_q4_k)
KQ_AVX2_ROW(kq_quantize_row_q5_k_avx2, 176, q45k_eight(&s, xb, ib, yb, 31), kq_quantize_row_q5_k)
KQ_AVX2_ROW(kq_quantize_row_q6_k_avx2, 210, q6k_eight(&s, xb, ib, yb), kq_quantize_row_q6_k)

#endif
