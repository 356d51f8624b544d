/*
 * backend_cpu.c - the reference backend: every op of backend.h on the host in f32.
 * GEMMs go through cpu_matmul / cpu_gemm_* (kernels.h); softmax, GELU, SiLU and the norms' sums
 * use the vector math of vecmath.h (AVX-512 / AVX2 / portable, picked at exec creation); RoPE
 * and data movement are plain C11 here. Ops are split over the session's thread pool by rows
 * when they are large enough; every row is computed the same way whatever the thread count,
 * so results are deterministic.
 * Weights: matrices stay in place in the mapped checkpoint (bf16/f16/f32); 1-D vectors are
 * converted to f32 copies.
 */
#include "backend.h"
#include "cpu/kernels.h"
#include "cpu/vecmath.h"

#include <math.h>
#include <stdatomic.h>
#include <string.h>

/* Below this many elements an elementwise op runs on the calling thread. */
#define PAR_MIN_WORK 32768
/* Queries per attention task (prefill). */
#define ATTN_QBLK 64
/* Below this many queries per task (decode, short turns) attention is computed as dot products
 * and axpys over the cache rows instead of two GEMMs (whose register tiles would be mostly
 * empty at one row). */
#define ATTN_DIRECT_Q 8

typedef struct cpu_exec {
    nv_pool *pool;
    int n_threads;
    const vm_ops *vm;   /* vector math of the detected SIMD path */
    float **scr;        /* per-thread attention scratch */
    size_t *scr_cap;    /* floats */
    /* cos/sin table of the last rope call (rows x half, interleaved c, s): the decoder applies
     * the same positions to q and k of every layer, so it is computed once per forward. */
    float *rope_cs;
    size_t rope_cap;    /* floats */
    int64_t rope_pos0;
    int rope_rows, rope_half;
    double rope_theta;
    /* The fast precision's bf16-rounded activations where cpu_matmul_bf16 declines. */
    float *xr;
    size_t xr_cap;      /* floats */
} cpu_exec;

static nvlm_context *ctx_of(nv_exec *ex)
{
    return ex->be->ctx;
}

static cpu_exec *ce_of(nv_exec *ex)
{
    return ex->impl;
}

/* ---- weights ---------------------------------------------------------------------------- */

static nvlm_status cpu_weight_load(nv_backend *be, const nv_tensor *src, const nv_tp_cut *cut,
                                   nv_bweight *out, void *err_handle)
{
    (void)cut;
    memset(out, 0, sizeof *out);
    out->t = *src;
    out->t.device = -1;
    if (src->dtype == NV_F8_E4M3) {
        /* codes and scales used in place: their owner (the engine) outlives the backend */
        if (src->ndim != 2 || src->scale == NULL) {
            return nv_error(err_handle, NVLM_ERR_SHAPE, "an FP8 weight must be a 2-D matrix "
                            "with per-row scales");
        }
        return NVLM_OK;
    }
    int big_dims = 0;
    for (int d = 0; d < src->ndim; d++) {
        big_dims += src->shape[d] > 1;
    }
    if (big_dims > 1 || src->dtype == NV_F32) {
        return NVLM_OK; /* used in place */
    }
    if (src->dtype != NV_BF16 && src->dtype != NV_F16) {
        return nv_error(err_handle, NVLM_ERR_SHAPE, "weight dtype %s is not bf16/f16/f32",
                        nv_dtype_name(src->dtype));
    }
    int64_t n = nv_tensor_nelem(src);
    float *f = nv_alloc_array(be->ctx, (size_t)n, sizeof(float));
    if (f == NULL) {
        return nv_error(err_handle, NVLM_ERR_OUT_OF_MEMORY, "out of memory for a weight vector");
    }
    nv_to_f32(f, src->data, src->dtype, (size_t)n);
    out->t.data = f;
    out->t.dtype = NV_F32;
    out->owned = 1;
    return NVLM_OK;
}

static void cpu_weight_free(nv_backend *be, nv_bweight *w)
{
    if (w->owned) {
        nv_free(be->ctx, w->t.data);
    }
    memset(w, 0, sizeof *w);
}

static void cpu_destroy(nv_backend *be)
{
    if (be != NULL) {
        nv_free(be->ctx, be);
    }
}

/* ---- exec ------------------------------------------------------------------------------- */

static void cpu_exec_free(nv_exec *ex)
{
    if (ex == NULL) {
        return;
    }
    nvlm_context *ctx = ctx_of(ex);
    cpu_exec *ce = ex->impl;
    if (ce != NULL) {
        nv_pool_free(ce->pool);
        if (ce->scr != NULL) {
            for (int i = 0; i < ce->n_threads; i++) {
                nv_free(ctx, ce->scr[i]);
            }
        }
        nv_free(ctx, ce->scr);
        nv_free(ctx, ce->scr_cap);
        nv_free(ctx, ce->rope_cs);
        nv_free(ctx, ce->xr);
        nv_free(ctx, ce);
    }
    nv_free(ctx, ex);
}

static nvlm_status cpu_exec_create(nv_backend *be, int n_threads, void *err_handle,
                                   nv_exec **out)
{
    *out = NULL;
    if (n_threads < 1) {
        n_threads = 1;
    }
    nv_exec *ex = nv_calloc(be->ctx, 1, sizeof *ex);
    cpu_exec *ce = nv_calloc(be->ctx, 1, sizeof *ce);
    if (ex == NULL || ce == NULL) {
        nv_free(be->ctx, ex);
        nv_free(be->ctx, ce);
        return nv_error(err_handle, NVLM_ERR_OUT_OF_MEMORY, "out of memory for an exec");
    }
    ex->be = be;
    ex->err_handle = err_handle;
    ex->impl = ce;
    ce->n_threads = n_threads;
    ce->vm = vm_ops_best();
    ce->scr = nv_calloc(be->ctx, (size_t)n_threads, sizeof *ce->scr);
    ce->scr_cap = nv_calloc(be->ctx, (size_t)n_threads, sizeof *ce->scr_cap);
    if (ce->scr == NULL || ce->scr_cap == NULL) {
        cpu_exec_free(ex);
        return nv_error(err_handle, NVLM_ERR_OUT_OF_MEMORY, "out of memory for an exec");
    }
    if (n_threads > 1) {
        nvlm_status st = nv_pool_create(be->ctx, n_threads, &ce->pool);
        if (st != NVLM_OK) {
            cpu_exec_free(ex);
            return nv_error(err_handle, st, "cannot start %d worker threads", n_threads);
        }
    }
    *out = ex;
    return NVLM_OK;
}

/* ---- memory ----------------------------------------------------------------------------- */

static nvlm_status cpu_alloc(nv_exec *ex, size_t bytes, void **out)
{
    *out = nv_malloc(ctx_of(ex), bytes == 0 ? 1 : bytes);
    if (*out == NULL) {
        return nv_error(ex->err_handle, NVLM_ERR_OUT_OF_MEMORY,
                        "out of memory (%zu bytes of activations)", bytes);
    }
    return NVLM_OK;
}

static nvlm_status cpu_alloc_kv(nv_exec *ex, int64_t rows, int kv_heads, int head_dim,
                                nv_dtype dtype, void **out)
{
    size_t bytes;
    if (!nv_kv_bytes(rows, kv_heads, head_dim, dtype, &bytes)) {
        return nv_error(ex->err_handle, NVLM_ERR_LIMIT, "KV cache size overflows");
    }
    return cpu_alloc(ex, bytes, out);
}

static void cpu_free(nv_exec *ex, void *ptr)
{
    nv_free(ctx_of(ex), ptr);
}

static nvlm_status cpu_memcpy(nv_exec *ex, void *dst, const void *src, size_t bytes)
{
    (void)ex;
    if (bytes > 0) {
        memmove(dst, src, bytes);
    }
    return NVLM_OK;
}

static nvlm_status cpu_copy_2d(nv_exec *ex, void *dst, size_t dpitch, const void *src,
                               size_t spitch, size_t width, size_t rows)
{
    (void)ex;
    for (size_t r = 0; r < rows; r++) {
        memmove((char *)dst + r * dpitch, (const char *)src + r * spitch, width);
    }
    return NVLM_OK;
}

static nvlm_status cpu_zero(nv_exec *ex, void *dst, size_t bytes)
{
    (void)ex;
    memset(dst, 0, bytes);
    return NVLM_OK;
}

static nvlm_status cpu_sync(nv_exec *ex)
{
    (void)ex;
    return NVLM_OK;
}

/* ---- row-parallel helper ---------------------------------------------------------------- */

typedef struct rows_job rows_job;
struct rows_job {
    void (*fn)(const rows_job *j, int r0, int r1);
    const vm_ops *vm;
    int rows;
    float *y;
    const float *x;
    const float *x2;
    const void *w;
    nv_dtype wt;
    const float *b;
    int ldy, ldx, cols, stat_cols, b_rows;
    float eps;
    int64_t pos0;
    int n_heads, head_dim;
    const float *inv_freq;
};

static void rows_worker(void *arg, int i, int n)
{
    const rows_job *j = arg;
    int r0 = (int)((int64_t)j->rows * i / n);
    int r1 = (int)((int64_t)j->rows * (i + 1) / n);
    if (r0 < r1) {
        j->fn(j, r0, r1);
    }
}

static void run_rows(nv_exec *ex, rows_job *j, size_t work)
{
    cpu_exec *ce = ce_of(ex);
    j->vm = ce->vm;
    if (ce->pool == NULL || work < PAR_MIN_WORK || j->rows < 2) {
        j->fn(j, 0, j->rows);
    } else {
        nv_pool_run(ce->pool, rows_worker, j);
    }
}

static inline float wget(const void *w, nv_dtype t, size_t i)
{
    if (t == NV_F32) {
        return ((const float *)w)[i];
    }
    if (t == NV_BF16) {
        return nv_bf16_to_f32(((const uint16_t *)w)[i]);
    }
    return nv_f16_to_f32(((const uint16_t *)w)[i]);
}

/* ---- norms ------------------------------------------------------------------------------ */

static void rmsnorm_rows(const rows_job *j, int r0, int r1)
{
    const float *w = j->w;
    for (int r = r0; r < r1; r++) {
        const float *x = j->x + (size_t)r * j->ldx;
        float *y = j->y + (size_t)r * j->ldy;
        double ss = j->vm->sumsq(x, (size_t)j->stat_cols);
        float var = (float)(ss / j->stat_cols);
        float inv = 1.0f / sqrtf(var + j->eps);
        j->vm->rms_apply(y, x, w, inv, (size_t)j->cols);
    }
}

static nvlm_status cpu_rmsnorm(nv_exec *ex, float *y, int ldy, const float *x, int ldx,
                               const nv_bweight *w, int rows, int cols, int stat_cols, float eps)
{
    rows_job j = {.fn = rmsnorm_rows, .rows = rows, .y = y, .ldy = ldy, .x = x, .ldx = ldx,
                  .w = w->t.data, .cols = cols, .stat_cols = stat_cols, .eps = eps};
    run_rows(ex, &j, (size_t)rows * cols);
    return NVLM_OK;
}

static void sumsq_rows(const rows_job *j, int r0, int r1)
{
    for (int r = r0; r < r1; r++) {
        j->y[r] = j->cols > 0 ? (float)j->vm->sumsq(j->x + (size_t)r * j->ldx, (size_t)j->cols)
                              : 0.0f;
    }
}

static nvlm_status cpu_rows_sumsq(nv_exec *ex, float *out, const float *x, int ld, int rows,
                                  int cols)
{
    rows_job j = {.fn = sumsq_rows, .rows = rows, .y = out, .x = x, .ldx = ld, .cols = cols};
    run_rows(ex, &j, (size_t)rows * (size_t)NV_MAX(cols, 1));
    return NVLM_OK;
}

/* As rmsnorm_rows with the sum of squares given (x2) over `stat_cols` channels. */
static void rmsnorm_scale_rows(const rows_job *j, int r0, int r1)
{
    for (int r = r0; r < r1; r++) {
        float var = (float)((double)j->x2[r] / j->stat_cols);
        float inv = 1.0f / sqrtf(var + j->eps);
        j->vm->rms_apply(j->y + (size_t)r * j->ldy, j->x + (size_t)r * j->ldx, j->w, inv,
                         (size_t)j->cols);
    }
}

static nvlm_status cpu_rmsnorm_scale(nv_exec *ex, float *y, int ldy, const float *x, int ldx,
                                     const nv_bweight *w, int rows, int cols, const float *sumsq,
                                     int n, float eps)
{
    rows_job j = {.fn = rmsnorm_scale_rows, .rows = rows, .y = y, .ldy = ldy, .x = x,
                  .ldx = ldx, .x2 = sumsq, .w = w->t.data, .cols = cols, .stat_cols = n,
                  .eps = eps};
    run_rows(ex, &j, (size_t)rows * cols);
    return NVLM_OK;
}

static void layernorm_rows(const rows_job *j, int r0, int r1)
{
    const float *w = j->w;
    for (int r = r0; r < r1; r++) {
        const float *x = j->x + (size_t)r * j->cols;
        float *y = j->y + (size_t)r * j->cols;
        double s = j->vm->sum(x, (size_t)j->cols);
        float mean = (float)(s / j->cols);
        double v = j->vm->sqdev(x, (size_t)j->cols, mean);
        float inv = 1.0f / sqrtf((float)(v / j->cols) + j->eps);
        j->vm->ln_apply(y, x, w, j->b, mean, inv, (size_t)j->cols);
    }
}

static nvlm_status cpu_layernorm(nv_exec *ex, float *y, const float *x, const nv_bweight *w,
                                 const nv_bweight *b, int rows, int cols, float eps)
{
    rows_job j = {.fn = layernorm_rows, .rows = rows, .y = y, .x = x, .w = w->t.data,
                  .b = b->t.data, .cols = cols, .eps = eps};
    run_rows(ex, &j, (size_t)rows * cols);
    return NVLM_OK;
}

/* ---- RoPE ------------------------------------------------------------------------------- */

/* cos/sin of fp32(pos) * inv_freq (an fp32 product, as the reference), evaluated in double and
 * rounded to f32: within half an ulp of any correct fp32 library. */
static void rope_table_rows(const rows_job *j, int r0, int r1)
{
    int half = j->head_dim / 2;
    for (int r = r0; r < r1; r++) {
        float pos = (float)(j->pos0 + r);
        float *cs = j->y + (size_t)r * half * 2;
        for (int i = 0; i < half; i++) {
            float ang = pos * j->inv_freq[i];
            cs[2 * i] = (float)cos((double)ang);
            cs[2 * i + 1] = (float)sin((double)ang);
        }
    }
}

static void rope_rows(const rows_job *j, int r0, int r1)
{
    int half = j->head_dim / 2;
    for (int r = r0; r < r1; r++) {
        float *x = j->y + (size_t)r * j->ldy;
        const float *cs = j->x + (size_t)r * half * 2;
        for (int h = 0; h < j->n_heads; h++) {
            float *v = x + (size_t)h * j->head_dim;
            for (int i = 0; i < half; i++) {
                float c = cs[2 * i];
                float s = cs[2 * i + 1];
                float a = v[i];
                float b = v[i + half];
                v[i] = a * c - b * s;
                v[i + half] = b * c + a * s;
            }
        }
    }
}

static nvlm_status cpu_rope(nv_exec *ex, float *x, int ld, int rows, int n_heads, int head_dim,
                            int64_t pos0, double theta)
{
    cpu_exec *ce = ce_of(ex);
    float inv_freq[512];
    int half = head_dim / 2;
    if (half > (int)NV_ARRAY_LEN(inv_freq) || head_dim % 2 != 0 || rows <= 0) {
        return nv_error(ex->err_handle, NVLM_ERR_UNSUPPORTED, "rope: head_dim %d, rows %d",
                        head_dim, rows);
    }
    if (ce->rope_cs == NULL || ce->rope_pos0 != pos0 || ce->rope_rows != rows ||
        ce->rope_half != half || ce->rope_theta != theta) {
        size_t need = (size_t)rows * half * 2;
        if (need > ce->rope_cap) {
            float *p = nv_alloc_array(ctx_of(ex), need, sizeof(float));
            if (p == NULL) {
                return nv_error(ex->err_handle, NVLM_ERR_OUT_OF_MEMORY, "out of memory (rope)");
            }
            nv_free(ctx_of(ex), ce->rope_cs);
            ce->rope_cs = p;
            ce->rope_cap = need;
        }
        /* The reference computes base ** (arange(0, dim, 2) / dim) in fp32, then 1 / that. */
        float base = (float)theta;
        for (int i = 0; i < half; i++) {
            float e = (float)(2 * i) / (float)head_dim;
            float p = (float)pow((double)base, (double)e);
            inv_freq[i] = 1.0f / p;
        }
        rows_job t = {.fn = rope_table_rows, .rows = rows, .y = ce->rope_cs, .pos0 = pos0,
                      .head_dim = head_dim, .inv_freq = inv_freq};
        run_rows(ex, &t, need * 16);
        ce->rope_pos0 = pos0;
        ce->rope_rows = rows;
        ce->rope_half = half;
        ce->rope_theta = theta;
    }
    rows_job j = {.fn = rope_rows, .rows = rows, .y = x, .ldy = ld, .x = ce->rope_cs,
                  .n_heads = n_heads, .head_dim = head_dim};
    run_rows(ex, &j, (size_t)rows * n_heads * head_dim * 4);
    return NVLM_OK;
}

/* ---- elementwise ------------------------------------------------------------------------ */

/* Flat ops run as rows of FLAT_ROW elements (the last row shorter). */
#define FLAT_ROW 4096

static void gelu_rows(const rows_job *j, int r0, int r1)
{
    size_t n = (size_t)j->cols;
    size_t a = (size_t)r0 * FLAT_ROW;
    size_t b = NV_MIN((size_t)r1 * FLAT_ROW, n);
    j->vm->gelu(j->y + a, j->x + a, b - a);
}

static void silu_rows(const rows_job *j, int r0, int r1)
{
    size_t n = (size_t)j->cols;
    size_t a = (size_t)r0 * FLAT_ROW;
    size_t b = NV_MIN((size_t)r1 * FLAT_ROW, n);
    j->vm->silu_mul(j->y + a, j->x + a, j->x2 + a, b - a);
}

static nvlm_status run_flat(nv_exec *ex, void (*fn)(const rows_job *, int, int), float *y,
                            const float *x, const float *x2, size_t n)
{
    if (n > (size_t)INT32_MAX * FLAT_ROW / 2 || n > (size_t)INT32_MAX) {
        return nv_error(ex->err_handle, NVLM_ERR_LIMIT, "elementwise op too large");
    }
    rows_job j = {.fn = fn, .rows = (int)((n + FLAT_ROW - 1) / FLAT_ROW), .y = y, .x = x,
                  .x2 = x2, .cols = (int)n};
    /* vectorized: a few ns per element, so only ViT-sized ops are worth a pool run */
    run_rows(ex, &j, n * 2);
    return NVLM_OK;
}

static nvlm_status cpu_gelu(nv_exec *ex, float *y, const float *x, size_t n)
{
    return run_flat(ex, gelu_rows, y, x, NULL, n);
}

static nvlm_status cpu_silu_mul(nv_exec *ex, float *y, const float *g, const float *u, size_t n)
{
    return run_flat(ex, silu_rows, y, g, u, n);
}

static void add_scaled_rows(const rows_job *j, int r0, int r1)
{
    const float *s = j->w;
    for (int r = r0; r < r1; r++) {
        float *y = j->y + (size_t)r * j->cols;
        const float *x = j->x + (size_t)r * j->cols;
        if (s == NULL) {
            for (int c = 0; c < j->cols; c++) {
                y[c] += x[c];
            }
        } else {
            for (int c = 0; c < j->cols; c++) {
                y[c] += s[c] * x[c];
            }
        }
    }
}

static nvlm_status cpu_add_scaled(nv_exec *ex, float *y, const float *x, const nv_bweight *s,
                                  int rows, int cols)
{
    rows_job j = {.fn = add_scaled_rows, .rows = rows, .y = y, .x = x,
                  .w = s != NULL ? s->t.data : NULL, .cols = cols};
    run_rows(ex, &j, (size_t)rows * cols);
    return NVLM_OK;
}

static void add_rows_rows(const rows_job *j, int r0, int r1)
{
    for (int r = r0; r < r1; r++) {
        float *y = j->y + (size_t)r * j->cols;
        size_t off = (size_t)(r % j->b_rows) * j->cols;
        for (int c = 0; c < j->cols; c++) {
            y[c] += wget(j->w, j->wt, off + c);
        }
    }
}

static nvlm_status cpu_add_rows(nv_exec *ex, float *y, const nv_bweight *b, int b_rows,
                                int rows, int cols)
{
    rows_job j = {.fn = add_rows_rows, .rows = rows, .y = y, .w = b->t.data, .wt = b->t.dtype,
                  .b_rows = b_rows, .cols = cols};
    run_rows(ex, &j, (size_t)rows * cols);
    return NVLM_OK;
}

static nvlm_status cpu_rows_copy(nv_exec *ex, float *dst, const int32_t *dst_idx,
                                 const void *src, nv_dtype src_type, const int32_t *src_idx,
                                 size_t n, int cols)
{
    (void)ex;
    size_t es = nv_dtype_size(src_type);
    for (size_t i = 0; i < n; i++) {
        size_t di = dst_idx != NULL ? (size_t)dst_idx[i] : i;
        size_t si = src_idx != NULL ? (size_t)src_idx[i] : i;
        nv_to_f32(dst + di * cols, (const char *)src + si * cols * es, src_type, (size_t)cols);
    }
    return NVLM_OK;
}

static nvlm_status cpu_store_rows(nv_exec *ex, void *dst, nv_dtype type, int64_t row0,
                                  const float *src, int lds, size_t n, int cols)
{
    for (size_t i = 0; i < n; i++) {
        const float *s = src + i * (size_t)lds;
        size_t off = ((size_t)row0 + i) * (size_t)cols;
        if (type == NV_F32) {
            memcpy((float *)dst + off, s, (size_t)cols * sizeof(float));
        } else if (type == NV_BF16) {
            uint16_t *d = (uint16_t *)dst + off;
            for (int c = 0; c < cols; c++) {
                d[c] = nv_f32_to_bf16(s[c]);
            }
        } else {
            return nv_error(ex->err_handle, NVLM_ERR_UNSUPPORTED, "cache dtype %s",
                            nv_dtype_name(type));
        }
    }
    return NVLM_OK;
}

static nvlm_status cpu_im2col(nv_exec *ex, float *out, const float *pix, int batch,
                              int channels, int height, int width, int patch)
{
    (void)ex;
    int gh = height / patch;
    int gw = width / patch;
    size_t feat = (size_t)channels * patch * patch;
    for (int b = 0; b < batch; b++) {
        for (int py = 0; py < gh; py++) {
            for (int px = 0; px < gw; px++) {
                float *o = out + (((size_t)b * gh + py) * gw + px) * feat;
                for (int c = 0; c < channels; c++) {
                    for (int ky = 0; ky < patch; ky++) {
                        const float *s = pix + (((size_t)b * channels + c) * height +
                                                (size_t)py * patch + ky) * width +
                                         (size_t)px * patch;
                        memcpy(o, s, (size_t)patch * sizeof(float));
                        o += patch;
                    }
                }
            }
        }
    }
    return NVLM_OK;
}

/* ---- matmul ----------------------------------------------------------------------------- */

static nvlm_status cpu_matmul_op(nv_exec *ex, float *y, const float *x, const nv_bweight *w,
                                 const nv_bweight *bias, int M)
{
    const nv_tensor *t = &w->t;
    int64_t N = t->shape[0];
    int64_t K = nv_tensor_nelem(t) / (N > 0 ? N : 1);
    if (N > INT32_MAX || K > INT32_MAX) {
        return nv_error(ex->err_handle, NVLM_ERR_LIMIT, "matmul too large");
    }
    const float *b = bias != NULL ? (const float *)bias->t.data : NULL;
    cpu_exec *ce = ce_of(ex);
    if (ex->be->precision == NVLM_PRECISION_FAST && M > 0) {
        if (cpu_matmul_bf16(ce->pool, y, x, t->data, t->dtype, b, M, (int)N, (int)K)) {
            return NVLM_OK;
        }
        /* No AVX512-BF16 (or f16/f32/FP8 weights): x rounded into the exec's buffer, then
         * the exact kernels (for bf16 weights the same bf16 x bf16 products). */
        size_t n;
        if (!nv_mul_size((size_t)M, (size_t)K, &n)) {
            return nv_error(ex->err_handle, NVLM_ERR_LIMIT, "matmul too large");
        }
        if (n > ce->xr_cap) {
            float *p = nv_alloc_array(ctx_of(ex), n, sizeof(float));
            if (p == NULL) {
                return nv_error(ex->err_handle, NVLM_ERR_OUT_OF_MEMORY,
                                "out of memory for %zu bf16-rounded activations", n);
            }
            nv_free(ctx_of(ex), ce->xr);
            ce->xr = p;
            ce->xr_cap = n;
        }
        cpu_round_bf16(ce->xr, x, n);
        x = ce->xr;
    }
    if (t->dtype == NV_F8_E4M3) {
        cpu_matmul_fp8(ce->pool, y, x, t->data, t->scale, b, M, (int)N, (int)K);
    } else {
        cpu_matmul(ce->pool, y, x, t->data, t->dtype, b, M, (int)N, (int)K);
    }
    return NVLM_OK;
}

/* ---- attention -------------------------------------------------------------------------- */

typedef struct attn_job {
    float *out;
    int ldo;
    const float *q;
    int ldq;
    const void *k;
    const void *v;
    int ldkv;
    nv_dtype kvt;
    int n_q, n_kv, n_heads, group, hd, qblk, n_qblk, n_tasks;
    float scale;
    int64_t cpos0;
    float **scr;
    const vm_ops *vm;
    atomic_int next;
} attn_job;

static void attn_task(attn_job *j, int t, float *scr)
{
    int per_b = j->n_heads * j->n_qblk;
    int b = t / per_b;
    int h = (t % per_b) / j->n_qblk;
    int qb = t % j->n_qblk;
    int i0 = qb * j->qblk;
    int i1 = NV_MIN(j->n_q, i0 + j->qblk);
    int nq = i1 - i0;
    int kv_len = j->n_kv;
    if (j->cpos0 >= 0) {
        kv_len = (int)NV_MIN((int64_t)j->n_kv, j->cpos0 + i1);
    }
    if (kv_len <= 0) {
        return;
    }
    int kvh = h / j->group;
    size_t kv_off = (size_t)b * j->n_kv * j->ldkv + (size_t)kvh * j->hd;
    float *S = scr;
    const float *kp;
    const float *vp;
    int ldk;
    if (j->kvt == NV_F32) {
        kp = (const float *)j->k + kv_off;
        vp = (const float *)j->v + kv_off;
        ldk = j->ldkv;
    } else {
        float *kf = scr + (size_t)j->qblk * j->n_kv;
        float *vf = kf + (size_t)j->n_kv * j->hd;
        size_t es = nv_dtype_size(j->kvt);
        for (int r = 0; r < kv_len; r++) {
            size_t o = (kv_off + (size_t)r * j->ldkv) * es;
            nv_to_f32(kf + (size_t)r * j->hd, (const char *)j->k + o, j->kvt, (size_t)j->hd);
            nv_to_f32(vf + (size_t)r * j->hd, (const char *)j->v + o, j->kvt, (size_t)j->hd);
        }
        kp = kf;
        vp = vf;
        ldk = j->hd;
    }
    const float *qp = j->q + ((size_t)b * j->n_q + i0) * j->ldq + (size_t)h * j->hd;
    float *op = j->out + ((size_t)b * j->n_q + i0) * j->ldo + (size_t)h * j->hd;
    if (nq < ATTN_DIRECT_Q) {
        const vm_ops *vm = j->vm;
        for (int r = 0; r < nq; r++) {
            const float *qr = qp + (size_t)r * j->ldq;
            float *orow = op + (size_t)r * j->ldo;
            int lim = kv_len;
            if (j->cpos0 >= 0) {
                lim = (int)NV_MIN((int64_t)kv_len, j->cpos0 + i0 + r + 1);
            }
            for (int c = 0; c < lim; c++) {
                S[c] = j->scale * vm->dot(qr, kp + (size_t)c * ldk, (size_t)j->hd);
            }
            float m = vm->max(S, (size_t)lim);
            float sum = vm->exp_sum(S, (size_t)lim, m);
            vm->scale(S, (size_t)lim, 1.0f / sum);
            memset(orow, 0, (size_t)j->hd * sizeof(float));
            for (int c = 0; c < lim; c++) {
                vm->axpy(orow, S[c], vp + (size_t)c * ldk, (size_t)j->hd);
            }
        }
        return;
    }
    cpu_gemm_nt_f32(NULL, S, kv_len, qp, j->ldq, kp, ldk, nq, kv_len, j->hd, j->scale);
    for (int r = 0; r < nq; r++) {
        float *s = S + (size_t)r * kv_len;
        int lim = kv_len;
        if (j->cpos0 >= 0) {
            lim = (int)NV_MIN((int64_t)kv_len, j->cpos0 + i0 + r + 1);
        }
        float m = j->vm->max(s, (size_t)lim);
        float sum = j->vm->exp_sum(s, (size_t)lim, m);
        /* One rounding more than a division, as vectorized softmax kernels do. */
        j->vm->scale(s, (size_t)lim, 1.0f / sum);
        for (int c = lim; c < kv_len; c++) {
            s[c] = 0.0f;
        }
    }
    cpu_gemm_nn_f32(NULL, op, j->ldo, S, kv_len, vp, ldk, nq, j->hd, kv_len);
}

static void attn_worker(void *arg, int i, int n)
{
    (void)n;
    attn_job *j = arg;
    for (;;) {
        int t = atomic_fetch_add_explicit(&j->next, 1, memory_order_relaxed);
        if (t >= j->n_tasks) {
            break;
        }
        attn_task(j, t, j->scr[i]);
    }
}

static nvlm_status cpu_attention(nv_exec *ex, float *out, int ldo, const float *q, int ldq,
                                 const void *k, const void *v, int ldkv, nv_dtype kv_type,
                                 int batch, int n_q, int n_kv, int n_heads, int n_kv_heads,
                                 int head_dim, float scale, int64_t causal_pos0, nv_tp_part heads)
{
    (void)heads;
    cpu_exec *ce = ce_of(ex);
    if (n_kv_heads <= 0 || n_heads % n_kv_heads != 0 || n_q <= 0 || n_kv <= 0 || batch <= 0) {
        return nv_error(ex->err_handle, NVLM_ERR_INTERNAL, "bad attention shape");
    }
    if (kv_type != NV_F32 && kv_type != NV_BF16 && kv_type != NV_F16) {
        return nv_error(ex->err_handle, NVLM_ERR_UNSUPPORTED, "kv dtype %s",
                        nv_dtype_name(kv_type));
    }
    int qblk = n_q < ATTN_QBLK ? n_q : ATTN_QBLK;
    int n_qblk = (n_q + qblk - 1) / qblk;
    int64_t n_tasks = (int64_t)batch * n_heads * n_qblk;
    size_t need = (size_t)qblk * n_kv;
    if (kv_type != NV_F32) {
        need += (size_t)2 * n_kv * head_dim;
    }
    if (n_tasks > INT32_MAX) {
        return nv_error(ex->err_handle, NVLM_ERR_LIMIT, "attention too large");
    }
    int n_workers = ce->pool != NULL ? nv_pool_size(ce->pool) : 1;
    for (int i = 0; i < n_workers; i++) {
        if (ce->scr_cap[i] < need) {
            size_t cap = need + need / 2;
            float *p = nv_alloc_array(ctx_of(ex), cap, sizeof(float));
            if (p == NULL) {
                return nv_error(ex->err_handle, NVLM_ERR_OUT_OF_MEMORY,
                                "out of memory for attention scratch");
            }
            nv_free(ctx_of(ex), ce->scr[i]);
            ce->scr[i] = p;
            ce->scr_cap[i] = cap;
        }
    }
    attn_job j = {.out = out, .ldo = ldo, .q = q, .ldq = ldq, .k = k, .v = v, .ldkv = ldkv,
                  .kvt = kv_type, .n_q = n_q, .n_kv = n_kv, .n_heads = n_heads,
                  .group = n_heads / n_kv_heads, .hd = head_dim, .qblk = qblk, .n_qblk = n_qblk,
                  .n_tasks = (int)n_tasks, .scale = scale, .cpos0 = causal_pos0,
                  .scr = ce->scr, .vm = ce->vm};
    atomic_init(&j.next, 0);
    if (ce->pool == NULL || n_tasks == 1) {
        attn_worker(&j, 0, 1);
    } else {
        nv_pool_run(ce->pool, attn_worker, &j);
    }
    return NVLM_OK;
}

/* ---- fused ops: the plain sequences, so results match them to the bit --------------------- */

static nvlm_status cpu_add_rmsnorm(nv_exec *ex, float *h, const float *a, const nv_bweight *s,
                                   float *x, const nv_bweight *w, int rows, int cols, float eps)
{
    if (a != NULL) {
        NVLM_TRY(cpu_add_scaled(ex, h, a, s, rows, cols));
    }
    return cpu_rmsnorm(ex, x, cols, h, cols, w, rows, cols, cols, eps);
}

static void silu_cat_rows(const rows_job *j, int r0, int r1)
{
    for (int r = r0; r < r1; r++) {
        const float *gu = j->x + (size_t)r * 2 * j->cols;
        j->vm->silu_mul(j->y + (size_t)r * j->cols, gu, gu + j->cols, (size_t)j->cols);
    }
}

static nvlm_status cpu_silu_mul_cat(nv_exec *ex, float *y, const float *gu, int rows, int cols)
{
    rows_job j = {.fn = silu_cat_rows, .rows = rows, .y = y, .x = gu, .cols = cols};
    run_rows(ex, &j, (size_t)rows * cols * 8);
    return NVLM_OK;
}

static nvlm_status cpu_rope_store(nv_exec *ex, void *dst, nv_dtype type, int64_t row0,
                                  float *src, int lds, int rows, int n_heads, int head_dim,
                                  double theta)
{
    NVLM_TRY(cpu_rope(ex, src, lds, rows, n_heads, head_dim, row0, theta));
    return cpu_store_rows(ex, dst, type, row0, src, lds, (size_t)rows, n_heads * head_dim);
}

/* ---- table ------------------------------------------------------------------------------ */

static const nv_backend_ops cpu_ops = {
    .name = "cpu",
    .weight_load = cpu_weight_load,
    .weight_free = cpu_weight_free,
    .destroy = cpu_destroy,
    .exec_create = cpu_exec_create,
    .exec_free = cpu_exec_free,
    .alloc = cpu_alloc,
    .alloc_kv = cpu_alloc_kv,
    .free = cpu_free,
    .upload = cpu_memcpy,
    .download = cpu_memcpy,
    .copy = cpu_memcpy,
    .copy_2d = cpu_copy_2d,
    .zero = cpu_zero,
    .sync = cpu_sync,
    .matmul = cpu_matmul_op,
    .rmsnorm = cpu_rmsnorm,
    .rows_sumsq = cpu_rows_sumsq,
    .rmsnorm_scale = cpu_rmsnorm_scale,
    .layernorm = cpu_layernorm,
    .rope = cpu_rope,
    .attention = cpu_attention,
    .gelu = cpu_gelu,
    .silu_mul = cpu_silu_mul,
    .add_scaled = cpu_add_scaled,
    .add_rows = cpu_add_rows,
    .rows_copy = cpu_rows_copy,
    .store_rows = cpu_store_rows,
    .im2col = cpu_im2col,
    .add_rmsnorm = cpu_add_rmsnorm,
    .silu_mul_cat = cpu_silu_mul_cat,
    .rope_store = cpu_rope_store,
};

nvlm_status nv_backend_cpu_create(nvlm_context *ctx, nv_backend **out)
{
    *out = NULL;
    nv_backend *be = nv_calloc(ctx, 1, sizeof *be);
    if (be == NULL) {
        return NVLM_ERR_OUT_OF_MEMORY;
    }
    be->ops = &cpu_ops;
    be->ctx = ctx;
    be->kv_default = NV_F32;
    *out = be;
    return NVLM_OK;
}
