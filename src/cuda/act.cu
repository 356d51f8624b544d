/*
 * act.cu - elementwise ops on f32 activations: exact-erf GELU (ViT MLP, projector), SiLU(g)*u
 * (SwiGLU), the residual add with an optional per-channel layer scale, and the row-broadcast
 * add of a bias or position embedding (stored f32, bf16 or f16). Grid-stride loops, the same
 * formulas as the CPU op.
 */
#include "cuda/cuda_internal.h"

#define ACT_THREADS 256

static __global__ void gelu_kernel(float *y, const float *x, size_t n)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        float v = x[i];
        y[i] = 0.5f * v * (1.0f + erff(v * 0.70710678118654752f));
    }
}

static __global__ void silu_mul_kernel(float *y, const float *g, const float *u, size_t n)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        float a = g[i];
        y[i] = a / (1.0f + expf(-a)) * u[i];
    }
}

static __global__ void add_scaled_kernel(float *y, const float *x, const float *sc, size_t n,
                                         int cols)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        float v = x[i];
        if (sc != NULL) {
            v = sc[i % (size_t)cols] * v;
        }
        y[i] += v;
    }
}

static __global__ void add_rows_kernel(float *y, const void *b, nv_dtype bt, int b_rows,
                                       size_t n, int cols)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        size_t r = i / (size_t)cols;
        size_t c = i % (size_t)cols;
        y[i] += cuda_load(b, bt, (r % (size_t)b_rows) * (size_t)cols + c);
    }
}

cudaError_t cuda_gelu(cudaStream_t s, float *y, const float *x, size_t n)
{
    if (n == 0) {
        return cudaSuccess;
    }
    NV_LAUNCH(gelu_kernel, cuda_blocks(n, ACT_THREADS), ACT_THREADS, 0, s)(y, x, n);
    return cudaGetLastError();
}

cudaError_t cuda_silu_mul(cudaStream_t s, float *y, const float *g, const float *u, size_t n)
{
    if (n == 0) {
        return cudaSuccess;
    }
    NV_LAUNCH(silu_mul_kernel, cuda_blocks(n, ACT_THREADS), ACT_THREADS, 0, s)(y, g, u, n);
    return cudaGetLastError();
}

cudaError_t cuda_add_scaled(cudaStream_t s, float *y, const float *x, const float *sc,
                            int rows, int cols)
{
    if (rows <= 0 || cols <= 0) {
        return cudaSuccess;
    }
    size_t n = (size_t)rows * (size_t)cols;
    NV_LAUNCH(add_scaled_kernel, cuda_blocks(n, ACT_THREADS), ACT_THREADS, 0, s)(y, x, sc, n,
                                                                                 cols);
    return cudaGetLastError();
}

cudaError_t cuda_add_rows(cudaStream_t s, float *y, const void *b, nv_dtype bt, int b_rows,
                          int rows, int cols)
{
    if (rows <= 0 || cols <= 0) {
        return cudaSuccess;
    }
    if (b_rows <= 0) {
        return cudaErrorInvalidValue;
    }
    size_t n = (size_t)rows * (size_t)cols;
    NV_LAUNCH(add_rows_kernel, cuda_blocks(n, ACT_THREADS), ACT_THREADS, 0, s)(y, b, bt, b_rows,
                                                                               n, cols);
    return cudaGetLastError();
}
