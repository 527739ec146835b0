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
//   TL_VW        lanes per vector (4, 8, 16)  TL_LATTICE the lattice struct (codes, point, index_of, neighbours)
//   TL_GROUP     coordinates per group (4, 8) TL_BITS    bits per coordinate in a lattice code (3, 2)
//   TL_LEVELS    levels per coordinate (8, 3) TL_SUB     values per sub-block (32, 16)
//   TL_TOP       2 * max level - 1 (15, 5)    TL_STEP    the inverse-scale step (0.2f, 0.1f)
// The function: TL_NAME(g, xval, weight, waux, max, steps, L, on_grid, scale): runs the trials and, when one is
// taken, writes its levels to L (TL_SUB), its on-grid flags to on_grid (TL_SUB / TL_GROUP) and its scale to
// *scale; otherwise leaves all three as they are (as the plain loop does).
#include <float.h>
#include <stdint.h>

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
    // 1. rounding: lv[e][c] lane t = level index of value e at trial c * TL_VW + t; code[k][c] = group k's point
    tl_vi lv[TL_SUB][NC_MAX], code[NG][NC_MAX];
    const tl_vi zero = {0}, top = zero + (TL_LEVELS - 1);
    for (int c = 0; c < nc; c++)
        for (int k = 0; k < NG; k++) {
            tl_vi u = zero;
            for (int i = 0; i < TL_GROUP; i++) {
                const int e = TL_GROUP * k + i;
                const tl_vf biased = 0.5f * (id[c] * xval[e] - 1.0f) + 12582912.0f;
                tl_vi l = ((tl_vi)biased & 0x007fffff) - 0x00400000;
                l &= ~(l < 0);
                const tl_vi over = l > top;
                l = (l & ~over) | (top & over);
                lv[e][c] = l;
                u |= l << (TL_BITS * i);
            }
            code[k][c] = u;
        }
    // 2. the neighbour searches, one per run of equal points, all of the run's trials at once
    // sq[c][m] = scale * (2m + 1), the factor of every distance term (the same product for every group)
    tl_vf sq[NC_MAX][TL_LEVELS];
    for (int c = 0; c < nc; c++)
        for (int m = 0; m < TL_LEVELS; m++) sq[c][m] = sc[c] * (float)(2 * m + 1);
    uint32_t off_grid[NT_MAX] = {0};   // bit k: group k was off the grid at trial t
    for (int k = 0; k < NG; k++) {
        const float *xk = xval + TL_GROUP * k, *wk = waux + TL_GROUP * k;
        tl_vf term[NC_MAX][TL_GROUP][TL_LEVELS];   // lane t: waux * (scale * (2m + 1) - x)^2 at trial t
        unsigned have_terms = 0;
        for (int a = 0; a < nt;) {
            const int u = code[k][a / TL_VW][a % TL_VW];
            int b = a + 1;
            while (b < nt && code[k][b / TL_VW][b % TL_VW] == u) b++;
            const int32_t where = g->index_of[u];
            if (where < 0) {
                const uint16_t *nb = g->neighbours - where - 1;
                for (int c = a / TL_VW; c <= (b - 1) / TL_VW; c++) {
                    if (!(have_terms & (1u << c))) {
                        have_terms |= 1u << c;
                        for (int i = 0; i < TL_GROUP; i++)
                            for (int m = 0; m < TL_LEVELS; m++) {
                                const tl_vf diff = sq[c][m] - xk[i];
                                term[c][i][m] = wk[i] * diff * diff;
                            }
                    }
                    tl_vf best = (tl_vf)(zero) + FLT_MAX;
                    tl_vi best_j = zero - 1;
                    for (int j = 1; j <= nb[0]; j++) {
                        const int cj = g->codes[nb[j]];
                        tl_vf d2 = (tl_vf)(zero) + 0.0f;
                        for (int i = 0; i < TL_GROUP; i++) d2 = d2 + term[c][i][(cj >> (TL_BITS * i)) & MASK];
                        const tl_vi lt = d2 < best;
                        best = (tl_vf)(((tl_vi)d2 & lt) | ((tl_vi)best & ~lt));
                        best_j = ((zero + nb[j]) & lt) | (best_j & ~lt);
                    }
                    const int t_end = b < (c + 1) * TL_VW ? b : (c + 1) * TL_VW;
                    for (int t = a > c * TL_VW ? a : c * TL_VW; t < t_end; t++) {
                        const int8_t *pg = g->point[best_j[t % TL_VW]];
                        for (int i = 0; i < TL_GROUP; i++) lv[TL_GROUP * k + i][c][t % TL_VW] = (pg[i] - 1) / 2;
                        off_grid[t] |= 1u << k;
                    }
                }
            }
            a = b;
        }
    }
    // 3. the weighted sums of every trial, element by element as the plain loop
    tl_vf sumqx[NC_MAX], sumq2[NC_MAX];
    for (int c = 0; c < nc; c++) {
        tl_vf sx = (tl_vf)(zero) + 0.0f, s2 = sx;
        for (int e = 0; e < TL_SUB; e++) {
            const tl_vf q = __builtin_convertvector(2 * lv[e][c] + 1, tl_vf);
            const float wx = weight[e] * xval[e];
            sx = sx + wx * q;
            s2 = s2 + weight[e] * q * q;
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
    for (int e = 0; e < TL_SUB; e++) L[e] = (int8_t)lv[e][taken / TL_VW][taken % TL_VW];
    for (int k = 0; k < NG; k++) on_grid[k] = !((off_grid[taken] >> k) & 1);
    *scale_out = scale;
}

#undef tl_vf
#undef tl_vi
