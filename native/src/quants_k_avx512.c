// AVX-512 K-quant quantizers: the lane primitives for quants_k_lanes.h with sixteen 256-float blocks of a row at a
// time, one block per lane of a __m512. Lane masks are AVX-512 mask registers (__mmask16), so a per-lane pick is
// one masked blend. Only "avx512f,avx512bw,avx512dq,avx512vl" (plus "avx2" for the 256-bit transposes) are
// targeted, per function: the translation unit stays baseline x86-64 and the extension loads on any x86-64 CPU;
// module.c calls these only when the CPU (and OS) has all four (cpu_has("avx512")). The file is built with
// -ffp-contract=off, as the plain-C reference: multiplies and adds stay separate, except AVX-512F's own FMA in
// v_div_recip (Markstein's correction of a quotient from a shared reciprocal, bit-equal to the division where
// quants_k_lanes.h uses it). Beyond the primitives of every backend this one has the shortcuts quants_k_lanes.h
// switches on (KQ_AFFINE_SHORT, KQ_AFFINE_GROUPS, KQ_DIV_SHARED, KQ_POSITIVE_LANES, KQ_Q3K_HEADER_LANES).
//
// Blocks left over (fewer than sixteen) go through the AVX2 row function, which passes its own leftovers (fewer
// than eight) to the plain path: every path gives the same bytes.
#if defined(__x86_64__) || defined(__i386__)

#include <immintrin.h>

#include "quants_k_internal.h"

#define KQ_TARGET __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx2")))
#define KQ_ROW_NAME(t) kq_quantize_row_##t##_avx512
#define KQ_TAIL(t) kq_quantize_row_##t##_avx2
#define KQ_LANES 16
// Q3_K's descent: two passes in lanes before the plain continuation (measured: 1598 -> 1855 MB/s here; on AVX2 one
// pass is quicker, 1312 vs 1258)
#define KQ_DESCENT_LANE_PASSES 2
// the symmetric fit (Q6_K, Q3_K with imatrix): two trials at once (their chains of adds interleaved)
#define KQ_SYM_TRIALS 2

typedef __m512 kv;
typedef __mmask16 km;
typedef __m512i kvi;

// ---- lane primitives

KQ_TARGET static inline kv v_set(float f) { return _mm512_set1_ps(f); }
KQ_TARGET static inline kv v_zero(void) { return _mm512_setzero_ps(); }
KQ_TARGET static inline kv v_add(kv a, kv b) { return _mm512_add_ps(a, b); }
KQ_TARGET static inline kv v_sub(kv a, kv b) { return _mm512_sub_ps(a, b); }
KQ_TARGET static inline kv v_mul(kv a, kv b) { return _mm512_mul_ps(a, b); }
KQ_TARGET static inline kv v_div(kv a, kv b) { return _mm512_div_ps(a, b); }
KQ_TARGET static inline kv v_sqrt(kv a) { return _mm512_sqrt_ps(a); }
KQ_TARGET static inline kv v_abs(kv a) {
    return _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(a), _mm512_set1_epi32(0x7fffffff)));
}
KQ_TARGET static inline kv v_neg(kv a) {
    return _mm512_castsi512_ps(_mm512_xor_si512(_mm512_castps_si512(a), _mm512_set1_epi32((int)0x80000000u)));
}
// C comparisons: ordered (false on NaN) except !=, which is true on NaN.
KQ_TARGET static inline km v_gt(kv a, kv b) { return _mm512_cmp_ps_mask(a, b, _CMP_GT_OQ); }
KQ_TARGET static inline km v_lt(kv a, kv b) { return _mm512_cmp_ps_mask(a, b, _CMP_LT_OQ); }
KQ_TARGET static inline km v_eq(kv a, kv b) { return _mm512_cmp_ps_mask(a, b, _CMP_EQ_OQ); }
KQ_TARGET static inline km v_ne(kv a, kv b) { return _mm512_cmp_ps_mask(a, b, _CMP_NEQ_UQ); }
KQ_TARGET static inline km m_and(km a, km b) { return (km)(a & b); }
KQ_TARGET static inline km m_or(km a, km b) { return (km)(a | b); }
KQ_TARGET static inline km m_true(void) { return (km)0xffff; }
KQ_TARGET static inline int m_any(km m) { return m != 0; }
KQ_TARGET static inline int m_all(km m) { return m == 0xffff; }
KQ_TARGET static inline int m_bits(km m) { return (int)m; }
KQ_TARGET static inline kv v_pick(kv a, kv b, km m) { return _mm512_mask_blend_ps(m, a, b); }
KQ_TARGET static inline kv v_load(const float *p) { return _mm512_loadu_ps(p); }
KQ_TARGET static inline void v_store(float *p, kv v) { _mm512_storeu_ps(p, v); }

// kq_round_magic per lane, clamped to [lo, hi] and returned as (exact) floats.
KQ_TARGET static inline kv v_round_clamp(kv v, int lo, int hi) {
    __m512i bits = _mm512_castps_si512(_mm512_add_ps(v, v_set(12582912.0f)));
    __m512i r = _mm512_sub_epi32(_mm512_and_si512(bits, _mm512_set1_epi32(0x007fffff)), _mm512_set1_epi32(0x00400000));
    r = _mm512_min_epi32(_mm512_max_epi32(r, _mm512_set1_epi32(lo)), _mm512_set1_epi32(hi));
    return _mm512_cvtepi32_ps(r);
}

// |v| < 2^22: cvtps2dq rounds to nearest even (the default MXCSR mode, which the adder of kq_round_magic follows too).
KQ_TARGET static inline kv v_round_clamp_small(kv v, int lo, int hi) {
    __m512i r = _mm512_cvtps_epi32(v);
    r = _mm512_min_epi32(_mm512_max_epi32(r, _mm512_set1_epi32(lo)), _mm512_set1_epi32(hi));
    return _mm512_cvtepi32_ps(r);
}

// Round to nearest even as a float for |v| < 2^22: adding 1.5 * 2^23 leaves no fraction bits, subtracting it back
// is exact (kq_round_magic's adder, read back as a float instead of through the integer bits).
KQ_TARGET static inline kv v_round_small(kv v) {
    return _mm512_sub_ps(_mm512_add_ps(v, v_set(12582912.0f)), v_set(12582912.0f));
}
// Float min / max for values that are not NaN.
KQ_TARGET static inline kv v_minf(kv a, kv b) { return _mm512_min_ps(a, b); }
KQ_TARGET static inline kv v_maxf(kv a, kv b) { return _mm512_max_ps(a, b); }
#define KQ_AFFINE_SHORT 1
#define KQ_AFFINE_GROUPS 4
// x / d from r = 1/d (correctly rounded): q = x * r, then q + r * (x - q * d) with the remainder exact by FMA
// (AVX-512F's own FMA: no further CPU feature). Conditions and checks: requantize_v in quants_k_lanes.h.
KQ_TARGET static inline kv v_div_recip(kv x, kv d, kv r) {
    const kv q = _mm512_mul_ps(x, r);
    return _mm512_fmadd_ps(_mm512_fnmadd_ps(q, d, x), r, q);
}
#define KQ_DIV_SHARED 1

// (float)(uint8_t)kq_round_magic(v) per lane, any v: the magic rounding's int, wrapped to a byte.
KQ_TARGET static inline kv v_round_byte(kv v) {
    __m512i bits = _mm512_castps_si512(_mm512_add_ps(v, v_set(12582912.0f)));
    __m512i r = _mm512_sub_epi32(_mm512_and_si512(bits, _mm512_set1_epi32(0x007fffff)), _mm512_set1_epi32(0x00400000));
    return _mm512_cvtepi32_ps(_mm512_and_si512(r, _mm512_set1_epi32(255)));
}
// (float)(uint8_t)l for exact integer floats l (|l| < 2^23).
KQ_TARGET static inline kv v_wrap_byte(kv l) {
    return _mm512_cvtepi32_ps(_mm512_and_si512(_mm512_cvttps_epi32(l), _mm512_set1_epi32(255)));
}
#define KQ_POSITIVE_LANES 1
// (float)(int8_t)kq_round_magic(v) per lane, any v.
KQ_TARGET static inline kv v_round_int8(kv v) {
    __m512i bits = _mm512_castps_si512(_mm512_add_ps(v, v_set(12582912.0f)));
    __m512i r = _mm512_sub_epi32(_mm512_and_si512(bits, _mm512_set1_epi32(0x007fffff)), _mm512_set1_epi32(0x00400000));
    r = _mm512_sub_epi32(_mm512_and_si512(_mm512_add_epi32(r, _mm512_set1_epi32(128)), _mm512_set1_epi32(255)),
                         _mm512_set1_epi32(128));
    return _mm512_cvtepi32_ps(r);
}
#define KQ_Q3K_HEADER_LANES 1

KQ_TARGET static inline kvi vi_from(kv v) { return _mm512_cvttps_epi32(v); }
KQ_TARGET static inline kvi vi_set(int i) { return _mm512_set1_epi32(i); }
KQ_TARGET static inline kvi vi_and(kvi a, kvi b) { return _mm512_and_si512(a, b); }
KQ_TARGET static inline kvi vi_or(kvi a, kvi b) { return _mm512_or_si512(a, b); }
KQ_TARGET static inline kvi vi_shl(kvi a, int n) { return _mm512_sll_epi32(a, _mm_cvtsi32_si128(n)); }
KQ_TARGET static inline kvi vi_shr(kvi a, int n) { return _mm512_srl_epi32(a, _mm_cvtsi32_si128(n)); }

// ---- transposes: 16 blocks as two 8x8 tiles of 32-bit words (blocks 0-7 in the low 256 bits, 8-15 in the high)

// out[j] lane b = in[b] lane j for an 8x8 tile of __m256.
KQ_TARGET static inline void transpose8_256(const __m256 *r, __m256 *out) {
    __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
    __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
    __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
    __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
    __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
    __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
    __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
    __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
    out[0] = _mm256_permute2f128_ps(u0, u4, 0x20);
    out[1] = _mm256_permute2f128_ps(u1, u5, 0x20);
    out[2] = _mm256_permute2f128_ps(u2, u6, 0x20);
    out[3] = _mm256_permute2f128_ps(u3, u7, 0x20);
    out[4] = _mm256_permute2f128_ps(u0, u4, 0x31);
    out[5] = _mm256_permute2f128_ps(u1, u5, 0x31);
    out[6] = _mm256_permute2f128_ps(u2, u6, 0x31);
    out[7] = _mm256_permute2f128_ps(u3, u7, 0x31);
}

// out[j] lane b = r[b] lane j for a 16x16 tile: pairs interleaved (unpack), then 4-float quarters gathered
// (shuffle_ps), then 128-bit lanes in two steps (shuffle_f32x4: imm 0x88 takes lanes 0 and 2 of each source, 0xDD
// lanes 1 and 3). 64 shuffles for 256 floats, where two 8x8 256-bit tiles and the inserts take 112.
KQ_TARGET static inline void transpose16(const __m512 *r, __m512 *out) {
    __m512 t[16], u[16], v[16];
    for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);      // per 128-bit lane L: r_i[4L], r_i+1[4L], r_i[4L+1], r_i+1[4L+1]
        t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);  // the same for elements 4L+2, 4L+3
    }
    for (int i = 0; i < 16; i += 4) {  // u[i + c] lane L: rows i..i+3 of element 4L + c
        u[i] = _mm512_shuffle_ps(t[i], t[i + 2], 0x44);
        u[i + 1] = _mm512_shuffle_ps(t[i], t[i + 2], 0xEE);
        u[i + 2] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0x44);
        u[i + 3] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
    }
    for (int h = 0; h < 16; h += 8) {  // v[h + c]: elements c, c + 8 of rows h..h+7; v[h + 4 + c]: c + 4, c + 12
        for (int c = 0; c < 4; c++) {
            v[h + c] = _mm512_shuffle_f32x4(u[h + c], u[h + 4 + c], 0x88);
            v[h + 4 + c] = _mm512_shuffle_f32x4(u[h + c], u[h + 4 + c], 0xDD);
        }
    }
    for (int c = 0; c < 8; c++) {
        out[c] = _mm512_shuffle_f32x4(v[c], v[8 + c], 0x88);
        out[c + 8] = _mm512_shuffle_f32x4(v[c], v[8 + c], 0xDD);
    }
}

// src: 16 blocks of 256 floats, block b at src + 256b -> dst[e] lane b = element e of block b.
KQ_TARGET static void to_lanes(const float *src, kv *dst) {
    for (int e = 0; e < 256; e += 16) {
        __m512 rows[16];
        for (int b = 0; b < 16; b++) rows[b] = _mm512_loadu_ps(src + 256 * b + e);
        transpose16(rows, dst + e);
    }
}

// w[k] lane b = word k of block b (k = 0..7) -> block b's 32 bytes at y + b*stride.
KQ_TARGET static inline void vi_store_block_rows(const kvi *w, uint8_t *y, int stride) {
    __m256 lo[8], hi[8], rows[8];
    for (int k = 0; k < 8; k++) {
        const __m512 f = _mm512_castsi512_ps(w[k]);
        lo[k] = _mm512_castps512_ps256(f);
        hi[k] = _mm512_extractf32x8_ps(f, 1);
    }
    transpose8_256(lo, rows);
    for (int b = 0; b < 8; b++) _mm256_storeu_ps((float *)(void *)(y + (size_t)stride * b), rows[b]);
    transpose8_256(hi, rows);
    for (int b = 0; b < 8; b++) _mm256_storeu_ps((float *)(void *)(y + (size_t)stride * (b + 8)), rows[b]);
}

#include "quants_k_lanes.h"

#endif
