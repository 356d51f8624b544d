/*
 * matmul_impl.h - private to the CPU GEMMs (matmul.c, matmul_x86.c) and their test: the
 * argument block, the SIMD paths and the entry points that force one path.
 */
#ifndef NVLM_CPU_MATMUL_IMPL_H
#define NVLM_CPU_MATMUL_IMPL_H

#include "cpu/kernels.h"

typedef enum mm_simd {
    MM_PORTABLE = 0,
    MM_AVX2,
    MM_AVX512,
    MM_SIMD_COUNT
} mm_simd;

/* y[m][n] = alpha * sum_k x[m][k] * w(n, k) (+ bias[n]); for the NN form w(n, k) = w[k][n].
 * Row strides in elements. */
typedef struct mm_args {
    float *y;
    int ldy;
    const float *x;
    int ldx;
    const void *w;
    int ldw;
    nv_dtype wt;
    const float *bias;
    float alpha;
    int M, N, K;
} mm_args;

/* Computes the rectangle [m0, m1) x [n0, n1) of y; scratch: NV_POOL_SCRATCH bytes, 64-aligned. */
typedef void (*mm_kernel)(const mm_args *a, int m0, int m1, int n0, int n1, void *scratch);

/* Kernel forms: SMALL = few rows of x (dot products along K, weights streamed once), BIG =
 * packed weight panels reused over many rows, NN = the (K, N) f32 form. */
typedef enum mm_form {
    MM_FORM_SMALL = 0,
    MM_FORM_BIG,
    MM_FORM_NN
} mm_form;

/* Below this many rows of x the SMALL form is used (decode, short turns). The choice depends
 * on M only, never on the thread count. */
#define MM_SMALL_M 8

/* Scratch bytes the x86 kernel of (path, form) needs for M rows (<= NV_POOL_SCRATCH). */
size_t mm_x86_scratch(mm_simd path, mm_form form, int M);

/* The x86 kernel of a path and form; NULL for MM_PORTABLE or on other architectures. */
mm_kernel mm_x86_kernel(mm_simd path, mm_form form);

/* The best path this CPU supports (detected once, thread-safe). */
mm_simd mm_simd_detected(void);
/* Whether `path` can run on this CPU. */
bool mm_simd_supported(mm_simd path);

/* The fast precision's kernels (AVX512-BF16, bf16 weights; matmul_x86.c): activations rounded
 * to bf16, bf16 x bf16 products summed in f32 by vdpbf16ps. NULL where not compiled (not
 * x86-64) and for MM_FORM_NN. Scratch bytes for M rows of K (the SMALL form keeps x as bf16
 * there; the caller checks it fits NV_POOL_SCRATCH). */
mm_kernel mm_x86_bf16_kernel(mm_form form);
size_t mm_x86_bf16_scratch(mm_form form, int M, int K);
/* Whether this CPU has AVX512-BF16 next to the AVX-512 path (detected once). */
bool mm_bf16dp_supported(void);

/* The three GEMMs on an explicit path (tests compare paths; callers use the cpu_* API). */
void mm_matmul_path(nv_pool *pool, const mm_args *a, mm_simd path);
void mm_nt_f32_path(nv_pool *pool, const mm_args *a, mm_simd path);
void mm_nn_f32_path(nv_pool *pool, const mm_args *a, mm_simd path);

/* Columns of one packed weight block of the BIG kernels (their NC). */
#ifndef MM_BLOCK_N
#define MM_BLOCK_N 512
#endif
/* The column chunk width the BIG kernels of `path` want per thread (MM_BLOCK_N, or the
 * AVX-512 kernels' own). */
int mm_x86_block_n(mm_simd path);

/* Split [0, M) x [0, N) into chunks of whole columns or whole rows (aligned to align_n /
 * align_m, at least min_n columns / min_m rows where possible) claimed by the pool's threads,
 * and call kern on each with that thread's scratch (`scratch` bytes needed; NULL pool: stack or
 * heap). Column chunks: block_n > 0 (the packed kernels) makes them about block_n wide, a whole
 * number per thread; 0 makes up to 4 per thread. The split never changes an element's
 * arithmetic. */
void mm_run(nv_pool *pool, const mm_args *a, mm_kernel kern, size_t scratch, int align_n,
            int align_m, int min_n, int min_m, int block_n);

/* cpu_matmul_fp8 (kernels.h) on an explicit path (matmul_fp8.c). */
void mm_matmul_fp8_path(nv_pool *pool, float *y, const float *x, const uint8_t *q,
                        const float *scale, const float *bias, int M, int N, int K, mm_simd path);

void mm_nt_portable(const mm_args *a, int m0, int m1, int n0, int n1, void *scratch);
void mm_nn_portable(const mm_args *a, int m0, int m1, int n0, int n1, void *scratch);

#endif /* NVLM_CPU_MATMUL_IMPL_H */
