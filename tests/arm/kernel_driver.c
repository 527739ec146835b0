// kernel_driver — runs every block type of ggufkit's native core over one input file and writes the bytes, so
// builds for different CPUs (x86-64, and aarch64 under qemu-user) can be compared file by file.
//
//   kernel_driver ROWS COLS INPUT.f32 IMATRIX.f32 OUTDIR
//
// INPUT.f32 holds ROWS x COLS little-endian floats, IMATRIX.f32 COLS floats. For every type in the family tables
// and every path it has (plain, and the SIMD path when the type has one for this CPU), it writes
//   OUTDIR/<TYPE>.<plain|simd>.<none|imatrix>.q     ROWS x row_bytes quantized bytes
//   OUTDIR/<TYPE>.<plain|simd>.<none|imatrix>.f32   the same rows dequantized (plain dequantizer)
// and prints one line per file. Exit status 0 unless an argument or a file is wrong.
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ggufkit_quants.h"

// ---- files

static void *read_file(const char *path, size_t nbytes) {
    FILE *f = fopen(path, "rb");
    if (f == NULL) { perror(path); exit(2); }
    void *buf = malloc(nbytes);
    if (buf == NULL || fread(buf, 1, nbytes, f) != nbytes) { fprintf(stderr, "%s: short read\n", path); exit(2); }
    fclose(f);
    return buf;
}

static void write_file(const char *dir, const char *name, const void *buf, size_t nbytes) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    if (f == NULL || fwrite(buf, 1, nbytes, f) != nbytes || fclose(f) != 0) { perror(path); exit(2); }
    printf("%s %zu\n", name, nbytes);
}

// ---- one type, one path

static void run(const gk_type_traits *t, gk_quantize_row_fn fn, const char *path_name, const float *x,
                const float *im, int64_t rows, int64_t cols, const char *outdir) {
    const size_t row_bytes = (size_t)(cols / t->block_size) * (size_t)t->type_size;
    uint8_t *q = calloc((size_t)rows, row_bytes);
    float *back = calloc((size_t)(rows * cols), sizeof(float));
    if (q == NULL || back == NULL) { fprintf(stderr, "out of memory\n"); exit(2); }
    for (int64_t r = 0; r < rows; r++) {
        fn(x + r * cols, q + r * row_bytes, cols, im);
        t->dequantize_row(q + r * row_bytes, back + r * cols, cols);
    }
    char name[256];
    snprintf(name, sizeof name, "%s.%s.%s.q", t->name, path_name, im ? "imatrix" : "none");
    write_file(outdir, name, q, (size_t)rows * row_bytes);
    snprintf(name, sizeof name, "%s.%s.%s.f32", t->name, path_name, im ? "imatrix" : "none");
    write_file(outdir, name, back, (size_t)(rows * cols) * sizeof(float));
    free(q);
    free(back);
}

// ---- which SIMD paths this CPU can run (module.c decides the same way for the extension)

static int cpu_can(const char *feature) {
    if (feature == NULL) return 0;
#if defined(__x86_64__)
    __builtin_cpu_init();
    if (strcmp(feature, "avx2") == 0) return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c");
    return 0;
#elif defined(__aarch64__)
    return strcmp(feature, "neon") == 0;  // Advanced SIMD is mandatory on AArch64
#else
    return 0;
#endif
}

// ---- main

int main(int argc, char **argv) {
    if (argc != 6) {
        fprintf(stderr, "usage: %s ROWS COLS INPUT.f32 IMATRIX.f32 OUTDIR\n", argv[0]);
        return 2;
    }
    const int64_t rows = atoll(argv[1]), cols = atoll(argv[2]);
    if (rows <= 0 || cols <= 0 || cols % 256 != 0) { fprintf(stderr, "COLS must be a multiple of 256\n"); return 2; }
    const float *x = read_file(argv[3], (size_t)(rows * cols) * sizeof(float));
    const float *im = read_file(argv[4], (size_t)cols * sizeof(float));
    const gk_type_traits *families[] = {gk_legacy_types, gk_kquant_types, gk_iq4_types, gk_ternary_types,
                                          gk_fp4_types, gk_iq3_types,
                                                 gk_iq2_types};
    for (size_t f = 0; f < sizeof families / sizeof families[0]; f++) {
        for (const gk_type_traits *t = families[f]; t->name != NULL; t++) {
            // IQ2_XXS, IQ2_XS, IQ1_S: quantized only with importance weights (as in llama.cpp)
            const int needs_im = t->ggml_type == 16 || t->ggml_type == 17 || t->ggml_type == 19;
            for (int with_im = needs_im; with_im < 2; with_im++) {
                const float *w = with_im ? im : NULL;
                run(t, t->quantize_row, "plain", x, w, rows, cols, argv[5]);
                if (t->quantize_row_simd != NULL && cpu_can(t->simd_feature)) run(t, t->quantize_row_simd, "simd", x, w, rows, cols, argv[5]);
            }
        }
    }
    return 0;
}
