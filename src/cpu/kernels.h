/*
 * kernels.h - the CPU backend's compute primitives: a per-session thread pool and the GEMM
 * that carries almost all FLOPs (activations f32, weights bf16/f16/f32 used in place).
 * Implementations pick AVX-512 / AVX2+FMA / portable C at run time; all paths accumulate in f32
 * and agree within 1e-6 relative of each other. The fast precision (NVLM_PRECISION_FAST) rounds
 * the activations to bf16 first: cpu_matmul_bf16 (AVX512-BF16 vdpbf16ps), or elsewhere
 * cpu_round_bf16 followed by cpu_matmul (the same products, widened to f32).
 */
#ifndef NVLM_CPU_KERNELS_H
#define NVLM_CPU_KERNELS_H

#include "internal.h"
#include "tensor.h"

/* A fixed set of worker threads. nv_pool_run is called by one thread at a time (the pool's
 * owner, e.g. one session); different pools run concurrently. */
typedef struct nv_pool nv_pool;

/* n_threads >= 1 (the calling thread counts as one: n_threads - 1 workers are started). */
nvlm_status nv_pool_create(nvlm_context *ctx, int n_threads, nv_pool **out);
void nv_pool_free(nv_pool *pool);
int nv_pool_size(const nv_pool *pool);
/* Runs fn(arg, i, n) for i = 0..n-1 (n = pool size) in parallel and waits for all.
 * pool may be NULL: fn(arg, 0, 1) on the calling thread. */
void nv_pool_run(nv_pool *pool, void (*fn)(void *arg, int i, int n), void *arg);

/* Per-thread scratch memory owned by the pool (NV_POOL_SCRATCH bytes, 64-byte aligned, made at
 * nv_pool_create): during a run, thread i may use nv_pool_scratch(pool, i) freely. NULL for a
 * NULL pool or i out of range. The GEMMs pack weight panels there. */
#define NV_POOL_SCRATCH (512 * 1024)
void *nv_pool_scratch(nv_pool *pool, int i);

/* y[M][N] = x[M][K] . W[N][K]^T (+ bias[N] when bias != NULL).
 * x, y, bias: f32 row-major, contiguous (y must not alias x). W: `wt` = NV_BF16, NV_F16 or NV_F32,
 * row-major (N, K) as stored in the checkpoint (a Linear weight). Threads split N (and M when
 * M is large). Deterministic: the result does not depend on the thread count. */
void cpu_matmul(nv_pool *pool, float *y, const float *x, const void *w, nv_dtype wt,
                const float *bias, int M, int N, int K);

/* The fast precision's GEMM: y = bf16(x) . W^T (+ bias) with bf16 W, every product bf16 x bf16
 * (exact in f32) and the sums in f32 (vdpbf16ps; the sum order differs from cpu_matmul's, so
 * results agree with cpu_matmul on cpu_round_bf16(x) within ~1e-6 relative of sum |x w|).
 * Deterministic as cpu_matmul (a NULL pool: the calling thread, same bits). Returns false,
 * computing nothing, when it cannot run: no AVX512-BF16, W not bf16, M < 8 rows of K too long
 * for the pool scratch, or (NULL pool) no memory for the scratch; the caller then rounds x
 * with cpu_round_bf16 and calls cpu_matmul. */
bool cpu_matmul_bf16(nv_pool *pool, float *y, const float *x, const void *w, nv_dtype wt,
                     const float *bias, int M, int N, int K);
/* dst[i] = f32(bf16(src[i])), round to nearest even (in place allowed). */
void cpu_round_bf16(float *dst, const float *src, size_t n);
/* y[M][N] = scale[n] * (x[M][K] . Q[N][K]^T)[m][n] (+ bias[N]) with Q the E4M3 codes of an FP8
 * weight (fp8.h) read in place (AVX-512 / AVX2: widened to f16 by shifts, then vcvtph2ps; the
 * portable path: a 256-entry table), f32 activations and accumulation (matmul_fp8.c). Every
 * product is exact in f32 and each path reduces like cpu_matmul's path of the same SIMD width;
 * deterministic whatever the thread count. */
void cpu_matmul_fp8(nv_pool *pool, float *y, const float *x, const uint8_t *q, const float *scale,
                    const float *bias, int M, int N, int K);

/* C[M][N] = alpha * A[M][K] . B[N][K]^T with A, B, C all f32 and row strides lda, ldb, ldc
 * (used by attention: scores = Q K^T). */
void cpu_gemm_nt_f32(nv_pool *pool, float *c, int ldc, const float *a, int lda, const float *b,
                     int ldb, int M, int N, int K, float alpha);

/* C[M][N] = A[M][K] . B[K][N] with f32 operands and row strides (attention: ctx = P V). */
void cpu_gemm_nn_f32(nv_pool *pool, float *c, int ldc, const float *a, int lda, const float *b,
                     int ldb, int M, int N, int K);

/* Name of the SIMD path chosen at run time ("avx512", "avx2", "portable"). */
const char *cpu_simd_name(void);

#endif /* NVLM_CPU_KERNELS_H */
