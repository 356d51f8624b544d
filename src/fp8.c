/*
 * fp8.c - E4M3 conversions and the per-output-channel quantizer of the LLM projections
 * (fp8.h). The rounding is done on the f32 bit pattern, so it never depends on the floating
 * point environment: the result is a pure function of the input bits.
 */
#include "fp8.h"

#include <math.h>
#include <string.h>

uint8_t fp8_from_f32(float v)
{
    union { float f; uint32_t u; } b = {v};
    uint8_t sign = (uint8_t)((b.u >> 24) & 0x80u);
    uint32_t a = b.u & 0x7fffffffu;
    if (a > 0x7f800000u) {
        return (uint8_t)(sign | 0x7f);
    }
    if (a >= 0x43e00000u) { /* >= 448 (infinity included): saturate */
        return (uint8_t)(sign | 0x7e);
    }
    if (a < 0x3c800000u) {
        /* below 2^-6: subnormal codes m * 2^-9; a * 2^9 is exact, then round half to even */
        union { uint32_t u; float f; } x = {a};
        float s = x.f * 512.0f;
        uint32_t m = (uint32_t)s;
        float frac = s - (float)m;
        if (frac > 0.5f || (frac == 0.5f && (m & 1u))) {
            m++;
        }
        return (uint8_t)(sign | m); /* m = 8 is 2^-6, the first normal code */
    }
    /* normal: keep 3 mantissa bits, round half to even (a carry moves into the exponent) */
    uint32_t keep = a >> 20, rem = a & 0xfffffu;
    if (rem > 0x80000u || (rem == 0x80000u && (keep & 1u))) {
        keep++;
    }
    uint32_t code = keep - ((127u - 7u) << 3);
    if (code > 0x7eu) {
        code = 0x7e;
    }
    return (uint8_t)(sign | code);
}

float fp8_to_f32(uint8_t c)
{
    int e = (c >> 3) & 15, m = c & 7;
    float v;
    if ((c & 0x7f) == 0x7f) {
        v = NAN;
    } else if (e == 0) {
        v = ldexpf((float)m, -9);
    } else {
        v = ldexpf(1.0f + (float)m / 8.0f, e - 7);
    }
    return (c & 0x80) ? -v : v;
}

static float elem(const void *w, nv_dtype wt, size_t i)
{
    if (wt == NV_BF16) {
        return nv_bf16_to_f32(((const uint16_t *)w)[i]);
    }
    if (wt == NV_F16) {
        return nv_f16_to_f32(((const uint16_t *)w)[i]);
    }
    return ((const float *)w)[i];
}

bool fp8_quantize(uint8_t *q, float *scale, const void *w, nv_dtype wt, int64_t N, int64_t K)
{
    for (int64_t n = 0; n < N; n++) {
        size_t row = (size_t)n * (size_t)K;
        float mx = 0.0f;
        for (int64_t k = 0; k < K; k++) {
            float a = fabsf(elem(w, wt, row + (size_t)k));
            if (!(a <= 3.40282347e+38f)) {
                return false;
            }
            mx = a > mx ? a : mx;
        }
        /* IEEE f32 divisions (the build never enables reciprocal math) */
        float sc = mx > 0.0f ? mx / FP8_MAX : 1.0f;
        scale[n] = sc;
        for (int64_t k = 0; k < K; k++) {
            q[row + (size_t)k] = fp8_from_f32(elem(w, wt, row + (size_t)k) / sc);
        }
    }
    return true;
}

int64_t fp8_find_nan(const uint8_t *q, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if ((q[i] & 0x7f) == 0x7f) {
            return (int64_t)i;
        }
    }
    return -1;
}

bool fp8_is_projection(const char *name)
{
    static const char *const tails[] = {"self_attn.q_proj.weight", "self_attn.k_proj.weight",
                                        "self_attn.v_proj.weight", "self_attn.o_proj.weight",
                                        "mlp.gate_proj.weight",    "mlp.up_proj.weight",
                                        "mlp.down_proj.weight"};
    static const char prefix[] = "language_model.model.layers.";
    if (strncmp(name, prefix, sizeof prefix - 1) != 0) {
        return false;
    }
    const char *p = name + sizeof prefix - 1;
    if (*p < '0' || *p > '9') {
        return false;
    }
    while (*p >= '0' && *p <= '9') {
        p++;
    }
    if (*p != '.') {
        return false;
    }
    p++;
    for (size_t i = 0; i < sizeof tails / sizeof tails[0]; i++) {
        if (strcmp(p, tails[i]) == 0) {
            return true;
        }
    }
    return false;
}
