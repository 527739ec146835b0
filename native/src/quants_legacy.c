// Legacy block types: 32 floats a block, one scale (and for _1 types a minimum) per block.
#include <math.h>
#include <string.h>

#include "ggufkit_quants.h"

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

// ---- table

const gk_type_traits gk_legacy_types[] = {
    {8, "Q8_0", Q8_0_BLOCK, Q8_0_BYTES, quantize_row_q8_0, NULL, NULL, dequantize_row_q8_0},
    {0, NULL, 0, 0, NULL, NULL, NULL, NULL},
};
