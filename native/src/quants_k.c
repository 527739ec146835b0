// K-quant super-block types (256 floats a block): Q2_K, Q3_K, Q4_K, Q5_K, Q6_K.
//
// Every quantizer here reproduces llama.cpp's bytes (ggml_quantize_chunk) exactly. That means: the same fitting
// algorithm, the same order of float operations (no FMA: the file is built with -ffp-contract=off), the same
// rounding helper (round_magic below, which also matters for out-of-range inputs), the same integer truncations
// when a rounded value is stored into a byte, and the fp16-rounded super-block scales where llama.cpp re-reads
// them. Without an importance matrix llama.cpp uses its "reference" quantizer for each type; with one it uses a
// different, weighted fitting (llama.cpp's *_impl functions). Both are here, per type.
//
// The SIMD versions (quants_k_lanes.h, instantiated by quants_k_avx2.c, quants_k_avx512.c and quants_k_neon.c) run
// the same operations per block, eight (AVX2, NEON) or sixteen (AVX-512) blocks at a time.
#include <math.h>
#include <string.h>

#include "quants_k_internal.h"

// ---- small helpers (rounding: kq_round_magic in quants_k_internal.h)

static inline int clamp_int(int v, int lo, int hi) { return v < lo ? lo : (v > hi ? hi : v); }

static inline void store_fp16(uint8_t *dst, float v) {
    uint16_t h = gk_fp32_to_fp16(v);
    memcpy(dst, &h, 2);
}

static inline float load_fp16(const uint8_t *src) {
    uint16_t h;
    memcpy(&h, src, 2);
    return gk_fp16_to_fp32(h);
}

// Groups whose largest magnitude is below this are treated as all zero.
#define KQ_ZERO_GROUP 1e-15f

// ---- fitting: symmetric scale, weighted least squares with a scan of 18 nearby scales
// Fits x[i] ~ scale * (q[i] - nmax), q in [0, 2*nmax). The starting scale maps the largest-magnitude value to
// -nmax; then scales -(nmax + 0.1*k)/max for k = -9..9 are tried and the one with the best weighted fit
// (largest sumlx^2 / suml2) wins. weights == NULL means w = x^2.

float kq_fit_symmetric(int n, int nmax, const float *x, const float *weights, int8_t *q) {
    float max = 0.0f, amax = 0.0f;
    for (int i = 0; i < n; i++) {
        float a = fabsf(x[i]);
        if (a > amax) { amax = a; max = x[i]; }
    }
    if (amax < KQ_ZERO_GROUP) {
        memset(q, 0, (size_t)n);
        return 0.0f;
    }
    float inv = -nmax / max;
    float sumlx = 0.0f, suml2 = 0.0f;
    for (int i = 0; i < n; i++) {
        int l = clamp_int(kq_round_magic(inv * x[i]), -nmax, nmax - 1);
        q[i] = (int8_t)(l + nmax);
        float w = weights ? weights[i] : x[i] * x[i];
        sumlx += w * x[i] * l;
        suml2 += w * l * l;
    }
    float scale = suml2 != 0.0f ? sumlx / suml2 : 0.0f;
    float best = scale * sumlx;
    for (int k = -9; k <= 9; k++) {
        if (k == 0) continue;
        float trial = -(nmax + 0.1f * k) / max;
        float tlx = 0.0f, tl2 = 0.0f;
        for (int i = 0; i < n; i++) {
            int l = clamp_int(kq_round_magic(trial * x[i]), -nmax, nmax - 1);
            float w = weights ? weights[i] : x[i] * x[i];
            tlx += w * x[i] * l;
            tl2 += w * l * l;
        }
        if (tl2 > 0.0f && tlx * tlx > best * tl2) {
            for (int i = 0; i < n; i++)
                q[i] = (int8_t)(nmax + clamp_int(kq_round_magic(trial * x[i]), -nmax, nmax - 1));
            scale = tlx / tl2;
            best = scale * tlx;
        }
    }
    return scale;
}

// ---- fitting: symmetric scale for Q3_K without importance, by coordinate descent
// Starts from the scale mapping the largest-magnitude value to -nmax, then (up to 5 passes) moves each q[i] to
// the level the current best-fit scale suggests when that improves sumlx^2 / suml2 (weights x^2). The returned
// q are offset by nmax.

float kq_fit_symmetric_descent(int n, int nmax, const float *x, int8_t *q) {
    float max = 0.0f, amax = 0.0f;
    for (int i = 0; i < n; i++) {
        float a = fabsf(x[i]);
        if (a > amax) { amax = a; max = x[i]; }
    }
    if (amax < KQ_ZERO_GROUP) {
        memset(q, 0, (size_t)n);
        return 0.0f;
    }
    float inv = -nmax / max;
    float sumlx = 0.0f, suml2 = 0.0f;
    for (int i = 0; i < n; i++) {
        int l = clamp_int(kq_round_magic(inv * x[i]), -nmax, nmax - 1);
        q[i] = (int8_t)l;
        float w = x[i] * x[i];
        sumlx += w * x[i] * l;
        suml2 += w * l * l;
    }
    for (int pass = 0; pass < KQ_DESCENT_PASSES; pass++)
        if (!kq_descent_pass(n, nmax, x, q, &sumlx, &suml2)) break;
    for (int i = 0; i < n; i++) q[i] = (int8_t)(q[i] + nmax);
    return suml2 > 0.0f ? sumlx / suml2 : 0.0f;
}

// One pass of the descent over q (levels -nmax..nmax-1, not offset) with its running sums; returns how many
// levels moved. The lane paths run the first pass in lanes and hand the (few) groups that moved to this.
int kq_descent_pass(int n, int nmax, const float *x, int8_t *q, float *sumlx_io, float *suml2_io) {
    float sumlx = *sumlx_io, suml2 = *suml2_io;
    int changed = 0;
    for (int i = 0; i < n; i++) {
        float w = x[i] * x[i];
        float slx = sumlx - w * x[i] * q[i];
        if (!(slx > 0.0f)) continue;
        float sl2 = suml2 - w * q[i] * q[i];
        int l = clamp_int(kq_round_magic(x[i] * sl2 / slx), -nmax, nmax - 1);
        if (l == q[i]) continue;
        slx += w * x[i] * l;
        sl2 += w * l * l;
        if (sl2 > 0.0f && slx * slx * suml2 > sumlx * sumlx * sl2) {
            q[i] = (int8_t)l;
            sumlx = slx;
            suml2 = sl2;
            changed++;
        }
    }
    *sumlx_io = sumlx;
    *suml2_io = suml2;
    return changed;
}

// ---- fitting: scale and minimum, x[i] ~ scale * q[i] - mn, q in [0, nmax]
// Starts from the min/max range, then tries nstep+1 range stretches (rmin + rdelta*k + nmax) / (max - min); for
// each it solves the weighted 2x2 least-squares problem for (scale, min) and keeps it if its weighted error
// (|diff| when use_mad, diff^2 otherwise) is lower. *neg_min receives -min (>= 0).

float kq_fit_affine(int n, int nmax, const float *x, const float *weights, uint8_t *q, float *neg_min,
                    float rmin, float rdelta, int nstep, int use_mad) {
    uint8_t trial_q[32];
    float min = x[0], max = x[0];
    float sum_w = weights[0];
    float sum_x = sum_w * x[0];
    for (int i = 1; i < n; i++) {
        if (x[i] < min) min = x[i];
        if (x[i] > max) max = x[i];
        float w = weights[i];
        sum_w += w;
        sum_x += w * x[i];
    }
    if (min > 0.0f) min = 0.0f;
    if (max == min) {
        memset(q, 0, (size_t)n);
        *neg_min = -min;
        return 0.0f;
    }
    float inv = nmax / (max - min);
    float scale = 1.0f / inv;
    float best_err = 0.0f;
    for (int i = 0; i < n; i++) {
        int l = clamp_int(kq_round_magic(inv * (x[i] - min)), 0, nmax);
        q[i] = (uint8_t)l;
        float diff = scale * q[i] + min - x[i];
        diff = use_mad ? fabsf(diff) : diff * diff;
        best_err += weights[i] * diff;
    }
    for (int k = 0; k <= nstep; k++) {
        float trial = (rmin + rdelta * k + nmax) / (max - min);
        float sum_l = 0.0f, sum_l2 = 0.0f, sum_xl = 0.0f;
        for (int i = 0; i < n; i++) {
            int l = clamp_int(kq_round_magic(trial * (x[i] - min)), 0, nmax);
            trial_q[i] = (uint8_t)l;
            float w = weights[i];
            sum_l += w * l;
            sum_l2 += w * l * l;
            sum_xl += w * l * x[i];
        }
        float det = sum_w * sum_l2 - sum_l * sum_l;
        if (!(det > 0.0f)) continue;
        float t_scale = (sum_w * sum_xl - sum_x * sum_l) / det;
        float t_min = (sum_l2 * sum_x - sum_l * sum_xl) / det;
        if (t_min > 0.0f) {
            t_min = 0.0f;
            t_scale = sum_xl / sum_l2;
        }
        float err = 0.0f;
        for (int i = 0; i < n; i++) {
            float diff = t_scale * trial_q[i] + t_min - x[i];
            diff = use_mad ? fabsf(diff) : diff * diff;
            err += weights[i] * diff;
        }
        if (err < best_err) {
            memcpy(q, trial_q, (size_t)n);
            best_err = err;
            scale = t_scale;
            min = t_min;
        }
    }
    *neg_min = -min;
    return scale;
}

// ---- fitting: one positive scale for non-negative values (the super-block scale of the sub-block scales)
// x[i] ~ scale * q[i], q in [0, nmax]: the best of 9 scales (nmax + 0.1*k)/max, k = -4..4, by weighted squared
// error, then up to 5 coordinate-descent passes on sumlx^2 / suml2.

float kq_fit_positive(int n, int nmax, const float *x, const float *weights, uint8_t *q) {
    float max = 0.0f;
    for (int i = 0; i < n; i++) max = max > x[i] ? max : x[i];
    if (max < KQ_ZERO_GROUP) {
        memset(q, 0, (size_t)n);
        return 0.0f;
    }
    float inv = nmax / max;
    for (int i = 0; i < n; i++) q[i] = (uint8_t)kq_round_magic(inv * x[i]);
    float scale = 1.0f / inv;
    float best_err = 0.0f;
    for (int i = 0; i < n; i++) {
        float diff = x[i] - scale * q[i];
        best_err += weights[i] * diff * diff;
    }
    for (int k = -4; k <= 4; k++) {
        if (k == 0) continue;
        float t_inv = (0.1f * k + nmax) / max;
        float t_scale = 1.0f / t_inv;
        float err = 0.0f;
        for (int i = 0; i < n; i++) {
            int l = kq_round_magic(t_inv * x[i]);
            if (l > nmax) l = nmax;
            float diff = x[i] - t_scale * l;
            err += weights[i] * diff * diff;
        }
        if (err < best_err) {
            best_err = err;
            inv = t_inv;
        }
    }
    float sumlx = 0.0f, suml2 = 0.0f;
    for (int i = 0; i < n; i++) {
        int l = kq_round_magic(inv * x[i]);
        if (l > nmax) l = nmax;
        q[i] = (uint8_t)l;
        float w = weights[i];
        sumlx += w * x[i] * l;
        suml2 += w * l * l;
    }
    for (int pass = 0; pass < 5; pass++) {
        int changed = 0;
        for (int i = 0; i < n; i++) {
            float w = weights[i];
            float slx = sumlx - w * x[i] * q[i];
            float sl2 = suml2 - w * q[i] * q[i];
            if (!(slx > 0.0f && sl2 > 0.0f)) continue;
            int l = kq_round_magic(x[i] * sl2 / slx);
            if (l > nmax) l = nmax;
            if (l == q[i]) continue;
            slx += w * x[i] * l;
            sl2 += w * l * l;
            if (slx * slx * suml2 > sumlx * sumlx * sl2) {
                q[i] = (uint8_t)l;
                sumlx = slx;
                suml2 = sl2;
                changed++;
            }
        }
        if (!changed) break;
    }
    return suml2 > 0.0f ? sumlx / suml2 : 0.0f;
}

// ---- packing shared by the scalar and AVX2 paths

// 2-bit fields of 256 levels: byte 32*h + l holds levels 128h + l + {0, 32, 64, 96} in bits {0-1, 2-3, 4-5, 6-7}.
void kq_pack_2bit(const uint8_t *levels, uint8_t *qs) {
    for (int h = 0; h < 2; h++) {
        const uint8_t *lv = levels + 128 * h;
        for (int l = 0; l < 32; l++)
            qs[32 * h + l] = (uint8_t)(lv[l] | (lv[l + 32] << 2) | (lv[l + 64] << 4) | (lv[l + 96] << 6));
    }
}

// Q4_K / Q5_K 6-bit scales and mins, 12 bytes:
//   byte 0..3  | s[j] (6 bits) | s[j+4] >> 4 (2 bits, top) |
//   byte 4..7  | m[j] (6 bits) | m[j+4] >> 4 (2 bits, top) |
//   byte 8..11 | s[j+4] & 15 (low nibble) | m[j+4] & 15 (high nibble) |       j = 0..3
void kq_pack_scale_min6(const uint8_t *s, const uint8_t *m, uint8_t *out) {
    for (int j = 0; j < 4; j++) {
        out[j] = (uint8_t)(s[j] | ((s[j + 4] >> 4) << 6));
        out[j + 4] = (uint8_t)(m[j] | ((m[j + 4] >> 4) << 6));
        out[j + 8] = (uint8_t)((s[j + 4] & 0xF) | ((m[j + 4] & 0xF) << 4));
    }
}

// Inverse of kq_pack_scale_min6 for sub-block j (0..7).
static inline void unpack_scale_min6(const uint8_t *p, int j, uint8_t *s, uint8_t *m) {
    if (j < 4) {
        *s = p[j] & 63;
        *m = p[j + 4] & 63;
    } else {
        *s = (uint8_t)((p[j + 4] & 0xF) | ((p[j - 4] >> 6) << 4));
        *m = (uint8_t)((p[j + 4] >> 4) | ((p[j] >> 6) << 4));
    }
}

// Q3_K 6-bit scales (stored +32), 12 bytes:
//   byte 0..7  | s[j] & 15 (low nibble) | s[j+8] & 15 (high nibble) |              j = 0..7
//   byte 8..11 | s[k] >> 4 | s[k+4] >> 4 | s[k+8] >> 4 | s[k+12] >> 4 | (2 bits each, from bit 0)  k = 0..3
void kq_pack_scale6_q3(const uint8_t *s, uint8_t *out) {
    memset(out, 0, 12);
    for (int j = 0; j < 16; j++) {
        out[j % 8] |= (uint8_t)((s[j] & 0xF) << (j < 8 ? 0 : 4));
        out[8 + j % 4] |= (uint8_t)((s[j] >> 4) << (2 * (j / 4)));
    }
}

static inline int unpack_scale6_q3(const uint8_t *p, int j) {
    int lo = j < 8 ? (p[j] & 0xF) : (p[j - 8] >> 4);
    int hi = (p[8 + j % 4] >> (2 * (j / 4))) & 3;
    return (int8_t)((lo | (hi << 4)) - 32);
}

// ---- Q2_K
// block (84 bytes): | scales: 16 x u8 (low nibble scale, high nibble min) | qs: 64 (2-bit) | d: fp16 | dmin: fp16 |
// x = d * (sc & 15) * q - dmin * (sc >> 4), sixteen groups of 16.

enum { Q2K_SCALES = 0, Q2K_QS = 16, Q2K_D = 80, Q2K_DMIN = 82 };

// Per group, the stored (fp16) scale and min as floats: x ~ dg * q - mg.
void kq_q2k_group_factors(const uint8_t *blk, float *dg, float *mg) {
    const float d = load_fp16(blk + Q2K_D), dmin = load_fp16(blk + Q2K_DMIN);
    for (int g = 0; g < 16; g++) {
        dg[g] = d * (blk[Q2K_SCALES + g] & 0xF);
        mg[g] = dmin * (blk[Q2K_SCALES + g] >> 4);
    }
}

// Final 2-bit levels from the stored scales (groups with a zero scale keep the fitted levels; x == NULL: the
// levels are final already), then packing.
void kq_q2k_requantize_pack(const float *x, uint8_t *blk, uint8_t *levels) {
    float dg[16], mg[16];
    kq_q2k_group_factors(blk, dg, mg);
    for (int g = 0; x != NULL && g < 16; g++) {
        if (dg[g] == 0.0f) continue;
        for (int i = 0; i < 16; i++)
            levels[16 * g + i] = (uint8_t)clamp_int(kq_round_magic((x[16 * g + i] + mg[g]) / dg[g]), 0, 3);
    }
    kq_pack_2bit(levels, blk + Q2K_QS);
}

static void q2k_block_plain(const float *x, uint8_t *blk) {
    uint8_t levels[256];
    float weights[16], scales[16], mins[16];
    for (int g = 0; g < 16; g++) {
        for (int i = 0; i < 16; i++) weights[i] = fabsf(x[16 * g + i]);
        scales[g] = kq_fit_affine(16, 3, x + 16 * g, weights, levels + 16 * g, &mins[g], -0.5f, 0.1f, 15, 1);
    }
    kq_q2k_finish_plain(x, blk, scales, mins, levels);
}

void kq_q2k_finish_plain(const float *x, uint8_t *blk, const float *scales, const float *mins, uint8_t *levels) {
    float max_scale = 0.0f, max_min = 0.0f;
    for (int g = 0; g < 16; g++) {
        if (scales[g] > max_scale) max_scale = scales[g];
        if (mins[g] > max_min) max_min = mins[g];
    }
    if (max_scale > 0.0f) {
        float inv = 15.0f / max_scale;
        for (int g = 0; g < 16; g++) blk[Q2K_SCALES + g] = (uint8_t)kq_round_magic(inv * scales[g]);
        store_fp16(blk + Q2K_D, max_scale / 15.0f);
    } else {
        memset(blk + Q2K_SCALES, 0, 16);
        store_fp16(blk + Q2K_D, 0.0f);
    }
    if (max_min > 0.0f) {
        float inv = 15.0f / max_min;
        for (int g = 0; g < 16; g++) blk[Q2K_SCALES + g] |= (uint8_t)(kq_round_magic(inv * mins[g]) << 4);
        store_fp16(blk + Q2K_DMIN, max_min / 15.0f);
    } else {
        store_fp16(blk + Q2K_DMIN, 0.0f);
    }
    if (x) kq_q2k_requantize_pack(x, blk, levels);
}

static void q2k_block_weighted(const float *x, const float *imatrix, uint8_t *blk) {
    uint8_t levels[256];
    float weights[16], scales[16], mins[16], group_w[16];
    float sumx2 = 0.0f;
    for (int i = 0; i < 256; i++) sumx2 += x[i] * x[i];
    const float sigma2 = sumx2 / 256;
    for (int g = 0; g < 16; g++) {
        const float *im = imatrix + 16 * g;
        float sw = 0.0f;
        for (int i = 0; i < 16; i++) weights[i] = im[i] * sqrtf(sigma2 + x[16 * g + i] * x[16 * g + i]);
        for (int i = 0; i < 16; i++) sw += weights[i];
        group_w[g] = sw;
        scales[g] = kq_fit_affine(16, 3, x + 16 * g, weights, levels + 16 * g, &mins[g], -0.9f, 0.05f, 36, 0);
    }
    kq_q2k_finish_weighted(x, blk, scales, mins, group_w, levels);
}

void kq_q2k_finish_weighted(const float *x, uint8_t *blk, const float *scales, const float *mins,
                            const float *group_w, uint8_t *levels) {
    uint8_t ls[16], lm[16];
    float d = kq_fit_positive(16, 15, scales, group_w, ls);
    float dmin = kq_fit_positive(16, 15, mins, group_w, lm);
    kq_q2k_write_header(blk, ls, lm, d, dmin);
    if (x) kq_q2k_requantize_pack(x, blk, levels);
}

void kq_q2k_write_header(uint8_t *blk, const uint8_t *ls, const uint8_t *lm, float d, float dmin) {
    store_fp16(blk + Q2K_D, d);
    store_fp16(blk + Q2K_DMIN, dmin);
    for (int g = 0; g < 16; g++) blk[Q2K_SCALES + g] = (uint8_t)(ls[g] | (lm[g] << 4));
}

void kq_quantize_row_q2_k(const float *x, void *vy, int64_t n, const float *imatrix) {
    uint8_t *y = (uint8_t *)vy;
    for (int64_t b = 0; b < n / 256; b++) {
        if (imatrix)
            q2k_block_weighted(x + 256 * b, imatrix + 256 * b, y + 84 * b);
        else
            q2k_block_plain(x + 256 * b, y + 84 * b);
    }
}

static void dequantize_row_q2_k(const void *vy, float *x, int64_t n) {
    const uint8_t *y = (const uint8_t *)vy;
    for (int64_t b = 0; b < n / 256; b++, y += 84, x += 256) {
        const float d = load_fp16(y + Q2K_D), dmin = load_fp16(y + Q2K_DMIN);
        for (int g = 0; g < 16; g++) {
            const float dg = d * (float)(y[Q2K_SCALES + g] & 0xF);
            const float mg = dmin * (float)(y[Q2K_SCALES + g] >> 4);
            for (int i = 0; i < 16; i++) {
                int e = 16 * g + i;  // element e: byte 32*(e/128) + e%32, bit pair (e%128)/32
                int q = (y[Q2K_QS + 32 * (e / 128) + e % 32] >> (2 * ((e % 128) / 32))) & 3;
                x[e] = dg * (float)q - mg;
            }
        }
    }
}

// ---- Q3_K
// block (110 bytes): | hmask: 32 (bit 2 of each level) | qs: 64 (low 2 bits) | scales: 12 (6-bit, +32) | d: fp16 |
// x = d * (sc - 32) * (q - 4), sixteen groups of 16. Level e's high bit is hmask[e % 32] bit e / 32.

enum { Q3K_HMASK = 0, Q3K_QS = 32, Q3K_SCALES = 96, Q3K_D = 108 };

void kq_q3k_group_factors(const uint8_t *blk, float *dg) {
    const float d = load_fp16(blk + Q3K_D);
    for (int g = 0; g < 16; g++) dg[g] = d * unpack_scale6_q3(blk + Q3K_SCALES, g);
}

// Final levels from the stored scales (zero-scale groups keep the fitted levels; x == NULL: levels are final),
// then packing.
void kq_q3k_requantize_pack(const float *x, uint8_t *blk, int8_t *levels) {
    float dg[16];
    kq_q3k_group_factors(blk, dg);
    for (int g = 0; x != NULL && g < 16; g++) {
        if (dg[g] == 0.0f) continue;
        for (int i = 0; i < 16; i++)
            levels[16 * g + i] = (int8_t)(clamp_int(kq_round_magic(x[16 * g + i] / dg[g]), -4, 3) + 4);
    }
    uint8_t low[256];
    memset(blk + Q3K_HMASK, 0, 32);
    for (int e = 0; e < 256; e++) {
        int l = levels[e];
        if (l > 3) {
            blk[Q3K_HMASK + e % 32] |= (uint8_t)(1u << (e / 32));
            l -= 4;
        }
        low[e] = (uint8_t)l;
    }
    kq_pack_2bit(low, blk + Q3K_QS);
}

static void q3k_block_plain(const float *x, uint8_t *blk) {
    int8_t levels[256];
    float scales[16];
    for (int g = 0; g < 16; g++) scales[g] = kq_fit_symmetric_descent(16, 4, x + 16 * g, levels + 16 * g);
    kq_q3k_finish_plain(x, blk, scales, levels);
}

void kq_q3k_finish_plain(const float *x, uint8_t *blk, const float *scales, int8_t *levels) {
    float max_scale = 0.0f, amax = 0.0f;
    for (int g = 0; g < 16; g++) {
        float a = fabsf(scales[g]);
        if (a > amax) { amax = a; max_scale = scales[g]; }
    }
    uint8_t s6[16] = {0};
    if (max_scale != 0.0f) {
        float inv = -32.0f / max_scale;
        for (int g = 0; g < 16; g++) {
            int8_t l = (int8_t)kq_round_magic(inv * scales[g]);
            s6[g] = (uint8_t)(clamp_int(l, -32, 31) + 32);
        }
        kq_pack_scale6_q3(s6, blk + Q3K_SCALES);
        store_fp16(blk + Q3K_D, 1.0f / inv);
    } else {
        memset(blk + Q3K_SCALES, 0, 12);
        store_fp16(blk + Q3K_D, 0.0f);
    }
    if (x) kq_q3k_requantize_pack(x, blk, levels);
}

static void q3k_block_weighted(const float *x, const float *imatrix, uint8_t *blk) {
    int8_t levels[256];
    float weights[16], scales[16], group_w[16];
    float sumx2 = 0.0f;
    for (int i = 0; i < 256; i++) sumx2 += x[i] * x[i];
    const float sigma2 = 2 * sumx2 / 256;
    for (int g = 0; g < 16; g++) {
        const float *im = imatrix + 16 * g;
        for (int i = 0; i < 16; i++) weights[i] = im[i] * sqrtf(sigma2 + x[16 * g + i] * x[16 * g + i]);
        float sw = 0.0f;
        for (int i = 0; i < 16; i++) sw += weights[i];
        group_w[g] = sw;
        scales[g] = kq_fit_symmetric(16, 4, x + 16 * g, weights, levels + 16 * g);
    }
    kq_q3k_finish_weighted(x, blk, scales, group_w, levels);
}

void kq_q3k_finish_weighted(const float *x, uint8_t *blk, const float *scales, const float *group_w,
                            int8_t *levels) {
    int8_t ls[16];
    float d = kq_fit_symmetric(16, 32, scales, group_w, ls);
    uint8_t s6[16];
    for (int g = 0; g < 16; g++) s6[g] = (uint8_t)ls[g];
    kq_q3k_write_header(blk, s6, d);
    if (x) kq_q3k_requantize_pack(x, blk, levels);
}

void kq_q3k_write_header(uint8_t *blk, const uint8_t *s6, float d) {
    kq_pack_scale6_q3(s6, blk + Q3K_SCALES);
    store_fp16(blk + Q3K_D, d);
}

void kq_quantize_row_q3_k(const float *x, void *vy, int64_t n, const float *imatrix) {
    uint8_t *y = (uint8_t *)vy;
    for (int64_t b = 0; b < n / 256; b++) {
        if (imatrix)
            q3k_block_weighted(x + 256 * b, imatrix + 256 * b, y + 110 * b);
        else
            q3k_block_plain(x + 256 * b, y + 110 * b);
    }
}

static void dequantize_row_q3_k(const void *vy, float *x, int64_t n) {
    const uint8_t *y = (const uint8_t *)vy;
    for (int64_t b = 0; b < n / 256; b++, y += 110, x += 256) {
        const float d = load_fp16(y + Q3K_D);
        for (int g = 0; g < 16; g++) {
            const float dg = d * (float)unpack_scale6_q3(y + Q3K_SCALES, g);
            for (int i = 0; i < 16; i++) {
                int e = 16 * g + i;
                int low = (y[Q3K_QS + 32 * (e / 128) + e % 32] >> (2 * ((e % 128) / 32))) & 3;
                int high = (y[Q3K_HMASK + e % 32] >> (e / 32)) & 1;
                x[e] = dg * (float)(low - (high ? 0 : 4));
            }
        }
    }
}

// ---- Q4_K and Q5_K
// Q4_K block (144 bytes): | d: fp16 | dmin: fp16 | scales: 12 (6-bit scale + 6-bit min per group) | qs: 128 |
// Q5_K block (176 bytes): | d: fp16 | dmin: fp16 | scales: 12 | qh: 32 (bit 4 of each level) | qs: 128 |
// x = d * sc * q - dmin * m, eight groups of 32. qs byte 32c + l holds level 64c + l (low nibble) and
// 64c + 32 + l (high nibble); Q5_K's bit 4 of those two levels is qh[l] bit 2c and 2c + 1.

enum { Q45K_D = 0, Q45K_DMIN = 2, Q45K_SCALES = 4, Q4K_QS = 16, Q5K_QH = 16, Q5K_QS = 48 };

void kq_q45k_group_factors(const uint8_t *blk, float *dg, float *mg) {
    const float d = load_fp16(blk + Q45K_D), dmin = load_fp16(blk + Q45K_DMIN);
    for (int g = 0; g < 8; g++) {
        uint8_t s, m;
        unpack_scale_min6(blk + Q45K_SCALES, g, &s, &m);
        dg[g] = d * s;
        mg[g] = dmin * m;
    }
}

// Final levels in [0, nmax] from the stored scales (zero-scale groups keep the fitted levels; x == NULL: levels
// are final), then packing.
void kq_q45k_requantize_pack(const float *x, uint8_t *blk, uint8_t *levels, int nmax) {
    float dg[8], mg[8];
    kq_q45k_group_factors(blk, dg, mg);
    for (int g = 0; x != NULL && g < 8; g++) {
        if (dg[g] == 0.0f) continue;
        for (int i = 0; i < 32; i++)
            levels[32 * g + i] = (uint8_t)clamp_int(kq_round_magic((x[32 * g + i] + mg[g]) / dg[g]), 0, nmax);
    }
    if (nmax == 15) {
        for (int c = 0; c < 4; c++)
            for (int l = 0; l < 32; l++)
                blk[Q4K_QS + 32 * c + l] = (uint8_t)(levels[64 * c + l] | (levels[64 * c + 32 + l] << 4));
    } else {
        memset(blk + Q5K_QH, 0, 32);
        for (int c = 0; c < 4; c++)
            for (int l = 0; l < 32; l++) {
                int lo = levels[64 * c + l], hi = levels[64 * c + 32 + l];
                blk[Q5K_QH + l] |= (uint8_t)(((lo >> 4) << (2 * c)) | ((hi >> 4) << (2 * c + 1)));
                blk[Q5K_QS + 32 * c + l] = (uint8_t)((lo & 0xF) | ((hi & 0xF) << 4));
            }
    }
}

// Without importance: per-group weights av + |x| (av = rms of the group), range-stretch search, then the eight
// scales and mins are mapped to 6 bits against their maxima.
static void q45k_block_plain(const float *x, uint8_t *blk, int nmax) {
    uint8_t levels[256];
    float weights[32], scales[8], mins[8];
    for (int g = 0; g < 8; g++) {
        const float *xg = x + 32 * g;
        float sumx2 = 0.0f;
        for (int i = 0; i < 32; i++) sumx2 += xg[i] * xg[i];
        const float av = sqrtf(sumx2 / 32);
        for (int i = 0; i < 32; i++) weights[i] = av + fabsf(xg[i]);
        scales[g] = kq_fit_affine(32, nmax, xg, weights, levels + 32 * g, &mins[g], KQ_Q45K_RMIN(nmax), 0.1f,
                                  KQ_Q45K_NSTEP(nmax), 0);
    }
    kq_q45k_finish_plain(x, blk, scales, mins, levels, nmax);
}

void kq_q45k_finish_plain(const float *x, uint8_t *blk, const float *scales, const float *mins, uint8_t *levels,
                          int nmax) {
    uint8_t s6[8], m6[8];
    float max_scale = 0.0f, max_min = 0.0f;
    for (int g = 0; g < 8; g++) {
        if (scales[g] > max_scale) max_scale = scales[g];
        if (mins[g] > max_min) max_min = mins[g];
    }
    const float inv_scale = max_scale > 0.0f ? 63.0f / max_scale : 0.0f;
    const float inv_min = max_min > 0.0f ? 63.0f / max_min : 0.0f;
    for (int g = 0; g < 8; g++) {
        uint8_t s = (uint8_t)kq_round_magic(inv_scale * scales[g]);
        uint8_t m = (uint8_t)kq_round_magic(inv_min * mins[g]);
        s6[g] = s < 63 ? s : 63;
        m6[g] = m < 63 ? m : 63;
    }
    kq_pack_scale_min6(s6, m6, blk + Q45K_SCALES);
    store_fp16(blk + Q45K_D, max_scale / 63.0f);
    store_fp16(blk + Q45K_DMIN, max_min / 63.0f);
    if (x) kq_q45k_requantize_pack(x, blk, levels, nmax);
}

static void q45k_block_weighted(const float *x, const float *imatrix, uint8_t *blk, int nmax) {
    uint8_t levels[256];
    float weights[32], scales[8], mins[8], group_w[8];
    float sumx2 = 0.0f;
    for (int i = 0; i < 256; i++) sumx2 += x[i] * x[i];
    const float sigma2 = 2 * sumx2 / 256;
    for (int g = 0; g < 8; g++) {
        const float *xg = x + 32 * g, *im = imatrix + 32 * g;
        for (int i = 0; i < 32; i++) weights[i] = im[i] * sqrtf(sigma2 + xg[i] * xg[i]);
        float sw = 0.0f;
        for (int i = 0; i < 32; i++) sw += weights[i];
        group_w[g] = sw;
        scales[g] = kq_fit_affine(32, nmax, xg, weights, levels + 32 * g, &mins[g], -0.9f, 0.05f, 36, 0);
    }
    kq_q45k_finish_weighted(x, blk, scales, mins, group_w, levels, nmax);
}

void kq_q45k_finish_weighted(const float *x, uint8_t *blk, const float *scales, const float *mins,
                             const float *group_w, uint8_t *levels, int nmax) {
    uint8_t s6[8], m6[8];
    float d = kq_fit_positive(8, 63, scales, group_w, s6);
    float dmin = kq_fit_positive(8, 63, mins, group_w, m6);
    kq_q45k_write_header(blk, s6, m6, d, dmin, nmax);
    if (x) kq_q45k_requantize_pack(x, blk, levels, nmax);
}

void kq_q45k_write_header(uint8_t *blk, uint8_t *s6, uint8_t *m6, float d, float dmin, int nmax) {
    // A negative fitted scale can wrap to a byte above 63; llama.cpp caps that for Q5_K only.
    for (int g = 0; nmax == 31 && g < 8; g++) {
        if (s6[g] > 63) s6[g] = 63;
        if (m6[g] > 63) m6[g] = 63;
    }
    kq_pack_scale_min6(s6, m6, blk + Q45K_SCALES);
    store_fp16(blk + Q45K_D, d);
    store_fp16(blk + Q45K_DMIN, dmin);
}

void kq_quantize_row_q4_k(const float *x, void *vy, int64_t n, const float *imatrix) {
    uint8_t *y = (uint8_t *)vy;
    for (int64_t b = 0; b < n / 256; b++) {
        if (imatrix)
            q45k_block_weighted(x + 256 * b, imatrix + 256 * b, y + 144 * b, 15);
        else
            q45k_block_plain(x + 256 * b, y + 144 * b, 15);
    }
}

void kq_quantize_row_q5_k(const float *x, void *vy, int64_t n, const float *imatrix) {
    uint8_t *y = (uint8_t *)vy;
    for (int64_t b = 0; b < n / 256; b++) {
        if (imatrix)
            q45k_block_weighted(x + 256 * b, imatrix + 256 * b, y + 176 * b, 31);
        else
            q45k_block_plain(x + 256 * b, y + 176 * b, 31);
    }
}

static void dequantize_q45k_block(const uint8_t *y, float *x, int five_bit) {
    const float d = load_fp16(y + Q45K_D), dmin = load_fp16(y + Q45K_DMIN);
    const uint8_t *qs = y + (five_bit ? Q5K_QS : Q4K_QS);
    for (int g = 0; g < 8; g++) {
        uint8_t s, m;
        unpack_scale_min6(y + Q45K_SCALES, g, &s, &m);
        const float dg = d * (float)s, mg = dmin * (float)m;
        const int c = g / 2, upper = g % 2;
        for (int l = 0; l < 32; l++) {
            int q = upper ? (qs[32 * c + l] >> 4) : (qs[32 * c + l] & 0xF);
            if (five_bit) q |= ((y[Q5K_QH + l] >> g) & 1) << 4;
            x[32 * g + l] = dg * (float)q - mg;
        }
    }
}

static void dequantize_row_q4_k(const void *vy, float *x, int64_t n) {
    for (int64_t b = 0; b < n / 256; b++) dequantize_q45k_block((const uint8_t *)vy + 144 * b, x + 256 * b, 0);
}

static void dequantize_row_q5_k(const void *vy, float *x, int64_t n) {
    for (int64_t b = 0; b < n / 256; b++) dequantize_q45k_block((const uint8_t *)vy + 176 * b, x + 256 * b, 1);
}

// ---- Q6_K
// block (210 bytes): | ql: 128 (low 4 bits) | qh: 64 (high 2 bits) | scales: 16 x int8 | d: fp16 |
// x = d * sc * (q - 32), sixteen groups of 16. In half h (128 levels, e = 128h + 32k + l, k = 0..3, l = 0..31):
// ql[64h + 32(k&1) + l] nibble k>>1 holds the low 4 bits, qh[32h + l] bits 2k..2k+1 the high 2.

enum { Q6K_QL = 0, Q6K_QH = 128, Q6K_SCALES = 192, Q6K_D = 208 };

// Writes d and the int8 scales; returns 1 when the block is all zero (then it is complete: nothing to pack).
int kq_q6k_header(uint8_t *blk, const float *scales) {
    float max_scale = 0.0f, max_abs_scale = 0.0f;
    for (int g = 0; g < 16; g++) {
        float a = fabsf(scales[g]);
        if (a > max_abs_scale) { max_abs_scale = a; max_scale = scales[g]; }
    }
    if (max_abs_scale < KQ_ZERO_GROUP) {
        memset(blk, 0, 210);
        return 1;
    }
    const float inv = -128.0f / max_scale;
    store_fp16(blk + Q6K_D, 1.0f / inv);
    for (int g = 0; g < 16; g++) {
        int s = kq_round_magic(inv * scales[g]);
        blk[Q6K_SCALES + g] = (uint8_t)(int8_t)(s < 127 ? s : 127);
    }
    return 0;
}

void kq_q6k_write_header(uint8_t *blk, const uint8_t *scales8, float d) {
    store_fp16(blk + Q6K_D, d);
    memcpy(blk + Q6K_SCALES, scales8, 16);
}

void kq_q6k_group_factors(const uint8_t *blk, float *dg) {
    const float d = load_fp16(blk + Q6K_D);
    for (int g = 0; g < 16; g++) dg[g] = d * (int8_t)blk[Q6K_SCALES + g];
}

// Final levels from the stored scales (zero-scale groups keep the fitted levels; x == NULL: levels are final),
// then packing.
void kq_q6k_requantize_pack(const float *x, uint8_t *blk, int8_t *levels) {
    float dg[16];
    kq_q6k_group_factors(blk, dg);
    for (int g = 0; x != NULL && g < 16; g++) {
        if (dg[g] == 0.0f) continue;
        for (int i = 0; i < 16; i++)
            levels[16 * g + i] = (int8_t)(clamp_int(kq_round_magic(x[16 * g + i] / dg[g]), -32, 31) + 32);
    }
    for (int h = 0; h < 2; h++) {
        const int8_t *lv = levels + 128 * h;
        for (int l = 0; l < 32; l++) {
            blk[Q6K_QL + 64 * h + l] = (uint8_t)((lv[l] & 0xF) | ((lv[l + 64] & 0xF) << 4));
            blk[Q6K_QL + 64 * h + 32 + l] = (uint8_t)((lv[l + 32] & 0xF) | ((lv[l + 96] & 0xF) << 4));
            blk[Q6K_QH + 32 * h + l] = (uint8_t)((lv[l] >> 4) | ((lv[l + 32] >> 4) << 2) |
                                                 ((lv[l + 64] >> 4) << 4) | ((lv[l + 96] >> 4) << 6));
        }
    }
}

// With an importance matrix Q6_K uses it directly as the weights (no sigma term); without, w = x^2.
static void q6k_block(const float *x, const float *imatrix, uint8_t *blk) {
    int8_t levels[256];
    float scales[16];
    for (int g = 0; g < 16; g++)
        scales[g] = kq_fit_symmetric(16, 32, x + 16 * g, imatrix ? imatrix + 16 * g : NULL, levels + 16 * g);
    if (!kq_q6k_header(blk, scales)) kq_q6k_requantize_pack(x, blk, levels);
}

void kq_quantize_row_q6_k(const float *x, void *vy, int64_t n, const float *imatrix) {
    uint8_t *y = (uint8_t *)vy;
    for (int64_t b = 0; b < n / 256; b++) q6k_block(x + 256 * b, imatrix ? imatrix + 256 * b : NULL, y + 210 * b);
}

static void dequantize_row_q6_k(const void *vy, float *x, int64_t n) {
    const uint8_t *y = (const uint8_t *)vy;
    for (int64_t b = 0; b < n / 256; b++, y += 210, x += 256) {
        const float d = load_fp16(y + Q6K_D);
        for (int e = 0; e < 256; e++) {
            const int h = e / 128, k = (e % 128) / 32, l = e % 32;
            const int low = (y[Q6K_QL + 64 * h + 32 * (k & 1) + l] >> (4 * (k >> 1))) & 0xF;
            const int high = (y[Q6K_QH + 32 * h + l] >> (2 * k)) & 3;
            const float dg = d * (float)(int8_t)y[Q6K_SCALES + e / 16];
            x[e] = dg * (float)((low | (high << 4)) - 32);
        }
    }
}

// ---- table

#if defined(__x86_64__) || defined(__i386__)
#define KQ_SIMD(t) kq_quantize_row_##t##_avx2, "avx2"
#define KQ_WIDE(t) , kq_quantize_row_##t##_avx512, "avx512"
#elif defined(__aarch64__)
#define KQ_SIMD(t) kq_quantize_row_##t##_neon, "neon"
#define KQ_WIDE(t) , NULL, NULL
#else
#define KQ_SIMD(t) NULL, NULL
#define KQ_WIDE(t) , NULL, NULL
#endif

// Every K-quant block is fitted from its own 256 values and importance weights only (sigma2 is per block): the
// rows of a tensor may be quantized as one long row.
#define KQ_INDEPENDENT , 1

const gk_type_traits gk_kquant_types[] = {
    {10, "Q2_K", 256, 84, kq_quantize_row_q2_k, KQ_SIMD(q2_k), dequantize_row_q2_k KQ_WIDE(q2_k) KQ_INDEPENDENT},
    {11, "Q3_K", 256, 110, kq_quantize_row_q3_k, KQ_SIMD(q3_k), dequantize_row_q3_k KQ_WIDE(q3_k) KQ_INDEPENDENT},
    {12, "Q4_K", 256, 144, kq_quantize_row_q4_k, KQ_SIMD(q4_k), dequantize_row_q4_k KQ_WIDE(q4_k) KQ_INDEPENDENT},
    {13, "Q5_K", 256, 176, kq_quantize_row_q5_k, KQ_SIMD(q5_k), dequantize_row_q5_k KQ_WIDE(q5_k) KQ_INDEPENDENT},
    {14, "Q6_K", 256, 210, kq_quantize_row_q6_k, KQ_SIMD(q6_k), dequantize_row_q6_k KQ_WIDE(q6_k) KQ_INDEPENDENT},
    {0, NULL, 0, 0, NULL, NULL, NULL, NULL},
};
