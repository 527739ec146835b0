// Shared between quants_k.c (plain C, the reference) and the lane paths (quants_k_lanes.h): the fitting helpers
// and the block finishing/packing steps, so both paths produce their bytes through the same code where it is not
// vectorised.
#ifndef GGUFKIT_QUANTS_K_INTERNAL_H
#define GGUFKIT_QUANTS_K_INTERNAL_H

#include "ggufkit_quants.h"

#include <string.h>

// Round to nearest, ties to even, by adding 1.5 * 2^23 and reading the low mantissa bits: for |v| < 2^22 this is
// rintf(v). For values outside that range (inf, NaN, huge) it returns the same deterministic garbage llama.cpp's
// helper does, which the byte-exact contract needs on degenerate blocks (e.g. denormal ranges giving inf scales).
static inline int kq_round_magic(float v) {
    float shifted = v + 12582912.0f;
    int32_t bits;
    memcpy(&bits, &shifted, 4);
    return (bits & 0x007fffff) - 0x00400000;
}

float kq_fit_symmetric(int n, int nmax, const float *x, const float *weights, int8_t *q);
float kq_fit_affine(int n, int nmax, const float *x, const float *weights, uint8_t *q, float *neg_min,
                    float rmin, float rdelta, int nstep, int use_mad);
float kq_fit_positive(int n, int nmax, const float *x, const float *weights, uint8_t *q);

void kq_pack_2bit(const uint8_t *levels, uint8_t *qs);
void kq_pack_scale_min6(const uint8_t *s, const uint8_t *m, uint8_t *out);
void kq_pack_scale6_q3(const uint8_t *s, uint8_t *out);

float kq_fit_symmetric_descent(int n, int nmax, const float *x, int8_t *q);
// Q3_K's descent: at most KQ_DESCENT_PASSES passes, stopping after one that moves no level.
#define KQ_DESCENT_PASSES 5
int kq_descent_pass(int n, int nmax, const float *x, int8_t *q, float *sumlx, float *suml2);

// Q4_K's and Q5_K's range-stretch search without importance (Q4_K: nmax 15, Q5_K: nmax 31).
#define KQ_Q45K_RMIN(nmax) ((nmax) == 15 ? -1.0f : -0.5f)
#define KQ_Q45K_NSTEP(nmax) ((nmax) == 15 ? 20 : 15)

// Block finishing: from the per-group fits (scales, mins, group weight sums, fitted levels of one 256-block) to
// the block's bytes: super-block scales, packed group scales, requantized and packed levels. levels is scratch.
// With x == NULL only the header (super-block scales, group scales) is written; the caller then requantizes
// (using the *_group_factors) and calls *_requantize_pack(NULL, blk, levels) to pack.
void kq_q2k_finish_plain(const float *x, uint8_t *blk, const float *scales, const float *mins, uint8_t *levels);
void kq_q2k_finish_weighted(const float *x, uint8_t *blk, const float *scales, const float *mins,
                            const float *group_w, uint8_t *levels);
void kq_q3k_finish_plain(const float *x, uint8_t *blk, const float *scales, int8_t *levels);
void kq_q3k_finish_weighted(const float *x, uint8_t *blk, const float *scales, const float *group_w,
                            int8_t *levels);
void kq_q45k_finish_plain(const float *x, uint8_t *blk, const float *scales, const float *mins, uint8_t *levels,
                          int nmax);
void kq_q45k_finish_weighted(const float *x, uint8_t *blk, const float *scales, const float *mins,
                             const float *group_w, uint8_t *levels, int nmax);
int kq_q6k_header(uint8_t *blk, const float *scales);
// Q6_K header from the 8-bit group scales (the bytes of the int8 levels) and the super-block scale d.
void kq_q6k_write_header(uint8_t *blk, const uint8_t *scales8, float d);
// The weighted headers from the fitted (kq_fit_positive) super-block scales and their levels: Q2_K's 4-bit scale
// and min levels, Q4_K's / Q5_K's 6-bit ones (capped at 63 for Q5_K, in place).
void kq_q2k_write_header(uint8_t *blk, const uint8_t *ls, const uint8_t *lm, float d, float dmin);
void kq_q45k_write_header(uint8_t *blk, uint8_t *s6, uint8_t *m6, float d, float dmin, int nmax);
// Q3_K header from the 6-bit scales (stored +32) and the super-block scale d.
void kq_q3k_write_header(uint8_t *blk, const uint8_t *s6, float d);

void kq_q2k_group_factors(const uint8_t *blk, float *dg, float *mg);
void kq_q3k_group_factors(const uint8_t *blk, float *dg);
void kq_q45k_group_factors(const uint8_t *blk, float *dg, float *mg);
void kq_q6k_group_factors(const uint8_t *blk, float *dg);
void kq_q2k_requantize_pack(const float *x, uint8_t *blk, uint8_t *levels);
void kq_q3k_requantize_pack(const float *x, uint8_t *blk, int8_t *levels);
void kq_q45k_requantize_pack(const float *x, uint8_t *blk, uint8_t *levels, int nmax);
void kq_q6k_requantize_pack(const float *x, uint8_t *blk, int8_t *levels);

// The plain-C row quantizers (the reference) and their lane versions (quants_k_lanes.h): AVX2 (quants_k_avx2.c,
// x86 only), AVX-512 (quants_k_avx512.c, x86 only, sixteen lanes) and NEON (quants_k_neon.c, aarch64 only).
void kq_quantize_row_q2_k(const float *x, void *y, int64_t n, const float *imatrix);
void kq_quantize_row_q3_k(const float *x, void *y, int64_t n, const float *imatrix);
void kq_quantize_row_q4_k(const float *x, void *y, int64_t n, const float *imatrix);
void kq_quantize_row_q5_k(const float *x, void *y, int64_t n, const float *imatrix);
void kq_quantize_row_q6_k(const float *x, void *y, int64_t n, const float *imatrix);
void kq_quantize_row_q2_k_avx2(const float *x, void *y, int64_t n, const float *imatrix);
void kq_quantize_row_q3_k_avx2(const float *x, void *y, int64_t n, const float *imatrix);
void kq_quantize_row_q4_k_avx2(const float *x, void *y, int64_t n, const float *imatrix);
void kq_quantize_row_q5_k_avx2(const float *x, void *y, int64_t n, const float *imatrix);
void kq_quantize_row_q6_k_avx2(const float *x, void *y, int64_t n, const float *imatrix);
void kq_quantize_row_q2_k_avx512(const float *x, void *y, int64_t n, const float *imatrix);
void kq_quantize_row_q3_k_avx512(const float *x, void *y, int64_t n, const float *imatrix);
void kq_quantize_row_q4_k_avx512(const float *x, void *y, int64_t n, const float *imatrix);
void kq_quantize_row_q5_k_avx512(const float *x, void *y, int64_t n, const float *imatrix);
void kq_quantize_row_q6_k_avx512(const float *x, void *y, int64_t n, const float *imatrix);
void kq_quantize_row_q2_k_neon(const float *x, void *y, int64_t n, const float *imatrix);
void kq_quantize_row_q3_k_neon(const float *x, void *y, int64_t n, const float *imatrix);
void kq_quantize_row_q4_k_neon(const float *x, void *y, int64_t n, const float *imatrix);
void kq_quantize_row_q5_k_neon(const float *x, void *y, int64_t n, const float *imatrix);
void kq_quantize_row_q6_k_neon(const float *x, void *y, int64_t n, const float *imatrix);

#endif
