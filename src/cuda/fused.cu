/*
 * fused.cu - fused ops of backend.h's optional block: the residual add + RMSNorm that also
 * writes the next GEMM's bf16 input (one block per row), SiLU(gate) * up over the output of
 * the grouped gate|up GEMM (rows of 2 I), and RoPE fused into the KV append (K rows rotated
 * on the way into the cache, inverse frequencies from a device table made once per session).
 * Same formulas and order as the plain ops (norm.cu, act.cu, rope.cu, rows.cu). Kernels and
 * launchers only (the host emulation compiles this file); the ops are in fused_ops.cu.
 */
#include "cuda/cuda_internal.h"

/* NV_LAUNCH(kernel, grid, block, shmem, stream)(args...): the <<<>>> launch under nvcc; the
 * host emulation of the kernels defines it as a call that runs the grid on the CPU. */
#ifndef NV_LAUNCH
#define NV_LAUNCH(k, grid, block, shmem, stream) k<<<(grid), (block), (shmem), (stream)>>>
#endif

#include <math.h>

#define FUSED_THREADS 256

/* One block per row: h += sc (.) a (a may be NULL, sc may be NULL), then x = w * (h * inv)
 * in f32 and, when xbf is not NULL, in bf16 (round to nearest even) for the next GEMM. */
static __global__ void add_rmsnorm_kernel(float *h, const float *a, const float *sc, float *x,
                                          __nv_bfloat16 *xbf, const float *w, int cols,
                                          float eps)
{
    __shared__ float sh[32];
    size_t off = (size_t)blockIdx.x * (size_t)cols;
    float *hr = h + off;
    float ss = 0.0f;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
        float v = hr[c];
        if (a != NULL) {
            float d = a[off + c];
            if (sc != NULL) {
                d = sc[c] * d;
            }
            v += d;
            hr[c] = v;
        }
        ss += v * v;
    }
    ss = cuda_block_sum(ss, sh);
    float inv = 1.0f / sqrtf(ss / (float)cols + eps);
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
        float y = w[c] * (hr[c] * inv);
        x[off + c] = y;
        if (xbf != NULL) {
            xbf[off + c] = __float2bfloat16_rn(y);
        }
    }
}

static __global__ void silu_mul_cat_kernel(float *y, const float *gu, int rows, int cols)
{
    size_t n = (size_t)rows * (size_t)cols;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        size_t r = i / (size_t)cols;
        size_t c = i % (size_t)cols;
        const float *g = gu + r * 2 * (size_t)cols;
        float v = g[c];
        y[i] = v / (1.0f + expf(-v)) * g[(size_t)cols + c];
    }
}

/* One thread per (row, pair i): rotates pair (i, i + hd/2) of every head of src row r at
 * position row0 + r and stores it at cache row row0 + r (f32 or bf16). */
static __global__ void rope_store_kernel(void *dst, int bf16, long long row0, const float *src,
                                         int lds, int rows, int n_heads, int head_dim,
                                         const float *inv_freq)
{
    int half = head_dim / 2;
    size_t total = (size_t)rows * (size_t)half;
    size_t cols = (size_t)n_heads * (size_t)head_dim;
    for (size_t t = blockIdx.x * (size_t)blockDim.x + threadIdx.x; t < total;
         t += (size_t)gridDim.x * blockDim.x) {
        int r = (int)(t / (size_t)half);
        int i = (int)(t % (size_t)half);
        float pos = (float)(row0 + r);
        float ang = pos * inv_freq[i];
        float c = (float)cos((double)ang);
        float s = (float)sin((double)ang);
        const float *row = src + (size_t)r * (size_t)lds;
        size_t o = ((size_t)row0 + (size_t)r) * cols;
        for (int h = 0; h < n_heads; h++) {
            const float *v = row + (size_t)h * head_dim;
            float a = v[i];
            float b = v[i + half];
            float y0 = a * c - b * s;
            float y1 = b * c + a * s;
            size_t d = o + (size_t)h * head_dim + i;
            if (bf16) {
                ((__nv_bfloat16 *)dst)[d] = __float2bfloat16_rn(y0);
                ((__nv_bfloat16 *)dst)[d + half] = __float2bfloat16_rn(y1);
            } else {
                ((float *)dst)[d] = y0;
                ((float *)dst)[d + half] = y1;
            }
        }
    }
}

cudaError_t cuda_add_rmsnorm(cudaStream_t s, float *h, const float *a, const float *sc,
                             float *x, __nv_bfloat16 *xbf, const float *w, int rows, int cols,
                             float eps)
{
    if (rows <= 0 || cols <= 0) {
        return cudaSuccess;
    }
    NV_LAUNCH(add_rmsnorm_kernel, (unsigned)rows, FUSED_THREADS, 0, s)(h, a, sc, x, xbf, w,
                                                                       cols, eps);
    return cudaGetLastError();
}

cudaError_t cuda_silu_mul_cat(cudaStream_t s, float *y, const float *gu, int rows, int cols)
{
    if (rows <= 0 || cols <= 0) {
        return cudaSuccess;
    }
    size_t n = (size_t)rows * (size_t)cols;
    unsigned nb = cuda_blocks(n, FUSED_THREADS);
    NV_LAUNCH(silu_mul_cat_kernel, nb, FUSED_THREADS, 0, s)(y, gu, rows, cols);
    return cudaGetLastError();
}

cudaError_t cuda_rope_store(cudaStream_t s, void *dst, nv_dtype type, int64_t row0,
                            const float *src, int lds, int rows, int n_heads, int head_dim,
                            const float *inv_freq)
{
    int half = head_dim / 2;
    if (rows <= 0 || n_heads <= 0) {
        return cudaSuccess;
    }
    if (half <= 0 || head_dim % 2 != 0 || (type != NV_F32 && type != NV_BF16)) {
        return cudaErrorInvalidValue;
    }
    size_t n = (size_t)rows * (size_t)half;
    unsigned nb = cuda_blocks(n, FUSED_THREADS);
    NV_LAUNCH(rope_store_kernel, nb, FUSED_THREADS, 0, s)(
        dst, type == NV_BF16, (long long)row0, src, lds, rows, n_heads, head_dim, inv_freq);
    return cudaGetLastError();
}
