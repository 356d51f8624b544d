/*
 * rows.cu - data movement on the device: f32 -> bf16 (matmul inputs), row gather/scatter with
 * dtype conversion (embedding lookup, image splice, CLS/patch placement, pixel shuffle), the KV
 * cache append (f32 rows -> f32 or bf16 cache rows, round to nearest even) and im2col for the
 * ViT patch embedding (a stride-p convolution as a GEMM). Index arrays are device copies.
 */
#include "cuda/cuda_internal.h"

#define ROWS_THREADS 256

static __global__ void to_bf16_kernel(__nv_bfloat16 *y, const float *x, size_t n)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        y[i] = __float2bfloat16_rn(x[i]);
    }
}

static __global__ void rows_copy_kernel(float *dst, const int32_t *di, const void *src,
                                        nv_dtype st, const int32_t *si, size_t n, int cols)
{
    size_t total = n * (size_t)cols;
    for (size_t t = blockIdx.x * (size_t)blockDim.x + threadIdx.x; t < total;
         t += (size_t)gridDim.x * blockDim.x) {
        size_t i = t / (size_t)cols;
        size_t c = t % (size_t)cols;
        size_t d = di != NULL ? (size_t)di[i] : i;
        size_t s = si != NULL ? (size_t)si[i] : i;
        dst[d * (size_t)cols + c] = cuda_load(src, st, s * (size_t)cols + c);
    }
}

static __global__ void store_rows_kernel(void *dst, int bf16, long long row0, const float *src,
                                         int lds, size_t n, int cols)
{
    size_t total = n * (size_t)cols;
    for (size_t t = blockIdx.x * (size_t)blockDim.x + threadIdx.x; t < total;
         t += (size_t)gridDim.x * blockDim.x) {
        size_t i = t / (size_t)cols;
        size_t c = t % (size_t)cols;
        float v = src[i * (size_t)lds + c];
        size_t o = ((size_t)row0 + i) * (size_t)cols + c;
        if (bf16) {
            ((__nv_bfloat16 *)dst)[o] = __float2bfloat16_rn(v);
        } else {
            ((float *)dst)[o] = v;
        }
    }
}

/* One thread per output element of (batch * gh * gw, C * p * p). */
static __global__ void im2col_kernel(float *out, const float *pix, int channels, int height,
                                     int width, int patch, int gh, int gw, size_t total)
{
    size_t feat = (size_t)channels * patch * patch;
    for (size_t t = blockIdx.x * (size_t)blockDim.x + threadIdx.x; t < total;
         t += (size_t)gridDim.x * blockDim.x) {
        size_t row = t / feat;
        int f = (int)(t % feat);
        int kx = f % patch;
        int ky = (f / patch) % patch;
        int c = f / (patch * patch);
        int px = (int)(row % (size_t)gw);
        int py = (int)((row / (size_t)gw) % (size_t)gh);
        size_t b = row / ((size_t)gw * gh);
        size_t src = (((b * channels + c) * height + (size_t)py * patch + ky) * width) +
                     (size_t)px * patch + kx;
        out[t] = pix[src];
    }
}

cudaError_t cuda_to_bf16(cudaStream_t s, __nv_bfloat16 *y, const float *x, size_t n)
{
    if (n == 0) {
        return cudaSuccess;
    }
    NV_LAUNCH(to_bf16_kernel, cuda_blocks(n, ROWS_THREADS), ROWS_THREADS, 0, s)(y, x, n);
    return cudaGetLastError();
}

cudaError_t cuda_rows_copy(cudaStream_t s, float *dst, const int32_t *dst_idx, const void *src,
                           nv_dtype src_type, const int32_t *src_idx, size_t n, int cols)
{
    if (n == 0 || cols <= 0) {
        return cudaSuccess;
    }
    size_t total = n * (size_t)cols;
    NV_LAUNCH(rows_copy_kernel, cuda_blocks(total, ROWS_THREADS), ROWS_THREADS, 0, s)(
        dst, dst_idx, src, src_type, src_idx, n, cols);
    return cudaGetLastError();
}

cudaError_t cuda_store_rows(cudaStream_t s, void *dst, nv_dtype type, int64_t row0,
                            const float *src, int lds, size_t n, int cols)
{
    if (n == 0 || cols <= 0) {
        return cudaSuccess;
    }
    if (type != NV_F32 && type != NV_BF16) {
        return cudaErrorInvalidValue;
    }
    size_t total = n * (size_t)cols;
    NV_LAUNCH(store_rows_kernel, cuda_blocks(total, ROWS_THREADS), ROWS_THREADS, 0, s)(
        dst, type == NV_BF16, (long long)row0, src, lds, n, cols);
    return cudaGetLastError();
}

cudaError_t cuda_im2col(cudaStream_t s, float *out, const float *pix, int batch, int channels,
                        int height, int width, int patch)
{
    if (patch <= 0 || batch <= 0 || channels <= 0) {
        return batch <= 0 ? cudaSuccess : cudaErrorInvalidValue;
    }
    int gh = height / patch;
    int gw = width / patch;
    size_t total = (size_t)batch * gh * gw * channels * patch * patch;
    if (total == 0) {
        return cudaSuccess;
    }
    NV_LAUNCH(im2col_kernel, cuda_blocks(total, ROWS_THREADS), ROWS_THREADS, 0, s)(
        out, pix, channels, height, width, patch, gh, gw, total);
    return cudaGetLastError();
}
