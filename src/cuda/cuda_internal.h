/*
 * cuda_internal.h - what the CUDA backend's .cu files share (C++ only): the per-model state
 * (cuda_backend), the per-session stream and scratch (cuda_exec), the error helper and the
 * host launchers of each op family. Kernels live in their op's file; every launcher enqueues
 * on the given stream and returns the launch status (cudaGetLastError), never synchronises.
 * Activations are f32 (backend.h); weights are bf16 matrices or f32 vectors.
 */
#ifndef NVLM_CUDA_INTERNAL_H
#define NVLM_CUDA_INTERNAL_H

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

/* Every kernel launch is written NV_LAUNCH(kernel, grid, block, shmem, stream)(args...): the
 * <<<>>> launch under nvcc; the host emulation of the kernels (emu/cuda_host.h) defines it as a
 * call that runs the grid on the CPU. */
#ifndef NV_LAUNCH
#define NV_LAUNCH(k, grid, block, shmem, stream) k<<<(grid), (block), (shmem), (stream)>>>
#endif

/* The library's C headers carry no extern "C" of their own. */
extern "C" {
#include "backend.h"
}
#include "cuda_api.h"

typedef struct cuda_gemm cuda_gemm; /* cuBLASLt state of one exec (gemm_lt.cu) */

/* Per model: the device and the pinned staging used to upload weights. */
typedef struct cuda_backend {
    int device;
    int sm_count;
    char name[256];
    cudaStream_t upload;        /* weight uploads (created at the first weight) */
    void *stage[2];             /* pinned halves, double-buffered host -> device */
    cudaEvent_t stage_ev[2];
    size_t stage_bytes;         /* bytes per half */
    bool debug_sync;            /* NVLM_CUDA_SYNC: synchronise after every op */
} cuda_backend;

/* Per session: one stream; scratch grows on demand (first prefill), then is reused, so the
 * decode loop allocates nothing. */
typedef struct cuda_exec {
    cuda_backend *cb;
    cudaStream_t stream;
    cuda_gemm *gemm;            /* cuBLASLt handle, workspace, per-shape cache */
    __nv_bfloat16 *xbf;         /* bf16 copy of a matmul's activations */
    size_t xbf_cap;             /* elements */
    int32_t *idx;               /* device copies of rows_copy's index arrays */
    size_t idx_cap;             /* elements */
    float *part;                /* split-KV attention partials */
    size_t part_cap;            /* floats */
} cuda_exec;

static inline cuda_exec *cuda_ex(nv_exec *ex)
{
    return (cuda_exec *)ex->impl;
}

/* ---- device.cu ---- */

/* NVLM_OK for cudaSuccess; else NVLM_ERR_BACKEND with "CUDA <what>: <name> (<text>)" on
 * err_handle. Clears a non-sticky error so the next call starts clean. */
nvlm_status cuda_status(void *err_handle, cudaError_t e, const char *what);
/* NVLM_OK when `device`'s context is usable from this thread: not lost to a sticky error
 * (fault.h), and no CUDA error of someone else's pending on the thread (left there, not
 * taken). Else NVLM_ERR_BACKEND saying which. */
nvlm_status cuda_alive(int device, void *err_handle);
/* cuda_alive, then makes the exec's device current on the calling thread (sessions may change
 * threads; the public calls restore the application's device through the backend's
 * thread_enter/thread_leave). */
nvlm_status cuda_enter(nv_exec *ex);
/* With NVLM_CUDA_SYNC set: synchronises the exec's stream after op `op`, so that an
 * asynchronous failure is reported by the op that caused it. NVLM_OK otherwise. */
nvlm_status cuda_synced(nv_exec *ex, const char *op);
/* Ensures *buf holds at least `need` elements of `elem` bytes (synchronises the stream before
 * replacing it: an in-flight kernel may still read the old one). */
nvlm_status cuda_scratch(nv_exec *ex, void **buf, size_t *cap, size_t need, size_t elem,
                         const char *what);
/* Grid size for n elements with `threads` per block, capped (kernels use grid-stride loops). */
unsigned cuda_blocks(size_t n, unsigned threads);

/* ---- gemm_lt.cu ---- */

nvlm_status cuda_gemm_create(nv_exec *ex, cuda_gemm **out);
void cuda_gemm_free(nvlm_context *ctx, cuda_gemm *g);
/* y[M][N] (f32) = x[M][K] (bf16) . w[N][K]^T (bf16) (+ bias[N] f32), fp32 accumulation.
 * Plans are cached per bucket of M (gemm_plan.h); a rejected algorithm falls back to the next
 * the heuristic offered; NVLM_ERR_BACKEND naming the shape when none runs. */
nvlm_status cuda_gemm_bf16(nv_exec *ex, float *y, const __nv_bfloat16 *x,
                           const __nv_bfloat16 *w, const float *bias, int M, int N, int K);

/* ---- gemm_pad.cu ---- */

/* y (rows, ld) bf16 = x (rows, cols) f32 rounded to nearest even, columns cols..ld-1 zero. */
cudaError_t cuda_to_bf16_pad(cudaStream_t s, __nv_bfloat16 *y, int ld, const float *x,
                             size_t rows, int cols);

/* ---- norm.cu ---- */

cudaError_t cuda_rmsnorm(cudaStream_t s, float *y, int ldy, const float *x, int ldx,
                         const float *w, int rows, int cols, int stat_cols, float eps);
cudaError_t cuda_rows_sumsq(cudaStream_t s, float *out, const float *x, int ld, int rows,
                            int cols);
cudaError_t cuda_rmsnorm_scale(cudaStream_t s, float *y, int ldy, const float *x, int ldx,
                               const float *w, int rows, int cols, const float *sumsq, int n,
                               float eps);
cudaError_t cuda_layernorm(cudaStream_t s, float *y, const float *x, const float *w,
                           const float *b, int rows, int cols, float eps);

/* ---- rope.cu ---- */

#define CUDA_ROPE_MAX_HALF 256
cudaError_t cuda_rope(cudaStream_t s, float *x, int ld, int rows, int n_heads, int head_dim,
                      int64_t pos0, const float *inv_freq);

/* ---- attention.cu ---- */

#define CUDA_ATTN_MAX_HD 128
/* Partial floats the split-KV path needs (0 when it runs unsplit). */
size_t cuda_attention_part_floats(const cuda_backend *cb, int batch, int n_q, int n_kv,
                                  int n_heads, int n_kv_heads, int head_dim, int64_t cpos0);
cudaError_t cuda_attention(cudaStream_t s, const cuda_backend *cb, float *part, float *out,
                           int ldo, const float *q, int ldq, const void *k, const void *v,
                           int ldkv, nv_dtype kv_type, int batch, int n_q, int n_kv, int n_heads,
                           int n_kv_heads, int head_dim, float scale, int64_t cpos0);

/* ---- act.cu ---- */

cudaError_t cuda_gelu(cudaStream_t s, float *y, const float *x, size_t n);
cudaError_t cuda_silu_mul(cudaStream_t s, float *y, const float *g, const float *u, size_t n);
cudaError_t cuda_add_scaled(cudaStream_t s, float *y, const float *x, const float *sc,
                            int rows, int cols);
cudaError_t cuda_add_rows(cudaStream_t s, float *y, const void *b, nv_dtype bt, int b_rows,
                          int rows, int cols);

/* ---- rows.cu ---- */

cudaError_t cuda_to_bf16(cudaStream_t s, __nv_bfloat16 *y, const float *x, size_t n);
cudaError_t cuda_rows_copy(cudaStream_t s, float *dst, const int32_t *dst_idx, const void *src,
                           nv_dtype src_type, const int32_t *src_idx, size_t n, int cols);
cudaError_t cuda_store_rows(cudaStream_t s, void *dst, nv_dtype type, int64_t row0,
                            const float *src, int lds, size_t n, int cols);
cudaError_t cuda_im2col(cudaStream_t s, float *out, const float *pix, int batch, int channels,
                        int height, int width, int patch);

/* Element loads shared by the kernels: f32, bf16 or f16 storage read as f32. */
__device__ __forceinline__ float cuda_load(const void *p, nv_dtype t, size_t i)
{
    if (t == NV_F32) {
        return ((const float *)p)[i];
    }
    if (t == NV_BF16) {
        return __bfloat162float(((const __nv_bfloat16 *)p)[i]);
    }
    return __half2float(((const __half *)p)[i]);
}

#endif /* NVLM_CUDA_INTERNAL_H */
