// 4-bit floating-point block types: MXFP4 (32 floats a block, a power-of-two E8M0 scale) and NVFP4 (64 floats a
// block in four sub-blocks of 16, each with an unsigned E4M3 scale).
//
// Both store E2M1 codes: 1 sign bit, 2 exponent bits, 1 mantissa bit, i.e. the magnitudes 0, 0.5, 1, 1.5, 2, 3, 4,
// 6. ggml keeps them doubled (FP4_LEVELS below, integers) and halves the scales instead. Each value takes the code
// whose level * scale is nearest (the first of equals, codes in index order), importance weights are ignored
// (llama.cpp ignores them for both types).
#include <math.h>
#include <string.h>

#include "ggufkit_quants.h"

enum { MXFP4_BLOCK = 32, MXFP4_BYTES = 1 + 16, NVFP4_BLOCK = 64, NVFP4_SUB = 16, NVFP4_BYTES = 4 + 32 };

// Code -> doubled E2M1 value: codes 0..7 are +0, +0.5, .. +6 (doubled: 0, 1, 2, 3, 4, 6, 8, 12), 8..15 the same
// magnitudes negated (code 8 is -0, stored as 0).
static const int8_t FP4_LEVELS[16] = {0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12};

// ---- shared: the nearest code

// Index of the level whose level * d is nearest x: |level * d - x| in code order, strict < keeps the first.
static inline uint8_t nearest_code(float x, float d) {
    uint8_t best = 0;
    float best_err = fabsf((float)FP4_LEVELS[0] * d - x);
    for (int i = 1; i < 16; i++) {
        const float err = fabsf((float)FP4_LEVELS[i] * d - x);
        if (err < best_err) {
            best = (uint8_t)i;
            best_err = err;
        }
    }
    return best;
}

// n values (n even) -> n/2 bytes: byte j = code(x[j]) | code(x[j + n/2]) << 4.
static inline void pack_codes(const float *x, int n, float d, uint8_t *qs) {
    for (int j = 0; j < n / 2; j++) qs[j] = (uint8_t)(nearest_code(x[j], d) | (nearest_code(x[j + n / 2], d) << 4));
}

static inline void unpack_codes(const uint8_t *qs, int n, float d, float *x) {
    for (int j = 0; j < n / 2; j++) {
        x[j] = (float)FP4_LEVELS[qs[j] & 0x0f] * d;
        x[j + n / 2] = (float)FP4_LEVELS[qs[j] >> 4] * d;
    }
}

static inline float float_from_bits(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

// ---- MXFP4
// block (17 bytes): | e: u8 | qs: 16 bytes, byte j = code(x[j]) | code(x[j + 16]) << 4 |
// e = floor(log2(max |x|)) - 2 + 127 (the largest magnitude lands in the top binade of the 0..6 levels), 0 for an
// all-zero block; the (halved) scale is 2^(e - 128), a subnormal float for e < 2.

static float e8m0_half(uint8_t e) {
    return float_from_bits(e < 2 ? 0x00200000u << e : (uint32_t)(e - 1) << 23);
}

static void quantize_row_mxfp4(const float *x, void *vy, int64_t n, const float *imatrix) {
    (void)imatrix;
    uint8_t *y = (uint8_t *)vy;
    for (int64_t b = 0; b < n / MXFP4_BLOCK; b++, x += MXFP4_BLOCK, y += MXFP4_BYTES) {
        float amax = 0.0f;
        for (int j = 0; j < MXFP4_BLOCK; j++)
            if (amax < fabsf(x[j])) amax = fabsf(x[j]);
        // the float -> u8 conversion as llama.cpp writes it (values below 2^-125 wrap, the same way here)
        const uint8_t e = amax > 0.0f ? (uint8_t)(floorf(log2f(amax)) - 2 + 127) : 0;
        y[0] = e;
        pack_codes(x, MXFP4_BLOCK, e8m0_half(e), y + 1);
    }
}

static void dequantize_row_mxfp4(const void *vy, float *x, int64_t n) {
    const uint8_t *y = (const uint8_t *)vy;
    for (int64_t b = 0; b < n / MXFP4_BLOCK; b++, y += MXFP4_BYTES, x += MXFP4_BLOCK)
        unpack_codes(y + 1, MXFP4_BLOCK, e8m0_half(y[0]), x);
}

// ---- NVFP4
// block (36 bytes): | d: 4 x u8 (UE4M3, one per sub-block of 16) | qs: 4 x 8 bytes, sub-block s at 8s:
//                     byte j = code(x[16s + j]) | code(x[16s + j + 8]) << 4 |
// UE4M3: 4 exponent bits (bias 7), 3 mantissa bits, no sign; 0x00 and 0x7f decode to 0. The scale is
// max |x| / 6 rounded to UE4M3 (ties up), clamped to 448; decoded values are halved like the MXFP4 scale.

// UE4M3 byte -> halved float: exponent 0 is subnormal (m * 2^-9), else (1 + m/8) * 2^(e-7). All exact.
static float ue4m3_half(uint8_t u) {
    if (u == 0 || u == 0x7f) return 0.0f;
    const int e = (u >> 3) & 0x0f, m = u & 7;
    const float raw = e == 0 ? ldexpf((float)m, -9) : ldexpf(1.0f + (float)m / 8.0f, e - 7);
    return raw * 0.5f;
}

// Positive float -> UE4M3 byte by its bit fields: round on the first dropped mantissa bit; below 2^-6 as a
// subnormal (round(x * 512), from 1 to 7, else 0); from 2^8 on, the largest code 0x7e.
static uint8_t ue4m3_of(float x) {
    if (!(x > 0.0f)) return 0;
    if (x > 448.0f) x = 448.0f;
    uint32_t bits;
    memcpy(&bits, &x, 4);
    const int exp = (int)((bits >> 23) & 0xff) - 127 + 7;
    if (exp <= 0) {
        int m = (int)(x * 512.0f + 0.5f);
        if (m > 7) m = 7;
        return m < 1 ? 0 : (uint8_t)m;
    }
    if (exp >= 15) return 0x7e;
    int m = (int)((bits >> 20) & 7) + (int)((bits >> 19) & 1);
    int e = exp;
    if (m > 7) {
        m = 0;
        if (++e >= 15) return 0x7e;
    }
    return (uint8_t)((e << 3) | m);
}

static void quantize_row_nvfp4(const float *x, void *vy, int64_t n, const float *imatrix) {
    (void)imatrix;
    uint8_t *y = (uint8_t *)vy;
    for (int64_t b = 0; b < n / NVFP4_BLOCK; b++, x += NVFP4_BLOCK, y += NVFP4_BYTES) {
        for (int s = 0; s < NVFP4_BLOCK / NVFP4_SUB; s++) {
            const float *xs = x + NVFP4_SUB * s;
            float amax = 0.0f;
            for (int j = 0; j < NVFP4_SUB; j++)
                if (amax < fabsf(xs[j])) amax = fabsf(xs[j]);
            const uint8_t u = ue4m3_of(amax / 6.0f);
            y[s] = u;
            pack_codes(xs, NVFP4_SUB, ue4m3_half(u), y + 4 + 8 * s);
        }
    }
}

static void dequantize_row_nvfp4(const void *vy, float *x, int64_t n) {
    const uint8_t *y = (const uint8_t *)vy;
    for (int64_t b = 0; b < n / NVFP4_BLOCK; b++, y += NVFP4_BYTES, x += NVFP4_BLOCK)
        for (int s = 0; s < NVFP4_BLOCK / NVFP4_SUB; s++)
            unpack_codes(y + 4 + 8 * s, NVFP4_SUB, ue4m3_half(y[s]), x + NVFP4_SUB * s);
}

// ---- AVX2: eight values in lanes
// The nearest-code search of eight values at once, each lane doing nearest_code's operations in its order (the
// products level * d are the scalar ones, shared by all lanes); the scale steps stay scalar.

#if defined(__x86_64__) || defined(__i386__)
#include "simd_x86.h"
#define HAVE_FP4_AVX2 1

// codes of x[0..7] at scale d, as 32-bit lanes
GK_AVX2 static inline __m256i nearest_code8(const float *x, float d) {
    const __m256 v = _mm256_loadu_ps(x), sign = _mm256_set1_ps(-0.0f);
    __m256i best = _mm256_setzero_si256();
    __m256 best_err = _mm256_andnot_ps(sign, _mm256_sub_ps(_mm256_set1_ps((float)FP4_LEVELS[0] * d), v));
    for (int i = 1; i < 16; i++) {
        const __m256 err = _mm256_andnot_ps(sign, _mm256_sub_ps(_mm256_set1_ps((float)FP4_LEVELS[i] * d), v));
        const __m256 lt = _mm256_cmp_ps(err, best_err, _CMP_LT_OQ);
        best = _mm256_blendv_epi8(best, _mm256_set1_epi32(i), _mm256_castps_si256(lt));
        best_err = _mm256_blendv_ps(best_err, err, lt);
    }
    return best;
}

// n values (n = 16 or 32) -> n/2 bytes as pack_codes.
GK_AVX2 static inline void pack_codes_avx2(const float *x, int n, float d, uint8_t *qs) {
    int32_t c[32];
    for (int j = 0; j < n; j += 8) _mm256_storeu_si256((__m256i *)(void *)(c + j), nearest_code8(x + j, d));
    for (int j = 0; j < n / 2; j++) qs[j] = (uint8_t)(c[j] | (c[j + n / 2] << 4));
}

GK_AVX2 static void quantize_row_mxfp4_avx2(const float *x, void *vy, int64_t n, const float *imatrix) {
    (void)imatrix;
    uint8_t *y = (uint8_t *)vy;
    for (int64_t b = 0; b < n / MXFP4_BLOCK; b++, x += MXFP4_BLOCK, y += MXFP4_BYTES) {
        float amax = 0.0f;
        for (int j = 0; j < MXFP4_BLOCK; j++)
            if (amax < fabsf(x[j])) amax = fabsf(x[j]);
        const uint8_t e = amax > 0.0f ? (uint8_t)(floorf(log2f(amax)) - 2 + 127) : 0;
        y[0] = e;
        pack_codes_avx2(x, MXFP4_BLOCK, e8m0_half(e), y + 1);
    }
}

GK_AVX2 static void quantize_row_nvfp4_avx2(const float *x, void *vy, int64_t n, const float *imatrix) {
    (void)imatrix;
    uint8_t *y = (uint8_t *)vy;
    for (int64_t b = 0; b < n / NVFP4_BLOCK; b++, x += NVFP4_BLOCK, y += NVFP4_BYTES) {
        for (int s = 0; s < NVFP4_BLOCK / NVFP4_SUB; s++) {
            const float *xs = x + NVFP4_SUB * s;
            float amax = 0.0f;
            for (int j = 0; j < NVFP4_SUB; j++)
                if (amax < fabsf(xs[j])) amax = fabsf(xs[j]);
            const uint8_t u = ue4m3_of(amax / 6.0f);
            y[s] = u;
            pack_codes_avx2(xs, NVFP4_SUB, ue4m3_half(u), y + 4 + 8 * s);
        }
    }
}
#define FP4_SIMD(fn) fn##_avx2, "avx2"
#else
#define FP4_SIMD(fn) NULL, NULL
#endif

// ---- table

const gk_type_traits gk_fp4_types[] = {
    {39, "MXFP4", MXFP4_BLOCK, MXFP4_BYTES, quantize_row_mxfp4, FP4_SIMD(quantize_row_mxfp4), dequantize_row_mxfp4},
    {40, "NVFP4", NVFP4_BLOCK, NVFP4_BYTES, quantize_row_nvfp4, FP4_SIMD(quantize_row_nvfp4), dequantize_row_nvfp4},
    {0, NULL, 0, 0, NULL, NULL, NULL, NULL},
};
