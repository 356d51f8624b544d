/*
 * nvlm_bench.c - CPU engine benchmark (`make bench` -> bin/nvlm-bench). Everything in memory:
 * kernel-level GEMMs at the layer shapes of a Qwen2-1.5B-like decoder and an InternViT-300M-like
 * encoder with random bf16 weights, next to in-run reference probes (memory bandwidth: STREAM
 * copy, memcpy, 1- and 4-stream reads; OpenBLAS sgemm on an f32 copy of the same weights), and
 * the decode GEMV (M = 1) over bf16 and FP8 copies of the decoder's layers, alternating; then
 * the end-to-end engine on a synthetic model (src/synthetic.c): prefill, decode tokens/s and ViT
 * milliseconds per tile, at both precisions, then again with the LLM's projections in FP8
 * (decode and prefill against bf16 in the same run), then FP8 against bf16 decode with the
 * steps interleaved (two engines, one session each). Last,
 * tensor parallelism over CPU ranks: the cost of one all-reduce of a hidden row between rank
 * threads (and so per decoded token), decode at TP 2 against TP 1 on the same threads, and the
 * weight bytes per rank for NVLM-D-72B.
 *
 *   nvlm-bench [-t 1,2] [--layers N] [--prompt N] [--gen N] [--no-e2e] [--no-tp] [--quick]
 *              [--decode-only] [--exact-only] [--fp8-ab] [--prefill-ab]
 *
 * --decode-only skips the GEMM tables, the sgemm reference and the ViT (decode A/B runs);
 * --exact-only skips the fast precision (NVLM_PRECISION_FAST) runs; --fp8-ab runs, after the
 * probes and the GEMV rows, only the interleaved FP8 vs bf16 decode; --prefill-ab only the
 * prefill, exact and fast feeds alternating (with --exact-only: exact alone). Compute
 * ceilings come from in-run probes too: AVX-512 FMA chains and AVX512-BF16 vdpbf16ps chains
 * (the fast precision's GEMM instruction); prefill and the ViT are given as a share of them.
 */
#include "cpu/kernels.h"
#include "cpu/matmul_impl.h"
#include "engine.h"
#include "model.h"
#include "tp/comm.h"
#include "tp/plan.h"

#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ---- helpers ---------------------------------------------------------------------------- */

static uint64_t rng = 0x243f6a8885a308d3ull;

static uint64_t next64(void)
{
    uint64_t z = (rng += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static void fill_bf16(uint16_t *w, size_t n, float scale)
{
    for (size_t i = 0; i < n; i += 4) {
        uint64_t r = next64();
        for (size_t j = 0; j < 4 && i + j < n; j++) {
            float u = (float)((r >> (16 * j)) & 0xffff) / 32768.0f - 1.0f;
            w[i + j] = nv_f32_to_bf16(u * scale);
        }
    }
}

static void fill_f32(float *x, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        x[i] = (float)(next64() >> 40) / 8388608.0f - 1.0f;
    }
}

static void *xmalloc(size_t n)
{
    void *p = aligned_alloc(64, (n + 63) & ~(size_t)63);
    if (p == NULL) {
        fprintf(stderr, "nvlm-bench: out of memory (%zu bytes)\n", n);
        exit(1);
    }
    return p;
}

/* n random token ids below 150000 (malloc'd; the caller frees them). */
static int32_t *random_ids(int n)
{
    int32_t *ids = xmalloc((size_t)n * sizeof(int32_t));
    for (int i = 0; i < n; i++) {
        ids[i] = (int32_t)(next64() % 150000u);
    }
    return ids;
}

static const char *cpu_model(char *buf, size_t cap)
{
    snprintf(buf, cap, "unknown CPU");
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (f == NULL) {
        return buf;
    }
    char line[512];
    while (fgets(line, sizeof line, f) != NULL) {
        if (strncmp(line, "model name", 10) == 0) {
            char *c = strchr(line, ':');
            if (c != NULL) {
                snprintf(buf, cap, "%s", c + 2);
                buf[strcspn(buf, "\n")] = '\0';
            }
            break;
        }
    }
    fclose(f);
    return buf;
}

/* ---- bandwidth probes ------------------------------------------------------------------- */

/* Four probes over two 512 MiB buffers (16x the L3 of the machines we run on), split over
 * the pool like the GEMMs:
 * - STREAM copy: the STREAM convention (bytes read + bytes written) / s with plain loads and
 *   stores. The loop is STREAM's Scale kernel with a scalar of 1 read at run time (same
 *   traffic as Copy): a literal copy loop is turned into a memcpy call by the compiler;
 * - memcpy: glibc's memcpy, which at this size writes with non-temporal stores (no
 *   write-allocate reads), counted the same way;
 * - read-only: a streaming XOR over the source, bytes read / s, as one sequential stream per
 *   thread, and as 4 interleaved streams per thread (see xor_streams).
 * Decode only reads its weights, 4 streams per thread (see dot_4rows512 in matmul_x86.c): on
 * the machines we measured, one core reads about twice as fast from 4 streams as from one,
 * so the 4-stream read is the ceiling decode runs into, and the single-stream probes (STREAM,
 * memcpy, 1-stream read) understate what the memory can deliver to a core. */
typedef struct probe_buf {
    float *src;
    float *dst;
    size_t n;                 /* floats per buffer */
    volatile float one;       /* 1.0f, opaque to the compiler */
    uint64_t sink[64];
} probe_buf;

static void range_of(size_t n, int i, int nt, size_t *lo, size_t *hi)
{
    *lo = (n * (size_t)i / (size_t)nt) & ~(size_t)15;
    *hi = i == nt - 1 ? n : (n * (size_t)(i + 1) / (size_t)nt) & ~(size_t)15;
}

/* 64 bytes: one cache line per load and store (the compiler splits it into the widest
 * vector registers the build targets). */
typedef float f32x16 __attribute__((vector_size(64), aligned(64)));

static void stream_fn(void *arg, int i, int nt)
{
    probe_buf *b = arg;
    size_t lo, hi;
    range_of(b->n, i, nt, &lo, &hi);   /* multiples of 16 floats, 64-byte aligned buffers */
    const float q = b->one;
    f32x16 *d = (f32x16 *)(void *)(b->dst + lo);
    const f32x16 *s = (const f32x16 *)(const void *)(b->src + lo);
    for (size_t k = 0; k < (hi - lo) / 16; k++) {
        d[k] = q * s[k];
    }
    for (size_t k = lo + (hi - lo) / 16 * 16; k < hi; k++) {
        b->dst[k] = q * b->src[k];
    }
}

static void memcpy_fn(void *arg, int i, int nt)
{
    probe_buf *b = arg;
    size_t lo, hi;
    range_of(b->n, i, nt, &lo, &hi);
    memcpy(b->dst + lo, b->src + lo, (hi - lo) * sizeof(float));
}

typedef uint64_t u64x8 __attribute__((vector_size(64), aligned(64)));

/* XOR of the 64-byte lines [lo, hi) of the source. streams = 1: one sequential pass; else
 * blocks of `streams` x 64 KiB, each block read as `streams` interleaved sequential streams
 * 64 KiB apart (the access pattern that measured fastest on one core: 28 GB/s against 14 for
 * one stream on the EPYC VM). `streams` is a constant at each call. */
static inline __attribute__((always_inline)) uint64_t xor_streams(const u64x8 *p, size_t lo,
                                                                  size_t hi, const int streams)
{
    const size_t seg = streams == 1 ? hi - lo : 1024;   /* lines per stream and block */
    u64x8 acc0 = {0}, acc1 = {0}, acc2 = {0}, acc3 = {0};
    size_t b = lo;
    for (; seg > 0 && b + (size_t)streams * seg <= hi; b += (size_t)streams * seg) {
        const u64x8 *q = p + b;
        for (size_t k = 0; k < seg; k++) {
            acc0 ^= q[k];
            if (streams == 4) {
                acc1 ^= q[seg + k];
                acc2 ^= q[2 * seg + k];
                acc3 ^= q[3 * seg + k];
            }
        }
    }
    for (; b < hi; b++) {
        acc0 ^= p[b];
    }
    u64x8 acc = acc0 ^ acc1 ^ acc2 ^ acc3;
    uint64_t x = 0;
    for (int t = 0; t < 8; t++) {
        x ^= acc[t];
    }
    return x;
}

static void read_fn(void *arg, int i, int nt)
{
    probe_buf *b = arg;
    size_t lo, hi;
    range_of(b->n / 16, i, nt, &lo, &hi);   /* in 64-byte lines */
    b->sink[i % 64] = xor_streams((const u64x8 *)(const void *)b->src, lo, hi, 1);
}

static void read4_fn(void *arg, int i, int nt)
{
    probe_buf *b = arg;
    size_t lo, hi;
    range_of(b->n / 16, i, nt, &lo, &hi);
    b->sink[i % 64] = xor_streams((const u64x8 *)(const void *)b->src, lo, hi, 4);
}

typedef struct probes {
    double copy_gbs;    /* STREAM copy, (bytes read + bytes written) / s */
    double memcpy_gbs;  /* memcpy (non-temporal stores), same convention */
    double read_gbs;    /* bytes read / s, one stream per thread */
    double read4_gbs;   /* bytes read / s, 4 streams per thread */
} probes;

static probe_buf *probe_buf_new(void)
{
    probe_buf *b = xmalloc(sizeof *b);
    memset(b, 0, sizeof *b);
    b->n = (size_t)128 << 20;
    b->src = xmalloc(b->n * sizeof(float));
    b->dst = xmalloc(b->n * sizeof(float));
    b->one = 1.0f;
    for (size_t k = 0; k < b->n; k++) {
        b->src[k] = (float)(k & 1023);
    }
    memset(b->dst, 0, b->n * sizeof(float));
    return b;
}

static void probe_buf_free(probe_buf *b)
{
    free(b->src);
    free(b->dst);
    free(b);
}

/* Best of `reps` for each probe. */
static probes run_probes(nv_pool *pool, probe_buf *b, int reps)
{
    double bytes = (double)b->n * sizeof(float);
    probes p = {0, 0, 0, 0};
    for (int r = 0; r < reps; r++) {
        double t0 = nv_time_ms();
        nv_pool_run(pool, stream_fn, b);
        double t1 = nv_time_ms();
        nv_pool_run(pool, memcpy_fn, b);
        double t2 = nv_time_ms();
        nv_pool_run(pool, read_fn, b);
        double t3 = nv_time_ms();
        nv_pool_run(pool, read4_fn, b);
        double t4 = nv_time_ms();
        p.copy_gbs = NV_MAX(p.copy_gbs, 2.0 * bytes / ((t1 - t0) * 1e6));
        p.memcpy_gbs = NV_MAX(p.memcpy_gbs, 2.0 * bytes / ((t2 - t1) * 1e6));
        p.read_gbs = NV_MAX(p.read_gbs, bytes / ((t3 - t2) * 1e6));
        p.read4_gbs = NV_MAX(p.read4_gbs, bytes / ((t4 - t3) * 1e6));
    }
    return p;
}

#define N_PROBES 4
static const char *const probe_names[N_PROBES] = {"STREAM copy", "memcpy", "read 1-stream",
                                                  "read 4-stream"};

static double probe_val(const probes *p, int k)
{
    const double v[N_PROBES] = {p->copy_gbs, p->memcpy_gbs, p->read_gbs, p->read4_gbs};
    return v[k];
}

static void probes_max(probes *acc, const probes *p)
{
    acc->copy_gbs = NV_MAX(acc->copy_gbs, p->copy_gbs);
    acc->memcpy_gbs = NV_MAX(acc->memcpy_gbs, p->memcpy_gbs);
    acc->read_gbs = NV_MAX(acc->read_gbs, p->read_gbs);
    acc->read4_gbs = NV_MAX(acc->read4_gbs, p->read4_gbs);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Median of v[0..n) (sorts v). */
static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 == 1 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/* ---- compute probes --------------------------------------------------------------------- */

/* Two ceilings for the GEMMs, per thread count: independent chains of AVX-512 FMAs (vfmadd231ps
 * zmm: 32 flops each) and of AVX512-BF16 dot products (vdpbf16ps zmm: 32 multiply-adds, 64
 * flops each), 16 chains per thread, each accumulating into its addend as a GEMM tile does
 * (on Zen 5 a chain through the multiplicand is slower; no compiler barrier in the loop, which
 * made GCC keep the chains in memory). Nothing is loaded: the ceiling of
 * the execution units at the clock and the share of the cores this run gets right then. */
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define PROBE_ITERS 20000000L
#define PROBE_CHAINS 16

typedef struct peak_arg {
    int bf16;
    double sink[64];
} peak_arg;

__attribute__((target("avx512f"))) static float fma_chains(long iters)
{
    __m512 a[PROBE_CHAINS];
    const __m512 b = _mm512_set1_ps(1e-3f), c = _mm512_set1_ps(1e-7f);
    for (int j = 0; j < PROBE_CHAINS; j++) {
        a[j] = _mm512_set1_ps((float)j);
    }
    for (long i = 0; i < iters; i++) {
#pragma GCC unroll 16
        for (int j = 0; j < PROBE_CHAINS; j++) {
            a[j] = _mm512_fmadd_ps(b, c, a[j]);
        }
    }
    __m512 s = a[0];
    for (int j = 1; j < PROBE_CHAINS; j++) {
        s = _mm512_add_ps(s, a[j]);
    }
    return _mm512_reduce_add_ps(s);
}

__attribute__((target("avx512f,avx512bf16"))) static float dp_chains(long iters)
{
    __m512 a[PROBE_CHAINS];
    const __m512bh x = (__m512bh)_mm512_set1_epi32(0x3f803f80); /* (1.0, 1.0) */
    const __m512bh y = (__m512bh)_mm512_set1_epi32(0x33d633d6); /* (1e-7, 1e-7) */
    for (int j = 0; j < PROBE_CHAINS; j++) {
        a[j] = _mm512_set1_ps((float)j);
    }
    for (long i = 0; i < iters; i++) {
#pragma GCC unroll 16
        for (int j = 0; j < PROBE_CHAINS; j++) {
            a[j] = _mm512_dpbf16_ps(a[j], x, y);
        }
    }
    __m512 s = a[0];
    for (int j = 1; j < PROBE_CHAINS; j++) {
        s = _mm512_add_ps(s, a[j]);
    }
    return _mm512_reduce_add_ps(s);
}

static void peak_fn(void *arg, int i, int n)
{
    peak_arg *p = arg;
    (void)n;
    p->sink[i & 63] = p->bf16 ? dp_chains(PROBE_ITERS) : fma_chains(PROBE_ITERS);
}

/* GFLOP/s of the pool's threads running FMA (bf16 = 0) or vdpbf16ps (bf16 = 1) chains, best
 * of reps; 0 when this CPU lacks the instructions. */
static double peak_probe(nv_pool *pool, int bf16, int reps)
{
    if (strcmp(cpu_simd_name(), "avx512") != 0 || (bf16 && !mm_bf16dp_supported())) {
        return 0.0;
    }
    peak_arg a;
    memset(&a, 0, sizeof a);
    a.bf16 = bf16;
    double best = 0.0;
    for (int r = 0; r < reps; r++) {
        double t0 = nv_time_ms();
        nv_pool_run(pool, peak_fn, &a);
        double ms = nv_time_ms() - t0;
        double flops = (double)nv_pool_size(pool) * PROBE_ITERS * PROBE_CHAINS * 16.0 *
                       (bf16 ? 4.0 : 2.0);
        best = NV_MAX(best, flops / (ms * 1e6));
    }
    return best;
}
#else
static double peak_probe(nv_pool *pool, int bf16, int reps)
{
    (void)pool;
    (void)bf16;
    (void)reps;
    return 0.0;
}
#endif

/* The nominal clock (MHz) /proc/cpuinfo reports, or 0. */
static double cpu_mhz(void)
{
    double mhz = 0.0;
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (f == NULL) {
        return 0.0;
    }
    char line[512];
    while (fgets(line, sizeof line, f) != NULL) {
        if (strncmp(line, "cpu MHz", 7) == 0) {
            char *c = strchr(line, ':');
            mhz = c != NULL ? atof(c + 1) : 0.0;
            break;
        }
    }
    fclose(f);
    return mhz;
}

/* ---- kernel-level GEMMs ----------------------------------------------------------------- */

typedef struct shape {
    const char *name;
    int N, K;
} shape;

static const shape dec_shapes[] = {
    {"q_proj", 1536, 1536}, {"k_proj", 256, 1536},   {"v_proj", 256, 1536},
    {"o_proj", 1536, 1536}, {"gate_proj", 8960, 1536}, {"up_proj", 8960, 1536},
    {"down_proj", 1536, 8960},
};
static const shape vit_shapes[] = {
    {"attn.qkv", 3072, 1024}, {"attn.proj", 1024, 1024}, {"mlp.fc1", 4096, 1024},
    {"mlp.fc2", 1024, 4096},
};

/* Decode: M = 1 over `layers` distinct copies of the decoder layer weights (so the stream is
 * far bigger than the caches), as a decode step does: bf16 and FP8 (E4M3 codes + one f32 scale
 * per row) copies of the same layers, the two passes alternating rep by rep so that both meet
 * the same share of a shared machine. Fills GB/s of weights read (best pass of each) and ms per
 * layer. */
typedef struct gemv_result {
    double bf16_gbs, fp8_gbs, bf16_ms, fp8_ms;
} gemv_result;

static gemv_result bench_decode_gemv(nv_pool *pool, int layers, int reps)
{
    size_t per_layer = 0, rows = 0;
    for (size_t s = 0; s < NV_ARRAY_LEN(dec_shapes); s++) {
        per_layer += (size_t)dec_shapes[s].N * (size_t)dec_shapes[s].K;
        rows += (size_t)dec_shapes[s].N;
    }
    uint16_t *w = xmalloc(per_layer * 2 * (size_t)layers);
    uint8_t *q = xmalloc(per_layer * (size_t)layers);
    float *sc = xmalloc(rows * (size_t)layers * sizeof(float));
    fill_bf16(w, per_layer * (size_t)layers, 0.025f);
    for (size_t i = 0; i < per_layer * (size_t)layers; i++) {
        uint8_t c = (uint8_t)next64();
        q[i] = (c & 0x7fu) == 0x7fu ? (uint8_t)(c - 1u) : c; /* no NaN codes */
    }
    for (size_t i = 0; i < rows * (size_t)layers; i++) {
        sc[i] = 1.0f / 4096.0f;
    }
    float *x = xmalloc(8960 * 4);
    float *y = xmalloc(8960 * 4);
    fill_f32(x, 8960);
    double best[2] = {1e30, 1e30};
    for (int r = 0; r < reps; r++) {
        for (int f = 0; f < 2; f++) {
            double t0 = nv_time_ms();
            const uint16_t *p = w;
            const uint8_t *pq = q;
            const float *ps = sc;
            for (int l = 0; l < layers; l++) {
                for (size_t s = 0; s < NV_ARRAY_LEN(dec_shapes); s++) {
                    const int N = dec_shapes[s].N, K = dec_shapes[s].K;
                    if (f == 0) {
                        cpu_matmul(pool, y, x, p, NV_BF16, NULL, 1, N, K);
                    } else {
                        cpu_matmul_fp8(pool, y, x, pq, ps, NULL, 1, N, K);
                    }
                    p += (size_t)N * (size_t)K;
                    pq += (size_t)N * (size_t)K;
                    ps += N;
                }
            }
            best[f] = NV_MIN(best[f], nv_time_ms() - t0);
        }
    }
    free(w);
    free(q);
    free(sc);
    free(x);
    free(y);
    gemv_result res;
    res.bf16_ms = best[0] / layers;
    res.fp8_ms = best[1] / layers;
    res.bf16_gbs = (double)per_layer * 2.0 * layers / (best[0] * 1e6);
    res.fp8_gbs = ((double)per_layer + 4.0 * (double)rows) * layers / (best[1] * 1e6);
    return res;
}

typedef struct gemm_result {
    double ours_ms, sgemm_ms, conv_sgemm_ms, fast_ms;
} gemm_result;

/* y = x W^T at (M, N, K): our bf16 kernel vs OpenBLAS sgemm on an f32 copy of W (and the
 * same with the bf16 -> f32 conversion of W timed in). Best of reps. Our reps run first, then
 * OpenBLAS's: its threads keep spinning on the cores for a while after each call, and a pool
 * worker woken in that time can start too late to take its share of our GEMM. */
static gemm_result bench_gemm(nv_pool *pool, int M, int N, int K, int reps)
{
    size_t nw = (size_t)N * (size_t)K;
    uint16_t *w = xmalloc(nw * 2);
    float *wf = xmalloc(nw * 4);
    float *x = xmalloc((size_t)M * (size_t)K * 4);
    float *y = xmalloc((size_t)M * (size_t)N * 4);
    fill_bf16(w, nw, 1.0f / 32.0f);
    fill_f32(x, (size_t)M * (size_t)K);
    gemm_result r = {1e30, 1e30, 1e30, 1e30};
    cpu_matmul(pool, y, x, w, NV_BF16, NULL, M, N, K); /* untimed: the pool's workers awake */
    for (int i = 0; i < reps; i++) {
        double tf = nv_time_ms();
        bool fast = cpu_matmul_bf16(pool, y, x, w, NV_BF16, NULL, M, N, K);
        double t0 = nv_time_ms();
        r.fast_ms = fast ? NV_MIN(r.fast_ms, t0 - tf) : r.fast_ms;
        cpu_matmul(pool, y, x, w, NV_BF16, NULL, M, N, K);
        r.ours_ms = NV_MIN(r.ours_ms, nv_time_ms() - t0);
    }
    for (int i = 0; i < reps; i++) {
        double t1 = nv_time_ms();
        nv_to_f32(wf, w, NV_BF16, nw);
        double t2 = nv_time_ms();
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, K, 1.0f, x, K, wf, K, 0.0f, y,
                    N);
        double t3 = nv_time_ms();
        r.sgemm_ms = NV_MIN(r.sgemm_ms, t3 - t2);
        r.conv_sgemm_ms = NV_MIN(r.conv_sgemm_ms, t3 - t1);
    }
    free(w);
    free(wf);
    free(x);
    free(y);
    return r;
}

static void gemm_table(nv_pool *pool, const char *title, const shape *sh, size_t n_sh, int M,
                       int reps)
{
    printf("\n%s, M = %d (GFLOP/s; sgemm = OpenBLAS on an f32 copy of the weights; fast = the "
           "fast precision's bf16 GEMM)\n", title, M);
    printf("  %-10s %6s %6s  %8s %8s %12s  %6s %8s\n", "layer", "N", "K", "ours", "sgemm",
           "cvt+sgemm", "ours/sgemm", "fast");
    double tot_ours = 0, tot_sg = 0, tot_cv = 0, tot_fast = 0, flops = 0;
    for (size_t s = 0; s < n_sh; s++) {
        gemm_result r = bench_gemm(pool, M, sh[s].N, sh[s].K, reps);
        double f = 2.0 * M * (double)sh[s].N * sh[s].K;
        printf("  %-10s %6d %6d  %8.1f %8.1f %12.1f  %5.0f%%     %8.1f\n", sh[s].name, sh[s].N,
               sh[s].K, f / (r.ours_ms * 1e6), f / (r.sgemm_ms * 1e6),
               f / (r.conv_sgemm_ms * 1e6), 100.0 * r.sgemm_ms / r.ours_ms,
               r.fast_ms < 1e30 ? f / (r.fast_ms * 1e6) : 0.0);
        tot_ours += r.ours_ms;
        tot_sg += r.sgemm_ms;
        tot_cv += r.conv_sgemm_ms;
        tot_fast += r.fast_ms;
        flops += f;
    }
    printf("  %-10s %6s %6s  %8.1f %8.1f %12.1f  %5.0f%%     %8.1f\n", "all", "", "",
           flops / (tot_ours * 1e6), flops / (tot_sg * 1e6), flops / (tot_cv * 1e6),
           100.0 * tot_sg / tot_ours, tot_fast < 1e30 ? flops / (tot_fast * 1e6) : 0.0);
}

/* ---- main ------------------------------------------------------------------------------- */

typedef struct opts {
    int threads[8];
    int n_threads;
    int layers;
    int prompt;
    int gen;
    int e2e;
    int quick;
    int decode_only;
    int exact_only;
    int fp8_ab_only;
    int prefill_ab_only;
    int tp;
} opts;

static int parse(opts *o, int argc, char **argv)
{
    o->threads[0] = 1;
    o->threads[1] = 2;
    o->n_threads = 2;
    o->layers = 28;
    o->prompt = 256;
    o->gen = 32;
    o->e2e = 1;
    o->quick = 0;
    o->decode_only = 0;
    o->exact_only = 0;
    o->fp8_ab_only = 0;
    o->prefill_ab_only = 0;
    o->tp = 1;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "-t") == 0 && i + 1 < argc) {
            o->n_threads = 0;
            for (char *s = argv[++i]; *s != '\0' && o->n_threads < 8;) {
                o->threads[o->n_threads++] = (int)strtol(s, &s, 10);
                if (*s == ',') {
                    s++;
                }
            }
        } else if (strcmp(argv[i], "--layers") == 0 && i + 1 < argc) {
            o->layers = atoi(argv[++i]);
        } else if (strcmp(argv[i], "--prompt") == 0 && i + 1 < argc) {
            o->prompt = atoi(argv[++i]);
        } else if (strcmp(argv[i], "--gen") == 0 && i + 1 < argc) {
            o->gen = atoi(argv[++i]);
        } else if (strcmp(argv[i], "--no-e2e") == 0) {
            o->e2e = 0;
        } else if (strcmp(argv[i], "--quick") == 0) {
            o->quick = 1;
        } else if (strcmp(argv[i], "--decode-only") == 0) {
            o->decode_only = 1;
        } else if (strcmp(argv[i], "--exact-only") == 0) {
            o->exact_only = 1;
        } else if (strcmp(argv[i], "--fp8-ab") == 0) {
            o->fp8_ab_only = 1;
            o->decode_only = 1;
            o->exact_only = 1;
        } else if (strcmp(argv[i], "--prefill-ab") == 0) {
            o->prefill_ab_only = 1;
            o->decode_only = 1;
        } else if (strcmp(argv[i], "--no-tp") == 0) {
            o->tp = 0;
        } else {
            fprintf(stderr, "usage: nvlm-bench [-t 1,2] [--layers N] [--prompt N] [--gen N] "
                            "[--no-e2e] [--no-tp] [--quick] [--decode-only] [--exact-only] "
                            "[--fp8-ab] [--prefill-ab]\n");
            return 1;
        }
    }
    return 0;
}

/* ---- end to end on a synthetic model ----------------------------------------------------- */

static nvlm_status make_model(nvlm_context *ctx, const opts *o, nvlm_model **out)
{
    char json[2048];
    int n = snprintf(json, sizeof json,
        "{\"downsample_ratio\": 0.5, \"force_image_size\": 448, \"ps_version\": \"v2\","
        " \"select_layer\": -1, \"template\": \"chatml\", \"dynamic_image_size\": true,"
        " \"use_thumbnail\": true, \"min_dynamic_patch\": 1, \"max_dynamic_patch\": 6,"
        " \"vision_config\": {\"hidden_size\": 1024, \"intermediate_size\": 4096,"
        " \"num_hidden_layers\": 24, \"num_attention_heads\": 16, \"image_size\": 448,"
        " \"patch_size\": 14, \"num_channels\": 3, \"layer_norm_eps\": 1e-6,"
        " \"qk_normalization\": true, \"qkv_bias\": false, \"hidden_act\": \"gelu\","
        " \"norm_type\": \"rms_norm\"},"
        " \"llm_config\": {\"hidden_size\": 1536, \"intermediate_size\": 8960,"
        " \"num_hidden_layers\": %d, \"num_attention_heads\": 12, \"num_key_value_heads\": 2,"
        " \"vocab_size\": 151936, \"max_position_embeddings\": 32768, \"rope_theta\": 1000000.0,"
        " \"rms_norm_eps\": 1e-6, \"bos_token_id\": 151643, \"eos_token_id\": 151645,"
        " \"pad_token_id\": null, \"tie_word_embeddings\": false, \"hidden_act\": \"silu\"}}",
        o->layers);
    nv_config cfg;
    memset(&cfg, 0, sizeof cfg);
    NVLM_TRY(nv_config_parse(&cfg, json, (size_t)n, ctx));
    cfg.vision.num_dummy_heads = 0; /* InternViT-300M has 16 real heads and no padding */
    return nv_model_synthetic(ctx, &cfg, 42, out);
}

static double layer_linear_params(const nv_config *c)
{
    const nv_llm_config *l = &c->llm;
    double E = l->hidden_size, Q = (double)l->num_heads * l->head_dim;
    double K = (double)l->num_kv_heads * l->head_dim, F = l->intermediate_size;
    return Q * E + 2 * K * E + E * Q + 3 * F * E;
}

static int bench_vit(nvlm_model *m, int threads, int n_tiles, int reps, double *ms_tile,
                     double *ms_proj)
{
    nv_engine *e = m->engine;
    nv_exec *ex = NULL;
    if (e->be->ops->exec_create(e->be, threads, m, &ex) != NVLM_OK) {
        return -1;
    }
    nv_arena ar = {.ex = ex};
    size_t n_rows = (size_t)n_tiles * (size_t)(e->vit.n_patches * e->vit.D / e->proj.in);
    size_t bytes = nv_arena_size(n_rows * (size_t)e->proj.out) +
                   vit_arena_bytes(&e->vit, n_tiles) +
                   proj_arena_bytes(&e->proj, &e->vit, n_tiles);
    int rc = -1;
    if (nv_arena_reserve(&ar, bytes) == NVLM_OK) {
        double best = 1e30, best_p = 1e30;
        rc = 0;
        for (int r = 0; r < reps && rc == 0; r++) {
            nv_arena_rewind(&ar, 0);
            float *proj = nv_arena_floats(&ar, n_rows * (size_t)e->proj.out);
            size_t np = (size_t)n_tiles * 3 * (size_t)e->vit.image * (size_t)e->vit.image;
            float *pix = nv_arena_floats(&ar, np);
            float *host = xmalloc(np * sizeof(float));
            fill_f32(host, np);
            float *out = NULL;
            rc = proj == NULL || pix == NULL ||
                 e->be->ops->upload(ex, pix, host, np * sizeof(float)) != NVLM_OK;
            free(host);
            double t0 = nv_time_ms();
            rc = rc || vit_forward(ex, &ar, &e->vit, pix, n_tiles, &out, NULL) != NVLM_OK;
            e->be->ops->sync(ex);
            double t1 = nv_time_ms();
            rc = rc || proj_forward(ex, &ar, &e->proj, &e->vit, out, n_tiles, proj, NULL) !=
                           NVLM_OK;
            e->be->ops->sync(ex);
            double t2 = nv_time_ms();
            best = NV_MIN(best, t1 - t0);
            best_p = NV_MIN(best_p, t2 - t1);
        }
        *ms_tile = best / n_tiles;
        *ms_proj = best_p / n_tiles;
        if (rc != 0) {
            fprintf(stderr, "nvlm-bench: vision forward failed: %s\n", nvlm_last_error(m));
        }
    }
    nv_arena_release(&ar);
    e->be->ops->exec_free(ex);
    return rc;
}

/* The synthetic model is built exact; its backend's precision is what matmul reads and the KV
 * default what a new session takes (as nvlm_model_load sets them). */
static void set_precision(nvlm_model *m, nvlm_precision prec)
{
    m->engine->be->precision = prec;
    m->engine->be->kv_default = prec == NVLM_PRECISION_FAST ? NV_BF16 : NV_F32;
}

/* Decode tokens/s and prefill GFLOP/s (linear layers) of one e2e_one run. */
typedef struct e2e_result {
    double tok_s, prefill_gflops;
} e2e_result;

/* Rebuilds the model's engine with the LLM projections in FP8 (quantized from the synthetic
 * bf16 weights) or back in bf16. */
static nvlm_status set_fp8(nvlm_model *m, bool fp8)
{
    nv_engine_free(m);
    m->quantize_fp8 = fp8;
    m->weight_type = fp8 ? NVLM_WEIGHTS_FP8 : NVLM_WEIGHTS_BF16;
    return nv_engine_init(m);
}

/* One precision's prefill, decode and ViT; peak: the compute probe the GEMMs run into (FMA for
 * exact, vdpbf16ps for fast; 0 = unknown). With FP8 weights the references and the ViT are
 * skipped (they do not depend on the LLM's weights). */
static int e2e_one(nvlm_model *m, nv_pool *pool, const opts *o, int threads, probe_buf *pb,
                   nvlm_precision prec, double peak, e2e_result *res)
{
    const nv_config *c = &m->cfg;
    const bool fast = prec == NVLM_PRECISION_FAST;
    const bool fp8 = m->weight_type == NVLM_WEIGHTS_FP8;
    const bool refs = !o->decode_only && !fp8;
    memset(res, 0, sizeof *res);
    printf("-- precision %s%s%s\n", fast ? "fast" : "exact",
           fast ? " (bf16 GEMM inputs, bf16 KV cache)" : " (f32 GEMMs, f32 KV cache)",
           fp8 ? ", FP8 LLM projections (E4M3 + per-row f32 scales)" : "");
    set_precision(m, prec);
    nvlm_session *s = NULL;
    if (nvlm_session_create(m, NULL, &s) != NVLM_OK) {
        fprintf(stderr, "nvlm-bench: session: %s\n", nvlm_last_error(m));
        return -1;
    }
    int P = o->prompt;
    int32_t *ids = random_ids(P);
    /* The first feed of a session also allocates and first-touches its buffers (activations,
     * KV cache), so it is timed apart; the prefill figure is the median of the feeds after it
     * (each after a reset; the last one's cache goes on to decode), as llama-bench warms up. */
    double t0 = nv_time_ms();
    nvlm_status st = nvlm_session_feed(s, ids, (size_t)P, NULL, 0);
    const double t_first = nv_time_ms() - t0;
    double runs[3] = {0, 0, 0};
    const int n_runs = o->quick ? 1 : 3;
    for (int r = 0; r < n_runs && st == NVLM_OK; r++) {
        st = nvlm_session_reset(s);
        t0 = nv_time_ms();
        st = st == NVLM_OK ? nvlm_session_feed(s, ids, (size_t)P, NULL, 0) : st;
        runs[r] = nv_time_ms() - t0;
    }
    qsort(runs, (size_t)n_runs, sizeof runs[0], cmp_double);
    const double t_prefill = runs[n_runs / 2];
    if (st != NVLM_OK) {
        fprintf(stderr, "nvlm-bench: prefill: %s\n", nvlm_last_error(s));
        nvlm_session_free(s);
        free(ids);
        return -1;
    }
    double lin = layer_linear_params(c) * c->llm.num_layers;
    double flops = 2.0 * P * lin + 2.0 * c->llm.vocab_size * (double)c->llm.hidden_size;
    double attn = 2.0 * 2.0 * (double)P * (P + 1) / 2.0 * c->llm.num_heads * c->llm.head_dim *
                  c->llm.num_layers;
    /* Reference: OpenBLAS sgemm (f32 weights) on the same layer GEMMs at M = P. */
    double sg_ms = 0, ours_ms = 0, sg_flops = 0;
    for (size_t i = 0; i < NV_ARRAY_LEN(dec_shapes) && refs; i++) {
        gemm_result r = bench_gemm(pool, P, dec_shapes[i].N, dec_shapes[i].K, 1);
        sg_ms += r.sgemm_ms;
        ours_ms += r.ours_ms;
        sg_flops += 2.0 * P * dec_shapes[i].N * (double)dec_shapes[i].K;
    }
    printf("prefill %d tokens: %.0f ms = %.1f tokens/s, %.1f GFLOP/s (linear layers; %.1f with "
           "attention)", P, t_prefill, P * 1000.0 / t_prefill, flops / (t_prefill * 1e6),
           (flops + attn) / (t_prefill * 1e6));
    if (peak > 0) {
        printf(" = %.0f%% (linear) of the %s probe, %.0f GFLOP/s", 100.0 * flops /
               (t_prefill * 1e6) / peak, fast ? "vdpbf16ps" : "FMA", peak);
    }
    printf("\n  (median of %d feeds, %.0f-%.0f ms; the session's first feed: %.0f ms)\n", n_runs,
           runs[0], runs[n_runs - 1], t_first);
    res->prefill_gflops = flops / (t_prefill * 1e6);
    if (refs && !fast) {
        printf("  reference: OpenBLAS sgemm on the same layer GEMMs at M = %d: %.1f GFLOP/s "
               "(engine = %.0f%% of it); our GEMM alone %.1f GFLOP/s\n", P,
               sg_flops / (sg_ms * 1e6), 100.0 * (flops / t_prefill) / (sg_flops / sg_ms),
               sg_flops / (ours_ms * 1e6));
    }

    nvlm_sampler_params sp;
    nvlm_sampler_default_params(&sp);
    /* bytes streamed per token: the projections (FP8: 1 byte per weight + a 4-byte scale per
     * output row) and the bf16 lm_head */
    double rows = (double)c->llm.num_layers *
                  (2.0 * c->llm.num_heads * c->llm.head_dim +
                   2.0 * c->llm.num_kv_heads * c->llm.head_dim + c->llm.hidden_size +
                   2.0 * c->llm.intermediate_size);
    double bytes_tok = (fp8 ? lin + 4.0 * rows : lin * 2.0) +
                       (double)c->llm.vocab_size * c->llm.hidden_size * 2.0;
    /* Each decode step is followed by one round of the probes: on a shared machine the
     * bandwidth left to us moves by 20% and more within seconds, so a step is compared with
     * the probes taken right after it, and the median of those ratios is the figure. The mean
     * rate against the best probe seen during decode (the strictest pairing) is printed too. */
    int G = NV_MAX(o->gen, 1);
    double *ms_v = xmalloc((size_t)G * sizeof(double));
    double *ratio[N_PROBES];
    for (int k = 0; k < N_PROBES; k++) {
        ratio[k] = xmalloc((size_t)G * sizeof(double));
    }
    probes best = {0, 0, 0, 0};
    double t_dec = 0;
    int done = 0;
    for (int i = 0; i < G; i++) {
        int32_t tok = 0;
        double a = nv_time_ms();
        if (nvlm_session_sample(s, &sp, &tok) != NVLM_OK ||
            nvlm_session_feed(s, &tok, 1, NULL, 0) != NVLM_OK) {
            fprintf(stderr, "nvlm-bench: decode: %s\n", nvlm_last_error(s));
            break;
        }
        double ms = nv_time_ms() - a;
        probes pi = run_probes(pool, pb, 1);
        double gbs = bytes_tok / (ms * 1e6);
        ms_v[done] = ms;
        for (int k = 0; k < N_PROBES; k++) {
            ratio[k][done] = gbs / probe_val(&pi, k);
        }
        probes_max(&best, &pi);
        t_dec += ms;
        done++;
    }
    if (done > 0) {
        double ms = t_dec / done;
        double gbs = bytes_tok / (ms * 1e6);
        res->tok_s = 1000.0 / ms;
        printf("decode (after %d tokens, greedy, %d steps): %.2f ms/token = %.2f tokens/s "
               "(median step %.2f ms); weights %.2f GB/token -> %.2f GB/s\n", P, done, ms,
               1000.0 / ms, median(ms_v, done), bytes_tok / 1e9, gbs);
        printf("  vs the probes after each step (median of the per-step ratios):");
        for (int k = 0; k < N_PROBES; k++) {
            printf("%s %.0f%% of %s", k > 0 ? "," : "", 100.0 * median(ratio[k], done),
                   probe_names[k]);
        }
        printf("\n  mean rate vs the best probe during decode:");
        for (int k = 0; k < N_PROBES; k++) {
            printf("%s %.0f%% of %s (%.2f GB/s)", k > 0 ? "," : "",
                   100.0 * gbs / probe_val(&best, k), probe_names[k], probe_val(&best, k));
        }
        printf("\n");
    }
    free(ms_v);
    for (int k = 0; k < N_PROBES; k++) {
        free(ratio[k]);
    }
    nvlm_session_free(s);
    free(ids);

    double ms_tile = 0, ms_proj = 0;
    if (refs && bench_vit(m, threads, 2, 1, &ms_tile, &ms_proj) == 0) {
        /* ViT GEMM flops per tile: 1025 tokens through 4 linears per layer, plus attention. */
        const nv_vision_config *v = &c->vision;
        double T = 1025, D = v->hidden_size, Iv = v->intermediate_size;
        double vf = v->num_layers * (2 * T * (3 * D * D + D * D + 2 * D * Iv) + 4 * T * T * D);
        printf("ViT (2 tiles in one batch): %.0f ms per tile (%.1f GFLOP/s", ms_tile,
               vf / (ms_tile * 1e6));
        if (peak > 0) {
            printf(" = %.0f%% of the %s probe", 100.0 * vf / (ms_tile * 1e6) / peak,
                   fast ? "vdpbf16ps" : "FMA");
        }
        printf("); projector %.0f ms per tile\n", ms_proj);
    }
    return 0;
}


/* exact vs fast interleaved, so that both see the same share of a shared machine: prefill
 * (best of 3 each, alternating), decode (two sessions, steps alternating, median step each)
 * and the ViT (best of 2 each, alternating). */
static void bench_ab(nvlm_model *m, const opts *o, int threads)
{
    const int P = o->prompt, G = NV_MAX(o->gen, 1);
    int32_t *ids = random_ids(P);
    double pre[2] = {1e30, 1e30}, vit[2] = {1e30, 1e30};
    nvlm_session *s[2] = {NULL, NULL};
    for (int r = 0; r < 3; r++) {
        for (int p = 0; p < 2; p++) {
            set_precision(m, (nvlm_precision)p);
            nvlm_session *t = NULL;
            if (nvlm_session_create(m, NULL, &t) != NVLM_OK) {
                break;
            }
            double t0 = nv_time_ms();
            nvlm_status st = nvlm_session_feed(t, ids, (size_t)P, NULL, 0);
            pre[p] = st == NVLM_OK ? NV_MIN(pre[p], nv_time_ms() - t0) : pre[p];
            if (r == 2 && st == NVLM_OK) {
                s[p] = t;   /* the last prefill of each precision goes on to decode */
            } else {
                nvlm_session_free(t);
            }
        }
    }
    double *ms[2] = {xmalloc((size_t)G * sizeof(double)), xmalloc((size_t)G * sizeof(double))};
    int done = 0;
    nvlm_sampler_params sp;
    nvlm_sampler_default_params(&sp);
    for (int i = 0; i < G && s[0] != NULL && s[1] != NULL; i++) {
        bool ok = true;
        for (int p = 0; p < 2 && ok; p++) {
            set_precision(m, (nvlm_precision)p);
            int32_t tok = 0;
            double t0 = nv_time_ms();
            ok = nvlm_session_sample(s[p], &sp, &tok) == NVLM_OK &&
                 nvlm_session_feed(s[p], &tok, 1, NULL, 0) == NVLM_OK;
            ms[p][i] = nv_time_ms() - t0;
        }
        done += ok;
        if (!ok) {
            break;
        }
    }
    for (int r = 0; r < 2 && !o->decode_only; r++) {
        for (int p = 0; p < 2; p++) {
            set_precision(m, (nvlm_precision)p);
            double tile = 0, proj = 0;
            if (bench_vit(m, threads, 2, 1, &tile, &proj) == 0) {
                vit[p] = NV_MIN(vit[p], tile);
            }
        }
    }
    set_precision(m, NVLM_PRECISION_EXACT);
    printf("A/B interleaved (exact | fast | fast/exact speed):\n");
    printf("  prefill %d tokens, best of 3: %.1f | %.1f tokens/s | %.2fx\n", P, P * 1000.0 / pre[0],
           P * 1000.0 / pre[1], pre[0] / pre[1]);
    if (done > 0) {
        double d0 = median(ms[0], done), d1 = median(ms[1], done);
        printf("  decode, median of %d alternating steps: %.2f | %.2f ms/token (%.2f | %.2f "
               "tokens/s) | %.2fx\n", done, d0, d1, 1000.0 / d0, 1000.0 / d1, d0 / d1);
    }
    if (!o->decode_only && vit[0] < 1e30 && vit[1] < 1e30) {
        printf("  ViT, 2 tiles per batch, best of 2: %.0f | %.0f ms per tile | %.2fx\n", vit[0],
               vit[1], vit[0] / vit[1]);
    }
    free(ms[0]);
    free(ms[1]);
    nvlm_session_free(s[0]);
    nvlm_session_free(s[1]);
    free(ids);
}

/* FP8 against bf16 decode interleaved (exact precision): the model's engine is built twice,
 * FP8 and bf16, and a session of each (created while its engine is the model's, so it keeps
 * that engine) prefills the same prompt; then decode steps alternate, bf16 then FP8, so that
 * both meet the same share of a shared machine. Prints the median step of each and their
 * ratio, and returns the ratio (0 on failure). On return the model holds a bf16 engine. */
static double bench_fp8_ab(nvlm_model *m, const opts *o)
{
    const int P = o->prompt, G = NV_MAX(o->gen, 1);
    nv_engine *eng[2] = {NULL, NULL}; /* 0: bf16, 1: FP8 */
    nvlm_session *s[2] = {NULL, NULL};
    double *ms[2] = {xmalloc((size_t)G * sizeof(double)), xmalloc((size_t)G * sizeof(double))};
    double *smp[2] = {xmalloc((size_t)G * sizeof(double)), xmalloc((size_t)G * sizeof(double))};
    int32_t *ids = random_ids(P);
    int done = 0;
    bool ok = true;
    for (int f = 1; f >= 0 && ok; f--) {
        ok = set_fp8(m, f == 1) == NVLM_OK;
        if (ok) {
            set_precision(m, NVLM_PRECISION_EXACT);
            ok = nvlm_session_create(m, NULL, &s[f]) == NVLM_OK &&
                 nvlm_session_feed(s[f], ids, (size_t)P, NULL, 0) == NVLM_OK;
        }
        eng[f] = m->engine;
        m->engine = NULL; /* kept for its session; set_fp8 builds the next one */
    }
    nvlm_sampler_params sp;
    nvlm_sampler_default_params(&sp);
    for (int i = 0; i < G && ok; i++) {
        for (int f = 0; f < 2 && ok; f++) {
            m->engine = eng[f];
            int32_t tok = 0;
            double t0 = nv_time_ms();
            ok = nvlm_session_sample(s[f], &sp, &tok) == NVLM_OK;
            double t1 = nv_time_ms();
            ok = ok && nvlm_session_feed(s[f], &tok, 1, NULL, 0) == NVLM_OK;
            ms[f][i] = nv_time_ms() - t0;
            smp[f][i] = t1 - t0;
        }
        done += ok;
    }
    double ratio = 0;
    if (done > 0) {
        double d0 = median(ms[0], done), d1 = median(ms[1], done);
        ratio = d0 / d1;
        printf("FP8 vs bf16 decode interleaved (exact, steps alternating, median of %d each): "
               "bf16 %.2f ms/token (%.2f tokens/s), FP8 %.2f ms/token (%.2f tokens/s) = "
               "%.2fx\n", done, d0, 1000.0 / d0, d1, 1000.0 / d1, ratio);
        printf("  of which sampling (greedy, median): bf16 %.3f ms, FP8 %.3f ms\n",
               median(smp[0], done), median(smp[1], done));
    }
    for (int f = 0; f < 2; f++) {
        m->engine = eng[f];
        nvlm_session_free(s[f]);
        if (f == 1) {
            m->quantize_fp8 = true;
            m->weight_type = NVLM_WEIGHTS_FP8;
            nv_engine_free(m);
        }
    }
    m->engine = eng[0];
    m->quantize_fp8 = false;
    m->weight_type = NVLM_WEIGHTS_BF16;
    free(ms[0]);
    free(ms[1]);
    free(smp[0]);
    free(smp[1]);
    free(ids);
    return m->engine != NULL ? ratio : 0;
}

/* Prefill alone, exact and fast feeds alternating on one session each (their first feeds
 * untimed: they allocate the sessions' buffers), 5 timed feeds each; the medians against the
 * probes. For side-by-side runs with another engine's prefill benchmark. */
static void bench_prefill_ab(nvlm_model *m, const opts *o, double fma_peak, double dp_peak)
{
    enum { RUNS = 5 };
    const int P = o->prompt;
    int32_t *ids = random_ids(P);
    const int n_prec = o->exact_only ? 1 : 2;
    nvlm_session *s[2] = {NULL, NULL};
    double ms[2][RUNS];
    bool ok = true;
    for (int p = 0; p < n_prec && ok; p++) {
        set_precision(m, (nvlm_precision)p);
        ok = nvlm_session_create(m, NULL, &s[p]) == NVLM_OK &&
             nvlm_session_feed(s[p], ids, (size_t)P, NULL, 0) == NVLM_OK;
    }
    for (int r = 0; r < RUNS && ok; r++) {
        for (int p = 0; p < n_prec && ok; p++) {
            set_precision(m, (nvlm_precision)p);
            ok = nvlm_session_reset(s[p]) == NVLM_OK;
            double t0 = nv_time_ms();
            ok = ok && nvlm_session_feed(s[p], ids, (size_t)P, NULL, 0) == NVLM_OK;
            ms[p][r] = nv_time_ms() - t0;
        }
    }
    if (!ok) {
        fprintf(stderr, "nvlm-bench: prefill A/B: %s\n", nvlm_last_error(m));
    }
    const double flops = 2.0 * P * layer_linear_params(&m->cfg) * m->cfg.llm.num_layers +
                         2.0 * m->cfg.llm.vocab_size * (double)m->cfg.llm.hidden_size;
    for (int p = 0; p < n_prec && ok; p++) {
        qsort(ms[p], RUNS, sizeof ms[p][0], cmp_double);
        const double med = ms[p][RUNS / 2], peak = p == 0 ? fma_peak : dp_peak;
        printf("prefill %d tokens, %s (feeds alternating, median of %d): %.0f ms = %.1f tokens/s "
               "(%.0f-%.0f ms) = %.0f%% (linear) of the %s probe\n", P,
               p == 0 ? "exact" : "fast", RUNS, med, P * 1000.0 / med, ms[p][0],
               ms[p][RUNS - 1], 100.0 * flops / (med * 1e6) / peak, p == 0 ? "FMA" : "vdpbf16ps");
    }
    set_precision(m, NVLM_PRECISION_EXACT);
    nvlm_session_free(s[0]);
    nvlm_session_free(s[1]);
    free(ids);
}

/* Prefill, decode and the ViT at both precisions, exact first, on the same model and threads. */
static int bench_e2e(nvlm_context *ctx, nvlm_model *m, nv_pool *pool, const opts *o,
                     int threads, probe_buf *pb, double fma_peak, double dp_peak)
{
    const nv_config *c = &m->cfg;
    printf("\nEnd to end (synthetic model: decoder %d layers hidden %d, ViT %d layers hidden %d; "
           "%.2f G params, %.2f GB bf16)\n", c->llm.num_layers, c->llm.hidden_size,
           c->vision.num_layers, c->vision.hidden_size, (double)m->n_params / 1e9,
           (double)m->weight_bytes / 1e9);
    /* A session's executor takes the thread count of the model's context. */
    (void)ctx;
    m->h.ctx->n_threads = threads;
    e2e_result rb, rf;
    if (o->fp8_ab_only) {
        return bench_fp8_ab(m, o) > 0 ? 0 : -1;
    }
    if (o->prefill_ab_only) {
        bench_prefill_ab(m, o, fma_peak, dp_peak);
        return 0;
    }
    int rc = e2e_one(m, pool, o, threads, pb, NVLM_PRECISION_EXACT, fma_peak, &rb);
    if (rc == 0 && !o->exact_only) {
        rc = e2e_one(m, pool, o, threads, pb, NVLM_PRECISION_FAST, dp_peak, &rf);
    }
    if (rc == 0 && !o->exact_only) {
        bench_ab(m, o, threads);
    }
    set_precision(m, NVLM_PRECISION_EXACT);
    /* FP8 weights against bf16, exact precision, same threads */
    if (rc == 0 && set_fp8(m, true) == NVLM_OK) {
        rc = e2e_one(m, pool, o, threads, pb, NVLM_PRECISION_EXACT, fma_peak, &rf);
        if (rc == 0 && rb.tok_s > 0 && rf.tok_s > 0) {
            printf("FP8 vs bf16 (same run, %d thread%s): decode %.2f vs %.2f tokens/s = %.2fx; "
                   "prefill %.1f vs %.1f GFLOP/s = %.2fx\n", threads, threads == 1 ? "" : "s",
                   rf.tok_s, rb.tok_s, rf.tok_s / rb.tok_s, rf.prefill_gflops,
                   rb.prefill_gflops, rf.prefill_gflops / rb.prefill_gflops);
        }
    }
    if (rc == 0) {
        bench_fp8_ab(m, o);
    }
    if (m->engine == NULL || m->weight_type != NVLM_WEIGHTS_BF16) {
        if (set_fp8(m, false) != NVLM_OK) {
            fprintf(stderr, "nvlm-bench: engine: %s\n", nvlm_last_error(m));
            return -1;
        }
    }
    return rc;
}

/* ---- tensor parallelism over CPU ranks ------------------------------------------------- */

typedef struct ar_arg {
    tp_comm *c;
    int rank;
    int n;
    int reps;
    nvlm_status st;
} ar_arg;

static void *ar_rank(void *p)
{
    ar_arg *a = p;
    float *buf = xmalloc((size_t)a->n * sizeof(float));
    fill_f32(buf, (size_t)a->n);
    for (int i = 0; i < a->reps && a->st == NVLM_OK; i++) {
        a->st = a->c->ops->all_reduce_sum(a->c, a->rank, buf, (size_t)a->n);
    }
    free(buf);
    return NULL;
}

/* Microseconds per all-reduce of n floats between `ranks` threads (the local communicator). */
static double bench_all_reduce(nvlm_context *ctx, int ranks, int n, int reps)
{
    tp_comm *c = NULL;
    if (tp_comm_local_create(ctx, ranks, NULL, &c) != NVLM_OK) {
        return -1;
    }
    pthread_t th[8];
    ar_arg a[8];
    double t0 = nv_time_ms();
    for (int r = 0; r < ranks; r++) {
        a[r] = (ar_arg){c, r, n, reps, NVLM_OK};
        pthread_create(&th[r], NULL, ar_rank, &a[r]);
    }
    for (int r = 0; r < ranks; r++) {
        pthread_join(th[r], NULL);
    }
    double us = (nv_time_ms() - t0) * 1000.0 / reps;
    c->ops->destroy(c);
    return us;
}

/* Decode ms/token of the synthetic model at tp ranks over `threads` threads. */
static double tp_decode_ms(const opts *o, int tp, int threads, nvlm_model **keep)
{
    nvlm_context_params cp;
    nvlm_context_default_params(&cp);
    cp.n_threads = threads;
    cp.backend = NVLM_BACKEND_CPU;
    cp.tp_size = tp;
    nvlm_context *ctx = NULL;
    nvlm_model *m = NULL;
    nvlm_session *s = NULL;
    double ms = -1;
    if (nvlm_context_create(&cp, &ctx) == NVLM_OK && make_model(ctx, o, &m) == NVLM_OK &&
        nvlm_session_create(m, NULL, &s) == NVLM_OK) {
        int32_t ids[64];
        for (int i = 0; i < 64; i++) {
            ids[i] = (int32_t)(next64() % 150000u);
        }
        nvlm_sampler_params sp;
        nvlm_sampler_default_params(&sp);
        if (nvlm_session_feed(s, ids, 64, NULL, 0) == NVLM_OK) {
            int steps = o->quick ? 4 : 12;
            double *v = xmalloc((size_t)steps * sizeof(double));
            int done = 0;
            for (int i = 0; i < steps; i++) {
                int32_t tok = 0;
                double t0 = nv_time_ms();
                if (nvlm_session_sample(s, &sp, &tok) != NVLM_OK ||
                    nvlm_session_feed(s, &tok, 1, NULL, 0) != NVLM_OK) {
                    break;
                }
                v[done++] = nv_time_ms() - t0;
            }
            ms = done > 0 ? median(v, done) : -1;
            free(v);
        }
    }
    nvlm_session_free(s);
    if (keep != NULL) {
        *keep = m;
    } else {
        nvlm_model_free(m);
    }
    /* the model (when kept) belongs to this context: the caller frees it with the model */
    if (keep == NULL || m == NULL) {
        nvlm_context_free(ctx);
    }
    return ms;
}

static void bench_tp(const opts *o)
{
    int threads = o->threads[o->n_threads - 1];
    printf("\n======== tensor parallelism over CPU ranks (%d threads) ========\n", threads);
    nvlm_context *ctx = NULL;
    if (nvlm_context_create(NULL, &ctx) != NVLM_OK) {
        return;
    }
    int reps = o->quick ? 2000 : 20000;
    int dims[2] = {1536, 8192};
    for (int d = 0; d < 2; d++) {
        for (int ranks = 2; ranks <= 4; ranks *= 2) {
            double us = bench_all_reduce(ctx, ranks, dims[d], reps);
            printf("all-reduce of %d floats over %d rank threads: %.1f us", dims[d], ranks, us);
            if (dims[d] == 1536) {
                printf(" -> %.2f ms per decoded token of the synthetic model (%d layers x 2)\n",
                       us * 2 * o->layers / 1000.0, o->layers);
            } else {
                printf(" -> %.2f ms per decoded token of NVLM-D-72B (80 layers x 2)\n",
                       us * 160 / 1000.0);
            }
        }
    }
    double t1 = tp_decode_ms(o, 1, threads, NULL);
    double t2 = tp_decode_ms(o, 2, threads, NULL);
    printf("decode, synthetic model (%d layers), median of the steps: TP 1 %.2f ms/token, TP 2 "
           "%.2f ms/token (%.2fx; on one machine the ranks share its memory bandwidth)\n",
           o->layers, t1, t2, t1 > 0 && t2 > 0 ? t1 / t2 : 0.0);
    size_t len = 0;
    char *json = NULL;
    FILE *f = fopen("tests/data/nvlm-d-72b/config.json", "rb");
    if (f != NULL) {
        json = xmalloc(1 << 20);
        len = fread(json, 1, (1 << 20) - 1, f);
        fclose(f);
    }
    nv_config cfg;
    memset(&cfg, 0, sizeof cfg);
    if (json != NULL && nv_config_parse(&cfg, json, len, NULL) == NVLM_OK) {
        printf("NVLM-D-72B per rank (the largest rank; bf16 weights, bf16 KV cache):\n");
        for (int tp = 1; tp <= 8; tp *= 2) {
            tp_plan p;
            uint64_t b = 0;
            if (tp_plan_init(&p, &cfg, tp, NULL) == NVLM_OK &&
                tp_plan_max_rank_bytes(&p, &cfg, 2, false, &b) == NVLM_OK) {
                double kv = 2.0 * cfg.llm.num_layers * (double)cfg.llm.head_dim * 2.0 *
                            (double)tp_plan_max_count(&p, NV_TP_LLM_KV_HEADS);
                printf("  TP %d: weights %.2f GiB, KV cache %.0f KiB per token\n", tp,
                       (double)b / (1024.0 * 1024.0 * 1024.0), kv / 1024.0);
            }
        }
    }
    free(json);
    nvlm_context_free(ctx);
}

int main(int argc, char **argv)
{
    opts o;
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (parse(&o, argc, argv) != 0) {
        return 2;
    }
    char cpu[256];
    printf("nvlm-bench: %s, %ld online cores, SIMD path %s, OpenBLAS %s (%s)\n",
           cpu_model(cpu, sizeof cpu), sysconf(_SC_NPROCESSORS_ONLN), cpu_simd_name(),
           openblas_get_corename(), openblas_get_config());
    nvlm_model *model = NULL;
    nvlm_context *model_ctx = NULL; /* the context the model was built in: freed last */
    for (int ti = 0; ti < o.n_threads; ti++) {
        int t = o.threads[ti];
        nvlm_context_params cp;
        nvlm_context_default_params(&cp);
        cp.n_threads = t;
        nvlm_context *ctx = NULL;
        nv_pool *pool = NULL;
        if (nvlm_context_create(&cp, &ctx) != NVLM_OK || nv_pool_create(ctx, t, &pool) != NVLM_OK) {
            fprintf(stderr, "nvlm-bench: cannot create a context/pool of %d threads\n", t);
            return 1;
        }
        openblas_set_num_threads(t);
        printf("\n======== %d thread%s ========\n", t, t == 1 ? "" : "s");
        probe_buf *pb = probe_buf_new();
        probes pr = run_probes(pool, pb, o.quick ? 2 : 5);
        printf("probes: STREAM copy %.2f GB/s (read + write), memcpy %.2f GB/s (read + write, "
               "non-temporal stores), read-only %.2f GB/s (1 stream per thread) and %.2f GB/s "
               "(4 streams per thread)\n", pr.copy_gbs, pr.memcpy_gbs, pr.read_gbs,
               pr.read4_gbs);
        double fma_peak = peak_probe(pool, 0, 3), dp_peak = peak_probe(pool, 1, 3);
        double mhz = cpu_mhz();
        printf("compute probes: AVX-512 FMA %.1f GFLOP/s (%.1f per thread), vdpbf16ps %.1f "
               "GFLOP/s (%.1f per thread); derived: 64 flop/cycle per core (2 x 16-lane FMA "
               "pipes) x the nominal %.0f MHz = %.1f GFLOP/s per core; the FMA probe per thread "
               "= 64 flop/cycle x %.2f GHz (the clock the cores run at, boost included)\n",
               fma_peak, fma_peak / t, dp_peak, dp_peak / t, mhz, mhz * 64.0 / 1000.0,
               fma_peak / t / 64.0);
        gemv_result gv = bench_decode_gemv(pool, o.quick ? 2 : 4, o.quick ? 3 : 10);
        printf("decode GEMV (M = 1, the 7 matrices of a layer, %d layers cycled, bf16 and FP8 "
               "passes alternating, best of each): bf16 %.2f GB/s of weights, %.3f ms/layer =",
               o.quick ? 2 : 4, gv.bf16_gbs, gv.bf16_ms);
        for (int k = 0; k < N_PROBES; k++) {
            printf("%s %.0f%% of %s", k > 0 ? "," : "", 100.0 * gv.bf16_gbs / probe_val(&pr, k),
                   probe_names[k]);
        }
        printf("\n  FP8 %.2f GB/s (codes + scales), %.3f ms/layer =", gv.fp8_gbs, gv.fp8_ms);
        for (int k = 0; k < N_PROBES; k++) {
            printf("%s %.0f%% of %s", k > 0 ? "," : "", 100.0 * gv.fp8_gbs / probe_val(&pr, k),
                   probe_names[k]);
        }
        printf("; FP8 / bf16: %.2fx the bytes/s, %.2fx the layers/s\n", gv.fp8_gbs / gv.bf16_gbs,
               gv.bf16_ms / gv.fp8_ms);
        int reps = o.quick ? 1 : 3;
        if (!o.decode_only) {
            gemm_table(pool, "Decoder prefill GEMMs", dec_shapes, NV_ARRAY_LEN(dec_shapes), 1024,
                       reps);
        }
        if (!o.quick && !o.decode_only) {
            gemm_table(pool, "Decoder prefill GEMMs", dec_shapes, NV_ARRAY_LEN(dec_shapes), 2048,
                       reps);
        }
        if (!o.decode_only) {
            gemm_table(pool, "ViT GEMMs (one tile)", vit_shapes, NV_ARRAY_LEN(vit_shapes), 1025,
                       reps);
        }
        if (o.e2e) {
            if (model == NULL) {
                double t0 = nv_time_ms();
                if (make_model(ctx, &o, &model) != NVLM_OK) {
                    fprintf(stderr, "nvlm-bench: synthetic model: %s\n", nvlm_last_error(ctx));
                    o.e2e = 0;
                } else {
                    model_ctx = ctx;
                    printf("\n(synthetic model built in %.1f s)\n", (nv_time_ms() - t0) / 1000);
                }
            }
            if (model != NULL) {
                bench_e2e(ctx, model, pool, &o, t, pb, fma_peak, dp_peak);
            }
        }
        probe_buf_free(pb);
        nv_pool_free(pool);
        if (ctx != model_ctx) {
            nvlm_context_free(ctx);
        }
    }
    nvlm_model_free(model);
    nvlm_context_free(model_ctx);
    if (o.tp && o.e2e) {
        bench_tp(&o);
    }
    return 0;
}

