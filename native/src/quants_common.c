// Helpers shared by every quantization family: half-precision conversion and rounding.
#include <math.h>
#include <string.h>

#include "ggufkit_quants.h"

// ---- binary16 <-> binary32

static inline uint32_t bits_of(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static inline float float_of(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

// Round-to-nearest-even conversion by integer arithmetic on the bit pattern.
uint16_t gk_fp32_to_fp16(float f) {
    uint32_t x = bits_of(f);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
    uint32_t mag = x & 0x7fffffffu;
    if (mag >= 0x7f800000u) {                        // Inf or NaN: keep NaN quiet and non-zero
        return sign | 0x7c00u | (mag > 0x7f800000u ? 0x0200u : 0);
    }
    if (mag >= 0x477ff000u) return sign | 0x7c00u;  // rounds to a magnitude >= 65520: overflow to Inf
    if (mag < 0x38800000u) {                          // below the smallest normal half (2^-14): subnormal
        if (mag < 0x33000000u) return sign;           // below half of the smallest subnormal (2^-25)
        uint32_t exp = mag >> 23;
        uint32_t mant = (mag & 0x7fffffu) | 0x800000u;
        uint32_t shift = 126u - exp;                  // 14 + (127 - 1 - exp) - 10 ... bits dropped below 2^-24
        uint32_t half = mant >> shift;
        uint32_t rem = mant & ((1u << shift) - 1u);
        uint32_t mid = 1u << (shift - 1u);
        if (rem > mid || (rem == mid && (half & 1u))) half++;
        return sign | (uint16_t)half;
    }
    uint32_t h = ((mag >> 13) - ((127u - 15u) << 10));  // rebias exponent, drop 13 mantissa bits
    uint32_t rem = mag & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) h++;  // carry may roll into the exponent: correct
    return sign | (uint16_t)h;
}

float gk_fp16_to_fp32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t mant = h & 0x3ffu;
    if (exp == 0x1fu) return float_of(sign | 0x7f800000u | (mant << 13));
    if (exp == 0) {
        if (mant == 0) return float_of(sign);
        float v = (float)mant * 5.9604644775390625e-08f;  // mant * 2^-24, exact
        return sign ? -v : v;
    }
    return float_of(sign | ((exp + 112u) << 23) | (mant << 13));
}

// ---- rounding

// Round half to even under the default rounding mode (K-quants use this; roundf, half away from zero, is a
// different rule that some legacy types use: each kernel says which it needs).
int gk_nearest_int(float f) { return (int)rintf(f); }
