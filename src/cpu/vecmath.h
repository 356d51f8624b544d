/*
 * vecmath.h - vectorized f32 math of the CPU backend's non-GEMM ops: exp (softmax, SiLU),
 * exact-erf GELU, and the row sums of rmsnorm / layernorm. One table of functions per SIMD path
 * (AVX-512, AVX2+FMA, portable C), chosen at run time with the GEMMs' detection
 * (mm_simd_detected). The portable path is libm (expf, erff) and sequential double sums, i.e.
 * the reference; the vector paths use range reduction + polynomial (exp: within 2 ulp of
 * correctly rounded, denormal results and +-inf / NaN handled like expf) and a two-piece erf
 * (within 2e-7 absolute of the exact erf). Each function's result depends only on its inputs
 * and the path, never on the thread count.
 */
#ifndef NVLM_CPU_VECMATH_H
#define NVLM_CPU_VECMATH_H

#include "cpu/matmul_impl.h"

#include <stddef.h>

typedef struct vm_ops {
    const char *name;
    /* y[i] = exp(x[i]); y may equal x. */
    void (*exp)(float *y, const float *x, size_t n);
    /* y[i] = erf(x[i]); y may equal x. */
    void (*erf)(float *y, const float *x, size_t n);
    /* y[i] = 0.5 x (1 + erf(x / sqrt 2)) (exact GELU); y may equal x. */
    void (*gelu)(float *y, const float *x, size_t n);
    /* y[i] = g[i] / (1 + exp(-g[i])) * u[i]; y may equal g or u. */
    void (*silu_mul)(float *y, const float *g, const float *u, size_t n);
    /* Largest x[i] (n >= 1). */
    float (*max)(const float *x, size_t n);
    /* x[i] = exp(x[i] - m); returns the f32 sum of the new x[i]. */
    float (*exp_sum)(float *x, size_t n, float m);
    /* x[i] *= a. */
    void (*scale)(float *x, size_t n, float a);
    /* sum a[i] b[i] in f32 (a fixed order per path); y[i] += a x[i]. */
    float (*dot)(const float *a, const float *b, size_t n);
    void (*axpy)(float *y, float a, const float *x, size_t n);
    /* Sums in double: sum x[i]^2, sum x[i], sum (x[i] - mean)^2. */
    double (*sumsq)(const float *x, size_t n);
    double (*sum)(const float *x, size_t n);
    double (*sqdev)(const float *x, size_t n, float mean);
    /* y[i] = w[i] * (x[i] * inv) (rmsnorm), y[i] = (x[i] - mean) * inv * w[i] + b[i]
     * (layernorm): the same f32 operations in the same order on every path. */
    void (*rms_apply)(float *y, const float *x, const float *w, float inv, size_t n);
    void (*ln_apply)(float *y, const float *x, const float *w, const float *b, float mean,
                     float inv, size_t n);
} vm_ops;

/* The table of `path`; NULL when this CPU cannot run it (tests force each path with it). */
const vm_ops *vm_ops_path(mm_simd path);
/* The table of the best path this CPU supports (mm_simd_detected()). */
const vm_ops *vm_ops_best(void);

#endif /* NVLM_CPU_VECMATH_H */
