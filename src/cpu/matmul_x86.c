/*
 * matmul_x86.c - AVX-512 and AVX2+FMA GEMM kernels, compiled per function with target
 * attributes and chosen at run time by matmul.c (the library still runs on plain x86-64).
 * Two shapes of work: few activation rows (decode: M < MM_SMALL_M) stream each weight row once
 * as dot products along K (one row of x: 4 interleaved weight streams per thread); many rows
 * (prefill, ViT) convert a KC x 32 panel of the weights to f32 once into the thread's scratch
 * and reuse it across all of M in a 12 x 32 (AVX-512) or 6 x 16 (AVX2) register tile. Weights
 * stay bf16/f16 in memory and are widened exactly (bf16: shift left 16); every product is
 * f32 x f32. AVX512-BF16 (vdpbf16ps) is deliberately unused: it rounds the activations to
 * bf16, which the numerics contract (spec, top) forbids.
 */
#include "cpu/matmul_impl.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#include <string.h>

#define T512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")))
#define T256 __attribute__((target("avx2,fma,f16c")))
#define INL static inline __attribute__((always_inline))

/* Panel blocking (tuned on the dev machine's AMD EPYC, see docs/performance.md): a KC x NC f32
 * weight block (256 KiB, L2) and an MC x KC activation block (120 KiB) per thread; a KC x 32
 * weight micro-panel (16 KiB) stays in L1 while 12-row activation micro-panels stream past. */
#ifndef KC
#define KC 128
#endif
#ifndef NC
#define NC 512
#endif
#ifndef MC
#define MC 240
#endif
#define MR5 12
#define NR5 32
#define MR2 6
#define NR2 16

_Static_assert((size_t)KC * NC * 4 + (size_t)KC * MC * 4 + 256 <= NV_POOL_SCRATCH,
               "GEMM panels must fit the pool scratch");

/* ======================================================================================== */
/* AVX-512                                                                                   */
/* ======================================================================================== */

/* Pack activations m..m+mr-1, k0..k0+kc-1 as dst[k][rows] (rows >= mr are zero): the
 * A panel of both register-tile kernels (rows = MR5 or MR2). Plain C, used by both paths. */
INL void pack_a(float *dst, int rows, const mm_args *a, int m, int mr, int k0, int kc)
{
    for (int k = 0; k < kc; k++) {
        for (int r = 0; r < rows; r++) {
            dst[(size_t)k * (size_t)rows + (size_t)r] =
                r < mr ? a->x[(size_t)(m + r) * (size_t)a->ldx + (size_t)(k0 + k)] : 0.0f;
        }
    }
}

/* 16 weights starting at w[idx] as f32; `mask` selects valid lanes (others 0). */
T512 INL __m512 w16(const void *w, nv_dtype wt, size_t idx, __mmask16 mask)
{
    if (wt == NV_BF16) {
        __m256i h = _mm256_maskz_loadu_epi16(mask, (const uint16_t *)w + idx);
        return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    }
    if (wt == NV_F16) {
        __m256i h = _mm256_maskz_loadu_epi16(mask, (const uint16_t *)w + idx);
        return _mm512_cvtph_ps(h);
    }
    return _mm512_maskz_loadu_ps(mask, (const float *)w + idx);
}

/* Small M: one weight row against MR rows of x (M = 1 goes through dot_4rows512 below, which
 * reads 4 weight rows far apart per x load); two accumulators per output (alternating 16-wide
 * k steps) hide the FMA latency. Every output gets the same arithmetic whatever MR is. */
T512 INL void dot_row512(const mm_args *a, int m, int n, const int MR)
{
    __m512 acc0[4], acc1[4];
    const float *x[4];
#pragma GCC unroll 4
    for (int i = 0; i < MR; i++) {
        x[i] = a->x + (size_t)(m + i) * (size_t)a->ldx;
        acc0[i] = _mm512_setzero_ps();
        acc1[i] = _mm512_setzero_ps();
    }
    const int K = a->K;
    const size_t row = (size_t)n * (size_t)a->ldw;
    int k = 0;
    for (; k + 32 <= K; k += 32) {
        const __m512 w0 = w16(a->w, a->wt, row + (size_t)k, 0xffff);
        const __m512 w1 = w16(a->w, a->wt, row + (size_t)k + 16, 0xffff);
#pragma GCC unroll 4
        for (int i = 0; i < MR; i++) {
            acc0[i] = _mm512_fmadd_ps(_mm512_loadu_ps(x[i] + k), w0, acc0[i]);
            acc1[i] = _mm512_fmadd_ps(_mm512_loadu_ps(x[i] + k + 16), w1, acc1[i]);
        }
    }
    if (k + 16 <= K) {
        const __m512 w0 = w16(a->w, a->wt, row + (size_t)k, 0xffff);
#pragma GCC unroll 4
        for (int i = 0; i < MR; i++) {
            acc0[i] = _mm512_fmadd_ps(_mm512_loadu_ps(x[i] + k), w0, acc0[i]);
        }
        k += 16;
    }
    if (k < K) {
        const __mmask16 mask = (__mmask16)((1u << (K - k)) - 1u);
        const __m512 w1 = w16(a->w, a->wt, row + (size_t)k, mask);
#pragma GCC unroll 4
        for (int i = 0; i < MR; i++) {
            acc1[i] = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(mask, x[i] + k), w1, acc1[i]);
        }
    }
#pragma GCC unroll 4
    for (int i = 0; i < MR; i++) {
        float s = _mm512_reduce_add_ps(_mm512_add_ps(acc0[i], acc1[i])) * a->alpha;
        a->y[(size_t)(m + i) * (size_t)a->ldy + (size_t)n] =
            a->bias != NULL ? s + a->bias[n] : s;
    }
}

/* One row of x against 4 weight rows at once, rows n + j * rs (j < 4): each x load serves 4
 * rows, and with rows far apart the core reads 4 sequential streams instead of one. On the
 * 2-core EPYC VM one streaming core reads about 14 GB/s from a single stream but 28 GB/s from
 * 4 streams 64 KB apart (each stream gets its own hardware prefetch); decode's GEMV is such a
 * read. Per output, the same arithmetic as dot_row512(MR = 1). */
T512 INL void dot_4rows512(const mm_args *a, int m, int n, int rs)
{
    __m512 acc0[4], acc1[4];
    size_t row[4];
#pragma GCC unroll 4
    for (int j = 0; j < 4; j++) {
        acc0[j] = _mm512_setzero_ps();
        acc1[j] = _mm512_setzero_ps();
        row[j] = (size_t)(n + j * rs) * (size_t)a->ldw;
    }
    const float *x = a->x + (size_t)m * (size_t)a->ldx;
    const int K = a->K;
    int k = 0;
    for (; k + 32 <= K; k += 32) {
        const __m512 x0 = _mm512_loadu_ps(x + k), x1 = _mm512_loadu_ps(x + k + 16);
#pragma GCC unroll 4
        for (int j = 0; j < 4; j++) {
            acc0[j] = _mm512_fmadd_ps(x0, w16(a->w, a->wt, row[j] + (size_t)k, 0xffff), acc0[j]);
            acc1[j] = _mm512_fmadd_ps(x1, w16(a->w, a->wt, row[j] + (size_t)k + 16, 0xffff),
                                      acc1[j]);
        }
    }
    if (k + 16 <= K) {
        const __m512 x0 = _mm512_loadu_ps(x + k);
#pragma GCC unroll 4
        for (int j = 0; j < 4; j++) {
            acc0[j] = _mm512_fmadd_ps(x0, w16(a->w, a->wt, row[j] + (size_t)k, 0xffff), acc0[j]);
        }
        k += 16;
    }
    if (k < K) {
        const __mmask16 mask = (__mmask16)((1u << (K - k)) - 1u);
        const __m512 x1 = _mm512_maskz_loadu_ps(mask, x + k);
#pragma GCC unroll 4
        for (int j = 0; j < 4; j++) {
            acc1[j] = _mm512_fmadd_ps(x1, w16(a->w, a->wt, row[j] + (size_t)k, mask), acc1[j]);
        }
    }
#pragma GCC unroll 4
    for (int j = 0; j < 4; j++) {
        float s = _mm512_reduce_add_ps(_mm512_add_ps(acc0[j], acc1[j])) * a->alpha;
        a->y[(size_t)m * (size_t)a->ldy + (size_t)(n + j * rs)] =
            a->bias != NULL ? s + a->bias[n + j * rs] : s;
    }
}

T512 static void small_m512(const mm_args *a, int m0, int m1, int n0, int n1, void *scratch)
{
    (void)scratch;
    if (m1 - m0 == 1) {
        /* One row of x (decode): the columns in 4 quarters read side by side. */
        const int q = (n1 - n0) / 4;
        for (int i = 0; i < q; i++) {
            dot_4rows512(a, m0, n0 + i, q);
        }
        for (int n = n0 + 4 * q; n < n1; n++) {
            dot_row512(a, m0, n, 1);
        }
        return;
    }
    for (int n = n0; n < n1; n++) {
        for (int m = m0; m < m1; m += 4) {
            /* Constant MR lets the compiler keep the tile in registers. */
            switch (NV_MIN(4, m1 - m)) {
            case 4: dot_row512(a, m, n, 4); break;
            case 3: dot_row512(a, m, n, 3); break;
            case 2: dot_row512(a, m, n, 2); break;
            default: dot_row512(a, m, n, 1); break;
            }
        }
    }
}

/* Pack weights n..n+nr-1, k0..k0+kc-1 of an (N, K) matrix as dst[k][NR5] f32 (lanes >= nr
 * are never read: the kernel masks them). */
/* In-register transpose of a 16 x 16 f32 block: r[i] lane j -> r[j] lane i. */
T512 INL void transpose16(__m512 r[16])
{
    __m512 t[16];
#pragma GCC unroll 8
    for (int i = 0; i < 8; i++) {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
#pragma GCC unroll 4
    for (int i = 0; i < 4; i++) {
        __m512d a0 = _mm512_castps_pd(t[4 * i]), a1 = _mm512_castps_pd(t[4 * i + 1]);
        __m512d b0 = _mm512_castps_pd(t[4 * i + 2]), b1 = _mm512_castps_pd(t[4 * i + 3]);
        r[4 * i] = _mm512_castpd_ps(_mm512_unpacklo_pd(a0, b0));
        r[4 * i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a0, b0));
        r[4 * i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(a1, b1));
        r[4 * i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(a1, b1));
    }
    /* r[4i + c] now holds rows 4i..4i+3, column c of each 4-column group, per 128-bit lane. */
#pragma GCC unroll 4
    for (int c = 0; c < 4; c++) {
        __m512 a = _mm512_shuffle_f32x4(r[c], r[4 + c], 0x88);
        __m512 b = _mm512_shuffle_f32x4(r[c], r[4 + c], 0xdd);
        __m512 d = _mm512_shuffle_f32x4(r[8 + c], r[12 + c], 0x88);
        __m512 e = _mm512_shuffle_f32x4(r[8 + c], r[12 + c], 0xdd);
        t[c] = _mm512_shuffle_f32x4(a, d, 0x88);      /* 128-bit lane 0 of each row block */
        t[4 + c] = _mm512_shuffle_f32x4(b, e, 0x88);  /* lane 1 */
        t[8 + c] = _mm512_shuffle_f32x4(a, d, 0xdd);  /* lane 2 */
        t[12 + c] = _mm512_shuffle_f32x4(b, e, 0xdd); /* lane 3 */
    }
#pragma GCC unroll 16
    for (int i = 0; i < 16; i++) {
        r[i] = t[i];
    }
}

/* Pack weights n..n+nr-1, k0..k0+kc-1 of an (N, K) matrix as dst[k][NR5] f32 (lanes >= nr
 * are never read: the kernel masks them). Full 16-row, 16-k blocks go through registers. */
T512 static void pack_b_nt512(float *dst, const mm_args *a, int n, int nr, int k0, int kc)
{
    const size_t ldw = (size_t)a->ldw;
    int kv = nr == NR5 ? kc & ~15 : 0;
    for (int jb = 0; jb < NR5 && kv > 0; jb += 16) {
        for (int k = 0; k < kv; k += 16) {
            __m512 r[16];
#pragma GCC unroll 16
            for (int j = 0; j < 16; j++) {
                r[j] = w16(a->w, a->wt, (size_t)(n + jb + j) * ldw + (size_t)(k0 + k), 0xffff);
            }
            transpose16(r);
#pragma GCC unroll 16
            for (int t = 0; t < 16; t++) {
                _mm512_storeu_ps(dst + (size_t)(k + t) * NR5 + (size_t)jb, r[t]);
            }
        }
    }
    if (kv == kc) {
        return;
    }
    /* Partial panels and the k tail, element by element. */
    for (int j = 0; j < nr; j++) {
        const size_t row = (size_t)(n + j) * ldw + (size_t)k0;
        for (int k = kv; k < kc; k += 16) {
            int cnt = NV_MIN(16, kc - k);
            __mmask16 mask = (__mmask16)(cnt == 16 ? 0xffffu : (1u << cnt) - 1u);
            float tmp[16];
            _mm512_storeu_ps(tmp, w16(a->w, a->wt, row + (size_t)k, mask));
            for (int t = 0; t < cnt; t++) {
                dst[(size_t)(k + t) * NR5 + (size_t)j] = tmp[t];
            }
        }
    }
}


/* C tile (mr x nr, at c with stride ldc) (+)= Ap . Bp over kc steps; b rows `bs` floats apart.
 * first: start from 0, else continue from C; last: scale by alpha, add bias, as the portable
 * kernel does. Every element is one sequential f32 FMA chain over k. */
T512 static void ukr512(int kc, const float *ap, const float *bp, size_t bs, float *c, size_t ldc,
                        int mr, int nr, int first, int last, float alpha, const float *bias)
{
    const __mmask16 mk0 = (__mmask16)(nr >= 16 ? 0xffffu : (1u << nr) - 1u);
    const __mmask16 mk1 =
        (__mmask16)(nr >= 32 ? 0xffffu : nr > 16 ? (1u << (nr - 16)) - 1u : 0u);
    __m512 c0[MR5], c1[MR5];
#pragma GCC unroll 12
    for (int r = 0; r < MR5; r++) {
        if (first || r >= mr) {
            c0[r] = _mm512_setzero_ps();
            c1[r] = _mm512_setzero_ps();
        } else {
            c0[r] = _mm512_maskz_loadu_ps(mk0, c + (size_t)r * ldc);
            c1[r] = _mm512_maskz_loadu_ps(mk1, c + (size_t)r * ldc + 16);
        }
    }
    for (int k = 0; k < kc; k++) {
        const __m512 b0 = _mm512_maskz_loadu_ps(mk0, bp + (size_t)k * bs);
        const __m512 b1 = _mm512_maskz_loadu_ps(mk1, bp + (size_t)k * bs + 16);
        const float *ak = ap + (size_t)k * MR5;
#pragma GCC unroll 12
        for (int r = 0; r < MR5; r++) {
            const __m512 av = _mm512_set1_ps(ak[r]);
            c0[r] = _mm512_fmadd_ps(av, b0, c0[r]);
            c1[r] = _mm512_fmadd_ps(av, b1, c1[r]);
        }
    }
    __m512 va = _mm512_set1_ps(alpha);
    __m512 vb0 = _mm512_setzero_ps(), vb1 = _mm512_setzero_ps();
    if (last && bias != NULL) {
        vb0 = _mm512_maskz_loadu_ps(mk0, bias);
        vb1 = _mm512_maskz_loadu_ps(mk1, bias + 16);
    }
#pragma GCC unroll 12
    for (int r = 0; r < MR5; r++) {
        if (r < mr) {
            __m512 v0 = c0[r], v1 = c1[r];
            if (last) {
                v0 = _mm512_mul_ps(v0, va);
                v1 = _mm512_mul_ps(v1, va);
                if (bias != NULL) {
                    v0 = _mm512_add_ps(v0, vb0);
                    v1 = _mm512_add_ps(v1, vb1);
                }
            }
            _mm512_mask_storeu_ps(c + (size_t)r * ldc, mk0, v0);
            _mm512_mask_storeu_ps(c + (size_t)r * ldc + 16, mk1, v1);
        }
    }
}

/* Many rows: for each NC-wide column block and KC-deep slice, pack the weights once, then run
 * every MR-row block of activations over them. nn: w is (K, N) f32, read in place. */
T512 INL void big_m512(const mm_args *a, int m0, int m1, int n0, int n1, void *scratch, int nn)
{
    float *ap = scratch;                          /* MC x KC, MR5-row micro-panels */
    float *bp = ap + (size_t)KC * MC;             /* KC x NC (NT only) */
    const int K = a->K;
    for (int nc0 = n0; nc0 < n1; nc0 += NC) {
        const int ncw = NV_MIN(NC, n1 - nc0);
        for (int k0 = 0; k0 < K; k0 += KC) {
            const int kc = NV_MIN(KC, K - k0);
            const int first = k0 == 0, last = k0 + kc == K;
            if (!nn) {
                for (int p = 0; p * NR5 < ncw; p++) {
                    pack_b_nt512(bp + (size_t)p * KC * NR5, a, nc0 + p * NR5,
                                 NV_MIN(NR5, ncw - p * NR5), k0, kc);
                }
            }
            for (int mc0 = m0; mc0 < m1; mc0 += MC) {
                const int mcw = NV_MIN(MC, m1 - mc0);
                for (int i = 0; i * MR5 < mcw; i++) {
                    pack_a(ap + (size_t)i * KC * MR5, MR5, a, mc0 + i * MR5,
                           NV_MIN(MR5, mcw - i * MR5), k0, kc);
                }
                /* One weight micro-panel stays in L1 while the activation panels stream from L2. */
                for (int p = 0; p * NR5 < ncw; p++) {
                    const int n = nc0 + p * NR5;
                    const float *b;
                    size_t bs;
                    if (nn) {
                        b = (const float *)a->w + (size_t)k0 * (size_t)a->ldw + (size_t)n;
                        bs = (size_t)a->ldw;
                    } else {
                        b = bp + (size_t)p * KC * NR5;
                        bs = NR5;
                    }
                    for (int i = 0; i * MR5 < mcw; i++) {
                        const int m = mc0 + i * MR5;
                        ukr512(kc, ap + (size_t)i * KC * MR5, b, bs,
                               a->y + (size_t)m * (size_t)a->ldy + (size_t)n, (size_t)a->ldy,
                               NV_MIN(MR5, mcw - i * MR5), NV_MIN(NR5, ncw - p * NR5), first,
                               last, a->alpha, a->bias != NULL ? a->bias + n : NULL);
                    }
                }
            }
        }
    }
}

T512 static void big_nt512(const mm_args *a, int m0, int m1, int n0, int n1, void *scratch)
{
    big_m512(a, m0, m1, n0, n1, scratch, 0);
}

T512 static void big_nn512(const mm_args *a, int m0, int m1, int n0, int n1, void *scratch)
{
    big_m512(a, m0, m1, n0, n1, scratch, 1);
}

/* ======================================================================================== */
/* AVX2 + FMA                                                                                */
/* ======================================================================================== */

static const int32_t mask8_tbl[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};

/* 8 weights at w[idx] as f32; cnt < 8 reads only cnt of them (others 0). */
T256 INL __m256 w8(const void *w, nv_dtype wt, size_t idx, int cnt)
{
    if (cnt >= 8) {
        if (wt == NV_BF16) {
            __m128i h = _mm_loadu_si128((const __m128i *)((const uint16_t *)w + idx));
            return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
        }
        if (wt == NV_F16) {
            __m128i h = _mm_loadu_si128((const __m128i *)((const uint16_t *)w + idx));
            return _mm256_cvtph_ps(h);
        }
        return _mm256_loadu_ps((const float *)w + idx);
    }
    if (wt == NV_F32) {
        __m256i mask = _mm256_loadu_si256((const __m256i *)(mask8_tbl + 8 - cnt));
        return _mm256_maskload_ps((const float *)w + idx, mask);
    }
    uint16_t tmp[8] = {0};
    memcpy(tmp, (const uint16_t *)w + idx, (size_t)cnt * 2);
    __m128i h = _mm_loadu_si128((const __m128i *)tmp);
    if (wt == NV_BF16) {
        return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
    }
    return _mm256_cvtph_ps(h);
}

T256 INL float hsum8(__m256 v)
{
    __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
    __m128 s = _mm_add_ps(lo, hi);
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* MR rows of x against R weight rows n + j * rs (see dot_4rows512 for rs > 1). */
T256 INL void dot_tile256(const mm_args *a, int m, int n, const int R, const int MR, int rs)
{
    __m256 acc[4][4];
    const size_t ldw = (size_t)a->ldw;
    const float *x[4];
    for (int i = 0; i < MR; i++) {
        x[i] = a->x + (size_t)(m + i) * (size_t)a->ldx;
    }
#pragma GCC unroll 4
    for (int i = 0; i < 4; i++) {
#pragma GCC unroll 4
        for (int j = 0; j < 4; j++) {
            acc[i][j] = _mm256_setzero_ps();
        }
    }
    const int K = a->K;
    for (int k = 0; k < K; k += 8) {
        const int cnt = NV_MIN(8, K - k);
        __m256 xv[4];
        __m256i mask = _mm256_loadu_si256((const __m256i *)(mask8_tbl + 8 - cnt));
#pragma GCC unroll 4
        for (int i = 0; i < MR; i++) {
            xv[i] = cnt == 8 ? _mm256_loadu_ps(x[i] + k) : _mm256_maskload_ps(x[i] + k, mask);
        }
#pragma GCC unroll 4
        for (int j = 0; j < R; j++) {
            __m256 wv = w8(a->w, a->wt, (size_t)(n + j * rs) * ldw + (size_t)k, cnt);
#pragma GCC unroll 4
            for (int i = 0; i < MR; i++) {
                acc[i][j] = _mm256_fmadd_ps(xv[i], wv, acc[i][j]);
            }
        }
    }
#pragma GCC unroll 4
    for (int i = 0; i < MR; i++) {
        float *y = a->y + (size_t)(m + i) * (size_t)a->ldy;
#pragma GCC unroll 4
        for (int j = 0; j < R; j++) {
            float s = hsum8(acc[i][j]) * a->alpha;
            y[n + j * rs] = a->bias != NULL ? s + a->bias[n + j * rs] : s;
        }
    }
}

T256 static void dot_rows256(const mm_args *a, int m, int n, int R, int MR)
{
    switch (MR * 8 + R) {
    case 8 + 4: dot_tile256(a, m, n, 4, 1, 1); break;
    case 8 + 3: dot_tile256(a, m, n, 3, 1, 1); break;
    case 8 + 2: dot_tile256(a, m, n, 2, 1, 1); break;
    case 8 + 1: dot_tile256(a, m, n, 1, 1, 1); break;
    case 16 + 4: dot_tile256(a, m, n, 4, 2, 1); break;
    case 16 + 3: dot_tile256(a, m, n, 3, 2, 1); break;
    case 16 + 2: dot_tile256(a, m, n, 2, 2, 1); break;
    case 16 + 1: dot_tile256(a, m, n, 1, 2, 1); break;
    case 24 + 4: dot_tile256(a, m, n, 4, 3, 1); break;
    case 24 + 3: dot_tile256(a, m, n, 3, 3, 1); break;
    case 24 + 2: dot_tile256(a, m, n, 2, 3, 1); break;
    case 24 + 1: dot_tile256(a, m, n, 1, 3, 1); break;
    case 32 + 4: dot_tile256(a, m, n, 4, 4, 1); break;
    case 32 + 3: dot_tile256(a, m, n, 3, 4, 1); break;
    case 32 + 2: dot_tile256(a, m, n, 2, 4, 1); break;
    default: dot_tile256(a, m, n, 1, 4, 1); break;
    }
}

T256 static void small_m256(const mm_args *a, int m0, int m1, int n0, int n1, void *scratch)
{
    (void)scratch;
    if (m1 - m0 == 1) {
        /* One row of x (decode): the columns in 4 quarters read side by side. */
        const int q = (n1 - n0) / 4;
        for (int i = 0; i < q; i++) {
            dot_tile256(a, m0, n0 + i, 4, 1, q);
        }
        for (int n = n0 + 4 * q; n < n1; n++) {
            dot_tile256(a, m0, n, 1, 1, 1);
        }
        return;
    }
    for (int n = n0; n < n1; n += 4) {
        for (int m = m0; m < m1; m += 4) {
            dot_rows256(a, m, n, NV_MIN(4, n1 - n), NV_MIN(4, m1 - m));
        }
    }
}

/* dst[k][NR2] = w(n + j, k0 + k) for j < nr, zero for j >= nr (NT: w is (N, K); NN: (K, N)). */
T256 static void pack_b256(float *dst, const mm_args *a, int n, int nr, int k0, int kc, int nn)
{
    const size_t ldw = (size_t)a->ldw;
    if (nn) {
        const float *b = a->w;
        for (int k = 0; k < kc; k++) {
            const float *src = b + (size_t)(k0 + k) * ldw + (size_t)n;
            float *d = dst + (size_t)k * NR2;
            for (int j = 0; j < NR2; j++) {
                d[j] = j < nr ? src[j] : 0.0f;
            }
        }
        return;
    }
    for (int j = 0; j < NR2; j++) {
        if (j >= nr) {
            for (int k = 0; k < kc; k++) {
                dst[(size_t)k * NR2 + (size_t)j] = 0.0f;
            }
            continue;
        }
        const size_t row = (size_t)(n + j) * ldw + (size_t)k0;
        for (int k = 0; k < kc; k += 8) {
            int cnt = NV_MIN(8, kc - k);
            float tmp[8];
            _mm256_storeu_ps(tmp, w8(a->w, a->wt, row + (size_t)k, cnt));
            for (int t = 0; t < cnt; t++) {
                dst[(size_t)(k + t) * NR2 + (size_t)j] = tmp[t];
            }
        }
    }
}

T256 static void ukr256(int kc, const float *ap, const float *bp, float *c, size_t ldc, int mr,
                        int nr, int first, int last, float alpha, const float *bias)
{
    __m256 c0[MR2], c1[MR2];
    float tile[MR2][NR2];
    if (!first) {
        for (int r = 0; r < MR2; r++) {
            for (int j = 0; j < NR2; j++) {
                tile[r][j] = r < mr && j < nr ? c[(size_t)r * ldc + (size_t)j] : 0.0f;
            }
        }
    }
#pragma GCC unroll 6
    for (int r = 0; r < MR2; r++) {
        c0[r] = first ? _mm256_setzero_ps() : _mm256_loadu_ps(tile[r]);
        c1[r] = first ? _mm256_setzero_ps() : _mm256_loadu_ps(tile[r] + 8);
    }
    for (int k = 0; k < kc; k++) {
        const __m256 b0 = _mm256_loadu_ps(bp + (size_t)k * NR2);
        const __m256 b1 = _mm256_loadu_ps(bp + (size_t)k * NR2 + 8);
        const float *ak = ap + (size_t)k * MR2;
#pragma GCC unroll 6
        for (int r = 0; r < MR2; r++) {
            const __m256 av = _mm256_broadcast_ss(ak + r);
            c0[r] = _mm256_fmadd_ps(av, b0, c0[r]);
            c1[r] = _mm256_fmadd_ps(av, b1, c1[r]);
        }
    }
#pragma GCC unroll 6
    for (int r = 0; r < MR2; r++) {
        _mm256_storeu_ps(tile[r], c0[r]);
        _mm256_storeu_ps(tile[r] + 8, c1[r]);
    }
    for (int r = 0; r < mr; r++) {
        for (int j = 0; j < nr; j++) {
            float v = tile[r][j];
            if (last) {
                v *= alpha;
                if (bias != NULL) {
                    v += bias[j];
                }
            }
            c[(size_t)r * ldc + (size_t)j] = v;
        }
    }
}

T256 INL void big_m256(const mm_args *a, int m0, int m1, int n0, int n1, void *scratch, int nn)
{
    float *bp = scratch;
    float *ap = bp + (size_t)KC * NC;
    const int K = a->K;
    for (int nc0 = n0; nc0 < n1; nc0 += NC) {
        const int ncw = NV_MIN(NC, n1 - nc0);
        for (int k0 = 0; k0 < K; k0 += KC) {
            const int kc = NV_MIN(KC, K - k0);
            const int first = k0 == 0, last = k0 + kc == K;
            for (int p = 0; p * NR2 < ncw; p++) {
                pack_b256(bp + (size_t)p * KC * NR2, a, nc0 + p * NR2, NV_MIN(NR2, ncw - p * NR2),
                          k0, kc, nn);
            }
            for (int m = m0; m < m1; m += MR2) {
                const int mr = NV_MIN(MR2, m1 - m);
                pack_a(ap, MR2, a, m, mr, k0, kc);
                for (int p = 0; p * NR2 < ncw; p++) {
                    const int n = nc0 + p * NR2;
                    ukr256(kc, ap, bp + (size_t)p * KC * NR2,
                           a->y + (size_t)m * (size_t)a->ldy + (size_t)n, (size_t)a->ldy, mr,
                           NV_MIN(NR2, ncw - p * NR2), first, last, a->alpha,
                           a->bias != NULL ? a->bias + n : NULL);
                }
            }
        }
    }
}

T256 static void big_nt256(const mm_args *a, int m0, int m1, int n0, int n1, void *scratch)
{
    big_m256(a, m0, m1, n0, n1, scratch, 0);
}

T256 static void big_nn256(const mm_args *a, int m0, int m1, int n0, int n1, void *scratch)
{
    big_m256(a, m0, m1, n0, n1, scratch, 1);
}

/* ======================================================================================== */

size_t mm_x86_scratch(mm_simd path, mm_form form, int M)
{
    if (form == MM_FORM_SMALL) {
        return 0;
    }
    if (path == MM_AVX512 && form == MM_FORM_NN) {
        /* Only activation panels: B is read in place. */
        size_t rows = (size_t)NV_MIN(MC, ((M + MR5 - 1) / MR5) * MR5);
        return (size_t)KC * rows * sizeof(float);
    }
    return NV_POOL_SCRATCH;
}

mm_kernel mm_x86_kernel(mm_simd path, mm_form form)
{
    if (path == MM_AVX512) {
        return form == MM_FORM_SMALL ? small_m512 : form == MM_FORM_BIG ? big_nt512 : big_nn512;
    }
    if (path == MM_AVX2) {
        return form == MM_FORM_SMALL ? small_m256 : form == MM_FORM_BIG ? big_nt256 : big_nn256;
    }
    return NULL;
}

#else /* not x86-64 with GNU C */

size_t mm_x86_scratch(mm_simd path, mm_form form, int M)
{
    (void)path;
    (void)form;
    (void)M;
    return 0;
}

mm_kernel mm_x86_kernel(mm_simd path, mm_form form)
{
    (void)path;
    (void)form;
    return NULL;
}

#endif
