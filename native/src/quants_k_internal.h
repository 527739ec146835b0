// Shared between quants_k.c (plain C, the reference) and quants_k_avx2.c: the fitting helpers and the block
// finishing/packing steps, so both paths produce their bytes through the same code where it is not vectorised.
#ifndef GGUFKIT_QUANTS_K_INTERNAL_H
#define GGUFKIT_QUANTS_K_INTERNAL_H

#include "ggufkit_quants.h"

int kq_round_magic(float v);

float kq_fit_symmetric(int n, int nmax, const float *x, const float *weights, int8_t *q);
float kq_fit_affine(int n, int nmax, const float *x, const float *weights, uint8_t *q, float *neg_min,
                    float rmin, float rdelta, int nstep, int use_mad);
float kq_fit_positive(int n, int nmax, const float *x, const float *weights, uint8_t *q);

void kq_pack_2bit(const uint8_t *levels, uint8_t *qs);
void kq_pack_scale_min6(const uint8_t *s, const uint8_t *m, uint8_t *out);
void kq_pack_scale6_q3(const uint8_t *s, uint8_t *out);

void kq_q2k_requantize(const float *x, uint8_t *blk, uint8_t *levels);
void kq_q3k_requantize(const float *x, uint8_t *blk, int8_t *levels);
void kq_q45k_requantize(const float *x, uint8_t *blk, uint8_t *levels, int nmax);
void kq_q6k_finish(const float *x, uint8_t *blk, const float *scales, float max_scale, float max_abs_scale,
                   int8_t *levels);

#endif
