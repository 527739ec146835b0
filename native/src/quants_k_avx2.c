// AVX2 K-quant quantizers: the lane primitives for quants_k_lanes.h (eight 256-float blocks of a row at a time,
// one block per lane of a __m256). Only "avx2" is targeted, not "fma", and the file is built with
// -ffp-contract=off: every multiply and add stays separate, as in the plain-C reference.
#if defined(__x86_64__) || defined(__i386__)

#include <immintrin.h>

#include "quants_k_internal.h"

#define KQ_TARGET __attribute__((target("avx2")))
#define KQ_ROW_NAME(t) kq_quantize_row_##t##_avx2
#define KQ_TAIL(t) kq_quantize_row_##t
#define KQ_LANES 8

typedef __m256 kv;
typedef __m256 km;
typedef __m256i kvi;

// ---- lane primitives

KQ_TARGET static inline kv v_set(float f) { return _mm256_set1_ps(f); }
KQ_TARGET static inline kv v_zero(void) { return _mm256_setzero_ps(); }
KQ_TARGET static inline kv v_add(kv a, kv b) { return _mm256_add_ps(a, b); }
KQ_TARGET static inline kv v_sub(kv a, kv b) { return _mm256_sub_ps(a, b); }
KQ_TARGET static inline kv v_mul(kv a, kv b) { return _mm256_mul_ps(a, b); }
KQ_TARGET static inline kv v_div(kv a, kv b) { return _mm256_div_ps(a, b); }
KQ_TARGET static inline kv v_sqrt(kv a) { return _mm256_sqrt_ps(a); }
KQ_TARGET static inline kv v_abs(kv a) { return _mm256_and_ps(a, _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff))); }
KQ_TARGET static inline kv v_neg(kv a) { return _mm256_xor_ps(a, v_set(-0.0f)); }
// C comparisons: ordered (false on NaN) except !=, which is true on NaN.
KQ_TARGET static inline km v_gt(kv a, kv b) { return _mm256_cmp_ps(a, b, _CMP_GT_OQ); }
KQ_TARGET static inline km v_lt(kv a, kv b) { return _mm256_cmp_ps(a, b, _CMP_LT_OQ); }
KQ_TARGET static inline km v_eq(kv a, kv b) { return _mm256_cmp_ps(a, b, _CMP_EQ_OQ); }
KQ_TARGET static inline km v_ne(kv a, kv b) { return _mm256_cmp_ps(a, b, _CMP_NEQ_UQ); }
KQ_TARGET static inline km m_and(km a, km b) { return _mm256_and_ps(a, b); }
KQ_TARGET static inline km m_or(km a, km b) { return _mm256_or_ps(a, b); }
KQ_TARGET static inline km m_true(void) { return _mm256_castsi256_ps(_mm256_set1_epi32(-1)); }
KQ_TARGET static inline int m_any(km m) { return _mm256_movemask_ps(m) != 0; }
KQ_TARGET static inline int m_all(km m) { return _mm256_movemask_ps(m) == 0xff; }
KQ_TARGET static inline int m_bits(km m) { return _mm256_movemask_ps(m); }
KQ_TARGET static inline kv v_pick(kv a, kv b, km m) { return _mm256_blendv_ps(a, b, m); }
KQ_TARGET static inline kv v_load(const float *p) { return _mm256_loadu_ps(p); }
KQ_TARGET static inline void v_store(float *p, kv v) { _mm256_storeu_ps(p, v); }

// kq_round_magic per lane, clamped to [lo, hi] and returned as (exact) floats.
KQ_TARGET static inline kv v_round_clamp(kv v, int lo, int hi) {
    __m256i bits = _mm256_castps_si256(_mm256_add_ps(v, v_set(12582912.0f)));
    __m256i r = _mm256_sub_epi32(_mm256_and_si256(bits, _mm256_set1_epi32(0x007fffff)), _mm256_set1_epi32(0x00400000));
    r = _mm256_min_epi32(_mm256_max_epi32(r, _mm256_set1_epi32(lo)), _mm256_set1_epi32(hi));
    return _mm256_cvtepi32_ps(r);
}

// |v| < 2^22: cvtps2dq rounds to nearest even (the default MXCSR mode, which the adder of kq_round_magic follows too).
KQ_TARGET static inline kv v_round_clamp_small(kv v, int lo, int hi) {
    __m256i r = _mm256_cvtps_epi32(v);
    r = _mm256_min_epi32(_mm256_max_epi32(r, _mm256_set1_epi32(lo)), _mm256_set1_epi32(hi));
    return _mm256_cvtepi32_ps(r);
}

KQ_TARGET static inline kvi vi_from(kv v) { return _mm256_cvttps_epi32(v); }
KQ_TARGET static inline kvi vi_set(int i) { return _mm256_set1_epi32(i); }
KQ_TARGET static inline kvi vi_and(kvi a, kvi b) { return _mm256_and_si256(a, b); }
KQ_TARGET static inline kvi vi_or(kvi a, kvi b) { return _mm256_or_si256(a, b); }
KQ_TARGET static inline kvi vi_shl(kvi a, int n) { return _mm256_sll_epi32(a, _mm_cvtsi32_si128(n)); }
KQ_TARGET static inline kvi vi_shr(kvi a, int n) { return _mm256_srl_epi32(a, _mm_cvtsi32_si128(n)); }

// ---- 8x8 transpose of 32-bit lanes: out[j] lane b = in[b] lane j

KQ_TARGET static inline void transpose8(const kv *r, kv *out) {
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

// w[k] lane b = word k of block b -> block b's 32 bytes at y + b*stride.
KQ_TARGET static inline void vi_store_block_rows(const kvi *w, uint8_t *y, int stride) {
    kv in[8], rows[8];
    for (int k = 0; k < 8; k++) in[k] = _mm256_castsi256_ps(w[k]);
    transpose8(in, rows);
    for (int b = 0; b < 8; b++) _mm256_storeu_ps((float *)(void *)(y + (size_t)stride * b), rows[b]);
}

#include "quants_k_lanes.h"

#endif
