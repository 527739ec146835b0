// The K-quant scale search (ggufkit.quant.rounding's algorithm) in C: for each 256-value super-block, starting from
// a given encoding (llama.cpp's), search the integer sub-block scales (and mins) and refit the f16 super-block
// factors against the importance-weighted error, and keep the result only when that error went down.
//
// This is not a llama.cpp algorithm: its reference is the numpy code in ggufkit/quant/rounding.py, and the bytes
// must equal it exactly (tests/test_search_k.py). That fixes the float operations and their order:
//   - f32 where numpy computes in f32 (scales d * sc, levels rint((x + mn) / s), the candidates' errors), f64
//     where it does (least squares, the accept/reject errors);
//   - every sum in numpy's own order: pairwise summation with 8 accumulators (numpy's reduction of a contiguous
//     axis: r[j] = a[j] + a[j + 8] + ..., then ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7)); halves of
//     more than 128 values summed recursively), see pairwise_*;
//   - argmin = the first minimum (a NaN counts as the minimum, as in numpy);
//   - f64 -> f16 rounded once (round to nearest even, as numpy's astype), f16 neighbours as np.nextafter.
// Built with -ffp-contract=off (no fused multiply-add). The inner loops are plain C that GCC vectorises within
// each value loop (lane i = value i: no reordering). An AVX2 clone (target_clones) measured 4x slower: GCC then
// stopped inlining the helpers into it; the baseline build is ~15 us per super-block.
//
// Block layouts: see rounding.py's docstring (llama.cpp's block_q2_K .. block_q6_K).
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "ggufkit_quants.h"

#define QK 256

// ---- the forms: one decoder shape per type

typedef struct {
    int ggml_type, n_sub, block_bytes, asym;
    int sc_lo, sc_hi, q_lo, q_hi, reach;
} search_form;

static const search_form FORMS[] = {
    {10, 16, 84, 1, 0, 15, 0, 3, 2},        // Q2_K
    {11, 16, 110, 0, -32, 31, -4, 3, 4},    // Q3_K
    {12, 8, 144, 1, 0, 63, 0, 15, 2},       // Q4_K
    {13, 8, 176, 1, 0, 63, 0, 31, 2},       // Q5_K
    {14, 16, 210, 0, -128, 127, -32, 31, 4},  // Q6_K
};

static const search_form *form_of(int ggml_type) {
    for (size_t i = 0; i < sizeof FORMS / sizeof FORMS[0]; i++)
        if (FORMS[i].ggml_type == ggml_type) return &FORMS[i];
    return NULL;
}

int gk_search_k_supported(int ggml_type) { return form_of(ggml_type) != NULL; }

int gk_search_k_block_bytes(int ggml_type) {
    const search_form *f = form_of(ggml_type);
    return f ? f->block_bytes : 0;
}

// ---- f16 as numpy converts it

static float half_to_float(uint16_t h) { return gk_fp16_to_fp32(h); }

// f64 -> f16, rounded once to nearest even (numpy's float64.astype(float16); no detour through f32).
static uint16_t double_to_half(double v) {
    const uint16_t sign = signbit(v) ? 0x8000u : 0;
    const double a = fabs(v);
    if (isnan(v)) return sign | 0x7e00u;
    if (a >= 65520.0) return sign | 0x7c00u;          // half-way to 2^16 and above: inf
    if (a < 0x1p-14) {                                  // subnormal (or zero): multiples of 2^-24
        const double r = nearbyint(ldexp(a, 24));      // exact scaling, ties to even; 1024 = the smallest normal
        return sign | (uint16_t)r;
    }
    int e;
    frexp(a, &e);                                       // a = m 2^e, m in [0.5, 1): a in [2^(e-1), 2^e)
    const int E = e - 1;
    double r = nearbyint(ldexp(a, 10 - E));             // in [1024, 2048]
    int E2 = E;
    if (r >= 2048.0) { r = 1024.0; E2 = E + 1; }
    return sign | (uint16_t)(((E2 + 15) << 10) | ((int)r - 1024));
}

// np.nextafter(h, -inf) / (h, +inf) on float16 bits (h finite or inf, not NaN).
static uint16_t half_next(uint16_t x, int up) {
    const uint16_t y = up ? 0x7c00u : 0xfc00u;
    if (x == y) return x;
    if ((x & 0x7fffu) == 0) return (uint16_t)((y & 0x8000u) | 1u);
    if (!(x & 0x8000u)) return up ? (uint16_t)(x + 1) : (uint16_t)(x - 1);   // x > 0
    return up ? (uint16_t)(x - 1) : (uint16_t)(x + 1);                      // x < 0
}

// ---- sums in numpy's order

// numpy's pairwise sum of n values, n a multiple of 8 (16, 32, 128, 256 here)
static float pairwise_f32(const float *a, int n) {
    float r[8];
    for (int j = 0; j < 8; j++) r[j] = a[j];
    for (int i = 8; i < n; i += 8)
        for (int j = 0; j < 8; j++) r[j] = r[j] + a[i + j];
    return ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
}

static double pairwise_f64(const double *a, int n) {
    if (n > 128) {
        int n2 = n / 2;
        n2 -= n2 % 8;
        return pairwise_f64(a, n2) + pairwise_f64(a + n2, n - n2);
    }
    double r[8];
    for (int j = 0; j < 8; j++) r[j] = a[j];
    for (int i = 8; i < n; i += 8)
        for (int j = 0; j < 8; j++) r[j] = r[j] + a[i + j];
    return ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
}

// ---- layouts: bytes <-> (d, dmin, sc, m, q)

typedef struct {
    float d, dmin;          // super-block factors (dmin 0 for symmetric types)
    int32_t sc[16], m[16];  // sub-block integer scales and mins (m 0 for symmetric types)
    int32_t q[QK];          // levels (signed for symmetric types)
} kblock;

static void unpack_k4_scales(const uint8_t *s, int32_t *sc, int32_t *m) {
    for (int j = 0; j < 4; j++) {
        sc[j] = s[j] & 63;
        m[j] = s[4 + j] & 63;
        sc[4 + j] = (s[8 + j] & 15) | ((s[j] >> 6) << 4);
        m[4 + j] = (s[8 + j] >> 4) | ((s[4 + j] >> 6) << 4);
    }
}

static void pack_k4_scales(const int32_t *sc, const int32_t *m, uint8_t *s) {
    for (int j = 0; j < 4; j++) {
        s[j] = (uint8_t)(sc[j] | ((sc[4 + j] >> 4) << 6));
        s[4 + j] = (uint8_t)(m[j] | ((m[4 + j] >> 4) << 6));
        s[8 + j] = (uint8_t)((sc[4 + j] & 15) | ((m[4 + j] & 15) << 4));
    }
}

static float read_half(const uint8_t *p) {
    uint16_t h;
    memcpy(&h, p, 2);
    return half_to_float(h);
}

static void write_half(uint8_t *p, float v) {
    const uint16_t h = double_to_half((double)v);
    memcpy(p, &h, 2);
}

// value 128c + 32k + l of a 2-bit plane qs[64]: bits 2k of qs[32c + l]
static int get2(const uint8_t *qs, int i) { return (qs[32 * (i >> 7) + (i & 31)] >> (2 * ((i >> 5) & 3))) & 3; }

static void unpack_block(const search_form *f, const uint8_t *b, kblock *k) {
    memset(k->m, 0, sizeof k->m);
    k->dmin = 0.0f;
    switch (f->ggml_type) {
    case 10:  // Q2_K: scales[16] | qs[64] | d | dmin
        for (int j = 0; j < 16; j++) { k->sc[j] = b[j] & 15; k->m[j] = b[j] >> 4; }
        for (int i = 0; i < QK; i++) k->q[i] = get2(b + 16, i);
        k->d = read_half(b + 80);
        k->dmin = read_half(b + 82);
        break;
    case 11: {  // Q3_K: hmask[32] | qs[64] | scales[12] | d
        const uint8_t *B = b + 96;
        for (int j = 0; j < 4; j++) {
            k->sc[j] = ((B[j] & 15) | ((B[8 + j] & 3) << 4)) - 32;
            k->sc[4 + j] = ((B[4 + j] & 15) | (((B[8 + j] >> 2) & 3) << 4)) - 32;
            k->sc[8 + j] = ((B[j] >> 4) | (((B[8 + j] >> 4) & 3) << 4)) - 32;
            k->sc[12 + j] = ((B[4 + j] >> 4) | (((B[8 + j] >> 6) & 3) << 4)) - 32;
        }
        for (int i = 0; i < QK; i++) {
            const int hbit = (b[i & 31] >> (i >> 5)) & 1;    // bit 4c + k of hmask[l]
            k->q[i] = get2(b + 32, i) - 4 * (1 - hbit);
        }
        k->d = read_half(b + 108);
        break;
    }
    case 12:
    case 13:  // Q4_K / Q5_K: d | dmin | scales[12] | (qh[32]) | qs[128]
        k->d = read_half(b);
        k->dmin = read_half(b + 2);
        unpack_k4_scales(b + 4, k->sc, k->m);
        for (int h = 0; h < 4; h++)
            for (int l = 0; l < 32; l++) {
                const uint8_t v = b[f->block_bytes - 128 + 32 * h + l];
                k->q[64 * h + l] = v & 15;
                k->q[64 * h + 32 + l] = v >> 4;
            }
        if (f->ggml_type == 13)
            for (int i = 0; i < QK; i++) k->q[i] += 16 * ((b[16 + (i & 31)] >> (i >> 5)) & 1);
        break;
    default:  // Q6_K: ql[128] | qh[64] | scales[16] i8 | d
        for (int i = 0; i < QK; i++) {
            const int c = i >> 7, kk = (i >> 5) & 3, l = i & 31;
            const uint8_t v = b[64 * c + 32 * (kk & 1) + l];
            const int low = kk < 2 ? (v & 15) : (v >> 4);
            const int high = (b[128 + 32 * c + l] >> (2 * kk)) & 3;
            k->q[i] = (low | (high << 4)) - 32;
        }
        for (int j = 0; j < 16; j++) k->sc[j] = (int8_t)b[192 + j];
        k->d = read_half(b + 208);
        break;
    }
}

static void pack_block(const search_form *f, const kblock *k, uint8_t *b) {
    memset(b, 0, (size_t)f->block_bytes);
    switch (f->ggml_type) {
    case 10:
        for (int j = 0; j < 16; j++) b[j] = (uint8_t)(k->sc[j] | (k->m[j] << 4));
        for (int i = 0; i < QK; i++) b[16 + 32 * (i >> 7) + (i & 31)] |= (uint8_t)((k->q[i] & 3) << (2 * ((i >> 5) & 3)));
        write_half(b + 80, k->d);
        write_half(b + 82, k->dmin);
        break;
    case 11: {
        int32_t s[16];
        for (int j = 0; j < 16; j++) s[j] = k->sc[j] + 32;
        uint8_t *B = b + 96;
        for (int j = 0; j < 4; j++) {
            B[j] = (uint8_t)((s[j] & 15) | ((s[8 + j] & 15) << 4));
            B[4 + j] = (uint8_t)((s[4 + j] & 15) | ((s[12 + j] & 15) << 4));
            B[8 + j] = (uint8_t)((s[j] >> 4) | ((s[4 + j] >> 4) << 2) | ((s[8 + j] >> 4) << 4) | ((s[12 + j] >> 4) << 6));
        }
        for (int i = 0; i < QK; i++) {
            const int u = k->q[i] + 4;
            b[32 + 32 * (i >> 7) + (i & 31)] |= (uint8_t)((u & 3) << (2 * ((i >> 5) & 3)));
            b[i & 31] |= (uint8_t)(((u >> 2) & 1) << (i >> 5));
        }
        write_half(b + 108, k->d);
        break;
    }
    case 12:
    case 13:
        write_half(b, k->d);
        write_half(b + 2, k->dmin);
        pack_k4_scales(k->sc, k->m, b + 4);
        for (int h = 0; h < 4; h++)
            for (int l = 0; l < 32; l++)
                b[f->block_bytes - 128 + 32 * h + l] = (uint8_t)((k->q[64 * h + l] & 15) | ((k->q[64 * h + 32 + l] & 15) << 4));
        if (f->ggml_type == 13)
            for (int i = 0; i < QK; i++) b[16 + (i & 31)] |= (uint8_t)(((k->q[i] >> 4) & 1) << (i >> 5));
        break;
    default:
        for (int i = 0; i < QK; i++) {
            const int c = i >> 7, kk = (i >> 5) & 3, l = i & 31;
            const int u = k->q[i] + 32;
            b[64 * c + 32 * (kk & 1) + l] |= (uint8_t)((u & 15) << (kk < 2 ? 0 : 4));
            b[128 + 32 * c + l] |= (uint8_t)((u >> 4) << (2 * kk));
        }
        for (int j = 0; j < 16; j++) b[192 + j] = (uint8_t)(int8_t)k->sc[j];
        write_half(b + 208, k->d);
        break;
    }
}

// ---- decoding and the errors

// sum w (x - x̂)^2 over the super-block in f64, x̂ = (d sc) q - dmin m in f32 (ggml's dequantizers)
static double block_error_f64(const search_form *f, const kblock *k, const float *x, const float *w) {
    const int L = QK / f->n_sub;
    double e[QK];
    for (int j = 0; j < f->n_sub; j++) {
        const float s = k->d * (float)k->sc[j], mn = k->dmin * (float)k->m[j];
        for (int l = 0; l < L; l++) {
            const int i = j * L + l;
            const float y = s * (float)k->q[i] - mn;
            const double diff = (double)x[i] - (double)y;
            e[i] = ((double)w[i] * diff) * diff;
        }
    }
    return pairwise_f64(e, QK);
}

// The best level of v = x for scale s and min mn: rint((x + mn) / s) clamped to [lo, hi], 0 when s == 0.
// Clamping first and rounding with the 1.5 * 2^23 trick is rint-then-clamp for integer bounds (the zero's sign
// may differ, which no error or byte can see).
static inline float level(float xv, float s, float mn, float lo, float hi) {
    float v = (xv + mn) / s;
    v = v < lo ? lo : v;
    v = v > hi ? hi : v;
    v = (v + 12582912.0f) - 12582912.0f;
    return s != 0.0f ? v : 0.0f;
}

// f32 error of one sub-block (L values) at its best levels, in numpy's order.
static inline float sub_error(const float *x, const float *w, int L, float s, float mn, float lo, float hi) {
    float e[32];
    for (int l = 0; l < L; l++) {
        const float q = level(x[l], s, mn, lo, hi);
        const float diff = x[l] - (s * q - mn);
        e[l] = (w[l] * diff) * diff;
    }
    return pairwise_f32(e, L);
}

static float block_error_f32(const search_form *f, const float *x, const float *w, float d, float dmin,
                             const int32_t *sc, const int32_t *m) {
    const int L = QK / f->n_sub;
    float e[16];
    for (int j = 0; j < f->n_sub; j++)
        e[j] = sub_error(x + j * L, w + j * L, L, d * (float)sc[j], dmin * (float)m[j], (float)f->q_lo,
                         (float)f->q_hi);
    return pairwise_f32(e, f->n_sub);
}

static inline int clampi(int v, int lo, int hi) { return v < lo ? lo : (v > hi ? hi : v); }

// ---- the search steps

// Per sub-block, the best integer (sc, m) within reach of the current ones (numpy: _step_scales).
static void step_scales(const search_form *f, const float *x, const float *w, kblock *k) {
    const int L = QK / f->n_sub, r = f->reach;
    const float lo = (float)f->q_lo, hi = (float)f->q_hi;
    for (int j = 0; j < f->n_sub; j++) {
        int best_sc = 0, best_m = 0, have = 0;
        float best = 0.0f;
        for (int a = -r; a <= r; a++) {
            for (int bo = f->asym ? -r : 0; bo <= (f->asym ? r : 0); bo++) {
                const int csc = clampi(k->sc[j] + a, f->sc_lo, f->sc_hi);
                const int cm = f->asym ? clampi(k->m[j] + bo, f->sc_lo, f->sc_hi) : 0;
                const float err = sub_error(x + j * L, w + j * L, L, k->d * (float)csc, k->dmin * (float)cm, lo, hi);
                if (!have || (!isnan(best) && (isnan(err) || err < best))) {
                    best = err, best_sc = csc, best_m = cm, have = 1;
                }
            }
        }
        k->sc[j] = best_sc;
        k->m[j] = best_m;
    }
}

// Weighted least squares for d (and dmin) at the current integer scales, mins and levels, then the best of the f16
// neighbourhood of the solution and the current factors (numpy: _refit_d).
static void refit_d(const search_form *f, const float *x, const float *w, kblock *k) {
    const int L = QK / f->n_sub;
    const float lo = (float)f->q_lo, hi = (float)f->q_hi;
    double taa[QK], txa[QK], tbb[QK], tab[QK], txb[QK];
    for (int j = 0; j < f->n_sub; j++) {
        const float s = k->d * (float)k->sc[j], mn = k->dmin * (float)k->m[j];
        const double bb = (double)k->m[j];
        for (int l = 0; l < L; l++) {
            const int i = j * L + l;
            const double a = (double)k->sc[j] * (double)level(x[i], s, mn, lo, hi);
            const double wx = (double)w[i], xx = (double)x[i];
            taa[i] = (wx * a) * a;
            txa[i] = (wx * xx) * a;
            tbb[i] = (wx * bb) * bb;
            tab[i] = (wx * a) * bb;
            txb[i] = (wx * xx) * bb;
        }
    }
    const double saa = pairwise_f64(taa, QK), sxa = pairwise_f64(txa, QK);
    double d_ls, m_ls;
    if (f->asym) {
        const double sbb = pairwise_f64(tbb, QK), sab = pairwise_f64(tab, QK), sxb = pairwise_f64(txb, QK);
        const double det = saa * sbb - sab * sab;
        const double p = saa * sbb;
        const double mx = isnan(p) ? p : (p > 1e-300 ? p : 1e-300);   // np.maximum keeps a NaN
        const int ok = det > 1e-12 * mx;
        d_ls = ok ? (sxa * sbb - sxb * sab) / det : (double)k->d;
        m_ls = ok ? (sxa * sab - sxb * saa) / det : (double)k->dmin;
    } else {
        d_ls = saa > 0 ? sxa / saa : (double)k->d;
        m_ls = (double)k->dmin;
    }
    const int finite = isfinite(d_ls) && isfinite(m_ls) && fabs(d_ls) < 6e4 && fabs(m_ls) < 6e4;
    if (!finite) { d_ls = (double)k->d; m_ls = (double)k->dmin; }
    float dc[3], mc[3];
    int nm = 1;
    {
        const uint16_t h = double_to_half(d_ls);
        dc[0] = half_to_float(h), dc[1] = half_to_float(half_next(h, 0)), dc[2] = half_to_float(half_next(h, 1));
    }
    if (f->asym) {
        const uint16_t h = double_to_half(m_ls);
        mc[0] = half_to_float(h), mc[1] = half_to_float(half_next(h, 0)), mc[2] = half_to_float(half_next(h, 1));
        nm = 3;
    } else {
        mc[0] = k->dmin;
    }
    float best_d = k->d, best_m = k->dmin;
    float best = block_error_f32(f, x, w, k->d, k->dmin, k->sc, k->m);
    for (int a = 0; a < 3; a++)
        for (int b = 0; b < nm; b++) {
            const float err = block_error_f32(f, x, w, dc[a], mc[b], k->sc, k->m);
            if (err < best) { best = err; best_d = dc[a]; best_m = mc[b]; }
        }
    k->d = best_d;
    k->dmin = best_m;
}

enum { ROUNDS = 2 };  // = rounding.ROUNDS

static void search_block(const search_form *f, const float *x, const float *w, const uint8_t *in, uint8_t *out) {
    kblock k0, k, back;
    unpack_block(f, in, &k0);
    const double start = block_error_f64(f, &k0, x, w);
    k = k0;
    for (int r = 0; r < ROUNDS; r++) {
        step_scales(f, x, w, &k);
        refit_d(f, x, w, &k);
    }
    const int L = QK / f->n_sub;
    for (int j = 0; j < f->n_sub; j++) {
        const float s = k.d * (float)k.sc[j], mn = k.dmin * (float)k.m[j];
        for (int l = 0; l < L; l++)
            k.q[j * L + l] = (int32_t)level(x[j * L + l], s, mn, (float)f->q_lo, (float)f->q_hi);
    }
    uint8_t packed[256];
    pack_block(f, &k, packed);
    unpack_block(f, packed, &back);  // judge the bytes as they will be read
    const double err = block_error_f64(f, &back, x, w);
    memcpy(out, isfinite(err) && err < start ? packed : in, (size_t)f->block_bytes);
}

// ---- the entry point

static void search_blocks(const search_form *f, const float *x, const float *w, int64_t w_blocks,
                          const uint8_t *in, uint8_t *out, int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; b++)
        search_block(f, x + b * QK, w + (b % w_blocks) * QK, in + b * f->block_bytes, out + b * f->block_bytes);
}

int gk_search_k(int ggml_type, const float *x, const float *w, int64_t w_blocks, const uint8_t *in, uint8_t *out,
                int64_t begin, int64_t end) {
    const search_form *f = form_of(ggml_type);
    if (f == NULL || w_blocks < 1) return -1;
    search_blocks(f, x, w, w_blocks, in, out, begin, end);
    return 0;
}
