// Legacy block types: 32 floats a block, one scale (and for _1 types a minimum) per block.
//
// Without importance weights llama.cpp quantizes these with a single closed-form pass per block (the "reference"
// rows). With weights it searches the scale per block, weighting each column by imatrix[j] * sqrt(sigma2 + x^2)
// where sigma2 is the mean square of the whole row. Both paths are reproduced here operation by operation.
#include <float.h>
#include <math.h>
#include <string.h>

#include "ggufkit_quants.h"

enum { LEGACY_BLOCK = 32, HALF_BLOCK = 16 };

// Blocks whose largest magnitude is below this are treated as all zero by the weighted searches.
#define ALL_ZERO_BELOW 1e-15f

// ---- shared helpers

// Round half to even through the float adder: adding 1.5 * 2^23 leaves the rounded integer in the low mantissa
// bits. Same result as gk_nearest_int for |f| < 2^22, and (unlike rintf + cast) the same well-defined garbage as
// llama.cpp's rounding for anything outside that range, so degenerate inputs still give identical bytes.
static inline int round_via_magic(float f) {
    float biased = f + 12582912.0f;
    int32_t bits;
    memcpy(&bits, &biased, 4);
    return (bits & 0x007fffff) - 0x00400000;
}

// The value with the largest magnitude (the first one on ties), sign kept.
static inline float signed_absmax(const float *x, int n) {
    float amax = 0.0f, max = 0.0f;
    for (int j = 0; j < n; j++) {
        if (fabsf(x[j]) > amax) {
            amax = fabsf(x[j]);
            max = x[j];
        }
    }
    return max;
}

// Mean square of a whole row, the "sigma2" of the importance weighting: sequential f32 sum / n.
static float row_mean_square(const float *x, int64_t n) {
    float sum = 0.0f;
    for (int64_t j = 0; j < n; j++) sum += x[j] * x[j];
    return sum / (float)n;
}

// (32,) f32 block, (32,) imatrix slice -> (32,) weights imatrix[j] * sqrt(sigma2 + x[j]^2)
static inline void importance_weights(const float *x, const float *im, float sigma2, float *w) {
    for (int j = 0; j < LEGACY_BLOCK; j++) w[j] = im[j] * sqrtf(sigma2 + x[j] * x[j]);
}

// Nibble j holds q[j] (low half) and q[j + 16] (high half) for j < 16.
static inline void pack_nibbles(const uint8_t *q, uint8_t *qs) {
    for (int j = 0; j < HALF_BLOCK; j++) qs[j] = (uint8_t)((q[j] & 0x0f) | ((q[j + HALF_BLOCK] & 0x0f) << 4));
}

// Bit j of the little-endian u32 is bit 4 of q[j].
static inline void pack_fifth_bits(const uint8_t *q, uint8_t *qh) {
    uint32_t bits = 0;
    for (int j = 0; j < LEGACY_BLOCK; j++) bits |= (uint32_t)((q[j] >> 4) & 1u) << j;
    memcpy(qh, &bits, 4);
}

// ---- weighted symmetric fit (Q4_0, Q5_0 with an imatrix)
// Finds d with x[j] ~= d * (q[j] - levels/2), q in [0, levels), maximising (sum w x l)^2 / (sum w l^2) over the
// inverse scales -(levels/2 + k/10) / max for k = 0, +-1 .. +-9 (k = 0 first; a later k must be strictly better).

// The two weighted sums for one candidate inverse scale; l = clamp(round(iscale * x), -half, half - 1).
static inline void symmetric_sums(const float *x, const float *w, int half, float iscale, float *sum_wxl,
                                  float *sum_wll) {
    float sxl = 0.0f, sll = 0.0f;
    for (int j = 0; j < LEGACY_BLOCK; j++) {
        int l = round_via_magic(iscale * x[j]);
        l = l < -half ? -half : l > half - 1 ? half - 1 : l;
        const float lf = (float)l;
        sxl += w[j] * x[j] * lf;
        sll += w[j] * lf * lf;
    }
    *sum_wxl = sxl;
    *sum_wll = sll;
}

static inline void symmetric_levels(const float *x, int half, float iscale, uint8_t *q) {
    for (int j = 0; j < LEGACY_BLOCK; j++) {
        int l = round_via_magic(iscale * x[j]);
        l = l < -half ? -half : l > half - 1 ? half - 1 : l;
        q[j] = (uint8_t)(l + half);
    }
}

// Returns d; q receives the unsigned levels (l + half).
static float fit_symmetric_weighted(const float *x, const float *w, int half, uint8_t *q) {
    const float max = signed_absmax(x, LEGACY_BLOCK);
    if (fabsf(max) < ALL_ZERO_BELOW) {
        memset(q, 0, LEGACY_BLOCK);
        return 0.0f;
    }
    float iscale = (float)(-half) / max;
    float sxl, sll;
    symmetric_sums(x, w, half, iscale, &sxl, &sll);
    symmetric_levels(x, half, iscale, q);
    float scale = sll != 0.0f ? sxl / sll : 0.0f;
    float best = scale * sxl;
    for (int k = -9; k <= 9; k++) {
        if (k == 0) continue;
        iscale = -((float)half + 0.1f * (float)k) / max;
        symmetric_sums(x, w, half, iscale, &sxl, &sll);
        if (sll > 0.0f && sxl * sxl > best * sll) {
            symmetric_levels(x, half, iscale, q);
            scale = sxl / sll;
            best = scale * sxl;
        }
    }
    return scale;
}

// ---- weighted affine fit (Q4_1, Q5_1 with an imatrix)
// Finds (d, m) with x[j] ~= d * q[j] + m, q in [0, nmax], m <= 0, minimising sum w (d q + m - x)^2. Starts from the
// min/max grid, then tries the inverse scales (nmax - 0.9 + 0.05 k) / (max - min), k = 0..36, each with the
// weighted least-squares (d, m) for its levels (m clamped to 0 by refitting d alone); keeps strict improvements.

static inline int clamp_level(int l, int nmax) { return l < 0 ? 0 : l > nmax ? nmax : l; }

// Returns d; *neg_min receives -m (as llama.cpp hands it on), q the levels.
static float fit_affine_weighted(const float *x, const float *w, int nmax, uint8_t *q, float *neg_min) {
    float min = x[0], max = x[0];
    float sum_w = w[0];
    float sum_x = sum_w * x[0];
    for (int j = 1; j < LEGACY_BLOCK; j++) {
        if (x[j] < min) min = x[j];
        if (x[j] > max) max = x[j];
        sum_w += w[j];
        sum_x += w[j] * x[j];
    }
    if (min > 0.0f) min = 0.0f;
    if (max <= min) {
        memset(q, 0, LEGACY_BLOCK);
        *neg_min = -min;
        return 0.0f;
    }
    float iscale = (float)nmax / (max - min);
    float scale = 1.0f / iscale;
    float best_err = 0.0f;
    for (int j = 0; j < LEGACY_BLOCK; j++) {
        q[j] = (uint8_t)clamp_level(round_via_magic(iscale * (x[j] - min)), nmax);
        const float diff = scale * (float)q[j] + min - x[j];
        best_err += w[j] * (diff * diff);
    }
    uint8_t trial[LEGACY_BLOCK];
    for (int k = 0; k <= 36; k++) {
        iscale = (-0.9f + 0.05f * (float)k + (float)nmax) / (max - min);
        float sum_l = 0.0f, sum_l2 = 0.0f, sum_xl = 0.0f;
        for (int j = 0; j < LEGACY_BLOCK; j++) {
            const int l = clamp_level(round_via_magic(iscale * (x[j] - min)), nmax);
            trial[j] = (uint8_t)l;
            const float lf = (float)l;
            sum_l += w[j] * lf;
            sum_l2 += w[j] * lf * lf;
            sum_xl += w[j] * lf * x[j];
        }
        const float det = sum_w * sum_l2 - sum_l * sum_l;
        if (!(det > 0.0f)) continue;
        float this_scale = (sum_w * sum_xl - sum_x * sum_l) / det;
        float this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det;
        if (this_min > 0.0f) {
            this_min = 0.0f;
            this_scale = sum_xl / sum_l2;
        }
        float err = 0.0f;
        for (int j = 0; j < LEGACY_BLOCK; j++) {
            const float diff = this_scale * (float)trial[j] + this_min - x[j];
            err += w[j] * (diff * diff);
        }
        if (err < best_err) {
            memcpy(q, trial, LEGACY_BLOCK);
            best_err = err;
            scale = this_scale;
            min = this_min;
        }
    }
    *neg_min = -min;
    return scale;
}

// ---- Q4_0
// block (18 bytes): | d: fp16 | qs: 16 bytes, byte j = q[j] | q[j+16] << 4 |    x[j] = d * (q[j] - 8)
// Plain: d = (value of largest magnitude) / -8, q = min(15, trunc(x / d + 8.5)).

enum { Q4_0_BYTES = 2 + 16 };

static void quantize_block_q4_0_plain(const float *x, uint8_t *y) {
    const float d = signed_absmax(x, LEGACY_BLOCK) / -8.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    store_half(y, d);
    uint8_t q[LEGACY_BLOCK];
    for (int j = 0; j < LEGACY_BLOCK; j++) {
        const int l = (int8_t)(int)(x[j] * id + 8.5f);
        q[j] = (uint8_t)(l < 15 ? l : 15);
    }
    pack_nibbles(q, y + 2);
}

static void quantize_row_q4_0(const float *x, void *vy, int64_t n, const float *imatrix) {
    uint8_t *y = (uint8_t *)vy;
    const int64_t nb = n / LEGACY_BLOCK;
    if (imatrix == NULL) {
        for (int64_t b = 0; b < nb; b++) quantize_block_q4_0_plain(x + b * LEGACY_BLOCK, y + b * Q4_0_BYTES);
        return;
    }
    const float sigma2 = row_mean_square(x, n);
    float w[LEGACY_BLOCK];
    uint8_t q[LEGACY_BLOCK];
    for (int64_t b = 0; b < nb; b++) {
        const float *xb = x + b * LEGACY_BLOCK;
        uint8_t *yb = y + b * Q4_0_BYTES;
        importance_weights(xb, imatrix + b * LEGACY_BLOCK, sigma2, w);
        store_half(yb, fit_symmetric_weighted(xb, w, 8, q));
        pack_nibbles(q, yb + 2);
    }
}

static void dequantize_row_q4_0(const void *vy, float *x, int64_t n) {
    const uint8_t *y = (const uint8_t *)vy;
    for (int64_t b = 0; b < n / LEGACY_BLOCK; b++, x += LEGACY_BLOCK, y += Q4_0_BYTES) {
        const float d = load_half(y);
        for (int j = 0; j < HALF_BLOCK; j++) {
            x[j] = d * (float)((y[2 + j] & 0x0f) - 8);
            x[j + HALF_BLOCK] = d * (float)((y[2 + j] >> 4) - 8);
        }
    }
}

// ---- Q4_1
// block (20 bytes): | d: fp16 | m: fp16 | qs: 16 bytes, byte j = q[j] | q[j+16] << 4 |    x[j] = d * q[j] + m
// Plain: m = min, d = (max - min) / 15, q = min(15, trunc((x - min) / d + 0.5)).

enum { Q4_1_BYTES = 2 + 2 + 16 };

static void quantize_block_q4_1_plain(const float *x, uint8_t *y) {
    float min = FLT_MAX, max = -FLT_MAX;
    for (int j = 0; j < LEGACY_BLOCK; j++) {
        if (x[j] < min) min = x[j];
        if (x[j] > max) max = x[j];
    }
    const float d = (max - min) / 15.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    store_half(y, d);
    store_half(y + 2, min);
    uint8_t q[LEGACY_BLOCK];
    for (int j = 0; j < LEGACY_BLOCK; j++) {
        const int l = (int8_t)(int)((x[j] - min) * id + 0.5f);
        q[j] = (uint8_t)(l < 15 ? l : 15);
    }
    pack_nibbles(q, y + 4);
}

static void quantize_row_q4_1(const float *x, void *vy, int64_t n, const float *imatrix) {
    uint8_t *y = (uint8_t *)vy;
    const int64_t nb = n / LEGACY_BLOCK;
    if (imatrix == NULL) {
        for (int64_t b = 0; b < nb; b++) quantize_block_q4_1_plain(x + b * LEGACY_BLOCK, y + b * Q4_1_BYTES);
        return;
    }
    const float sigma2 = row_mean_square(x, n);
    float w[LEGACY_BLOCK];
    uint8_t q[LEGACY_BLOCK];
    for (int64_t b = 0; b < nb; b++) {
        const float *xb = x + b * LEGACY_BLOCK;
        uint8_t *yb = y + b * Q4_1_BYTES;
        importance_weights(xb, imatrix + b * LEGACY_BLOCK, sigma2, w);
        float neg_min;
        store_half(yb, fit_affine_weighted(xb, w, 15, q, &neg_min));
        store_half(yb + 2, -neg_min);
        pack_nibbles(q, yb + 4);
    }
}

static void dequantize_row_q4_1(const void *vy, float *x, int64_t n) {
    const uint8_t *y = (const uint8_t *)vy;
    for (int64_t b = 0; b < n / LEGACY_BLOCK; b++, x += LEGACY_BLOCK, y += Q4_1_BYTES) {
        const float d = load_half(y), m = load_half(y + 2);
        for (int j = 0; j < HALF_BLOCK; j++) {
            x[j] = d * (float)(y[4 + j] & 0x0f) + m;
            x[j + HALF_BLOCK] = d * (float)(y[4 + j] >> 4) + m;
        }
    }
}

// ---- Q5_0
// block (22 bytes): | d: fp16 | qh: u32 LE, bit j = bit 4 of q[j] | qs: 16 bytes, low nibbles as in Q4_0 |
//                   x[j] = d * (q[j] - 16)
// Plain: d = (value of largest magnitude) / -16, q = min(31, trunc(x / d + 16.5)).

enum { Q5_0_BYTES = 2 + 4 + 16 };

static void quantize_block_q5_0_plain(const float *x, uint8_t *y) {
    const float d = signed_absmax(x, LEGACY_BLOCK) / -16.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    store_half(y, d);
    uint8_t q[LEGACY_BLOCK];
    for (int j = 0; j < LEGACY_BLOCK; j++) {
        const int l = (int8_t)(int)(x[j] * id + 16.5f);
        q[j] = (uint8_t)(l < 31 ? l : 31);
    }
    pack_fifth_bits(q, y + 2);
    pack_nibbles(q, y + 6);
}

static void quantize_row_q5_0(const float *x, void *vy, int64_t n, const float *imatrix) {
    uint8_t *y = (uint8_t *)vy;
    const int64_t nb = n / LEGACY_BLOCK;
    if (imatrix == NULL) {
        for (int64_t b = 0; b < nb; b++) quantize_block_q5_0_plain(x + b * LEGACY_BLOCK, y + b * Q5_0_BYTES);
        return;
    }
    const float sigma2 = row_mean_square(x, n);
    float w[LEGACY_BLOCK];
    uint8_t q[LEGACY_BLOCK];
    for (int64_t b = 0; b < nb; b++) {
        const float *xb = x + b * LEGACY_BLOCK;
        uint8_t *yb = y + b * Q5_0_BYTES;
        importance_weights(xb, imatrix + b * LEGACY_BLOCK, sigma2, w);
        store_half(yb, fit_symmetric_weighted(xb, w, 16, q));
        pack_fifth_bits(q, yb + 2);
        pack_nibbles(q, yb + 6);
    }
}

static void dequantize_row_q5_0(const void *vy, float *x, int64_t n) {
    const uint8_t *y = (const uint8_t *)vy;
    for (int64_t b = 0; b < n / LEGACY_BLOCK; b++, x += LEGACY_BLOCK, y += Q5_0_BYTES) {
        const float d = load_half(y);
        uint32_t qh;
        memcpy(&qh, y + 2, 4);
        for (int j = 0; j < HALF_BLOCK; j++) {
            const int lo = (y[6 + j] & 0x0f) | (int)(((qh >> j) & 1u) << 4);
            const int hi = (y[6 + j] >> 4) | (int)(((qh >> (j + HALF_BLOCK)) & 1u) << 4);
            x[j] = d * (float)(lo - 16);
            x[j + HALF_BLOCK] = d * (float)(hi - 16);
        }
    }
}

// ---- Q5_1
// block (24 bytes): | d: fp16 | m: fp16 | qh: u32 LE, bit j = bit 4 of q[j] | qs: 16 bytes of low nibbles |
//                   x[j] = d * q[j] + m
// Plain: m = min, d = (max - min) / 31, q = trunc((x - min) / d + 0.5) (no clamp: the top value lands on 31).

enum { Q5_1_BYTES = 2 + 2 + 4 + 16 };

static void quantize_block_q5_1_plain(const float *x, uint8_t *y) {
    float min = FLT_MAX, max = -FLT_MAX;
    for (int j = 0; j < LEGACY_BLOCK; j++) {
        if (x[j] < min) min = x[j];
        if (x[j] > max) max = x[j];
    }
    const float d = (max - min) / 31.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    store_half(y, d);
    store_half(y + 2, min);
    uint8_t q[LEGACY_BLOCK];
    for (int j = 0; j < LEGACY_BLOCK; j++) q[j] = (uint8_t)(int)((x[j] - min) * id + 0.5f);
    pack_fifth_bits(q, y + 4);
    pack_nibbles(q, y + 8);
}

static void quantize_row_q5_1(const float *x, void *vy, int64_t n, const float *imatrix) {
    uint8_t *y = (uint8_t *)vy;
    const int64_t nb = n / LEGACY_BLOCK;
    if (imatrix == NULL) {
        for (int64_t b = 0; b < nb; b++) quantize_block_q5_1_plain(x + b * LEGACY_BLOCK, y + b * Q5_1_BYTES);
        return;
    }
    const float sigma2 = row_mean_square(x, n);
    float w[LEGACY_BLOCK];
    uint8_t q[LEGACY_BLOCK];
    for (int64_t b = 0; b < nb; b++) {
        const float *xb = x + b * LEGACY_BLOCK;
        uint8_t *yb = y + b * Q5_1_BYTES;
        importance_weights(xb, imatrix + b * LEGACY_BLOCK, sigma2, w);
        float neg_min;
        store_half(yb, fit_affine_weighted(xb, w, 31, q, &neg_min));
        store_half(yb + 2, -neg_min);
        pack_fifth_bits(q, yb + 4);
        pack_nibbles(q, yb + 8);
    }
}

static void dequantize_row_q5_1(const void *vy, float *x, int64_t n) {
    const uint8_t *y = (const uint8_t *)vy;
    for (int64_t b = 0; b < n / LEGACY_BLOCK; b++, x += LEGACY_BLOCK, y += Q5_1_BYTES) {
        const float d = load_half(y), m = load_half(y + 2);
        uint32_t qh;
        memcpy(&qh, y + 4, 4);
        for (int j = 0; j < HALF_BLOCK; j++) {
            const int lo = (y[8 + j] & 0x0f) | (int)(((qh >> j) & 1u) << 4);
            const int hi = (y[8 + j] >> 4) | (int)(((qh >> (j + HALF_BLOCK)) & 1u) << 4);
            x[j] = d * (float)lo + m;
            x[j + HALF_BLOCK] = d * (float)hi + m;
        }
    }
}

// ---- Q8_0
// block (34 bytes): | d: fp16 | qs: 32 x int8 |    x[j] = d * qs[j]
// d = max|x| / 127, qs = roundf(x / d). The importance weights do not change Q8_0 (llama.cpp ignores them).

enum { Q8_0_BLOCK = 32, Q8_0_BYTES = 2 + 32 };

static void quantize_row_q8_0(const float *x, void *vy, int64_t n, const float *imatrix) {
    (void)imatrix;
    uint8_t *y = (uint8_t *)vy;
    for (int64_t b = 0; b < n / Q8_0_BLOCK; b++, x += Q8_0_BLOCK, y += Q8_0_BYTES) {
        float amax = 0.0f;
        for (int j = 0; j < Q8_0_BLOCK; j++) amax = fmaxf(amax, fabsf(x[j]));
        const float d = amax / 127.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        uint16_t dh = gk_fp32_to_fp16(d);
        memcpy(y, &dh, 2);
        int8_t *qs = (int8_t *)(y + 2);
        for (int j = 0; j < Q8_0_BLOCK; j++) qs[j] = (int8_t)roundf(x[j] * id);
    }
}

static void dequantize_row_q8_0(const void *vy, float *x, int64_t n) {
    const uint8_t *y = (const uint8_t *)vy;
    for (int64_t b = 0; b < n / Q8_0_BLOCK; b++, x += Q8_0_BLOCK, y += Q8_0_BYTES) {
        uint16_t dh;
        memcpy(&dh, y, 2);
        const float d = gk_fp16_to_fp32(dh);
        const int8_t *qs = (const int8_t *)(y + 2);
        for (int j = 0; j < Q8_0_BLOCK; j++) x[j] = d * (float)qs[j];
    }
}

// ---- AVX2: the plain (no imatrix) blocks, 32 floats in four 8-lane registers
// Exact by construction: the plain paths have no sums, only max/min (order-free: the result is the same value
// whichever order the lanes are compared in; where the sign of a zero or a tie matters, the first occurrence is
// looked up as the scalar loop would find it) and per-element arithmetic done in the scalar order. Conversions
// truncate like cvttss2si (out-of-range -> INT_MIN, whose low byte and nibbles are 0, as in the scalar code).
// The weighted (imatrix) fits have per-block sums; their AVX2 versions below keep one block per lane instead.

#if defined(__x86_64__) || defined(__i386__)
#include "simd_x86.h"
#define HAVE_LEGACY_AVX2 1

// Round-to-nearest-even f32 -> f16 in hardware (F16C ships with every AVX2 CPU); same bits as gk_fp32_to_fp16,
// NaN included (both give sign | 0x7e00 for the quiet NaNs arithmetic produces).
GK_AVX2 static inline void store_half_f16c(uint8_t *dst, float f) {
    const uint16_t h = (uint16_t)_mm_extract_epi16(_mm_cvtps_ph(_mm_set_ss(f), _MM_FROUND_TO_NEAREST_INT), 0);
    memcpy(dst, &h, 2);
}

GK_AVX2 static inline __m256 abs8(__m256 v) { return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), v); }

GK_AVX2 static inline float hmax8(__m256 v) {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_shuffle_ps(m, m, 1));
    return _mm_cvtss_f32(m);
}

GK_AVX2 static inline float hmin8(__m256 v) {
    __m128 m = _mm_min_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_min_ps(m, _mm_movehl_ps(m, m));
    m = _mm_min_ss(m, _mm_shuffle_ps(m, m, 1));
    return _mm_cvtss_f32(m);
}

// 32-bit mask of the lanes of v[0..3] equal to t.
GK_AVX2 static inline uint32_t lanes_equal(const __m256 v[4], __m256 t) {
    uint32_t m = 0;
    for (int r = 0; r < 4; r++) m |= (uint32_t)_mm256_movemask_ps(_mm256_cmp_ps(v[r], t, _CMP_EQ_OQ)) << (8 * r);
    return m;
}

// The value of largest magnitude, first one on ties, +0.0 for an all-zero block (signed_absmax's answer).
GK_AVX2 static inline float signed_absmax8x4(const float *x, const __m256 v[4]) {
    const float amax = hmax8(_mm256_max_ps(_mm256_max_ps(abs8(v[0]), abs8(v[1])), _mm256_max_ps(abs8(v[2]), abs8(v[3]))));
    if (amax == 0.0f) return 0.0f;
    const __m256 a[4] = {abs8(v[0]), abs8(v[1]), abs8(v[2]), abs8(v[3])};
    return x[__builtin_ctz(lanes_equal(a, _mm256_set1_ps(amax)))];
}

// min and max of the block as the scalar loops find them; only the sign of a zero extreme depends on order (the
// first zero wins), so a zero result is replaced by the first zero element.
GK_AVX2 static inline void min_max8x4(const float *x, const __m256 v[4], float *min, float *max) {
    float lo = hmin8(_mm256_min_ps(_mm256_min_ps(v[0], v[1]), _mm256_min_ps(v[2], v[3])));
    float hi = hmax8(_mm256_max_ps(_mm256_max_ps(v[0], v[1]), _mm256_max_ps(v[2], v[3])));
    if (lo == 0.0f || hi == 0.0f) {
        const float first_zero = x[__builtin_ctz(lanes_equal(v, _mm256_setzero_ps()))];
        if (lo == 0.0f) lo = first_zero;
        if (hi == 0.0f) hi = first_zero;
    }
    *min = lo;
    *max = hi;
}

// Four registers of 8 levels (elements 0-7, 8-15, 16-23, 24-31) -> 16 bytes, byte j = (q[j] & 15) | q[j+16] << 4.
GK_AVX2 static inline void pack_nibbles8x4(const __m256i q[4], uint8_t *qs) {
    const __m256i m4 = _mm256_set1_epi32(0x0f);
    const __m256i b0 = _mm256_or_si256(_mm256_and_si256(q[0], m4), _mm256_slli_epi32(_mm256_and_si256(q[2], m4), 4));
    const __m256i b1 = _mm256_or_si256(_mm256_and_si256(q[1], m4), _mm256_slli_epi32(_mm256_and_si256(q[3], m4), 4));
    const __m256i w = _mm256_permute4x64_epi64(_mm256_packus_epi32(b0, b1), 0xd8);   // 16 x u16, in order
    _mm_storeu_si128((__m128i *)qs, _mm_packus_epi16(_mm256_castsi256_si128(w), _mm256_extracti128_si256(w, 1)));
}

// Bit 4 of each of the 32 levels, as the little-endian u32 the Q5 layouts store.
GK_AVX2 static inline void pack_fifth_bits8x4(const __m256i q[4], uint8_t *qh) {
    uint32_t bits = 0;
    for (int r = 0; r < 4; r++)
        bits |= (uint32_t)_mm256_movemask_ps(_mm256_castsi256_ps(_mm256_slli_epi32(q[r], 27))) << (8 * r);
    memcpy(qh, &bits, 4);
}

// Symmetric plain block (Q4_0: half 8, top 15; Q5_0: half 16, top 31): q = min(top, trunc(x * id + half + 0.5)).
GK_AVX2 static inline float symmetric_plain8x4(const float *x, float half, int top, __m256i q[4]) {
    __m256 v[4];
    for (int r = 0; r < 4; r++) v[r] = _mm256_loadu_ps(x + 8 * r);
    const float d = signed_absmax8x4(x, v) / -half;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    const __m256 vid = _mm256_set1_ps(id), off = _mm256_set1_ps(half + 0.5f);
    for (int r = 0; r < 4; r++)
        q[r] = _mm256_min_epi32(_mm256_cvttps_epi32(_mm256_add_ps(_mm256_mul_ps(v[r], vid), off)),
                                _mm256_set1_epi32(top));
    return d;
}

// Affine plain block (Q4_1: top 15, clamped; Q5_1: top 31, not clamped): q = trunc((x - min) * id + 0.5).
GK_AVX2 static inline float affine_plain8x4(const float *x, float top, int clamp, __m256i q[4], float *min_out) {
    __m256 v[4];
    for (int r = 0; r < 4; r++) v[r] = _mm256_loadu_ps(x + 8 * r);
    float min, max;
    min_max8x4(x, v, &min, &max);
    const float d = (max - min) / top;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    const __m256 vid = _mm256_set1_ps(id), vmin = _mm256_set1_ps(min), half = _mm256_set1_ps(0.5f);
    for (int r = 0; r < 4; r++) {
        q[r] = _mm256_cvttps_epi32(_mm256_add_ps(_mm256_mul_ps(_mm256_sub_ps(v[r], vmin), vid), half));
        if (clamp) q[r] = _mm256_min_epi32(q[r], _mm256_set1_epi32((int)top));
    }
    *min_out = min;
    return d;
}

// ---- AVX2: eight blocks at a time
// The per-block reductions of eight blocks are folded into one register, block k in lane k, so the divisions and
// the fp16 conversions run once per eight blocks. Then each block is quantized with its lane's inverse scale.

// lane k of the result = max (min) over the 8 lanes of a[k]; exact, max/min do not depend on order.
#define LANES_REDUCE(name, op)                                                                                  \
    GK_AVX2 static inline __m256 name(const __m256 a[8]) {                                                     \
        __m256 t[4], u[2];                                                                                     \
        for (int i = 0; i < 4; i++)                                                                            \
            t[i] = op(_mm256_unpacklo_ps(a[2 * i], a[2 * i + 1]), _mm256_unpackhi_ps(a[2 * i], a[2 * i + 1])); \
        for (int i = 0; i < 2; i++)                                                                            \
            u[i] = op(_mm256_shuffle_ps(t[2 * i], t[2 * i + 1], 0x44), _mm256_shuffle_ps(t[2 * i], t[2 * i + 1], 0xee)); \
        return op(_mm256_permute2f128_ps(u[0], u[1], 0x20), _mm256_permute2f128_ps(u[0], u[1], 0x31));         \
    }
LANES_REDUCE(lanes_max, _mm256_max_ps)
LANES_REDUCE(lanes_min, _mm256_min_ps)

// Block k's min and max for k = 0..7 (x: 8 consecutive 32-float blocks) -> lane k of *mn, *mx.
GK_AVX2 static inline void group_min_max(const float *x, __m256 *mn, __m256 *mx) {
    __m256 lo[8], hi[8];
    for (int k = 0; k < 8; k++) {
        const float *xb = x + k * LEGACY_BLOCK;
        const __m256 v0 = _mm256_loadu_ps(xb), v1 = _mm256_loadu_ps(xb + 8);
        const __m256 v2 = _mm256_loadu_ps(xb + 16), v3 = _mm256_loadu_ps(xb + 24);
        lo[k] = _mm256_min_ps(_mm256_min_ps(v0, v1), _mm256_min_ps(v2, v3));
        hi[k] = _mm256_max_ps(_mm256_max_ps(v0, v1), _mm256_max_ps(v2, v3));
    }
    *mn = lanes_min(lo);
    *mx = lanes_max(hi);
}

GK_AVX2 static inline void store_half8(uint8_t *y, int stride, __m256 v) {
    uint16_t h[8];
    _mm_storeu_si128((__m128i *)h, _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT));
    for (int k = 0; k < 8; k++) memcpy(y + k * stride, &h[k], 2);
}

GK_AVX2 static inline __m256 safe_inverse(__m256 d) {
    const __m256 nonzero = _mm256_cmp_ps(d, _mm256_setzero_ps(), _CMP_NEQ_UQ);
    return _mm256_and_ps(_mm256_div_ps(_mm256_set1_ps(1.0f), d), nonzero);
}

// Levels of one block with inverse scale id: trunc(x * id + offset) (Q4_0/Q5_0) or trunc((x - min) * id + 0.5)
// (Q4_1/Q5_1), clamped above at top when top > 0.
GK_AVX2 static inline void block_levels(const float *x, float id, float min, float offset, int top, __m256i q[4]) {
    const __m256 vid = _mm256_set1_ps(id), vmin = _mm256_set1_ps(min), off = _mm256_set1_ps(offset);
    for (int r = 0; r < 4; r++) {
        __m256 v = _mm256_loadu_ps(x + 8 * r);
        if (min != 0.0f) v = _mm256_sub_ps(v, vmin);   // x - 0 == x for every finite x: skipping it is exact
        q[r] = _mm256_cvttps_epi32(_mm256_add_ps(_mm256_mul_ps(v, vid), off));
        if (top > 0) q[r] = _mm256_min_epi32(q[r], _mm256_set1_epi32(top));
    }
}

// Q4_0 (half 8, top 15, 18 bytes) and Q5_0 (half 16, top 31, 22 bytes, with the fifth-bit word).
GK_AVX2 static void symmetric_plain_row_avx2(const float *x, uint8_t *y, int64_t nb, float half, int top,
                                             int bytes, int fifth_bit) {
    const int qs_at = fifth_bit ? 6 : 2;
    __m256i q[4];
    int64_t b = 0;
    for (; b + 8 <= nb; b += 8, x += 8 * LEGACY_BLOCK, y += 8 * bytes) {
        __m256 mn, mx;
        group_min_max(x, &mn, &mx);
        const __m256 neg_mn = _mm256_xor_ps(mn, _mm256_set1_ps(-0.0f));
        const __m256 amax = _mm256_max_ps(mx, neg_mn);
        const __m256 is_max = _mm256_cmp_ps(mx, amax, _CMP_EQ_OQ);
        const __m256 is_min = _mm256_cmp_ps(neg_mn, amax, _CMP_EQ_OQ);
        const __m256 nonzero = _mm256_cmp_ps(amax, _mm256_setzero_ps(), _CMP_NEQ_UQ);
        float extreme[8];   // the signed value of largest magnitude per block; +0.0 for all-zero blocks
        _mm256_storeu_ps(extreme, _mm256_and_ps(_mm256_blendv_ps(mn, mx, is_max), nonzero));
        // +a and -a both present: the first one in the block decides, as in the scalar loop
        int ties = _mm256_movemask_ps(_mm256_and_ps(_mm256_and_ps(is_max, is_min), nonzero));
        while (ties) {
            const int k = __builtin_ctz((unsigned)ties);
            ties &= ties - 1;
            extreme[k] = signed_absmax(x + k * LEGACY_BLOCK, LEGACY_BLOCK);
        }
        const __m256 d = _mm256_div_ps(_mm256_loadu_ps(extreme), _mm256_set1_ps(-half));
        float id[8];
        _mm256_storeu_ps(id, safe_inverse(d));
        store_half8(y, bytes, d);
        for (int k = 0; k < 8; k++) {
            block_levels(x + k * LEGACY_BLOCK, id[k], 0.0f, half + 0.5f, top, q);
            if (fifth_bit) pack_fifth_bits8x4(q, y + k * bytes + 2);
            pack_nibbles8x4(q, y + k * bytes + qs_at);
        }
    }
    for (; b < nb; b++, x += LEGACY_BLOCK, y += bytes) {
        store_half_f16c(y, symmetric_plain8x4(x, half, top, q));
        if (fifth_bit) pack_fifth_bits8x4(q, y + 2);
        pack_nibbles8x4(q, y + qs_at);
    }
}

// Q4_1 (top 15, clamped, 20 bytes) and Q5_1 (top 31, not clamped, 24 bytes, with the fifth-bit word).
GK_AVX2 static void affine_plain_row_avx2(const float *x, uint8_t *y, int64_t nb, float top, int clamp, int bytes,
                                          int fifth_bit) {
    const int qs_at = fifth_bit ? 8 : 4;
    __m256i q[4];
    int64_t b = 0;
    for (; b + 8 <= nb; b += 8, x += 8 * LEGACY_BLOCK, y += 8 * bytes) {
        __m256 mn, mx;
        group_min_max(x, &mn, &mx);
        // a zero extreme takes the sign of the block's first zero, as the scalar loop's first hit does
        const __m256 zero = _mm256_setzero_ps();
        int zeros = _mm256_movemask_ps(_mm256_or_ps(_mm256_cmp_ps(mn, zero, _CMP_EQ_OQ),
                                                    _mm256_cmp_ps(mx, zero, _CMP_EQ_OQ)));
        if (zeros) {
            float lo[8], hi[8];
            _mm256_storeu_ps(lo, mn);
            _mm256_storeu_ps(hi, mx);
            while (zeros) {
                const int k = __builtin_ctz((unsigned)zeros);
                zeros &= zeros - 1;
                const float *xb = x + k * LEGACY_BLOCK;
                int j = 0;
                while (xb[j] != 0.0f) j++;
                if (lo[k] == 0.0f) lo[k] = xb[j];
                if (hi[k] == 0.0f) hi[k] = xb[j];
            }
            mn = _mm256_loadu_ps(lo);
            mx = _mm256_loadu_ps(hi);
        }
        const __m256 d = _mm256_div_ps(_mm256_sub_ps(mx, mn), _mm256_set1_ps(top));
        float id[8], min[8];
        _mm256_storeu_ps(id, safe_inverse(d));
        _mm256_storeu_ps(min, mn);
        store_half8(y, bytes, d);
        store_half8(y + 2, bytes, mn);
        for (int k = 0; k < 8; k++) {
            block_levels(x + k * LEGACY_BLOCK, id[k], min[k], 0.5f, clamp ? (int)top : 0, q);
            if (fifth_bit) pack_fifth_bits8x4(q, y + k * bytes + 4);
            pack_nibbles8x4(q, y + k * bytes + qs_at);
        }
    }
    for (; b < nb; b++, x += LEGACY_BLOCK, y += bytes) {
        float min;
        store_half_f16c(y, affine_plain8x4(x, top, clamp, q, &min));
        store_half_f16c(y + 2, min);
        if (fifth_bit) pack_fifth_bits8x4(q, y + 4);
        pack_nibbles8x4(q, y + qs_at);
    }
}

// ---- AVX2: the weighted (imatrix) symmetric fit, eight blocks at a time
// Lane k works on block k of a group of eight, walking j = 0..31 in the scalar order, so every per-block sum is
// accumulated exactly as fit_symmetric_weighted does it. Inputs are transposed to (32, 8): row j = element j of
// the eight blocks.

// round_via_magic on eight lanes (same bit trick, same results for every input).
GK_AVX2 static inline __m256i round_via_magic8(__m256 v) {
    const __m256i bits = _mm256_castps_si256(_mm256_add_ps(v, _mm256_set1_ps(12582912.0f)));
    return _mm256_sub_epi32(_mm256_and_si256(bits, _mm256_set1_epi32(0x007fffff)), _mm256_set1_epi32(0x00400000));
}

GK_AVX2 static inline void symmetric_sums8(const __m256 xt[32], const __m256 wx[32], const __m256 wt[32], int half,
                                           __m256 iscale, __m256 *sum_wxl, __m256 *sum_wll) {
    const __m256i lo = _mm256_set1_epi32(-half), hi = _mm256_set1_epi32(half - 1);
    __m256 sxl = _mm256_setzero_ps(), sll = _mm256_setzero_ps();
    for (int j = 0; j < LEGACY_BLOCK; j++) {
        const __m256i l = _mm256_min_epi32(_mm256_max_epi32(round_via_magic8(_mm256_mul_ps(iscale, xt[j])), lo), hi);
        const __m256 lf = _mm256_cvtepi32_ps(l);
        sxl = _mm256_add_ps(sxl, _mm256_mul_ps(wx[j], lf));
        sll = _mm256_add_ps(sll, _mm256_mul_ps(_mm256_mul_ps(wt[j], lf), lf));
    }
    *sum_wxl = sxl;
    *sum_wll = sll;
}

// Eight blocks of fit_symmetric_weighted: x, im at the group's first block; writes d[8] and q[8][32].
GK_AVX2 static void fit_symmetric_weighted8(const float *x, const float *im, float sigma2, int half, float d[8],
                                            uint8_t q[8][LEGACY_BLOCK]) {
    __m256 xt[LEGACY_BLOCK], wt[LEGACY_BLOCK], wx[LEGACY_BLOCK];
    transpose_blocks32(x, xt);
    transpose_blocks32(im, wt);
    const __m256 sign = _mm256_set1_ps(-0.0f), s2 = _mm256_set1_ps(sigma2);
    __m256 amax = _mm256_setzero_ps(), max = _mm256_setzero_ps();
    for (int j = 0; j < LEGACY_BLOCK; j++) {
        // w = im * sqrt(sigma2 + x*x) (sqrt is correctly rounded in both paths)
        wt[j] = _mm256_mul_ps(wt[j], _mm256_sqrt_ps(_mm256_add_ps(s2, _mm256_mul_ps(xt[j], xt[j]))));
        wx[j] = _mm256_mul_ps(wt[j], xt[j]);
        const __m256 ax = _mm256_andnot_ps(sign, xt[j]);
        const __m256 gt = _mm256_cmp_ps(ax, amax, _CMP_GT_OQ);   // first occurrence of the largest magnitude
        amax = _mm256_blendv_ps(amax, ax, gt);
        max = _mm256_blendv_ps(max, xt[j], gt);
    }
    const __m256 live = _mm256_cmp_ps(amax, _mm256_set1_ps(ALL_ZERO_BELOW), _CMP_GE_OQ);
    __m256 iscale = _mm256_div_ps(_mm256_set1_ps((float)(-half)), max);
    __m256 sxl, sll;
    symmetric_sums8(xt, wx, wt, half, iscale, &sxl, &sll);
    const __m256 zero = _mm256_setzero_ps();
    __m256 scale = _mm256_and_ps(_mm256_div_ps(sxl, sll), _mm256_cmp_ps(sll, zero, _CMP_NEQ_UQ));
    __m256 best = _mm256_mul_ps(scale, sxl);
    __m256 best_iscale = iscale;
    for (int k = -9; k <= 9; k++) {
        if (k == 0) continue;
        iscale = _mm256_div_ps(_mm256_set1_ps(-((float)half + 0.1f * (float)k)), max);
        symmetric_sums8(xt, wx, wt, half, iscale, &sxl, &sll);
        const __m256 better = _mm256_and_ps(_mm256_cmp_ps(sll, zero, _CMP_GT_OQ),
                                            _mm256_cmp_ps(_mm256_mul_ps(sxl, sxl), _mm256_mul_ps(best, sll), _CMP_GT_OQ));
        const __m256 cand = _mm256_div_ps(sxl, sll);
        scale = _mm256_blendv_ps(scale, cand, better);
        best = _mm256_blendv_ps(best, _mm256_mul_ps(cand, sxl), better);
        best_iscale = _mm256_blendv_ps(best_iscale, iscale, better);
    }
    float is[8];
    _mm256_storeu_ps(d, _mm256_and_ps(scale, live));
    _mm256_storeu_ps(is, best_iscale);
    const int live_mask = _mm256_movemask_ps(live);
    for (int k = 0; k < 8; k++) {
        if (live_mask >> k & 1)
            symmetric_levels(x + k * LEGACY_BLOCK, half, is[k], q[k]);
        else
            memset(q[k], 0, LEGACY_BLOCK);
    }
}

// Q4_0 / Q5_0 with an imatrix: groups of eight blocks in lanes, the rest with the scalar fit.
GK_AVX2 static void symmetric_weighted_row_avx2(const float *x, uint8_t *y, int64_t n, const float *im, int half,
                                                int bytes, int fifth_bit) {
    const int qs_at = fifth_bit ? 6 : 2;
    const float sigma2 = row_mean_square(x, n);
    const int64_t nb = n / LEGACY_BLOCK;
    float d[8], w[LEGACY_BLOCK];
    uint8_t q[8][LEGACY_BLOCK];
    int64_t b = 0;
    for (; b + 8 <= nb; b += 8) {
        fit_symmetric_weighted8(x + b * LEGACY_BLOCK, im + b * LEGACY_BLOCK, sigma2, half, d, q);
        for (int k = 0; k < 8; k++) {
            uint8_t *yb = y + (b + k) * bytes;
            store_half_f16c(yb, d[k]);
            if (fifth_bit) pack_fifth_bits(q[k], yb + 2);
            pack_nibbles(q[k], yb + qs_at);
        }
    }
    for (; b < nb; b++) {
        uint8_t *yb = y + b * bytes;
        importance_weights(x + b * LEGACY_BLOCK, im + b * LEGACY_BLOCK, sigma2, w);
        store_half_f16c(yb, fit_symmetric_weighted(x + b * LEGACY_BLOCK, w, half, q[0]));
        if (fifth_bit) pack_fifth_bits(q[0], yb + 2);
        pack_nibbles(q[0], yb + qs_at);
    }
}

// ---- AVX2: the weighted affine fit (Q4_1/Q5_1 with an imatrix), eight blocks at a time
// Same lane layout as the symmetric fit: every per-block sum walks j = 0..31 in the order fit_affine_weighted uses.

// clamp(round(iscale * (x - min)), 0, nmax) as floats, for the 32 rows of a transposed group.
GK_AVX2 static inline void affine_levels8(const __m256 xt[32], __m256 iscale, __m256 min, int nmax, __m256 l[32]) {
    const __m256i top = _mm256_set1_epi32(nmax), zero = _mm256_setzero_si256();
    for (int j = 0; j < LEGACY_BLOCK; j++) {
        const __m256i r = round_via_magic8(_mm256_mul_ps(iscale, _mm256_sub_ps(xt[j], min)));
        l[j] = _mm256_cvtepi32_ps(_mm256_min_epi32(_mm256_max_epi32(r, zero), top));
    }
}

// sum w * (scale * l + min - x)^2 in the scalar order.
GK_AVX2 static inline __m256 affine_error8(const __m256 xt[32], const __m256 wt[32], const __m256 l[32], __m256 scale,
                                           __m256 min) {
    __m256 err = _mm256_setzero_ps();
    for (int j = 0; j < LEGACY_BLOCK; j++) {
        const __m256 diff = _mm256_sub_ps(_mm256_add_ps(_mm256_mul_ps(scale, l[j]), min), xt[j]);
        err = _mm256_add_ps(err, _mm256_mul_ps(wt[j], _mm256_mul_ps(diff, diff)));
    }
    return err;
}

// Eight blocks of fit_affine_weighted: writes d[8], neg_min[8] and q[8][32].
GK_AVX2 static void fit_affine_weighted8(const float *x, const float *im, float sigma2, int nmax, float d[8],
                                         float neg_min[8], uint8_t q[8][LEGACY_BLOCK]) {
    __m256 xt[LEGACY_BLOCK], wt[LEGACY_BLOCK], best_l[LEGACY_BLOCK], trial[LEGACY_BLOCK];
    transpose_blocks32(x, xt);
    transpose_blocks32(im, wt);
    const __m256 s2 = _mm256_set1_ps(sigma2), zero = _mm256_setzero_ps();
    for (int j = 0; j < LEGACY_BLOCK; j++)
        wt[j] = _mm256_mul_ps(wt[j], _mm256_sqrt_ps(_mm256_add_ps(s2, _mm256_mul_ps(xt[j], xt[j]))));
    __m256 min = xt[0], max = xt[0], sum_w = wt[0], sum_x = _mm256_mul_ps(wt[0], xt[0]);
    for (int j = 1; j < LEGACY_BLOCK; j++) {
        min = _mm256_blendv_ps(min, xt[j], _mm256_cmp_ps(xt[j], min, _CMP_LT_OQ));
        max = _mm256_blendv_ps(max, xt[j], _mm256_cmp_ps(xt[j], max, _CMP_GT_OQ));
        sum_w = _mm256_add_ps(sum_w, wt[j]);
        sum_x = _mm256_add_ps(sum_x, _mm256_mul_ps(wt[j], xt[j]));
    }
    min = _mm256_blendv_ps(min, zero, _mm256_cmp_ps(min, zero, _CMP_GT_OQ));
    const __m256 live = _mm256_cmp_ps(max, min, _CMP_GT_OQ);
    __m256 iscale = _mm256_div_ps(_mm256_set1_ps((float)nmax), _mm256_sub_ps(max, min));
    __m256 scale = _mm256_div_ps(_mm256_set1_ps(1.0f), iscale);
    affine_levels8(xt, iscale, min, nmax, best_l);
    __m256 best_err = affine_error8(xt, wt, best_l, scale, min);
    for (int k = 0; k <= 36; k++) {
        iscale = _mm256_div_ps(_mm256_set1_ps(-0.9f + 0.05f * (float)k + (float)nmax), _mm256_sub_ps(max, min));
        affine_levels8(xt, iscale, min, nmax, trial);
        __m256 sum_l = zero, sum_l2 = zero, sum_xl = zero;
        for (int j = 0; j < LEGACY_BLOCK; j++) {
            const __m256 wl = _mm256_mul_ps(wt[j], trial[j]);
            sum_l = _mm256_add_ps(sum_l, wl);
            sum_l2 = _mm256_add_ps(sum_l2, _mm256_mul_ps(wl, trial[j]));
            sum_xl = _mm256_add_ps(sum_xl, _mm256_mul_ps(wl, xt[j]));
        }
        const __m256 det = _mm256_sub_ps(_mm256_mul_ps(sum_w, sum_l2), _mm256_mul_ps(sum_l, sum_l));
        const __m256 solvable = _mm256_and_ps(_mm256_cmp_ps(det, zero, _CMP_GT_OQ), live);
        if (_mm256_movemask_ps(solvable) == 0) continue;
        __m256 this_scale = _mm256_div_ps(_mm256_sub_ps(_mm256_mul_ps(sum_w, sum_xl), _mm256_mul_ps(sum_x, sum_l)), det);
        __m256 this_min = _mm256_div_ps(_mm256_sub_ps(_mm256_mul_ps(sum_l2, sum_x), _mm256_mul_ps(sum_l, sum_xl)), det);
        const __m256 positive = _mm256_cmp_ps(this_min, zero, _CMP_GT_OQ);
        this_min = _mm256_blendv_ps(this_min, zero, positive);
        this_scale = _mm256_blendv_ps(this_scale, _mm256_div_ps(sum_xl, sum_l2), positive);
        const __m256 err = affine_error8(xt, wt, trial, this_scale, this_min);
        const __m256 better = _mm256_and_ps(solvable, _mm256_cmp_ps(err, best_err, _CMP_LT_OQ));
        if (_mm256_movemask_ps(better) == 0) continue;
        for (int j = 0; j < LEGACY_BLOCK; j++) best_l[j] = _mm256_blendv_ps(best_l[j], trial[j], better);
        best_err = _mm256_blendv_ps(best_err, err, better);
        scale = _mm256_blendv_ps(scale, this_scale, better);
        min = _mm256_blendv_ps(min, this_min, better);
    }
    _mm256_storeu_ps(d, _mm256_and_ps(scale, live));
    _mm256_storeu_ps(neg_min, _mm256_xor_ps(min, _mm256_set1_ps(-0.0f)));
    // (32, 8) levels back to (8, 32) bytes; dead lanes (max <= min) keep level 0
    float lt[LEGACY_BLOCK][8];
    for (int j = 0; j < LEGACY_BLOCK; j++) _mm256_storeu_ps(lt[j], _mm256_and_ps(best_l[j], live));
    for (int k = 0; k < 8; k++)
        for (int j = 0; j < LEGACY_BLOCK; j++) q[k][j] = (uint8_t)lt[j][k];
}

// Q4_1 / Q5_1 with an imatrix: groups of eight blocks in lanes, the rest with the scalar fit.
GK_AVX2 static void affine_weighted_row_avx2(const float *x, uint8_t *y, int64_t n, const float *im, int nmax,
                                             int bytes, int fifth_bit) {
    const int qs_at = fifth_bit ? 8 : 4;
    const float sigma2 = row_mean_square(x, n);
    const int64_t nb = n / LEGACY_BLOCK;
    float d[8], neg_min[8], w[LEGACY_BLOCK];
    uint8_t q[8][LEGACY_BLOCK];
    int64_t b = 0;
    for (; b + 8 <= nb; b += 8) {
        fit_affine_weighted8(x + b * LEGACY_BLOCK, im + b * LEGACY_BLOCK, sigma2, nmax, d, neg_min, q);
        for (int k = 0; k < 8; k++) {
            uint8_t *yb = y + (b + k) * bytes;
            store_half_f16c(yb, d[k]);
            store_half_f16c(yb + 2, -neg_min[k]);
            if (fifth_bit) pack_fifth_bits(q[k], yb + 4);
            pack_nibbles(q[k], yb + qs_at);
        }
    }
    for (; b < nb; b++) {
        uint8_t *yb = y + b * bytes;
        float nm;
        importance_weights(x + b * LEGACY_BLOCK, im + b * LEGACY_BLOCK, sigma2, w);
        store_half_f16c(yb, fit_affine_weighted(x + b * LEGACY_BLOCK, w, nmax, q[0], &nm));
        store_half_f16c(yb + 2, -nm);
        if (fifth_bit) pack_fifth_bits(q[0], yb + 4);
        pack_nibbles(q[0], yb + qs_at);
    }
}

// ---- AVX2 entry points (the quantize_row_simd column of the table)

GK_AVX2 static void quantize_row_q4_0_avx2(const float *x, void *y, int64_t n, const float *imatrix) {
    if (imatrix != NULL) symmetric_weighted_row_avx2(x, (uint8_t *)y, n, imatrix, 8, Q4_0_BYTES, 0);
    else symmetric_plain_row_avx2(x, (uint8_t *)y, n / LEGACY_BLOCK, 8.0f, 15, Q4_0_BYTES, 0);
}

GK_AVX2 static void quantize_row_q5_0_avx2(const float *x, void *y, int64_t n, const float *imatrix) {
    if (imatrix != NULL) symmetric_weighted_row_avx2(x, (uint8_t *)y, n, imatrix, 16, Q5_0_BYTES, 1);
    else symmetric_plain_row_avx2(x, (uint8_t *)y, n / LEGACY_BLOCK, 16.0f, 31, Q5_0_BYTES, 1);
}

GK_AVX2 static void quantize_row_q4_1_avx2(const float *x, void *y, int64_t n, const float *imatrix) {
    if (imatrix != NULL) affine_weighted_row_avx2(x, (uint8_t *)y, n, imatrix, 15, Q4_1_BYTES, 0);
    else affine_plain_row_avx2(x, (uint8_t *)y, n / LEGACY_BLOCK, 15.0f, 1, Q4_1_BYTES, 0);
}

GK_AVX2 static void quantize_row_q5_1_avx2(const float *x, void *y, int64_t n, const float *imatrix) {
    if (imatrix != NULL) affine_weighted_row_avx2(x, (uint8_t *)y, n, imatrix, 31, Q5_1_BYTES, 1);
    else affine_plain_row_avx2(x, (uint8_t *)y, n / LEGACY_BLOCK, 31.0f, 0, Q5_1_BYTES, 1);
}

// Q8_0: roundf (half away from zero) as trunc(v + copysign(0.5 - 2^-25, v)), equal to roundf for |v| < 2^23
// (and NaN/inf stay NaN/inf, then convert to INT_MIN like the scalar cast); bytes are the low 8 bits.
GK_AVX2 static void quantize_row_q8_0_avx2(const float *x, void *vy, int64_t n, const float *imatrix) {
    (void)imatrix;
    uint8_t *y = (uint8_t *)vy;
    const __m256 sign = _mm256_set1_ps(-0.0f), below_half = _mm256_set1_ps(0.49999997f);
    const __m256i low_byte = _mm256_set1_epi32(0xff);
    for (int64_t b = 0; b < n / Q8_0_BLOCK; b++, x += Q8_0_BLOCK, y += Q8_0_BYTES) {
        __m256 v[4];
        for (int r = 0; r < 4; r++) v[r] = _mm256_loadu_ps(x + 8 * r);
        const float amax = hmax8(_mm256_max_ps(_mm256_max_ps(abs8(v[0]), abs8(v[1])),
                                               _mm256_max_ps(abs8(v[2]), abs8(v[3]))));
        const float d = amax / 127.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        store_half_f16c(y, d);
        const __m256 vid = _mm256_set1_ps(id);
        __m256i q[4];
        for (int r = 0; r < 4; r++) {
            const __m256 s = _mm256_mul_ps(v[r], vid);
            const __m256 t = _mm256_add_ps(s, _mm256_or_ps(below_half, _mm256_and_ps(s, sign)));
            q[r] = _mm256_and_si256(_mm256_cvttps_epi32(t), low_byte);
        }
        const __m256i w01 = _mm256_permute4x64_epi64(_mm256_packus_epi32(q[0], q[1]), 0xd8);  // 0..15 as u16
        const __m256i w23 = _mm256_permute4x64_epi64(_mm256_packus_epi32(q[2], q[3]), 0xd8);  // 16..31 as u16
        const __m256i bytes = _mm256_permute4x64_epi64(_mm256_packus_epi16(w01, w23), 0xd8);
        _mm256_storeu_si256((__m256i *)(y + 2), bytes);
    }
}
#endif

// ---- table

#ifdef HAVE_LEGACY_AVX2
#define LEGACY_SIMD(fn) fn##_avx2, "avx2"
#else
#define LEGACY_SIMD(fn) NULL, NULL
#endif

const gk_type_traits gk_legacy_types[] = {
    {2, "Q4_0", LEGACY_BLOCK, Q4_0_BYTES, quantize_row_q4_0, LEGACY_SIMD(quantize_row_q4_0), dequantize_row_q4_0},
    {3, "Q4_1", LEGACY_BLOCK, Q4_1_BYTES, quantize_row_q4_1, LEGACY_SIMD(quantize_row_q4_1), dequantize_row_q4_1},
    {6, "Q5_0", LEGACY_BLOCK, Q5_0_BYTES, quantize_row_q5_0, LEGACY_SIMD(quantize_row_q5_0), dequantize_row_q5_0},
    {7, "Q5_1", LEGACY_BLOCK, Q5_1_BYTES, quantize_row_q5_1, LEGACY_SIMD(quantize_row_q5_1), dequantize_row_q5_1},
    {8, "Q8_0", Q8_0_BLOCK, Q8_0_BYTES, quantize_row_q8_0, LEGACY_SIMD(quantize_row_q8_0), dequantize_row_q8_0},
    {0, NULL, 0, 0, NULL, NULL, NULL, NULL},
};
