// IQ1_S's and IQ1_M's split search in SIMD lanes, written once with GCC vector extensions and included per backend
// (AVX2: 8 lanes, NEON: 4) and per type with its target attribute.
//
// The plain loop (quants_iq2.c) walks every candidate c = (i1, i2, k) in order (i1, then i2 >= i1, then the shift
// combination k) and keeps the running best b: c is taken when pass(c, b) = q2_c > 0 && qx_c * qx_c > b * q2_c,
// and then b = s_c = (qx_c / q2_c) * qx_c, the last taken one wins. In rounded floats s_c can fall a few ulps below
// the b it beat, so b is not monotone and "the first of the largest s" is not always the plain answer. Here:
//   1. every candidate's qx and q2 in lanes (lane j = i2 + j), with the plain loop's operations (the products of
//      i1 alone and of i2 alone formed once), stored; an estimate v of the largest score from qx^2 * rcp(q2),
//      lowered by 2^-10 (any positive v keeps the result exact, a close one keeps step 2 short);
//   2. the exact test pass(c, v_lo) (v_lo = v (1 - 2^-20)) on every candidate in lanes; the few that pass, in the
//      plain order, run through the plain loop's update with their exact s, tracking what b can be;
//   3. if anything is not decided (below), the caller runs the plain loop.
// Why 2 is the plain loop's answer: pass(c, b) only gets harder as b grows (IEEE products are monotone), so a
// candidate that fails against v_lo fails against every b >= v_lo. And one that fails against v_lo has
// s_c < U = v (1 - 2^-21): qx^2 <= v_lo q2 (1 + u) / (1 - u) and s_c <= qx^2 / q2 (1 + u)^2, so s_c <= v_lo (1 + 5u)
// < v (1 - 10u) < U (u = 2^-24; needs normal, finite intermediates: the caller checks the sub-block's range, see
// iq1_tame). So while b >= v_lo no skipped candidate is taken, and whenever b < v_lo, b is below U whatever the
// skipped ones did. Step 2 therefore keeps either b exactly (b >= v_lo) or only "b < U": then a passing candidate
// with pass(c, U) is taken for sure (b < U, monotone); one without is undecided: give up (return 0). At the end b
// must be exact and >= v_lo. Ties (equal s, zero weights) are walked as the plain loop walks them.
//
// The including file defines, before including this header:
//   IL_NAME    the function's name           IL_TARGET  function attribute (target ISA) or nothing
//   IL_VW      lanes per vector (4, 8)       IL_SUB     values per sub-block: 32 (IQ1_S) or 16 (IQ1_M)
//   IL_RCP(v)  an estimate of 1 / v per lane (any accuracy: it only steers the estimate v)
//   IL_MAX(a, b)  per-lane maximum, b where either is NaN     IL_BITS(m)  bit j = lane j of an int mask (0 / -1)
// IQ1_S: IL_NAME(sumx, sumw, x_p, x_m, &scale, &i1, &i2, &k): sumx, sumw the 33 prefix sums in sorted order (+ 8
// padding), k = 0 / 1 for shift +1 / -1. IQ1_M: IL_NAME(px, pw, txs, tws, p2, m2, cp1, cp2, cm1, cm2, &scale, &i1,
// &i2, &k): the per-half prefix sums and constants of the plain loop, k = 0..3 the shift signs of the two halves.
// Returns 1 with the plain loop's scale, i1, i2, k; 0 (outputs untouched) when the caller must run the plain loop.
#include <float.h>
#include <stdint.h>
#include <string.h>

// One lane width per translation unit: the types once, for both types' includes.
#ifndef QUANTS_IQ1_SPLIT_LANES
#define QUANTS_IQ1_SPLIT_LANES
typedef float il_vf __attribute__((vector_size(4 * IL_VW)));
typedef int32_t il_vi __attribute__((vector_size(4 * IL_VW)));
#define IL_CAT_(a, b) a##b
#define IL_CAT(a, b) IL_CAT_(a, b)
#endif

#if IL_SUB == 16
#define IL_K 4
#else
#define IL_K 2
#endif
// an upper bound on the chunks (i1, i2 .. i2 + IL_VW - 1): the sum over rows of ceil((IL_SUB + 1 - i1) / IL_VW)
#define IL_CHUNKS ((IL_SUB + 1) * (IL_SUB + 2) / (2 * IL_VW) + IL_SUB + 1)

// IL_VW floats from p (any alignment)
IL_TARGET static inline il_vf IL_CAT(IL_NAME, _ld)(const float *p) {
    il_vf v;
    memcpy(&v, p, sizeof v);
    return v;
}

#if IL_SUB == 16
IL_TARGET static int IL_NAME(const float px[2][IL_SUB + 1 + 8], const float pw[2][IL_SUB + 1 + 8],
                             const float *txs, const float *tws, float p2, float m2, float cp1, float cp2, float cm1,
                             float cm2, float *scale, int *besti1, int *besti2, int *best_k) {
    // (2 halves, IL_SUB + 1 + IL_VW) the last run's products pw[h][i2] * cp2, * cm2; NaN past i2 = IL_SUB, so that
    // the lanes past the end have q2 NaN: never positive, never passing
    float hp[2][IL_SUB + 1 + IL_VW], hm[2][IL_SUB + 1 + IL_VW];
    for (int h = 0; h < 2; h++)
        for (int i2 = 0; i2 <= IL_SUB + IL_VW; i2++) {
            hp[h][i2] = i2 <= IL_SUB ? pw[h][i2] * cp2 : __builtin_nanf("");
            hm[h][i2] = i2 <= IL_SUB ? pw[h][i2] * cm2 : __builtin_nanf("");
        }
    const float tp[2] = {txs[0] * p2, txs[1] * p2}, tm[2] = {txs[0] * m2, txs[1] * m2};
#define IL_ROW(i1)                                                                     \
    float x1[2], gp[2], gm[2];                                                         \
    for (int h = 0; h < 2; h++) {                                                      \
        x1[h] = px[h][i1];                                                             \
        gp[h] = tws[h] * p2 * p2 + pw[h][i1] * cp1;                                    \
        gm[h] = tws[h] * m2 * m2 + pw[h][i1] * cm1;                                    \
    }
#define IL_CANDIDATES(i2, qx, q2)                                                      \
    il_vf qx_p[2], qx_m[2], q2_p[2], q2_m[2];                                          \
    for (int h = 0; h < 2; h++) {                                                      \
        const il_vf sx = x1[h] + IL_CAT(IL_NAME, _ld)(px[h] + (i2));                   \
        qx_p[h] = tp[h] - sx;                                                          \
        qx_m[h] = tm[h] - sx;                                                          \
        q2_p[h] = gp[h] + IL_CAT(IL_NAME, _ld)(hp[h] + (i2));                          \
        q2_m[h] = gm[h] + IL_CAT(IL_NAME, _ld)(hm[h] + (i2));                          \
    }                                                                                  \
    /* k: shift signs of (first half, second half): 0 = ++, 1 = +-, 2 = -+, 3 = -- */  \
    const il_vf qx[4] = {qx_p[0] + qx_p[1], qx_p[0] + qx_m[1], qx_m[0] + qx_p[1], qx_m[0] + qx_m[1]}; \
    const il_vf q2[4] = {q2_p[0] + q2_p[1], q2_p[0] + q2_m[1], q2_m[0] + q2_p[1], q2_m[0] + q2_m[1]};
#else
IL_TARGET static int IL_NAME(const float *sumx, const float *sumw, const float *x_p, const float *x_m, float *scale,
                             int *besti1, int *besti2, int *best_k) {
    // (2 shifts, IL_SUB + 1 + IL_VW) the last run's products per i2; cw NaN past i2 = IL_SUB (lanes past the end)
    float cx[2][IL_SUB + 1 + IL_VW], cw[2][IL_SUB + 1 + IL_VW];
    const float *xs[2] = {x_p, x_m};
    for (int sh = 0; sh < 2; sh++)
        for (int i2 = 0; i2 <= IL_SUB + IL_VW; i2++) {
            cx[sh][i2] = i2 <= IL_SUB ? (sumx[IL_SUB] - sumx[i2]) * xs[sh][2] : 0.0f;
            cw[sh][i2] = i2 <= IL_SUB ? (sumw[IL_SUB] - sumw[i2]) * xs[sh][2] * xs[sh][2] : __builtin_nanf("");
        }
    const float l1 = x_p[1];
    // the middle run's products of shift -1 are those of +1 negated / equal: x * -l == -(x * l) exactly
#define IL_ROW(i1)                                                                     \
    const float a_p = (sumx[i1] - sumx[0]) * x_p[0], a_m = (sumx[i1] - sumx[0]) * x_m[0]; \
    const float d_p = (sumw[i1] - sumw[0]) * x_p[0] * x_p[0];                          \
    const float d_m = (sumw[i1] - sumw[0]) * x_m[0] * x_m[0];                          \
    const float sx1 = sumx[i1], sw1 = sumw[i1];
#define IL_CANDIDATES(i2, qx, q2)                                                      \
    const il_vf b = (IL_CAT(IL_NAME, _ld)(sumx + (i2)) - sx1) * l1;                    \
    const il_vf e = (IL_CAT(IL_NAME, _ld)(sumw + (i2)) - sw1) * l1 * l1;               \
    const il_vf qx[2] = {(a_p + b) + IL_CAT(IL_NAME, _ld)(cx[0] + (i2)),               \
                         (a_m - b) + IL_CAT(IL_NAME, _ld)(cx[1] + (i2))};              \
    const il_vf q2[2] = {(d_p + e) + IL_CAT(IL_NAME, _ld)(cw[0] + (i2)),               \
                         (d_m + e) + IL_CAT(IL_NAME, _ld)(cw[1] + (i2))};
#endif
    // 1. every candidate's qx and q2, chunk c = (i1, lanes i2 .. i2 + VW - 1). In a tame sub-block every q2 is
    // positive (at least the total weight / 65), the lanes past the end NaN: their estimate is NaN (IL_MAX skips
    // it) and they never pass. (A q2 <= 0 anyway: an estimate of inf or NaN, refused below; never taken in 2.)
    il_vf st_qx[IL_CHUNKS][IL_K], st_q2[IL_CHUNKS][IL_K];
    const il_vi none = {0};
    const il_vf zero = (il_vf)none;
    il_vf rmax = zero;
    int c = 0;
    for (int i1 = 0; i1 <= IL_SUB; i1++) {
        IL_ROW(i1)
        for (int i2 = i1; i2 <= IL_SUB; i2 += IL_VW, c++) {
            IL_CANDIDATES(i2, qx, q2)
            for (int k = 0; k < IL_K; k++) {
                rmax = IL_MAX(qx[k] * qx[k] * IL_RCP(q2[k]), rmax);
                st_qx[c][k] = qx[k];
                st_q2[c][k] = q2[k];
            }
        }
    }
    float v = 0.0f;
    for (int j = 0; j < IL_VW; j++) v = rmax[j] > v ? rmax[j] : v;
    v *= 1.0f - 0x1p-10f;
    if (!(v >= 0x1p-58f && v <= 0x1p100f)) return 0;
    const float v_lo = v * (1.0f - 0x1p-20f), upper = v * (1.0f - 0x1p-21f);
    // 2. the candidates passing v_lo, in the plain order, through the plain update; exact: b is known (else b < U)
    int exact = 0, i1_b = -1, i2_b = -1, k_b = -1;
    float b = 0.0f, scale_b = 0.0f;
    c = 0;
    for (int i1 = 0; i1 <= IL_SUB; i1++)
        for (int i2 = i1; i2 <= IL_SUB; i2 += IL_VW, c++) {
            il_vi t[IL_K], any = none;
            for (int k = 0; k < IL_K; k++) {
                t[k] = st_qx[c][k] * st_qx[c][k] > v_lo * st_q2[c][k];
                any |= t[k];
            }
            const unsigned lanes = IL_BITS(any);
            if (!lanes) continue;
            unsigned bits[IL_K];
            for (int k = 0; k < IL_K; k++) bits[k] = IL_BITS(t[k]);
            for (int j = __builtin_ctz(lanes); j < IL_VW; j++)
                for (int k = 0; k < IL_K; k++) {
                    if (!((bits[k] >> j) & 1)) continue;
                    const float q2 = st_q2[c][k][j], qx = st_qx[c][k][j], qq = qx * qx;
                    if (!(q2 > 0)) continue;   // never taken by the plain loop
                    if (exact && b < v_lo) exact = 0;
                    if (exact ? !(qq > b * q2) : !(qq > upper * q2)) {
                        if (exact) continue;
                        return 0;   // undecided: taken only if b (some value below U) is low enough
                    }
                    const float sc = qx / q2, s = sc * qx;
                    if (!(s >= 0.0f && s <= FLT_MAX)) return 0;
                    exact = 1;
                    b = s;
                    scale_b = sc;
                    i1_b = i1;
                    i2_b = i2 + j;
                    k_b = k;
                }
        }
    if (!exact || b < v_lo) return 0;
    *scale = scale_b;
    *besti1 = i1_b;
    *besti2 = i2_b;
    *best_k = k_b;
    return 1;
#undef IL_ROW
#undef IL_CANDIDATES
}

#undef IL_CHUNKS
#undef IL_K
