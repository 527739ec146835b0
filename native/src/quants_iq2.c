// 2-bit lattice types: IQ2_XXS (66 bytes per 256 floats) and IQ2_XS (74 bytes per 256 floats).
//
// Groups of 8 values store their magnitudes as one point of a fixed grid (iq_grids.h: 256 points for IQ2_XXS,
// 512 for IQ2_XS; each coordinate one of the 3 odd levels 2c + 1, c = 0..2) and 7 sign bits (the 8th makes the
// count of negatives even: the smallest weighted magnitude has its sign flipped to get there). IQ2_XXS scales
// sub-blocks of 32, IQ2_XS sub-blocks of 16, 4 bits each, under an fp16 super-block scale.
//
// llama.cpp quantizes both only with importance weights (ggml_quantize_chunk asserts them); so do these kernels:
// the Python face refuses a call without them. The fit is llama.cpp's, step for step (same operation order and
// rounding): weights imatrix * sqrt(sigma2 + x^2), sigma2 = mean square of the super-block; a scan over inverse
// scales where each group rounds to the lattice and, off the grid, takes the nearest of its precomputed grid
// neighbours; the best (sum w q x)^2 / (sum w q^2) wins, and groups are re-fitted at the final scale.
#include <float.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "ggufkit_quants.h"
#include "iq_grids.h"
#include "quants_k_internal.h"

enum { QK = 256, LATTICE = 43692, MAX_LEVEL = 3, GROUP = 8 };

#define ZERO_BELOW 1e-15f

// ---- rounding (llama.cpp's nearest_int: through the float adder, defined for any input)

static inline int round_magic(float f) {
    float biased = f + 12582912.0f;
    int32_t bits;
    memcpy(&bits, &biased, 4);
    return (bits & 0x007fffff) - 0x00400000;
}

static inline int clamp_level(int l) { return l < 0 ? 0 : l > MAX_LEVEL - 1 ? MAX_LEVEL - 1 : l; }

// ---- grids and their neighbour lists
// index_of[u] for every lattice code u (8 coordinates, 2 bits each, each 0..2): the grid index, or -(offset + 1)
// into neighbours, where neighbours[offset] = n and then n grid indices: the grid points at the `rings` smallest
// distinct squared distances from u (in odd-level units), by distance then index (llama.cpp: 2 rings for both).

typedef struct {
    const uint16_t *codes;
    int size, rings;
    int8_t point[2048][GROUP];     // (size, 8) the levels 2c + 1 of each grid point
    int32_t index_of[LATTICE];
    uint16_t *neighbours;
    pthread_once_t once;
    uint16_t *nb_codes;            // parallel to neighbours: the count, then each neighbour's lattice code
} lattice8;

static lattice8 IQ2XXS_LATTICE = {IQ2XXS_GRID_CODES, 256, 2, {{0}}, {0}, NULL, PTHREAD_ONCE_INIT};
static lattice8 IQ2XS_LATTICE = {IQ2XS_GRID_CODES, 512, 2, {{0}}, {0}, NULL, PTHREAD_ONCE_INIT};
static lattice8 IQ2S_LATTICE = {IQ2S_GRID_CODES, 1024, 1, {{0}}, {0}, NULL, PTHREAD_ONCE_INIT};
static lattice8 IQ1S_LATTICE = {IQ1S_GRID_CODES, 2048, 3, {{0}}, {0}, NULL, PTHREAD_ONCE_INIT};

static inline int level_of(int u, int k) { return 2 * ((u >> (2 * k)) & 3) + 1; }

static int is_lattice_code(int u) {
    for (int k = 0; k < GROUP; k++)
        if (((u >> (2 * k)) & 3) == 3) return 0;
    return 1;
}

// Writes u's neighbour list at out (NULL: only counts); returns its length including the count slot.
static int neighbour_list(const lattice8 *g, int u, uint16_t *out) {
    enum { MAX_D2 = GROUP * 4 * 4 };
    int d2[2048], present[MAX_D2 + 1] = {0};
    for (int j = 0; j < g->size; j++) {
        int d = 0;
        for (int k = 0; k < GROUP; k++) {
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

// Only codes whose fields are all 0..2 can come out of the rounding; the others get no list (never looked up).
static void build_lattice(lattice8 *g) {
    for (int u = 0; u < LATTICE; u++) g->index_of[u] = INT32_MIN;
    for (int j = 0; j < g->size; j++) {
        for (int k = 0; k < GROUP; k++) g->point[j][k] = (int8_t)level_of(g->codes[j], k);
        g->index_of[g->codes[j]] = j;
    }
    size_t total = 0;
    for (int u = 0; u < LATTICE; u++)
        if (g->index_of[u] == INT32_MIN && is_lattice_code(u)) total += (size_t)neighbour_list(g, u, NULL);
    g->neighbours = malloc(total * sizeof(uint16_t));
    if (g->neighbours == NULL) abort();
    int offset = 0;
    for (int u = 0; u < LATTICE; u++) {
        if (g->index_of[u] != INT32_MIN || !is_lattice_code(u)) continue;
        g->index_of[u] = -(offset + 1);
        offset += neighbour_list(g, u, g->neighbours + offset);
    }
    // the SIMD search reads codes eight at a time, up to 7 past a list's end: padded
    g->nb_codes = calloc(total + 8, sizeof(uint16_t));
    if (g->nb_codes == NULL) abort();
    for (size_t k = 0; k < total; k++) g->nb_codes[k] = g->neighbours[k];
    for (size_t k = 0; k < total; k += 1u + g->neighbours[k])
        for (size_t m = 1; m <= g->neighbours[k]; m++) g->nb_codes[k + m] = g->codes[g->neighbours[k + m]];
}

static void build_iq2xxs(void) { build_lattice(&IQ2XXS_LATTICE); }
static void build_iq2xs(void) { build_lattice(&IQ2XS_LATTICE); }
static void build_iq2s(void) { build_lattice(&IQ2S_LATTICE); }
static void build_iq1s(void) { build_lattice(&IQ1S_LATTICE); }

static const lattice8 *get_lattice(int size) {
    if (size == 256) {
        pthread_once(&IQ2XXS_LATTICE.once, build_iq2xxs);
        return &IQ2XXS_LATTICE;
    }
    if (size == 512) {
        pthread_once(&IQ2XS_LATTICE.once, build_iq2xs);
        return &IQ2XS_LATTICE;
    }
    if (size == 1024) {
        pthread_once(&IQ2S_LATTICE.once, build_iq2s);
        return &IQ2S_LATTICE;
    }
    pthread_once(&IQ1S_LATTICE.once, build_iq1s);
    return &IQ1S_LATTICE;
}

// ---- one group of 8 onto the grid

// The neighbour of u nearest to xval at `scale` by sum w (scale * level - x)^2 (first of equals); L gets its
// level indices; returns its grid index.
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

// The neighbour search with eight neighbours per __m256: lane k sums neighbour j + k's eight terms in coordinate
// order (starting from 0.0f, as the plain loops), picking each term from coordinate i's row of the table with a
// permute by the neighbour's 2-bit field; a chunk with a lane below the best so far is then scanned in list order,
// so the first of equal distances still wins. The same floats as the plain loop, so the same choice. term[i][c]
// (c < 3 used) as the plain loop computes it; returns the grid index, -1 when no distance is below FLT_MAX.
__attribute__((target("avx2"))) static int nearest_avx2(const lattice8 *g, int u, const float term[GROUP][8]) {
    const int offset = -g->index_of[u] - 1;
    const uint16_t *nb = g->neighbours + offset, *codes = g->nb_codes + offset;
    __m256 rows[GROUP];
    for (int i = 0; i < GROUP; i++) rows[i] = _mm256_loadu_ps(term[i]);
    const __m256i field = _mm256_set1_epi32(3);
    const int n = nb[0];
    float best_d2 = FLT_MAX;
    int best = -1;
    for (int j = 0; j < n; j += 8) {
        const __m256i c = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(const void *)(codes + 1 + j)));
        __m256 d2 = _mm256_add_ps(_mm256_setzero_ps(), _mm256_permutevar8x32_ps(rows[0], _mm256_and_si256(c, field)));
        for (int i = 1; i < GROUP; i++)
            d2 = _mm256_add_ps(d2, _mm256_permutevar8x32_ps(rows[i], _mm256_and_si256(_mm256_srli_epi32(c, 2 * i),
                                                                                   field)));
        const int valid = n - j >= 8 ? 0xff : (1 << (n - j)) - 1;
        if (!(_mm256_movemask_ps(_mm256_cmp_ps(d2, _mm256_set1_ps(best_d2), _CMP_LT_OQ)) & valid)) continue;
        float d[8];
        _mm256_storeu_ps(d, d2);
        for (int k = 0; k < 8 && j + k < n; k++)
            if (d[k] < best_d2) {
                best_d2 = d[k];
                best = nb[1 + j + k];
            }
    }
    return best;
}

// Set by the SIMD row entry points for the row being quantized (per thread): the search takes the lanes.
static _Thread_local int use_lanes;
enum { IQ_SIMD_MIN_LIST = 12 };
#elif defined(__aarch64__)
#include <arm_neon.h>

// nearest_avx2 with four neighbours per float32x4_t: each coordinate's row of the term table (levels 0..3, 16
// bytes) is a byte table, and a neighbour's 2-bit field f picks bytes 4f..4f+3 of it (vqtbl1q_u8). Separate adds
// in coordinate order from 0.0f (no fused operations), chunks with a lane below the best walked in list order.
static int nearest_neon(const lattice8 *g, int u, const float term[GROUP][8]) {
    const int offset = -g->index_of[u] - 1;
    const uint16_t *nb = g->neighbours + offset, *codes = g->nb_codes + offset;
    uint8x16_t rows[GROUP];
    for (int i = 0; i < GROUP; i++) rows[i] = vreinterpretq_u8_f32(vld1q_f32(term[i]));
    const uint32x4_t three = vdupq_n_u32(3), spread = vdupq_n_u32(0x04040404u), bytes = vdupq_n_u32(0x03020100u);
    const uint32_t lane_no[4] = {0, 1, 2, 3};
    const uint32x4_t lanes = vld1q_u32(lane_no);
    const int n = nb[0];
    float best_d2 = FLT_MAX;
    int best = -1;
    for (int j = 0; j < n; j += 4) {
        const uint32x4_t c = vmovl_u16(vld1_u16(codes + 1 + j));
        float32x4_t d2 = vdupq_n_f32(0.0f);
        for (int i = 0; i < GROUP; i++) {
            const uint32x4_t f = vandq_u32(vshlq_u32(c, vdupq_n_s32(-2 * i)), three);
            const uint8x16_t idx = vreinterpretq_u8_u32(vaddq_u32(vmulq_u32(f, spread), bytes));
            d2 = vaddq_f32(d2, vreinterpretq_f32_u8(vqtbl1q_u8(rows[i], idx)));
        }
        const uint32x4_t valid = vcltq_u32(lanes, vdupq_n_u32((uint32_t)(n - j)));
        if (vmaxvq_u32(vandq_u32(vcltq_f32(d2, vdupq_n_f32(best_d2)), valid)) == 0) continue;
        float d[4];
        vst1q_f32(d, d2);
        for (int k = 0; k < 4 && j + k < n; k++)
            if (d[k] < best_d2) {
                best_d2 = d[k];
                best = nb[1 + j + k];
            }
    }
    return best;
}

static _Thread_local int use_lanes;
enum { IQ_SIMD_MIN_LIST = 12 };
#endif

// The grid index of u's neighbour with the least distance below FLT_MAX by the table term[i][c] (a neighbour's
// distance sums its eight terms in coordinate order from 0.0f; the first of equals), -1 when none; NEON lanes
// for long lists where the row entry point chose them.
static int nearest_by_table(const lattice8 *g, int u, const float term[GROUP][MAX_LEVEL]) {
    const uint16_t *nb = g->neighbours - g->index_of[u] - 1;
#if defined(__aarch64__)
    if (use_lanes && nb[0] >= IQ_SIMD_MIN_LIST) {
        float rows[GROUP][8] = {{0}};
        for (int i = 0; i < GROUP; i++) memcpy(rows[i], term[i], sizeof term[i]);
        return nearest_neon(g, u, rows);
    }
#endif
    float best_d2 = FLT_MAX;
    int best = -1;
    for (int j = 1; j <= nb[0]; j++) {
        const uint16_t code = g->codes[nb[j]];
        float d2 = 0.0f;
        for (int i = 0; i < GROUP; i++) d2 += term[i][(code >> (2 * i)) & 3];
        if (d2 < best_d2) {
            best_d2 = d2;
            best = nb[j];
        }
    }
    return best;
}

static int best_neighbour(const lattice8 *g, int u, const float *xval, const float *w, float scale, int8_t *L) {
    // term[i][c] = w[i] * (scale * (2c + 1) - x[i])^2, exactly as the per-neighbour loop computes it; a neighbour's
    // distance sums its eight terms in coordinate order (the same floats, 24 products per group)
    float term[GROUP][MAX_LEVEL];
    for (int i = 0; i < GROUP; i++)
        for (int c = 0; c < MAX_LEVEL; c++) {
            const float diff = scale * (float)(2 * c + 1) - xval[i];
            term[i][c] = w[i] * diff * diff;
        }
    int best;
#if defined(__x86_64__) || defined(__i386__)
    if (use_lanes && g->neighbours[-g->index_of[u] - 1] >= IQ_SIMD_MIN_LIST) {  // short lists: one by one
        float rows[GROUP][8] = {{0}};
        for (int i = 0; i < GROUP; i++) memcpy(rows[i], term[i], sizeof term[i]);
        best = nearest_avx2(g, u, rows);
    } else
#endif
    best = nearest_by_table(g, u, term);
    for (int i = 0; i < GROUP; i++) L[i] = (int8_t)((g->point[best][i] - 1) / 2);
    return best;
}

// Rounds 8 magnitudes at inverse scale id to level indices (L); returns the lattice code.
static inline int round_group(const float *xval, float id, int8_t *L) {
    int u = 0;
    for (int i = 0; i < GROUP; i++) {
        L[i] = (int8_t)clamp_level(round_magic(0.5f * (id * xval[i] - 1.0f)));
        u |= L[i] << (2 * i);
    }
    return u;
}

// Rounds onto the grid: L gets the grid point's level indices; returns its index.
static inline int onto_grid(const lattice8 *g, const float *xval, const float *w, float id, float scale, int8_t *L) {
    const int u = round_group(xval, id, L);
    return g->index_of[u] >= 0 ? g->index_of[u] : best_neighbour(g, u, xval, w, scale, L);
}

// The grid index of a fitted group; off the grid only after an overflow (llama.cpp aborts there): point 0.
static inline int grid_index(const lattice8 *g, const int8_t *L) {
    int u = 0;
    for (int i = 0; i < GROUP; i++) u |= L[i] << (2 * i);
    const int j = g->index_of[u];
    return j >= 0 ? j : 0;
}

static inline void weighted_sums(int n, const float *weight, const float *xval, const int8_t *L, float *sumqx,
                                 float *sumq2) {
    float sx = 0.0f, s2 = 0.0f;
    for (int i = 0; i < n; i++) {
        const float q = (float)(2 * L[i] + 1);
        sx += weight[i] * xval[i] * q;
        s2 += weight[i] * q * q;
    }
    *sumqx = sx;
    *sumq2 = s2;
}

// ---- shared: weights, signs, the super-block scale

// n values -> weight, waux = sqrt(weight), xval = |x| with one sign per group of 8 flipped back when the group
// has an odd count of negatives (the element with the least weight * x^2); signs[k] = 7 sign bits of group k.
static float prepare(int n, const float *xb, const float *qw, float sigma2, float *weight, float *waux, float *xval,
                     uint8_t *signs) {
    for (int i = 0; i < n; i++) weight[i] = qw[i] * sqrtf(sigma2 + xb[i] * xb[i]);
    for (int i = 0; i < n; i++) waux[i] = sqrtf(weight[i]);
    for (int k = 0; k < n / GROUP; k++) {
        int nflip = 0;
        uint8_t s = 0;
        for (int i = 0; i < GROUP; i++) {
            if (xb[8 * k + i] >= 0) {
                xval[8 * k + i] = xb[8 * k + i];
            } else {
                xval[8 * k + i] = -xb[8 * k + i];
                nflip++;
                s |= (uint8_t)(1u << i);
            }
        }
        if (nflip % 2) {
            int imin = 0;
            float min = weight[8 * k] * xb[8 * k] * xb[8 * k];
            for (int i = 1; i < GROUP; i++) {
                const float ax = weight[8 * k + i] * xb[8 * k + i] * xb[8 * k + i];
                if (ax < min) { min = ax; imin = i; }
            }
            xval[8 * k + imin] = -xval[8 * k + imin];
            s ^= (uint8_t)(1u << imin);
        }
        signs[k] = s & 127;
    }
    float max = xval[0];
    for (int i = 1; i < n; i++) max = max > xval[i] ? max : xval[i];
    return max;
}

static float mean_square(const float *x) {
    float sumx2 = 0.0f;
    for (int i = 0; i < QK; i++) sumx2 += x[i] * x[i];
    return sumx2 / QK;
}

static inline int scale_code(float id, float scale) {
    const int l = round_magic(0.5f * (id * scale - 1));
    return l < 0 ? 0 : l > 15 ? 15 : l;
}

// ---- neighbour search in lanes with the term table built in vectors (IQ2_XXS, IQ1_S, IQ1_M)
// The same search as nearest_avx2 / nearest_neon, but the term table w[i] * (sl[c] - x[i])^2 (sl[c] = scale *
// level c, the scalar product the plain loop forms) is computed for the eight coordinates at once, one vector per
// level c, with the plain loop's operations (sub, then (w * diff) * diff), and rearranged into the rows the lookups
// read by unpacks instead of being written float by float. AVX-512 looks up sixteen neighbours per __m512. A chunk
// with a lane below the best so far is walked in list order (first of equal distances wins), as before.
// wide_lanes: set by the AVX-512 row entry points (per thread), next to use_lanes.

#if defined(__x86_64__) || defined(__i386__)
static _Thread_local int wide_lanes;

// Per neighbour-list entry (parallel to g->neighbours, padded by 16): coordinate i's lookup index in nibble i,
// field | 4 (i >> 2) | 8 (i & 1), so that the index for coordinate i is the word shifted right by 4i: AVX2's
// permute reads bits 0..2 (field + 4 for the high 128 bits), AVX-512's bits 0..3 (the table layout below).
typedef struct {
    pthread_once_t once;
    const lattice8 *g;
    uint32_t *nib;
} lane_codes;

static lane_codes XXS_NIB = {PTHREAD_ONCE_INIT, &IQ2XXS_LATTICE, NULL}, IQ1_NIB = {PTHREAD_ONCE_INIT, &IQ1S_LATTICE, NULL},
                  XS_NIB = {PTHREAD_ONCE_INIT, &IQ2XS_LATTICE, NULL};

static void build_nibbles(lane_codes *lc) {
    const lattice8 *g = lc->g;
    size_t total = 0;
    for (int u = 0; u < LATTICE; u++)
        if (g->index_of[u] < 0 && g->index_of[u] != INT32_MIN) total += 1u + g->neighbours[-g->index_of[u] - 1];
    lc->nib = calloc(total + 16, sizeof(uint32_t));
    if (lc->nib == NULL) abort();
    for (size_t k = 0; k < total; k += 1u + g->neighbours[k])
        for (size_t m = 1; m <= g->neighbours[k]; m++) {
            const int code = g->codes[g->neighbours[k + m]];
            uint32_t w = 0;
            for (int i = 0; i < GROUP; i++)
                w |= (uint32_t)(((code >> (2 * i)) & 3) | 4 * (i >> 2) | 8 * (i & 1)) << (4 * i);
            lc->nib[k + m] = w;
        }
}
static void build_xxs_nib(void) { build_nibbles(&XXS_NIB); }
static void build_iq1_nib(void) { build_nibbles(&IQ1_NIB); }
static void build_xs_nib(void) { build_nibbles(&XS_NIB); }

static const uint32_t *lane_nibbles(const lattice8 *g) {
    if (g == &IQ2XXS_LATTICE) {
        pthread_once(&XXS_NIB.once, build_xxs_nib);
        return XXS_NIB.nib;
    }
    if (g == &IQ2XS_LATTICE) {
        pthread_once(&XS_NIB.once, build_xs_nib);
        return XS_NIB.nib;
    }
    pthread_once(&IQ1_NIB.once, build_iq1_nib);
    return IQ1_NIB.nib;
}

// The four rows (coordinates i and i + 4 in the low and high 128 bits, levels 0..2 then a zero) of the table.
__attribute__((target("avx2"))) static inline void term_rows_avx2(const float *xval, const float *w, const float *sl,
                                                                   __m256 rows[4]) {
    const __m256 x = _mm256_loadu_ps(xval), wv = _mm256_loadu_ps(w);
    __m256 t[3];
    for (int c = 0; c < 3; c++) {
        const __m256 diff = _mm256_sub_ps(_mm256_set1_ps(sl[c]), x);
        t[c] = _mm256_mul_ps(_mm256_mul_ps(wv, diff), diff);
    }
    const __m256 lo01 = _mm256_unpacklo_ps(t[0], t[1]), hi01 = _mm256_unpackhi_ps(t[0], t[1]);
    const __m256 lo2 = _mm256_unpacklo_ps(t[2], _mm256_setzero_ps()), hi2 = _mm256_unpackhi_ps(t[2], _mm256_setzero_ps());
    rows[0] = _mm256_castpd_ps(_mm256_unpacklo_pd(_mm256_castps_pd(lo01), _mm256_castps_pd(lo2)));  // coords 0, 4
    rows[1] = _mm256_castpd_ps(_mm256_unpackhi_pd(_mm256_castps_pd(lo01), _mm256_castps_pd(lo2)));  // 1, 5
    rows[2] = _mm256_castpd_ps(_mm256_unpacklo_pd(_mm256_castps_pd(hi01), _mm256_castps_pd(hi2)));  // 2, 6
    rows[3] = _mm256_castpd_ps(_mm256_unpackhi_pd(_mm256_castps_pd(hi01), _mm256_castps_pd(hi2)));  // 3, 7
}

// The grid index of u's nearest neighbour (-1: no distance below FLT_MAX).
__attribute__((target("avx2"))) static int lane_nearest_avx2(const lattice8 *g, int u, const float *xval,
                                                              const float *w, const float *sl) {
    const int offset = -g->index_of[u] - 1;
    const uint16_t *nb = g->neighbours + offset;
    const uint32_t *codes = lane_nibbles(g) + offset;
    __m256 rows[4];
    term_rows_avx2(xval, w, sl, rows);
    const int n = nb[0];
    // Without a walk: lane k keeps the least distance below FLT_MAX of the entries j + k (strict <: the first of
    // equals) and its list position; then the least over the lanes, the smallest position among equal ones. That
    // is the plain scan's pick, the first of the least (a minimum rounds nothing; NaN never compares below).
    __m256 least = _mm256_set1_ps(FLT_MAX);
    __m256i at = _mm256_set1_epi32(INT32_MAX), pos = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const __m256i eight = _mm256_set1_epi32(8), end = _mm256_set1_epi32(n);
    for (int j = 0; j < n; j += 8, pos = _mm256_add_epi32(pos, eight)) {
        const __m256i c = _mm256_loadu_si256((const __m256i *)(const void *)(codes + 1 + j));
        __m256 d2 = _mm256_add_ps(_mm256_setzero_ps(), _mm256_permutevar8x32_ps(rows[0], c));
        for (int i = 1; i < GROUP; i++)
            d2 = _mm256_add_ps(d2, _mm256_permutevar8x32_ps(rows[i & 3], _mm256_srli_epi32(c, 4 * i)));
        const __m256 below = _mm256_and_ps(_mm256_cmp_ps(d2, least, _CMP_LT_OQ),
                                           _mm256_castsi256_ps(_mm256_cmpgt_epi32(end, pos)));
        least = _mm256_blendv_ps(least, d2, below);
        at = _mm256_castps_si256(_mm256_blendv_ps(_mm256_castsi256_ps(at), _mm256_castsi256_ps(pos), below));
    }
    __m256 m = _mm256_min_ps(least, _mm256_permute2f128_ps(least, least, 1));
    m = _mm256_min_ps(m, _mm256_permute_ps(m, 0x4e));
    m = _mm256_min_ps(m, _mm256_permute_ps(m, 0xb1));
    __m256i p = _mm256_castps_si256(_mm256_blendv_ps(_mm256_castsi256_ps(_mm256_set1_epi32(INT32_MAX)),
                                                     _mm256_castsi256_ps(at), _mm256_cmp_ps(least, m, _CMP_EQ_OQ)));
    p = _mm256_min_epi32(p, _mm256_permute2x128_si256(p, p, 1));
    p = _mm256_min_epi32(p, _mm256_shuffle_epi32(p, 0x4e));
    p = _mm256_min_epi32(p, _mm256_shuffle_epi32(p, 0xb1));
    const int first = _mm256_cvtsi256_si32(p);
    return first == INT32_MAX ? -1 : nb[1 + first];
}

#define IQ_AVX512 __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx2")))

// Sixteen neighbours per __m512: two tables of 16 floats, (coords 0, 4, 1, 5) and (2, 6, 3, 7), four levels each;
// coordinate i reads table (i >> 1) & 1 at 8 (i & 1) + 4 (i >> 2) + its field.
IQ_AVX512 static int lane_nearest_avx512(const lattice8 *g, int u, const float *xval, const float *w, const float *sl) {
    const int offset = -g->index_of[u] - 1;
    const uint16_t *nb = g->neighbours + offset;
    const uint32_t *codes = lane_nibbles(g) + offset;
    __m256 rows[4];
    term_rows_avx2(xval, w, sl, rows);
    const __m512 tab[2] = {_mm512_insertf32x8(_mm512_castps256_ps512(rows[0]), rows[1], 1),
                           _mm512_insertf32x8(_mm512_castps256_ps512(rows[2]), rows[3], 1)};
    const int n = nb[0];
    float best_d2 = FLT_MAX;
    int best = -1;
    for (int j = 0; j < n; j += 16) {
        const __mmask16 valid = n - j >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (n - j)) - 1);
        const __m512i c = _mm512_loadu_si512((const void *)(codes + 1 + j));
        __m512 d2 = _mm512_add_ps(_mm512_setzero_ps(), _mm512_permutexvar_ps(c, tab[0]));
        for (int i = 1; i < GROUP; i++)
            d2 = _mm512_add_ps(d2, _mm512_permutexvar_ps(_mm512_srli_epi32(c, 4 * i), tab[(i >> 1) & 1]));
        const __mmask16 below = _mm512_mask_cmp_ps_mask(valid, d2, _mm512_set1_ps(best_d2), _CMP_LT_OQ);
        if (!below) continue;
        // the walk in list order ends at the first lane holding the least of the lanes below the best (exact: a
        // minimum rounds nothing; lanes not below, NaN among them, take no part)
        const float least = _mm512_reduce_min_ps(_mm512_mask_blend_ps(below, _mm512_set1_ps(FLT_MAX), d2));
        const __mmask16 at = _mm512_mask_cmp_ps_mask(below, d2, _mm512_set1_ps(least), _CMP_EQ_OQ);
        best_d2 = least;
        best = nb[1 + j + __builtin_ctz(at)];
    }
    return best;
}

// The nearest neighbour by the widest lanes the row entry point chose; L gets its level indices.
static int lane_nearest(const lattice8 *g, int u, const float *xval, const float *w, const float *sl) {
    return wide_lanes ? lane_nearest_avx512(g, u, xval, w, sl) : lane_nearest_avx2(g, u, xval, w, sl);
}
#endif

// ---- IQ2_XXS
// block (66 bytes): | d: fp16 | per sub-block s of 32: u32 LE = grid indices of its 4 groups (a byte each),
//                   | u32 LE = bits 7k..7k+6 signs of group k, bits 28..31 scale code |
// x = d * (0.5 + code) * 0.25 * level * sign, levels 8, 25, 43 (gguf-py's dequantization).

enum { XXS_BYTES = 66, XXS_SUB = 32 };

#if defined(__x86_64__) || defined(__i386__)
// round_group with the eight values in one __m256 (the same operations: 0.5 * (id * x - 1), the float adder's
// rounding, the clamp to 0..2); returns the lattice code, L gets the levels.
__attribute__((target("avx2"))) static inline int round_group_avx2(const float *xval, float id, int8_t *L) {
    const __m256 v = _mm256_mul_ps(_mm256_set1_ps(0.5f), _mm256_sub_ps(_mm256_mul_ps(_mm256_set1_ps(id),
                                                                                     _mm256_loadu_ps(xval)),
                                                                       _mm256_set1_ps(1.0f)));
    const __m256i bits = _mm256_castps_si256(_mm256_add_ps(v, _mm256_set1_ps(12582912.0f)));
    __m256i l = _mm256_sub_epi32(_mm256_and_si256(bits, _mm256_set1_epi32(0x007fffff)), _mm256_set1_epi32(0x00400000));
    l = _mm256_min_epi32(_mm256_max_epi32(l, _mm256_setzero_si256()), _mm256_set1_epi32(MAX_LEVEL - 1));
    const __m256i f = _mm256_sllv_epi32(l, _mm256_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14));
    __m128i u = _mm_or_si128(_mm256_castsi256_si128(f), _mm256_extracti128_si256(f, 1));
    u = _mm_or_si128(u, _mm_shuffle_epi32(u, 0x4e));
    u = _mm_or_si128(u, _mm_shuffle_epi32(u, 0xb1));
    const __m128i l16 = _mm_packs_epi32(_mm256_castsi256_si128(l), _mm256_extracti128_si256(l, 1));
    _mm_storel_epi64((__m128i *)(void *)L, _mm_packs_epi16(l16, l16));
    return _mm_cvtsi128_si32(u);
}
#endif

// onto_grid, with the neighbour search in lanes when the row entry point chose them.
static inline int xxs_onto_grid(const lattice8 *g, const float *xval, const float *w, float id, float scale,
                                int8_t *L) {
#if defined(__x86_64__) || defined(__i386__)
    if (use_lanes) {
        const int u = round_group_avx2(xval, id, L);
        if (g->index_of[u] >= 0) return g->index_of[u];
        const float sl[3] = {scale * 1.0f, scale * 3.0f, scale * 5.0f};
        const int best = lane_nearest(g, u, xval, w, sl);
        for (int i = 0; i < GROUP; i++) L[i] = (int8_t)((g->point[best][i] - 1) / 2);
        return best;
    }
#endif
    return onto_grid(g, xval, w, id, scale, L);
}

#if defined(__x86_64__) || defined(__i386__)
// fit_xxs's 13 trial scales with their weighted sums in lanes, one trial per lane (two __m256, lanes 13..15 idle):
// every trial's groups are rounded onto the grid first (as the plain loop does, in any order: they are
// independent), their levels stored value-major (lt[i][trial]); then lane t sums sumqx and sumq2 over the 32
// values in the plain order with the plain operations ((w * x) * q and (w * q) * q from 0.0f). The best trial is
// then picked in the plain order with the plain test. Returns the scale (unchanged when no trial passes); L gets
// the best trial's levels.
__attribute__((target("avx2"))) static float xxs_trials_avx2(const lattice8 *g, const float *xval, const float *weight,
                                                              const float *waux, float eff_max, float scale, int8_t *L) {
    enum { TRIALS = 13 };
    int8_t lt[XXS_SUB][16];
    int8_t Lt[GROUP];
    for (int t = 0; t < TRIALS; t++) {
        const int s = t - 6;
        const float id = (2 * MAX_LEVEL - 1 + s * 0.1f) / eff_max;
        const float this_scale = 1 / id;
        for (int k = 0; k < XXS_SUB / GROUP; k++) {
            xxs_onto_grid(g, xval + 8 * k, waux + 8 * k, id, this_scale, Lt);
            for (int i = 0; i < GROUP; i++) lt[8 * k + i][t] = Lt[i];
        }
    }
    __m256 sx[2] = {_mm256_setzero_ps(), _mm256_setzero_ps()}, s2[2] = {_mm256_setzero_ps(), _mm256_setzero_ps()};
    const __m256i one = _mm256_set1_epi32(1);
    for (int i = 0; i < XXS_SUB; i++) {
        const __m128i l8 = _mm_loadu_si128((const __m128i *)(const void *)lt[i]);
        const __m256 wx = _mm256_set1_ps(weight[i] * xval[i]), w = _mm256_set1_ps(weight[i]);
        for (int h = 0; h < 2; h++) {
            const __m256i l = _mm256_cvtepi8_epi32(h ? _mm_srli_si128(l8, 8) : l8);
            const __m256 q = _mm256_cvtepi32_ps(_mm256_add_epi32(_mm256_add_epi32(l, l), one));
            sx[h] = _mm256_add_ps(sx[h], _mm256_mul_ps(wx, q));
            s2[h] = _mm256_add_ps(s2[h], _mm256_mul_ps(_mm256_mul_ps(w, q), q));
        }
    }
    float sumqx[16], sumq2[16];
    _mm256_storeu_ps(sumqx, sx[0]);
    _mm256_storeu_ps(sumqx + 8, sx[1]);
    _mm256_storeu_ps(sumq2, s2[0]);
    _mm256_storeu_ps(sumq2 + 8, s2[1]);
    float best = 0.0f;
    int pick = -1;
    for (int t = 0; t < TRIALS; t++)
        if (sumq2[t] > 0 && sumqx[t] * sumqx[t] > best * sumq2[t]) {
            scale = sumqx[t] / sumq2[t];
            best = scale * sumqx[t];
            pick = t;
        }
    if (pick >= 0)
        for (int i = 0; i < XXS_SUB; i++) L[i] = lt[i][pick];
    return scale;
}
#endif

// One sub-block of 32: 0 when llama.cpp skips it (all zero, or its first fit degenerate), else 1 with *scale and
// the level indices in L.
static int fit_xxs(const lattice8 *g, const float *xval, const float *weight, const float *waux, float max,
                   float *scale_out, int8_t *L) {
    memset(L, 0, XXS_SUB);
    if (max < ZERO_BELOW) return 0;
    float scale = kq_fit_positive(XXS_SUB, MAX_LEVEL + 1, xval, weight, (uint8_t *)L);
    const float eff_max = scale * MAX_LEVEL;
    if (eff_max <= 0) {
        memset(L, 0, XXS_SUB);
        return 0;
    }
    int8_t Laux[XXS_SUB];
    float best = 0.0f;
#if defined(__x86_64__) || defined(__i386__)
    if (use_lanes) {
        scale = xxs_trials_avx2(g, xval, weight, waux, eff_max, scale, L);
    } else
#endif
    for (int s = -6; s <= 6; s++) {
        const float id = (2 * MAX_LEVEL - 1 + s * 0.1f) / eff_max;
        const float this_scale = 1 / id;
        for (int k = 0; k < XXS_SUB / GROUP; k++)
            xxs_onto_grid(g, xval + 8 * k, waux + 8 * k, id, this_scale, Laux + 8 * k);
        float sumqx, sumq2;
        weighted_sums(XXS_SUB, weight, xval, Laux, &sumqx, &sumq2);
        if (sumq2 > 0 && sumqx * sumqx > best * sumq2) {
            scale = sumqx / sumq2;
            best = scale * sumqx;
            memcpy(L, Laux, XXS_SUB);
        }
    }
    if (scale > 0) {
        const float id = 1 / scale;
        for (int k = 0; k < XXS_SUB / GROUP; k++) xxs_onto_grid(g, xval + 8 * k, waux + 8 * k, id, scale, L + 8 * k);
        float sumqx, sumq2;
        weighted_sums(XXS_SUB, weight, xval, L, &sumqx, &sumq2);
        if (sumq2 > 0) scale = sumqx / sumq2;
    }
    *scale_out = scale;
    return 1;
}

static void quantize_row_iq2_xxs(const float *x, void *vy, int64_t n, const float *imatrix) {
    const lattice8 *g = get_lattice(256);
    uint8_t *y = (uint8_t *)vy;
    float weight[XXS_SUB], waux[XXS_SUB], xval[XXS_SUB], scales[QK / XXS_SUB];
    int8_t L[XXS_SUB];
    for (int64_t b = 0; b < n / QK; b++, x += QK, y += XXS_BYTES) {
        uint32_t q2[2 * (QK / XXS_SUB)] = {0};
        memset(y, 0, XXS_BYTES);
        const float sigma2 = mean_square(x);
        float max_scale = 0.0f;
        for (int s = 0; s < QK / XXS_SUB; s++) {
            uint8_t signs[4];
            const float max = prepare(XXS_SUB, x + XXS_SUB * s, imatrix + b * QK + XXS_SUB * s, sigma2, weight, waux,
                                      xval, signs);
            float scale = 0.0f;
            if (!fit_xxs(g, xval, weight, waux, max, &scale, L)) {
                scales[s] = 0;
                continue;
            }
            if (scale < 0) {
                scale = -scale;
                for (int k = 0; k < 4; k++) signs[k] = (uint8_t)(~signs[k] & 127);
            }
            for (int k = 0; k < 4; k++) {
                q2[2 * s] |= (uint32_t)grid_index(g, L + 8 * k) << (8 * k);
                q2[2 * s + 1] |= (uint32_t)signs[k] << (7 * k);
            }
            scales[s] = scale;
            max_scale = max_scale > scale ? max_scale : scale;
        }
        if (!max_scale) continue;
        const float d = max_scale / 31;
        store_half(y, d);
        const float id = 1 / d;
        for (int s = 0; s < QK / XXS_SUB; s++) q2[2 * s + 1] |= (uint32_t)scale_code(id, scales[s]) << 28;
        memcpy(y + 2, q2, sizeof q2);
    }
}

// ksigns: 7 stored sign bits -> 8, the 8th restoring an even count of negatives.
static inline int even_parity_signs(int s7) { return s7 | (__builtin_popcount((unsigned)s7) & 1) << 7; }

static const float IQ2_LEVELS[3] = {8, 25, 43};

// +1 / -1 by a sign bit, as a multiplication that keeps a NaN's sign like numpy (see quants_iq3.c).
static volatile const float SIGN_OF_BIT[2] = {1.f, -1.f};

static inline void put_group(float db, int code, int signs, float *x) {
    for (int j = 0; j < GROUP; j++) x[j] = db * IQ2_LEVELS[(code >> (2 * j)) & 3] * SIGN_OF_BIT[(signs >> j) & 1];
}

static void dequantize_row_iq2_xxs(const void *vy, float *x, int64_t n) {
    const uint8_t *y = (const uint8_t *)vy;
    for (int64_t b = 0; b < n / QK; b++, y += XXS_BYTES) {
        const float d = load_half(y);
        for (int s = 0; s < QK / XXS_SUB; s++) {
            uint32_t w[2];
            memcpy(w, y + 2 + 8 * s, 8);
            const float db = d * (0.5f + (float)(w[1] >> 28)) * 0.25f;
            for (int k = 0; k < 4; k++, x += GROUP)
                put_group(db, IQ2XXS_GRID_CODES[(w[0] >> (8 * k)) & 255], even_parity_signs((int)(w[1] >> (7 * k)) & 127), x);
        }
    }
}

// ---- IQ2_XS
// block (74 bytes): | d: fp16 | qs: 32 x u16 LE, group k: bits 0..8 grid index, bits 9..15 signs |
//                   | scales: 8 bytes, nibble s%2 of byte s/2 = scale code of sub-block s (16 values) |
// x = d * (0.5 + code) * 0.25 * level * sign.

enum { XS_BYTES = 74, XS_SUB = 16 };

static void quantize_row_iq2_xs(const float *x, void *vy, int64_t n, const float *imatrix) {
    const lattice8 *g = get_lattice(512);
    uint8_t *y = (uint8_t *)vy;
    float weight[XS_SUB], waux[XS_SUB], xval[XS_SUB], scales[QK / XS_SUB];
    int8_t L[XS_SUB], Laux[XS_SUB];
    for (int64_t b = 0; b < n / QK; b++, x += QK, y += XS_BYTES) {
        uint16_t q2[2 * (QK / XS_SUB)] = {0};
        memset(y, 0, XS_BYTES);
        const float sigma2 = mean_square(x);
        float max_scale = 0.0f;
        for (int s = 0; s < QK / XS_SUB; s++) {
            uint8_t signs[2];
            const float max = prepare(XS_SUB, x + XS_SUB * s, imatrix + b * QK + XS_SUB * s, sigma2, weight, waux,
                                      xval, signs);
            memset(L, 0, XS_SUB);
            if (max < ZERO_BELOW) {
                scales[s] = 0;
                continue;
            }
            float best = 0.0f;
            float scale = max / (2 * MAX_LEVEL - 1);
            int on_grid[2] = {1, 1}, on_grid_aux[2];
            for (int is = -9; is <= 9; is++) {
                const float id = (2 * MAX_LEVEL - 1 + is * 0.1f) / max;
                const float this_scale = 1 / id;
                for (int k = 0; k < 2; k++) {
#if defined(__x86_64__) || defined(__i386__)
                    if (use_lanes) {  // xxs_onto_grid's lanes (the same choice), keeping whether it was on the grid
                        const int u = round_group_avx2(xval + 8 * k, id, Laux + 8 * k);
                        on_grid_aux[k] = g->index_of[u] >= 0;
                        if (!on_grid_aux[k]) {
                            const float sl[3] = {this_scale * 1.0f, this_scale * 3.0f, this_scale * 5.0f};
                            const int j = lane_nearest(g, u, xval + 8 * k, waux + 8 * k, sl);
                            for (int i = 0; i < GROUP; i++) Laux[8 * k + i] = (int8_t)((g->point[j][i] - 1) / 2);
                        }
                        continue;
                    }
#endif
                    const int u = round_group(xval + 8 * k, id, Laux + 8 * k);
                    on_grid_aux[k] = g->index_of[u] >= 0;
                    if (!on_grid_aux[k]) best_neighbour(g, u, xval + 8 * k, waux + 8 * k, this_scale, Laux + 8 * k);
                }
                float sumqx, sumq2;
                weighted_sums(XS_SUB, weight, xval, Laux, &sumqx, &sumq2);
                if (sumq2 > 0 && sumqx * sumqx > best * sumq2) {
                    scale = sumqx / sumq2;
                    best = scale * sumqx;
                    memcpy(L, Laux, XS_SUB);
                    memcpy(on_grid, on_grid_aux, sizeof on_grid);
                }
            }
            if ((!on_grid[0] || !on_grid[1]) && scale > 0) {
                const float id = 1 / scale;
                for (int k = 0; k < 2; k++)
                    if (!on_grid[k]) xxs_onto_grid(g, xval + 8 * k, waux + 8 * k, id, scale, L + 8 * k);
                float sumqx, sumq2;
                weighted_sums(XS_SUB, weight, xval, L, &sumqx, &sumq2);
                if (sumq2 > 0) scale = sumqx / sumq2;
            }
            if (scale < 0) {
                scale = -scale;
                for (int k = 0; k < 2; k++) signs[k] = (uint8_t)(~signs[k] & 127);
            }
            for (int k = 0; k < 2; k++) q2[2 * s + k] = (uint16_t)(grid_index(g, L + 8 * k) | (signs[k] << 9));
            scales[s] = scale;
            max_scale = max_scale > scale ? max_scale : scale;
        }
        if (!max_scale) continue;
        const float d = max_scale / 31;
        store_half(y, d);
        const float id = 1 / d;
        for (int s = 0; s < QK / XS_SUB; s++) y[66 + s / 2] |= (uint8_t)(scale_code(id, scales[s]) << (4 * (s % 2)));
        memcpy(y + 2, q2, sizeof q2);
    }
}

static void dequantize_row_iq2_xs(const void *vy, float *x, int64_t n) {
    const uint8_t *y = (const uint8_t *)vy;
    for (int64_t b = 0; b < n / QK; b++, y += XS_BYTES) {
        const float d = load_half(y);
        for (int s = 0; s < QK / XS_SUB; s++) {
            const float db = d * (0.5f + (float)((y[66 + s / 2] >> (4 * (s % 2))) & 15)) * 0.25f;
            for (int k = 0; k < 2; k++, x += GROUP) {
                uint16_t q;
                memcpy(&q, y + 2 + 2 * (2 * s + k), 2);
                put_group(db, IQ2XS_GRID_CODES[q & 511], even_parity_signs(q >> 9), x);
            }
        }
    }
}

// ---- IQ2_S
// block (82 bytes): | d: fp16 | qs: 32 bytes, low 8 bits of group g's grid index | signs: 32 bytes, a bit per value |
//                   | qh: 8 bytes, bits 2(g%4)..+1 of qh[g/4] = bits 8..9 of group g's index |
//                   | scales: 8 bytes, nibble s%2 of byte s/2 = scale code of sub-block s (16 values) |
// No sign-parity trick (all 8 sign bits stored), importance weights optional (without: 0.25 sigma2 + x^2,
// sigma2 = 2 * mean square), one neighbour ring. x = d * (0.5 + code) * 0.25 * level * sign.

enum { S_BYTES = 82, S_SIGNS = 2 + 32, S_QH = 2 + 64, S_SCALES = 2 + 72 };
#define S_ZERO_BELOW 1e-8f

// The scale trials of a sub-block: the plain loop, or its lane version (quants_iq_trials.h: the same operations
// and choices). Writes the best trial's levels to L, its on-grid flags to on_grid and its scale to *scale when a
// trial is taken; leaves them otherwise.
typedef void (*s_trials_fn)(const lattice8 *g, const float *xval, const float *weight, const float *waux, float max,
                            int steps, int8_t *L, int *on_grid, float *scale);

static void s_trials_plain(const lattice8 *g, const float *xval, const float *weight, const float *waux, float max,
                           int steps, int8_t *L, int *on_grid, float *scale_out) {
    int8_t Laux[XS_SUB];
    int on_grid_aux[2];
    float best = 0.0f, scale = *scale_out;
    for (int is = -steps; is <= steps; is++) {
        const float id = (2 * MAX_LEVEL - 1 + is * 0.1f) / max;
        const float this_scale = 1 / id;
        for (int k = 0; k < 2; k++) {
            const int u = round_group(xval + 8 * k, id, Laux + 8 * k);
            on_grid_aux[k] = g->index_of[u] >= 0;
            if (!on_grid_aux[k]) best_neighbour(g, u, xval + 8 * k, waux + 8 * k, this_scale, Laux + 8 * k);
        }
        float sumqx, sumq2;
        weighted_sums(XS_SUB, weight, xval, Laux, &sumqx, &sumq2);
        if (sumq2 > 0 && sumqx * sumqx > best * sumq2) {
            scale = sumqx / sumq2;
            best = scale * sumqx;
            memcpy(L, Laux, XS_SUB);
            memcpy(on_grid, on_grid_aux, sizeof on_grid_aux);
        }
    }
    *scale_out = scale;
}

// For the lanes: 8 bytes per entry of IQ2_S's neighbour lists, 8 * (3 i + level i) (see quants_iq_trials.h).
static uint8_t *IQ2S_NB_TERMS;
static pthread_once_t IQ2S_NB_TERMS_ONCE = PTHREAD_ONCE_INIT;

static void build_iq2s_nb_terms(void) {
    const lattice8 *g = get_lattice(1024);
    size_t total = 0;
    for (int u = 0; u < LATTICE; u++)
        if (g->index_of[u] < 0 && g->index_of[u] != INT32_MIN) total += 1u + g->neighbours[-g->index_of[u] - 1];
    uint8_t *t = calloc(GROUP * total, 1);
    if (t == NULL) abort();
    for (size_t k = 0; k < total; k += 1u + g->neighbours[k])
        for (size_t m = 1; m <= g->neighbours[k]; m++)
            for (int i = 0; i < GROUP; i++)
                t[GROUP * (k + m) + i] = (uint8_t)(8 * (MAX_LEVEL * i + ((g->nb_codes[k + m] >> (2 * i)) & 3)));
    IQ2S_NB_TERMS = t;
}

#define TL_NB_TERMS(g) ((void)(g), IQ2S_NB_TERMS)
#define TL_LATTICE lattice8
#define TL_GROUP GROUP
#define TL_BITS 2
#define TL_LEVELS MAX_LEVEL
#define TL_SUB XS_SUB
#define TL_TOP (2 * MAX_LEVEL - 1)
#define TL_STEP 0.1f
#if defined(__x86_64__) || defined(__i386__)
// AVX2 only: with 19 trials a 16-lane vector runs half empty (the scan costs per list entry and run, not per
// lane), and the 8-lane code measured ~4% quicker than a 16-lane one on the AVX-512 machine of BENCHMARKS.md
#define TL_NAME s_trials_avx2
#define TL_TARGET __attribute__((target("avx2")))
#define TL_VW 8
#include "quants_iq_trials.h"
#elif defined(__aarch64__)
#define TL_NAME s_trials_neon
#define TL_TARGET
#define TL_VW 4
#include "quants_iq_trials.h"
#endif
#undef TL_NAME
#undef TL_TARGET
#undef TL_VW
#undef TL_LATTICE
#undef TL_GROUP
#undef TL_BITS
#undef TL_LEVELS
#undef TL_SUB
#undef TL_TOP
#undef TL_STEP
#undef TL_NB_TERMS

static inline void iq2_s_rows(const float *x, void *vy, int64_t n, const float *imatrix, s_trials_fn trials) {
    const lattice8 *g = get_lattice(1024);
    uint8_t *y = (uint8_t *)vy;
    float weight[XS_SUB], waux[XS_SUB], xval[XS_SUB], scales[QK / XS_SUB];
    int8_t L[XS_SUB];
    for (int64_t b = 0; b < n / QK; b++, x += QK, y += S_BYTES) {
        memset(y, 0, S_BYTES);
        const float sigma2 = 2 * mean_square(x);
        float max_scale = 0.0f;
        for (int s = 0; s < QK / XS_SUB; s++) {
            const float *xb = x + XS_SUB * s;
            if (imatrix) {
                const float *qw = imatrix + b * QK + XS_SUB * s;
                for (int i = 0; i < XS_SUB; i++) weight[i] = qw[i] * sqrtf(sigma2 + xb[i] * xb[i]);
            } else {
                for (int i = 0; i < XS_SUB; i++) weight[i] = 0.25f * sigma2 + xb[i] * xb[i];
            }
            for (int i = 0; i < XS_SUB; i++) waux[i] = sqrtf(weight[i]);
            uint8_t signs[2] = {0, 0};
            for (int i = 0; i < XS_SUB; i++) {   // without a branch (random signs mispredict): the same values
                const int neg = !(xb[i] >= 0);
                xval[i] = neg ? -xb[i] : xb[i];
                signs[i / 8] |= (uint8_t)(neg << (i % 8));
            }
            float max = xval[0];
            for (int i = 1; i < XS_SUB; i++) max = max > xval[i] ? max : xval[i];
            memset(L, 0, XS_SUB);
            if (max < S_ZERO_BELOW) {
                scales[s] = 0;
                continue;
            }
            float scale = max / (2 * MAX_LEVEL - 1);
            int on_grid[2] = {1, 1};
            trials(g, xval, weight, waux, max, 9, L, on_grid, &scale);
            if ((!on_grid[0] || !on_grid[1]) && scale > 0) {
                const float id = 1 / scale;
                for (int k = 0; k < 2; k++)
                    if (!on_grid[k]) xxs_onto_grid(g, xval + 8 * k, waux + 8 * k, id, scale, L + 8 * k);
                float sumqx, sumq2;
                weighted_sums(XS_SUB, weight, xval, L, &sumqx, &sumq2);
                if (sumq2 > 0) scale = sumqx / sumq2;
            }
            if (scale < 0) {
                scale = -scale;
                signs[0] = (uint8_t)~signs[0];
                signs[1] = (uint8_t)~signs[1];
            }
            for (int k = 0; k < 2; k++) {
                const int grp = 2 * s + k, j = grid_index(g, L + 8 * k);
                y[2 + grp] = (uint8_t)(j & 255);
                y[S_QH + grp / 4] |= (uint8_t)((j >> 8) << (2 * (grp % 4)));
                y[S_SIGNS + grp] = signs[k];
            }
            scales[s] = scale;
            max_scale = max_scale > scale ? max_scale : scale;
        }
        if (!max_scale) continue;
        const float d = max_scale / 31;
        store_half(y, d * 0.9875f);
        const float id = 1 / d;
        for (int s = 0; s < QK / XS_SUB; s++) y[S_SCALES + s / 2] |= (uint8_t)(scale_code(id, scales[s]) << (4 * (s % 2)));
    }
}

static void quantize_row_iq2_s(const float *x, void *vy, int64_t n, const float *im) { iq2_s_rows(x, vy, n, im, s_trials_plain); }
#if defined(__x86_64__) || defined(__i386__)
static void quantize_row_iq2_s_avx2(const float *x, void *vy, int64_t n, const float *im) {
    pthread_once(&IQ2S_NB_TERMS_ONCE, build_iq2s_nb_terms);
    iq2_s_rows(x, vy, n, im, s_trials_avx2);
}
#define IQ2S_SIMD quantize_row_iq2_s_avx2, "avx2"
#elif defined(__aarch64__)
static void quantize_row_iq2_s_neon(const float *x, void *vy, int64_t n, const float *im) {
    pthread_once(&IQ2S_NB_TERMS_ONCE, build_iq2s_nb_terms);
    iq2_s_rows(x, vy, n, im, s_trials_neon);
}
#define IQ2S_SIMD quantize_row_iq2_s_neon, "neon"
#else
#define IQ2S_SIMD NULL, NULL
#endif

static void dequantize_row_iq2_s(const void *vy, float *x, int64_t n) {
    const uint8_t *y = (const uint8_t *)vy;
    for (int64_t b = 0; b < n / QK; b++, y += S_BYTES) {
        const float d = load_half(y);
        for (int s = 0; s < QK / XS_SUB; s++) {
            const float db = d * (0.5f + (float)((y[S_SCALES + s / 2] >> (4 * (s % 2))) & 15)) * 0.25f;
            for (int k = 0; k < 2; k++, x += GROUP) {
                const int grp = 2 * s + k;
                const int j = y[2 + grp] | (((y[S_QH + grp / 4] >> (2 * (grp % 4))) & 3) << 8);
                put_group(db, IQ2S_GRID_CODES[j], y[S_SIGNS + grp], x);
            }
        }
    }
}

// ---- IQ1_S
// block (50 bytes): | d: fp16 | qs: 32 bytes, low 8 bits of group g's grid index (11 bits; 2048 points of
//                     coordinates -1, 0, 1) | qh: 8 x u16 LE, sub-block s of 32: bits 3k..3k+2 = high bits of group
//                     k's index, bits 12..14 = scale code c, bit 15 = the sign of the shift |
// x = d * (2c + 1) * (coordinate + delta), delta = +-0.125. Imatrix required (as in llama.cpp).
// The fit: the 32 values sorted (libc qsort on (value, position) pairs by value, as llama.cpp calls it, so equal
// values land in the same order), then every split into three runs (levels -1, 0, 1, shifted by +delta or
// -delta) scored exactly by prefix sums; groups off the grid take their nearest neighbour at the fitted scale.

enum { S1_BYTES = 50, S1_SUB = 32 };
#define IQ1S_ZERO_BELOW 1e-12f
#define IQ1_DELTA 0.125f

#if defined(__x86_64__) || defined(__i386__)
// n (a multiple of 8) weights qw * sqrt(sigma2 + x^2) in lanes: the same correctly rounded operations as sqrtf.
__attribute__((target("avx2"))) static void iq1_weights_avx2(int n, const float *xb, const float *qw, float sigma2,
                                                              float *weight) {
    const __m256 s2 = _mm256_set1_ps(sigma2);
    for (int i = 0; i < n; i += 8) {
        const __m256 x = _mm256_loadu_ps(xb + i);
        _mm256_storeu_ps(weight + i, _mm256_mul_ps(_mm256_loadu_ps(qw + i),
                                                   _mm256_sqrt_ps(_mm256_add_ps(s2, _mm256_mul_ps(x, x)))));
    }
}
#endif

// The neighbour of u nearest (weighted squared distance) to xval at scale with levels xx[c]; L gets its levels.
static int iq1_best_neighbour(const lattice8 *g, int u, const float *xval, const float *w, float scale,
                              const float *xx, int8_t *L) {
    int best;
#if defined(__x86_64__) || defined(__i386__)
    if (use_lanes) {   // (the lanes build their own term table)
        const float sl[3] = {scale * xx[0], scale * xx[1], scale * xx[2]};
        best = lane_nearest(g, u, xval, w, sl);
    } else
#endif
    {
        float term[GROUP][3];   // w[i] * (scale * xx[c] - x[i])^2, as the per-neighbour loop computes it
        for (int i = 0; i < GROUP; i++)
            for (int c = 0; c < 3; c++) {
                const float diff = scale * xx[c] - xval[i];
                term[i][c] = w[i] * diff * diff;
            }
        best = nearest_by_table(g, u, term);
    }
    if (best < 0) best = 0;   // only when every distance overflowed (llama.cpp then reads past its arrays)
    for (int i = 0; i < GROUP; i++) L[i] = (int8_t)((g->point[best][i] - 1) / 2);
    return best;
}

static int by_value(const void *a, const void *b) {
    const float l = *(const float *)a, r = *(const float *)b;
    return l < r ? -1 : l > r ? 1 : 0;
}

#if defined(__x86_64__) || defined(__i386__)
// The order qsort gives the (value, position) pairs by value (glibc's qsort is a stable merge sort at this size,
// so equal values keep their positions' order): value j goes to rank #{k : x[k] < x[j]} + #{k < j : x[k] == x[j]},
// counted in lanes (lane j of vector v holds j = 8v + lane). idx_of[rank] = j. n = 16 or 32. Returns 0 (and writes
// nothing) when a value is NaN, where the comparisons are no order: the caller sorts with qsort then.
__attribute__((target("avx2"))) static int iq1_order_avx2(const float *xb, int n, int *idx_of) {
    __m256 v[4];
    __m256i rank[4];
    const int nv = n / 8;
    __m256 nan = _mm256_setzero_ps();
    for (int q = 0; q < nv; q++) {
        v[q] = _mm256_loadu_ps(xb + 8 * q);
        nan = _mm256_or_ps(nan, _mm256_cmp_ps(v[q], v[q], _CMP_UNORD_Q));
        rank[q] = _mm256_setzero_si256();
    }
    if (_mm256_movemask_ps(nan)) return 0;
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    for (int k = 0; k < n; k++) {
        const __m256 xk = _mm256_set1_ps(xb[k]);
        // lanes j > k count x[k] <= x[j], lanes j <= k count x[k] < x[j] (j == k: never)
        const __m256i after_k = _mm256_cmpgt_epi32(lane, _mm256_set1_epi32(k % 8));
        for (int q = 0; q < nv; q++) {
            __m256 hit;
            if (q < k / 8) {
                hit = _mm256_cmp_ps(xk, v[q], _CMP_LT_OQ);
            } else if (q > k / 8) {
                hit = _mm256_cmp_ps(xk, v[q], _CMP_LE_OQ);
            } else {
                hit = _mm256_blendv_ps(_mm256_cmp_ps(xk, v[q], _CMP_LT_OQ), _mm256_cmp_ps(xk, v[q], _CMP_LE_OQ),
                                       _mm256_castsi256_ps(after_k));
            }
            rank[q] = _mm256_sub_epi32(rank[q], _mm256_castps_si256(hit));
        }
    }
    int r[32];
    for (int q = 0; q < nv; q++) _mm256_storeu_si256((__m256i *)(void *)(r + 8 * q), rank[q]);
    for (int j = 0; j < n; j++) idx_of[r[j]] = j;
    return 1;
}
#endif

#if defined(__aarch64__)
// iq1_order_avx2 with four lanes per float32x4_t (NEON): the same counts, the same NaN refusal.
static int iq1_order_neon(const float *xb, int n, int *idx_of) {
    float32x4_t v[8];
    uint32x4_t rank[8];
    const int nv = n / 4;
    uint32x4_t ordered = vdupq_n_u32(0xffffffffu);
    for (int q = 0; q < nv; q++) {
        v[q] = vld1q_f32(xb + 4 * q);
        ordered = vandq_u32(ordered, vceqq_f32(v[q], v[q]));
        rank[q] = vdupq_n_u32(0);
    }
    if (vminvq_u32(ordered) == 0) return 0;
    const uint32_t lane_no[4] = {0, 1, 2, 3};
    const uint32x4_t lane = vld1q_u32(lane_no);
    for (int k = 0; k < n; k++) {
        const float32x4_t xk = vdupq_n_f32(xb[k]);
        const uint32x4_t after_k = vcgtq_u32(lane, vdupq_n_u32((uint32_t)(k % 4)));
        for (int q = 0; q < nv; q++) {
            uint32x4_t hit;
            if (q < k / 4) hit = vcltq_f32(xk, v[q]);
            else if (q > k / 4) hit = vcleq_f32(xk, v[q]);
            else hit = vbslq_u32(after_k, vcleq_f32(xk, v[q]), vcltq_f32(xk, v[q]));
            rank[q] = vsubq_u32(rank[q], hit);
        }
    }
    uint32_t r[32];
    for (int q = 0; q < nv; q++) vst1q_u32(r + 4 * q, rank[q]);
    for (int j = 0; j < n; j++) idx_of[r[j]] = j;
    return 1;
}
#endif

// idx_of[rank] = the position of the rank-th smallest of n values, in the order llama.cpp's qsort call gives.
static void iq1_order(const float *xb, int n, float *pairs, int *idx_of) {
#if defined(__x86_64__) || defined(__i386__)
    if (use_lanes && iq1_order_avx2(xb, n, idx_of)) return;
#elif defined(__aarch64__)
    if (use_lanes && iq1_order_neon(xb, n, idx_of)) return;
#endif
    for (int j = 0; j < n; j++) {
        pairs[2 * j] = xb[j];
        memcpy(&pairs[2 * j + 1], &j, 4);
    }
    qsort(pairs, (size_t)n, 2 * sizeof(float), by_value);
    for (int j = 0; j < n; j++) memcpy(&idx_of[j], &pairs[2 * j + 1], 4);
}

// ---- the split search in lanes (quants_iq1_split.h: one source, AVX2 and NEON; IQ1_S and IQ1_M)
// A sub-block the lanes' exactness bound holds for: weights >= 0, their total in [2^-40, 2^40], sum w |x| <= 2^40
// and max |x| <= 2^20, so every product, quotient and score the bound relies on is a normal float; the others
// (zero or huge rows, negative importance, NaN) take the plain loop.
// (Four partial sums: the bound has room for any order of summation.)
static int iq1_tame(int n, const float *weight, const float *xb, float max) {
    float total[4] = {0}, wx[4] = {0};
    int ok = max <= 0x1p20f;
    for (int i = 0; i < n; i += 4)
        for (int l = 0; l < 4; l++) {
            ok &= weight[i + l] >= 0.0f;
            total[l] += weight[i + l];
            wx[l] += weight[i + l] * fabsf(xb[i + l]);
        }
    const float t = (total[0] + total[1]) + (total[2] + total[3]), a = (wx[0] + wx[1]) + (wx[2] + wx[3]);
    return ok && t >= 0x1p-40f && t <= 0x1p40f && a <= 0x1p40f;
}

#if defined(__x86_64__) || defined(__i386__)
#define IL_TARGET __attribute__((target("avx2")))
#define IL_VW 8
#define IL_RCP(v) ((il_vf)_mm256_rcp_ps((__m256)(v)))
#define IL_MAX(a, b) ((il_vf)_mm256_max_ps((__m256)(a), (__m256)(b)))
#define IL_BITS(m) ((unsigned)_mm256_movemask_ps((__m256)(m)))
#define IL_NAME iq1s_split_avx2
#define IL_SUB 32
#include "quants_iq1_split.h"
#undef IL_NAME
#undef IL_SUB
#define IL_NAME iq1m_split_avx2
#define IL_SUB 16
#include "quants_iq1_split.h"
#elif defined(__aarch64__)
#define IL_TARGET
#define IL_VW 4
#define IL_RCP(v) (1.0f / (v))
#define IL_MAX(a, b) ((il_vf)vmaxnmq_f32((float32x4_t)(a), (float32x4_t)(b)))
#define IL_BITS(m) ((unsigned)vaddvq_u32(vandq_u32((uint32x4_t)(m), (uint32x4_t){1, 2, 4, 8})))
#define IL_NAME iq1s_split_neon
#define IL_SUB 32
#include "quants_iq1_split.h"
#undef IL_NAME
#undef IL_SUB
#define IL_NAME iq1m_split_neon
#define IL_SUB 16
#include "quants_iq1_split.h"
#endif
#undef IL_NAME
#undef IL_SUB
#undef IL_TARGET
#undef IL_VW
#undef IL_RCP
#undef IL_MAX
#undef IL_BITS

static void quantize_row_iq1_s(const float *x, void *vy, int64_t n, const float *imatrix) {
    const lattice8 *g = get_lattice(2048);
    const float x_p[3] = {-1 + IQ1_DELTA, IQ1_DELTA, 1 + IQ1_DELTA};
    const float x_m[3] = {-1 - IQ1_DELTA, -IQ1_DELTA, 1 - IQ1_DELTA};
    uint8_t *y = (uint8_t *)vy;
    float weight[S1_SUB], scales[QK / S1_SUB], sumx[S1_SUB + 1 + 8] = {0}, sumw[S1_SUB + 1 + 8] = {0};
    float pairs[2 * S1_SUB];             // (value, position as int bits) pairs, sorted by value
    int8_t L[S1_SUB], shifts[QK / S1_SUB];
    int idx_of[S1_SUB];
    uint16_t index[S1_SUB / GROUP];
    for (int64_t b = 0; b < n / QK; b++, x += QK, y += S1_BYTES) {
        memset(y, 0, S1_BYTES);
        uint16_t qh[QK / S1_SUB] = {0};
        const float sigma2 = 2 * mean_square(x);
        float max_scale = 0.0f;
        for (int s = 0; s < QK / S1_SUB; s++) {
            const float *xb = x + S1_SUB * s;
            const float *qw = imatrix + b * QK + S1_SUB * s;
#if defined(__x86_64__) || defined(__i386__)
            if (use_lanes)
                iq1_weights_avx2(S1_SUB, xb, qw, sigma2, weight);
            else
#endif
            for (int i = 0; i < S1_SUB; i++) weight[i] = qw[i] * sqrtf(sigma2 + xb[i] * xb[i]);
            float max = fabsf(xb[0]);
            for (int i = 1; i < S1_SUB; i++) max = max > fabsf(xb[i]) ? max : fabsf(xb[i]);
            if (max < IQ1S_ZERO_BELOW) {
                scales[s] = 0;
                shifts[s] = 1;
                continue;
            }
            iq1_order(xb, S1_SUB, pairs, idx_of);
            sumx[0] = sumw[0] = 0;
            for (int j = 0; j < S1_SUB; j++) {
                const int i = idx_of[j];
                sumx[j + 1] = sumx[j] + weight[i] * xb[i];
                sumw[j + 1] = sumw[j] + weight[i];
            }
            float best_score = -FLT_MAX, scale = max;
            int besti1 = -1, besti2 = -1, best_shift = 0, k = -1, found = 0;
#if defined(__x86_64__) || defined(__i386__)
            if (use_lanes && iq1_tame(S1_SUB, weight, xb, max))
                found = iq1s_split_avx2(sumx, sumw, x_p, x_m, &scale, &besti1, &besti2, &k);
#elif defined(__aarch64__)
            if (use_lanes && iq1_tame(S1_SUB, weight, xb, max))
                found = iq1s_split_neon(sumx, sumw, x_p, x_m, &scale, &besti1, &besti2, &k);
#endif
            if (found) best_shift = k == 0 ? 1 : -1;
            else
            for (int i1 = 0; i1 <= S1_SUB; i1++) {
                for (int i2 = i1; i2 <= S1_SUB; i2++) {
                    for (int sh = 0; sh < 2; sh++) {
                        const float *xs = sh == 0 ? x_p : x_m;
                        const float sumqx = (sumx[i1] - sumx[0]) * xs[0] + (sumx[i2] - sumx[i1]) * xs[1] +
                                            (sumx[S1_SUB] - sumx[i2]) * xs[2];
                        const float sumq2 = (sumw[i1] - sumw[0]) * xs[0] * xs[0] + (sumw[i2] - sumw[i1]) * xs[1] * xs[1] +
                                            (sumw[S1_SUB] - sumw[i2]) * xs[2] * xs[2];
                        if (sumq2 > 0 && sumqx * sumqx > best_score * sumq2) {
                            scale = sumqx / sumq2;
                            best_score = scale * sumqx;
                            besti1 = i1;
                            besti2 = i2;
                            best_shift = sh == 0 ? 1 : -1;
                        }
                    }
                }
            }
            if (besti1 < 0 || besti2 < 0 || best_shift == 0) {
                scales[s] = 0;
                shifts[s] = 1;
                continue;
            }
            for (int j = 0; j < besti1; j++) L[idx_of[j]] = 0;
            for (int j = besti1; j < besti2; j++) L[idx_of[j]] = 1;
            for (int j = besti2; j < S1_SUB; j++) L[idx_of[j]] = 2;
            if (scale < 0) {
                for (int j = 0; j < S1_SUB; j++) L[j] = (int8_t)(2 - L[j]);
                scale = -scale;
                best_shift = -best_shift;
            }
            int all_on_grid = 1;
            const float *xx = best_shift == 1 ? x_p : x_m;
            for (int k = 0; k < S1_SUB / GROUP; k++) {
                int u = 0;
                for (int j = 0; j < GROUP; j++) u |= L[8 * k + j] << (2 * j);
                int j = g->index_of[u];
                if (j < 0) {
                    all_on_grid = 0;
                    j = iq1_best_neighbour(g, u, xb + 8 * k, weight + 8 * k, scale, xx, L + 8 * k);
                }
                index[k] = (uint16_t)j;
            }
            if (!all_on_grid) {
                float sumqx = 0, sumq2 = 0;
                for (int k = 0; k < S1_SUB / GROUP; k++) {
                    const int8_t *pg = g->point[index[k]];
                    for (int j = 0; j < GROUP; j++) {
                        const float w = weight[8 * k + j], q = xx[(pg[j] - 1) / 2];
                        sumqx += w * q * xb[8 * k + j];
                        sumq2 += w * q * q;
                    }
                }
                if (sumqx > 0 && sumq2 > 0) scale = sumqx / sumq2;
            }
            uint16_t h = 0;
            for (int k = 0; k < S1_SUB / GROUP; k++) {
                y[2 + (S1_SUB / GROUP) * s + k] = (uint8_t)(index[k] & 255);
                h |= (uint16_t)((index[k] >> 8) << (3 * k));
            }
            qh[s] = h;
            scales[s] = scale;
            shifts[s] = (int8_t)best_shift;
            max_scale = max_scale > scale ? max_scale : scale;
        }
        if (!max_scale) {
            memcpy(y + 34, qh, sizeof qh);
            continue;
        }
        const float d = max_scale / 15;
        store_half(y, d * 1.125f);
        const float id = 1 / d;
        for (int s = 0; s < QK / S1_SUB; s++) {
            int l = round_magic(0.5f * (id * scales[s] - 1));
            l = l < 0 ? 0 : l > 7 ? 7 : l;
            if (shifts[s] == -1) l |= 8;
            qh[s] |= (uint16_t)(l << 12);
        }
        memcpy(y + 34, qh, sizeof qh);
    }
}

static void dequantize_row_iq1_s(const void *vy, float *x, int64_t n) {
    const uint8_t *y = (const uint8_t *)vy;
    for (int64_t b = 0; b < n / QK; b++, y += S1_BYTES) {
        const float d = load_half(y);
        for (int s = 0; s < QK / S1_SUB; s++) {
            uint16_t qh;
            memcpy(&qh, y + 34 + 2 * s, 2);
            const float dl = d * (float)(2 * ((qh >> 12) & 7) + 1);
            const float delta = qh & 0x8000 ? -IQ1_DELTA : IQ1_DELTA;
            for (int k = 0; k < 4; k++, x += GROUP) {
                const int code = IQ1S_GRID_CODES[y[2 + 4 * s + k] | (((qh >> (3 * k)) & 7) << 8)];
                for (int j = 0; j < GROUP; j++) x[j] = dl * ((float)(((code >> (2 * j)) & 3) - 1) + delta);
            }
        }
    }
}

// ---- IQ1_M
// block (56 bytes): | qs: 32 bytes, low 8 bits of group g's grid index |
//                   | qh: 16 bytes, sub-block s of 16: bits 0..2 / 4..6 = high bits of its groups 0 / 1, bits 3 / 7
//                     = the shift sign of groups 0 / 1 | scales: 4 x u16 LE, bits 3j..3j+2 of word s/4 = the 3-bit
//                     scale code of sub-block s (j = s % 4), bits 12..15 of words 0..3 = the fp16 super-block scale,
//                     a nibble per word, low nibble first |
// x = d * (2c + 1) * (coordinate + delta). Imatrix optional (without: w = x^2). Each half of a sub-block may take
// its own shift sign, so the split search scores four sign pairs at once from per-half prefix sums; afterwards
// the super-block scale is refitted over the whole block at the chosen levels.

enum { M1_BYTES = 56, M1_SUB = 16, M1_QH = 32, M1_SCALES = 48 };
#define IQ1M_ZERO_BELOW 1e-7f

static void m1_weights(const float *xb, const float *qw, float sigma2, float *weight) {
#if defined(__x86_64__) || defined(__i386__)
    if (qw && use_lanes)
        iq1_weights_avx2(M1_SUB, xb, qw, sigma2, weight);
    else
#endif
    if (qw)
        for (int i = 0; i < M1_SUB; i++) weight[i] = qw[i] * sqrtf(sigma2 + xb[i] * xb[i]);
    else
        for (int i = 0; i < M1_SUB; i++) weight[i] = xb[i] * xb[i];
}

// v where mask is all ones, +0.0f where it is zero (bit for bit: any v, inf and NaN included).
static inline float masked(float v, uint32_t mask) {
    uint32_t bits;
    memcpy(&bits, &v, 4);
    bits &= mask;
    memcpy(&v, &bits, 4);
    return v;
}

static void quantize_row_iq1_m(const float *x, void *vy, int64_t n, const float *imatrix) {
    const lattice8 *g = get_lattice(2048);
    const float x_p[3] = {-1 + IQ1_DELTA, IQ1_DELTA, 1 + IQ1_DELTA};
    const float x_m[3] = {-1 - IQ1_DELTA, -IQ1_DELTA, 1 - IQ1_DELTA};
    static const uint8_t masks[4] = {0x00, 0x80, 0x08, 0x88};
    uint8_t *y = (uint8_t *)vy;
    float weight[M1_SUB], scales[QK / M1_SUB], pairs[2 * M1_SUB];
    int8_t L[M1_SUB], shifts[QK / M1_SUB];
    int idx_of[M1_SUB];
    uint16_t index[2];
    for (int64_t b = 0; b < n / QK; b++, x += QK, y += M1_BYTES) {
        memset(y, 0, M1_BYTES);
        const float sigma2 = imatrix ? 2 * mean_square(x) : 0.0f;   // without imatrix unused (w = x^2)
        const float *imb = imatrix ? imatrix + b * QK : NULL;
        float max_scale = 0.0f;
        for (int s = 0; s < QK / M1_SUB; s++) {
            const float *xb = x + M1_SUB * s;
            m1_weights(xb, imb ? imb + M1_SUB * s : NULL, sigma2, weight);
            float max = fabsf(xb[0]);
            for (int i = 1; i < M1_SUB; i++) max = max > fabsf(xb[i]) ? max : fabsf(xb[i]);
            if (max < IQ1M_ZERO_BELOW) {
                scales[s] = 0;
                shifts[s] = 0;
                continue;
            }
            iq1_order(xb, M1_SUB, pairs, idx_of);
            float best_score = -FLT_MAX, scale = max;
            int besti1 = -1, besti2 = -1, best_k = -1;
            // per half h of the sub-block: prefix sums of w*x and w in sorted order; the other half's stay flat by
            // adding +0.0f (exact: a sum that starts at +0 is never -0 when rounding to nearest), kept in registers,
            // the +0.0f picked by a bit mask (a branch on the half mispredicts)
            float px[2][M1_SUB + 1 + 8] = {{0}}, pw[2][M1_SUB + 1 + 8] = {{0}};  // + 8: read by the lanes
            float sx0 = 0.0f, sx1 = 0.0f, sw0 = 0.0f, sw1 = 0.0f;
            for (int j = 0; j < M1_SUB; j++) {
                const int i = idx_of[j];
                const uint32_t first = (uint32_t)(i >= M1_SUB / 2) - 1u;   // all ones in the first half
                const float wx = weight[i] * xb[i], w = weight[i];
                sx0 = sx0 + masked(wx, first);
                sx1 = sx1 + masked(wx, ~first);
                sw0 = sw0 + masked(w, first);
                sw1 = sw1 + masked(w, ~first);
                px[0][j + 1] = sx0;
                px[1][j + 1] = sx1;
                pw[0][j + 1] = sw0;
                pw[1][j + 1] = sw1;
            }
            const float txs[2] = {px[0][M1_SUB], px[1][M1_SUB]}, tws[2] = {pw[0][M1_SUB], pw[1][M1_SUB]};
            const float p2 = x_p[2], m2 = x_m[2];
            const float cp1 = x_p[0] * x_p[0] - x_p[1] * x_p[1], cp2 = x_p[1] * x_p[1] - x_p[2] * x_p[2];
            const float cm1 = x_m[0] * x_m[0] - x_m[1] * x_m[1], cm2 = x_m[1] * x_m[1] - x_m[2] * x_m[2];
            int found = 0;
#if defined(__x86_64__) || defined(__i386__)
            if (use_lanes && iq1_tame(M1_SUB, weight, xb, max))
                found = iq1m_split_avx2(px, pw, txs, tws, p2, m2, cp1, cp2, cm1, cm2, &scale, &besti1, &besti2,
                                        &best_k);
#elif defined(__aarch64__)
            if (use_lanes && iq1_tame(M1_SUB, weight, xb, max))
                found = iq1m_split_neon(px, pw, txs, tws, p2, m2, cp1, cp2, cm1, cm2, &scale, &besti1, &besti2,
                                        &best_k);
#endif
            if (!found)
            for (int i1 = 0; i1 <= M1_SUB; i1++) {
                for (int i2 = i1; i2 <= M1_SUB; i2++) {
                    float qx_p[2], qx_m[2], q2_p[2], q2_m[2], sqx[4], sq2[4];
                    for (int h = 0; h < 2; h++) {
                        const float sx = px[h][i1] + px[h][i2];
                        qx_p[h] = txs[h] * p2 - sx;
                        qx_m[h] = txs[h] * m2 - sx;
                        q2_p[h] = tws[h] * p2 * p2 + pw[h][i1] * cp1 + pw[h][i2] * cp2;
                        q2_m[h] = tws[h] * m2 * m2 + pw[h][i1] * cm1 + pw[h][i2] * cm2;
                    }
                    // k: shift signs of (first half, second half): 0 = ++, 1 = +-, 2 = -+, 3 = --
                    sqx[0] = qx_p[0] + qx_p[1]; sqx[1] = qx_p[0] + qx_m[1];
                    sqx[2] = qx_m[0] + qx_p[1]; sqx[3] = qx_m[0] + qx_m[1];
                    sq2[0] = q2_p[0] + q2_p[1]; sq2[1] = q2_p[0] + q2_m[1];
                    sq2[2] = q2_m[0] + q2_p[1]; sq2[3] = q2_m[0] + q2_m[1];
                    for (int k = 0; k < 4; k++) {
                        if (sq2[k] > 0 && sqx[k] * sqx[k] > best_score * sq2[k]) {
                            scale = sqx[k] / sq2[k];
                            best_score = scale * sqx[k];
                            besti1 = i1;
                            besti2 = i2;
                            best_k = k;
                        }
                    }
                }
            }
            if (besti1 < 0 || besti2 < 0 || best_k < 0) {
                scales[s] = 0;
                shifts[s] = 0;
                continue;
            }
            for (int j = 0; j < besti1; j++) L[idx_of[j]] = 0;
            for (int j = besti1; j < besti2; j++) L[idx_of[j]] = 1;
            for (int j = besti2; j < M1_SUB; j++) L[idx_of[j]] = 2;
            if (scale < 0) {
                for (int j = 0; j < M1_SUB; j++) L[j] = (int8_t)(2 - L[j]);
                scale = -scale;
                best_k = 3 - best_k;
            }
            int all_on_grid = 1;
            for (int k = 0; k < 2; k++) {
                const float *xx = (k == 0 ? best_k < 2 : best_k % 2 == 0) ? x_p : x_m;
                int u = 0;
                for (int j = 0; j < GROUP; j++) u |= L[8 * k + j] << (2 * j);
                int j = g->index_of[u];
                if (j < 0) {
                    all_on_grid = 0;
                    j = iq1_best_neighbour(g, u, xb + 8 * k, weight + 8 * k, scale, xx, L + 8 * k);
                }
                index[k] = (uint16_t)j;
            }
            if (!all_on_grid) {
                float sumqx = 0, sumq2 = 0;
                for (int k = 0; k < 2; k++) {
                    const float *xx = (k == 0 ? best_k < 2 : best_k % 2 == 0) ? x_p : x_m;
                    const int8_t *pg = g->point[index[k]];
                    for (int j = 0; j < GROUP; j++) {
                        const float w = weight[8 * k + j], q = xx[(pg[j] - 1) / 2];
                        sumqx += w * q * xb[8 * k + j];
                        sumq2 += w * q * q;
                    }
                }
                if (sumqx > 0 && sumq2 > 0) scale = sumqx / sumq2;
            }
            y[2 * s] = (uint8_t)(index[0] & 255);
            y[2 * s + 1] = (uint8_t)(index[1] & 255);
            y[M1_QH + s] = (uint8_t)((index[0] >> 8) | ((index[1] >> 8) << 4));
            scales[s] = scale;
            shifts[s] = (int8_t)best_k;
            max_scale = max_scale > scale ? max_scale : scale;
        }
        if (!max_scale) continue;
        uint16_t sc[4] = {0, 0, 0, 0};
        float d = max_scale / 15;
        const float id = 1 / d;
        float sumqx = 0, sumq2 = 0;
        for (int s = 0; s < QK / M1_SUB; s++) {
            int l = round_magic(0.5f * (id * scales[s] - 1));
            l = l < 0 ? 0 : l > 7 ? 7 : l;
            sc[s / 4] |= (uint16_t)(l << (3 * (s % 4)));
            y[M1_QH + s] |= masks[shifts[s]];
            const float *xb = x + M1_SUB * s;
            m1_weights(xb, imb ? imb + M1_SUB * s : NULL, sigma2, weight);
            for (int k = 0; k < 2; k++) {
                const float *xx = (k == 0 ? shifts[s] < 2 : shifts[s] % 2 == 0) ? x_p : x_m;
                const int8_t *pg = g->point[y[2 * s + k] + ((y[M1_QH + s] << (8 - 4 * k)) & 0x700)];
                for (int j = 0; j < GROUP; j++) {
                    const float w = weight[8 * k + j], q = xx[(pg[j] - 1) / 2] * (float)(2 * l + 1);
                    sumqx += w * q * xb[8 * k + j];
                    sumq2 += w * q * q;
                }
            }
        }
        if (sumq2 > 0) d = sumqx / sumq2;
        const uint16_t h = gk_fp32_to_fp16(d * 1.1125f);
        sc[0] |= (uint16_t)((h & 0x000f) << 12);
        sc[1] |= (uint16_t)((h & 0x00f0) << 8);
        sc[2] |= (uint16_t)((h & 0x0f00) << 4);
        sc[3] |= (uint16_t)(h & 0xf000);
        memcpy(y + M1_SCALES, sc, sizeof sc);
    }
}

static void dequantize_row_iq1_m(const void *vy, float *x, int64_t n) {
    const uint8_t *y = (const uint8_t *)vy;
    for (int64_t b = 0; b < n / QK; b++, y += M1_BYTES) {
        uint16_t sc[4];
        memcpy(sc, y + M1_SCALES, sizeof sc);
        const uint16_t h = (uint16_t)((sc[0] >> 12) | ((sc[1] >> 8) & 0x00f0) | ((sc[2] >> 4) & 0x0f00) | (sc[3] & 0xf000));
        const float d = gk_fp16_to_fp32(h);
        for (int s = 0; s < QK / M1_SUB; s++) {
            const float dl = d * (float)(2 * ((sc[s / 4] >> (3 * (s % 4))) & 7) + 1);
            const uint8_t qh = y[M1_QH + s];
            for (int k = 0; k < 2; k++, x += GROUP) {
                const int j = y[2 * s + k] | (((qh >> (4 * k)) & 7) << 8);
                const float delta = (qh >> (4 * k + 3)) & 1 ? -IQ1_DELTA : IQ1_DELTA;
                const int code = IQ1S_GRID_CODES[j];
                for (int i = 0; i < GROUP; i++) x[i] = dl * ((float)(((code >> (2 * i)) & 3) - 1) + delta);
            }
        }
    }
}

// ---- SIMD row entry points (x86-64: the searches in AVX2 lanes; aarch64: the neighbour search in NEON lanes)
// (Later: IQ1_S / IQ1_M also sort by ranks in lanes and, on aarch64, run the split search in NEON; IQ2_XXS has an
// AVX-512 entry point; see the section "neighbour search in lanes" and BENCHMARKS.md.)
// Only IQ2_XXS and IQ2_XS (neighbour lists of 18 and 30 on average): measured 1.8x -> 2.0x and 2.1x -> 3.1x ggml
// on one thread. IQ2_S (lists of ~8) and the IQ3 types (quants_iq3.c, 4-coordinate groups) came out no faster
// with these list lanes; they run their scale trials in lanes instead (quants_iq_trials.h, IQ2_S's entry points in
// its section above: AVX2 / NEON; the IQ3 types also AVX-512).

#if defined(__x86_64__) || defined(__i386__)
static void quantize_row_iq2_xxs_avx2(const float *x, void *vy, int64_t n, const float *imatrix) {
    use_lanes = 1;
    quantize_row_iq2_xxs(x, vy, n, imatrix);
    use_lanes = 0;
}
static void quantize_row_iq2_xs_avx2(const float *x, void *vy, int64_t n, const float *imatrix) {
    use_lanes = 1;
    quantize_row_iq2_xs(x, vy, n, imatrix);
    use_lanes = 0;
}
static void quantize_row_iq1_s_avx2(const float *x, void *vy, int64_t n, const float *imatrix) {
    use_lanes = 1;
    quantize_row_iq1_s(x, vy, n, imatrix);
    use_lanes = 0;
}
static void quantize_row_iq1_m_avx2(const float *x, void *vy, int64_t n, const float *imatrix) {
    use_lanes = 1;
    quantize_row_iq1_m(x, vy, n, imatrix);
    use_lanes = 0;
}
// AVX-512: IQ2_XXS and IQ2_XS, their neighbour search sixteen neighbours per vector (AMD EPYC Zen 4, 1T, imatrix:
// IQ2_XXS 1.06-1.08x its AVX2 path, IQ2_XS 1.17x with lists of ~30; BENCHMARKS.md).
// IQ1_S and IQ1_M measured 0.93x their AVX2 path with the same search in AVX-512 (and IQ1_M's split search over
// sixteen split points per vector gained nothing: its walks, not its lanes, take the time), so they take AVX2.
#define IQ_WIDE_ENTRY(f)                                                        \
    static void f##_avx512(const float *x, void *vy, int64_t n, const float *imatrix) { \
        use_lanes = 1;                                                          \
        wide_lanes = 1;                                                         \
        f(x, vy, n, imatrix);                                                   \
        wide_lanes = 0;                                                         \
        use_lanes = 0;                                                          \
    }
IQ_WIDE_ENTRY(quantize_row_iq2_xxs)
IQ_WIDE_ENTRY(quantize_row_iq2_xs)
#define IQ_SIMD(f) f##_avx2, "avx2"
#define IQ1_SIMD(f) f##_avx2, "avx2"
#define IQ_WIDE(f) f##_avx512, "avx512"
#elif defined(__aarch64__)
// NEON: the neighbour search only (IQ2_XXS, IQ2_XS), byte-exact under qemu-aarch64 (tests/test_arm_kernels.py); not
// timed (emulated speed says nothing about ARM hardware).
static void quantize_row_iq2_xxs_neon(const float *x, void *vy, int64_t n, const float *imatrix) {
    use_lanes = 1;
    quantize_row_iq2_xxs(x, vy, n, imatrix);
    use_lanes = 0;
}
static void quantize_row_iq2_xs_neon(const float *x, void *vy, int64_t n, const float *imatrix) {
    use_lanes = 1;
    quantize_row_iq2_xs(x, vy, n, imatrix);
    use_lanes = 0;
}
// IQ1_S, IQ1_M: the sort by ranks, the split search and the neighbour search in NEON lanes (same check, not timed).
static void quantize_row_iq1_s_neon(const float *x, void *vy, int64_t n, const float *imatrix) {
    use_lanes = 1;
    quantize_row_iq1_s(x, vy, n, imatrix);
    use_lanes = 0;
}
static void quantize_row_iq1_m_neon(const float *x, void *vy, int64_t n, const float *imatrix) {
    use_lanes = 1;
    quantize_row_iq1_m(x, vy, n, imatrix);
    use_lanes = 0;
}
#define IQ_SIMD(f) f##_neon, "neon"
#define IQ1_SIMD(f) f##_neon, "neon"
#define IQ_WIDE(f) NULL, NULL
#else
#define IQ_SIMD(f) NULL, NULL
#define IQ1_SIMD(f) NULL, NULL
#define IQ_WIDE(f) NULL, NULL
#endif

// ---- table

const gk_type_traits gk_iq2_types[] = {
    {16, "IQ2_XXS", QK, XXS_BYTES, quantize_row_iq2_xxs, IQ_SIMD(quantize_row_iq2_xxs), dequantize_row_iq2_xxs,
     IQ_WIDE(quantize_row_iq2_xxs)},
    {17, "IQ2_XS", QK, XS_BYTES, quantize_row_iq2_xs, IQ_SIMD(quantize_row_iq2_xs), dequantize_row_iq2_xs,
     IQ_WIDE(quantize_row_iq2_xs)},
    {22, "IQ2_S", QK, S_BYTES, quantize_row_iq2_s, IQ2S_SIMD, dequantize_row_iq2_s},
    {19, "IQ1_S", QK, S1_BYTES, quantize_row_iq1_s, IQ1_SIMD(quantize_row_iq1_s), dequantize_row_iq1_s},
    {29, "IQ1_M", QK, M1_BYTES, quantize_row_iq1_m, IQ1_SIMD(quantize_row_iq1_m), dequantize_row_iq1_m},
    {0, NULL, 0, 0, NULL, NULL, NULL, NULL},
};
