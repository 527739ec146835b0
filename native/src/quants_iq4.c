// Non-linear 4-bit types: IQ4_NL (32 floats a block) and IQ4_XS (256 floats a block).
//
// Both map 4-bit indices through the fixed non-linear table IQ4_LEVELS. llama.cpp always quantizes them with its
// scale search, importance weights or not: without weights each column is weighted by x^2, with weights by
// imatrix[j] * sqrt(sigma2 + x^2), sigma2 = 2 * (mean square of the super-block). Reproduced operation by operation.
#include <math.h>
#include <string.h>

#include "ggufkit_quants.h"

enum { SUB = 32, SUB_HALF = 16, XS_SUPER = 256, XS_SUBS = XS_SUPER / SUB, SEARCH_STEPS = 7 };

#define ALL_ZERO_BELOW 1e-15f

// The 16 levels, sorted ascending (a fact of the format, shared by IQ4_NL and IQ4_XS).
static const int8_t IQ4_LEVELS[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};

// ---- helpers

// Round half to even through the float adder (see quants_legacy.c): llama.cpp's rounding, for any input.
static inline int round_via_magic(float f) {
    float biased = f + 12582912.0f;
    int32_t bits;
    memcpy(&bits, &biased, 4);
    return (bits & 0x007fffff) - 0x00400000;
}

// Index of the level nearest to v: below/at the ends clamp; otherwise bisect to the pair (lo, lo + 1) around v
// and take lo only when v - level[lo] < level[lo + 1] - v (ties go up). NaN lands on 15, as in llama.cpp.
static inline int nearest_level(float v) {
    if (v <= (float)IQ4_LEVELS[0]) return 0;
    if (v >= (float)IQ4_LEVELS[15]) return 15;
    int lo = 0, hi = 15;
    while (hi - lo > 1) {
        const int mid = (lo + hi) / 2;
        if (v < (float)IQ4_LEVELS[mid])
            hi = mid;
        else
            lo = mid;
    }
    return v - (float)IQ4_LEVELS[hi - 1] < (float)IQ4_LEVELS[hi] - v ? hi - 1 : hi;
}

// 2 * mean square of a super-block of n floats: sequential f32 sum times 2/n.
static float doubled_mean_square(const float *x, int n) {
    float sum = 0.0f;
    for (int j = 0; j < n; j++) sum += x[j] * x[j];
    return sum * (2.0f / (float)n);
}

// (32,) f32 sub-block -> (32,) weights: x^2, or imatrix[j] * sqrt(sigma2 + x^2) when im is given.
static inline void sub_block_weights(const float *x, const float *im, float sigma2, float *w) {
    if (im == NULL)
        for (int j = 0; j < SUB; j++) w[j] = x[j] * x[j];
    else
        for (int j = 0; j < SUB; j++) w[j] = im[j] * sqrtf(sigma2 + x[j] * x[j]);
}

// Weighted sums for one inverse scale: sum w*v*x and sum w*v*v, v the table level nearest to iscale*x.
static inline void level_sums(const float *x, const float *w, float iscale, float *sum_wvx, float *sum_wvv) {
    float svx = 0.0f, svv = 0.0f;
    for (int j = 0; j < SUB; j++) {
        const float v = (float)IQ4_LEVELS[nearest_level(iscale * x[j])];
        svx += w[j] * v * x[j];
        svv += w[j] * v * v;
    }
    *sum_wvx = svx;
    *sum_wvv = svv;
}

// The scale of one sub-block: start from d = max / 127 (sign so the largest value meets the -127 level), take the
// weighted least-squares d for its levels, then try inverse scales (k - 127) / max, k = -7..7, keeping strict
// improvements of (sum w v x)^2 / (sum w v^2). 0 for an (almost) all-zero sub-block.
static float search_sub_scale(const float *x, const float *w) {
    float amax = 0.0f, max = 0.0f;
    for (int j = 0; j < SUB; j++) {
        if (fabsf(x[j]) > amax) {
            amax = fabsf(x[j]);
            max = x[j];
        }
    }
    if (amax < ALL_ZERO_BELOW) return 0.0f;
    const float d0 = -max / (float)IQ4_LEVELS[0];
    float svx, svv;
    level_sums(x, w, 1.0f / d0, &svx, &svv);
    float d = svv > 0.0f ? svx / svv : 0.0f;
    float best = d * svx;
    for (int k = -SEARCH_STEPS; k <= SEARCH_STEPS; k++) {
        level_sums(x, w, (float)(k + IQ4_LEVELS[0]) / max, &svx, &svv);
        if (svv > 0.0f && svx * svx > best * svv) {
            d = svx / svv;
            best = d * svx;
        }
    }
    return d;
}

// 32 level indices -> 16 bytes: byte j = idx[j] | idx[j + 16] << 4.
static inline void pack_sub_block(const float *x, float iscale, uint8_t *qs) {
    for (int j = 0; j < SUB_HALF; j++)
        qs[j] = (uint8_t)(nearest_level(iscale * x[j]) | (nearest_level(iscale * x[j + SUB_HALF]) << 4));
}

// ---- IQ4_NL
// block (18 bytes): | d: fp16 | qs: 16 bytes, byte j = i[j] | i[j+16] << 4 |    x[j] = d * IQ4_LEVELS[i[j]]

enum { IQ4_NL_BYTES = 2 + 16 };

static void quantize_row_iq4_nl(const float *x, void *vy, int64_t n, const float *imatrix) {
    uint8_t *y = (uint8_t *)vy;
    float w[SUB];
    for (int64_t b = 0; b < n / SUB; b++, x += SUB, y += IQ4_NL_BYTES) {
        const float sigma2 = doubled_mean_square(x, SUB);
        sub_block_weights(x, imatrix ? imatrix + b * SUB : NULL, sigma2, w);
        const float d = search_sub_scale(x, w);
        store_half(y, d);
        pack_sub_block(x, d != 0.0f ? 1.0f / d : 0.0f, y + 2);
    }
}

static void dequantize_row_iq4_nl(const void *vy, float *x, int64_t n) {
    const uint8_t *y = (const uint8_t *)vy;
    for (int64_t b = 0; b < n / SUB; b++, x += SUB, y += IQ4_NL_BYTES) {
        const float d = load_half(y);
        for (int j = 0; j < SUB_HALF; j++) {
            x[j] = d * (float)IQ4_LEVELS[y[2 + j] & 0x0f];
            x[j + SUB_HALF] = d * (float)IQ4_LEVELS[y[2 + j] >> 4];
        }
    }
}

// ---- IQ4_XS
// block (136 bytes):
//   | d: fp16 | scales_h: u16 LE | scales_l: 4 bytes | qs: 8 x 16 bytes (one IQ4_NL-style run per sub-block) |
//   sub-block s (0..7) has a 6-bit scale code c[s] = 32 + l[s]: low 4 bits in nibble (s % 2) of scales_l[s / 2],
//   high 2 bits at bits 2s..2s+1 of scales_h.    x[32s + j] = d * (c[s] - 32) * IQ4_LEVELS[i[32s + j]]
// d = -(sub-block scale of largest magnitude) / 32, l[s] = clamp(round(scale[s] / d), -32, 31).

enum { IQ4_XS_BYTES = 2 + 2 + 4 + 128 };

// Given the eight sub-block scales of a super-block, writes d, the 6-bit scale codes and the level indices.
static void finish_iq4_xs_block(const float *x, const float scales[XS_SUBS], uint8_t *y) {
    float max_scale = 0.0f, amax_scale = 0.0f;
    for (int s = 0; s < XS_SUBS; s++) {
        if (fabsf(scales[s]) > amax_scale) {
            amax_scale = fabsf(scales[s]);
            max_scale = scales[s];
        }
    }
    const float d = -max_scale / 32.0f;   // an all-zero super-block gives -0.0 (fp16 0x8000), as in llama.cpp
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    store_half(y, d);
    uint16_t scales_h = 0;
    uint8_t *scales_l = y + 4;
    memset(scales_l, 0, 4);
    for (int s = 0; s < XS_SUBS; s++) {
        int l = round_via_magic(id * scales[s]);
        l = l < -32 ? -32 : l > 31 ? 31 : l;
        const float dl = d * (float)l;
        pack_sub_block(x + s * SUB, dl != 0.0f ? 1.0f / dl : 0.0f, y + 8 + s * SUB_HALF);
        const int code = l + 32;
        scales_l[s / 2] |= (uint8_t)((code & 0x0f) << (4 * (s % 2)));
        scales_h |= (uint16_t)((code >> 4) << (2 * s));
    }
    memcpy(y + 2, &scales_h, 2);
}

static void quantize_row_iq4_xs(const float *x, void *vy, int64_t n, const float *imatrix) {
    uint8_t *y = (uint8_t *)vy;
    float w[SUB], scales[XS_SUBS];
    for (int64_t b = 0; b < n / XS_SUPER; b++, x += XS_SUPER, y += IQ4_XS_BYTES) {
        const float *im = imatrix ? imatrix + b * XS_SUPER : NULL;
        const float sigma2 = doubled_mean_square(x, XS_SUPER);
        for (int s = 0; s < XS_SUBS; s++) {
            sub_block_weights(x + s * SUB, im ? im + s * SUB : NULL, sigma2, w);
            scales[s] = search_sub_scale(x + s * SUB, w);
        }
        finish_iq4_xs_block(x, scales, y);
    }
}

static void dequantize_row_iq4_xs(const void *vy, float *x, int64_t n) {
    const uint8_t *y = (const uint8_t *)vy;
    for (int64_t b = 0; b < n / XS_SUPER; b++, y += IQ4_XS_BYTES) {
        const float d = load_half(y);
        uint16_t scales_h;
        memcpy(&scales_h, y + 2, 2);
        for (int s = 0; s < XS_SUBS; s++, x += SUB) {
            const int code = ((y[4 + s / 2] >> (4 * (s % 2))) & 0x0f) | (((scales_h >> (2 * s)) & 3) << 4);
            const float dl = d * (float)(code - 32);
            const uint8_t *qs = y + 8 + s * SUB_HALF;
            for (int j = 0; j < SUB_HALF; j++) {
                x[j] = dl * (float)IQ4_LEVELS[qs[j] & 0x0f];
                x[j + SUB_HALF] = dl * (float)IQ4_LEVELS[qs[j] >> 4];
            }
        }
    }
}

// ---- AVX2: eight sub-blocks in lanes
// Lane k searches the scale of sub-block k (IQ4_NL: eight consecutive blocks; IQ4_XS: the eight sub-blocks of one
// super-block), walking j = 0..31 in the scalar order, so every sum is the scalar one. The nearest level is found
// by counting levels <= v instead of bisecting; both give the pair around v, then the same float comparison picks.

#if defined(__x86_64__) || defined(__i386__)
#include "simd_x86.h"
#define HAVE_IQ4_AVX2 1


// (float)IQ4_LEVELS[idx] for idx in 0..15.
GK_AVX2 static inline __m256 level_of8(__m256i idx) {
    const __m256 lo = _mm256_setr_ps(-127, -104, -83, -65, -49, -35, -22, -10);
    const __m256 hi = _mm256_setr_ps(1, 13, 25, 38, 53, 69, 89, 113);
    const __m256 upper = _mm256_castsi256_ps(_mm256_cmpgt_epi32(idx, _mm256_set1_epi32(7)));
    return _mm256_blendv_ps(_mm256_permutevar8x32_ps(lo, idx), _mm256_permutevar8x32_ps(hi, idx), upper);
}

// nearest_level on eight lanes, same answers including the ends and NaN.
GK_AVX2 static inline __m256i nearest_level8(__m256 v) {
    __m256i hi = _mm256_set1_epi32(1);   // 1 + #{i in 1..14 : level[i] <= v}: the level just above v
    for (int i = 1; i < 15; i++)
        hi = _mm256_sub_epi32(hi, _mm256_castps_si256(_mm256_cmp_ps(v, _mm256_set1_ps((float)IQ4_LEVELS[i]),
                                                                    _CMP_GE_OQ)));
    const __m256i lo = _mm256_sub_epi32(hi, _mm256_set1_epi32(1));
    const __m256 take_lo = _mm256_cmp_ps(_mm256_sub_ps(v, level_of8(lo)), _mm256_sub_ps(level_of8(hi), v), _CMP_LT_OQ);
    __m256i idx = _mm256_castps_si256(_mm256_blendv_ps(_mm256_castsi256_ps(hi), _mm256_castsi256_ps(lo), take_lo));
    const __m256 at_bottom = _mm256_cmp_ps(v, _mm256_set1_ps((float)IQ4_LEVELS[0]), _CMP_LE_OQ);
    const __m256 at_top = _mm256_cmp_ps(v, _mm256_set1_ps((float)IQ4_LEVELS[15]), _CMP_NLT_UQ);  // or NaN
    idx = _mm256_andnot_si256(_mm256_castps_si256(at_bottom), idx);
    return _mm256_castps_si256(_mm256_blendv_ps(_mm256_castsi256_ps(idx), _mm256_castsi256_ps(_mm256_set1_epi32(15)),
                                                at_top));
}

GK_AVX2 static inline void level_sums8(const __m256 xt[SUB], const __m256 wt[SUB], __m256 iscale, __m256 *svx,
                                       __m256 *svv) {
    __m256 a = _mm256_setzero_ps(), b = _mm256_setzero_ps();
    for (int j = 0; j < SUB; j++) {
        const __m256 v = level_of8(nearest_level8(_mm256_mul_ps(iscale, xt[j])));
        const __m256 wv = _mm256_mul_ps(wt[j], v);
        a = _mm256_add_ps(a, _mm256_mul_ps(wv, xt[j]));
        b = _mm256_add_ps(b, _mm256_mul_ps(wv, v));
    }
    *svx = a;
    *svv = b;
}

// search_sub_scale for eight sub-blocks: xt, wt (32, 8) -> scale per lane.
GK_AVX2 static inline __m256 search_sub_scale8(const __m256 xt[SUB], const __m256 wt[SUB]) {
    const __m256 sign = _mm256_set1_ps(-0.0f), zero = _mm256_setzero_ps();
    __m256 amax = zero, max = zero;
    for (int j = 0; j < SUB; j++) {
        const __m256 ax = _mm256_andnot_ps(sign, xt[j]);
        const __m256 gt = _mm256_cmp_ps(ax, amax, _CMP_GT_OQ);
        amax = _mm256_blendv_ps(amax, ax, gt);
        max = _mm256_blendv_ps(max, xt[j], gt);
    }
    const __m256 live = _mm256_cmp_ps(amax, _mm256_set1_ps(ALL_ZERO_BELOW), _CMP_GE_OQ);
    const __m256 d0 = _mm256_div_ps(_mm256_xor_ps(max, sign), _mm256_set1_ps((float)IQ4_LEVELS[0]));
    __m256 svx, svv;
    level_sums8(xt, wt, _mm256_div_ps(_mm256_set1_ps(1.0f), d0), &svx, &svv);
    __m256 d = _mm256_and_ps(_mm256_div_ps(svx, svv), _mm256_cmp_ps(svv, zero, _CMP_GT_OQ));
    __m256 best = _mm256_mul_ps(d, svx);
    for (int k = -SEARCH_STEPS; k <= SEARCH_STEPS; k++) {
        level_sums8(xt, wt, _mm256_div_ps(_mm256_set1_ps((float)(k + IQ4_LEVELS[0])), max), &svx, &svv);
        const __m256 better = _mm256_and_ps(_mm256_cmp_ps(svv, zero, _CMP_GT_OQ),
                                            _mm256_cmp_ps(_mm256_mul_ps(svx, svx), _mm256_mul_ps(best, svv), _CMP_GT_OQ));
        const __m256 cand = _mm256_div_ps(svx, svv);
        d = _mm256_blendv_ps(d, cand, better);
        best = _mm256_blendv_ps(best, _mm256_mul_ps(cand, svx), better);
    }
    return _mm256_and_ps(d, live);
}

// Weights of eight transposed sub-blocks: x^2, or im * sqrt(sigma2 + x^2) with sigma2 per lane.
GK_AVX2 static inline void weights8(const __m256 xt[SUB], const float *im, __m256 sigma2, __m256 wt[SUB]) {
    if (im == NULL) {
        for (int j = 0; j < SUB; j++) wt[j] = _mm256_mul_ps(xt[j], xt[j]);
        return;
    }
    transpose_blocks32(im, wt);
    for (int j = 0; j < SUB; j++)
        wt[j] = _mm256_mul_ps(wt[j], _mm256_sqrt_ps(_mm256_add_ps(sigma2, _mm256_mul_ps(xt[j], xt[j]))));
}

GK_AVX2 static void quantize_row_iq4_nl_avx2(const float *x, void *vy, int64_t n, const float *imatrix) {
    uint8_t *y = (uint8_t *)vy;
    const int64_t nb = n / SUB;
    __m256 xt[SUB], wt[SUB];
    int64_t b = 0;
    for (; b + 8 <= nb; b += 8) {
        const float *xg = x + b * SUB;
        transpose_blocks32(xg, xt);
        __m256 sum = _mm256_setzero_ps();   // per-block sum of squares, sequential in j as in the scalar path
        for (int j = 0; j < SUB; j++) sum = _mm256_add_ps(sum, _mm256_mul_ps(xt[j], xt[j]));
        weights8(xt, imatrix ? imatrix + b * SUB : NULL, _mm256_mul_ps(sum, _mm256_set1_ps(2.0f / (float)SUB)), wt);
        float d[8];
        _mm256_storeu_ps(d, search_sub_scale8(xt, wt));
        for (int k = 0; k < 8; k++) {
            uint8_t *yb = y + (b + k) * IQ4_NL_BYTES;
            store_half(yb, d[k]);
            pack_sub_block(xg + k * SUB, d[k] != 0.0f ? 1.0f / d[k] : 0.0f, yb + 2);
        }
    }
    if (b < nb) quantize_row_iq4_nl(x + b * SUB, y + b * IQ4_NL_BYTES, (nb - b) * SUB, imatrix ? imatrix + b * SUB : NULL);
}

GK_AVX2 static void quantize_row_iq4_xs_avx2(const float *x, void *vy, int64_t n, const float *imatrix) {
    uint8_t *y = (uint8_t *)vy;
    __m256 xt[SUB], wt[SUB];
    float scales[XS_SUBS];
    for (int64_t b = 0; b < n / XS_SUPER; b++, x += XS_SUPER, y += IQ4_XS_BYTES) {
        transpose_blocks32(x, xt);
        weights8(xt, imatrix ? imatrix + b * XS_SUPER : NULL, _mm256_set1_ps(doubled_mean_square(x, XS_SUPER)), wt);
        _mm256_storeu_ps(scales, search_sub_scale8(xt, wt));
        finish_iq4_xs_block(x, scales, y);
    }
}
#endif

// ---- table

#ifdef HAVE_IQ4_AVX2
#define IQ4_SIMD(fn) fn##_avx2, "avx2"
#else
#define IQ4_SIMD(fn) NULL, NULL
#endif

const gk_type_traits gk_iq4_types[] = {
    {20, "IQ4_NL", SUB, IQ4_NL_BYTES, quantize_row_iq4_nl, IQ4_SIMD(quantize_row_iq4_nl), dequantize_row_iq4_nl},
    {23, "IQ4_XS", XS_SUPER, IQ4_XS_BYTES, quantize_row_iq4_xs, IQ4_SIMD(quantize_row_iq4_xs), dequantize_row_iq4_xs},
    {0, NULL, 0, 0, NULL, NULL, NULL, NULL},
};
