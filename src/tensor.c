/*
 * tensor.c - dtype table and scalar conversions shared by every module.
 */
#include "tensor.h"

#include <math.h>
#include <string.h>

static const struct {
    const char *name;
    size_t size;
} dtypes[NV_DTYPE_COUNT] = {
    [NV_F32] = {"F32", 4},   [NV_F16] = {"F16", 2},        [NV_BF16] = {"BF16", 2},
    [NV_F64] = {"F64", 8},   [NV_I64] = {"I64", 8},        [NV_I32] = {"I32", 4},
    [NV_I16] = {"I16", 2},   [NV_I8] = {"I8", 1},          [NV_U64] = {"U64", 8},
    [NV_U32] = {"U32", 4},   [NV_U16] = {"U16", 2},        [NV_U8] = {"U8", 1},
    [NV_BOOL] = {"BOOL", 1}, [NV_F8_E4M3] = {"F8_E4M3", 1}, [NV_F8_E5M2] = {"F8_E5M2", 1},
};

size_t nv_dtype_size(nv_dtype t)
{
    return (unsigned)t < NV_DTYPE_COUNT ? dtypes[t].size : 0;
}

const char *nv_dtype_name(nv_dtype t)
{
    return (unsigned)t < NV_DTYPE_COUNT ? dtypes[t].name : "?";
}

int nv_dtype_from_name(const char *name)
{
    for (int i = 0; i < NV_DTYPE_COUNT; i++) {
        if (strcmp(dtypes[i].name, name) == 0) {
            return i;
        }
    }
    return -1;
}

int64_t nv_tensor_nelem(const nv_tensor *t)
{
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++) {
        if (t->shape[i] != 0 && n > INT64_MAX / t->shape[i]) {
            return INT64_MAX;
        }
        n *= t->shape[i];
    }
    return n;
}

float nv_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t mant = h & 0x3ffu;
    union { uint32_t u; float f; } v;
    if (exp == 0) {
        /* zero or subnormal: mant * 2^-24 exactly */
        float f = ldexpf((float)mant, -24);
        return sign ? -f : f;
    }
    if (exp == 31) {
        v.u = sign | 0x7f800000u | (mant << 13);
        return v.f;
    }
    v.u = sign | ((exp + 112u) << 23) | (mant << 13);
    return v.f;
}

uint16_t nv_f32_to_f16(float f)
{
    union { float f; uint32_t u; } v = {f};
    uint32_t sign = (v.u >> 16) & 0x8000u;
    uint32_t a = v.u & 0x7fffffffu;
    if (a > 0x7f800000u) {
        return (uint16_t)(sign | 0x7e00u);
    }
    if (a >= 0x477ff000u) { /* rounds to >= 65536: inf */
        return (uint16_t)(sign | 0x7c00u);
    }
    if (a < 0x38800000u) { /* below the smallest normal: subnormal or zero */
        float m = fabsf(f) * 16777216.0f; /* in units of 2^-24; nearbyint rounds to even */
        return (uint16_t)(sign | (uint32_t)nearbyintf(m));
    }
    uint32_t r = a + 0xfffu + ((a >> 13) & 1u);
    return (uint16_t)(sign | ((r - 0x38000000u) >> 13));
}

void nv_to_f32(float *dst, const void *src, nv_dtype t, size_t n)
{
    if (t == NV_F32) {
        memcpy(dst, src, n * sizeof(float));
    } else if (t == NV_BF16) {
        const uint16_t *s = src;
        for (size_t i = 0; i < n; i++) {
            dst[i] = nv_bf16_to_f32(s[i]);
        }
    } else if (t == NV_F16) {
        const uint16_t *s = src;
        for (size_t i = 0; i < n; i++) {
            dst[i] = nv_f16_to_f32(s[i]);
        }
    }
}
