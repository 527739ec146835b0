// AVX2 helpers shared by the legacy and IQ4 kernels (x86-64 only; the functions carry their own target
// attribute, so the including file stays baseline x86-64).
#ifndef GGUFKIT_SIMD_X86_H
#define GGUFKIT_SIMD_X86_H

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

#define GK_AVX2 __attribute__((target("avx2,f16c")))

// In-place transpose of an 8x8 f32 tile: afterwards r[j] lane k = the old r[k] lane j.
GK_AVX2 static inline void transpose8x8(__m256 r[8]) {
    __m256 t[8], u[8];
    for (int i = 0; i < 4; i++) {
        t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    for (int i = 0; i < 2; i++) {
        u[4 * i + 0] = _mm256_shuffle_ps(t[4 * i + 0], t[4 * i + 2], 0x44);
        u[4 * i + 1] = _mm256_shuffle_ps(t[4 * i + 0], t[4 * i + 2], 0xee);
        u[4 * i + 2] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0x44);
        u[4 * i + 3] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0xee);
    }
    for (int i = 0; i < 4; i++) {
        r[i] = _mm256_permute2f128_ps(u[i], u[i + 4], 0x20);
        r[i + 4] = _mm256_permute2f128_ps(u[i], u[i + 4], 0x31);
    }
}

// Eight blocks of 32 floats (stride 32) -> (32, 8): t[j] lane k = src[k * 32 + j].
GK_AVX2 static inline void transpose_blocks32(const float *src, __m256 t[32]) {
    for (int c = 0; c < 32; c += 8) {
        for (int k = 0; k < 8; k++) t[c + k] = _mm256_loadu_ps(src + k * 32 + c);
        transpose8x8(t + c);
    }
}

#endif
#endif
