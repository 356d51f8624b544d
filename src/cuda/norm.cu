/*
 * norm.cu - RMSNorm (also the ViT QK-norm: the statistic over the first stat_cols channels of
 * the padded heads, applied to all `cols`), its two halves for a statistic spread over
 * tensor-parallel ranks (per-row sums of squares; the scaling with a given statistic), and
 * LayerNorm (biased variance, two passes), one block per row, f32 throughout. Matches the CPU
 * op's formula order: y = w * (x * inv).
 */
#include "cuda/cuda_internal.h"

#define NORM_THREADS 256

static __global__ void rmsnorm_kernel(float *y, int ldy, const float *x, int ldx, const float *w,
                                      int cols, int stat_cols, float eps)
{
    __shared__ float sh[32];
    const float *xr = x + (size_t)blockIdx.x * (size_t)ldx;
    float *yr = y + (size_t)blockIdx.x * (size_t)ldy;
    float ss = 0.0f;
    for (int c = threadIdx.x; c < stat_cols; c += blockDim.x) {
        ss += xr[c] * xr[c];
    }
    ss = cuda_block_sum(ss, sh);
    float inv = 1.0f / sqrtf(ss / (float)stat_cols + eps);
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
        yr[c] = w[c] * (xr[c] * inv);
    }
}

/* out[r] = sum of x[r][0..cols)^2: the part of a norm statistic one tensor-parallel rank holds. */
static __global__ void sumsq_kernel(float *out, const float *x, int ld, int cols)
{
    __shared__ float sh[32];
    const float *xr = x + (size_t)blockIdx.x * (size_t)ld;
    float ss = 0.0f;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
        ss += xr[c] * xr[c];
    }
    ss = cuda_block_sum(ss, sh);
    if (threadIdx.x == 0) {
        out[blockIdx.x] = ss;
    }
}

/* rmsnorm_kernel's scaling with the statistic given: sumsq[r] over n channels. */
static __global__ void rmsnorm_scale_kernel(float *y, int ldy, const float *x, int ldx,
                                            const float *w, int cols, const float *sumsq, int n,
                                            float eps)
{
    const float *xr = x + (size_t)blockIdx.x * (size_t)ldx;
    float *yr = y + (size_t)blockIdx.x * (size_t)ldy;
    float inv = 1.0f / sqrtf(sumsq[blockIdx.x] / (float)n + eps);
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
        yr[c] = w[c] * (xr[c] * inv);
    }
}

static __global__ void layernorm_kernel(float *y, const float *x, const float *w, const float *b,
                                        int cols, float eps)
{
    __shared__ float sh[32];
    const float *xr = x + (size_t)blockIdx.x * (size_t)cols;
    float *yr = y + (size_t)blockIdx.x * (size_t)cols;
    float s = 0.0f;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
        s += xr[c];
    }
    float mean = cuda_block_sum(s, sh) / (float)cols;
    float v = 0.0f;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
        float d = xr[c] - mean;
        v += d * d;
    }
    float inv = 1.0f / sqrtf(cuda_block_sum(v, sh) / (float)cols + eps);
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
        yr[c] = (xr[c] - mean) * inv * w[c] + b[c];
    }
}

cudaError_t cuda_rmsnorm(cudaStream_t s, float *y, int ldy, const float *x, int ldx,
                         const float *w, int rows, int cols, int stat_cols, float eps)
{
    if (rows <= 0 || cols <= 0) {
        return cudaSuccess;
    }
    NV_LAUNCH(rmsnorm_kernel, rows, NORM_THREADS, 0, s)(y, ldy, x, ldx, w, cols, stat_cols,
                                                        eps);
    return cudaGetLastError();
}

cudaError_t cuda_rows_sumsq(cudaStream_t s, float *out, const float *x, int ld, int rows,
                            int cols)
{
    if (rows <= 0) {
        return cudaSuccess;
    }
    NV_LAUNCH(sumsq_kernel, rows, NORM_THREADS, 0, s)(out, x, ld, cols);
    return cudaGetLastError();
}

cudaError_t cuda_rmsnorm_scale(cudaStream_t s, float *y, int ldy, const float *x, int ldx,
                               const float *w, int rows, int cols, const float *sumsq, int n,
                               float eps)
{
    if (rows <= 0 || cols <= 0) {
        return cudaSuccess;
    }
    NV_LAUNCH(rmsnorm_scale_kernel, rows, NORM_THREADS, 0, s)(y, ldy, x, ldx, w, cols, sumsq, n,
                                                              eps);
    return cudaGetLastError();
}

cudaError_t cuda_layernorm(cudaStream_t s, float *y, const float *x, const float *w,
                           const float *b, int rows, int cols, float eps)
{
    if (rows <= 0 || cols <= 0) {
        return cudaSuccess;
    }
    NV_LAUNCH(layernorm_kernel, rows, NORM_THREADS, 0, s)(y, x, w, b, cols, eps);
    return cudaGetLastError();
}
