// 3-bit lattice types: IQ3_XXS (98 bytes per 256 floats) and IQ3_S (110 bytes per 256 floats).
//
// A super-block of 256 is eight sub-blocks of 32, each eight groups of 4. A group stores its magnitudes as one
// point of a fixed grid (iq_grids.h: 256 points for IQ3_XXS, 512 for IQ3_S, each coordinate one of 8 odd levels
// 2c + 1, c = 0..7) and its signs as bits; a sub-block has a 4-bit scale, the super-block an fp16 one.
//
// The quantizer is llama.cpp's, step for step (same operation order, same rounding helper): per sub-block, weights
// (x^2, or imatrix * sqrt(sigma2 + x^2)), signs split off, then a scan over inverse scales; each group rounds to
// the lattice, and when that point is not in the grid takes the nearest grid point among its precomputed
// neighbours (weighted distance); the scale with the best (sum w q x)^2 / (sum w q^2) wins, groups left off the
// grid are re-fitted at the final scale. Importance weights are optional for both types.
// The scan over inverse scales has a lane version (quants_iq_trials.h: lane t = trial t, AVX2 / AVX-512 / NEON,
// chosen at run time like the K-quants); the plain loop (trials_plain) is the reference.
#include <float.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "ggufkit_quants.h"
#include "iq_grids.h"

enum { QK = 256, SUB = 32, GROUPS = SUB / 4, LATTICE = 4096, MAX_LEVEL = 8 };

// ---- rounding (llama.cpp's nearest_int: through the float adder, defined for any input)

static inline int round_magic(float f) {
    float biased = f + 12582912.0f;
    int32_t bits;
    memcpy(&bits, &biased, 4);
    return (bits & 0x007fffff) - 0x00400000;
}

static inline int clamp_level(int l) { return l < 0 ? 0 : l > MAX_LEVEL - 1 ? MAX_LEVEL - 1 : l; }

// ---- grids and their neighbour lists
// index_of[u] for every lattice point u (4 coordinates, 3 bits each): its grid index, or -(offset + 1) into
// neighbours, where neighbours[offset] = n followed by n grid indices: the grid points at the `rings` smallest
// distinct squared distances (in odd-level units) from u, by distance then index. IQ3_XXS takes 2 rings, IQ3_S 3.

typedef struct {
    const uint16_t *codes;
    int size, rings;
    int8_t point[512][4];          // (size, 4) the levels 2c + 1 of each grid point
    int32_t index_of[LATTICE];
    uint16_t *neighbours;
    pthread_once_t once;
    uint16_t *nb_codes;            // parallel to neighbours: the count, then each neighbour's lattice code
    uint8_t *nb_terms;             // 4 bytes per entry of neighbours: 8 * (4 i + level i) (quants_iq_trials.h)
} lattice;

static lattice IQ3XXS_LATTICE = {IQ3XXS_GRID_CODES, 256, 2, {{0}}, {0}, NULL, PTHREAD_ONCE_INIT};
static lattice IQ3S_LATTICE = {IQ3S_GRID_CODES, 512, 3, {{0}}, {0}, NULL, PTHREAD_ONCE_INIT};

static inline int level_of(int u, int k) { return 2 * ((u >> (3 * k)) & 7) + 1; }

// Writes u's neighbour list at out (NULL: only counts); returns its length including the count slot.
static int neighbour_list(const lattice *g, int u, uint16_t *out) {
    enum { MAX_D2 = 4 * 14 * 14 };
    int d2[512], present[MAX_D2 + 1] = {0};
    for (int j = 0; j < g->size; j++) {
        int d = 0;
        for (int k = 0; k < 4; k++) {
            const int diff = g->point[j][k] - level_of(u, k);
            d += diff * diff;
        }
        d2[j] = d;
        present[d] = 1;
    }
    int limit = -1;
    for (int d = 0, rings = 0; d <= MAX_D2 && rings < g->rings; d++)
        if (present[d]) { limit = d; rings++; }
    int n = 0;
    for (int d = 0; d <= limit; d++) {
        if (!present[d]) continue;
        for (int j = 0; j < g->size; j++)
            if (d2[j] == d) {
                if (out) out[1 + n] = (uint16_t)j;
                n++;
            }
    }
    if (out) out[0] = (uint16_t)n;
    return n + 1;
}

static void build_lattice(lattice *g) {
    for (int u = 0; u < LATTICE; u++) g->index_of[u] = INT32_MIN;
    for (int j = 0; j < g->size; j++) {
        for (int k = 0; k < 4; k++) g->point[j][k] = (int8_t)level_of(g->codes[j], k);
        g->index_of[g->codes[j]] = j;
    }
    size_t total = 0;
    for (int u = 0; u < LATTICE; u++)
        if (g->index_of[u] == INT32_MIN) total += (size_t)neighbour_list(g, u, NULL);
    g->neighbours = malloc(total * sizeof(uint16_t));
    if (g->neighbours == NULL) abort();
    int offset = 0;
    for (int u = 0; u < LATTICE; u++) {
        if (g->index_of[u] != INT32_MIN) continue;
        g->index_of[u] = -(offset + 1);
        offset += neighbour_list(g, u, g->neighbours + offset);
    }
    g->nb_codes = malloc(total * sizeof(uint16_t));
    if (g->nb_codes == NULL) abort();
    for (size_t k = 0; k < total; k += 1u + g->neighbours[k]) {
        g->nb_codes[k] = g->neighbours[k];
        for (size_t m = 1; m <= g->neighbours[k]; m++) g->nb_codes[k + m] = g->codes[g->neighbours[k + m]];
    }
    g->nb_terms = calloc(4 * total, 1);
    if (g->nb_terms == NULL) abort();
    for (size_t k = 0; k < total; k += 1u + g->neighbours[k])
        for (size_t m = 1; m <= g->neighbours[k]; m++)
            for (int i = 0; i < 4; i++)
                g->nb_terms[4 * (k + m) + i] = (uint8_t)(8 * (MAX_LEVEL * i + ((g->nb_codes[k + m] >> (3 * i)) & 7)));
}

static void build_iq3xxs(void) { build_lattice(&IQ3XXS_LATTICE); }
static void build_iq3s(void) { build_lattice(&IQ3S_LATTICE); }

static const lattice *get_lattice(int size) {
    if (size == 256) {
        pthread_once(&IQ3XXS_LATTICE.once, build_iq3xxs);
        return &IQ3XXS_LATTICE;
    }
    pthread_once(&IQ3S_LATTICE.once, build_iq3s);
    return &IQ3S_LATTICE;
}

// ---- one group of 4 onto the grid

// The grid point among u's neighbours nearest to xval at `scale` by sum w (scale * level - x)^2 (first of equals);
// writes its level indices to L and returns its grid index.
static int best_neighbour(const lattice *g, int u, const float *xval, const float *w, float scale, int8_t *L) {
    const uint16_t *nb = g->neighbours - g->index_of[u] - 1;
    // term[i][c] = w[i] * (scale * (2c + 1) - x[i])^2, each exactly as the per-neighbour loop computes it; a
    // neighbour's distance then sums its four terms in coordinate order: the same floats, 32 products per group
    // instead of four per neighbour
    float term[4][MAX_LEVEL];
    for (int i = 0; i < 4; i++)
        for (int c = 0; c < MAX_LEVEL; c++) {
            const float diff = scale * (float)(2 * c + 1) - xval[i];
            term[i][c] = w[i] * diff * diff;
        }
    float best_d2 = FLT_MAX;
    int best = -1;
    for (int j = 1; j <= nb[0]; j++) {
        const uint16_t code = g->codes[nb[j]];
        float d2 = 0.0f;
        for (int i = 0; i < 4; i++) d2 += term[i][(code >> (3 * i)) & 7];
        if (d2 < best_d2) {
            best_d2 = d2;
            best = nb[j];
        }
    }
    for (int i = 0; i < 4; i++) L[i] = (int8_t)((g->point[best][i] - 1) / 2);
    return best;
}

// Rounds 4 magnitudes at inverse scale id to level indices (L), returns the lattice code.
static inline int round_group(const float *xval, float id, int8_t *L) {
    int u = 0;
    for (int i = 0; i < 4; i++) {
        L[i] = (int8_t)clamp_level(round_magic(0.5f * (id * xval[i] - 1.0f)));
        u |= L[i] << (3 * i);
    }
    return u;
}

static inline int code_of(const int8_t *L) { return L[0] | (L[1] << 3) | (L[2] << 6) | (L[3] << 9); }

// The grid index of a fitted group. A group can only be off the grid here when the fit's sums overflowed (inputs
// around 1e13 and beyond, where llama.cpp aborts the process); it is then stored as grid point 0.
static inline int grid_index(const lattice *g, const int8_t *L) {
    const int j = g->index_of[code_of(L)];
    return j >= 0 ? j : 0;
}

// ---- the sub-block fit shared by both types
// xval (32,) magnitudes, weight (32,), waux = sqrt(weight). steps: inverse scales (15 + 0.2 s) / max for
// s = -steps..steps. XXS starts with every group "on grid" and re-fits only the groups that were not; S starts
// with none on grid and re-fits every group. Returns the scale; L gets the level indices.

// The scale trials: the plain loop below, or a lane version (quants_iq_trials.h, same operations and choices).
// Writes the best trial's levels to L, its on-grid flags to on_grid and its scale to *scale when a trial is
// taken; leaves them otherwise.
typedef void (*trials_fn)(const lattice *g, const float *xval, const float *weight, const float *waux, float max,
                          int steps, int8_t *L, int *on_grid, float *scale);

static void trials_plain(const lattice *g, const float *xval, const float *weight, const float *waux, float max,
                         int steps, int8_t *L, int *on_grid, float *scale_out) {
    int8_t Laux[SUB];
    int on_grid_aux[GROUPS];
    float best = 0.0f, scale = *scale_out;
    for (int s = -steps; s <= steps; s++) {
        const float id = (2 * MAX_LEVEL - 1 + s * 0.2f) / max;
        const float this_scale = 1 / id;
        for (int k = 0; k < GROUPS; k++) {
            const int u = round_group(xval + 4 * k, id, Laux + 4 * k);
            on_grid_aux[k] = g->index_of[u] >= 0;
            if (!on_grid_aux[k]) best_neighbour(g, u, xval + 4 * k, waux + 4 * k, this_scale, Laux + 4 * k);
        }
        float sumqx = 0.0f, sumq2 = 0.0f;
        for (int i = 0; i < SUB; i++) {
            const float q = (float)(2 * Laux[i] + 1);
            sumqx += weight[i] * xval[i] * q;
            sumq2 += weight[i] * q * q;
        }
        if (sumq2 > 0 && sumqx * sumqx > best * sumq2) {
            scale = sumqx / sumq2;
            best = scale * sumqx;
            memcpy(L, Laux, SUB);
            memcpy(on_grid, on_grid_aux, GROUPS * sizeof(int));
        }
    }
    *scale_out = scale;
}

static float fit_sub_block(const lattice *g, const float *xval, const float *weight, const float *waux, float max,
                           int steps, int xxs, int8_t *L, trials_fn trials) {
    int on_grid[GROUPS];
    float scale = max / (2 * MAX_LEVEL - 1);
    for (int k = 0; k < GROUPS; k++) on_grid[k] = xxs;
    trials(g, xval, weight, waux, max, steps, L, on_grid, &scale);
    int off_grid = 0;
    for (int k = 0; k < GROUPS; k++) off_grid += !on_grid[k];
    if (off_grid > 0 && scale > 0) {
        const float id = 1 / scale;
        for (int k = 0; k < GROUPS; k++) {
            if (xxs && on_grid[k]) continue;
            int8_t lv[4];
            const int u = round_group(xval + 4 * k, id, lv);
            const int j = g->index_of[u] >= 0 ? g->index_of[u] : best_neighbour(g, u, xval + 4 * k, waux + 4 * k, scale, lv);
            for (int i = 0; i < 4; i++) L[4 * k + i] = (int8_t)((g->point[j][i] - 1) / 2);
        }
        float sumqx = 0.0f, sumq2 = 0.0f;
        for (int i = 0; i < SUB; i++) {
            const float q = (float)(2 * L[i] + 1);
            sumqx += weight[i] * xval[i] * q;
            sumq2 += weight[i] * q * q;
        }
        if (sumq2 > 0) scale = sumqx / sumq2;
    }
    return scale;
}

// ---- the scale trials in SIMD lanes (quants_iq_trials.h; x86-64: AVX2 and AVX-512, aarch64: NEON)

#define TL_LATTICE lattice
#define TL_NB_TERMS(g) ((g)->nb_terms)
#define TL_GROUP 4
#define TL_BITS 3
#define TL_LEVELS MAX_LEVEL
#define TL_SUB SUB
#define TL_TOP (2 * MAX_LEVEL - 1)
#define TL_STEP 0.2f
#if defined(__x86_64__) || defined(__i386__)
#define TL_NAME trials_avx2
#define TL_TARGET __attribute__((target("avx2")))
#define TL_VW 8
#include "quants_iq_trials.h"
#undef TL_NAME
#undef TL_TARGET
#undef TL_VW
#define TL_NAME trials_avx512
#define TL_TARGET __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx2")))
#define TL_VW 16
#include "quants_iq_trials.h"
#elif defined(__aarch64__)
#define TL_NAME trials_neon
#define TL_TARGET
#define TL_VW 4
#include "quants_iq_trials.h"
#endif

// (32,) x and the super-block's sigma2 -> weight and waux.
static void sub_block_weights(const float *x, const float *im, float sigma2, float *weight, float *waux) {
    if (im)
        for (int i = 0; i < SUB; i++) weight[i] = im[i] * sqrtf(sigma2 + x[i] * x[i]);
    else
        for (int i = 0; i < SUB; i++) weight[i] = x[i] * x[i];
    for (int i = 0; i < SUB; i++) waux[i] = sqrtf(weight[i]);
}

static float doubled_mean_square(const float *x) {
    float sumx2 = 0.0f;
    for (int i = 0; i < QK; i++) sumx2 += x[i] * x[i];
    return 2 * sumx2 / QK;
}

static inline float max_of(const float *v, int n) {
    float m = v[0];
    for (int i = 1; i < n; i++) m = m > v[i] ? m : v[i];
    return m;
}

// ---- IQ3_XXS
// block (98 bytes): | d: fp16 | grid: 64 bytes, byte 8s + k = grid index of group k of sub-block s |
//                   | 8 x u32 LE, sub-block s: bits 7k..7k+6 = signs of group pair k (7 bits: the 8th makes the
//                     count of negatives even), bits 28..31 = scale code |
// x = d * (0.5 + code) * 0.5 * level * sign, with the 8 dequantization levels 4, 12, .., 52, 62 of gguf-py.

enum { XXS_BYTES = 98, XXS_SIGNS = 2 + 64 };
#define XXS_ZERO_BELOW 1e-8f

static inline void iq3_xxs_rows(const float *x, void *vy, int64_t n, const float *imatrix, trials_fn trials) {
    const lattice *g = get_lattice(256);
    uint8_t *y = (uint8_t *)vy;
    float weight[SUB], waux[SUB], xval[SUB], scales[QK / SUB];
    int8_t L[SUB];
    for (int64_t b = 0; b < n / QK; b++, x += QK, y += XXS_BYTES) {
        memset(y, 0, XXS_BYTES);
        uint32_t words[QK / SUB] = {0};
        const float sigma2 = doubled_mean_square(x);
        float max_scale = 0.0f;
        for (int s = 0; s < QK / SUB; s++) {
            const float *xb = x + SUB * s;
            sub_block_weights(xb, imatrix ? imatrix + b * QK + SUB * s : NULL, sigma2, weight, waux);
            uint8_t signs[4];
            for (int k = 0; k < 4; k++) {
                int nflip = 0;
                uint8_t sg = 0;
                for (int i = 0; i < 8; i++) {   // without a branch: the same values
                    const int neg = !(xb[8 * k + i] >= 0);
                    xval[8 * k + i] = neg ? -xb[8 * k + i] : xb[8 * k + i];
                    nflip += neg;
                    sg |= (uint8_t)(neg << i);
                }
                if (nflip % 2) {   // an odd count: flip the element that costs least (weight * x^2)
                    int imin = 0;
                    float min = weight[8 * k] * xb[8 * k] * xb[8 * k];
                    for (int i = 1; i < 8; i++) {
                        const float ax = weight[8 * k + i] * xb[8 * k + i] * xb[8 * k + i];
                        if (ax < min) { min = ax; imin = i; }
                    }
                    xval[8 * k + imin] = -xval[8 * k + imin];
                    sg ^= (uint8_t)(1u << imin);
                }
                signs[k] = sg & 127;
            }
            const float max = max_of(xval, SUB);
            memset(L, 0, SUB);
            if (max < XXS_ZERO_BELOW) {
                scales[s] = 0;
                continue;
            }
            float scale = fit_sub_block(g, xval, weight, waux, max, 15, 1, L, trials);
            if (scale < 0) {
                scale = -scale;
                for (int k = 0; k < 4; k++) signs[k] = (uint8_t)(~signs[k] & 127);
            }
            for (int k = 0; k < GROUPS; k++) y[2 + 8 * s + k] = (uint8_t)grid_index(g, L + 4 * k);
            words[s] = (uint32_t)signs[0] | (uint32_t)signs[1] << 7 | (uint32_t)signs[2] << 14 | (uint32_t)signs[3] << 21;
            scales[s] = scale;
            max_scale = max_scale > scale ? max_scale : scale;
        }
        if (!max_scale) {
            memset(y, 0, XXS_BYTES);
            continue;
        }
        const float d = max_scale / 31;
        store_half(y, d * 1.0125f);
        const float id = 1 / d;
        for (int s = 0; s < QK / SUB; s++) {
            int l = round_magic(0.5f * (id * scales[s] - 1));
            l = l < 0 ? 0 : l > 15 ? 15 : l;
            words[s] |= (uint32_t)l << 28;
        }
        memcpy(y + XXS_SIGNS, words, sizeof words);
    }
}

static const float XXS_LEVELS[8] = {4, 12, 20, 28, 36, 44, 52, 62};

// +1 / -1 by a sign bit, as a multiplication: a NaN keeps its sign bit as in numpy (gguf-py), where a literal
// `v * (bit ? -1.f : 1.f)` may be folded by the compiler into a sign flip that also flips a NaN's sign.
static volatile const float SIGN_OF_BIT[2] = {1.f, -1.f};

static inline int even_parity_signs(int s7) { return s7 | (__builtin_popcount((unsigned)s7) & 1) << 7; }

static void dequantize_row_iq3_xxs(const void *vy, float *x, int64_t n) {
    const uint8_t *y = (const uint8_t *)vy;
    for (int64_t b = 0; b < n / QK; b++, y += XXS_BYTES) {
        const float d = load_half(y);
        for (int s = 0; s < QK / SUB; s++) {
            uint32_t word;
            memcpy(&word, y + XXS_SIGNS + 4 * s, 4);
            const float db = d * (0.5f + (float)(word >> 28)) * 0.5f;
            for (int k = 0; k < 4; k++) {
                const int signs = even_parity_signs((int)(word >> (7 * k)) & 127);
                for (int half = 0; half < 2; half++) {
                    const int code = IQ3XXS_GRID_CODES[y[2 + 8 * s + 2 * k + half]];
                    for (int j = 0; j < 4; j++)
                        x[4 * half + j] = db * XXS_LEVELS[(code >> (3 * j)) & 7] * SIGN_OF_BIT[(signs >> (4 * half + j)) & 1];
                }
                x += 8;
            }
        }
    }
}

// ---- IQ3_S
// block (110 bytes): | d: fp16 | qs: 64 bytes, low 8 bits of the grid indices, 8 per sub-block |
//                    | qh: 8 bytes, bit k of qh[s] = bit 8 of group k's index | signs: 32 bytes, a bit per value |
//                    | scales: 4 bytes, nibble s%2 of byte s/2 = scale code of sub-block s |
// x = d * (1 + 2 code) * level * sign, levels 1, 3, .., 15. A sub-block of zeros writes no grid indices or
// signs and the following sub-blocks' move up into its slots (llama.cpp's layout of that case, kept).

enum { S_BYTES = 110, S_QS = 2, S_QH = 66, S_SIGNS = 74, S_SCALES = 106 };

static inline void iq3_s_rows(const float *x, void *vy, int64_t n, const float *imatrix, trials_fn trials) {
    const lattice *g = get_lattice(512);
    uint8_t *y = (uint8_t *)vy;
    float weight[SUB], waux[SUB], xval[SUB], scales[QK / SUB];
    int8_t L[SUB];
    for (int64_t b = 0; b < n / QK; b++, x += QK, y += S_BYTES) {
        memset(y, 0, S_BYTES);
        uint8_t *qs = y + S_QS, *signs = y + S_SIGNS;
        const float sigma2 = doubled_mean_square(x);
        float max_scale = 0.0f;
        for (int s = 0; s < QK / SUB; s++) {
            const float *xb = x + SUB * s;
            sub_block_weights(xb, imatrix ? imatrix + b * QK + SUB * s : NULL, sigma2, weight, waux);
            uint8_t sg[4];
            for (int k = 0; k < 4; k++) {   // without a branch (random signs mispredict): the same values
                sg[k] = 0;
                for (int i = 0; i < 8; i++) {
                    const int neg = !(xb[8 * k + i] >= 0);
                    xval[8 * k + i] = neg ? -xb[8 * k + i] : xb[8 * k + i];
                    sg[k] |= (uint8_t)(neg << i);
                }
            }
            const float max = max_of(xval, SUB);
            memset(L, 0, SUB);
            if (!max) {
                scales[s] = 0;
                continue;
            }
            float scale = fit_sub_block(g, xval, weight, waux, max, 9, 0, L, trials);
            if (scale < 0) {
                scale = -scale;
                for (int k = 0; k < 4; k++) sg[k] = (uint8_t)~sg[k];
            }
            for (int k = 0; k < GROUPS; k++) {
                const int j = grid_index(g, L + 4 * k);
                qs[k] = (uint8_t)(j & 255);
                y[S_QH + s] |= (uint8_t)((j >> 8) << k);
            }
            qs += GROUPS;
            memcpy(signs, sg, 4);
            signs += 4;
            scales[s] = scale;
            max_scale = max_scale > scale ? max_scale : scale;
        }
        if (!max_scale) continue;
        const float d = max_scale / 31;
        store_half(y, d * 1.033f);
        const float id = 1 / d;
        for (int s = 0; s < QK / SUB; s += 2) {
            int l1 = round_magic(0.5f * (id * scales[s] - 1));
            int l2 = round_magic(0.5f * (id * scales[s + 1] - 1));
            l1 = l1 < 0 ? 0 : l1 > 15 ? 15 : l1;
            l2 = l2 < 0 ? 0 : l2 > 15 ? 15 : l2;
            y[S_SCALES + s / 2] = (uint8_t)(l1 | (l2 << 4));
        }
    }
}

static void dequantize_row_iq3_s(const void *vy, float *x, int64_t n) {
    const uint8_t *y = (const uint8_t *)vy;
    for (int64_t b = 0; b < n / QK; b++, y += S_BYTES) {
        const float d = load_half(y);
        for (int s = 0; s < QK / SUB; s++) {
            const float db = d * (float)(1 + 2 * ((y[S_SCALES + s / 2] >> (4 * (s % 2))) & 15));
            for (int k = 0; k < GROUPS; k++, x += 4) {
                const int j = y[S_QS + GROUPS * s + k] | (((y[S_QH + s] >> k) & 1) << 8);
                const int code = IQ3S_GRID_CODES[j];
                const int sg = y[S_SIGNS + 4 * s + k / 2] >> (4 * (k % 2));
                for (int i = 0; i < 4; i++)
                    x[i] = db * (float)level_of(code, i) * SIGN_OF_BIT[(sg >> i) & 1];
            }
        }
    }
}

// ---- row entry points: the plain reference and the lane paths

static void quantize_row_iq3_xxs(const float *x, void *vy, int64_t n, const float *im) { iq3_xxs_rows(x, vy, n, im, trials_plain); }
static void quantize_row_iq3_s(const float *x, void *vy, int64_t n, const float *im) { iq3_s_rows(x, vy, n, im, trials_plain); }
#if defined(__x86_64__) || defined(__i386__)
static void quantize_row_iq3_xxs_avx2(const float *x, void *vy, int64_t n, const float *im) { iq3_xxs_rows(x, vy, n, im, trials_avx2); }
static void quantize_row_iq3_s_avx2(const float *x, void *vy, int64_t n, const float *im) { iq3_s_rows(x, vy, n, im, trials_avx2); }
static void quantize_row_iq3_xxs_avx512(const float *x, void *vy, int64_t n, const float *im) { iq3_xxs_rows(x, vy, n, im, trials_avx512); }
static void quantize_row_iq3_s_avx512(const float *x, void *vy, int64_t n, const float *im) { iq3_s_rows(x, vy, n, im, trials_avx512); }
#define IQ3_SIMD(f) f##_avx2, "avx2"
#define IQ3_WIDE(f) f##_avx512, "avx512"
#elif defined(__aarch64__)
static void quantize_row_iq3_xxs_neon(const float *x, void *vy, int64_t n, const float *im) { iq3_xxs_rows(x, vy, n, im, trials_neon); }
static void quantize_row_iq3_s_neon(const float *x, void *vy, int64_t n, const float *im) { iq3_s_rows(x, vy, n, im, trials_neon); }
#define IQ3_SIMD(f) f##_neon, "neon"
#define IQ3_WIDE(f) NULL, NULL
#else
#define IQ3_SIMD(f) NULL, NULL
#define IQ3_WIDE(f) NULL, NULL
#endif

// ---- table

const gk_type_traits gk_iq3_types[] = {
    {18, "IQ3_XXS", QK, XXS_BYTES, quantize_row_iq3_xxs, IQ3_SIMD(quantize_row_iq3_xxs), dequantize_row_iq3_xxs,
     IQ3_WIDE(quantize_row_iq3_xxs)},
    {21, "IQ3_S", QK, S_BYTES, quantize_row_iq3_s, IQ3_SIMD(quantize_row_iq3_s), dequantize_row_iq3_s,
     IQ3_WIDE(quantize_row_iq3_s)},
    {0, NULL, 0, 0, NULL, NULL, NULL, NULL},
};
