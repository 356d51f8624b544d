/*
 * gemm_pad.cu - the GEMM input of a weight stored with padded rows (memory_plan.h:
 * nv_mem_weight_ld; the ViT patch embedding's K = 3 x 14 x 14 = 588 is stored as 592):
 * x (rows, cols) f32 becomes bf16 rows of ld >= cols elements, columns cols..ld-1 zero, in the
 * same single pass that converts an unpadded input. The zero columns meet the weight's zero
 * columns, so the GEMM runs with the aligned K and the same result.
 */
#include "cuda/cuda_internal.h"

#define PAD_THREADS 256

static __global__ void to_bf16_pad_kernel(__nv_bfloat16 *y, int ld, const float *x, size_t rows,
                                          int cols)
{
    size_t n = rows * (size_t)ld;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        size_t r = i / (size_t)ld;
        int c = (int)(i - r * (size_t)ld);
        y[i] = c < cols ? __float2bfloat16_rn(x[r * (size_t)cols + (size_t)c])
                        : __float2bfloat16_rn(0.0f);
    }
}

cudaError_t cuda_to_bf16_pad(cudaStream_t s, __nv_bfloat16 *y, int ld, const float *x,
                             size_t rows, int cols)
{
    if (rows == 0 || ld <= 0) {
        return cudaSuccess;
    }
    if (cols > ld || cols < 0) {
        return cudaErrorInvalidValue;
    }
    size_t n = rows * (size_t)ld;
    NV_LAUNCH(to_bf16_pad_kernel, cuda_blocks(n, PAD_THREADS), PAD_THREADS, 0, s)(y, ld, x, rows,
                                                                                 cols);
    return cudaGetLastError();
}
