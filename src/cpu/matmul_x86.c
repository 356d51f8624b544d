/*
 * matmul_x86.c - AVX-512 and AVX2+FMA GEMM kernels, compiled per function with target
 * attributes and chosen at run time by matmul.c (the library still runs on plain x86-64).
 * Two shapes of work: few activation rows (decode: M < MM_SMALL_M) stream each weight row once
 * as dot products along K (one row of x: 4 interleaved weight streams per thread); many rows
 * (prefill, ViT) convert a k slice x 32 panel of the weights to f32 once into the thread's
 * scratch and reuse it across a block of rows (up to 264 on AVX-512, all of M on AVX2) in a
 * 12 x 32 (AVX-512) or 6 x 16 (AVX2) register tile. Weights
 * stay bf16/f16 in memory and are widened exactly (bf16: shift left 16); every product is
 * f32 x f32. The fast precision (opt-in, NVLM_PRECISION_FAST) has its own AVX512-BF16 kernels
 * at the end of the AVX-512 part: activations rounded to bf16, vdpbf16ps on bf16 pairs.
 */
#include "cpu/matmul_impl.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#include <string.h>

#define T512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")))
#define T256 __attribute__((target("avx2,fma,f16c")))
#define INL static inline __attribute__((always_inline))

/* Panel blocking of the AVX2 kernels (tuned on the dev machine's AMD EPYC, see
 * docs/performance.md): a KC x NC weight block (L2) and an MC x KC activation block per thread;
 * a KC x 16 weight micro-panel stays in L1 while 6-row activation micro-panels stream past.
 * The AVX-512 kernels block on their own (below). */
#ifndef KC
#define KC 128
#endif
#ifndef NC
#define NC MM_BLOCK_N
#endif
#ifndef MC
#define MC 240
#endif
#define MR5 12
#define NR5 32
#define MR2 6
#define NR2 16

_Static_assert(MC % MR2 == 0 && NC % NR2 == 0, "whole AVX2 tiles per block");
_Static_assert((size_t)KC * NC * 4 + (size_t)KC * MC * 4 + 256 <= NV_POOL_SCRATCH,
               "GEMM panels must fit the pool scratch");

/* The AVX-512 f32 kernels block on their own. NT form (the linear layers): activation blocks of
 * MC5 rows, KCJ-deep k slices, column chunks of MM_JIT_N. NN form (attention): KC5-deep
 * slices, column blocks of NC5. Deeper slices mean fewer passes over the partial sums in C;
 * KCJ = 384 is the deepest whose activation block and two weight micro-panels fit the pool
 * scratch, and measured fastest (prefill of 256 tokens, 2 threads: 4% faster than 192). */
#define KC5 192
#define MC5 264
#define NC5 384
#define KCJ 384
#define MM_JIT_N 1024
_Static_assert(MC5 % MR5 == 0 && NC5 % NR5 == 0, "even blocks stay within MC5 x NC5");
_Static_assert((size_t)KC5 * MC5 * 4 <= NV_POOL_SCRATCH,
               "AVX-512 NN activation panels must fit the pool scratch");
_Static_assert((size_t)KCJ * MC5 * 4 + (size_t)KCJ * NR5 * 4 * 2 <= NV_POOL_SCRATCH,
               "AVX-512 GEMM panels (one activation block) must fit the pool scratch");

/* ======================================================================================== */
/* AVX-512                                                                                   */
/* ======================================================================================== */

/* Pack activations m..m+mr-1, k0..k0+kc-1 as dst[k][rows] (rows >= mr are zero): the
 * A panel of the AVX2 register-tile kernel (rows = MR2); AVX-512 uses pack_a512. */
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

/* Small M: MR rows of x against R weight rows n + j * rs. With R = 4 rows far apart the core
 * reads 4 sequential streams instead of one (on the 2-core EPYC VM one streaming core reads
 * about 14 GB/s from a single stream but 28 GB/s from 4 streams 64 KB apart: each stream gets
 * its own hardware prefetch), and each x load serves the R rows. Two accumulators per output
 * (alternating 16-wide k steps) hide the FMA latency; every output gets the same arithmetic
 * whatever MR and R are. */
T512 INL void dot_tile512(const mm_args *a, int m, int n, const int MR, const int R, int rs,
                          const nv_dtype wt)
{
    __m512 acc0[4][4], acc1[4][4];
    const float *x[4];
    size_t row[4];
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
        row[j] = (size_t)(n + j * rs) * (size_t)a->ldw;
    }
    const int K = a->K;
    int k = 0;
    for (; k + 32 <= K; k += 32) {
        __m512 x0[4], x1[4];
#pragma GCC unroll 4
        for (int i = 0; i < MR; i++) {
            x0[i] = _mm512_loadu_ps(x[i] + k);
            x1[i] = _mm512_loadu_ps(x[i] + k + 16);
        }
#pragma GCC unroll 4
        for (int j = 0; j < R; j++) {
            const __m512 w0 = w16(a->w, wt, row[j] + (size_t)k, 0xffff);
            const __m512 w1 = w16(a->w, wt, row[j] + (size_t)k + 16, 0xffff);
#pragma GCC unroll 4
            for (int i = 0; i < MR; i++) {
                acc0[i][j] = _mm512_fmadd_ps(x0[i], w0, acc0[i][j]);
                acc1[i][j] = _mm512_fmadd_ps(x1[i], w1, acc1[i][j]);
            }
        }
    }
    if (k + 16 <= K) {
#pragma GCC unroll 4
        for (int j = 0; j < R; j++) {
            const __m512 w0 = w16(a->w, wt, row[j] + (size_t)k, 0xffff);
#pragma GCC unroll 4
            for (int i = 0; i < MR; i++) {
                acc0[i][j] = _mm512_fmadd_ps(_mm512_loadu_ps(x[i] + k), w0, acc0[i][j]);
            }
        }
        k += 16;
    }
    if (k < K) {
        const __mmask16 mask = (__mmask16)((1u << (K - k)) - 1u);
#pragma GCC unroll 4
        for (int j = 0; j < R; j++) {
            const __m512 w1 = w16(a->w, wt, row[j] + (size_t)k, mask);
#pragma GCC unroll 4
            for (int i = 0; i < MR; i++) {
                acc1[i][j] =
                    _mm512_fmadd_ps(_mm512_maskz_loadu_ps(mask, x[i] + k), w1, acc1[i][j]);
            }
        }
    }
#pragma GCC unroll 4
    for (int i = 0; i < MR; i++) {
#pragma GCC unroll 4
        for (int j = 0; j < R; j++) {
            float s = _mm512_reduce_add_ps(_mm512_add_ps(acc0[i][j], acc1[i][j])) * a->alpha;
            a->y[(size_t)(m + i) * (size_t)a->ldy + (size_t)(n + j * rs)] =
                a->bias != NULL ? s + a->bias[n + j * rs] : s;
        }
    }
}

/* The columns in 4 quarters read side by side (4 weight-row streams per thread); each group of
 * 4 weight rows is taken by 1 or 2 rows of x at a time (at most 16 accumulators), so with a few
 * rows of x it is re-read from L1/L2, not from memory. Leftover columns: one at a time. The
 * weight type is a constant here: a run-time one left in the k loops cost 15-20% in cache. */
T512 INL void small_m512_wt(const mm_args *a, int m0, int m1, int n0, int n1, const nv_dtype wt)
{
    const int q = (n1 - n0) / 4;
    for (int i = 0; i < q; i++) {
        for (int m = m0; m < m1; m += 2) {
            if (m + 1 < m1) {
                dot_tile512(a, m, n0 + i, 2, 4, q, wt);
            } else {
                dot_tile512(a, m, n0 + i, 1, 4, q, wt);
            }
        }
    }
    for (int n = n0 + 4 * q; n < n1; n++) {
        for (int m = m0; m < m1; m += 4) {
            /* Constant MR lets the compiler keep the tile in registers. */
            switch (NV_MIN(4, m1 - m)) {
            case 4: dot_tile512(a, m, n, 4, 1, 1, wt); break;
            case 3: dot_tile512(a, m, n, 3, 1, 1, wt); break;
            case 2: dot_tile512(a, m, n, 2, 1, 1, wt); break;
            default: dot_tile512(a, m, n, 1, 1, 1, wt); break;
            }
        }
    }
}

T512 static void small_m512(const mm_args *a, int m0, int m1, int n0, int n1, void *scratch)
{
    (void)scratch;
    if (a->wt == NV_BF16) {
        small_m512_wt(a, m0, m1, n0, n1, NV_BF16);
    } else if (a->wt == NV_F16) {
        small_m512_wt(a, m0, m1, n0, n1, NV_F16);
    } else {
        small_m512_wt(a, m0, m1, n0, n1, NV_F32);
    }
}

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

/* The first cnt (<= 16, may be <= 0) lanes of a 16-lane mask. */
INL __mmask16 mask16(int cnt)
{
    return (__mmask16)(cnt >= 16 ? 0xffffu : cnt <= 0 ? 0u : (1u << cnt) - 1u);
}

/* pack_a for the AVX-512 tile: 16 rows x 16 k (rows >= mr and k >= kc zero) loaded, transposed
 * in registers and stored as 12-lane rows dst[k][MR5]. The same values as the element loop it
 * replaced; about 16 instructions per 16 x 12 block instead of 192 scalar moves. */
T512 static void pack_a512(float *dst, const mm_args *a, int m, int mr, int k0, int kc)
{
    const __mmask16 st = (__mmask16)((1u << MR5) - 1u);
    for (int kb = 0; kb < kc; kb += 16) {
        const __mmask16 lm = mask16(kc - kb);
        __m512 r[16];
#pragma GCC unroll 16
        for (int i = 0; i < 16; i++) {
            r[i] = i < mr ? _mm512_maskz_loadu_ps(
                                lm, a->x + (size_t)(m + i) * (size_t)a->ldx + (size_t)(k0 + kb))
                          : _mm512_setzero_ps();
        }
        transpose16(r);
        const int nt = NV_MIN(16, kc - kb);
        for (int t = 0; t < nt; t++) {
            _mm512_mask_storeu_ps(dst + (size_t)(kb + t) * MR5, st, r[t]);
        }
    }
}

/* Pack weights n..n+nr-1, k0..k0+kc-1 of an (N, K) matrix as dst[k][NR5] f32 (lanes >= nr
 * are never read: the kernel masks them). Full 16-row blocks go through registers: bf16 ones
 * 32 k at a time, transposed as 32-bit pairs of adjacent k and split after the transpose (the
 * high half of a pair is the f32 of k + 1 with its low bits cleared, the low half shifted up is
 * the f32 of k): half the shuffles of widening first. Others 16 k at a time, widened first. */
T512 static void pack_b_nt512(float *dst, const mm_args *a, int n, int nr, int k0, int kc)
{
    const size_t ldw = (size_t)a->ldw;
    const int kp = nr == NR5 && a->wt == NV_BF16 ? kc & ~31 : 0;
    const int kv = nr == NR5 ? kc & ~15 : 0;
    const __m512i high = _mm512_set1_epi32((int)0xffff0000u);
    for (int jb = 0; jb < NR5 && kp > 0; jb += 16) {
        for (int k = 0; k < kp; k += 32) {
            __m512 r[16];
#pragma GCC unroll 16
            for (int j = 0; j < 16; j++) {
                r[j] = _mm512_castsi512_ps(_mm512_loadu_si512(
                    (const uint16_t *)a->w + (size_t)(n + jb + j) * ldw + (size_t)(k0 + k)));
            }
            transpose16(r);
#pragma GCC unroll 16
            for (int t = 0; t < 16; t++) {
                const __m512i v = _mm512_castps_si512(r[t]);
                float *d = dst + (size_t)(k + 2 * t) * NR5 + (size_t)jb;
                _mm512_storeu_ps(d, _mm512_castsi512_ps(_mm512_slli_epi32(v, 16)));
                _mm512_storeu_ps(d + NR5, _mm512_castsi512_ps(_mm512_and_si512(v, high)));
            }
        }
    }
    for (int jb = 0; jb < NR5 && kv > kp; jb += 16) {
        for (int k = kp; k < kv; k += 16) {
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


/* Software prefetch into L2 of the rows a later pack reads (the next weight panel or block, the
 * next activation block), issued from inside the micro-kernel's k loop (one line per PF_K k
 * steps and stream), so that reading them from memory or L3 overlaps the arithmetic instead of
 * stalling the packing, and costs no loop of its own between tiles. */
#define PF_K 8
typedef struct pf_rows {
    const char *row;  /* the row being prefetched */
    size_t stride;    /* bytes between rows */
    int lines;        /* cache lines per row slice */
    int rows_left;    /* rows not finished; 0: nothing left */
    int line;         /* next line within the row */
} pf_rows;

/* rows rows of kc elements of es bytes from p, stride bytes apart. */
INL void pf_rows_init(pf_rows *f, const void *p, size_t stride, size_t es, int rows, int kc)
{
    f->row = p;
    f->stride = stride;
    f->lines = (int)(((size_t)kc * es + 63u) / 64u) + 1;
    f->rows_left = rows > 0 && kc > 0 ? rows : 0;
    f->line = 0;
}

/* One line of the stream (the micro-kernel issues one per PF_K k steps). */
INL void pf_rows_one(pf_rows *f)
{
    if (f->rows_left > 0) {
        _mm_prefetch(f->row + (size_t)f->line * 64u, _MM_HINT_T1);
        if (++f->line == f->lines) {
            f->line = 0;
            f->row += f->stride;
            f->rows_left--;
        }
    }
}

/* The start of a register tile's k slice (shared by the f32 and bf16 micro-kernels): R rows of
 * accumulators zeroed, and unless this is the first slice the tile's C lines prefetched, to be
 * read after the k loop. */
T512 INL void tile_begin(__m512 *c0, __m512 *c1, const float *c, size_t ldc, int mr, int first,
                         const int R)
{
#pragma GCC unroll 12
    for (int r = 0; r < R; r++) {
        c0[r] = _mm512_setzero_ps();
        c1[r] = _mm512_setzero_ps();
        if (!first && r < mr) {
            _mm_prefetch((const char *)(c + (size_t)r * ldc), _MM_HINT_T0);
            _mm_prefetch((const char *)(c + (size_t)r * ldc) + 64, _MM_HINT_T0);
        }
    }
}

/* The end of a slice: the first mr rows stored, added to C unless first; after the last slice
 * scaled by alpha and the bias added (as the portable kernel does; alpha 1 changes nothing). */
T512 INL void tile_end(const __m512 *c0, const __m512 *c1, float *c, size_t ldc, int mr,
                       __mmask16 mk0, __mmask16 mk1, int first, int last, float alpha,
                       const float *bias, const int R)
{
    const __m512 va = _mm512_set1_ps(alpha);
    __m512 vb0 = _mm512_setzero_ps(), vb1 = _mm512_setzero_ps();
    if (last && bias != NULL) {
        vb0 = _mm512_maskz_loadu_ps(mk0, bias);
        vb1 = _mm512_maskz_loadu_ps(mk1, bias + 16);
    }
#pragma GCC unroll 12
    for (int r = 0; r < R; r++) {
        if (r < mr) {
            __m512 v0 = c0[r], v1 = c1[r];
            if (!first) {
                v0 = _mm512_add_ps(v0, _mm512_maskz_loadu_ps(mk0, c + (size_t)r * ldc));
                v1 = _mm512_add_ps(v1, _mm512_maskz_loadu_ps(mk1, c + (size_t)r * ldc + 16));
            }
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

/* C tile (mr x nr, at c with stride ldc) (+)= Ap . Bp over kc steps; b rows `bs` floats apart;
 * rows of Ap are MR5 floats apart, of which the first R (>= mr; a constant) are computed.
 * The slice's products are summed from 0 (one sequential f32 FMA chain over its k, the same
 * for any R); first: stored as they are, else added to C; last: then scaled by alpha and the
 * bias added, as the portable kernel does. C is read only after the k loop and its lines are
 * prefetched before it, so the partial sums never stall the start of the arithmetic. pw, px:
 * prefetch streams advanced one line each per PF_K k steps. */
T512 INL void ukr512_rows(int kc, const float *ap, const float *bp, size_t bs, float *c,
                          size_t ldc, int mr, int nr, int first, int last, float alpha,
                          const float *bias, const int R, pf_rows *pw, pf_rows *px)
{
    const __mmask16 mk0 = mask16(nr), mk1 = mask16(nr - 16);
    __m512 c0[MR5], c1[MR5];
    tile_begin(c0, c1, c, ldc, mr, first, R);
    for (int k = 0; k < kc; k++) {
        if (k % PF_K == 0) {
            pf_rows_one(pw);
            pf_rows_one(px);
        }
        const __m512 b0 = _mm512_maskz_loadu_ps(mk0, bp + (size_t)k * bs);
        const __m512 b1 = _mm512_maskz_loadu_ps(mk1, bp + (size_t)k * bs + 16);
        const float *ak = ap + (size_t)k * MR5;
#pragma GCC unroll 12
        for (int r = 0; r < R; r++) {
            const __m512 av = _mm512_set1_ps(ak[r]);
            c0[r] = _mm512_fmadd_ps(av, b0, c0[r]);
            c1[r] = _mm512_fmadd_ps(av, b1, c1[r]);
        }
    }
    tile_end(c0, c1, c, ldc, mr, mk0, mk1, first, last, alpha, bias, R);
}

/* A tile of mr rows: the full 12-row kernel, or (the last rows of a block) one that computes
 * only 8 or 4 rows, so that a thin remainder costs about its share of the arithmetic. */
T512 static void ukr512(int kc, const float *ap, const float *bp, size_t bs, float *c, size_t ldc,
                        int mr, int nr, int first, int last, float alpha, const float *bias,
                        pf_rows *pw, pf_rows *px)
{
    if (mr > 8) {
        ukr512_rows(kc, ap, bp, bs, c, ldc, mr, nr, first, last, alpha, bias, MR5, pw, px);
    } else if (mr > 4) {
        ukr512_rows(kc, ap, bp, bs, c, ldc, mr, nr, first, last, alpha, bias, 8, pw, px);
    } else {
        ukr512_rows(kc, ap, bp, bs, c, ldc, mr, nr, first, last, alpha, bias, 4, pw, px);
    }
}

/* The size of blocks of near-equal size that split len: whole units, at most max (a multiple
 * of unit), as few blocks as that allows. */
static int even_block(int len, int max, int unit)
{
    const int n = (len + max - 1) / max;
    return ((len + n - 1) / n + unit - 1) / unit * unit;
}

/* Many rows, NN form (w is (K, N) f32, read in place: the attention's P V): for each NC5-wide
 * column block and KC5-deep slice, every MR-row block of activations is packed once and run over
 * the column block's micro-panels. */
T512 static void big_nn512(const mm_args *a, int m0, int m1, int n0, int n1, void *scratch)
{
    float *ap = scratch; /* MC5 x KC5, MR5-row micro-panels */
    const int K = a->K;
    const size_t xst = (size_t)a->ldx * sizeof(float);
    const int mcb = even_block(m1 - m0, MC5, MR5), ncb = even_block(n1 - n0, NC5, NR5);
    pf_rows pfw;
    pf_rows_init(&pfw, NULL, 0, 0, 0, 0);
    for (int nc0 = n0; nc0 < n1; nc0 += ncb) {
        const int ncw = NV_MIN(ncb, n1 - nc0);
        for (int k0 = 0; k0 < K; k0 += KC5) {
            const int kc = NV_MIN(KC5, K - k0);
            const int first = k0 == 0, last = k0 + kc == K;
            for (int mc0 = m0; mc0 < m1; mc0 += mcb) {
                const int mcw = NV_MIN(mcb, m1 - mc0);
                for (int i = 0; i * MR5 < mcw; i++) {
                    pack_a512(ap + (size_t)i * KC5 * MR5, a, mc0 + i * MR5,
                              NV_MIN(MR5, mcw - i * MR5), k0, kc);
                }
                /* The activation block packed next: the next rows, else the first rows of the
                 * next k slice (or of the next column block). */
                const int xm = mc0 + mcw < m1 ? mc0 + mcw : m0;
                const int xk = mc0 + mcw < m1 ? k0 : last ? 0 : k0 + kc;
                pf_rows pfx;
                pf_rows_init(&pfx, a->x + (size_t)xm * (size_t)a->ldx + (size_t)xk, xst,
                             sizeof(float), NV_MIN(mcb, m1 - xm), NV_MIN(KC5, K - xk));
                for (int p = 0; p * NR5 < ncw; p++) {
                    const int n = nc0 + p * NR5;
                    const float *b = (const float *)a->w + (size_t)k0 * (size_t)a->ldw + (size_t)n;
                    for (int i = 0; i * MR5 < mcw; i++) {
                        const int m = mc0 + i * MR5;
                        ukr512(kc, ap + (size_t)i * KC5 * MR5, b, (size_t)a->ldw,
                               a->y + (size_t)m * (size_t)a->ldy + (size_t)n, (size_t)a->ldy,
                               NV_MIN(MR5, mcw - i * MR5), NV_MIN(NR5, ncw - p * NR5), first,
                               last, a->alpha, a->bias != NULL ? a->bias + n : NULL, &pfw, &pfx);
                    }
                }
            }
        }
    }
}

/* Many rows, NT form (weights (N, K) bf16/f16/f32, the linear layers): rows m0..m1-1 (at most
 * MC5) against columns n0..n1-1. Per KCJ-deep k slice the activations are packed once; each
 * weight micro-panel (KCJ x 32, widened) is packed just before the tiles that use it, into one
 * of two buffers, while those tiles prefetch the next micro-panel's rows. So no weight block
 * has to stay in L2, and the slices are deep: fewer passes over the partial sums in C. */
T512 INL void big_jit512(const mm_args *a, int m0, int m1, int n0, int n1, void *scratch)
{
    float *ap = scratch;                          /* MC5 x KCJ, MR5-row micro-panels */
    float *bbuf = ap + (size_t)KCJ * MC5;         /* 2 x KCJ x NR5 */
    const int K = a->K, slices = (K + KCJ - 1) / KCJ;
    const size_t wes = a->wt == NV_F32 ? 4u : 2u, wst = (size_t)a->ldw * wes;
    const size_t xst = (size_t)a->ldx * sizeof(float);
    const int mcw = m1 - m0, tiles = (mcw + MR5 - 1) / MR5;
    const int panels = (n1 - n0 + NR5 - 1) / NR5;
    /* Micro-panel j = slice * panels + panel (the order of use) lives in buffer j & 1; the
     * first is packed here, each later one after the tiles of the one before it. */
    pack_b_nt512(bbuf, a, n0, NV_MIN(NR5, n1 - n0), 0, NV_MIN(KCJ, K));
    for (int s = 0; s < slices; s++) {
        const int k0 = s * KCJ, kc = NV_MIN(KCJ, K - k0);
        const int first = s == 0, last = s + 1 == slices;
        for (int i = 0; i < tiles; i++) {
            pack_a512(ap + (size_t)i * KCJ * MR5, a, m0 + i * MR5, NV_MIN(MR5, mcw - i * MR5),
                      k0, kc);
        }
        /* The next slice's activations, over this slice's tiles. */
        pf_rows pfx;
        pf_rows_init(&pfx, a->x + (size_t)m0 * (size_t)a->ldx + (size_t)(k0 + kc), xst,
                     sizeof(float), last ? 0 : mcw, NV_MIN(KCJ, K - k0 - kc));
        for (int p = 0; p < panels; p++) {
            const int j = s * panels + p, n = n0 + p * NR5;
            const float *b = bbuf + (size_t)(j & 1) * KCJ * NR5;
            /* The next micro-panel: the next columns, else the first ones of the next slice. */
            const int nn = p + 1 < panels ? n + NR5 : n0, nk = p + 1 < panels ? k0 : k0 + kc;
            const int nrows = j + 1 < slices * panels ? NV_MIN(NR5, n1 - nn) : 0;
            const int nkc = NV_MIN(KCJ, K - nk);
            const char *wn = (const char *)a->w + ((size_t)nn * (size_t)a->ldw + (size_t)nk) * wes;
            pf_rows pfw;
            pf_rows_init(&pfw, wn, wst, wes, nrows, nkc);
            for (int i = 0; i < tiles; i++) {
                const int m = m0 + i * MR5;
                ukr512(kc, ap + (size_t)i * KCJ * MR5, b, NR5,
                       a->y + (size_t)m * (size_t)a->ldy + (size_t)n, (size_t)a->ldy,
                       NV_MIN(MR5, mcw - i * MR5), NV_MIN(NR5, n1 - n), first, last, a->alpha,
                       a->bias != NULL ? a->bias + n : NULL, &pfw, &pfx);
            }
            if (nrows > 0) {
                pack_b_nt512(bbuf + (size_t)((j + 1) & 1) * KCJ * NR5, a, nn, nrows, nk, nkc);
            }
        }
    }
}

/* Row blocks of at most MC5 rows, each with its own pass over the weights (a prefill of up to
 * MC5 tokens is one block). */
T512 static void big_nt512(const mm_args *a, int m0, int m1, int n0, int n1, void *scratch)
{
    const int mb = even_block(m1 - m0, MC5, MR5);
    for (int m = m0; m < m1; m += mb) {
        big_jit512(a, m, NV_MIN(m + mb, m1), n0, n1, scratch);
    }
}

/* ======================================================================================== */
/* AVX512-BF16: the fast precision (bf16 x bf16 products, f32 sums)                         */
/* ======================================================================================== */

/* vdpbf16ps adds two bf16 x bf16 products per f32 lane: activations are rounded to bf16 (round
 * to nearest even by vcvtne2ps2bf16) and bf16 weights are used as stored, as pairs of adjacent
 * k (one 32-bit lane holds k and k + 1 of a row, so a weight panel is a 32-bit transpose of
 * the checkpoint rows with no widening). An odd K pads its last pair with zero. */
#define TBF __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,avx2,fma,f16c")))
/* k per slice of the bf16 kernel (pairs: KCB / 2), blocked as the f32 NT kernel: row blocks of
 * MC5, weight micro-panels packed just before use into one of two buffers. */
#define KCB 768

_Static_assert(KCB % 32 == 0, "bf16 blocks hold whole 32-k register loads");
_Static_assert((size_t)KCB / 2 * MC5 * 4 + (size_t)KCB / 2 * NR5 * 4 * 2 <= NV_POOL_SCRATCH,
               "bf16 GEMM panels must fit the pool scratch");

/* The first cnt (may be <= 0 or >= 32) lanes of a 32-lane mask. */
INL __mmask32 mask32(int cnt)
{
    return (__mmask32)(cnt >= 32 ? 0xffffffffu : cnt <= 0 ? 0u : (1u << cnt) - 1u);
}

/* 32 floats at p (the first cnt, others 0) as 32 bf16, round to nearest even. */
TBF INL __m512i cvt32_bf16(const float *p, int cnt)
{
    const __m512 lo = _mm512_maskz_loadu_ps(mask16(cnt), p);
    const __m512 hi = _mm512_maskz_loadu_ps(mask16(cnt - 16), p + 16);
    return (__m512i)_mm512_cvtne2ps_pbh(hi, lo);
}

/* Activation panel: rows m..m+mr-1, k0..k0+kc-1 as dst[kp][MR5] bf16 pairs (k0 + 2kp, +1). */
TBF static void pack_a_bf16(uint32_t *dst, const mm_args *a, int m, int mr, int k0, int kc)
{
    const int kcp = (kc + 1) / 2;
    const __mmask16 st = (__mmask16)((1u << MR5) - 1u);
    for (int kb = 0; kb < kc; kb += 32) {
        __m512 r[16];
#pragma GCC unroll 16
        for (int i = 0; i < 16; i++) {
            r[i] = i < mr ? _mm512_castsi512_ps(cvt32_bf16(
                                a->x + (size_t)(m + i) * (size_t)a->ldx + (size_t)(k0 + kb),
                                kc - kb))
                          : _mm512_setzero_ps();
        }
        transpose16(r);
        const int nt = NV_MIN(16, kcp - kb / 2);
        for (int t = 0; t < nt; t++) {
            _mm512_mask_storeu_ps((float *)(dst + (size_t)(kb / 2 + t) * MR5), st, r[t]);
        }
    }
}

/* Weight panel: rows n..n+nr-1 (bf16, (N, K)), k0..k0+kc-1 as dst[kp][NR5] pairs; columns
 * >= nr are zero. */
TBF static void pack_b_bf16(uint32_t *dst, const mm_args *a, int n, int nr, int k0, int kc)
{
    const int kcp = (kc + 1) / 2;
    const uint16_t *w = a->w;
    for (int jb = 0; jb < NR5; jb += 16) {
        for (int kb = 0; kb < kc; kb += 32) {
            const __mmask32 lm = mask32(kc - kb);
            __m512 r[16];
#pragma GCC unroll 16
            for (int j = 0; j < 16; j++) {
                r[j] = jb + j < nr ? _mm512_castsi512_ps(_mm512_maskz_loadu_epi16(
                                         lm, w + (size_t)(n + jb + j) * (size_t)a->ldw +
                                                 (size_t)(k0 + kb)))
                                   : _mm512_setzero_ps();
            }
            transpose16(r);
            const int nt = NV_MIN(16, kcp - kb / 2);
            for (int t = 0; t < nt; t++) {
                _mm512_storeu_ps((float *)(dst + (size_t)(kb / 2 + t) * NR5 + (size_t)jb), r[t]);
            }
        }
    }
}

/* C tile (mr x nr) (+)= Ap . Bp over kcp bf16 pairs: 24 accumulators, 2 weight loads and 12
 * broadcasts per 24 vdpbf16ps (768 multiply-adds); R rows computed as in ukr512_rows.
 * first / last, the slice sums added to C after the loop and the prefetch streams as in
 * ukr512_rows (alpha is 1; a pair is 2 k steps). */
TBF INL void ukr_bf16_rows(int kcp, const uint32_t *ap, const uint32_t *bp, float *c, size_t ldc,
                           int mr, int nr, int first, int last, const float *bias, const int R,
                           pf_rows *pw, pf_rows *px)
{
    const __mmask16 mk0 = mask16(nr), mk1 = mask16(nr - 16);
    __m512 c0[MR5], c1[MR5];
    tile_begin(c0, c1, c, ldc, mr, first, R);
    for (int k = 0; k < kcp; k++) {
        if (k % (PF_K / 2) == 0) {
            pf_rows_one(pw);
            pf_rows_one(px);
        }
        const __m512bh b0 = (__m512bh)_mm512_loadu_si512(bp + (size_t)k * NR5);
        const __m512bh b1 = (__m512bh)_mm512_loadu_si512(bp + (size_t)k * NR5 + 16);
        const uint32_t *ak = ap + (size_t)k * MR5;
#pragma GCC unroll 12
        for (int r = 0; r < R; r++) {
            const __m512bh av = (__m512bh)_mm512_set1_epi32((int)ak[r]);
            c0[r] = _mm512_dpbf16_ps(c0[r], av, b0);
            c1[r] = _mm512_dpbf16_ps(c1[r], av, b1);
        }
    }
    tile_end(c0, c1, c, ldc, mr, mk0, mk1, first, last, 1.0f, bias, R);
}

TBF static void ukr_bf16(int kcp, const uint32_t *ap, const uint32_t *bp, float *c, size_t ldc,
                         int mr, int nr, int first, int last, const float *bias, pf_rows *pw,
                         pf_rows *px)
{
    if (mr > 8) {
        ukr_bf16_rows(kcp, ap, bp, c, ldc, mr, nr, first, last, bias, MR5, pw, px);
    } else if (mr > 4) {
        ukr_bf16_rows(kcp, ap, bp, c, ldc, mr, nr, first, last, bias, 8, pw, px);
    } else {
        ukr_bf16_rows(kcp, ap, bp, c, ldc, mr, nr, first, last, bias, 4, pw, px);
    }
}

/* Rows m0..m1-1 (at most MC5) against columns n0..n1-1, as big_jit512: per KCB-deep slice the
 * activations rounded and packed once, each weight micro-panel packed just before its tiles. */
TBF INL void big_jit_bf16(const mm_args *a, int m0, int m1, int n0, int n1, void *scratch)
{
    uint32_t *ap = scratch;                          /* MC5 x KCB/2 pairs */
    uint32_t *bbuf = ap + (size_t)KCB / 2 * MC5;     /* 2 x KCB/2 x NR5 pairs */
    const int K = a->K, slices = (K + KCB - 1) / KCB;
    const size_t wst = (size_t)a->ldw * 2u, xst = (size_t)a->ldx * sizeof(float);
    const int mcw = m1 - m0, tiles = (mcw + MR5 - 1) / MR5;
    const int panels = (n1 - n0 + NR5 - 1) / NR5;
    /* Micro-panel j = slice * panels + panel lives in buffer j & 1, as in big_jit512. */
    pack_b_bf16(bbuf, a, n0, NV_MIN(NR5, n1 - n0), 0, NV_MIN(KCB, K));
    for (int s = 0; s < slices; s++) {
        const int k0 = s * KCB, kc = NV_MIN(KCB, K - k0), kcp = (kc + 1) / 2;
        const int first = s == 0, last = s + 1 == slices;
        for (int i = 0; i < tiles; i++) {
            pack_a_bf16(ap + (size_t)i * (KCB / 2) * MR5, a, m0 + i * MR5,
                        NV_MIN(MR5, mcw - i * MR5), k0, kc);
        }
        pf_rows pfx;
        pf_rows_init(&pfx, a->x + (size_t)m0 * (size_t)a->ldx + (size_t)(k0 + kc), xst,
                     sizeof(float), last ? 0 : mcw, NV_MIN(KCB, K - k0 - kc));
        for (int p = 0; p < panels; p++) {
            const int j = s * panels + p, n = n0 + p * NR5;
            const uint32_t *b = bbuf + (size_t)(j & 1) * (KCB / 2) * NR5;
            const int nn = p + 1 < panels ? n + NR5 : n0, nk = p + 1 < panels ? k0 : k0 + kc;
            const int nrows = j + 1 < slices * panels ? NV_MIN(NR5, n1 - nn) : 0;
            const int nkc = NV_MIN(KCB, K - nk);
            const char *wn = (const char *)a->w + ((size_t)nn * (size_t)a->ldw + (size_t)nk) * 2u;
            pf_rows pfw;
            pf_rows_init(&pfw, wn, wst, 2u, nrows, nkc);
            for (int i = 0; i < tiles; i++) {
                const int m = m0 + i * MR5;
                ukr_bf16(kcp, ap + (size_t)i * (KCB / 2) * MR5, b,
                         a->y + (size_t)m * (size_t)a->ldy + (size_t)n, (size_t)a->ldy,
                         NV_MIN(MR5, mcw - i * MR5), NV_MIN(NR5, n1 - n), first, last,
                         a->bias != NULL ? a->bias + n : NULL, &pfw, &pfx);
            }
            if (nrows > 0) {
                pack_b_bf16(bbuf + (size_t)((j + 1) & 1) * (KCB / 2) * NR5, a, nn, nrows, nk,
                            nkc);
            }
        }
    }
}

/* Many rows: row blocks of at most MC5 rows, as big_nt512. */
TBF static void big_bf16(const mm_args *a, int m0, int m1, int n0, int n1, void *scratch)
{
    const int mb = even_block(m1 - m0, MC5, MR5);
    for (int m = m0; m < m1; m += mb) {
        big_jit_bf16(a, m, NV_MIN(m + mb, m1), n0, n1, scratch);
    }
}

/* Few rows: xb holds rows of x as bf16 (kp elements apart, zero past K). R weight rows
 * n + j * rs against MR rows of xb from row mi (R * MR <= 4); two accumulators per output
 * (alternating 32-k steps). Per output the arithmetic depends on K only. */
TBF INL void dot_bf16(const mm_args *a, const uint16_t *xb, int kp, int mi, int m, int n, int rs,
                      const int R, const int MR)
{
    __m512 acc0[4], acc1[4];
    const uint16_t *w = a->w;
    size_t row[4];
#pragma GCC unroll 4
    for (int q = 0; q < 4; q++) {
        acc0[q] = _mm512_setzero_ps();
        acc1[q] = _mm512_setzero_ps();
    }
#pragma GCC unroll 4
    for (int j = 0; j < R; j++) {
        row[j] = (size_t)(n + j * rs) * (size_t)a->ldw;
    }
    const int K = a->K;
    int k = 0;
    for (; k + 64 <= K; k += 64) {
        __m512bh x0[4], x1[4];
#pragma GCC unroll 4
        for (int i = 0; i < MR; i++) {
            x0[i] = (__m512bh)_mm512_loadu_si512(xb + (size_t)(mi + i) * (size_t)kp + k);
            x1[i] = (__m512bh)_mm512_loadu_si512(xb + (size_t)(mi + i) * (size_t)kp + k + 32);
        }
#pragma GCC unroll 4
        for (int j = 0; j < R; j++) {
            const __m512bh w0 = (__m512bh)_mm512_loadu_si512(w + row[j] + (size_t)k);
            const __m512bh w1 = (__m512bh)_mm512_loadu_si512(w + row[j] + (size_t)k + 32);
#pragma GCC unroll 4
            for (int i = 0; i < MR; i++) {
                acc0[i * R + j] = _mm512_dpbf16_ps(acc0[i * R + j], x0[i], w0);
                acc1[i * R + j] = _mm512_dpbf16_ps(acc1[i * R + j], x1[i], w1);
            }
        }
    }
    for (; k < K; k += 32) {
        const __mmask32 lm = mask32(K - k);
#pragma GCC unroll 4
        for (int j = 0; j < R; j++) {
            const __m512bh wv = (__m512bh)_mm512_maskz_loadu_epi16(lm, w + row[j] + (size_t)k);
#pragma GCC unroll 4
            for (int i = 0; i < MR; i++) {
                const __m512bh xv = (__m512bh)_mm512_loadu_si512(
                    xb + (size_t)(mi + i) * (size_t)kp + k);
                acc0[i * R + j] = _mm512_dpbf16_ps(acc0[i * R + j], xv, wv);
            }
        }
    }
#pragma GCC unroll 4
    for (int i = 0; i < MR; i++) {
#pragma GCC unroll 4
        for (int j = 0; j < R; j++) {
            const int col = n + j * rs;
            float s = _mm512_reduce_add_ps(_mm512_add_ps(acc0[i * R + j], acc1[i * R + j]));
            a->y[(size_t)(m + i) * (size_t)a->ldy + (size_t)col] =
                a->bias != NULL ? s + a->bias[col] : s;
        }
    }
}

/* Rows of x padded to whole 32-element loads, in elements. */
static int bf16_row_elems(int K)
{
    return (K + 31) & ~31;
}

TBF static void small_bf16(const mm_args *a, int m0, int m1, int n0, int n1, void *scratch)
{
    const int kp = bf16_row_elems(a->K);
    uint16_t *xb = scratch;
    for (int i = 0; i < m1 - m0; i++) {
        const float *x = a->x + (size_t)(m0 + i) * (size_t)a->ldx;
        for (int k = 0; k < kp; k += 32) {
            _mm512_storeu_si512(xb + (size_t)i * (size_t)kp + k, cvt32_bf16(x + k, a->K - k));
        }
    }
    if (m1 - m0 == 1) {
        /* One row of x (decode): 4 weight streams far apart, as small_m512. */
        const int q = (n1 - n0) / 4;
        for (int i = 0; i < q; i++) {
            dot_bf16(a, xb, kp, 0, m0, n0 + i, q, 4, 1);
        }
        for (int n = n0 + 4 * q; n < n1; n++) {
            dot_bf16(a, xb, kp, 0, m0, n, 1, 1, 1);
        }
        return;
    }
    for (int n = n0; n < n1; n++) {
        for (int m = m0; m < m1; m += 4) {
            switch (NV_MIN(4, m1 - m)) {
            case 4: dot_bf16(a, xb, kp, m - m0, m, n, 1, 1, 4); break;
            case 3: dot_bf16(a, xb, kp, m - m0, m, n, 1, 1, 3); break;
            case 2: dot_bf16(a, xb, kp, m - m0, m, n, 1, 1, 2); break;
            default: dot_bf16(a, xb, kp, m - m0, m, n, 1, 1, 1); break;
            }
        }
    }
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

/* MR rows of x against R weight rows n + j * rs (see dot_tile512 for rs > 1). */
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
        size_t rows = (size_t)NV_MIN(MC5, ((M + MR5 - 1) / MR5) * MR5);
        return (size_t)KC5 * rows * sizeof(float);
    }
    return NV_POOL_SCRATCH;
}

size_t mm_x86_bf16_scratch(mm_form form, int M, int K)
{
    if (form == MM_FORM_SMALL) {
        return (size_t)M * (size_t)bf16_row_elems(K) * sizeof(uint16_t);
    }
    return (size_t)KCB / 2 * (MC5 + 2 * NR5) * sizeof(uint32_t);
}

int mm_x86_block_n(mm_simd path)
{
    return path == MM_AVX512 ? MM_JIT_N : MM_BLOCK_N;
}

mm_kernel mm_x86_bf16_kernel(mm_form form)
{
    return form == MM_FORM_SMALL ? small_bf16 : form == MM_FORM_BIG ? big_bf16 : NULL;
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

int mm_x86_block_n(mm_simd path)
{
    (void)path;
    return MM_BLOCK_N;
}

size_t mm_x86_bf16_scratch(mm_form form, int M, int K)
{
    (void)form;
    (void)M;
    (void)K;
    return 0;
}

mm_kernel mm_x86_bf16_kernel(mm_form form)
{
    (void)form;
    return NULL;
}

#endif
