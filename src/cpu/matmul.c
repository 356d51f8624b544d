/*
 * matmul.c - the GEMMs of the CPU backend: y = x . W^T (+ bias) with f32 activations and
 * bf16/f16/f32 weights read in place, plus the two f32 GEMMs of attention. This file holds the
 * thread split, the run-time choice of SIMD path and the portable C kernels; the AVX2 and
 * AVX-512 kernels live in matmul_x86.c. Every output element is reduced by one thread in an
 * order fixed by (M, N, K) alone, so results do not depend on the thread count.
 */
#include "cpu/matmul_impl.h"

#include <limits.h>
#include <stdatomic.h>
#include <string.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <cpuid.h>
#endif

static float w_at(const void *w, nv_dtype wt, size_t idx)
{
    switch (wt) {
    case NV_BF16:
        return nv_bf16_to_f32(((const uint16_t *)w)[idx]);
    case NV_F16:
        return nv_f16_to_f32(((const uint16_t *)w)[idx]);
    default:
        return ((const float *)w)[idx];
    }
}

/* Portable reference kernel: each element is an 8-lane strided dot product summed as
 * ((l0+l4)+(l2+l6))+((l1+l5)+(l3+l7)), lanes accumulated in ascending k. */
static float dot_portable(const float *x, const void *w, nv_dtype wt, size_t row, int K)
{
    float acc[8] = {0};
    int k = 0;
    for (; k + 8 <= K; k += 8) {
        for (int j = 0; j < 8; j++) {
            acc[j] += x[k + j] * w_at(w, wt, row + (size_t)k + (size_t)j);
        }
    }
    for (int j = 0; k < K; k++, j++) {
        acc[j] += x[k] * w_at(w, wt, row + (size_t)k);
    }
    return ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]));
}

void mm_nt_portable(const mm_args *a, int m0, int m1, int n0, int n1, void *scratch)
{
    (void)scratch;
    for (int m = m0; m < m1; m++) {
        const float *x = a->x + (size_t)m * (size_t)a->ldx;
        float *y = a->y + (size_t)m * (size_t)a->ldy;
        for (int n = n0; n < n1; n++) {
            float s = dot_portable(x, a->w, a->wt, (size_t)n * (size_t)a->ldw, a->K) * a->alpha;
            y[n] = a->bias != NULL ? s + a->bias[n] : s;
        }
    }
}

void mm_nn_portable(const mm_args *a, int m0, int m1, int n0, int n1, void *scratch)
{
    (void)scratch;
    const float *b = a->w;
    for (int m = m0; m < m1; m++) {
        const float *x = a->x + (size_t)m * (size_t)a->ldx;
        float *y = a->y + (size_t)m * (size_t)a->ldy;
        for (int n = n0; n < n1; n++) {
            y[n] = 0.0f;
        }
        for (int k = 0; k < a->K; k++) {
            const float xv = x[k];
            const float *br = b + (size_t)k * (size_t)a->ldw;
            for (int n = n0; n < n1; n++) {
                y[n] += xv * br[n];
            }
        }
    }
}

/* ---- run-time dispatch ------------------------------------------------------------------ */

static mm_simd detect(void)
{
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    __builtin_cpu_init();
    /* F16C (CPUID.1:ECX bit 29) is not a __builtin_cpu_supports name in every compiler. */
    unsigned eax, ebx, ecx, edx;
    bool f16c = __get_cpuid(1, &eax, &ebx, &ecx, &edx) && (ecx & (1u << 29)) != 0;
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") && f16c) {
        return MM_AVX512;
    }
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && f16c) {
        return MM_AVX2;
    }
#endif
    return MM_PORTABLE;
}

/* AVX512-BF16: CPUID.(EAX=7, ECX=1):EAX bit 5. */
static bool detect_bf16dp(void)
{
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    unsigned eax, ebx, ecx, edx;
    return __get_cpuid_count(7, 1, &eax, &ebx, &ecx, &edx) && (eax & (1u << 5)) != 0;
#else
    return false;
#endif
}

static pthread_once_t simd_once = PTHREAD_ONCE_INIT;
static mm_simd simd_detected = MM_PORTABLE;
static bool simd_bf16dp = false;

static void simd_init(void)
{
    simd_detected = detect();
    simd_bf16dp = simd_detected == MM_AVX512 && detect_bf16dp();
}

bool mm_bf16dp_supported(void)
{
    pthread_once(&simd_once, simd_init);
    return simd_bf16dp;
}

mm_simd mm_simd_detected(void)
{
    pthread_once(&simd_once, simd_init);
    return simd_detected;
}

bool mm_simd_supported(mm_simd path)
{
    return path <= mm_simd_detected();
}

const char *cpu_simd_name(void)
{
    switch (mm_simd_detected()) {
    case MM_AVX512:
        return "avx512";
    case MM_AVX2:
        return "avx2";
    default:
        return "portable";
    }
}

/* ---- thread split ----------------------------------------------------------------------- */

typedef struct mm_job {
    const mm_args *a;
    nv_pool *pool;
    void *scratch;  /* used when the pool has none (NULL pool) */
    mm_kernel kern;
    int split_m;   /* 1: threads split M, else N */
    int align;     /* chunk alignment of the split dimension */
    int n_chunks;  /* the split dimension in this many chunks, claimed first come first served */
    atomic_int next;
} mm_job;

static void job_range(int total, int align, int i, int n, int *lo, int *hi)
{
    int blocks = (total + align - 1) / align;
    int b0 = (int)((long long)blocks * i / n);
    int b1 = (int)((long long)blocks * (i + 1) / n);
    *lo = NV_MIN(total, b0 * align);
    *hi = NV_MIN(total, b1 * align);
}

/* Threads claim chunks until none is left: a thread the OS delays (a busy machine, more
 * threads than cores) does less of the work instead of holding up the others. Each element is
 * still computed whole by one thread with the same arithmetic, so the bits do not change. */
static void job_run(void *arg, int i, int n)
{
    mm_job *j = arg;
    (void)n;
    void *scratch = j->pool != NULL ? nv_pool_scratch(j->pool, i) : j->scratch;
    for (;;) {
        int c = atomic_fetch_add_explicit(&j->next, 1, memory_order_relaxed);
        if (c >= j->n_chunks) {
            break;
        }
        int lo, hi;
        if (j->split_m) {
            job_range(j->a->M, j->align, c, j->n_chunks, &lo, &hi);
            if (lo < hi) {
                j->kern(j->a, lo, hi, 0, j->a->N, scratch);
            }
        } else {
            job_range(j->a->N, j->align, c, j->n_chunks, &lo, &hi);
            if (lo < hi) {
                j->kern(j->a, 0, j->a->M, lo, hi, scratch);
            }
        }
    }
}

/* Without a pool, scratch up to this size comes from the stack (decode attention calls the f32
 * GEMMs per head from inside pool workers with a NULL pool). */
#define STACK_SCRATCH (8 * 1024)

void mm_run(nv_pool *pool, const mm_args *a, mm_kernel kern, size_t scratch, int align_n,
            int align_m, int min_n, int min_m, int block_n)
{
    if (a->M <= 0 || a->N <= 0) {
        return;
    }
    int nt = nv_pool_size(pool);
    mm_job job;
    job.a = a;
    job.pool = pool;
    job.scratch = NULL;
    job.kern = kern;
    job.split_m = 0;
    job.align = align_n;
    job.n_chunks = 1;
    atomic_init(&job.next, 0);
    if (nt > 1) {
        /* Chunks of at least min_n columns (each chunk re-packs its activations) or min_m rows
         * (each re-packs its weights); up to 4 per thread so that a thread the OS delays
         * costs little. N first: it keeps each weight read by one thread only. */
        int by_n = a->N / min_n, by_m = a->M / min_m;
        if (by_n >= nt || by_n >= by_m) {
            /* Packed kernels (block_n > 0): chunks of about one weight block, so that each
             * activation block is packed once per block; a whole number per thread. */
            int c = block_n > 0 ? (a->N + block_n - 1) / block_n : 4 * nt;
            job.n_chunks = NV_MAX(1, NV_MIN((c + nt - 1) / nt * nt, by_n));
        } else {
            job.split_m = 1;
            job.align = align_m;
            job.n_chunks = NV_MIN(4 * nt, by_m);
        }
    }
    if (pool == NULL) {
        /* No pool, no scratch: small needs come from the stack, larger ones from the heap for
         * this call (plain libc: there is no context). Without memory the portable kernel,
         * which needs none, still gives the result. */
        _Alignas(64) char local[STACK_SCRATCH];
        void *raw = NULL;
        if (scratch > 0 && scratch <= sizeof local) {
            job.scratch = local;
        } else if (scratch > 0) {
            raw = nv_malloc(NULL, NV_POOL_SCRATCH + 64);
            if (raw == NULL) {
                job.kern = kern == mm_x86_kernel(mm_simd_detected(), MM_FORM_NN) ?
                               mm_nn_portable : mm_nt_portable;
            }
            job.scratch = (void *)(((uintptr_t)raw + 63u) & ~(uintptr_t)63u);
        }
        job_run(&job, 0, 1);
        nv_free(NULL, raw);
    } else if (nt == 1) {
        job_run(&job, 0, 1);
    } else {
        nv_pool_run(pool, job_run, &job);
    }
}

/* ---- path selection --------------------------------------------------------------------- */

void mm_matmul_path(nv_pool *pool, const mm_args *a, mm_simd path)
{
    mm_form form = a->M < MM_SMALL_M ? MM_FORM_SMALL : MM_FORM_BIG;
    mm_kernel k = mm_simd_supported(path) ? mm_x86_kernel(path, form) : NULL;
    if (k == NULL) {
        mm_run(pool, a, mm_nt_portable, 0, 16, 4, 16, 16, 0);
    } else if (form == MM_FORM_SMALL) {
        mm_run(pool, a, k, 0, 16, 4, 16, INT_MAX, 0);
    } else {
        /* Column chunks of whole register tiles; row chunks of whole 12-row tiles. */
        mm_run(pool, a, k, mm_x86_scratch(path, form, a->M), 64, 12, 256, 96,
               mm_x86_block_n(path));
    }
}

void mm_nt_f32_path(nv_pool *pool, const mm_args *a, mm_simd path)
{
    mm_matmul_path(pool, a, path);
}

void mm_nn_f32_path(nv_pool *pool, const mm_args *a, mm_simd path)
{
    mm_kernel k = mm_simd_supported(path) ? mm_x86_kernel(path, MM_FORM_NN) : NULL;
    if (k == NULL) {
        mm_run(pool, a, mm_nn_portable, 0, 16, 4, 16, 16, 0);
    } else {
        mm_run(pool, a, k, mm_x86_scratch(path, MM_FORM_NN, a->M), 64, 12, 64, 48, 0);
    }
}

/* ---- public entry points ---------------------------------------------------------------- */

void cpu_matmul(nv_pool *pool, float *y, const float *x, const void *w, nv_dtype wt,
                const float *bias, int M, int N, int K)
{
    mm_args a = {y, N, x, K, w, K, wt, bias, 1.0f, M, N, K};
    if (K <= 0) {
        for (int m = 0; m < M; m++) {
            for (int n = 0; n < N; n++) {
                y[(size_t)m * (size_t)N + (size_t)n] = bias != NULL ? bias[n] : 0.0f;
            }
        }
        return;
    }
    mm_matmul_path(pool, &a, mm_simd_detected());
}

bool cpu_matmul_bf16(nv_pool *pool, float *y, const float *x, const void *w, nv_dtype wt,
                     const float *bias, int M, int N, int K)
{
    if (wt != NV_BF16 || K <= 0 || M <= 0 || N <= 0 || !mm_bf16dp_supported()) {
        return false;
    }
    mm_form form = M < MM_SMALL_M ? MM_FORM_SMALL : MM_FORM_BIG;
    mm_kernel k = mm_x86_bf16_kernel(form);
    size_t need = mm_x86_bf16_scratch(form, M, K);
    if (k == NULL || need > NV_POOL_SCRATCH) {
        return false;
    }
    mm_args a = {y, N, x, K, w, K, wt, bias, 1.0f, M, N, K};
    if (pool == NULL) {
        /* One thread (a 1-thread session, a CPU tensor-parallel rank): the whole rectangle in
         * one call, the same arithmetic per element as any split. Scratch from the heap for
         * this call; without it the caller's path (round, then cpu_matmul) runs instead. */
        void *raw = nv_malloc(NULL, need + 64);
        if (raw == NULL) {
            return false;
        }
        k(&a, 0, M, 0, N, (void *)(((uintptr_t)raw + 63u) & ~(uintptr_t)63u));
        nv_free(NULL, raw);
        return true;
    }
    if (form == MM_FORM_SMALL) {
        mm_run(pool, &a, k, need, 16, 4, 16, INT_MAX, 0);
    } else {
        mm_run(pool, &a, k, need, 64, 12, 256, 96, mm_x86_block_n(MM_AVX512));
    }
    return true;
}

void cpu_round_bf16(float *dst, const float *src, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        dst[i] = nv_bf16_to_f32(nv_f32_to_bf16(src[i]));
    }
}

void cpu_gemm_nt_f32(nv_pool *pool, float *c, int ldc, const float *a, int lda, const float *b,
                     int ldb, int M, int N, int K, float alpha)
{
    mm_args args = {c, ldc, a, lda, b, ldb, NV_F32, NULL, alpha, M, N, K};
    if (K <= 0) {
        for (int m = 0; m < M; m++) {
            memset(c + (size_t)m * (size_t)ldc, 0, (size_t)NV_MAX(N, 0) * sizeof(float));
        }
        return;
    }
    mm_nt_f32_path(pool, &args, mm_simd_detected());
}

void cpu_gemm_nn_f32(nv_pool *pool, float *c, int ldc, const float *a, int lda, const float *b,
                     int ldb, int M, int N, int K)
{
    mm_args args = {c, ldc, a, lda, b, ldb, NV_F32, NULL, 1.0f, M, N, K};
    mm_nn_f32_path(pool, &args, mm_simd_detected());
}
