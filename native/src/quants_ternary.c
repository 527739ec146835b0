// Sign and ternary block types: TQ1_0 and TQ2_0 (256 floats a block, levels -1/0/+1 times the block's largest
// magnitude), Q1_0 (128 floats, a sign bit per value times the mean magnitude) and Q2_0 (64 floats, levels
// -1/0/+1/+2 times the largest magnitude).
//
// None of them takes importance weights (llama.cpp ignores an imatrix for all four). The rounding helpers are the
// ones llama.cpp's reference rows use: lroundf for the ternary types, (int)roundf for Q2_0, both half away from
// zero, called the same way so out-of-range products (a subnormal block maximum makes 1/d infinite) come out the
// same as well.
#include <math.h>
#include <string.h>

#include "ggufkit_quants.h"

enum { TQ_BLOCK = 256, Q1_0_BLOCK = 128, Q2_0_BLOCK = 64 };

// ---- helpers

// Largest magnitude of n floats; `a > m ? a : m` per step keeps 0 for an all-zero block.
static inline float block_amax(const float *x, int n) {
    float amax = 0.0f;
    for (int j = 0; j < n; j++) {
        const float a = fabsf(x[j]);
        amax = amax > a ? amax : a;
    }
    return amax;
}

// A value's trit 0, 1, 2 (for -1, 0, +1) as llama.cpp computes it; may leave 0..2 for non-finite products, and
// the packing below works modulo 256 as llama.cpp's uint8_t arithmetic does.
static inline int trit_of(float v) {
    if (!(fabsf(v) < 8388608.0f)) return (int)lroundf(v) + 1;   // huge or non-finite: llama.cpp's call exactly
    // lroundf inline for |v| < 2^23: truncate, then step away from zero when the exact remainder is >= 1/2
    int i = (int)v;
    const float r = v - (float)i;
    i += (r >= 0.5f) - (r <= -0.5f);
    return i + 1;
}

// ---- TQ1_0
// block (54 bytes): | qs: 48 bytes, five trits each | qh: 4 bytes, four trits each | d: fp16 |
//   qs[m]      (m < 32): trits of x[m + 32n],        n = 0..4   (elements 0..159)
//   qs[32 + m] (m < 16): trits of x[160 + m + 16n],  n = 0..4   (elements 160..239)
//   qh[j]      (j < 4):  trits of x[240 + j + 4n],   n = 0..3, then one zero trit
// A byte holding trits t0..t4 (t0 most significant) is ceil((t0*81 + t1*27 + t2*9 + t3*3 + t4) * 256 / 243): the
// base-3 number as a fraction of 243 scaled to a byte, so that value * 3^n keeps trit n in the top bits.

enum { TQ1_BYTES = 54, TQ1_QS = 48, TQ1_QH = 4 };

static inline uint8_t trits_to_byte(uint8_t base3) { return (uint8_t)(((uint16_t)base3 * 256 + 242) / 243); }

static void quantize_row_tq1_0(const float *x, void *vy, int64_t n, const float *imatrix) {
    (void)imatrix;
    uint8_t *y = (uint8_t *)vy;
    for (int64_t b = 0; b < n / TQ_BLOCK; b++, x += TQ_BLOCK, y += TQ1_BYTES) {
        const float d = block_amax(x, TQ_BLOCK);
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        store_half(y + TQ1_QS + TQ1_QH, d);
        // (span of bytes, first element, elements per trit step)
        static const int runs[2][3] = {{32, 0, 32}, {16, 160, 16}};
        for (int r = 0; r < 2; r++) {
            const int bytes = runs[r][0], first = runs[r][1], step = runs[r][2];
            uint8_t *qs = y + (r == 0 ? 0 : 32);
            for (int m = 0; m < bytes; m++) {
                uint8_t q = 0;
                for (int t = 0; t < 5; t++) q = (uint8_t)(q * 3 + trit_of(x[first + m + step * t] * id));
                qs[m] = trits_to_byte(q);
            }
        }
        for (int j = 0; j < TQ1_QH; j++) {
            uint8_t q = 0;
            for (int t = 0; t < 4; t++) q = (uint8_t)(q * 3 + trit_of(x[240 + j + 4 * t] * id));
            q = (uint8_t)(q * 3);
            y[TQ1_QS + j] = trits_to_byte(q);
        }
    }
}

// Trit n of a packed byte: (byte * 3^n mod 256) * 3 >> 8.
static inline float trit_value(uint8_t byte, int n, float d) {
    static const uint8_t pow3[5] = {1, 3, 9, 27, 81};
    const uint8_t q = (uint8_t)(byte * pow3[n]);
    return (float)((((uint16_t)q * 3) >> 8) - 1) * d;
}

static void dequantize_row_tq1_0(const void *vy, float *x, int64_t n) {
    const uint8_t *y = (const uint8_t *)vy;
    for (int64_t b = 0; b < n / TQ_BLOCK; b++, y += TQ1_BYTES, x += TQ_BLOCK) {
        const float d = load_half(y + TQ1_QS + TQ1_QH);
        for (int t = 0; t < 5; t++)
            for (int m = 0; m < 32; m++) x[32 * t + m] = trit_value(y[m], t, d);
        for (int t = 0; t < 5; t++)
            for (int m = 0; m < 16; m++) x[160 + 16 * t + m] = trit_value(y[32 + m], t, d);
        for (int t = 0; t < 4; t++)
            for (int j = 0; j < TQ1_QH; j++) x[240 + 4 * t + j] = trit_value(y[TQ1_QS + j], t, d);
    }
}

// ---- TQ2_0
// block (66 bytes): | qs: 64 bytes | d: fp16 |
//   qs[32h + m] bits 2t..2t+1 = trit of x[128h + 32t + m]   (h = 0, 1; t = 0..3; m < 32), x = (trit - 1) * d

enum { TQ2_BYTES = 66 };

static void quantize_row_tq2_0(const float *x, void *vy, int64_t n, const float *imatrix) {
    (void)imatrix;
    uint8_t *y = (uint8_t *)vy;
    for (int64_t b = 0; b < n / TQ_BLOCK; b++, x += TQ_BLOCK, y += TQ2_BYTES) {
        const float d = block_amax(x, TQ_BLOCK);
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        store_half(y + 64, d);
        for (int h = 0; h < 2; h++) {
            for (int m = 0; m < 32; m++) {
                uint8_t q = 0;
                for (int t = 0; t < 4; t++)
                    q = (uint8_t)(q + ((trit_of(x[128 * h + 32 * t + m] * id) & 3) << (2 * t)));
                y[32 * h + m] = q;
            }
        }
    }
}

static void dequantize_row_tq2_0(const void *vy, float *x, int64_t n) {
    const uint8_t *y = (const uint8_t *)vy;
    for (int64_t b = 0; b < n / TQ_BLOCK; b++, y += TQ2_BYTES, x += TQ_BLOCK) {
        const float d = load_half(y + 64);
        for (int e = 0; e < TQ_BLOCK; e++) {
            const int h = e / 128, t = (e % 128) / 32, m = e % 32;
            x[e] = (float)(((y[32 * h + m] >> (2 * t)) & 3) - 1) * d;
        }
    }
}

// ---- Q1_0
// block (18 bytes): | d: fp16 | qs: 16 bytes, bit j of the little-endian 128-bit field = (x[j] >= 0) |
// d = mean |x| of the block (sequential sum / 128); x[j] = bit ? d : -d.

enum { Q1_0_BYTES = 2 + 16 };

static void quantize_row_q1_0(const float *x, void *vy, int64_t n, const float *imatrix) {
    (void)imatrix;
    uint8_t *y = (uint8_t *)vy;
    for (int64_t b = 0; b < n / Q1_0_BLOCK; b++, x += Q1_0_BLOCK, y += Q1_0_BYTES) {
        float sum = 0.0f;
        for (int j = 0; j < Q1_0_BLOCK; j++) sum += fabsf(x[j]);
        store_half(y, sum / Q1_0_BLOCK);
        memset(y + 2, 0, 16);
        for (int j = 0; j < Q1_0_BLOCK; j++)
            if (x[j] >= 0.0f) y[2 + j / 8] |= (uint8_t)(1u << (j % 8));
    }
}

static void dequantize_row_q1_0(const void *vy, float *x, int64_t n) {
    const uint8_t *y = (const uint8_t *)vy;
    for (int64_t b = 0; b < n / Q1_0_BLOCK; b++, y += Q1_0_BYTES, x += Q1_0_BLOCK) {
        const float d = load_half(y), neg = -d;
        for (int j = 0; j < Q1_0_BLOCK; j++) x[j] = (y[2 + j / 8] >> (j % 8)) & 1 ? d : neg;
    }
}

// ---- Q2_0
// block (18 bytes): | d: fp16 | qs: 16 bytes, bits 2(j%4)..+1 of qs[j/4] = q[j] |
// d = largest |x|, q = clamp(round(x / d) + 1, 0, 3) (round half away from zero), x = (q - 1) * d.

enum { Q2_0_BYTES = 2 + 16 };

static void quantize_row_q2_0(const float *x, void *vy, int64_t n, const float *imatrix) {
    (void)imatrix;
    uint8_t *y = (uint8_t *)vy;
    for (int64_t b = 0; b < n / Q2_0_BLOCK; b++, x += Q2_0_BLOCK, y += Q2_0_BYTES) {
        float amax = 0.0f;
        for (int j = 0; j < Q2_0_BLOCK; j++)
            if (fabsf(x[j]) > amax) amax = fabsf(x[j]);
        const float id = amax > 0.0f ? 1.0f / amax : 0.0f;
        store_half(y, amax);
        memset(y + 2, 0, 16);
        for (int j = 0; j < Q2_0_BLOCK; j++) {
            int q = (int)roundf(x[j] * id) + 1;
            q = q < 0 ? 0 : q > 3 ? 3 : q;
            y[2 + j / 4] |= (uint8_t)(q << (2 * (j % 4)));
        }
    }
}

static void dequantize_row_q2_0(const void *vy, float *x, int64_t n) {
    const uint8_t *y = (const uint8_t *)vy;
    for (int64_t b = 0; b < n / Q2_0_BLOCK; b++, y += Q2_0_BYTES, x += Q2_0_BLOCK) {
        const float d = load_half(y);
        for (int j = 0; j < Q2_0_BLOCK; j++) x[j] = (float)(((y[2 + j / 4] >> (2 * (j % 4))) & 3) - 1) * d;
    }
}

// ---- table

const gk_type_traits gk_ternary_types[] = {
    {34, "TQ1_0", TQ_BLOCK, TQ1_BYTES, quantize_row_tq1_0, NULL, NULL, dequantize_row_tq1_0},
    {35, "TQ2_0", TQ_BLOCK, TQ2_BYTES, quantize_row_tq2_0, NULL, NULL, dequantize_row_tq2_0},
    {41, "Q1_0", Q1_0_BLOCK, Q1_0_BYTES, quantize_row_q1_0, NULL, NULL, dequantize_row_q1_0},
    {42, "Q2_0", Q2_0_BLOCK, Q2_0_BYTES, quantize_row_q2_0, NULL, NULL, dequantize_row_q2_0},
    {0, NULL, 0, 0, NULL, NULL, NULL, NULL},
};
