/*
 * ggufkit_quants.h — the C API of ggufkit's block-quantization core.
 *
 * A GGML block type turns `block_size` consecutive floats of one row into `type_size` bytes. A row of n floats
 * (n a multiple of block_size) becomes n / block_size blocks laid end to end. Every type registers one
 * gk_type_traits entry in the table of its family file (quants_legacy.c, quants_k.c, quants_iq4.c, ...):
 *
 *   quantize_row(x, y, n, imatrix)   x: n f32, y: (n / block_size) * type_size bytes, imatrix: n f32 importance
 *                                    weights for the row's columns, or NULL. Must reproduce llama.cpp's
 *                                    ggml_quantize_chunk bytes exactly for the same inputs (the plain path is
 *                                    the reference; see DESIGN.md).
 *   quantize_row_simd(...)           optional, same contract, vectorised; NULL if the type has none. Chosen at run
 *                                    time when the CPU has the feature and GGUFKIT_FORCE_SCALAR is unset.
 *   dequantize_row(y, x, n)          the inverse, bit for bit equal to gguf-py's dequantization.
 *   quantize_row_wide(...)           optional (trailing field: tables may leave it out), same contract, a wider
 *                                    SIMD path ("avx512": AVX-512 F/BW/DQ/VL). Preferred over quantize_row_simd
 *                                    when the CPU has it, unless GGUFKIT_FORCE_AVX2 or GGUFKIT_FORCE_SCALAR is set.
 *
 * Threading and the GIL are handled by module.c; the kernels are pure functions of their inputs.
 */
#ifndef GGUFKIT_QUANTS_H
#define GGUFKIT_QUANTS_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

typedef void (*gk_quantize_row_fn)(const float *x, void *y, int64_t n, const float *imatrix);
typedef void (*gk_dequantize_row_fn)(const void *y, float *x, int64_t n);

typedef struct {
    int ggml_type;               /* the GGML type id (enum ggml_type) */
    const char *name;            /* "Q4_0", "Q4_K", ... as in gguf-py's GGMLQuantizationType */
    int block_size;              /* floats per block */
    int type_size;               /* bytes per block */
    gk_quantize_row_fn quantize_row;
    gk_quantize_row_fn quantize_row_simd;    /* NULL: none */
    const char *simd_feature;                /* "avx2", "neon", or NULL */
    gk_dequantize_row_fn dequantize_row;
    gk_quantize_row_fn quantize_row_wide;    /* NULL: none (a trailing field: omitted initialisers are NULL) */
    const char *wide_feature;                /* "avx512" or NULL */
    int blocks_independent;                  /* 1: each block's bytes depend only on its own values and imatrix
                                                entries (no per-row statistics), so module.c may hand a SIMD
                                                quantizer several short rows as one long row to fill its lanes */
} gk_type_traits;

/* Family tables, each ended by an entry with name == NULL. */
extern const gk_type_traits gk_legacy_types[];
extern const gk_type_traits gk_kquant_types[];
extern const gk_type_traits gk_iq4_types[];
extern const gk_type_traits gk_ternary_types[];   /* TQ1_0, TQ2_0, Q1_0, Q2_0 (quants_ternary.c) */
extern const gk_type_traits gk_fp4_types[];       /* MXFP4, NVFP4 (quants_fp4.c) */
extern const gk_type_traits gk_iq3_types[];       /* IQ3_XXS, IQ3_S (quants_iq3.c) */
extern const gk_type_traits gk_iq2_types[];       /* IQ2_XXS, IQ2_XS: imatrix required (quants_iq2.c) */

/* ---- helpers shared by the families (quants_common.c) */

/* IEEE binary16 <-> binary32, round to nearest even (what GGML's converters do). */
uint16_t gk_fp32_to_fp16(float f);
float gk_fp16_to_fp32(uint16_t h);

/* A block's fp16 field: stored / read little-endian at any alignment. */
static inline void store_half(uint8_t *dst, float f) {
    uint16_t h = gk_fp32_to_fp16(f);
    memcpy(dst, &h, 2);
}

static inline float load_half(const uint8_t *src) {
    uint16_t h;
    memcpy(&h, src, 2);
    return gk_fp16_to_fp32(h);
}

/* Round half to even (rintf in the default rounding mode); |f| < 2^22. Not roundf (half away from zero). */
int gk_nearest_int(float f);

/* ---- the K-quant scale search (search_k.c): ggufkit.quant.rounding's algorithm, bytes equal to its numpy code
 *
 *   gk_search_k(type, x, w, w_blocks, in, out, begin, end)
 *     x: (nb, 256) f32 super-blocks, w: (w_blocks, 256) f32 importance (block b uses row b % w_blocks),
 *     in: (nb, block bytes) a valid encoding of x (llama.cpp's), out: the same shape; blocks [begin, end) are
 *     searched, each written as its re-encoding when that lowers sum w (x - x̂)^2, else copied from in.
 *     Returns -1 for a type other than Q2_K..Q6_K. */
int gk_search_k_supported(int ggml_type);
int gk_search_k_block_bytes(int ggml_type);
int gk_search_k(int ggml_type, const float *x, const float *w, int64_t w_blocks, const uint8_t *in, uint8_t *out,
                int64_t begin, int64_t end);

/* ---- the GPTQ column loop of one block-wide group (gptq.c): ggufkit.quant.gptq's numpy loop, bytes equal
 *
 *   gk_gptq_group(w, s, o, table, lo, hi, u, ld, g, rows, levels, err, begin, end)
 *     w, s, o: (g, rows) f32 column-major weights (updated), scales, offsets; table: 16 f32 levels (IQ4) or NULL
 *     for the uniform levels lo..hi; u: (g, ld) f32 rows of the inverse-Hessian factor at the group's diagonal;
 *     levels: (g, rows) i32 out, err: (g, rows) f32 out (the scaled errors); rows [begin, end). */
void gk_gptq_group(float *w, const float *s, const float *o, const float *table, int lo, int hi, const float *u,
                   int64_t ld, int g, int64_t rows, int32_t *levels, float *err, int64_t row_begin, int64_t row_end);

#endif
