// The GPTQ column loop of one block-wide group of columns (ggufkit.quant.gptq.encode_rows' inner loop) in C.
//
// Inside a group the scales are fixed (from the block's bytes); each column j in turn is rounded to the nearest
// level under them, its error e = (w_j - ŵ_j) / U[j][j] is kept, and fed to the group's later columns:
// w_k -= U[j][k] e for k > j. Every row is independent of the others, so rows are split over threads and, in a
// thread, processed in tiles of TILE rows (the group's columns of one tile stay in L1 while all g columns pass).
//
// The reference is the numpy code of gptq._Group.round and encode_rows, and the bytes must equal it
// (tests/test_gptq_native.py): the same f32 operations in the same order, each rounded once (the build has
// -ffp-contract=off, so no fused multiply-add):
//   uniform levels:  q = s != 0 ? clip(rint((w - o) / s), lo, hi) : 0,   ŵ = s q + o
//   table levels:    c_k = s t_k, q = the first k with the least |w - c_k|,  ŵ = c_q
//   error:           e = (w - ŵ) / U[j][j];   update: w_k = w_k - U[j][k] e  (numpy: w_k - outer(U[j], e))
// rint rounds half to even (the default rounding mode), as np.rint.
//
// Layouts (column-major over rows, as encode_rows keeps its transposed weights; `rows` is the row stride):
//   w, s, o: (g, rows) f32 (w updated in place); u: (g, ld) f32, u[j * ld + k] = U[a + j][a + k];
//   levels: (g, rows) i32 as the decoder stores them plus the type's shift; err: (g, rows) f32.
#include <math.h>
#include <stdint.h>

#include "ggufkit_quants.h"

enum { TILE = 32 };

// ---- one column of a tile: round, error

static void round_uniform(const float *w, const float *s, const float *o, float lo, float hi, int n, int32_t *q_out,
                          float *dec) {
    for (int i = 0; i < n; i++) {
        float q = 0.0f;
        if (s[i] != 0.0f) {
            q = rintf((w[i] - o[i]) / s[i]);
            q = q < lo ? lo : q;
            q = q > hi ? hi : q;
        }
        q_out[i] = (int32_t)q;
        dec[i] = s[i] * q + o[i];
    }
}

static void round_table(const float *w, const float *s, const float *table, int n, int32_t *q_out, float *dec) {
    for (int i = 0; i < n; i++) {
        float best_c = s[i] * table[0];
        float best = fabsf(w[i] - best_c);
        int32_t q = 0;
        for (int k = 1; k < 16; k++) {
            const float c = s[i] * table[k];
            const float d = fabsf(w[i] - c);
            if (d < best) {  // strict: the first minimum, as argmin
                best = d;
                best_c = c;
                q = k;
            }
        }
        q_out[i] = q;
        dec[i] = best_c;
    }
}

// ---- the column loop over one range of rows

void gk_gptq_group(float *w, const float *s, const float *o, const float *table, int lo, int hi, const float *u,
                   int64_t ld, int g, int64_t rows, int32_t *levels, float *err, int64_t row_begin, int64_t row_end) {
    float dec[TILE];
    for (int64_t r0 = row_begin; r0 < row_end; r0 += TILE) {
        const int n = (int)(row_end - r0 < TILE ? row_end - r0 : TILE);
        for (int j = 0; j < g; j++) {
            float *wj = w + j * rows + r0;
            const float *sj = s + j * rows + r0;
            int32_t *qj = levels + j * rows + r0;
            if (table != NULL)
                round_table(wj, sj, table, n, qj, dec);
            else
                round_uniform(wj, sj, o + j * rows + r0, (float)lo, (float)hi, n, qj, dec);
            float *ej = err + j * rows + r0;
            const float diag = u[j * ld + j];
            for (int i = 0; i < n; i++) ej[i] = (wj[i] - dec[i]) / diag;
            const float *uj = u + j * ld;
            for (int k = j + 1; k < g; k++) {
                float *wk = w + k * rows + r0;
                const float c = uj[k];
                for (int i = 0; i < n; i++) wk[i] = wk[i] - c * ej[i];
            }
        }
    }
}
