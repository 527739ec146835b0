// NEON (AArch64 Advanced SIMD) K-quant quantizers: the lane primitives for quants_k_lanes.h. A lane vector is
// two float32x4_t (eight 256-float blocks of a row at a time, one block per lane), so the algorithm and its
// operation order are the AVX2 path's. Only separate multiplies and adds (vmulq/vaddq/vsubq, never vfmaq/vmlaq,
// which may fuse), IEEE division and square root (vdivq_f32, vsqrtq_f32), and the file is built with
// -ffp-contract=off so the compiler does not fuse either: FMA is always available on AArch64.
#if defined(__aarch64__)

#include <arm_neon.h>

#include "quants_k_internal.h"

#define KQ_TARGET
#define KQ_ROW_NAME(t) kq_quantize_row_##t##_neon
#define KQ_TAIL(t) kq_quantize_row_##t
#define KQ_LANES 8

typedef struct { float32x4_t lo, hi; } kv;  // lanes 0-3, 4-7
typedef struct { uint32x4_t lo, hi; } km;   // all-ones / all-zeros per lane
typedef struct { int32x4_t lo, hi; } kvi;

// ---- lane primitives

#define KQ_PAIR(type, expr_lo, expr_hi) ((type){expr_lo, expr_hi})

static inline kv v_set(float f) { return KQ_PAIR(kv, vdupq_n_f32(f), vdupq_n_f32(f)); }
static inline kv v_zero(void) { return v_set(0.0f); }
static inline kv v_add(kv a, kv b) { return KQ_PAIR(kv, vaddq_f32(a.lo, b.lo), vaddq_f32(a.hi, b.hi)); }
static inline kv v_sub(kv a, kv b) { return KQ_PAIR(kv, vsubq_f32(a.lo, b.lo), vsubq_f32(a.hi, b.hi)); }
static inline kv v_mul(kv a, kv b) { return KQ_PAIR(kv, vmulq_f32(a.lo, b.lo), vmulq_f32(a.hi, b.hi)); }
static inline kv v_div(kv a, kv b) { return KQ_PAIR(kv, vdivq_f32(a.lo, b.lo), vdivq_f32(a.hi, b.hi)); }
static inline kv v_sqrt(kv a) { return KQ_PAIR(kv, vsqrtq_f32(a.lo), vsqrtq_f32(a.hi)); }
static inline kv v_abs(kv a) { return KQ_PAIR(kv, vabsq_f32(a.lo), vabsq_f32(a.hi)); }
static inline kv v_neg(kv a) { return KQ_PAIR(kv, vnegq_f32(a.lo), vnegq_f32(a.hi)); }
// C comparisons: ordered (false on NaN) except !=, which is true on NaN.
static inline km v_gt(kv a, kv b) { return KQ_PAIR(km, vcgtq_f32(a.lo, b.lo), vcgtq_f32(a.hi, b.hi)); }
static inline km v_lt(kv a, kv b) { return KQ_PAIR(km, vcltq_f32(a.lo, b.lo), vcltq_f32(a.hi, b.hi)); }
static inline km v_eq(kv a, kv b) { return KQ_PAIR(km, vceqq_f32(a.lo, b.lo), vceqq_f32(a.hi, b.hi)); }
static inline km v_ne(kv a, kv b) {
    return KQ_PAIR(km, vmvnq_u32(vceqq_f32(a.lo, b.lo)), vmvnq_u32(vceqq_f32(a.hi, b.hi)));
}
static inline km m_and(km a, km b) { return KQ_PAIR(km, vandq_u32(a.lo, b.lo), vandq_u32(a.hi, b.hi)); }
static inline km m_or(km a, km b) { return KQ_PAIR(km, vorrq_u32(a.lo, b.lo), vorrq_u32(a.hi, b.hi)); }
static inline km m_true(void) { return KQ_PAIR(km, vdupq_n_u32(~0u), vdupq_n_u32(~0u)); }
static inline int m_any(km m) { return vmaxvq_u32(vorrq_u32(m.lo, m.hi)) != 0; }
static inline int m_all(km m) { return vminvq_u32(vandq_u32(m.lo, m.hi)) != 0; }
static inline int m_bits(km m) {
    uint32_t u[8];
    vst1q_u32(u, m.lo);
    vst1q_u32(u + 4, m.hi);
    int bits = 0;
    for (int b = 0; b < 8; b++) bits |= (u[b] != 0) << b;
    return bits;
}
static inline kv v_pick(kv a, kv b, km m) { return KQ_PAIR(kv, vbslq_f32(m.lo, b.lo, a.lo), vbslq_f32(m.hi, b.hi, a.hi)); }
static inline kv v_load(const float *p) { return KQ_PAIR(kv, vld1q_f32(p), vld1q_f32(p + 4)); }
static inline void v_store(float *p, kv v) {
    vst1q_f32(p, v.lo);
    vst1q_f32(p + 4, v.hi);
}

// kq_round_magic per lane, clamped to [lo, hi] and returned as (exact) floats.
static inline float32x4_t round_clamp4(float32x4_t v, int lo, int hi) {
    int32x4_t bits = vreinterpretq_s32_f32(vaddq_f32(v, vdupq_n_f32(12582912.0f)));
    int32x4_t r = vsubq_s32(vandq_s32(bits, vdupq_n_s32(0x007fffff)), vdupq_n_s32(0x00400000));
    r = vminq_s32(vmaxq_s32(r, vdupq_n_s32(lo)), vdupq_n_s32(hi));
    return vcvtq_f32_s32(r);
}
static inline kv v_round_clamp(kv v, int lo, int hi) {
    return KQ_PAIR(kv, round_clamp4(v.lo, lo, hi), round_clamp4(v.hi, lo, hi));
}

// NEON's converting round saturates where kq_round_magic wraps: keep the magic sequence.
static inline kv v_round_clamp_small(kv v, int lo, int hi) { return v_round_clamp(v, lo, hi); }

static inline kvi vi_from(kv v) { return KQ_PAIR(kvi, vcvtq_s32_f32(v.lo), vcvtq_s32_f32(v.hi)); }
static inline kvi vi_set(int i) { return KQ_PAIR(kvi, vdupq_n_s32(i), vdupq_n_s32(i)); }
static inline kvi vi_and(kvi a, kvi b) { return KQ_PAIR(kvi, vandq_s32(a.lo, b.lo), vandq_s32(a.hi, b.hi)); }
static inline kvi vi_or(kvi a, kvi b) { return KQ_PAIR(kvi, vorrq_s32(a.lo, b.lo), vorrq_s32(a.hi, b.hi)); }
static inline kvi vi_shl(kvi a, int n) {
    const int32x4_t s = vdupq_n_s32(n);
    return KQ_PAIR(kvi, vshlq_s32(a.lo, s), vshlq_s32(a.hi, s));
}
static inline kvi vi_shr(kvi a, int n) {  // values are non-negative: a logical shift right
    const int32x4_t s = vdupq_n_s32(-n);
    return KQ_PAIR(kvi, vreinterpretq_s32_u32(vshlq_u32(vreinterpretq_u32_s32(a.lo), s)),
                   vreinterpretq_s32_u32(vshlq_u32(vreinterpretq_u32_s32(a.hi), s)));
}

// ---- 8x8 transpose of 32-bit lanes: out[j] lane b = in[b] lane j, as four 4x4 transposes

// c[j] lane i = r[i] lane j
static inline void transpose4(float32x4_t r0, float32x4_t r1, float32x4_t r2, float32x4_t r3, float32x4_t *c) {
    const float32x4_t t0 = vtrn1q_f32(r0, r1), t1 = vtrn2q_f32(r0, r1);  // (r0_0 r1_0 r0_2 r1_2), (r0_1 r1_1 ..)
    const float32x4_t t2 = vtrn1q_f32(r2, r3), t3 = vtrn2q_f32(r2, r3);
    c[0] = vreinterpretq_f32_f64(vtrn1q_f64(vreinterpretq_f64_f32(t0), vreinterpretq_f64_f32(t2)));
    c[1] = vreinterpretq_f32_f64(vtrn1q_f64(vreinterpretq_f64_f32(t1), vreinterpretq_f64_f32(t3)));
    c[2] = vreinterpretq_f32_f64(vtrn2q_f64(vreinterpretq_f64_f32(t0), vreinterpretq_f64_f32(t2)));
    c[3] = vreinterpretq_f32_f64(vtrn2q_f64(vreinterpretq_f64_f32(t1), vreinterpretq_f64_f32(t3)));
}

static inline void transpose8(const kv *r, kv *out) {
    float32x4_t c[4];
    transpose4(r[0].lo, r[1].lo, r[2].lo, r[3].lo, c);  // rows 0-3, columns 0-3 -> out[0..3] lanes 0-3
    for (int j = 0; j < 4; j++) out[j].lo = c[j];
    transpose4(r[4].lo, r[5].lo, r[6].lo, r[7].lo, c);  // rows 4-7, columns 0-3 -> out[0..3] lanes 4-7
    for (int j = 0; j < 4; j++) out[j].hi = c[j];
    transpose4(r[0].hi, r[1].hi, r[2].hi, r[3].hi, c);  // rows 0-3, columns 4-7 -> out[4..7] lanes 0-3
    for (int j = 0; j < 4; j++) out[4 + j].lo = c[j];
    transpose4(r[4].hi, r[5].hi, r[6].hi, r[7].hi, c);  // rows 4-7, columns 4-7 -> out[4..7] lanes 4-7
    for (int j = 0; j < 4; j++) out[4 + j].hi = c[j];
}

// w[k] lane b = word k of block b -> block b's 32 bytes at y + b*stride.
static inline void vi_store_block_rows(const kvi *w, uint8_t *y, int stride) {
    kv in[8], rows[8];
    for (int k = 0; k < 8; k++) in[k] = KQ_PAIR(kv, vreinterpretq_f32_s32(w[k].lo), vreinterpretq_f32_s32(w[k].hi));
    transpose8(in, rows);
    for (int b = 0; b < 8; b++) {
        uint8_t *dst = y + (size_t)stride * b;
        vst1q_u8(dst, vreinterpretq_u8_f32(rows[b].lo));
        vst1q_u8(dst + 16, vreinterpretq_u8_f32(rows[b].hi));
    }
}

#include "quants_k_lanes.h"

#endif
