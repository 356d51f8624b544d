/*
 * graph.cu - decode steps on the CUDA backend (step.h, backend.h step_begin / step_end): the
 * step's per-token values go to a device block by one copy from pinned memory, the ops read
 * them there (RoPE position, KV append row, attention key count, embedding token ids), so
 * one CUDA graph per step key, captured at the key's second step, is replayed for every later
 * token with cudaGraphLaunch. Logits come back through a pinned buffer, with the step's one
 * synchronisation at step_end. The backend's op table is wrapped here: outside a step every
 * op forwards to backend_cuda.cu's; inside, each op folds what the graph bakes in into a
 * signature, so a replay over moved buffers is refused and the step reruns eagerly.
 */
#include "cuda/cuda_internal.h"

#include <stdio.h>
#include <string.h>

#define GRAPH_MAX_DL 4  /* downloads one step may defer (the decoder does one: its logits) */

enum {
    OPK_MATMUL = 1, OPK_RMSNORM, OPK_SUMSQ, OPK_NORM_SCALE, OPK_LAYERNORM, OPK_ROPE, OPK_ATTN,
    OPK_GELU, OPK_SILU, OPK_ADD_SCALED, OPK_ADD_ROWS, OPK_ROWS, OPK_ROWS_STEP, OPK_STORE,
    OPK_IM2COL, OPK_COPY, OPK_COPY_2D, OPK_ZERO, OPK_DOWNLOAD, OPK_ADD_RMSNORM,
    OPK_SILU_CAT
};

typedef struct pending_dl {
    void *host;
    size_t off;
    size_t bytes;
} pending_dl;

struct cuda_graphs {
    nv_graph_cache cache;
    nv_step_block *host_blk;    /* pinned, two slots used in turn */
    cudaEvent_t blk_ev[2];      /* the copy out of each slot has completed */
    int blk_i;
    nv_step_block *dev_blk;     /* what the kernels read */
    char *out;                  /* pinned landing area of the step's downloads */
    size_t out_cap;
    /* the step in progress */
    bool active;
    int mode;                   /* NV_STEP_* */
    nv_graph_slot *slot;
    nv_step_block blk;          /* host image of dev_blk */
    uint32_t n_ops;
    uint64_t sig;
    bool broken;                /* an op could not join the capture / differs in the replay */
    char why[160];
    pending_dl dl[GRAPH_MAX_DL];
    int n_dl;
    size_t out_used;
    nv_cuda_step_stats stats;
};

static uint64_t U(const void *p)
{
    return (uint64_t)(uintptr_t)p;
}

static uint64_t F(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static const nv_backend_ops *eager(nv_exec *ex)
{
    return cuda_ex(ex)->cb->eager;
}

/* The step in progress on ex, or NULL. */
static cuda_graphs *in_step(nv_exec *ex)
{
    cuda_graphs *g = cuda_ex(ex)->graphs;
    return g != NULL && g->active ? g : NULL;
}

static void breaks(cuda_graphs *g, const char *why)
{
    if (!g->broken) {
        g->broken = true;
        snprintf(g->why, sizeof g->why, "%s", why);
    }
}

/* Folds an op's signature into the step in progress (if any); true when the op must not
 * launch because the step replays its graph. */
static bool skip(nv_exec *ex, const uint64_t *v, size_t n)
{
    cuda_graphs *g = in_step(ex);
    if (g == NULL) {
        return false;
    }
    g->sig = nv_sig_words(g->sig, v, n);
    g->n_ops++;
    return g->mode == NV_STEP_REPLAY;
}

static nvlm_status launched(nv_exec *ex, cudaError_t e, const char *op)
{
    return cuda_status(ex->err_handle, e, op);
}

/* ---- ops without per-token values: fold, then launch unless replaying -------------------- */

static nvlm_status w_matmul(nv_exec *ex, float *y, const float *x, const nv_bweight *w,
                            const nv_bweight *bias, int M)
{
    uint64_t v[] = {OPK_MATMUL, U(y), U(x), U(w->t.data), U(bias != NULL ? bias->t.data : NULL),
                    (uint64_t)M, U(cuda_ex(ex)->xbf)};
    return skip(ex, v, NV_ARRAY_LEN(v)) ? NVLM_OK : eager(ex)->matmul(ex, y, x, w, bias, M);
}

static nvlm_status w_rmsnorm(nv_exec *ex, float *y, int ldy, const float *x, int ldx,
                             const nv_bweight *w, int rows, int cols, int stat_cols, float eps)
{
    uint64_t v[] = {OPK_RMSNORM, U(y), (uint64_t)ldy, U(x), (uint64_t)ldx, U(w->t.data),
                    (uint64_t)rows, (uint64_t)cols, (uint64_t)stat_cols, F(eps)};
    return skip(ex, v, NV_ARRAY_LEN(v))
               ? NVLM_OK
               : eager(ex)->rmsnorm(ex, y, ldy, x, ldx, w, rows, cols, stat_cols, eps);
}

static nvlm_status w_rows_sumsq(nv_exec *ex, float *out, const float *x, int ld, int rows,
                                int cols)
{
    uint64_t v[] = {OPK_SUMSQ, U(out), U(x), (uint64_t)ld, (uint64_t)rows, (uint64_t)cols};
    return skip(ex, v, NV_ARRAY_LEN(v)) ? NVLM_OK
                                         : eager(ex)->rows_sumsq(ex, out, x, ld, rows, cols);
}

static nvlm_status w_rmsnorm_scale(nv_exec *ex, float *y, int ldy, const float *x, int ldx,
                                   const nv_bweight *w, int rows, int cols, const float *sumsq,
                                   int n, float eps)
{
    uint64_t v[] = {OPK_NORM_SCALE, U(y), (uint64_t)ldy, U(x), (uint64_t)ldx, U(w->t.data),
                    (uint64_t)rows, (uint64_t)cols, U(sumsq), (uint64_t)n, F(eps)};
    return skip(ex, v, NV_ARRAY_LEN(v))
               ? NVLM_OK
               : eager(ex)->rmsnorm_scale(ex, y, ldy, x, ldx, w, rows, cols, sumsq, n, eps);
}

static nvlm_status w_layernorm(nv_exec *ex, float *y, const float *x, const nv_bweight *w,
                               const nv_bweight *b, int rows, int cols, float eps)
{
    uint64_t v[] = {OPK_LAYERNORM, U(y), U(x), U(w->t.data), U(b->t.data), (uint64_t)rows,
                    (uint64_t)cols, F(eps)};
    return skip(ex, v, NV_ARRAY_LEN(v)) ? NVLM_OK
                                         : eager(ex)->layernorm(ex, y, x, w, b, rows, cols, eps);
}

static nvlm_status w_gelu(nv_exec *ex, float *y, const float *x, size_t n)
{
    uint64_t v[] = {OPK_GELU, U(y), U(x), (uint64_t)n};
    return skip(ex, v, NV_ARRAY_LEN(v)) ? NVLM_OK : eager(ex)->gelu(ex, y, x, n);
}

static nvlm_status w_silu_mul(nv_exec *ex, float *y, const float *g, const float *u, size_t n)
{
    uint64_t v[] = {OPK_SILU, U(y), U(g), U(u), (uint64_t)n};
    return skip(ex, v, NV_ARRAY_LEN(v)) ? NVLM_OK : eager(ex)->silu_mul(ex, y, g, u, n);
}

static nvlm_status w_add_scaled(nv_exec *ex, float *y, const float *x, const nv_bweight *s,
                                int rows, int cols)
{
    uint64_t v[] = {OPK_ADD_SCALED, U(y), U(x), U(s != NULL ? s->t.data : NULL),
                    (uint64_t)rows, (uint64_t)cols};
    return skip(ex, v, NV_ARRAY_LEN(v)) ? NVLM_OK
                                         : eager(ex)->add_scaled(ex, y, x, s, rows, cols);
}

static nvlm_status w_add_rows(nv_exec *ex, float *y, const nv_bweight *b, int b_rows, int rows,
                              int cols)
{
    uint64_t v[] = {OPK_ADD_ROWS, U(y), U(b->t.data), (uint64_t)b_rows, (uint64_t)rows,
                    (uint64_t)cols};
    return skip(ex, v, NV_ARRAY_LEN(v)) ? NVLM_OK
                                         : eager(ex)->add_rows(ex, y, b, b_rows, rows, cols);
}

static nvlm_status w_add_rmsnorm(nv_exec *ex, float *h, const float *a, const nv_bweight *s,
                                 float *x, const nv_bweight *w, int rows, int cols, float eps)
{
    uint64_t v[] = {OPK_ADD_RMSNORM, U(h), U(a), U(s != NULL ? s->t.data : NULL), U(x),
                    U(w->t.data), (uint64_t)rows, (uint64_t)cols, F(eps), U(cuda_ex(ex)->xbf)};
    return skip(ex, v, NV_ARRAY_LEN(v))
               ? NVLM_OK
               : eager(ex)->add_rmsnorm(ex, h, a, s, x, w, rows, cols, eps);
}

static nvlm_status w_silu_mul_cat(nv_exec *ex, float *y, const float *gu, int rows, int cols)
{
    uint64_t v[] = {OPK_SILU_CAT, U(y), U(gu), (uint64_t)rows, (uint64_t)cols};
    return skip(ex, v, NV_ARRAY_LEN(v)) ? NVLM_OK
                                         : eager(ex)->silu_mul_cat(ex, y, gu, rows, cols);
}

static nvlm_status w_im2col(nv_exec *ex, float *out, const float *pix, int batch, int channels,
                            int height, int width, int patch)
{
    uint64_t v[] = {OPK_IM2COL, U(out), U(pix), (uint64_t)batch, (uint64_t)channels,
                    (uint64_t)height, (uint64_t)width, (uint64_t)patch};
    return skip(ex, v, NV_ARRAY_LEN(v))
               ? NVLM_OK
               : eager(ex)->im2col(ex, out, pix, batch, channels, height, width, patch);
}

static nvlm_status w_copy(nv_exec *ex, void *dst, const void *src, size_t bytes)
{
    uint64_t v[] = {OPK_COPY, U(dst), U(src), (uint64_t)bytes};
    return skip(ex, v, NV_ARRAY_LEN(v)) ? NVLM_OK : eager(ex)->copy(ex, dst, src, bytes);
}

static nvlm_status w_copy_2d(nv_exec *ex, void *dst, size_t dpitch, const void *src,
                             size_t spitch, size_t width, size_t rows)
{
    uint64_t v[] = {OPK_COPY_2D, U(dst), (uint64_t)dpitch, U(src), (uint64_t)spitch,
                    (uint64_t)width, (uint64_t)rows};
    return skip(ex, v, NV_ARRAY_LEN(v))
               ? NVLM_OK
               : eager(ex)->copy_2d(ex, dst, dpitch, src, spitch, width, rows);
}

static nvlm_status w_zero(nv_exec *ex, void *dst, size_t bytes)
{
    uint64_t v[] = {OPK_ZERO, U(dst), (uint64_t)bytes};
    return skip(ex, v, NV_ARRAY_LEN(v)) ? NVLM_OK : eager(ex)->zero(ex, dst, bytes);
}

/* ---- ops with per-token values: read from the device block inside a step ---------------- */

/* Whether a per-token host value agrees with the step; when it does not, an eager step runs
 * the op with the host value and a capture or replay is abandoned (step_end reruns). */
static bool agrees(cuda_graphs *g, bool same, const char *what)
{
    if (!same && g->mode != NV_STEP_EAGER) {
        breaks(g, what);
    }
    return same;
}

static nvlm_status w_rope(nv_exec *ex, float *x, int ld, int rows, int n_heads, int head_dim,
                          int64_t pos0, double theta)
{
    cuda_graphs *g = in_step(ex);
    int half = head_dim / 2;
    if (g == NULL || half <= 0 || half > CUDA_ROPE_MAX_HALF || head_dim % 2 != 0) {
        return eager(ex)->rope(ex, x, ld, rows, n_heads, head_dim, pos0, theta);
    }
    bool same = rows == g->blk.n_seq * g->blk.n_tokens && g->blk.n_seq == 1 &&
                pos0 == g->blk.pos0[0];
    if (!agrees(g, same, "rope position differs from the step's")) {
        return g->mode == NV_STEP_EAGER
                   ? eager(ex)->rope(ex, x, ld, rows, n_heads, head_dim, pos0, theta)
                   : NVLM_OK;
    }
    double th = theta;
    uint64_t thb;
    memcpy(&thb, &th, sizeof thb);
    uint64_t v[] = {OPK_ROPE, U(x), (uint64_t)ld, (uint64_t)rows, (uint64_t)n_heads,
                    (uint64_t)head_dim, thb};
    if (skip(ex, v, NV_ARRAY_LEN(v))) {
        return NVLM_OK;
    }
    /* the session's table when it is made (the prefill's rope made it); never an upload here */
    cuda_exec *ce = cuda_ex(ex);
    float inv_freq[CUDA_ROPE_MAX_HALF];
    const float *freq = ce->rope_host;
    if (ce->rope_half != half || ce->rope_theta != theta) {
        cuda_rope_inv_freq(theta, head_dim, inv_freq);
        freq = inv_freq;
    }
    NVLM_TRY(cuda_enter(ex));
    return launched(ex, cuda_rope_step(ce->stream, x, ld, rows, n_heads, head_dim,
                                       &ce->graphs->dev_blk->pos0[0], g->blk.n_tokens, freq),
                    "rope");
}

static nvlm_status w_store_rows(nv_exec *ex, void *dst, nv_dtype type, int64_t row0,
                                const float *src, int lds, size_t n, int cols)
{
    cuda_graphs *g = in_step(ex);
    if (g == NULL || (type != NV_F32 && type != NV_BF16)) {
        return eager(ex)->store_rows(ex, dst, type, row0, src, lds, n, cols);
    }
    bool same = g->blk.n_seq == 1 && n == (size_t)g->blk.n_tokens && row0 == g->blk.pos0[0];
    if (!agrees(g, same, "KV append row differs from the step's")) {
        return g->mode == NV_STEP_EAGER
                   ? eager(ex)->store_rows(ex, dst, type, row0, src, lds, n, cols)
                   : NVLM_OK;
    }
    uint64_t v[] = {OPK_STORE, U(dst), (uint64_t)type, U(src), (uint64_t)lds, (uint64_t)n,
                    (uint64_t)cols};
    if (skip(ex, v, NV_ARRAY_LEN(v))) {
        return NVLM_OK;
    }
    NVLM_TRY(cuda_enter(ex));
    cuda_exec *ce = cuda_ex(ex);
    return launched(ex, cuda_store_rows_step(ce->stream, dst, type, &ce->graphs->dev_blk->pos0[0],
                                             src, lds, n, cols),
                    "store_rows");
}

/* The fused RoPE + KV append: inside a step, the rotation in place and the append, each
 * reading the position from the step block (rope_store leaves src unspecified, so rotating
 * it in place is allowed); outside, the fused kernel. */
static nvlm_status w_rope_store(nv_exec *ex, void *dst, nv_dtype type, int64_t row0, float *src,
                                int lds, int rows, int n_heads, int head_dim, double theta)
{
    if (in_step(ex) == NULL) {
        return eager(ex)->rope_store(ex, dst, type, row0, src, lds, rows, n_heads, head_dim,
                                     theta);
    }
    NVLM_TRY(w_rope(ex, src, lds, rows, n_heads, head_dim, row0, theta));
    return w_store_rows(ex, dst, type, row0, src, lds, (size_t)rows, n_heads * head_dim);
}

static nvlm_status w_attention(nv_exec *ex, float *out, int ldo, const float *q, int ldq,
                               const void *k, const void *v, int ldkv, nv_dtype kv_type,
                               int batch, int n_q, int n_kv, int n_heads, int n_kv_heads,
                               int head_dim, float scale, int64_t causal_pos0, nv_tp_part heads)
{
    cuda_graphs *g = in_step(ex);
    if (g == NULL || n_kv_heads <= 0 || n_heads % n_kv_heads != 0 || head_dim <= 0 ||
        head_dim > CUDA_ATTN_MAX_HD || (kv_type != NV_F32 && kv_type != NV_BF16 &&
                                        kv_type != NV_F16)) {
        return eager(ex)->attention(ex, out, ldo, q, ldq, k, v, ldkv, kv_type, batch, n_q, n_kv,
                                    n_heads, n_kv_heads, head_dim, scale, causal_pos0, heads);
    }
    int64_t p0 = g->blk.pos0[0];
    int64_t rows = g->slot->key.kv_rows;
    bool same = batch == 1 && g->blk.n_seq == 1 && n_q == g->blk.n_tokens &&
                causal_pos0 == p0 && (int64_t)n_kv == p0 + n_q && rows <= INT32_MAX;
    if (!agrees(g, same, "attention key count differs from the step's")) {
        return g->mode == NV_STEP_EAGER
                   ? eager(ex)->attention(ex, out, ldo, q, ldq, k, v, ldkv, kv_type, batch, n_q,
                                          n_kv, n_heads, n_kv_heads, head_dim, scale,
                                          causal_pos0, heads)
                   : NVLM_OK;
    }
    cuda_exec *ce = cuda_ex(ex);
    /* The grid and partials for the most keys the step's key allows, sized at the key's first
     * (eager) step; later steps find the scratch big enough and allocate nothing. */
    size_t part = cuda_attention_part_floats(ce->cb, batch, n_q, (int)rows, n_heads, n_kv_heads,
                                             head_dim, 0);
    if (part > 0 && part > ce->part_cap) {
        if (g->mode != NV_STEP_EAGER) {
            breaks(g, "attention scratch too small inside a capture");
            return NVLM_OK;
        }
        NVLM_TRY(cuda_enter(ex));
        NVLM_TRY(cuda_scratch(ex, (void **)&ce->part, &ce->part_cap, part, sizeof(float),
                              "attention"));
    }
    uint64_t sv[] = {OPK_ATTN, U(out), (uint64_t)ldo, U(q), (uint64_t)ldq, U(k), U(v),
                     (uint64_t)ldkv, (uint64_t)kv_type, (uint64_t)batch, (uint64_t)n_q,
                     (uint64_t)n_heads, (uint64_t)n_kv_heads, (uint64_t)head_dim, F(scale),
                     U(ce->part)};
    if (skip(ex, sv, NV_ARRAY_LEN(sv))) {
        return NVLM_OK;
    }
    NVLM_TRY(cuda_enter(ex));
    return launched(ex, cuda_attention_step(ce->stream, ce->cb, ce->part, out, ldo, q, ldq, k, v,
                                            ldkv, kv_type, batch, n_q, (int)rows, n_heads,
                                            n_kv_heads, head_dim, scale,
                                            &ce->graphs->dev_blk->pos0[0]),
                    "attention");
}

static nvlm_status w_rows_copy(nv_exec *ex, float *dst, const int32_t *dst_idx, const void *src,
                               nv_dtype src_type, const int32_t *src_idx, size_t n, int cols)
{
    cuda_graphs *g = in_step(ex);
    if (g == NULL || n == 0 || (dst_idx == NULL && src_idx == NULL)) {
        if (g != NULL) {
            uint64_t v[] = {OPK_ROWS, U(dst), U(src), (uint64_t)src_type, (uint64_t)n,
                            (uint64_t)cols};
            if (skip(ex, v, NV_ARRAY_LEN(v))) {
                return NVLM_OK;
            }
        }
        return eager(ex)->rows_copy(ex, dst, dst_idx, src, src_type, src_idx, n, cols);
    }
    /* The embedding gather: the step's token ids are the source rows. Other index arrays
     * would be host uploads, which a capture cannot hold. */
    size_t n_tok = (size_t)g->blk.n_seq * (size_t)g->blk.n_tokens;
    bool same = dst_idx == NULL && n == n_tok && src_type != NV_F8_E4M3 &&
                memcmp(src_idx, g->blk.tokens, n * sizeof(int32_t)) == 0;
    if (!agrees(g, same, "row indices are not the step's token ids")) {
        return g->mode == NV_STEP_EAGER
                   ? eager(ex)->rows_copy(ex, dst, dst_idx, src, src_type, src_idx, n, cols)
                   : NVLM_OK;
    }
    if (src_type != NV_F32 && src_type != NV_BF16 && src_type != NV_F16) {
        return eager(ex)->rows_copy(ex, dst, dst_idx, src, src_type, src_idx, n, cols);
    }
    uint64_t v[] = {OPK_ROWS_STEP, U(dst), U(src), (uint64_t)src_type, (uint64_t)n,
                    (uint64_t)cols};
    if (skip(ex, v, NV_ARRAY_LEN(v))) {
        return NVLM_OK;
    }
    NVLM_TRY(cuda_enter(ex));
    cuda_exec *ce = cuda_ex(ex);
    return launched(ex, cuda_rows_copy(ce->stream, dst, NULL, src, src_type,
                                       ce->graphs->dev_blk->tokens, n, cols),
                    "rows_copy");
}

/* ---- memory and transfers --------------------------------------------------------------- */

static nvlm_status not_in_step(nv_exec *ex, cuda_graphs *g, const char *what)
{
    breaks(g, what);
    return nv_error(ex->err_handle, NVLM_ERR_INTERNAL, "%s inside a captured decode step", what);
}

static nvlm_status w_alloc(nv_exec *ex, size_t bytes, void **out)
{
    cuda_graphs *g = in_step(ex);
    if (g != NULL && g->mode != NV_STEP_EAGER) {
        *out = NULL;
        return not_in_step(ex, g, "alloc");
    }
    return eager(ex)->alloc(ex, bytes, out);
}

static nvlm_status w_alloc_kv(nv_exec *ex, int64_t rows, int kv_heads, int head_dim,
                              nv_dtype dtype, void **out)
{
    cuda_graphs *g = in_step(ex);
    if (g != NULL && g->mode != NV_STEP_EAGER) {
        *out = NULL;
        return not_in_step(ex, g, "alloc_kv");
    }
    return eager(ex)->alloc_kv(ex, rows, kv_heads, head_dim, dtype, out);
}

static void w_free(nv_exec *ex, void *ptr)
{
    cuda_graphs *g = in_step(ex);
    if (g != NULL && g->mode != NV_STEP_EAGER) {
        breaks(g, "free inside a captured decode step");
    }
    /* A graph may point into the buffer: graphs captured before are stale (the arena grows
     * by free + alloc between turns; the next step captures again instead of first finding
     * a signature that differs). */
    cuda_ex(ex)->gen++;
    eager(ex)->free(ex, ptr);
}

static nvlm_status w_upload(nv_exec *ex, void *dst, const void *host, size_t bytes)
{
    cuda_graphs *g = in_step(ex);
    if (g != NULL && g->mode != NV_STEP_EAGER) {
        return not_in_step(ex, g, "upload");
    }
    return eager(ex)->upload(ex, dst, host, bytes);
}

/* Captured and replayed steps copy into the pinned area; step_end hands the bytes over. */
static nvlm_status w_download(nv_exec *ex, void *host, const void *src, size_t bytes)
{
    cuda_graphs *g = in_step(ex);
    if (g == NULL || g->mode == NV_STEP_EAGER || bytes == 0) {
        return eager(ex)->download(ex, host, src, bytes);
    }
    size_t off = g->out_used;
    size_t span = (bytes + 63) / 64 * 64;
    if (g->n_dl == GRAPH_MAX_DL || span > g->out_cap - off) {
        breaks(g, "the step downloads more than its out_bytes");
        return NVLM_OK;
    }
    g->dl[g->n_dl].host = host;
    g->dl[g->n_dl].off = off;
    g->dl[g->n_dl].bytes = bytes;
    g->n_dl++;
    g->out_used = off + span;
    uint64_t v[] = {OPK_DOWNLOAD, U(src), (uint64_t)bytes, U(g->out + off)};
    if (skip(ex, v, NV_ARRAY_LEN(v))) {
        return NVLM_OK;
    }
    NVLM_TRY(cuda_enter(ex));
    return launched(ex, cudaMemcpyAsync(g->out + off, src, bytes, cudaMemcpyDeviceToHost,
                                        cuda_ex(ex)->stream),
                    "download");
}

static nvlm_status w_sync(nv_exec *ex)
{
    cuda_graphs *g = in_step(ex);
    if (g != NULL && g->mode != NV_STEP_EAGER) {
        return NVLM_OK; /* step_end waits, once, when the step downloads anything */
    }
    return eager(ex)->sync(ex);
}

/* ---- steps ------------------------------------------------------------------------------ */

static void graph_destroy(void *graph)
{
    if (graph != NULL) {
        cudaGraphExecDestroy((cudaGraphExec_t)graph);
    }
}

void cuda_graphs_free(nvlm_context *ctx, cuda_exec *ce)
{
    cuda_graphs *g = ce->graphs;
    if (g == NULL) {
        return;
    }
    bool clean = cudaPeekAtLastError() == cudaSuccess; /* else the application's: kept */
    if (g->active && g->mode == NV_STEP_CAPTURE) {
        cudaGraph_t graph = NULL;
        cudaStreamEndCapture(ce->stream, &graph);
        if (graph != NULL) {
            cudaGraphDestroy(graph);
        }
    }
    for (int i = 0; i < NV_STEP_GRAPHS; i++) {
        graph_destroy(g->cache.slot[i].graph);
    }
    for (int i = 0; i < 2; i++) {
        if (g->blk_ev[i] != NULL) {
            cudaEventDestroy(g->blk_ev[i]);
        }
    }
    if (g->host_blk != NULL) {
        cudaFreeHost(g->host_blk);
    }
    if (g->out != NULL) {
        cudaFreeHost(g->out);
    }
    if (g->dev_blk != NULL) {
        cudaFree(g->dev_blk);
    }
    if (clean) {
        cudaGetLastError();
    }
    nv_free(ctx, g);
    ce->graphs = NULL;
}

/* The exec's step state, made at its first step: pinned block slots, the device block. */
static nvlm_status graphs_of(nv_exec *ex, cuda_graphs **out)
{
    cuda_exec *ce = cuda_ex(ex);
    if (ce->graphs != NULL) {
        *out = ce->graphs;
        return NVLM_OK;
    }
    *out = NULL;
    cuda_graphs *g = (cuda_graphs *)nv_calloc(ex->be->ctx, 1, sizeof *g);
    if (g == NULL) {
        return nv_error(ex->err_handle, NVLM_ERR_OUT_OF_MEMORY, "out of memory for step graphs");
    }
    ce->graphs = g;
    void *eh = ex->err_handle;
    nvlm_status st = cuda_status(eh, cudaHostAlloc((void **)&g->host_blk,
                                                   2 * sizeof(nv_step_block),
                                                   cudaHostAllocDefault),
                                 "pinned step block");
    if (st == NVLM_OK) {
        st = cuda_status(eh, cudaMalloc((void **)&g->dev_blk, sizeof(nv_step_block)),
                         "device step block");
    }
    for (int i = 0; i < 2 && st == NVLM_OK; i++) {
        st = cuda_status(eh, cudaEventCreateWithFlags(&g->blk_ev[i], cudaEventDisableTiming),
                         "step event");
    }
    if (st != NVLM_OK) {
        cuda_graphs_free(ex->be->ctx, ce);
        return st;
    }
    *out = g;
    return NVLM_OK;
}

/* The pinned download area holds at least `bytes` (grown only at a key's first steps). */
static nvlm_status out_reserve(nv_exec *ex, cuda_graphs *g, size_t bytes)
{
    if (bytes <= g->out_cap) {
        return NVLM_OK;
    }
    cuda_exec *ce = cuda_ex(ex);
    size_t span = (bytes + 63) / 64 * 64 + 64 * GRAPH_MAX_DL;
    NVLM_TRY(cuda_status(ex->err_handle, cudaStreamSynchronize(ce->stream), "step download"));
    if (g->out != NULL) {
        cudaFreeHost(g->out);
        g->out = NULL;
        g->out_cap = 0;
    }
    ce->gen++; /* graphs downloading into the old area are stale */
    NVLM_TRY(cuda_status(ex->err_handle, cudaHostAlloc((void **)&g->out, span,
                                                       cudaHostAllocDefault),
                         "pinned step download"));
    g->out_cap = span;
    return NVLM_OK;
}

static nvlm_status cuda_step_begin(nv_exec *ex, const nv_step *s)
{
    void *eh = ex->err_handle;
    cuda_graphs *g = NULL;
    NVLM_TRY(cuda_enter(ex));
    NVLM_TRY(graphs_of(ex, &g));
    if (g->active) {
        return nv_error(eh, NVLM_ERR_INTERNAL, "step_begin inside a step");
    }
    if (!nv_step_block_fill(s, &g->blk)) {
        return nv_error(eh, NVLM_ERR_INTERNAL, "decode step does not fit its key");
    }
    if (s->n_seq != 1 || s->key.paged != 0 || s->key.kv_rows > INT32_MAX) {
        return NVLM_ERR_UNSUPPORTED; /* batched or paged steps: not yet on this backend */
    }
    cuda_exec *ce = cuda_ex(ex);
    if (ce->cb->debug_sync) {
        /* NVLM_CUDA_SYNC synchronises after every op, which a capture cannot hold (and a
         * replay would not say which kernel failed): the pass runs op by op. */
        return NVLM_ERR_UNSUPPORTED;
    }
    NVLM_TRY(out_reserve(ex, g, s->out_bytes));
    void *drop = NULL;
    nv_graph_slot *slot = nv_graph_find(&g->cache, &s->key, &drop);
    graph_destroy(drop);
    int mode = nv_graph_mode(slot, ce->gen, &drop);
    graph_destroy(drop);
    /* The previous use of this pinned slot was two steps ago: its copy is long complete. */
    int i = g->blk_i;
    g->blk_i ^= 1;
    NVLM_TRY(cuda_status(eh, cudaEventSynchronize(g->blk_ev[i]), "step block"));
    memcpy(&g->host_blk[i], &g->blk, sizeof g->blk);
    NVLM_TRY(cuda_status(eh, cudaMemcpyAsync(g->dev_blk, &g->host_blk[i], sizeof g->blk,
                                             cudaMemcpyHostToDevice, ce->stream),
                         "step block"));
    NVLM_TRY(cuda_status(eh, cudaEventRecord(g->blk_ev[i], ce->stream), "step block"));
    if (mode == NV_STEP_CAPTURE) {
        cudaError_t e = cudaStreamBeginCapture(ce->stream, cudaStreamCaptureModeThreadLocal);
        if (e != cudaSuccess) {
            cudaGetLastError();
            nv_graph_capture_failed(slot);
            nv_log(ex->be->ctx, NVLM_LOG_WARN,
                   "CUDA graph capture of the decode step cannot start (%s); these steps run "
                   "without a graph", cudaGetErrorString(e));
            mode = NV_STEP_EAGER;
        }
    }
    g->slot = slot;
    g->mode = mode;
    g->active = true;
    g->n_ops = 0;
    g->sig = NV_SIG_SEED;
    g->broken = false;
    g->why[0] = '\0';
    g->n_dl = 0;
    g->out_used = 0;
    return NVLM_OK;
}

static nvlm_status cuda_step_end(nv_exec *ex, bool ok, bool *redo)
{
    *redo = false;
    cuda_exec *ce = cuda_ex(ex);
    cuda_graphs *g = ce->graphs;
    if (g == NULL || !g->active) {
        return nv_error(ex->err_handle, NVLM_ERR_INTERNAL, "step_end without step_begin");
    }
    g->active = false;
    nvlm_status entered = cuda_enter(ex);
    if (entered != NVLM_OK) {
        if (g->mode == NV_STEP_CAPTURE) {
            /* A stream left capturing refuses all later work (and its exec's teardown): the
             * capture ends whatever else failed; the key stays WARM and captures next time. */
            cudaGraph_t graph = NULL;
            cudaStreamEndCapture(ce->stream, &graph);
            if (graph != NULL) {
                cudaGraphDestroy(graph);
            }
        }
        return entered;
    }
    nv_graph_slot *slot = g->slot;
    if (g->mode == NV_STEP_EAGER) {
        if (ok) {
            nv_graph_ran_eager(slot);
            g->stats.eager++;
        }
        return NVLM_OK;
    }
    cudaGraphExec_t exec = NULL;
    if (g->mode == NV_STEP_CAPTURE) {
        cudaGraph_t graph = NULL;
        cudaError_t e = cudaStreamEndCapture(ce->stream, &graph);
        if (e == cudaSuccess && ok && !g->broken) {
            e = cudaGraphInstantiate(&exec, graph, 0);
        }
        if (graph != NULL) {
            cudaGraphDestroy(graph);
        }
        if (e != cudaSuccess || !ok || g->broken || exec == NULL) {
            const char *why = g->broken      ? g->why
                              : e != cudaSuccess ? cudaGetErrorString(e)
                                                 : "an op failed while capturing";
            nv_log(ex->be->ctx, NVLM_LOG_WARN,
                   "CUDA graph capture of the decode step failed (%s); these steps run "
                   "without a graph", why);
            if (exec != NULL) {
                cudaGraphExecDestroy(exec);
            }
            cudaGetLastError();
            nv_graph_capture_failed(slot);
            g->stats.capture_failures++;
            g->stats.redos++;
            *redo = true;
            return NVLM_OK;
        }
        nv_graph_captured(slot, (void *)exec, g->n_ops, g->sig, ce->gen);
        g->stats.captures++;
    } else {
        if (!ok) {
            return NVLM_OK; /* nothing was launched; the pipeline's error stands */
        }
        void *drop = NULL;
        uint64_t sig = g->broken ? ~slot->sig : g->sig;
        if (!nv_graph_replay_check(slot, g->n_ops, sig, &drop)) {
            graph_destroy(drop);
            g->stats.redos++;
            *redo = true;
            return NVLM_OK;
        }
        exec = (cudaGraphExec_t)slot->graph;
        g->stats.replays++;
    }
    NVLM_TRY(cuda_status(ex->err_handle, cudaGraphLaunch(exec, ce->stream), "graph launch"));
    if (g->n_dl > 0) {
        NVLM_TRY(cuda_status(ex->err_handle, cudaStreamSynchronize(ce->stream), "step download"));
        for (int i = 0; i < g->n_dl; i++) {
            memcpy(g->dl[i].host, g->out + g->dl[i].off, g->dl[i].bytes);
        }
    }
    return NVLM_OK;
}

extern "C" void nv_cuda_step_stats_get(nv_exec *ex, nv_cuda_step_stats *out)
{
    cuda_graphs *g = cuda_ex(ex)->graphs;
    if (g != NULL) {
        *out = g->stats;
    } else {
        memset(out, 0, sizeof *out);
    }
}

nv_backend_ops cuda_graph_ops(const nv_backend_ops *base)
{
    nv_backend_ops o = *base;
    o.alloc = w_alloc;
    o.alloc_kv = w_alloc_kv;
    o.free = w_free;
    o.upload = w_upload;
    o.download = w_download;
    o.copy = w_copy;
    o.copy_2d = w_copy_2d;
    o.zero = w_zero;
    o.sync = w_sync;
    o.matmul = w_matmul;
    o.rmsnorm = w_rmsnorm;
    o.rows_sumsq = w_rows_sumsq;
    o.rmsnorm_scale = w_rmsnorm_scale;
    o.layernorm = w_layernorm;
    o.rope = w_rope;
    o.attention = w_attention;
    o.gelu = w_gelu;
    o.silu_mul = w_silu_mul;
    o.add_scaled = w_add_scaled;
    o.add_rows = w_add_rows;
    o.rows_copy = w_rows_copy;
    o.store_rows = w_store_rows;
    o.im2col = w_im2col;
    /* the optional fused ops of the decode pass; every op the pass may call is wrapped: one
     * that is not would be captured with this token's values baked in */
    o.add_rmsnorm = base->add_rmsnorm != NULL ? w_add_rmsnorm : NULL;
    o.silu_mul_cat = base->silu_mul_cat != NULL ? w_silu_mul_cat : NULL;
    o.rope_store = base->rope_store != NULL ? w_rope_store : NULL;
    o.step_begin = cuda_step_begin;
    o.step_end = cuda_step_end;
    return o;
}
