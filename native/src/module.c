// The CPython binding of the quantization core: type lookup, row-parallel quantize / dequantize with the GIL
// released, a finiteness scan, and the run-time choice between the plain and SIMD paths.
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <pthread.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "ggufkit_quants.h"

// ---- type registry

static const gk_type_traits *const families[] = {gk_legacy_types, gk_kquant_types, gk_iq4_types,
                                                 gk_ternary_types, gk_fp4_types, gk_iq3_types,
                                                 gk_iq2_types};

static const gk_type_traits *find_type(int ggml_type) {
    for (size_t f = 0; f < sizeof families / sizeof families[0]; f++)
        for (const gk_type_traits *t = families[f]; t->name != NULL; t++)
            if (t->ggml_type == ggml_type) return t;
    return NULL;
}

static int cpu_has(const char *feature) {
    if (feature == NULL) return 0;
#if defined(__x86_64__) || defined(__i386__)
    // The AVX2 paths also convert fp16 in hardware (F16C); every AVX2 CPU has it, but say so.
    if (strcmp(feature, "avx2") == 0) return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c");
    // AVX-512 paths use F (the arithmetic), DQ (256-bit halves), BW and VL; libgcc's check includes the OS's
    // support for the 512-bit register state (XGETBV), so a hypervisor that hides it is respected.
    if (strcmp(feature, "avx512") == 0)
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
               __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") && cpu_has("avx2");
    return 0;
#elif defined(__aarch64__)
    return strcmp(feature, "neon") == 0;  // Advanced SIMD is mandatory on AArch64
#else
    return 0;
#endif
}

static int env_flag(const char *name) {
    const char *v = getenv(name);
    return v != NULL && v[0] != '\0' && strcmp(v, "0") != 0;
}

// The widest path the CPU runs, unless forced lower: GGUFKIT_FORCE_SCALAR=1 takes the plain C reference,
// GGUFKIT_FORCE_AVX2=1 the 8-lane path (AVX2 / NEON) where a type also has a wider one (AVX-512).
static gk_quantize_row_fn pick_quantizer(const gk_type_traits *t, const char **path) {
    const char *unused;
    if (path == NULL) path = &unused;
    if (!env_flag("GGUFKIT_FORCE_SCALAR")) {
        if (t->quantize_row_wide != NULL && !env_flag("GGUFKIT_FORCE_AVX2") && cpu_has(t->wide_feature)) {
            *path = t->wide_feature;
            return t->quantize_row_wide;
        }
        if (t->quantize_row_simd != NULL && cpu_has(t->simd_feature)) {
            *path = t->simd_feature;
            return t->quantize_row_simd;
        }
    }
    *path = "plain";
    return t->quantize_row;
}

// ---- row-parallel work

typedef struct {
    const gk_type_traits *type;
    gk_quantize_row_fn quantize;
    const float *x;           // (rows, cols) f32
    uint8_t *y;               // (rows, row_bytes) u8
    const float *imatrix;     // (cols,) f32 or NULL
    int64_t row_begin, row_end, cols, row_bytes;
    int dequant;
    int64_t bad_row;          // quantize: the first row of this range holding a NaN/Inf (then it stops), or -1
} rows_job;

static Py_ssize_t count_nonfinite(const uint32_t *bits, Py_ssize_t n);

// Rows per call when short rows are joined: enough that the blocks fill whole 16-lane vectors (16 / gcd(blocks,
// 16) rows); rows of 64 blocks or more gain nothing from it.
static int64_t rows_per_call(const rows_job *j) {
    const int64_t blocks = j->cols / j->type->block_size;
    if (j->dequant || !j->type->blocks_independent || j->quantize == j->type->quantize_row || blocks >= 64) return 1;
    int64_t a = blocks, b = 16;
    while (b) { const int64_t t = a % b; a = b; b = t; }
    return 16 / a;
}

// Asks for the next row's cache lines before a row is quantized (a hint: it never faults), so that its finiteness
// scan reads from cache instead of waiting on memory (measured: the scan, the first touch of each row, was 6-10% of
// a Q3_K / Q6_K row on AVX-512; the quantization of a row is long enough to bring the next one in).
static void prefetch_row(const float *x, int64_t n) {
    for (int64_t i = 0; i < n; i += 16) __builtin_prefetch(x + i, 0, 2);  // to L2 (prefetcht1): into L1 it would evict the row being quantized
}

// Rows [r, r + n) as one long row (contiguous in x and y): the imatrix repeats per row, in `im_rep`.
static int64_t run_joined(rows_job *j, int64_t r, int64_t n, float *im_rep) {
    for (int64_t k = 0; k < n; k++)
        if (count_nonfinite((const uint32_t *)(const void *)(j->x + (r + k) * j->cols), (Py_ssize_t)j->cols) != 0)
            return r + k;
    if (r + 2 * n <= j->row_end) prefetch_row(j->x + (r + n) * j->cols, n * j->cols);
    j->quantize(j->x + r * j->cols, j->y + r * j->row_bytes, n * j->cols, j->imatrix ? im_rep : NULL);
    return -1;
}

static void *run_rows(void *arg) {
    rows_job *j = (rows_job *)arg;
    j->bad_row = -1;
    const int64_t join = rows_per_call(j);
    int64_t r = j->row_begin;
    if (join > 1 && j->row_end - r >= join) {
        float *im_rep = NULL;
        if (j->imatrix) {
            im_rep = (float *)malloc((size_t)(join * j->cols) * sizeof(float));
            for (int64_t k = 0; im_rep != NULL && k < join; k++)
                memcpy(im_rep + k * j->cols, j->imatrix, (size_t)j->cols * sizeof(float));
        }
        if (im_rep != NULL || j->imatrix == NULL) {  // (no memory: the rows go one by one below)
            for (; r + join <= j->row_end; r += join) {
                const int64_t bad = run_joined(j, r, join, im_rep);
                if (bad >= 0) {
                    j->bad_row = bad;
                    free(im_rep);
                    return NULL;
                }
            }
        }
        free(im_rep);
    }
    for (; r < j->row_end; r++) {
        if (j->dequant) {
            j->type->dequantize_row(j->y + r * j->row_bytes, (float *)j->x + r * j->cols, j->cols);
            continue;
        }
        // The finiteness check rides along, row by row, while the row is in cache (a separate pass over the whole
        // input cost ~10% of Q3_K's time); the caller reports the error and discards the output.
        const float *row = j->x + r * j->cols;
        if (count_nonfinite((const uint32_t *)(const void *)row, (Py_ssize_t)j->cols) != 0) {
            j->bad_row = r;
            return NULL;
        }
        if (r + 1 < j->row_end) prefetch_row(row + j->cols, j->cols);
        j->quantize(row, j->y + r * j->row_bytes, j->cols, j->imatrix);
    }
    return NULL;
}

// ---- threads
//
// A job is split into `threads` contiguous ranges, one per thread; the calling thread takes the first. Which
// thread does which range never changes the bytes: every row (and every searched block) is encoded on its own.
enum { MAX_THREADS = 256 };

static int clamp_threads(int threads, int64_t n) {
    if (threads > MAX_THREADS) threads = MAX_THREADS;
    if (threads > n) threads = (int)n;
    return threads < 1 ? 1 : threads;
}

// Runs fn on each of the n job structs at `jobs` (`size` bytes apart): jobs 1..n-1 on new threads, job 0 on the
// calling thread; a job whose thread cannot start runs here too. Returns when all have finished.
static void run_jobs(void *(*fn)(void *), char *jobs, size_t size, int n) {
    pthread_t tids[MAX_THREADS];
    int joinable[MAX_THREADS] = {0};
    for (int i = 1; i < n; i++) {
        if (pthread_create(&tids[i], NULL, fn, jobs + (size_t)i * size) == 0)
            joinable[i] = 1;
        else
            fn(jobs + (size_t)i * size);
    }
    fn(jobs);
    for (int i = 1; i < n; i++)
        if (joinable[i]) pthread_join(tids[i], NULL);
}

// Copies job 0 (`size` bytes) to jobs 1..n-1 and gives job i the range [total i / n, total (i + 1) / n) in its
// int64_t fields at byte offsets `begin` and `end`.
static void split_ranges(char *jobs, size_t size, int n, int64_t total, size_t begin, size_t end) {
    for (int i = 0; i < n; i++) {
        char *job = jobs + (size_t)i * size;
        if (i > 0) memcpy(job, jobs, size);
        const int64_t b = total * i / n, e = total * (i + 1) / n;
        memcpy(job + begin, &b, sizeof b);
        memcpy(job + end, &e, sizeof e);
    }
}

// [0, rows) over the threads; returns the first row (over all ranges) a quantize job found non-finite, or -1.
static int64_t run_parallel(rows_job base, int64_t rows, int threads) {
    threads = clamp_threads(threads, rows);
    rows_job jobs[MAX_THREADS];
    jobs[0] = base;
    split_ranges((char *)jobs, sizeof jobs[0], threads, rows, offsetof(rows_job, row_begin),
                 offsetof(rows_job, row_end));
    run_jobs(run_rows, (char *)jobs, sizeof jobs[0], threads);
    for (int i = 0; i < threads; i++)
        if (jobs[i].bad_row >= 0) return jobs[i].bad_row;  // ranges are in row order: the first one found
    return -1;
}

// ---- Python functions

static int get_buffer(PyObject *obj, Py_buffer *view, int writable, const char *what) {
    if (PyObject_GetBuffer(obj, view, PyBUF_C_CONTIGUOUS | (writable ? PyBUF_WRITABLE : 0)) != 0) {
        PyErr_Format(PyExc_TypeError, "%s must be a C-contiguous%s buffer", what, writable ? " writable" : "");
        return -1;
    }
    return 0;
}

static const gk_type_traits *type_or_raise(int ggml_type) {
    const gk_type_traits *t = find_type(ggml_type);
    if (t == NULL) PyErr_Format(PyExc_ValueError, "GGML type %d has no native quantizer", ggml_type);
    return t;
}

PyDoc_STRVAR(quantize_doc,
    "quantize(ggml_type, x, rows, cols, imatrix, threads, out) -> (nonfinite_count, first_index)\n"
    "x: (rows, cols) f32 buffer; imatrix: (cols,) f32 buffer or None; out: (rows, row_bytes) u8 buffer.\n"
    "Shapes are checked by ggufkit.quant; this only checks buffer sizes. x is checked for NaN/Inf row by row as\n"
    "it is quantized: (0, -1) when it is finite; otherwise the count of non-finite values in x and the flat index\n"
    "of the first, and out holds partial garbage. The imatrix is not checked.");

static PyObject *py_quantize(PyObject *self, PyObject *args) {
    (void)self;
    int ggml_type, threads;
    Py_ssize_t rows, cols;
    PyObject *xo, *imo, *outo;
    if (!PyArg_ParseTuple(args, "iOnnOiO", &ggml_type, &xo, &rows, &cols, &imo, &threads, &outo)) return NULL;
    const gk_type_traits *t = type_or_raise(ggml_type);
    if (t == NULL) return NULL;
    if (rows < 0 || cols <= 0 || cols % t->block_size != 0)
        return PyErr_Format(PyExc_ValueError, "%s: cols=%zd is not a positive multiple of the block size %d",
                            t->name, cols, t->block_size);
    Py_buffer xb, ob, ib;
    int has_im = imo != Py_None;
    if (!has_im && (ggml_type == 16 || ggml_type == 17 || ggml_type == 19))  // IQ2_XXS, IQ2_XS, IQ1_S
        return PyErr_Format(PyExc_ValueError, "%s is quantized only with importance weights", t->name);
    if (get_buffer(xo, &xb, 0, "x") != 0) return NULL;
    if (get_buffer(outo, &ob, 1, "out") != 0) { PyBuffer_Release(&xb); return NULL; }
    if (has_im && get_buffer(imo, &ib, 0, "imatrix") != 0) {
        PyBuffer_Release(&xb); PyBuffer_Release(&ob); return NULL;
    }
    int64_t row_bytes = (int64_t)(cols / t->block_size) * t->type_size;
    PyObject *result = NULL;
    if (xb.len != (Py_ssize_t)(rows * cols * 4) || ob.len != (Py_ssize_t)(rows * row_bytes) ||
        (has_im && ib.len != (Py_ssize_t)(cols * 4))) {
        PyErr_SetString(PyExc_ValueError, "buffer sizes do not match rows, cols and the type");
    } else {
        rows_job job = {t, pick_quantizer(t, NULL), (const float *)xb.buf, (uint8_t *)ob.buf,
                        has_im ? (const float *)ib.buf : NULL, 0, 0, cols, row_bytes, 0, -1};
        Py_ssize_t count = 0, first = -1;
        Py_BEGIN_ALLOW_THREADS
        const int64_t bad = run_parallel(job, rows, threads);
        if (bad >= 0) {  // rare: count over the whole input, the first from the first bad row
            const uint32_t *bits = (const uint32_t *)xb.buf;
            count = count_nonfinite(bits, (Py_ssize_t)(rows * cols));
            for (Py_ssize_t i = (Py_ssize_t)(bad * cols); i < (Py_ssize_t)(rows * cols); i++)
                if ((bits[i] & 0x7f800000u) == 0x7f800000u) { first = i; break; }
        }
        Py_END_ALLOW_THREADS
        result = Py_BuildValue("nn", count, first);
    }
    PyBuffer_Release(&xb);
    PyBuffer_Release(&ob);
    if (has_im) PyBuffer_Release(&ib);
    return result;
}

PyDoc_STRVAR(dequantize_doc,
    "dequantize(ggml_type, data, rows, cols, threads, out)\n"
    "data: (rows, row_bytes) u8 buffer; out: (rows, cols) f32 writable buffer.");

static PyObject *py_dequantize(PyObject *self, PyObject *args) {
    (void)self;
    int ggml_type, threads;
    Py_ssize_t rows, cols;
    PyObject *yo, *outo;
    if (!PyArg_ParseTuple(args, "iOnniO", &ggml_type, &yo, &rows, &cols, &threads, &outo)) return NULL;
    const gk_type_traits *t = type_or_raise(ggml_type);
    if (t == NULL) return NULL;
    if (rows < 0 || cols <= 0 || cols % t->block_size != 0)
        return PyErr_Format(PyExc_ValueError, "%s: cols=%zd is not a positive multiple of the block size %d",
                            t->name, cols, t->block_size);
    Py_buffer yb, ob;
    if (get_buffer(yo, &yb, 0, "data") != 0) return NULL;
    if (get_buffer(outo, &ob, 1, "out") != 0) { PyBuffer_Release(&yb); return NULL; }
    int64_t row_bytes = (int64_t)(cols / t->block_size) * t->type_size;
    PyObject *result = NULL;
    if (yb.len != (Py_ssize_t)(rows * row_bytes) || ob.len != (Py_ssize_t)(rows * cols * 4)) {
        PyErr_SetString(PyExc_ValueError, "buffer sizes do not match rows, cols and the type");
    } else {
        rows_job job = {t, NULL, (const float *)ob.buf, (uint8_t *)yb.buf, NULL, 0, 0, cols, row_bytes, 1, -1};
        Py_BEGIN_ALLOW_THREADS
        run_parallel(job, rows, threads);
        Py_END_ALLOW_THREADS
        result = Py_NewRef(Py_None);
    }
    PyBuffer_Release(&yb);
    PyBuffer_Release(&ob);
    return result;
}

PyDoc_STRVAR(scan_nonfinite_doc,
    "scan_nonfinite(x) -> (count, first_index)\n"
    "Counts NaN/Inf in a C-contiguous f32 buffer; first_index is the flat index of the first, or -1.");

// NaN and Inf are the floats whose exponent bits are all ones: a branch-free bit test the compiler vectorises
// (baseline x86-64: SSE2, 4 per instruction).
static Py_ssize_t count_nonfinite_plain(const uint32_t *bits, Py_ssize_t n) {
    Py_ssize_t count = 0;
    for (Py_ssize_t i = 0; i < n; i++) count += (bits[i] & 0x7f800000u) == 0x7f800000u;
    return count;
}

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
// The same test 8 (AVX2) or 16 (AVX-512) at a time, four vectors per step: it runs on every row before the row
// is quantized (on every path), so at SSE2 width it was ~10% of a Q6_K row on AVX-512. Per-lane counters are
// reduced every 2^24 values (at most 2^21 per lane: no overflow for any n).
enum { NONFINITE_CHUNK = 1 << 24 };

__attribute__((target("avx2"))) static Py_ssize_t count_nonfinite_avx2(const uint32_t *bits, Py_ssize_t n) {
    const __m256i e = _mm256_set1_epi32(0x7f800000);
    Py_ssize_t count = 0, i = 0;
    while (n - i >= 32) {
        const Py_ssize_t end = i + ((n - i) / 32 * 32 < NONFINITE_CHUNK ? (n - i) / 32 * 32 : NONFINITE_CHUNK);
        __m256i acc = _mm256_setzero_si256();  // lanes hold minus the count (cmpeq gives -1)
        for (; i < end; i += 32) {
            const __m256i a = _mm256_loadu_si256((const __m256i *)(const void *)(bits + i));
            const __m256i b = _mm256_loadu_si256((const __m256i *)(const void *)(bits + i + 8));
            const __m256i c = _mm256_loadu_si256((const __m256i *)(const void *)(bits + i + 16));
            const __m256i d = _mm256_loadu_si256((const __m256i *)(const void *)(bits + i + 24));
            const __m256i ab = _mm256_add_epi32(_mm256_cmpeq_epi32(_mm256_and_si256(a, e), e),
                                                _mm256_cmpeq_epi32(_mm256_and_si256(b, e), e));
            const __m256i cd = _mm256_add_epi32(_mm256_cmpeq_epi32(_mm256_and_si256(c, e), e),
                                                _mm256_cmpeq_epi32(_mm256_and_si256(d, e), e));
            acc = _mm256_add_epi32(acc, _mm256_add_epi32(ab, cd));
        }
        int32_t lanes[8];
        _mm256_storeu_si256((__m256i *)(void *)lanes, acc);
        for (int k = 0; k < 8; k++) count -= lanes[k];
    }
    return count + count_nonfinite_plain(bits + i, n - i);
}

__attribute__((target("avx512f,avx512bw"))) static Py_ssize_t count_nonfinite_avx512(const uint32_t *bits,
                                                                                     Py_ssize_t n) {
    const __m512i e = _mm512_set1_epi32(0x7f800000), one = _mm512_set1_epi32(1);
    Py_ssize_t count = 0, i = 0;
    while (n - i >= 64) {
        const Py_ssize_t end = i + ((n - i) / 64 * 64 < NONFINITE_CHUNK ? (n - i) / 64 * 64 : NONFINITE_CHUNK);
        __m512i acc = _mm512_setzero_si512();
        for (; i < end; i += 64) {
            const __m512i a = _mm512_loadu_si512((const void *)(bits + i));
            const __m512i b = _mm512_loadu_si512((const void *)(bits + i + 16));
            const __m512i c = _mm512_loadu_si512((const void *)(bits + i + 32));
            const __m512i d = _mm512_loadu_si512((const void *)(bits + i + 48));
            acc = _mm512_mask_add_epi32(acc, _mm512_cmpeq_epi32_mask(_mm512_and_si512(a, e), e), acc, one);
            acc = _mm512_mask_add_epi32(acc, _mm512_cmpeq_epi32_mask(_mm512_and_si512(b, e), e), acc, one);
            acc = _mm512_mask_add_epi32(acc, _mm512_cmpeq_epi32_mask(_mm512_and_si512(c, e), e), acc, one);
            acc = _mm512_mask_add_epi32(acc, _mm512_cmpeq_epi32_mask(_mm512_and_si512(d, e), e), acc, one);
        }
        count += _mm512_reduce_add_epi32(acc);
    }
    return count + count_nonfinite_plain(bits + i, n - i);
}
#endif

// The widest scan the CPU runs (the choice is made once; GGUFKIT_FORCE_* do not apply: every scan gives the
// same count).
static Py_ssize_t count_nonfinite(const uint32_t *bits, Py_ssize_t n) {
#if defined(__x86_64__) || defined(__i386__)
    static int width = -1;  // 0 plain, 1 AVX2, 2 AVX-512 (a benign race: every thread computes the same value)
    if (width < 0) width = cpu_has("avx512") ? 2 : cpu_has("avx2") ? 1 : 0;
    if (width == 2) return count_nonfinite_avx512(bits, n);
    if (width == 1) return count_nonfinite_avx2(bits, n);
#endif
    return count_nonfinite_plain(bits, n);
}

static PyObject *py_scan_nonfinite(PyObject *self, PyObject *arg) {
    (void)self;
    Py_buffer xb;
    if (get_buffer(arg, &xb, 0, "x") != 0) return NULL;
    const uint32_t *bits = (const uint32_t *)xb.buf;
    Py_ssize_t n = xb.len / 4, count = 0, first = -1;
    Py_BEGIN_ALLOW_THREADS
    count = count_nonfinite(bits, n);
    for (Py_ssize_t i = 0; count > 0 && i < n; i++) {
        if ((bits[i] & 0x7f800000u) == 0x7f800000u) { first = i; break; }
    }
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&xb);
    return Py_BuildValue("nn", count, first);
}

PyDoc_STRVAR(search_k_doc,
    "search_k(ggml_type, x, w, w_blocks, data, nb, threads, out)\n"
    "The K-quant scale search (search_k.c, = ggufkit.quant.rounding.refine_blocks' numpy code): x (nb, 256) f32,\n"
    "w (w_blocks, 256) f32 (block b uses row b % w_blocks), data and out (nb, block bytes) u8.");

typedef struct {
    int ggml_type;
    const float *x, *w;
    int64_t w_blocks;
    const uint8_t *in;
    uint8_t *out;
    int64_t begin, end;
} search_job;

static void *run_search(void *arg) {
    search_job *j = (search_job *)arg;
    gk_search_k(j->ggml_type, j->x, j->w, j->w_blocks, j->in, j->out, j->begin, j->end);
    return NULL;
}

// [0, nb) over the threads, as run_parallel.
static void search_parallel(search_job base, int64_t nb, int threads) {
    threads = clamp_threads(threads, nb);
    search_job jobs[MAX_THREADS];
    jobs[0] = base;
    split_ranges((char *)jobs, sizeof jobs[0], threads, nb, offsetof(search_job, begin), offsetof(search_job, end));
    run_jobs(run_search, (char *)jobs, sizeof jobs[0], threads);
}

static PyObject *py_search_k(PyObject *self, PyObject *args) {
    (void)self;
    int ggml_type, threads;
    Py_ssize_t w_blocks, nb;
    PyObject *xo, *wo, *dato, *outo;
    if (!PyArg_ParseTuple(args, "iOOnOniO", &ggml_type, &xo, &wo, &w_blocks, &dato, &nb, &threads, &outo))
        return NULL;
    const int bb = gk_search_k_block_bytes(ggml_type);
    if (bb == 0) return PyErr_Format(PyExc_ValueError, "GGML type %d has no scale search", ggml_type);
    if (nb < 0 || w_blocks < 1) return PyErr_Format(PyExc_ValueError, "nb=%zd, w_blocks=%zd", nb, w_blocks);
    Py_buffer xb, wb, db, ob;
    if (get_buffer(xo, &xb, 0, "x") != 0) return NULL;
    if (get_buffer(wo, &wb, 0, "w") != 0) { PyBuffer_Release(&xb); return NULL; }
    if (get_buffer(dato, &db, 0, "data") != 0) { PyBuffer_Release(&xb); PyBuffer_Release(&wb); return NULL; }
    if (get_buffer(outo, &ob, 1, "out") != 0) {
        PyBuffer_Release(&xb); PyBuffer_Release(&wb); PyBuffer_Release(&db); return NULL;
    }
    PyObject *result = NULL;
    if (xb.len != nb * 256 * 4 || wb.len != w_blocks * 256 * 4 || db.len != nb * bb || ob.len != nb * bb) {
        PyErr_SetString(PyExc_ValueError, "buffer sizes do not match nb, w_blocks and the type");
    } else {
        search_job job = {ggml_type, (const float *)xb.buf, (const float *)wb.buf, w_blocks,
                          (const uint8_t *)db.buf, (uint8_t *)ob.buf, 0, 0};
        Py_BEGIN_ALLOW_THREADS
        if (nb > 0) search_parallel(job, nb, threads);
        Py_END_ALLOW_THREADS
        result = Py_NewRef(Py_None);
    }
    PyBuffer_Release(&xb);
    PyBuffer_Release(&wb);
    PyBuffer_Release(&db);
    PyBuffer_Release(&ob);
    return result;
}

PyDoc_STRVAR(gptq_group_doc,
    "gptq_group(w, s, o, table, lo, hi, u, ld, g, rows, levels, err, threads)\n"
    "The GPTQ column loop of one group (gptq.c, = ggufkit.quant.gptq's numpy loop): w, s, o (g, rows) f32\n"
    "(w updated in place), table 16 f32 or None (levels lo..hi), u: f32 buffer holding (g, ld) rows of U from\n"
    "the group's diagonal, levels (g, rows) i32 and err (g, rows) f32 written.");

typedef struct {
    float *w;
    const float *s, *o, *table, *u;
    int lo, hi, g;
    int64_t ld, rows;
    int32_t *levels;
    float *err;
    int64_t begin, end;
} gptq_job;

static void *run_gptq(void *arg) {
    gptq_job *j = (gptq_job *)arg;
    gk_gptq_group(j->w, j->s, j->o, j->table, j->lo, j->hi, j->u, j->ld, j->g, j->rows, j->levels, j->err,
                  j->begin, j->end);
    return NULL;
}

static PyObject *py_gptq_group(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *wo, *so, *oo, *to, *uo, *lo_, *eo;
    int lo, hi, g, threads;
    Py_ssize_t ld, rows;
    if (!PyArg_ParseTuple(args, "OOOOiiOninOOi", &wo, &so, &oo, &to, &lo, &hi, &uo, &ld, &g, &rows, &lo_, &eo,
                          &threads))
        return NULL;
    if (g < 1 || rows < 0 || ld < g) return PyErr_Format(PyExc_ValueError, "g=%d, rows=%zd, ld=%zd", g, rows, ld);
    Py_buffer b[7];
    PyObject *objs[7] = {wo, so, oo, uo, lo_, eo, to};
    const char *names[7] = {"w", "s", "o", "u", "levels", "err", "table"};
    const int writable[7] = {1, 0, 0, 0, 1, 1, 0};
    const int n_buf = to == Py_None ? 6 : 7;
    for (int i = 0; i < n_buf; i++) {
        if (get_buffer(objs[i], &b[i], writable[i], names[i]) != 0) {
            for (int k = 0; k < i; k++) PyBuffer_Release(&b[k]);
            return NULL;
        }
    }
    const Py_ssize_t plane = (Py_ssize_t)g * rows * 4;
    PyObject *result = NULL;
    if (b[0].len != plane || b[1].len != plane || b[2].len != plane || b[4].len != plane || b[5].len != plane ||
        b[3].len < ((Py_ssize_t)(g - 1) * ld + g) * 4 || (n_buf == 7 && b[6].len != 16 * 4)) {
        PyErr_SetString(PyExc_ValueError, "buffer sizes do not match g, rows and ld");
    } else {
        gptq_job base = {(float *)b[0].buf, (const float *)b[1].buf, (const float *)b[2].buf,
                         n_buf == 7 ? (const float *)b[6].buf : NULL, (const float *)b[3].buf, lo, hi, g, ld, rows,
                         (int32_t *)b[4].buf, (float *)b[5].buf, 0, 0};
        Py_BEGIN_ALLOW_THREADS
        const int n = clamp_threads(threads, rows > 0 ? rows : 1);
        gptq_job jobs[MAX_THREADS];
        jobs[0] = base;
        split_ranges((char *)jobs, sizeof jobs[0], n, rows, offsetof(gptq_job, begin), offsetof(gptq_job, end));
        run_jobs(run_gptq, (char *)jobs, sizeof jobs[0], n);
        Py_END_ALLOW_THREADS
        result = Py_NewRef(Py_None);
    }
    for (int i = 0; i < n_buf; i++) PyBuffer_Release(&b[i]);
    return result;
}

PyDoc_STRVAR(types_doc,
    "types() -> list of (ggml_type, name, block_size, type_size, simd_feature or None, simd_active, path)\n"
    "path: the quantizer quantize() takes here now: 'avx512', 'avx2', 'neon' or 'plain'.");

static PyObject *py_types(PyObject *self, PyObject *noargs) {
    (void)self; (void)noargs;
    PyObject *list = PyList_New(0);
    if (list == NULL) return NULL;
    for (size_t f = 0; f < sizeof families / sizeof families[0]; f++) {
        for (const gk_type_traits *t = families[f]; t->name != NULL; t++) {
            const char *path;
            int active = pick_quantizer(t, &path) != t->quantize_row;
            PyObject *item = Py_BuildValue("isiizOs", t->ggml_type, t->name, t->block_size, t->type_size,
                                           t->quantize_row_simd ? t->simd_feature : NULL,
                                           active ? Py_True : Py_False, path);
            if (item == NULL || PyList_Append(list, item) != 0) { Py_XDECREF(item); Py_DECREF(list); return NULL; }
            Py_DECREF(item);
        }
    }
    return list;
}

static PyMethodDef methods[] = {
    {"quantize", py_quantize, METH_VARARGS, quantize_doc},
    {"dequantize", py_dequantize, METH_VARARGS, dequantize_doc},
    {"scan_nonfinite", py_scan_nonfinite, METH_O, scan_nonfinite_doc},
    {"types", py_types, METH_NOARGS, types_doc},
    {"search_k", py_search_k, METH_VARARGS, search_k_doc},
    {"gptq_group", py_gptq_group, METH_VARARGS, gptq_group_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_quants",
                                    "ggufkit's native block-quantization core.", -1, methods};

PyMODINIT_FUNC PyInit__quants(void) { return PyModule_Create(&module); }
