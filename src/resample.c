/*
 * resample.c - Pillow's 8-bit bicubic resize, bit for bit (Pillow src/libImaging/Resample.c,
 * spec NVLM-D.md 3.4): double-precision kernel weights per output index, normalized, rounded to
 * 22-bit fixed point; horizontal pass into an 8-bit intermediate, then vertical.
 * Input and output: packed RGB u8 with byte strides. The integer sums are exact, so any
 * evaluation order (the AVX2 paths below) gives the same bytes.
 */
#include "image.h"

#include <math.h>
#include <string.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define RS_X86 1
#include <immintrin.h>
#endif

#define PRECISION_BITS 22

/* Coefficients of one axis: output o reads count[o] inputs from first[o], weights at
 * coef + off[o] (packed, so a very large downscale does not need out * ksize entries). */
typedef struct rs_axis {
    int32_t *first;
    int32_t *count;
    size_t *off;
    int32_t *coef;
} rs_axis;

static double bicubic(double x)
{
    const double a = -0.5;
    if (x < 0.0) {
        x = -x;
    }
    if (x < 1.0) {
        return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
    }
    if (x < 2.0) {
        return (((x - 5) * x + 8) * x - 4) * a;
    }
    return 0.0;
}

static void axis_free(nvlm_context *ctx, rs_axis *ax)
{
    nv_free(ctx, ax->first);
    nv_free(ctx, ax->count);
    nv_free(ctx, ax->off);
    nv_free(ctx, ax->coef);
    memset(ax, 0, sizeof *ax);
}

/* Pillow's precompute_coeffs + normalize_coeffs_8bpc for in -> out (box 0..in). */
static nvlm_status axis_init(nvlm_context *ctx, int32_t in, int32_t out, rs_axis *ax)
{
    memset(ax, 0, sizeof *ax);
    /* Pillow: (double)(in1 - in0) / outSize with float box edges; exact for in < 2^24, and
     * IMG_MAX_SIDE keeps in below that. */
    double scale = (double)(float)in / out;
    double filterscale = scale < 1.0 ? 1.0 : scale;
    double support = 2.0 * filterscale;
    int32_t ksize = (int32_t)ceil(support) * 2 + 1;
    double ss = 1.0 / filterscale;

    ax->first = nv_alloc_array(ctx, (size_t)out, sizeof(int32_t));
    ax->count = nv_alloc_array(ctx, (size_t)out, sizeof(int32_t));
    ax->off = nv_alloc_array(ctx, (size_t)out + 1, sizeof(size_t));
    double *w = nv_alloc_array(ctx, (size_t)ksize, sizeof(double));
    if (ax->first == NULL || ax->count == NULL || ax->off == NULL || w == NULL) {
        nv_free(ctx, w);
        axis_free(ctx, ax);
        return NVLM_ERR_OUT_OF_MEMORY;
    }
    /* First the bounds, to size the packed table. */
    size_t total = 0;
    for (int32_t o = 0; o < out; o++) {
        double center = (o + 0.5) * scale;
        int32_t xmin = (int32_t)(center - support + 0.5);
        if (xmin < 0) {
            xmin = 0;
        }
        int32_t xmax = (int32_t)(center + support + 0.5);
        if (xmax > in) {
            xmax = in;
        }
        if (xmax - xmin > ksize) {
            xmax = xmin + ksize; /* cannot happen; keeps the table in bounds regardless */
        }
        ax->first[o] = xmin;
        ax->count[o] = xmax > xmin ? xmax - xmin : 0;
        ax->off[o] = total;
        total += (size_t)ax->count[o];
    }
    ax->off[out] = total;
    ax->coef = nv_alloc_array(ctx, total + 1, sizeof(int32_t));
    if (ax->coef == NULL) {
        nv_free(ctx, w);
        axis_free(ctx, ax);
        return NVLM_ERR_OUT_OF_MEMORY;
    }
    for (int32_t o = 0; o < out; o++) {
        double center = (o + 0.5) * scale;
        int32_t xmin = ax->first[o];
        int32_t n = ax->count[o];
        double ww = 0.0;
        for (int32_t x = 0; x < n; x++) {
            w[x] = bicubic((x + xmin - center + 0.5) * ss);
            ww += w[x];
        }
        int32_t *k = ax->coef + ax->off[o];
        for (int32_t x = 0; x < n; x++) {
            double v = ww != 0.0 ? w[x] / ww : w[x];
            k[x] = v < 0 ? (int32_t)(-0.5 + v * (1 << PRECISION_BITS))
                         : (int32_t)(0.5 + v * (1 << PRECISION_BITS));
        }
    }
    nv_free(ctx, w);
    return NVLM_OK;
}

static inline uint8_t clip8(int32_t acc)
{
    int32_t v = acc >> PRECISION_BITS;
    return (uint8_t)(v < 0 ? 0 : (v > 255 ? 255 : v));
}

/* ---- horizontal pass: rows [y0, y0 + nrows) of src -> rows 0.. of dst ---------------------- */

static void horiz_scalar(const rs_axis *ax, const uint8_t *src, size_t sstride, int32_t y0,
                         int32_t nrows, uint8_t *dst, size_t dstride, int32_t dw)
{
    for (int32_t y = 0; y < nrows; y++) {
        const uint8_t *row = src + (size_t)(y0 + y) * sstride;
        uint8_t *out = dst + (size_t)y * dstride;
        for (int32_t o = 0; o < dw; o++) {
            const uint8_t *p = row + (size_t)ax->first[o] * 3;
            const int32_t *k = ax->coef + ax->off[o];
            int32_t n = ax->count[o];
            int32_t s0 = 1 << (PRECISION_BITS - 1);
            int32_t s1 = s0;
            int32_t s2 = s0;
            for (int32_t t = 0; t < n; t++) {
                s0 += p[3 * t + 0] * k[t];
                s1 += p[3 * t + 1] * k[t];
                s2 += p[3 * t + 2] * k[t];
            }
            out[3 * o + 0] = clip8(s0);
            out[3 * o + 1] = clip8(s1);
            out[3 * o + 2] = clip8(s2);
        }
    }
}


#ifdef RS_X86
/* AVX2 horizontal pass. Each 22-bit coefficient is split as k = hi * 4096 + lo with
 * 0 <= lo < 4096, so both halves fit int16 and vpmaddwd sums pixel pairs exactly:
 * sum(p * k) = 4096 * sum(p * hi) + sum(p * lo) in wrapping int32, the very sum Pillow forms.
 * One 256-bit step covers 4 taps of one output pixel: pixels t, t+1 in the low lane and t+2,
 * t+3 in the high lane, as int16 pairs (r r g g b b 0 0). Valid while count <= 2048. */
#define RS_SIMD_MAX_TAPS 2048

typedef struct rs_simd {
    __m256i *lo;        /* per output: ceil(count / 4) vectors of lo pairs */
    __m256i *hi;
    size_t *grp;        /* per output: first group index */
} rs_simd;

static void simd_free(nvlm_context *ctx, rs_simd *sv)
{
    nv_free(ctx, sv->lo);
    nv_free(ctx, sv->hi);
    nv_free(ctx, sv->grp);
    memset(sv, 0, sizeof *sv);
}

static bool simd_init(nvlm_context *ctx, const rs_axis *ax, int32_t out, rs_simd *sv)
{
    memset(sv, 0, sizeof *sv);
    size_t groups = 0;
    sv->grp = nv_alloc_array(ctx, (size_t)out + 1, sizeof(size_t));
    if (sv->grp == NULL) {
        return false;
    }
    for (int32_t o = 0; o < out; o++) {
        sv->grp[o] = groups;
        groups += ((size_t)ax->count[o] + 3) / 4;
    }
    sv->grp[out] = groups;
    /* nv_malloc memory is 16-byte aligned at least; vectors are read with loadu. */
    sv->lo = nv_alloc_array(ctx, groups + 1, sizeof(__m256i));
    sv->hi = nv_alloc_array(ctx, groups + 1, sizeof(__m256i));
    if (sv->lo == NULL || sv->hi == NULL) {
        simd_free(ctx, sv);
        return false;
    }
    for (int32_t o = 0; o < out; o++) {
        const int32_t *k = ax->coef + ax->off[o];
        int32_t n = ax->count[o];
        for (size_t g = 0; g < sv->grp[o + 1] - sv->grp[o]; g++) {
            int32_t lo[8];
            int32_t hi[8];
            for (int half = 0; half < 2; half++) {
                int32_t t = (int32_t)(4 * g) + 2 * half;
                int32_t k0 = t < n ? k[t] : 0;
                int32_t k1 = t + 1 < n ? k[t + 1] : 0;
                /* Arithmetic shift by division of the exact multiple (no implementation-defined
                 * shift of a negative value). */
                int32_t l0 = k0 & 0xfff;
                int32_t l1 = k1 & 0xfff;
                int32_t h0 = (k0 - l0) / 4096;
                int32_t h1 = (k1 - l1) / 4096;
                uint32_t plo = (uint32_t)(uint16_t)l0 | (uint32_t)(uint16_t)l1 << 16;
                uint32_t phi = (uint32_t)(uint16_t)(int16_t)h0 | (uint32_t)(uint16_t)(int16_t)h1
                                                                      << 16;
                for (int c = 0; c < 4; c++) {
                    lo[4 * half + c] = (int32_t)plo;
                    hi[4 * half + c] = (int32_t)phi;
                }
            }
            memcpy(&sv->lo[sv->grp[o] + g], lo, sizeof lo);
            memcpy(&sv->hi[sv->grp[o] + g], hi, sizeof hi);
        }
    }
    return true;
}

__attribute__((target("avx2"))) static void horiz_avx2(const rs_axis *ax, const rs_simd *sv,
                                                       const uint8_t *src, size_t sstride,
                                                       int32_t sw, int32_t y0, int32_t nrows,
                                                       uint8_t *dst, size_t dstride, int32_t dw,
                                                       uint8_t *pad)
{
    const __m256i mask = _mm256_setr_epi8(0, -1, 3, -1, 1, -1, 4, -1, 2, -1, 5, -1, -1, -1, -1,
                                          -1, 6, -1, 9, -1, 7, -1, 10, -1, 8, -1, 11, -1, -1, -1,
                                          -1, -1);
    const __m128i round = _mm_set1_epi32(1 << (PRECISION_BITS - 1));
    for (int32_t y = 0; y < nrows; y++) {
        /* A private copy of the row with zeroed slack: 16-byte loads may pass its end. */
        memcpy(pad, src + (size_t)(y0 + y) * sstride, (size_t)sw * 3);
        uint8_t *out = dst + (size_t)y * dstride;
        for (int32_t o = 0; o < dw; o++) {
            const uint8_t *p = pad + (size_t)ax->first[o] * 3;
            size_t g0 = sv->grp[o];
            size_t g1 = sv->grp[o + 1];
            __m256i alo = _mm256_setzero_si256();
            __m256i ahi = _mm256_setzero_si256();
            for (size_t g = g0; g < g1; g++, p += 12) {
                __m256i v = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)p));
                __m256i px = _mm256_shuffle_epi8(v, mask);
                alo = _mm256_add_epi32(alo, _mm256_madd_epi16(px, _mm256_loadu_si256(&sv->lo[g])));
                ahi = _mm256_add_epi32(ahi, _mm256_madd_epi16(px, _mm256_loadu_si256(&sv->hi[g])));
            }
            __m256i acc = _mm256_add_epi32(_mm256_slli_epi32(ahi, 12), alo);
            __m128i s = _mm_add_epi32(_mm256_castsi256_si128(acc),
                                      _mm256_extracti128_si256(acc, 1));
            s = _mm_srai_epi32(_mm_add_epi32(s, round), PRECISION_BITS);
            s = _mm_packus_epi16(_mm_packs_epi32(s, s), s);
            uint32_t rgbx = (uint32_t)_mm_cvtsi128_si32(s);
            memcpy(out + 3 * (size_t)o, &rgbx, 3);
        }
    }
}

/* Uses the AVX2 pass when the CPU has it and the taps allow; false: caller goes scalar. */
static bool horiz_fast(nvlm_context *ctx, const rs_axis *ax, const uint8_t *src, size_t sstride,
                       int32_t sw, int32_t y0, int32_t nrows, uint8_t *dst, size_t dstride,
                       int32_t dw)
{
    if (!__builtin_cpu_supports("avx2")) {
        return false;
    }
    for (int32_t o = 0; o < dw; o++) {
        if (ax->count[o] > RS_SIMD_MAX_TAPS) {
            return false;
        }
    }
    rs_simd sv;
    if (!simd_init(ctx, ax, dw, &sv)) {
        return false;
    }
    uint8_t *pad = nv_calloc(ctx, (size_t)sw * 3 + 64, 1);
    if (pad == NULL) {
        simd_free(ctx, &sv);
        return false;
    }
    horiz_avx2(ax, &sv, src, sstride, sw, y0, nrows, dst, dstride, dw, pad);
    nv_free(ctx, pad);
    simd_free(ctx, &sv);
    return true;
}
#endif

static void horiz(nvlm_context *ctx, bool simd, const rs_axis *ax, const uint8_t *src,
                  size_t sstride, int32_t sw, int32_t y0, int32_t nrows, uint8_t *dst,
                  size_t dstride, int32_t dw)
{
#ifdef RS_X86
    if (simd && horiz_fast(ctx, ax, src, sstride, sw, y0, nrows, dst, dstride, dw)) {
        return;
    }
#endif
    horiz_scalar(ax, src, sstride, y0, nrows, dst, dstride, dw);
}

/* ---- vertical pass: every output row is a weighted sum of count input rows -------------------- */

static void vert_scalar(const rs_axis *ax, const uint8_t *src, size_t sstride, int32_t ybase,
                        uint8_t *dst, size_t dstride, int32_t dh, int32_t width, int32_t *acc)
{
    size_t n = (size_t)width * 3;
    for (int32_t o = 0; o < dh; o++) {
        const int32_t *k = ax->coef + ax->off[o];
        const uint8_t *rows = src + (size_t)(ax->first[o] - ybase) * sstride;
        for (size_t i = 0; i < n; i++) {
            acc[i] = 1 << (PRECISION_BITS - 1);
        }
        for (int32_t t = 0; t < ax->count[o]; t++) {
            const uint8_t *r = rows + (size_t)t * sstride;
            int32_t kt = k[t];
            for (size_t i = 0; i < n; i++) {
                acc[i] += r[i] * kt;
            }
        }
        uint8_t *out = dst + (size_t)o * dstride;
        for (size_t i = 0; i < n; i++) {
            out[i] = clip8(acc[i]);
        }
    }
}


#ifdef RS_X86
/* AVX2 vertical pass: 16 bytes of a row at a time, all taps in registers (exact int32 sums). */
__attribute__((target("avx2"))) static void vert_avx2(const rs_axis *ax, const uint8_t *src,
                                                      size_t sstride, int32_t ybase,
                                                      uint8_t *dst, size_t dstride, int32_t dh,
                                                      int32_t width)
{
    size_t n = (size_t)width * 3;
    const __m256i round = _mm256_set1_epi32(1 << (PRECISION_BITS - 1));
    for (int32_t o = 0; o < dh; o++) {
        const int32_t *k = ax->coef + ax->off[o];
        const uint8_t *rows = src + (size_t)(ax->first[o] - ybase) * sstride;
        int32_t taps = ax->count[o];
        uint8_t *out = dst + (size_t)o * dstride;
        size_t i = 0;
        for (; i + 16 <= n; i += 16) {
            __m256i a0 = round;
            __m256i a1 = round;
            for (int32_t t = 0; t < taps; t++) {
                const uint8_t *r = rows + (size_t)t * sstride + i;
                __m256i kv = _mm256_set1_epi32(k[t]);
                __m256i p0 = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)r));
                __m256i p1 = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(r + 8)));
                a0 = _mm256_add_epi32(a0, _mm256_mullo_epi32(p0, kv));
                a1 = _mm256_add_epi32(a1, _mm256_mullo_epi32(p1, kv));
            }
            a0 = _mm256_srai_epi32(a0, PRECISION_BITS);
            a1 = _mm256_srai_epi32(a1, PRECISION_BITS);
            __m256i w = _mm256_permute4x64_epi64(_mm256_packs_epi32(a0, a1), 0xD8);
            __m128i b = _mm_packus_epi16(_mm256_castsi256_si128(w), _mm256_extracti128_si256(w, 1));
            _mm_storeu_si128((__m128i *)(out + i), b);
        }
        for (; i < n; i++) {
            int32_t acc = 1 << (PRECISION_BITS - 1);
            for (int32_t t = 0; t < taps; t++) {
                acc += rows[(size_t)t * sstride + i] * k[t];
            }
            out[i] = clip8(acc);
        }
    }
}
#endif

static void vert(bool simd, const rs_axis *ax, const uint8_t *src, size_t sstride,
                 int32_t ybase, uint8_t *dst, size_t dstride, int32_t dh, int32_t width,
                 int32_t *acc)
{
#ifdef RS_X86
    if (simd && __builtin_cpu_supports("avx2")) {
        vert_avx2(ax, src, sstride, ybase, dst, dstride, dh, width);
        return;
    }
#endif
    vert_scalar(ax, src, sstride, ybase, dst, dstride, dh, width, acc);
}

nvlm_status img_resize_ex(nvlm_context *ctx, void *err_handle, const uint8_t *src, int32_t sw,
                          int32_t sh, size_t sstride, uint8_t *dst, int32_t dw, int32_t dh,
                          size_t dstride, bool simd)
{
    if (sw == dw && sh == dh) {
        for (int32_t y = 0; y < sh; y++) {
            memcpy(dst + (size_t)y * dstride, src + (size_t)y * sstride, (size_t)sw * 3);
        }
        return NVLM_OK;
    }
    bool need_h = sw != dw;
    bool need_v = sh != dh;
    rs_axis ah;
    rs_axis av;
    memset(&ah, 0, sizeof ah);
    memset(&av, 0, sizeof av);
    uint8_t *tmp = NULL;
    int32_t *acc = NULL;
    nvlm_status st = NVLM_OK;
    if (need_h && axis_init(ctx, sw, dw, &ah) != NVLM_OK) {
        st = NVLM_ERR_OUT_OF_MEMORY;
        goto done;
    }
    if (need_v && axis_init(ctx, sh, dh, &av) != NVLM_OK) {
        st = NVLM_ERR_OUT_OF_MEMORY;
        goto done;
    }
    if (!need_v) {
        horiz(ctx, simd, &ah, src, sstride, sw, 0, sh, dst, dstride, dw);
        goto done;
    }
    acc = nv_alloc_array(ctx, (size_t)dw * 3, sizeof(int32_t));
    if (acc == NULL) {
        st = NVLM_ERR_OUT_OF_MEMORY;
        goto done;
    }
    if (!need_h) {
        vert(simd, &av, src, sstride, 0, dst, dstride, dh, dw, acc);
        goto done;
    }
    /* As Pillow: only the source rows the vertical pass reads go through the horizontal one. */
    int32_t y_first = av.first[0];
    int32_t y_last = av.first[dh - 1] + av.count[dh - 1];
    int32_t nrows = y_last - y_first;
    size_t tstride = (size_t)dw * 3;
    tmp = nv_alloc_array(ctx, (size_t)(nrows > 0 ? nrows : 1), tstride);
    if (tmp == NULL) {
        st = NVLM_ERR_OUT_OF_MEMORY;
        goto done;
    }
    horiz(ctx, simd, &ah, src, sstride, sw, y_first, nrows, tmp, tstride, dw);
    vert(simd, &av, tmp, tstride, y_first, dst, dstride, dh, dw, acc);
done:
    nv_free(ctx, tmp);
    nv_free(ctx, acc);
    axis_free(ctx, &ah);
    axis_free(ctx, &av);
    if (st != NVLM_OK) {
        return nv_error(err_handle, st, "out of memory resizing %dx%d to %dx%d", sw, sh, dw, dh);
    }
    return NVLM_OK;
}

nvlm_status img_resize(nvlm_context *ctx, void *err_handle, const uint8_t *src, int32_t sw,
                       int32_t sh, size_t sstride, uint8_t *dst, int32_t dw, int32_t dh,
                       size_t dstride)
{
    return img_resize_ex(ctx, err_handle, src, sw, sh, sstride, dst, dw, dh, dstride, true);
}
