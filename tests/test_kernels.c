/*
 * test_kernels.c - the CPU backend's thread pool and GEMMs against a naive double-precision
 * oracle: random and odd shapes (M = 1, N and K off multiples of 8/16/32), bf16/f16/f32
 * weights, bias or not, strided f32 forms; every SIMD path this CPU has must agree with the
 * oracle and with the others, and results must be bit-identical for 1..4 threads.
 */
#include "cpu/matmul_impl.h"
#include "testutil.h"

#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static uint32_t rnd_u32(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (uint32_t)(rng_state >> 11);
}

static float rnd_f(void)
{
    return (float)((double)rnd_u32() / 2097152.0 - 1.0); /* [-1, 1) */
}

static int rnd_int(int lo, int hi)
{
    return lo + (int)(rnd_u32() % (uint32_t)(hi - lo + 1));
}

/* ---- pool ------------------------------------------------------------------------------- */

typedef struct pool_probe {
    atomic_int hits[8];
    atomic_int total;
    int seen_n;
} pool_probe;

static void probe_fn(void *arg, int i, int n)
{
    pool_probe *p = arg;
    atomic_fetch_add(&p->hits[i], 1);
    atomic_fetch_add(&p->total, 1);
    if (i == 0) {
        p->seen_n = n;
    }
}

static void test_pool(nvlm_context *ctx)
{
    tu_section("pool");
    for (int nt = 1; nt <= 5; nt++) {
        nv_pool *pool = NULL;
        CHECK_OK(nv_pool_create(ctx, nt, &pool));
        if (pool == NULL) {
            continue;
        }
        CHECK_EQ_INT(nv_pool_size(pool), nt, "pool size");
        pool_probe p;
        memset(&p, 0, sizeof(p));
        const int runs = 2000;
        for (int r = 0; r < runs; r++) {
            nv_pool_run(pool, probe_fn, &p);
        }
        int ok = 1;
        for (int i = 0; i < nt; i++) {
            ok &= atomic_load(&p.hits[i]) == runs;
        }
        CHECK(ok && atomic_load(&p.total) == runs * nt && p.seen_n == nt,
              "%d threads: every index ran exactly once per run", nt);
        nv_pool_free(pool);
    }
    pool_probe p;
    memset(&p, 0, sizeof(p));
    nv_pool_run(NULL, probe_fn, &p);
    CHECK(atomic_load(&p.hits[0]) == 1 && p.seen_n == 1, "NULL pool runs fn(arg, 0, 1)");
    CHECK_EQ_INT(nv_pool_size(NULL), 1, "NULL pool size");
    nv_pool *bad = NULL;
    CHECK_EQ_INT(nv_pool_create(ctx, 0, &bad), NVLM_ERR_INVALID_ARGUMENT, "0 threads rejected");
    CHECK(bad == NULL, "no pool on failure");
    nv_pool_free(NULL);
}

/* ---- GEMM oracle ------------------------------------------------------------------------ */

typedef struct weights {
    void *data;
    double *deq;   /* the exact values the kernel sees */
} weights;

static weights make_weights(nv_dtype wt, int rows, int cols, int ld)
{
    weights w;
    size_t n = (size_t)rows * (size_t)ld;
    w.data = malloc(n * nv_dtype_size(wt));
    w.deq = malloc(n * sizeof(double));
    for (size_t i = 0; i < n; i++) {
        float f = rnd_f();
        if (wt == NV_BF16) {
            uint16_t h = nv_f32_to_bf16(f);
            ((uint16_t *)w.data)[i] = h;
            w.deq[i] = nv_bf16_to_f32(h);
        } else if (wt == NV_F16) {
            uint16_t h = nv_f32_to_f16(f);
            ((uint16_t *)w.data)[i] = h;
            w.deq[i] = nv_f16_to_f32(h);
        } else {
            ((float *)w.data)[i] = f;
            w.deq[i] = f;
        }
    }
    (void)cols;
    return w;
}

static void free_weights(weights *w)
{
    free(w->data);
    free(w->deq);
}

static float *rnd_buf(size_t n)
{
    float *p = malloc(n * sizeof(float) + 1);
    for (size_t i = 0; i < n; i++) {
        p[i] = rnd_f();
    }
    return p;
}

/* Worst error over the outputs, each scaled by its sum |x_k w_k| (the natural bound of an
 * f32 dot product); strided outputs. nn: w is (K, N) instead of (N, K). */
static double max_scaled_err(const float *y, int ldy, const float *x, int ldx, const double *w,
                             int ldw, const float *bias, float alpha, int M, int N, int K, int nn)
{
    double worst = 0.0;
    for (int m = 0; m < M; m++) {
        for (int n = 0; n < N; n++) {
            double s = 0.0, mag = 0.0;
            for (int k = 0; k < K; k++) {
                double wv = nn ? w[(size_t)k * ldw + n] : w[(size_t)n * ldw + k];
                double p = (double)x[(size_t)m * ldx + k] * wv;
                s += p;
                mag += fabs(p);
            }
            s *= alpha;
            mag *= fabs(alpha);
            if (bias != NULL) {
                s += bias[n];
                mag += fabs(bias[n]);
            }
            double e = fabs((double)y[(size_t)m * ldy + n] - s) / (mag + 1e-30);
            if (!(e <= worst)) {
                worst = isnan(e) ? INFINITY : e;
            }
        }
    }
    return worst;
}

static const char *path_name(mm_simd p)
{
    return p == MM_AVX512 ? "avx512" : p == MM_AVX2 ? "avx2" : "portable";
}

static const char *dtype_name(nv_dtype t)
{
    return nv_dtype_name(t);
}

/* One cpu_matmul shape: every path vs the oracle, threads 1..4 bitwise equal per path, and
 * the paths within 2e-6 of each other (scaled). */
static void check_matmul(nv_pool **pools, int M, int N, int K, nv_dtype wt, int with_bias)
{
    weights w = make_weights(wt, N, K, K);
    float *x = rnd_buf((size_t)M * K);
    float *bias = with_bias ? rnd_buf((size_t)N) : NULL;
    size_t ny = (size_t)M * N;
    float *y[MM_SIMD_COUNT];
    float *yt = malloc(ny * sizeof(float) + 1);
    int ok_oracle = 1, ok_threads = 1;
    double worst = 0.0;
    for (int p = 0; p < MM_SIMD_COUNT; p++) {
        y[p] = NULL;
        if (!mm_simd_supported((mm_simd)p)) {
            continue;
        }
        y[p] = malloc(ny * sizeof(float) + 1);
        mm_args a = {y[p], N, x, K, w.data, K, wt, bias, 1.0f, M, N, K};
        mm_matmul_path(pools[0], &a, (mm_simd)p);
        double e = max_scaled_err(y[p], N, x, K, w.deq, K, bias, 1.0f, M, N, K, 0);
        worst = NV_MAX(worst, e);
        if (!(e < 1e-5)) {
            ok_oracle = 0;
            printf("  %s %s M=%d N=%d K=%d bias=%d: scaled err %.3g\n", path_name((mm_simd)p),
                   dtype_name(wt), M, N, K, with_bias, e);
        }
        for (int t = 1; t < 4; t++) {
            memset(yt, 0xff, ny * sizeof(float));
            mm_args b = a;
            b.y = yt;
            mm_matmul_path(pools[t], &b, (mm_simd)p);
            if (memcmp(yt, y[p], ny * sizeof(float)) != 0) {
                ok_threads = 0;
                printf("  %s %s M=%d N=%d K=%d: %d threads differ from 1\n",
                       path_name((mm_simd)p), dtype_name(wt), M, N, K, t + 1);
            }
        }
    }
    /* The public entry point equals the detected path. */
    memset(yt, 0, ny * sizeof(float));
    cpu_matmul(pools[1], yt, x, w.data, wt, bias, M, N, K);
    int ok_public = memcmp(yt, y[mm_simd_detected()], ny * sizeof(float)) == 0;
    CHECK(ok_oracle && ok_threads && ok_public,
          "matmul %s M=%d N=%d K=%d bias=%d: oracle (worst %.2g), threads, public", dtype_name(wt),
          M, N, K, with_bias, worst);
    for (int p = 0; p < MM_SIMD_COUNT; p++) {
        free(y[p]);
    }
    free(yt);
    free(x);
    free(bias);
    free_weights(&w);
}

static void check_gemm_f32(nv_pool **pools, int M, int N, int K, int nn)
{
    int lda = K + rnd_int(0, 5);
    int ldb = (nn ? N : K) + rnd_int(0, 5);
    int ldc = N + rnd_int(0, 5);
    float alpha = nn ? 1.0f : 0.088388f;
    weights b = make_weights(NV_F32, nn ? K : N, nn ? N : K, ldb);
    float *a = rnd_buf((size_t)M * lda);
    size_t nc = (size_t)M * ldc;
    float *c0 = malloc(nc * sizeof(float) + 1);
    float *c1 = malloc(nc * sizeof(float) + 1);
    int ok = 1;
    double worst = 0.0;
    for (int p = 0; p < MM_SIMD_COUNT; p++) {
        if (!mm_simd_supported((mm_simd)p)) {
            continue;
        }
        for (int t = 0; t < 4; t++) {
            float *c = t == 0 ? c0 : c1;
            /* Padding columns must stay untouched: fill with a sentinel. */
            for (size_t i = 0; i < nc; i++) {
                c[i] = 12345.0f;
            }
            mm_args args = {c, ldc, a, lda, b.data, ldb, NV_F32, NULL, alpha, M, N, K};
            if (nn) {
                mm_nn_f32_path(pools[t], &args, (mm_simd)p);
            } else {
                mm_nt_f32_path(pools[t], &args, (mm_simd)p);
            }
            if (t > 0 && memcmp(c0, c1, nc * sizeof(float)) != 0) {
                ok = 0;
                printf("  gemm %s %s M=%d N=%d K=%d: %d threads differ\n", nn ? "nn" : "nt",
                       path_name((mm_simd)p), M, N, K, t + 1);
            }
        }
        double e = max_scaled_err(c0, ldc, a, lda, b.deq, ldb, NULL, alpha, M, N, K, nn);
        worst = NV_MAX(worst, e);
        int pad_ok = 1;
        for (int m = 0; m < M; m++) {
            for (int n = N; n < ldc; n++) {
                pad_ok &= c0[(size_t)m * ldc + n] == 12345.0f;
            }
        }
        if (!(e < 1e-5) || !pad_ok) {
            ok = 0;
            printf("  gemm %s %s M=%d N=%d K=%d: scaled err %.3g, padding %s\n",
                   nn ? "nn" : "nt", path_name((mm_simd)p), M, N, K, e,
                   pad_ok ? "kept" : "overwritten");
        }
    }
    CHECK(ok, "gemm_%s_f32 M=%d N=%d K=%d (strided): oracle (worst %.2g), threads",
          nn ? "nn" : "nt", M, N, K, worst);
    /* Public entry points equal the detected path on 2 threads. */
    if (nn) {
        cpu_gemm_nn_f32(pools[1], c1, ldc, a, lda, b.data, ldb, M, N, K);
    } else {
        cpu_gemm_nt_f32(pools[1], c1, ldc, a, lda, b.data, ldb, M, N, K, alpha);
    }
    int same = 1;
    for (int m = 0; m < M; m++) {
        same &= memcmp(c1 + (size_t)m * ldc, c0 + (size_t)m * ldc, (size_t)N * 4) == 0;
    }
    CHECK(same, "cpu_gemm_%s_f32 equals the detected path", nn ? "nn" : "nt");
    free(a);
    free(c0);
    free(c1);
    free_weights(&b);
}

/* The fast precision's GEMM (cpu_matmul_bf16) against a double oracle of the same rounding
 * (x rounded to bf16, bf16 weights as stored): within 1e-6 of sum |x w| per element, bitwise
 * equal over 1..4 threads; and the fallback (cpu_round_bf16 + cpu_matmul) within the same
 * bound, so both paths of NVLM_PRECISION_FAST compute the same thing. */
static void check_bf16(nv_pool **pools, int M, int N, int K, int with_bias)
{
    weights w = make_weights(NV_BF16, N, K, K);
    float *x = rnd_buf((size_t)M * K);
    float *xr = malloc((size_t)M * K * sizeof(float));
    float *bias = with_bias ? rnd_buf((size_t)N) : NULL;
    float *y[4], *yf = malloc((size_t)M * N * sizeof(float));
    cpu_round_bf16(xr, x, (size_t)M * K);
    bool ran = true;
    for (int t = 0; t < 4; t++) {
        y[t] = malloc((size_t)M * N * sizeof(float));
        ran = cpu_matmul_bf16(pools[t], y[t], x, w.data, NV_BF16, bias, M, N, K) && ran;
    }
    cpu_matmul(pools[1], yf, xr, w.data, NV_BF16, bias, M, N, K);
    float *yn = malloc((size_t)M * N * sizeof(float));
    bool ran_null = cpu_matmul_bf16(NULL, yn, x, w.data, NV_BF16, bias, M, N, K);
    CHECK(ran_null == ran, "bf16 GEMM M %d N %d K %d: a NULL pool runs too", M, N, K);
    if (ran && ran_null) {
        CHECK(memcmp(y[0], yn, (size_t)M * N * sizeof(float)) == 0,
              "bf16 GEMM M %d N %d K %d: NULL pool bitwise equal to a pool", M, N, K);
    }
    free(yn);
    double worst = 0.0, worst_f = 0.0;
    for (int m = 0; m < M; m++) {
        for (int n = 0; n < N; n++) {
            double s = with_bias ? bias[n] : 0.0, mag = fabs(s);
            for (int k = 0; k < K; k++) {
                double p = (double)xr[(size_t)m * K + k] * w.deq[(size_t)n * K + k];
                s += p;
                mag += fabs(p);
            }
            size_t i = (size_t)m * N + n;
            worst_f = fmax(worst_f, fabs(yf[i] - s) / (mag + 1e-30));
            if (ran) {
                worst = fmax(worst, fabs(y[0][i] - s) / (mag + 1e-30));
            }
        }
    }
    CHECK(worst_f <= 1e-6, "fallback M %d N %d K %d: rel err %.3g", M, N, K, worst_f);
    if (ran) {
        CHECK(worst <= 1e-6, "bf16 GEMM M %d N %d K %d bias %d: rel err %.3g", M, N, K,
              with_bias, worst);
        for (int t = 1; t < 4; t++) {
            CHECK(memcmp(y[0], y[t], (size_t)M * N * sizeof(float)) == 0,
                  "bf16 GEMM M %d N %d K %d: %d threads bitwise equal to 1", M, N, K, t + 1);
        }
    }
    for (int t = 0; t < 4; t++) {
        free(y[t]);
    }
    free(yf);
    free(bias);
    free(xr);
    free(x);
    free_weights(&w);
}

int main(void)
{
    nvlm_context *ctx = NULL;
    CHECK_OK(tu_context_create(&ctx));
    printf("# SIMD path: %s\n", cpu_simd_name());
    test_pool(ctx);

    nv_pool *pools[4] = {NULL, NULL, NULL, NULL};
    for (int t = 0; t < 4; t++) {
        CHECK_OK(nv_pool_create(ctx, t + 1, &pools[t]));
    }

    tu_section("cpu_matmul fixed shapes");
    static const int shapes[][3] = {
        {1, 1, 1},    {1, 7, 3},     {1, 16, 16},   {1, 33, 17},  {1, 100, 129},
        {1, 257, 64}, {2, 31, 45},   {3, 64, 200},  {4, 65, 127}, {5, 19, 300},
        {7, 48, 33},  {8, 97, 64},   {12, 40, 50},  {13, 130, 77}, {17, 33, 16},
        {33, 70, 95}, {64, 128, 64}, {70, 45, 260}, {129, 3, 40},  {100, 200, 31},
        /* across the SMALL/BIG boundary and the KC/MC/NC blocks of the panel kernels */
        {7, 600, 140}, {8, 600, 140}, {250, 530, 270}, {490, 1090, 270},
        /* several deep k slices (partial sums added to C) with a k tail, one and several
         * row blocks of the AVX-512 kernel, a part panel */
        {264, 70, 1000}, {265, 40, 800}, {30, 1100, 800},
        /* M = 1 with x longer than L1 (the 4-weight-row GEMV): row and k tails */
        {1, 37, 6161}, {1, 64, 8960}, {2, 21, 6161},
    };
    static const nv_dtype dts[] = {NV_BF16, NV_F16, NV_F32};
    for (size_t s = 0; s < NV_ARRAY_LEN(shapes); s++) {
        for (size_t d = 0; d < NV_ARRAY_LEN(dts); d++) {
            check_matmul(pools, shapes[s][0], shapes[s][1], shapes[s][2], dts[d], (int)(s & 1));
        }
    }
    tu_section("cpu_matmul random shapes");
    for (int r = 0; r < 24; r++) {
        int M = r % 4 == 0 ? 1 : rnd_int(1, 90);
        check_matmul(pools, M, rnd_int(1, 300), rnd_int(1, 400), dts[r % 3], r & 1);
    }
    tu_section("decode GEMV (4 strided weight rows) = one row of the multi-row path");
    {
        /* M = 1 reads the columns of a chunk as 4 quarters side by side; each output must carry
         * the same bits as the same row computed with M = 2 (one weight row at a time), on
         * every path, with quarter tails and K tails. */
        static const int gv[][2] = {{45, 6200}, {103, 200}, {1536, 96}, {7, 33}, {260, 1536}};
        for (size_t g = 0; g < NV_ARRAY_LEN(gv); g++) {
            const int N = gv[g][0], K = gv[g][1];
            for (size_t d = 0; d < NV_ARRAY_LEN(dts); d++) {
                weights w = make_weights(dts[d], N, K, K);
                float *x = rnd_buf((size_t)2 * K);
                memcpy(x + K, x, (size_t)K * sizeof(float));
                float *bias = rnd_buf((size_t)N);
                float *y1 = malloc((size_t)N * sizeof(float));
                float *y2 = malloc((size_t)2 * N * sizeof(float));
                for (int p = 0; p < MM_SIMD_COUNT; p++) {
                    if (!mm_simd_supported((mm_simd)p)) {
                        continue;
                    }
                    mm_args a1 = {y1, N, x, K, w.data, K, dts[d], bias, 1.0f, 1, N, K};
                    mm_args a2 = {y2, N, x, K, w.data, K, dts[d], bias, 1.0f, 2, N, K};
                    mm_matmul_path(pools[1], &a1, (mm_simd)p);
                    mm_matmul_path(pools[1], &a2, (mm_simd)p);
                    size_t row = (size_t)N * sizeof(float);
                    CHECK(memcmp(y1, y2, row) == 0 && memcmp(y1, y2 + N, row) == 0,
                          "%s %s N=%d K=%d: M = 1 equals M = 2, bitwise", path_name((mm_simd)p),
                          dtype_name(dts[d]), N, K);
                }
                free(y1);
                free(y2);
                free(bias);
                free(x);
                free_weights(&w);
            }
        }
    }
    tu_section("f32 attention GEMMs");
    static const int gshapes[][3] = {
        {1, 1, 1}, {1, 37, 64}, {1, 300, 128}, {5, 17, 64}, {16, 16, 128},
        {33, 45, 80}, {64, 70, 128}, {100, 3, 128}, {3, 100, 19}, {90, 90, 7},
        {245, 520, 130},
    };
    for (size_t s = 0; s < NV_ARRAY_LEN(gshapes); s++) {
        check_gemm_f32(pools, gshapes[s][0], gshapes[s][1], gshapes[s][2], 0);
        check_gemm_f32(pools, gshapes[s][0], gshapes[s][2], gshapes[s][1], 1);
    }
    for (int r = 0; r < 8; r++) {
        check_gemm_f32(pools, rnd_int(1, 80), rnd_int(1, 150), rnd_int(1, 150), r & 1);
    }

    tu_section("bf16 GEMM (fast precision)");
    printf("# AVX512-BF16 kernels: %s\n", mm_bf16dp_supported() ? "yes" : "no (fallback only)");
    {
        static const int shapes[][3] = {{1, 64, 64},   {1, 37, 33},   {1, 130, 1000},
                                        {3, 70, 97},   {7, 33, 300},  {8, 64, 64},
                                        {13, 45, 31},  {40, 300, 513}, {100, 97, 1},
                                        {250, 600, 260},
                                        /* several slices (odd K), several row blocks */
                                        {20, 40, 1537}, {300, 70, 1700}};
        for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) {
            check_bf16(pools, shapes[i][0], shapes[i][1], shapes[i][2], (int)(i & 1));
        }
        for (int r = 0; r < 6; r++) {
            check_bf16(pools, rnd_int(1, 40), rnd_int(1, 150), rnd_int(1, 300), r & 1);
        }
        /* f16 weights: the caller's fallback. */
        float y[4];
        uint16_t w16[4] = {0};
        float x1[4] = {1, 2, 3, 4};
        CHECK(!cpu_matmul_bf16(pools[0], y, x1, w16, NV_F16, NULL, 1, 1, 4), "f16 W declines");
        float r[2] = {1.00390625f, 1.01171875f};
        cpu_round_bf16(r, r, 2);
        /* Ties: 1 + 2^-8 to even 1; 1 + 3 * 2^-8 to even 1 + 2^-6. */
        CHECK(r[0] == 1.0f && r[1] == 1.015625f, "round to nearest even");
    }

    tu_section("no pool");
    {
        /* A NULL pool runs on the caller with borrowed scratch: same bits as a 1-thread pool. */
        const int M = 30, N = 70, K = 150;
        weights w = make_weights(NV_BF16, N, K, K);
        float *x = rnd_buf((size_t)M * K);
        float *y0 = malloc((size_t)M * K * sizeof(float));
        float *y1 = malloc((size_t)M * K * sizeof(float));
        cpu_matmul(pools[0], y0, x, w.data, NV_BF16, NULL, M, N, K);
        cpu_matmul(NULL, y1, x, w.data, NV_BF16, NULL, M, N, K);
        CHECK(memcmp(y0, y1, (size_t)M * N * sizeof(float)) == 0, "cpu_matmul(NULL pool)");
        cpu_matmul(pools[0], y0, x, w.data, NV_BF16, NULL, 1, N, K);
        cpu_matmul(NULL, y1, x, w.data, NV_BF16, NULL, 1, N, K);
        CHECK(memcmp(y0, y1, (size_t)N * sizeof(float)) == 0, "cpu_matmul(NULL pool), M = 1");
        /* The attention forms as the pipeline calls them from inside workers: stack scratch
         * for few rows, heap for many. bb is a (70, 150) f32 matrix. */
        float *bb = rnd_buf((size_t)N * K);
        for (int mm = 1; mm <= 30; mm += 29) {
            cpu_gemm_nn_f32(pools[0], y0, K, x, K, bb, K, mm, K, N);
            cpu_gemm_nn_f32(NULL, y1, K, x, K, bb, K, mm, K, N);
            CHECK(memcmp(y0, y1, (size_t)mm * K * sizeof(float)) == 0,
                  "cpu_gemm_nn_f32(NULL pool), M = %d", mm);
            cpu_gemm_nt_f32(pools[0], y0, N, x, K, bb, K, mm, N, K, 0.5f);
            cpu_gemm_nt_f32(NULL, y1, N, x, K, bb, K, mm, N, K, 0.5f);
            CHECK(memcmp(y0, y1, (size_t)mm * N * sizeof(float)) == 0,
                  "cpu_gemm_nt_f32(NULL pool), M = %d", mm);
        }
        free(bb);
        free(x);
        free(y0);
        free(y1);
        free_weights(&w);
    }

    tu_section("edge cases");
    {
        float y[6] = {9, 9, 9, 9, 9, 9};
        float bias[3] = {1, 2, 3};
        uint16_t w[1] = {0};
        cpu_matmul(pools[1], y, NULL, w, NV_BF16, bias, 2, 3, 0);
        CHECK(y[0] == 1 && y[2] == 3 && y[3] == 1 && y[5] == 3, "K = 0 gives the bias");
        cpu_matmul(pools[1], y, NULL, w, NV_BF16, NULL, 0, 3, 4);
        CHECK(y[0] == 1, "M = 0 writes nothing");
    }

    for (int t = 0; t < 4; t++) {
        nv_pool_free(pools[t]);
    }
    nvlm_context_free(ctx);
    return tu_done();
}
