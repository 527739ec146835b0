// The scale trials of the lattice quantizers (IQ3_XXS, IQ3_S, IQ2_S) in SIMD lanes: lane t of a TL_VW-float vector
// is trial t (inverse scale (TL_TOP + (t - steps) * TL_STEP) / max), not a block. Written once with GCC vector
// extensions and included per backend (AVX2: 8 lanes, AVX-512: 16, NEON: 4) with its target attribute.
//
// A sub-block's fit tries 2 steps + 1 inverse scales (31 for IQ3_XXS, 19 for IQ3_S and IQ2_S). The plain loop
// does them one by one; per trial each group rounds to the lattice, searches the grid neighbours of the rounded
// point when it is off the grid (75-84% of the groups at each trial on normal data), and sums the weighted
// products. The trials are independent until the choice of the best, so here:
//   1. every trial's rounding runs in lanes (the same float operations per lane as the plain round_group);
//   2. per group, the trials are walked in order as runs of equal rounded points (the level of each coordinate
//      only grows with the inverse scale, so a group has ~3-5 runs over the trials): a run off the grid scans
//      its one neighbour list for all the run's trials at once, lane t with its own scale's distance table
//      (the same term floats as the plain best_neighbour, summed in coordinate order from 0.0f, strict < in list
//      order per lane: the first best, as in the plain scan);
//   3. the weighted sums run in lanes, element by element in the plain order;
//   4. the best trial is chosen one by one in trial order with the plain comparison.
// So every trial's levels, sums and the choice are the plain loop's, bit for bit (-ffp-contract=off, no
// reassociation: vector extensions are element-wise IEEE operations). The re-fit at the final scale stays in the
// plain code.
//
// The including file defines, before including this header:
//   TL_NAME      the function's name          TL_TARGET  function attribute (target ISA) or nothing
//   TL_VW        lanes per vector (4, 8, 16)  TL_LATTICE the lattice struct (point, index_of, nb_codes)
//   TL_GROUP     coordinates per group (4, 8) TL_BITS    bits per coordinate in a lattice code (3, 2)
//   TL_LEVELS    levels per coordinate (8, 3) TL_SUB     values per sub-block (32, 16)
//   TL_TOP       2 * max level - 1 (15, 5)    TL_STEP    the inverse-scale step (0.2f, 0.1f)
//   TL_NB_TERMS(g)  TL_GROUP bytes per entry of g->nb_codes: for neighbour coordinate i at level m, 8 * (i *
//                TL_LEVELS + m), the offset of its term in a group's table in units of 1/8 vector (an x86 address
//                scale of 2, 4 or 8 then reaches it: one load per term instead of a field extraction)
// The function: TL_NAME(g, xval, weight, waux, max, steps, L, on_grid, scale): runs the trials and, when one is
// taken, writes its levels to L (TL_SUB), its on-grid flags to on_grid (TL_SUB / TL_GROUP) and its scale to
// *scale; otherwise leaves all three as they are (as the plain loop does).
#include <float.h>
#include <stdint.h>
#include <string.h>

#define TL_CAT_(a, b) a##b
#define TL_CAT(a, b) TL_CAT_(a, b)
#define tl_vf TL_CAT(tl_vf_, TL_VW)
#define tl_vi TL_CAT(tl_vi_, TL_VW)

typedef float tl_vf __attribute__((vector_size(4 * TL_VW)));
typedef int32_t tl_vi __attribute__((vector_size(4 * TL_VW)));

TL_TARGET static void TL_NAME(const TL_LATTICE *g, const float *xval, const float *weight, const float *waux,
                              float max, int steps, int8_t *L, int *on_grid, float *scale_out) {
    enum { NT_MAX = 32, NC_MAX = NT_MAX / TL_VW, NG = TL_SUB / TL_GROUP, MASK = (1 << TL_BITS) - 1 };
    const int nt = 2 * steps + 1, nc = (nt + TL_VW - 1) / TL_VW;
    // (nc,) lanes of the trials' inverse scales and scales; lanes past the last trial repeat it (never chosen)
    tl_vf id[NC_MAX], sc[NC_MAX];
    for (int t = 0; t < nc * TL_VW; t++) {
        const int s = (t < nt ? t : nt - 1) - steps;
        const float v = (TL_TOP + s * TL_STEP) / max;
        id[t / TL_VW][t % TL_VW] = v;
        sc[t / TL_VW][t % TL_VW] = 1 / v;
    }
    // 1. rounding: code[k][t] = group k's rounded point at trial t (lattice code: TL_BITS per coordinate)
    int32_t code[NG][NT_MAX] __attribute__((aligned(64)));
    const tl_vi zero = {0}, top = zero + (TL_LEVELS - 1);
    for (int c = 0; c < nc; c++)
        for (int k = 0; k < NG; k++) {
            tl_vi u = zero;
            for (int i = 0; i < TL_GROUP; i++) {
                const tl_vf biased = 0.5f * (id[c] * xval[TL_GROUP * k + i] - 1.0f) + 12582912.0f;
                tl_vi l = ((tl_vi)biased & 0x007fffff) - 0x00400000;
                l &= ~(l < 0);
                const tl_vi over = l > top;
                l = (l & ~over) | (top & over);
                u |= l << (TL_BITS * i);
            }
            memcpy(&code[k][c * TL_VW], &u, sizeof u);
        }
    // 2. the neighbour searches, one per run of equal points, all of the run's trials at once; the pick replaces
    // the run's codes. sq[c][m] = scale * (2m + 1), the factor of every distance term (the same for every group).
    tl_vf sq[NC_MAX][TL_LEVELS];
    for (int c = 0; c < nc; c++)
        for (int m = 0; m < TL_LEVELS; m++) sq[c][m] = sc[c] * (float)(2 * m + 1);
    tl_vi lane = zero, off_grid[NC_MAX];       // off_grid[c] lane t: bit k set = group k off the grid
    for (int t = 0; t < TL_VW; t++) lane[t] = t;
    for (int c = 0; c < nc; c++) off_grid[c] = zero;
    // When no distance is below FLT_MAX (inputs near overflow), the plain scan keeps index -1 and reads the levels
    // of g->point[-1] (the bytes before the table); the same levels here, as a code.
    int fallback = 0;
    for (int i = 0; i < TL_GROUP; i++) fallback |= (((g->point[0] - TL_GROUP)[i] - 1) / 2 & MASK) << (TL_BITS * i);
    for (int k = 0; k < NG; k++) {
        const float *xk = xval + TL_GROUP * k, *wk = waux + TL_GROUP * k;
        tl_vf term[NC_MAX][TL_GROUP][TL_LEVELS];   // lane t: waux * (scale * (2m + 1) - x)^2 at trial t
        unsigned have_terms = 0;
        for (int a = 0; a < nt;) {
            const int u = code[k][a];
            int b = a + 1;
            while (b < nt && code[k][b] == u) b++;
            const int32_t where = g->index_of[u];
            if (where < 0) {
                const uint16_t *nbc = g->nb_codes - where - 1;
                const uint8_t *nbt = TL_NB_TERMS(g) + (size_t)TL_GROUP * (size_t)(-where - 1);
                const int n = nbc[0], h = (n + 1) / 2;
                for (int c = a / TL_VW; c <= (b - 1) / TL_VW; c++) {
                    if (!(have_terms & (1u << c))) {
                        have_terms |= 1u << c;
                        for (int i = 0; i < TL_GROUP; i++)
                            for (int m = 0; m < TL_LEVELS; m++) {
                                const tl_vf diff = sq[c][m] - xk[i];
                                term[c][i][m] = wk[i] * diff * diff;
                            }
                    }
                    // the list's two halves scanned side by side (two shorter dependency chains), each keeping
                    // its first best; the second half's wins only where strictly below: the first best of all
                    const tl_vf none = (tl_vf)(zero) + FLT_MAX;
                    tl_vf best_a = none, best_b = none;
                    tl_vi pick_a = zero + fallback, pick_b = pick_a;
                    const char *tc = (const char *)term[c];
#define TL_TERM(j, i) (*(const tl_vf *)(const void *)(tc + (size_t)nbt[TL_GROUP * (j) + (i)] * (sizeof(tl_vf) / 8)))
                    for (int j = 1; j <= h; j++) {
                        const int ca = nbc[j];
                        tl_vf da = (tl_vf)(zero) + 0.0f;
                        for (int i = 0; i < TL_GROUP; i++) da = da + TL_TERM(j, i);
                        const tl_vi lt_a = da < best_a;
                        best_a = (tl_vf)(((tl_vi)da & lt_a) | ((tl_vi)best_a & ~lt_a));
                        pick_a = ((zero + ca) & lt_a) | (pick_a & ~lt_a);
                        if (h + j > n) break;
                        const int cb = nbc[h + j];
                        tl_vf db = (tl_vf)(zero) + 0.0f;
                        for (int i = 0; i < TL_GROUP; i++) db = db + TL_TERM(h + j, i);
                        const tl_vi lt_b = db < best_b;
                        best_b = (tl_vf)(((tl_vi)db & lt_b) | ((tl_vi)best_b & ~lt_b));
                        pick_b = ((zero + cb) & lt_b) | (pick_b & ~lt_b);
                    }
#undef TL_TERM
                    const tl_vi second = best_b < best_a;
                    const tl_vi pick = (pick_b & second) | (pick_a & ~second);
                    const tl_vi t = lane + c * TL_VW, in_run = (t >= a) & (t < b);
                    tl_vi cur;
                    memcpy(&cur, &code[k][c * TL_VW], sizeof cur);
                    cur = (pick & in_run) | (cur & ~in_run);
                    memcpy(&code[k][c * TL_VW], &cur, sizeof cur);
                    off_grid[c] |= in_run & (1 << k);
                }
            }
            a = b;
        }
    }
    // 3. the weighted sums of every trial, element by element as the plain loop (levels from the codes)
    tl_vf sumqx[NC_MAX], sumq2[NC_MAX];
    for (int c = 0; c < nc; c++) {
        tl_vf sx = (tl_vf)(zero) + 0.0f, s2 = sx;
        for (int k = 0; k < NG; k++) {
            tl_vi u;
            memcpy(&u, &code[k][c * TL_VW], sizeof u);
            for (int i = 0; i < TL_GROUP; i++) {
                const int e = TL_GROUP * k + i;
                const tl_vf q = __builtin_convertvector(2 * ((u >> (TL_BITS * i)) & MASK) + 1, tl_vf);
                const float wx = weight[e] * xval[e];
                sx = sx + wx * q;
                s2 = s2 + weight[e] * q * q;
            }
        }
        sumqx[c] = sx;
        sumq2[c] = s2;
    }
    // 4. the choice, in trial order
    float best = 0.0f, scale = *scale_out;
    int taken = -1;
    for (int t = 0; t < nt; t++) {
        const float sx = sumqx[t / TL_VW][t % TL_VW], s2 = sumq2[t / TL_VW][t % TL_VW];
        if (s2 > 0 && sx * sx > best * s2) {
            scale = sx / s2;
            best = scale * sx;
            taken = t;
        }
    }
    if (taken < 0) return;
    for (int k = 0; k < NG; k++) {
        for (int i = 0; i < TL_GROUP; i++) L[TL_GROUP * k + i] = (int8_t)((code[k][taken] >> (TL_BITS * i)) & MASK);
        on_grid[k] = !((off_grid[taken / TL_VW][taken % TL_VW] >> k) & 1);
    }
    *scale_out = scale;
}

#undef tl_vf
#undef tl_vi
