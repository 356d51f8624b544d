/*
 * matmul_fp8.c - y = x . W^T (+ bias) for FP8 weights (fp8.h): W is (N, K) E4M3 codes with one
 * f32 scale per output row, read in place. An E4M3 code c widens exactly to the f16 whose value
 * is e4m3(c) * 2^-8: h = ((int16)(int8)c << 7) & 0xBF80 (sign to bit 15, exponent and mantissa
 * under f16's), then vcvtph2ps; the portable path uses a 256-entry table of the same values. So
 * y[n] = (scale[n] * 256) * sum_k x[k] h(q[n,k]) + bias[n]: every product is exact in f32 and the
 * power-of-two factor is exact. Few rows of x (decode) stream each code row once as dot products
 * (4 row streams per thread, as bf16's one-row GEMV; 2-7 rows of x take each group of 4 code
 * rows 2 rows of x at a time); many rows (prefill) widen a block of columns to f16 and run the
 * bf16/f16 register-tile kernel of matmul_x86.c over it.
 */
#include "cpu/matmul_impl.h"
#include "fp8.h"

#include <limits.h>
#include <math.h>
#include <string.h>

typedef struct f8_args {
    mm_args a;       /* w: the codes (uint8_t, ldw = K); wt unused; bias applied here */
    const float *scale;
    mm_simd path;
    bool x_fits;     /* every |x| < 2^64: the AVX-512 GEMV may scale x by 2^64 */
} f8_args;

static const f8_args *f8_of(const mm_args *a)
{
    return (const f8_args *)a; /* a is the first member */
}

static inline uint16_t f8_to_h(uint8_t c)
{
    return (uint16_t)((uint16_t)((int16_t)(int8_t)c * 128) & 0xBF80u);
}

/* Output n from its sum s: s * (scale[n] * post) + bias[n], where post undoes the route's power
 * of two (256 for codes widened to e4m3 * 2^-8; 2^56 for the integer route). */
static inline float f8_out(const f8_args *f, int n, float s, float post)
{
    float v = s * (f->scale[n] * post);
    return f->a.bias != NULL ? v + f->a.bias[n] : v;
}

/* ---- portable --------------------------------------------------------------------------- */

static void f8_table(float tbl[256])
{
    for (int c = 0; c < 256; c++) {
        tbl[c] = nv_f16_to_f32(f8_to_h((uint8_t)c));
    }
}

/* As dot_portable of matmul.c: 8 strided lanes summed ((l0+l4)+(l2+l6))+((l1+l5)+(l3+l7)). */
static void f8_portable(const mm_args *a, int m0, int m1, int n0, int n1, void *scratch)
{
    (void)scratch;
    const f8_args *f = f8_of(a);
    float tbl[256];
    f8_table(tbl);
    const uint8_t *w = a->w;
    for (int m = m0; m < m1; m++) {
        const float *x = a->x + (size_t)m * (size_t)a->ldx;
        float *y = a->y + (size_t)m * (size_t)a->ldy;
        for (int n = n0; n < n1; n++) {
            const uint8_t *q = w + (size_t)n * (size_t)a->ldw;
            float acc[8] = {0};
            int k = 0;
            for (; k + 8 <= a->K; k += 8) {
                for (int j = 0; j < 8; j++) {
                    acc[j] += x[k + j] * tbl[q[k + j]];
                }
            }
            for (int j = 0; k < a->K; k++, j++) {
                acc[j] += x[k] * tbl[q[k]];
            }
            float s = ((acc[0] + acc[4]) + (acc[2] + acc[6])) +
                      ((acc[1] + acc[5]) + (acc[3] + acc[7]));
            y[n] = f8_out(f, n, s, 256.0f);
        }
    }
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>

#define T512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")))
#define T256 __attribute__((target("avx2,fma,f16c")))
#define INL static inline __attribute__((always_inline))
/* Software prefetch distance of the GEMV's code rows, in bytes, one prefetch per 64-byte line
 * of each row stream: at 1 byte per weight each row stream advances half as fast as a bf16 one
 * and the hardware prefetchers run behind. On the dev machine's EPYC 2 KiB ahead made the
 * cold-cache GEMV 10-15% faster than none; one prefetch per line instead of two and 3 KiB
 * instead of 2 KiB added 2-5% (bf16 and FP8 GEMV passes alternating over 4 copies of a
 * layer, as in bench/nvlm_bench.c; 1 and 2 threads). 6 KiB was 3% slower on 1 thread and 3.5%
 * faster on 2 in the GEMV alone, with no better decode. */
#define F8_PF 3072

/* ---- AVX-512 ---------------------------------------------------------------------------- */

/* 16 codes at p (mask: valid lanes, others 0) as f32 values e4m3 * 2^-8. */
T512 INL __m512 f8x16(const uint8_t *p, __mmask16 mask)
{
    __m128i b = mask == 0xffff ? _mm_loadu_si128((const __m128i *)p)
                               : _mm_maskz_loadu_epi8(mask, p);
    __m256i h = _mm256_slli_epi16(_mm256_cvtepi8_epi16(b), 7);
    return _mm512_cvtph_ps(_mm256_and_si256(h, _mm256_set1_epi16((short)0xBF80)));
}

/* 16 codes at p (mask: valid lanes, others 0) as f32 values e4m3 * 2^-120, with integer
 * operations only: the sign-extended code shifted left by 20 has the sign at bits 31-27 and the
 * exponent and mantissa at bits 26-20, under f32's; clearing bits 30-27 leaves the f32 whose
 * value is e4m3(c) * 2^-120 (E4M3 subnormals become f32 subnormals with the same factor). About
 * 1.4x the codes per second of the f16 route (vcvtph2ps) in cache on the dev machine's EPYC. */
T512 INL __m512 f8x16_i(const uint8_t *p, __mmask16 mask)
{
    __m128i b = mask == 0xffff ? _mm_loadu_si128((const __m128i *)p)
                               : _mm_maskz_loadu_epi8(mask, p);
    __m512i d = _mm512_slli_epi32(_mm512_cvtepi8_epi32(b), 20);
    return _mm512_castsi512_ps(_mm512_and_si512(d, _mm512_set1_epi32((int)0x87F00000u)));
}

/* 32 codes at p as two f32 vectors (lanes 0-15, 16-31): one widening for both halves. */
T512 INL void f8x32(const uint8_t *p, __m512 *lo, __m512 *hi)
{
    __m512i h = _mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i *)p));
    h = _mm512_and_si512(_mm512_slli_epi16(h, 7), _mm512_set1_epi16((short)0xBF80));
    *lo = _mm512_cvtph_ps(_mm512_castsi512_si256(h));
    *hi = _mm512_cvtph_ps(_mm512_extracti64x4_epi64(h, 1));
}

/* MR rows of x (m..) against R code rows n + j * rs: two accumulators per output alternate
 * 16-wide k steps (as dot_tile512), so every output gets the same arithmetic for any MR, R.
 * ir: the integer route (f8x16_i), with x scaled by 2^64 so that the products are those of the
 * f16 route times 2^-48 exactly; every sum is then the f16 route's times 2^-48 (the same
 * roundings) unless a partial sum falls below 2^-78, and the result is scaled by
 * scale[n] * 2^56 instead of scale[n] * 2^8 (callers keep |x| < 2^64). */
T512 INL void f8_tile512(const f8_args *f, int m, int n, const int MR, const int R, int rs,
                         const int ir)
{
    const mm_args *a = &f->a;
    __m512 acc0[4][4], acc1[4][4];
    const float *x[4];
    const uint8_t *w[4];
    const __m512 xsc = _mm512_set1_ps(ir ? 0x1p64f : 1.0f);
#pragma GCC unroll 4
    for (int i = 0; i < MR; i++) {
        x[i] = a->x + (size_t)(m + i) * (size_t)a->ldx;
#pragma GCC unroll 4
        for (int j = 0; j < R; j++) {
            acc0[i][j] = _mm512_setzero_ps();
            acc1[i][j] = _mm512_setzero_ps();
        }
    }
#pragma GCC unroll 4
    for (int j = 0; j < R; j++) {
        w[j] = (const uint8_t *)a->w + (size_t)(n + j * rs) * (size_t)a->ldw;
    }
    const int K = a->K;
    int k = 0;
    /* 64 codes (a cache line) per row and step: one prefetch per line; the four 16-code
     * quarters go into the accumulators in the same order as the 32-code steps below */
    for (; k + 64 <= K; k += 64) {
        __m512 xv[4][4];
#pragma GCC unroll 4
        for (int i = 0; i < MR; i++) {
#pragma GCC unroll 4
            for (int t = 0; t < 4; t++) {
                xv[i][t] = _mm512_loadu_ps(x[i] + k + 16 * t);
                xv[i][t] = ir ? _mm512_mul_ps(xv[i][t], xsc) : xv[i][t];
            }
        }
#pragma GCC unroll 4
        for (int j = 0; j < R; j++) {
            __m512 w0, w1, w2, w3;
            _mm_prefetch((const char *)(w[j] + k) + F8_PF, _MM_HINT_T0);
            if (ir) {
                w0 = f8x16_i(w[j] + k, 0xffff);
                w1 = f8x16_i(w[j] + k + 16, 0xffff);
                w2 = f8x16_i(w[j] + k + 32, 0xffff);
                w3 = f8x16_i(w[j] + k + 48, 0xffff);
            } else {
                f8x32(w[j] + k, &w0, &w1);
                f8x32(w[j] + k + 32, &w2, &w3);
            }
#pragma GCC unroll 4
            for (int i = 0; i < MR; i++) {
                acc0[i][j] = _mm512_fmadd_ps(xv[i][0], w0, acc0[i][j]);
                acc1[i][j] = _mm512_fmadd_ps(xv[i][1], w1, acc1[i][j]);
                acc0[i][j] = _mm512_fmadd_ps(xv[i][2], w2, acc0[i][j]);
                acc1[i][j] = _mm512_fmadd_ps(xv[i][3], w3, acc1[i][j]);
            }
        }
    }
    /* The tail as 16-code steps into acc0, acc1, acc0, and the masked rest into acc1. */
    for (int t = 0; k < K; k += 16, t++) {
        const int full = K - k >= 16;
        const __mmask16 mask = (__mmask16)(full ? 0xffffu : (1u << (K - k)) - 1u);
#pragma GCC unroll 4
        for (int j = 0; j < R; j++) {
            const __m512 wv = ir ? f8x16_i(w[j] + k, mask) : f8x16(w[j] + k, mask);
#pragma GCC unroll 4
            for (int i = 0; i < MR; i++) {
                const __m512 xs = _mm512_mul_ps(_mm512_maskz_loadu_ps(mask, x[i] + k), xsc);
                if (full && t % 2 == 0) {
                    acc0[i][j] = _mm512_fmadd_ps(xs, wv, acc0[i][j]);
                } else {
                    acc1[i][j] = _mm512_fmadd_ps(xs, wv, acc1[i][j]);
                }
            }
        }
    }
    const float post = ir ? 0x1p56f : 256.0f;
#pragma GCC unroll 4
    for (int i = 0; i < MR; i++) {
#pragma GCC unroll 4
        for (int j = 0; j < R; j++) {
            float s = _mm512_reduce_add_ps(_mm512_add_ps(acc0[i][j], acc1[i][j]));
            a->y[(size_t)(m + i) * (size_t)a->ldy + (size_t)(n + j * rs)] =
                f8_out(f, n + j * rs, s, post);
        }
    }
}

/* The columns in 4 quarters read side by side (4 row streams per thread); each group of 4 code
 * rows is taken by 1 or 2 rows of x at a time (at most 16 accumulators), so with a few rows of
 * x it is re-read from L1/L2, not from memory. Leftover columns: one at a time. */
T512 INL void f8_small512_route(const f8_args *f, int m0, int m1, int n0, int n1, const int ir)
{
    const int q = (n1 - n0) / 4;
    for (int i = 0; i < q; i++) {
        for (int m = m0; m < m1; m += 2) {
            if (m + 1 < m1) {
                f8_tile512(f, m, n0 + i, 2, 4, q, ir);
            } else {
                f8_tile512(f, m, n0 + i, 1, 4, q, ir);
            }
        }
    }
    for (int n = n0 + 4 * q; n < n1; n++) {
        for (int m = m0; m < m1; m += 4) {
            switch (NV_MIN(4, m1 - m)) {
            case 4: f8_tile512(f, m, n, 4, 1, 1, ir); break;
            case 3: f8_tile512(f, m, n, 3, 1, 1, ir); break;
            case 2: f8_tile512(f, m, n, 2, 1, 1, ir); break;
            default: f8_tile512(f, m, n, 1, 1, 1, ir); break;
            }
        }
    }
}

/* Whether every |x| of the M x K activations is below 2^64 (no Inf, no NaN), so that x * 2^64
 * stays finite. One pass over x before the GEMV (next to its N x K codes). */
T512 static bool f8_x_fits512(const float *x, int M, int K)
{
    const __m512 lim = _mm512_set1_ps(0x1p64f);
    __mmask16 hit = 0;
    for (int m = 0; m < M; m++) {
        for (int k = 0; k < K; k += 16) {
            const __mmask16 mask = (__mmask16)(K - k >= 16 ? 0xffffu : (1u << (K - k)) - 1u);
            const __m512 v = _mm512_abs_ps(_mm512_maskz_loadu_ps(mask, x + (size_t)m * K + k));
            hit |= _mm512_mask_cmp_ps_mask(mask, v, lim, _CMP_NLT_UQ);
        }
    }
    return hit == 0;
}

/* The integer route unless the calling thread treats subnormal inputs as zero (MXCSR.DAZ,
 * which some applications set: it would zero the integer route's subnormal weights, while
 * vcvtph2ps ignores it) or x holds values too large to scale by 2^64 (!x_fits). */
#define NV_MXCSR_DAZ 0x0040u
T512 static void f8_small512(const mm_args *a, int m0, int m1, int n0, int n1, void *scratch)
{
    (void)scratch;
    const f8_args *f = f8_of(a);
    if ((_mm_getcsr() & NV_MXCSR_DAZ) != 0 || !f->x_fits) {
        f8_small512_route(f, m0, m1, n0, n1, 0);
    } else {
        f8_small512_route(f, m0, m1, n0, n1, 1);
    }
}

/* ---- AVX2 ------------------------------------------------------------------------------- */

/* cnt (<= 8) codes at p as f32 values e4m3 * 2^-8 (lanes >= cnt are 0). */
T256 INL __m256 f8x8(const uint8_t *p, int cnt)
{
    __m128i b;
    if (cnt >= 8) {
        b = _mm_loadl_epi64((const __m128i *)p);
    } else {
        uint8_t tmp[16] = {0};
        memcpy(tmp, p, (size_t)cnt);
        b = _mm_loadu_si128((const __m128i *)tmp);
    }
    __m128i h = _mm_slli_epi16(_mm_cvtepi8_epi16(b), 7);
    return _mm256_cvtph_ps(_mm_and_si128(h, _mm_set1_epi16((short)0xBF80)));
}

static const int32_t f8_mask8[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};

T256 INL float f8_hsum8(__m256 v)
{
    __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
    __m128 s = _mm_add_ps(lo, hi);
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* MR rows of x against R code rows n + j * rs (as dot_tile256 of matmul_x86.c). */
T256 INL void f8_tile256(const f8_args *f, int m, int n, const int MR, const int R, int rs)
{
    const mm_args *a = &f->a;
    __m256 acc[4][4];
    const float *x[4];
    const uint8_t *w[4];
#pragma GCC unroll 4
    for (int i = 0; i < MR; i++) {
        x[i] = a->x + (size_t)(m + i) * (size_t)a->ldx;
#pragma GCC unroll 4
        for (int j = 0; j < R; j++) {
            acc[i][j] = _mm256_setzero_ps();
        }
    }
#pragma GCC unroll 4
    for (int j = 0; j < R; j++) {
        w[j] = (const uint8_t *)a->w + (size_t)(n + j * rs) * (size_t)a->ldw;
    }
    const int K = a->K;
    for (int k = 0; k < K; k += 8) {
        const int cnt = NV_MIN(8, K - k);
        __m256 xv[4];
        __m256i mask = _mm256_loadu_si256((const __m256i *)(f8_mask8 + 8 - cnt));
#pragma GCC unroll 4
        for (int i = 0; i < MR; i++) {
            xv[i] = cnt == 8 ? _mm256_loadu_ps(x[i] + k) : _mm256_maskload_ps(x[i] + k, mask);
        }
#pragma GCC unroll 4
        for (int j = 0; j < R; j++) {
            if ((k & 63) == 0) {
                _mm_prefetch((const char *)(w[j] + k) + F8_PF, _MM_HINT_T0);
            }
            __m256 wv = f8x8(w[j] + k, cnt);
#pragma GCC unroll 4
            for (int i = 0; i < MR; i++) {
                acc[i][j] = _mm256_fmadd_ps(xv[i], wv, acc[i][j]);
            }
        }
    }
#pragma GCC unroll 4
    for (int i = 0; i < MR; i++) {
#pragma GCC unroll 4
        for (int j = 0; j < R; j++) {
            a->y[(size_t)(m + i) * (size_t)a->ldy + (size_t)(n + j * rs)] =
                f8_out(f, n + j * rs, f8_hsum8(acc[i][j]), 256.0f);
        }
    }
}

T256 static void f8_small256(const mm_args *a, int m0, int m1, int n0, int n1, void *scratch)
{
    (void)scratch;
    const f8_args *f = f8_of(a);
    if (m1 - m0 == 1) {
        const int q = (n1 - n0) / 4;
        for (int i = 0; i < q; i++) {
            f8_tile256(f, m0, n0 + i, 1, 4, q);
        }
        for (int n = n0 + 4 * q; n < n1; n++) {
            f8_tile256(f, m0, n, 1, 1, 1);
        }
        return;
    }
    for (int n = n0; n < n1; n++) {
        for (int m = m0; m < m1; m += 4) {
            switch (NV_MIN(4, m1 - m)) {
            case 4: f8_tile256(f, m, n, 4, 1, 1); break;
            case 3: f8_tile256(f, m, n, 3, 1, 1); break;
            case 2: f8_tile256(f, m, n, 2, 1, 1); break;
            default: f8_tile256(f, m, n, 1, 1, 1); break;
            }
        }
    }
}

static mm_kernel f8_small_kernel(mm_simd path)
{
    return path == MM_AVX512 ? f8_small512 : path == MM_AVX2 ? f8_small256 : NULL;
}

static bool f8_x_fits(mm_simd path, const float *x, int M, int K)
{
    return path == MM_AVX512 && f8_x_fits512(x, M, K);
}

/* n codes -> f16 (the prefill panels), 16 at a time. */
T256 static void f8_widen256(uint16_t *h, const uint8_t *q, size_t n)
{
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m256i v = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(q + i)));
        v = _mm256_and_si256(_mm256_slli_epi16(v, 7), _mm256_set1_epi16((short)0xBF80));
        _mm256_storeu_si256((__m256i *)(h + i), v);
    }
    for (; i < n; i++) {
        h[i] = f8_to_h(q[i]);
    }
}

static void f8_widen(mm_simd path, uint16_t *h, const uint8_t *q, size_t n)
{
    if (path >= MM_AVX2) {
        f8_widen256(h, q, n);
        return;
    }
    for (size_t i = 0; i < n; i++) {
        h[i] = f8_to_h(q[i]);
    }
}

#else

static void f8_widen(mm_simd path, uint16_t *h, const uint8_t *q, size_t n)
{
    (void)path;
    for (size_t i = 0; i < n; i++) {
        h[i] = f8_to_h(q[i]);
    }
}


static mm_kernel f8_small_kernel(mm_simd path)
{
    (void)path;
    return NULL;
}

static bool f8_x_fits(mm_simd path, const float *x, int M, int K)
{
    (void)path;
    (void)x;
    (void)M;
    (void)K;
    return false;
}

#endif

/* ---- many rows: widen a column block to f16, then the f16 register-tile kernel ---------- */

/* Columns widened per block: 512, the f16 kernel's column block (narrower blocks make it pack
 * the activations once per block: 20% slower at K = 8960), fewer when K is so large that the
 * block would pass 64 MiB. */
static int f8_block_cols(int K)
{
    int nb = (int)((64u << 20) / (2u * (unsigned)K));
    nb = NV_MIN(512, nb) & ~31;
    return NV_MAX(32, nb);
}

static void f8_big(const mm_args *a, int m0, int m1, int n0, int n1, void *scratch)
{
    const f8_args *f = f8_of(a);
    mm_kernel k = mm_x86_kernel(f->path, MM_FORM_BIG);
    const int K = a->K;
    const int nb = f8_block_cols(K);
    uint16_t *h = nv_malloc(NULL, (size_t)nb * (size_t)K * sizeof(uint16_t));
    void *raw = NULL;
    if (scratch == NULL && h != NULL) {
        /* no pool (and so no pool scratch): the panels come from the heap for this call */
        raw = nv_malloc(NULL, NV_POOL_SCRATCH + 64);
        scratch = (void *)(((uintptr_t)raw + 63u) & ~(uintptr_t)63u);
    }
    if (k == NULL || h == NULL || (raw == NULL && scratch == NULL)) {
        nv_free(NULL, h);
        nv_free(NULL, raw);
        f8_portable(a, m0, m1, n0, n1, NULL);
        return;
    }
    const uint8_t *q = a->w;
    for (int c0 = n0; c0 < n1; c0 += nb) {
        const int cw = NV_MIN(nb, n1 - c0);
        const uint8_t *src = q + (size_t)c0 * (size_t)a->ldw;
        f8_widen(f->path, h, src, (size_t)cw * (size_t)K);
        mm_args sub = {a->y + c0, a->ldy, a->x, a->ldx, h, K, NV_F16, NULL, 1.0f,
                       a->M, cw, K};
        k(&sub, m0, m1, 0, cw, scratch);
        for (int m = m0; m < m1; m++) {
            float *y = a->y + (size_t)m * (size_t)a->ldy;
            for (int n = c0; n < c0 + cw; n++) {
                y[n] = f8_out(f, n, y[n], 256.0f);
            }
        }
    }
    nv_free(NULL, h);
    nv_free(NULL, raw);
}

/* ---- entry points ----------------------------------------------------------------------- */

void mm_matmul_fp8_path(nv_pool *pool, float *y, const float *x, const uint8_t *q,
                        const float *scale, const float *bias, int M, int N, int K, mm_simd path)
{
    if (M <= 0 || N <= 0) {
        return;
    }
    if (K <= 0) {
        for (int m = 0; m < M; m++) {
            for (int n = 0; n < N; n++) {
                y[(size_t)m * (size_t)N + (size_t)n] = bias != NULL ? bias[n] : 0.0f;
            }
        }
        return;
    }
    if (!mm_simd_supported(path)) {
        path = MM_PORTABLE;
    }
    f8_args f = {{y, N, x, K, q, K, NV_F8_E4M3, bias, 1.0f, M, N, K}, scale, path, false};
    if (path == MM_PORTABLE) {
        mm_run(pool, &f.a, f8_portable, 0, 16, 4, 16, 16, 0);
    } else if (M < MM_SMALL_M) {
        f.x_fits = f8_x_fits(path, x, M, K);
        mm_run(pool, &f.a, f8_small_kernel(path), 0, 16, 4, 16, INT_MAX, 0);
    } else {
        /* scratch 0: with a pool each thread gets its pool scratch; without one f8_big
         * allocates (mm_run would fall back to a kernel that does not read codes) */
        mm_run(pool, &f.a, f8_big, 0, 64, 12, 256, 96, MM_BLOCK_N);
    }
}

void cpu_matmul_fp8(nv_pool *pool, float *y, const float *x, const uint8_t *q, const float *scale,
                    const float *bias, int M, int N, int K)
{
    mm_matmul_fp8_path(pool, y, x, q, scale, bias, M, N, K, mm_simd_detected());
}
