// Checks the AVX-512 K-quant division by a shared divisor (v_div_recip in native/src/quants_k_avx512.c: q = x * r
// with r = 1/d, then one FMA correction) against the IEEE division, bit for bit: for each divisor d, every one of
// the 2^23 significands of x in [1, 2), at several binades and both signs. Built and run by
// tests/test_kernels_k.py; prints "checked N wrong W" and exits 0 only when W is 0.
//
//   usage: div_shared_check DIVISORS   (that many divisors: special significands first, then pseudo-random)
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../native/src/quants_k_avx512.c"

static float from_bits(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

// The kernels' divisors are fp16 scales times small integers; besides those, significands next to 1 and 2.
static float divisor(int k, uint64_t *state) {
    static const uint32_t special[] = {0x3f800000u, 0x3f800001u, 0x3fffffffu, 0x3ffffffeu, 0x3fc00000u,
                                       0x3faaaaabu, 0x3f7fffffu, 0x3f555555u};
    if (k < 8) return from_bits(special[k]) * (k & 1 ? -1.0f : 1.0f);
    if (k < 64) {  // an fp16 value (normal or subnormal) times a 6-bit scale, as dg in the kernels
        const float h = gk_fp16_to_fp32((uint16_t)(0x0001u + (uint32_t)k * 977u % 0x7bffu));
        return h * (float)(k % 63 + 1) * (k & 2 ? -1.0f : 1.0f);
    }
    *state ^= *state << 13, *state ^= *state >> 7, *state ^= *state << 17;
    return from_bits(0x30000000u + (uint32_t)(*state % 0x1f000000u)) * (*state >> 40 & 1 ? -1.0f : 1.0f);
}

KQ_TARGET static long check(float d, float x_scale, long *checked) {
    const __m512 vd = _mm512_set1_ps(d), r = _mm512_div_ps(_mm512_set1_ps(1.0f), vd), sc = _mm512_set1_ps(x_scale);
    const __m512i step = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    long wrong = 0;
    for (uint32_t m = 0; m < (1u << 23); m += 16) {
        const __m512 x = _mm512_mul_ps(
            _mm512_castsi512_ps(_mm512_add_epi32(_mm512_set1_epi32((int)(0x3f800000u + m)), step)), sc);
        const __m512 want = _mm512_div_ps(x, vd), got = v_div_recip(x, vd, r);
        wrong += __builtin_popcount(_mm512_cmpneq_epi32_mask(_mm512_castps_si512(want), _mm512_castps_si512(got)));
    }
    *checked += 1 << 23;
    return wrong;
}

int main(int argc, char **argv) {
    if (!__builtin_cpu_supports("avx512f")) {
        puts("no AVX-512F");
        return 2;
    }
    const int divisors = argc > 1 ? atoi(argv[1]) : 64;
    // binades of x: the quotients the requantization sees (levels up to 63, below 1, around 2^20)
    const float x_scales[] = {1.0f, -3.0f, 40.0f, 0.001953125f, 1048576.0f};
    uint64_t state = 0x9e3779b97f4a7c15ull;
    long checked = 0, wrong = 0;
    for (int k = 0; k < divisors; k++) {
        const float d = divisor(k, &state);
        for (int s = 0; s < 5; s++) wrong += check(d, x_scales[s] * (k & 4 ? 1.0f : 1.5f), &checked);
    }
    printf("checked %ld wrong %ld\n", checked, wrong);
    return wrong != 0;
}
