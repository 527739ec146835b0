// Throughput of 256-bit vs 512-bit float multiplies and divisions on this CPU: the ceiling for what 16 AVX-512 lanes
// can gain over 8 AVX2 lanes on arithmetic-bound kernels (issue 17 asked for 1.6x on the K-quants).
//
//   gcc -O2 -o /tmp/simd_width bench/simd_width.c && /tmp/simd_width
//
// Eight independent dependency chains per loop, so latency is hidden; timed by the thread's CPU clock, which other
// jobs on a shared machine disturb little. Prints lanes per nanosecond for each width and their ratio.
#include <immintrin.h>
#include <stdio.h>
#include <time.h>

static double cpu_now(void) {
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

#define CHAINS 8
#define KERNEL(name, isa, vec, set1, op, add, lanes, factor)                                                 \
    __attribute__((target(isa), noinline)) static float name(long n) {                                     \
        vec a[CHAINS];                                                                                         \
        for (int i = 0; i < CHAINS; i++) a[i] = set1(1.0f + (float)i * 1e-7f);                                 \
        const vec m = set1(factor);                                                                            \
        for (long k = 0; k < n; k++)                                                                           \
            for (int i = 0; i < CHAINS; i++) a[i] = op(a[i], m);                                               \
        vec s = a[0];                                                                                          \
        for (int i = 1; i < CHAINS; i++) s = add(s, a[i]);                                                     \
        float out[lanes];                                                                                      \
        __builtin_memcpy(out, &s, sizeof out);                                                                 \
        return out[0];                                                                                         \
    }

KERNEL(mul256, "avx2", __m256, _mm256_set1_ps, _mm256_mul_ps, _mm256_add_ps, 8, 0.9999999f)
KERNEL(mul512, "avx512f", __m512, _mm512_set1_ps, _mm512_mul_ps, _mm512_add_ps, 16, 0.9999999f)
KERNEL(div256, "avx2", __m256, _mm256_set1_ps, _mm256_div_ps, _mm256_add_ps, 8, 1.0000001f)
KERNEL(div512, "avx512f", __m512, _mm512_set1_ps, _mm512_div_ps, _mm512_add_ps, 16, 1.0000001f)

static double lanes_per_ns(float (*fn)(long), long n, int lanes, float *sink) {
    double best = 1e30;
    for (int r = 0; r < 3; r++) {
        const double t0 = cpu_now();
        *sink += fn(n);
        const double t = cpu_now() - t0;
        if (t < best) best = t;
    }
    return (double)n * CHAINS * lanes / (best * 1e9);
}

int main(void) {
    if (!__builtin_cpu_supports("avx512f")) {
        puts("no AVX-512F on this CPU");
        return 0;
    }
    float sink = 0;
    const long n = 20000000;
    const double m8 = lanes_per_ns(mul256, n, 8, &sink), m16 = lanes_per_ns(mul512, n, 16, &sink);
    const double d8 = lanes_per_ns(div256, n / 10, 8, &sink), d16 = lanes_per_ns(div512, n / 10, 16, &sink);
    printf("multiply: 256-bit %.1f lanes/ns, 512-bit %.1f lanes/ns: %.2fx\n", m8, m16, m16 / m8);
    printf("divide:   256-bit %.2f lanes/ns, 512-bit %.2f lanes/ns: %.2fx\n", d8, d16, d16 / d8);
    return sink == 12345.0f;
}
