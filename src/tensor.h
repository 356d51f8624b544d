/*
 * tensor.h - the one tensor descriptor shared by the loader, the pipeline and the backends.
 * Shapes are row-major as in PyTorch/safetensors: shape[ndim-1] is the contiguous dimension;
 * a linear weight is (out, in) and computes y = x * W^T. Only contiguous tensors exist.
 */
#ifndef NVLM_TENSOR_H
#define NVLM_TENSOR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum nv_dtype {
    NV_F32 = 0,
    NV_F16,
    NV_BF16,
    NV_F64,
    NV_I64,
    NV_I32,
    NV_I16,
    NV_I8,
    NV_U64,
    NV_U32,
    NV_U16,
    NV_U8,
    NV_BOOL,
    NV_F8_E4M3,
    NV_F8_E5M2,
    NV_DTYPE_COUNT
} nv_dtype;

#define NV_MAX_DIMS 8

typedef struct nv_tensor {
    nv_dtype dtype;
    int ndim;
    int64_t shape[NV_MAX_DIMS];
    void *data;       /* host pointer, or device pointer when device >= 0 is a GPU */
    int device;       /* -1 = host memory */
    /* NV_F8_E4M3 matrices (N, K): N per-output-row f32 scales (the value of element (n, k) is
     * scale[n] * e4m3(data[n][k])), in the same memory as data: host memory borrowed from
     * whoever owns the codes for a checkpoint tensor; in a CUDA backend's weight, device
     * memory in the weight's own allocation. NULL for every other tensor. */
    const float *scale;
} nv_tensor;

/* Bytes per element; 0 for an invalid dtype. */
size_t nv_dtype_size(nv_dtype t);
/* Safetensors dtype name ("BF16", "F32", ...) and back; -1 when unknown. */
const char *nv_dtype_name(nv_dtype t);
int nv_dtype_from_name(const char *name);

/* Number of elements (product of shape; 1 for a 0-d tensor). Saturates at INT64_MAX. */
int64_t nv_tensor_nelem(const nv_tensor *t);

/* bf16 <-> f32 conversions (round to nearest even; NaN kept quiet). */
static inline float nv_bf16_to_f32(uint16_t h)
{
    union { uint32_t u; float f; } v = {(uint32_t)h << 16};
    return v.f;
}
static inline uint16_t nv_f32_to_bf16(float f)
{
    union { float f; uint32_t u; } v = {f};
    if ((v.u & 0x7fffffffu) > 0x7f800000u) {
        return (uint16_t)((v.u >> 16) | 0x40);
    }
    uint32_t rounding = 0x7fffu + ((v.u >> 16) & 1u);
    return (uint16_t)((v.u + rounding) >> 16);
}
float nv_f16_to_f32(uint16_t h);
uint16_t nv_f32_to_f16(float f);

/* Convert n elements of `src` (F32, F16 or BF16) to f32. */
void nv_to_f32(float *dst, const void *src, nv_dtype t, size_t n);

#endif /* NVLM_TENSOR_H */
