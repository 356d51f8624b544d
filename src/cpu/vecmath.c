/*
 * vecmath.c - vectorized exp / erf / GELU / SiLU / softmax pieces / norm sums (vecmath.h).
 * The AVX-512 and AVX2+FMA paths are compiled per function with target attributes (the
 * library still runs on plain x86-64); the portable path is libm, as the ops were before.
 *
 * exp(x): n = round(x log2 e), r = x - n ln2 (two-step, FMA), e^r by the Cephes degree-7
 * polynomial on |r| <= ln2 / 2, then times 2^n (AVX-512 vscalefps; AVX2 two exact power-of-two
 * factors, so denormal results round once). x is clamped to [-104, 89] first (0 and +inf
 * come out of the scaling), NaN is passed through.
 * erf(x): |x| < 0.921875: x P(x^2) (degree 5); otherwise 1 - exp(-x^2) Q(1/|x|) (Q degree 9
 * approximates erfc(x) exp(x^2)), |x| clamped to 4 (erf rounds to 1 there), sign restored.
 * Both polynomials are least-squares fits on Chebyshev nodes (numpy); max error against the
 * exact erf measured 1.2e-7 absolute (tests/test_vecmath.c sweeps it).
 */
#include "cpu/vecmath.h"

#include <math.h>

/* ---- constants -------------------------------------------------------------------------- */

#define EXP_LO -104.0f
#define EXP_HI 89.0f
#define LOG2E 1.44269504088896341f
#define LN2_HI 0.693145751953125f
#define LN2_LO 1.428606765330187045e-06f
#define EXP_P0 1.9875691500e-4f
#define EXP_P1 1.3981999507e-3f
#define EXP_P2 8.3334519073e-3f
#define EXP_P3 4.1665795894e-2f
#define EXP_P4 1.6666665459e-1f
#define EXP_P5 5.0000001201e-1f

#define ERF_T 0.921875f
#define ERF_CLAMP 4.0f
static const float erf_c1[6] = {
    -0.0006008739583194256f, 0.004997014068067074f, -0.026769500225782394f,
    0.11281905323266983f,    -0.3761250376701355f,  1.1283791065216064f,
};
static const float erf_c2[10] = {
    0.018005425110459328f,  -0.10927046090364456f, 0.26882287859916687f, -0.3052680194377899f,
    0.04010626673698425f,   0.3402850925922394f,   -0.41528481245040894f, 0.02935222163796425f,
    0.5606532096862793f,    0.00018178408208768815f,
};
#define SQRT1_2 0.70710678118654752f

/* ---- portable (libm, the reference) ----------------------------------------------------- */

static void p_exp(float *y, const float *x, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        y[i] = expf(x[i]);
    }
}

static void p_erf(float *y, const float *x, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        y[i] = erff(x[i]);
    }
}

static void p_gelu(float *y, const float *x, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        float v = x[i];
        y[i] = 0.5f * v * (1.0f + erff(v * SQRT1_2));
    }
}

static void p_silu_mul(float *y, const float *g, const float *u, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        float v = g[i];
        y[i] = v / (1.0f + expf(-v)) * u[i];
    }
}

static float p_max(const float *x, size_t n)
{
    float m = x[0];
    for (size_t i = 1; i < n; i++) {
        m = x[i] > m ? x[i] : m;
    }
    return m;
}

static float p_exp_sum(float *x, size_t n, float m)
{
    float s = 0.0f;
    for (size_t i = 0; i < n; i++) {
        x[i] = expf(x[i] - m);
        s += x[i];
    }
    return s;
}

static void p_scale(float *x, size_t n, float a)
{
    for (size_t i = 0; i < n; i++) {
        x[i] *= a;
    }
}

static float p_dot(const float *a, const float *b, size_t n)
{
    float s = 0.0f;
    for (size_t i = 0; i < n; i++) {
        s += a[i] * b[i];
    }
    return s;
}

static void p_axpy(float *y, float a, const float *x, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        y[i] += a * x[i];
    }
}

static double p_sumsq(const float *x, size_t n)
{
    double s = 0.0;
    for (size_t i = 0; i < n; i++) {
        s += (double)x[i] * x[i];
    }
    return s;
}

static double p_sum(const float *x, size_t n)
{
    double s = 0.0;
    for (size_t i = 0; i < n; i++) {
        s += x[i];
    }
    return s;
}

static double p_sqdev(const float *x, size_t n, float mean)
{
    double s = 0.0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)x[i] - mean;
        s += d * d;
    }
    return s;
}

static void p_rms_apply(float *y, const float *x, const float *w, float inv, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        y[i] = w[i] * (x[i] * inv);
    }
}

static void p_ln_apply(float *y, const float *x, const float *w, const float *b, float mean,
                       float inv, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        y[i] = (x[i] - mean) * inv * w[i] + b[i];
    }
}

static const vm_ops ops_portable = {
    .name = "portable",
    .exp = p_exp,
    .erf = p_erf,
    .gelu = p_gelu,
    .silu_mul = p_silu_mul,
    .max = p_max,
    .exp_sum = p_exp_sum,
    .scale = p_scale,
    .dot = p_dot,
    .axpy = p_axpy,
    .sumsq = p_sumsq,
    .sum = p_sum,
    .sqdev = p_sqdev,
    .rms_apply = p_rms_apply,
    .ln_apply = p_ln_apply,
};

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#include <string.h>

#define T512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")))
#define T256 __attribute__((target("avx2,fma")))
#define INL static inline __attribute__((always_inline))

/* Tails (n % width elements) go through a padded stack block: `pad` fills the unused lanes
 * with a value that leaves a reduction unchanged. */

/* ---- AVX-512 ---------------------------------------------------------------------------- */

INL T512 __m512 exp16(__m512 x)
{
    __m512 xc = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(EXP_LO)), _mm512_set1_ps(EXP_HI));
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(xc, _mm512_set1_ps(LOG2E)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_HI), xc);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_LO), r);
    __m512 p = _mm512_set1_ps(EXP_P0);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(EXP_P1));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(EXP_P2));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(EXP_P3));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(EXP_P4));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(EXP_P5));
    p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), r);
    p = _mm512_add_ps(p, _mm512_set1_ps(1.0f));
    __m512 res = _mm512_scalef_ps(p, n);
    __mmask16 nan = _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q);
    return _mm512_mask_add_ps(res, nan, x, x);
}

INL T512 __m512 erf16(__m512 x)
{
    __m512 sign = _mm512_and_ps(x, _mm512_set1_ps(-0.0f));
    __m512 ax = _mm512_andnot_ps(_mm512_set1_ps(-0.0f), x);
    __m512 z = _mm512_mul_ps(ax, ax);
    __m512 p1 = _mm512_set1_ps(erf_c1[0]);
    for (int i = 1; i < 6; i++) {
        p1 = _mm512_fmadd_ps(p1, z, _mm512_set1_ps(erf_c1[i]));
    }
    p1 = _mm512_mul_ps(p1, ax);
    __m512 xc = _mm512_min_ps(ax, _mm512_set1_ps(ERF_CLAMP));
    __m512 u = _mm512_div_ps(_mm512_set1_ps(1.0f), xc);
    __m512 q = _mm512_set1_ps(erf_c2[0]);
    for (int i = 1; i < 10; i++) {
        q = _mm512_fmadd_ps(q, u, _mm512_set1_ps(erf_c2[i]));
    }
    __m512 e = exp16(_mm512_sub_ps(_mm512_setzero_ps(), _mm512_mul_ps(xc, xc)));
    __m512 p2 = _mm512_fnmadd_ps(q, e, _mm512_set1_ps(1.0f));
    __mmask16 small = _mm512_cmp_ps_mask(ax, _mm512_set1_ps(ERF_T), _CMP_LT_OQ);
    __m512 r = _mm512_or_ps(_mm512_mask_blend_ps(small, p2, p1), sign);
    __mmask16 nan = _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q);
    return _mm512_mask_add_ps(r, nan, x, x);
}

INL T512 __m512 load16(const float *x, size_t n, float pad)
{
    __mmask16 m = (__mmask16)((1u << n) - 1u);
    return _mm512_mask_loadu_ps(_mm512_set1_ps(pad), m, x);
}

INL T512 void store16(float *y, __m512 v, size_t n)
{
    _mm512_mask_storeu_ps(y, (__mmask16)((1u << n) - 1u), v);
}

static T512 void a512_exp(float *y, const float *x, size_t n)
{
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        _mm512_storeu_ps(y + i, exp16(_mm512_loadu_ps(x + i)));
    }
    if (i < n) {
        store16(y + i, exp16(load16(x + i, n - i, 0.0f)), n - i);
    }
}

static T512 void a512_erf(float *y, const float *x, size_t n)
{
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        _mm512_storeu_ps(y + i, erf16(_mm512_loadu_ps(x + i)));
    }
    if (i < n) {
        store16(y + i, erf16(load16(x + i, n - i, 0.0f)), n - i);
    }
}

INL T512 __m512 gelu16(__m512 v)
{
    __m512 e = erf16(_mm512_mul_ps(v, _mm512_set1_ps(SQRT1_2)));
    return _mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(0.5f), v),
                         _mm512_add_ps(_mm512_set1_ps(1.0f), e));
}

static T512 void a512_gelu(float *y, const float *x, size_t n)
{
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        _mm512_storeu_ps(y + i, gelu16(_mm512_loadu_ps(x + i)));
    }
    if (i < n) {
        store16(y + i, gelu16(load16(x + i, n - i, 0.0f)), n - i);
    }
}

INL T512 __m512 silu16(__m512 g, __m512 u)
{
    __m512 e = exp16(_mm512_sub_ps(_mm512_setzero_ps(), g));
    return _mm512_mul_ps(_mm512_div_ps(g, _mm512_add_ps(_mm512_set1_ps(1.0f), e)), u);
}

static T512 void a512_silu_mul(float *y, const float *g, const float *u, size_t n)
{
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        _mm512_storeu_ps(y + i, silu16(_mm512_loadu_ps(g + i), _mm512_loadu_ps(u + i)));
    }
    if (i < n) {
        store16(y + i, silu16(load16(g + i, n - i, 0.0f), load16(u + i, n - i, 0.0f)), n - i);
    }
}

static T512 float a512_max(const float *x, size_t n)
{
    __m512 m = _mm512_set1_ps(x[0]);
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        m = _mm512_max_ps(m, _mm512_loadu_ps(x + i));
    }
    if (i < n) {
        m = _mm512_max_ps(m, load16(x + i, n - i, x[0]));
    }
    return _mm512_reduce_max_ps(m);
}

static T512 float a512_exp_sum(float *x, size_t n, float mv)
{
    __m512 m = _mm512_set1_ps(mv);
    __m512 s = _mm512_setzero_ps();
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m512 e = exp16(_mm512_sub_ps(_mm512_loadu_ps(x + i), m));
        _mm512_storeu_ps(x + i, e);
        s = _mm512_add_ps(s, e);
    }
    if (i < n) {
        __m512 e = exp16(_mm512_sub_ps(load16(x + i, n - i, -INFINITY), m));
        store16(x + i, e, n - i);
        s = _mm512_add_ps(s, e);
    }
    return _mm512_reduce_add_ps(s);
}

static T512 void a512_scale(float *x, size_t n, float a)
{
    __m512 av = _mm512_set1_ps(a);
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        _mm512_storeu_ps(x + i, _mm512_mul_ps(_mm512_loadu_ps(x + i), av));
    }
    if (i < n) {
        store16(x + i, _mm512_mul_ps(load16(x + i, n - i, 0.0f), av), n - i);
    }
}

static T512 float a512_dot(const float *a, const float *b, size_t n)
{
    __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
    size_t i = 0;
    for (; i + 32 <= n; i += 32) {
        s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), s0);
        s1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 16), _mm512_loadu_ps(b + i + 16), s1);
    }
    for (; i < n; i += 16) {
        size_t k = n - i < 16 ? n - i : 16;
        s0 = _mm512_fmadd_ps(load16(a + i, k, 0.0f), load16(b + i, k, 0.0f), s0);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(s0, s1));
}

static T512 void a512_axpy(float *y, float a, const float *x, size_t n)
{
    __m512 av = _mm512_set1_ps(a);
    for (size_t i = 0; i < n; i += 16) {
        size_t k = n - i < 16 ? n - i : 16;
        if (k == 16) {
            _mm512_storeu_ps(y + i, _mm512_fmadd_ps(av, _mm512_loadu_ps(x + i),
                                                    _mm512_loadu_ps(y + i)));
        } else {
            store16(y + i, _mm512_fmadd_ps(av, load16(x + i, k, 0.0f), load16(y + i, k, 0.0f)),
                    k);
        }
    }
}

/* Double sums: 16 floats per step into two 8-lane double accumulators. */
#define A512_DSUM(NAME, EXPR)                                                                  \
    static T512 double NAME(const float *x, size_t n, float mean)                             \
    {                                                                                          \
        __m512d s0 = _mm512_setzero_pd(), s1 = _mm512_setzero_pd();                           \
        __m512d mv = _mm512_set1_pd((double)mean);                                            \
        (void)mv;                                                                              \
        size_t i = 0;                                                                          \
        for (; i < n; i += 16) {                                                               \
            __m512 v = i + 16 <= n ? _mm512_loadu_ps(x + i) : load16(x + i, n - i, mean);     \
            __m512d d0 = _mm512_cvtps_pd(_mm512_castps512_ps256(v));                          \
            __m512d d1 = _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(            \
                _mm512_castps_pd(v), 1)));                                                     \
            EXPR;                                                                              \
        }                                                                                      \
        return _mm512_reduce_add_pd(_mm512_add_pd(s0, s1));                                    \
    }

A512_DSUM(a512_sumsq_m, s0 = _mm512_fmadd_pd(d0, d0, s0); s1 = _mm512_fmadd_pd(d1, d1, s1))
A512_DSUM(a512_sum_m, s0 = _mm512_add_pd(s0, _mm512_sub_pd(d0, mv));
          s1 = _mm512_add_pd(s1, _mm512_sub_pd(d1, mv)))
A512_DSUM(a512_sqdev, d0 = _mm512_sub_pd(d0, mv); d1 = _mm512_sub_pd(d1, mv);
          s0 = _mm512_fmadd_pd(d0, d0, s0); s1 = _mm512_fmadd_pd(d1, d1, s1))

static T512 double a512_sumsq(const float *x, size_t n)
{
    return a512_sumsq_m(x, n, 0.0f);
}

static T512 double a512_sum(const float *x, size_t n)
{
    return a512_sum_m(x, n, 0.0f);
}

static T512 void a512_rms_apply(float *y, const float *x, const float *w, float inv, size_t n)
{
    __m512 iv = _mm512_set1_ps(inv);
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m512 v = _mm512_mul_ps(_mm512_loadu_ps(w + i),
                                 _mm512_mul_ps(_mm512_loadu_ps(x + i), iv));
        _mm512_storeu_ps(y + i, v);
    }
    if (i < n) {
        __m512 v = _mm512_mul_ps(load16(w + i, n - i, 0.0f),
                                 _mm512_mul_ps(load16(x + i, n - i, 0.0f), iv));
        store16(y + i, v, n - i);
    }
}

static T512 void a512_ln_apply(float *y, const float *x, const float *w, const float *b,
                               float mean, float inv, size_t n)
{
    __m512 iv = _mm512_set1_ps(inv);
    __m512 mv = _mm512_set1_ps(mean);
    for (size_t i = 0; i < n; i += 16) {
        size_t k = n - i < 16 ? n - i : 16;
        __m512 xv = load16(x + i, k, 0.0f);
        __m512 v = _mm512_mul_ps(_mm512_mul_ps(_mm512_sub_ps(xv, mv), iv), load16(w + i, k, 0.0f));
        store16(y + i, _mm512_add_ps(v, load16(b + i, k, 0.0f)), k);
    }
}

static const vm_ops ops_avx512 = {
    .name = "avx512",
    .exp = a512_exp,
    .erf = a512_erf,
    .gelu = a512_gelu,
    .silu_mul = a512_silu_mul,
    .max = a512_max,
    .exp_sum = a512_exp_sum,
    .scale = a512_scale,
    .dot = a512_dot,
    .axpy = a512_axpy,
    .sumsq = a512_sumsq,
    .sum = a512_sum,
    .sqdev = a512_sqdev,
    .rms_apply = a512_rms_apply,
    .ln_apply = a512_ln_apply,
};

/* ---- AVX2 + FMA ------------------------------------------------------------------------- */

INL T256 __m256 exp8(__m256 x)
{
    __m256 xc = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(EXP_LO)), _mm256_set1_ps(EXP_HI));
    __m256 n = _mm256_round_ps(_mm256_mul_ps(xc, _mm256_set1_ps(LOG2E)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_HI), xc);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_LO), r);
    __m256 p = _mm256_set1_ps(EXP_P0);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(EXP_P1));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(EXP_P2));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(EXP_P3));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(EXP_P4));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(EXP_P5));
    p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), r);
    p = _mm256_add_ps(p, _mm256_set1_ps(1.0f));
    /* 2^n as two exact factors 2^(n>>1) and 2^(n - (n>>1)), both normal for n in [-150, 128]. */
    __m256i ni = _mm256_cvtps_epi32(n);
    __m256i n1 = _mm256_srai_epi32(ni, 1);
    __m256i n2 = _mm256_sub_epi32(ni, n1);
    __m256i bias = _mm256_set1_epi32(127);
    __m256 s1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n1, bias), 23));
    __m256 s2 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n2, bias), 23));
    __m256 res = _mm256_mul_ps(_mm256_mul_ps(p, s1), s2);
    __m256 nan = _mm256_cmp_ps(x, x, _CMP_UNORD_Q);
    return _mm256_blendv_ps(res, _mm256_add_ps(x, x), nan);
}

INL T256 __m256 erf8(__m256 x)
{
    __m256 sign = _mm256_and_ps(x, _mm256_set1_ps(-0.0f));
    __m256 ax = _mm256_andnot_ps(_mm256_set1_ps(-0.0f), x);
    __m256 z = _mm256_mul_ps(ax, ax);
    __m256 p1 = _mm256_set1_ps(erf_c1[0]);
    for (int i = 1; i < 6; i++) {
        p1 = _mm256_fmadd_ps(p1, z, _mm256_set1_ps(erf_c1[i]));
    }
    p1 = _mm256_mul_ps(p1, ax);
    __m256 xc = _mm256_min_ps(ax, _mm256_set1_ps(ERF_CLAMP));
    __m256 u = _mm256_div_ps(_mm256_set1_ps(1.0f), xc);
    __m256 q = _mm256_set1_ps(erf_c2[0]);
    for (int i = 1; i < 10; i++) {
        q = _mm256_fmadd_ps(q, u, _mm256_set1_ps(erf_c2[i]));
    }
    __m256 e = exp8(_mm256_sub_ps(_mm256_setzero_ps(), _mm256_mul_ps(xc, xc)));
    __m256 p2 = _mm256_fnmadd_ps(q, e, _mm256_set1_ps(1.0f));
    __m256 small = _mm256_cmp_ps(ax, _mm256_set1_ps(ERF_T), _CMP_LT_OQ);
    __m256 r = _mm256_or_ps(_mm256_blendv_ps(p2, p1, small), sign);
    __m256 nan = _mm256_cmp_ps(x, x, _CMP_UNORD_Q);
    return _mm256_blendv_ps(r, _mm256_add_ps(x, x), nan);
}

INL T256 __m256 load8(const float *x, size_t n, float pad)
{
    float t[8];
    for (int i = 0; i < 8; i++) {
        t[i] = (size_t)i < n ? x[i] : pad;
    }
    return _mm256_loadu_ps(t);
}

INL T256 void store8(float *y, __m256 v, size_t n)
{
    float t[8];
    _mm256_storeu_ps(t, v);
    memcpy(y, t, n * sizeof(float));
}

INL T256 float hsum8(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

INL T256 double hsum4d(__m256d v)
{
    __m128d s = _mm_add_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd(v, 1));
    s = _mm_add_sd(s, _mm_unpackhi_pd(s, s));
    return _mm_cvtsd_f64(s);
}

static T256 void a256_exp(float *y, const float *x, size_t n)
{
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        _mm256_storeu_ps(y + i, exp8(_mm256_loadu_ps(x + i)));
    }
    if (i < n) {
        store8(y + i, exp8(load8(x + i, n - i, 0.0f)), n - i);
    }
}

static T256 void a256_erf(float *y, const float *x, size_t n)
{
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        _mm256_storeu_ps(y + i, erf8(_mm256_loadu_ps(x + i)));
    }
    if (i < n) {
        store8(y + i, erf8(load8(x + i, n - i, 0.0f)), n - i);
    }
}

INL T256 __m256 gelu8(__m256 v)
{
    __m256 e = erf8(_mm256_mul_ps(v, _mm256_set1_ps(SQRT1_2)));
    return _mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(0.5f), v),
                         _mm256_add_ps(_mm256_set1_ps(1.0f), e));
}

static T256 void a256_gelu(float *y, const float *x, size_t n)
{
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        _mm256_storeu_ps(y + i, gelu8(_mm256_loadu_ps(x + i)));
    }
    if (i < n) {
        store8(y + i, gelu8(load8(x + i, n - i, 0.0f)), n - i);
    }
}

INL T256 __m256 silu8(__m256 g, __m256 u)
{
    __m256 e = exp8(_mm256_sub_ps(_mm256_setzero_ps(), g));
    return _mm256_mul_ps(_mm256_div_ps(g, _mm256_add_ps(_mm256_set1_ps(1.0f), e)), u);
}

static T256 void a256_silu_mul(float *y, const float *g, const float *u, size_t n)
{
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        _mm256_storeu_ps(y + i, silu8(_mm256_loadu_ps(g + i), _mm256_loadu_ps(u + i)));
    }
    if (i < n) {
        store8(y + i, silu8(load8(g + i, n - i, 0.0f), load8(u + i, n - i, 0.0f)), n - i);
    }
}

static T256 float a256_max(const float *x, size_t n)
{
    __m256 m = _mm256_set1_ps(x[0]);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        m = _mm256_max_ps(m, _mm256_loadu_ps(x + i));
    }
    if (i < n) {
        m = _mm256_max_ps(m, load8(x + i, n - i, x[0]));
    }
    float t[8];
    _mm256_storeu_ps(t, m);
    float r = t[0];
    for (int k = 1; k < 8; k++) {
        r = t[k] > r ? t[k] : r;
    }
    return r;
}

static T256 float a256_exp_sum(float *x, size_t n, float mv)
{
    __m256 m = _mm256_set1_ps(mv);
    __m256 s = _mm256_setzero_ps();
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(x + i), m));
        _mm256_storeu_ps(x + i, e);
        s = _mm256_add_ps(s, e);
    }
    if (i < n) {
        __m256 e = exp8(_mm256_sub_ps(load8(x + i, n - i, -INFINITY), m));
        store8(x + i, e, n - i);
        s = _mm256_add_ps(s, e);
    }
    return hsum8(s);
}

static T256 void a256_scale(float *x, size_t n, float a)
{
    __m256 av = _mm256_set1_ps(a);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        _mm256_storeu_ps(x + i, _mm256_mul_ps(_mm256_loadu_ps(x + i), av));
    }
    if (i < n) {
        store8(x + i, _mm256_mul_ps(load8(x + i, n - i, 0.0f), av), n - i);
    }
}

static T256 float a256_dot(const float *a, const float *b, size_t n)
{
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
        s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
    }
    for (; i < n; i += 8) {
        size_t k = n - i < 8 ? n - i : 8;
        s0 = _mm256_fmadd_ps(load8(a + i, k, 0.0f), load8(b + i, k, 0.0f), s0);
    }
    return hsum8(_mm256_add_ps(s0, s1));
}

static T256 void a256_axpy(float *y, float a, const float *x, size_t n)
{
    __m256 av = _mm256_set1_ps(a);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        _mm256_storeu_ps(y + i, _mm256_fmadd_ps(av, _mm256_loadu_ps(x + i),
                                                _mm256_loadu_ps(y + i)));
    }
    for (; i < n; i++) {
        y[i] = fmaf(a, x[i], y[i]);
    }
}

#define A256_DSUM(NAME, EXPR)                                                                  \
    static T256 double NAME(const float *x, size_t n, float mean)                             \
    {                                                                                          \
        __m256d s0 = _mm256_setzero_pd(), s1 = _mm256_setzero_pd();                           \
        __m256d mv = _mm256_set1_pd((double)mean);                                            \
        (void)mv;                                                                              \
        for (size_t i = 0; i < n; i += 8) {                                                    \
            __m256 v = i + 8 <= n ? _mm256_loadu_ps(x + i) : load8(x + i, n - i, mean);       \
            __m256d d0 = _mm256_cvtps_pd(_mm256_castps256_ps128(v));                          \
            __m256d d1 = _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1));                        \
            EXPR;                                                                              \
        }                                                                                      \
        return hsum4d(_mm256_add_pd(s0, s1));                                                  \
    }

A256_DSUM(a256_sumsq_m, s0 = _mm256_fmadd_pd(d0, d0, s0); s1 = _mm256_fmadd_pd(d1, d1, s1))
A256_DSUM(a256_sum_m, s0 = _mm256_add_pd(s0, _mm256_sub_pd(d0, mv));
          s1 = _mm256_add_pd(s1, _mm256_sub_pd(d1, mv)))
A256_DSUM(a256_sqdev, d0 = _mm256_sub_pd(d0, mv); d1 = _mm256_sub_pd(d1, mv);
          s0 = _mm256_fmadd_pd(d0, d0, s0); s1 = _mm256_fmadd_pd(d1, d1, s1))

static T256 double a256_sumsq(const float *x, size_t n)
{
    return a256_sumsq_m(x, n, 0.0f);
}

static T256 double a256_sum(const float *x, size_t n)
{
    return a256_sum_m(x, n, 0.0f);
}

static T256 void a256_rms_apply(float *y, const float *x, const float *w, float inv, size_t n)
{
    __m256 iv = _mm256_set1_ps(inv);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 v = _mm256_mul_ps(_mm256_loadu_ps(w + i),
                                 _mm256_mul_ps(_mm256_loadu_ps(x + i), iv));
        _mm256_storeu_ps(y + i, v);
    }
    for (; i < n; i++) {
        y[i] = w[i] * (x[i] * inv);
    }
}

static T256 void a256_ln_apply(float *y, const float *x, const float *w, const float *b,
                               float mean, float inv, size_t n)
{
    __m256 iv = _mm256_set1_ps(inv);
    __m256 mv = _mm256_set1_ps(mean);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 v = _mm256_mul_ps(_mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(x + i), mv), iv),
                                 _mm256_loadu_ps(w + i));
        _mm256_storeu_ps(y + i, _mm256_add_ps(v, _mm256_loadu_ps(b + i)));
    }
    for (; i < n; i++) {
        y[i] = (x[i] - mean) * inv * w[i] + b[i];
    }
}

static const vm_ops ops_avx2 = {
    .name = "avx2",
    .exp = a256_exp,
    .erf = a256_erf,
    .gelu = a256_gelu,
    .silu_mul = a256_silu_mul,
    .max = a256_max,
    .exp_sum = a256_exp_sum,
    .scale = a256_scale,
    .dot = a256_dot,
    .axpy = a256_axpy,
    .sumsq = a256_sumsq,
    .sum = a256_sum,
    .sqdev = a256_sqdev,
    .rms_apply = a256_rms_apply,
    .ln_apply = a256_ln_apply,
};
#endif /* x86 */

const vm_ops *vm_ops_path(mm_simd path)
{
    if (!mm_simd_supported(path)) {
        return NULL;
    }
    switch (path) {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    case MM_AVX512:
        return &ops_avx512;
    case MM_AVX2:
        return &ops_avx2;
#endif
    case MM_PORTABLE:
        return &ops_portable;
    default:
        return NULL;
    }
}

const vm_ops *vm_ops_best(void)
{
    const vm_ops *o = vm_ops_path(mm_simd_detected());
    return o != NULL ? o : &ops_portable;
}
