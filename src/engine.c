/*
 * engine.c - per-model engine state: picks the backend, has it lay out every weight the
 * pipeline uses (vision, projector, decoder) and frees them. Big matrices stay in the mapped
 * checkpoint on the CPU (no f32 copy); the arena helpers for activations live here too.
 */
#include "engine.h"

#include "fp8.h"
#include "memory_plan.h"
#include "tp/comm.h"

#ifdef NVLM_WITH_CUDA
#include "cuda/cuda_api.h"
#endif

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int cmp_layout(const void *a, const void *b)
{
    return strcmp(((const nv_layout_tensor *)a)->name, ((const nv_layout_tensor *)b)->name);
}

static nvlm_status layout_add(void *u, const nv_layout_tensor *t)
{
    nv_engine *e = u;
    e->layout[e->n_layout++] = *t;
    return NVLM_OK;
}

/* The layout sorted by name, for each tensor's tensor-parallel cut. */
static nvlm_status layout_build(nv_engine *e, const nvlm_model *m)
{
    size_t n = nv_layout_count(&m->cfg);
    e->layout = nv_alloc_array(m->h.ctx, n, sizeof *e->layout);
    if (e->layout == NULL) {
        return nv_error((void *)m, NVLM_ERR_OUT_OF_MEMORY, "out of memory for the layout");
    }
    e->n_layout = 0;
    NVLM_TRY(nv_layout_tensors(&m->cfg, layout_add, e));
    qsort(e->layout, e->n_layout, sizeof *e->layout, cmp_layout);
    return NVLM_OK;
}

/* A buffer of `bytes` owned by the engine until nv_engine_free. */
static void *fp8_buf(nv_engine *e, nvlm_context *ctx, size_t bytes)
{
    if (e->n_fp8_bufs == e->cap_fp8_bufs) {
        size_t cap = e->cap_fp8_bufs ? 2 * e->cap_fp8_bufs : 64;
        void **v = nv_realloc(ctx, e->fp8_bufs, cap * sizeof *v);
        if (v == NULL) {
            return NULL;
        }
        e->fp8_bufs = v;
        e->cap_fp8_bufs = cap;
    }
    void *p = nv_malloc(ctx, bytes == 0 ? 1 : bytes);
    if (p != NULL) {
        e->fp8_bufs[e->n_fp8_bufs++] = p;
    }
    return p;
}

/* Quantize-on-load of one projection (fp8.h): codes and scales in engine-owned buffers. */
static nvlm_status fp8_make(nv_engine *e, const nvlm_model *m, const char *name,
                            const nv_tensor *src, nv_tensor *dst)
{
    void *eh = (void *)m;
    if (src->ndim != 2) {
        return nv_error(eh, NVLM_ERR_SHAPE, "tensor %s: %d dimensions, want 2 for FP8", name,
                        src->ndim);
    }
    int64_t N = src->shape[0], K = src->shape[1];
    uint8_t *q = fp8_buf(e, m->h.ctx, (size_t)N * (size_t)K);
    float *s = q != NULL ? fp8_buf(e, m->h.ctx, (size_t)N * sizeof(float)) : NULL;
    if (s == NULL) {
        return nv_error(eh, NVLM_ERR_OUT_OF_MEMORY, "out of memory quantizing %s to FP8 "
                        "(%lld bytes)", name, (long long)(N * K));
    }
    if (!fp8_quantize(q, s, src->data, src->dtype, N, K)) {
        return nv_error(eh, NVLM_ERR_FORMAT, "tensor %s holds an infinity or NaN: it cannot "
                        "be quantized to FP8", name);
    }
    *dst = *src;
    dst->dtype = NV_F8_E4M3;
    dst->data = q;
    dst->scale = s;
    return NVLM_OK;
}

/* An FP8 projection as the checkpoint stores it: codes used in place after a scan for NaN
 * codes (one read of the bytes), scales expanded to one f32 per row. */
static nvlm_status fp8_stored(nv_engine *e, const nvlm_model *m, const char *name,
                              nv_tensor *t)
{
    void *eh = (void *)m;
    char sname[NV_LAYOUT_NAME_MAX + 8];
    snprintf(sname, sizeof sname, "%s_scale", name);
    const nv_weight *sw = nv_model_weight(m, sname);
    int64_t N = t->shape[0];
    if (t->ndim != 2 || sw == NULL || sw->t.data == NULL || !fp8_scale_ok(&sw->t, N)) {
        return nv_error(eh, NVLM_ERR_FORMAT, "FP8 tensor %s: missing or malformed %s", name,
                        sname);
    }
    int64_t bad = fp8_find_nan(t->data, (size_t)N * (size_t)t->shape[1]);
    if (bad >= 0) {
        return nv_error(eh, NVLM_ERR_FORMAT, "FP8 tensor %s holds a NaN code (0x%02X) at "
                        "element %lld", name, ((const uint8_t *)t->data)[bad], (long long)bad);
    }
    float *s = fp8_buf(e, m->h.ctx, (size_t)N * sizeof(float));
    if (s == NULL) {
        return nv_error(eh, NVLM_ERR_OUT_OF_MEMORY, "out of memory for the scales of %s", name);
    }
    if (!fp8_scale_expand(s, &sw->t, N)) {
        return nv_error(eh, NVLM_ERR_FORMAT, "tensor %s holds a scale that is not finite and "
                        "positive", sname);
    }
    t->scale = s;
    return NVLM_OK;
}

/* The checkpoint tensor `name` after eng_load's checks, into *out. */
static nvlm_status eng_checked(const nvlm_model *m, const char *name, int64_t nelem,
                               int64_t rows, const nv_weight **out)
{
    void *eh = (void *)m;
    const nv_weight *w = nv_model_weight(m, name);
    if (w == NULL) {
        return nv_error(eh, NVLM_ERR_SHAPE, "missing tensor %s", name);
    }
    if (nv_tensor_nelem(&w->t) != nelem || (rows >= 0 && w->t.shape[0] != rows) ||
        w->t.data == NULL) {
        return nv_error(eh, NVLM_ERR_SHAPE, "tensor %s: %lld elements, want %lld", name,
                        (long long)nv_tensor_nelem(&w->t), (long long)nelem);
    }
    if (w->t.dtype != NV_BF16 && w->t.dtype != NV_F16 && w->t.dtype != NV_F32 &&
        w->t.dtype != NV_F8_E4M3) {
        return nv_error(eh, NVLM_ERR_SHAPE, "tensor %s: dtype %s, want bf16/f16/f32", name,
                        nv_dtype_name(w->t.dtype));
    }
    *out = w;
    return NVLM_OK;
}

nvlm_status eng_load_group(nv_engine *e, const nvlm_model *m, const char *const *names,
                           const int64_t *nelem, const int64_t *rows, int n, nv_bweight *out,
                           bool *grouped)
{
    nv_tensor srcs[ENG_GROUP_MAX];
    *grouped = false;
    memset(out, 0, sizeof *out);
    if (e->be->ops->weight_load_group == NULL || n < 1 || n > ENG_GROUP_MAX) {
        return NVLM_OK;
    }
    for (int i = 0; i < n; i++) {
        const nv_weight *w = NULL;
        NVLM_TRY(eng_checked(m, names[i], nelem[i], rows[i], &w));
        /* FP8 weights (stored or quantized at load) keep their own layout. */
        if (w->t.dtype == NV_F8_E4M3 || (m->quantize_fp8 && fp8_is_projection(names[i])) ||
            (i > 0 && w->t.dtype != srcs[0].dtype)) {
            return NVLM_OK;
        }
        srcs[i] = w->t;
    }
    return e->be->ops->weight_load_group(e->be, srcs, n, out, grouped, (void *)m);
}

nvlm_status eng_load(nv_engine *e, const nvlm_model *m, const char *name, int64_t nelem,
                     int64_t rows, nv_bweight *out)
{
    void *eh = (void *)m;
    const nv_weight *w = NULL;
    NVLM_TRY(eng_checked(m, name, nelem, rows, &w));
    nv_layout_tensor key;
    snprintf(key.name, sizeof key.name, "%s", name);
    const nv_layout_tensor *lt = bsearch(&key, e->layout, e->n_layout, sizeof key, cmp_layout);
    nv_tensor src = w->t;
    if (w->t.dtype == NV_F8_E4M3) {
        NVLM_TRY(fp8_stored(e, m, name, &src));
    } else if (m->quantize_fp8 && fp8_is_projection(name)) {
        NVLM_TRY(fp8_make(e, m, name, &w->t, &src));
    }
    NVLM_TRY(e->be->ops->weight_load(e->be, &src, lt != NULL ? &lt->tp : NULL, out, eh));
    if (e->progress == NULL) {
        return NVLM_OK;
    }
    /* the tensor as the checkpoint stores it: progress moves by bytes laid out (uploaded, for
     * a device backend) */
    return nv_progress_add(e->progress, (uint64_t)nv_tensor_nelem(&w->t) *
                                            nv_dtype_size(w->t.dtype), eh);
}

void eng_unload(nv_engine *e, nv_bweight *w)
{
    if (w->t.data != NULL) {
        e->be->ops->weight_free(e->be, w);
    }
}

void nv_engine_free(nvlm_model *m)
{
    if (m == NULL || m->engine == NULL) {
        return;
    }
    nv_engine *e = m->engine;
    if (e->be != NULL) {
        const nv_backend_ops *ops = e->be->ops;
        int saved = ops->thread_enter != NULL ? ops->thread_enter(e->be) : 0;
        dec_free(e);
        proj_free(e);
        vit_free(e);
        if (ops->thread_leave != NULL) {
            ops->thread_leave(e->be, saved);
        }
        e->be->ops->destroy(e->be);
    }
    for (size_t i = 0; i < e->n_fp8_bufs; i++) {
        nv_free(m->h.ctx, e->fp8_bufs[i]);
    }
    nv_free(m->h.ctx, e->fp8_bufs);
    nv_free(m->h.ctx, e->layout);
    nv_free(m->h.ctx, e);
    m->engine = NULL;
}

/* One backend of the context's kind: the CPU, or the CUDA device of rank r with its weight
 * slab of `slab` bytes reserved. */
static nvlm_status one_backend(nvlm_model *m, int r, uint64_t slab, nv_backend **out)
{
    nvlm_context *ctx = m->h.ctx;
#ifdef NVLM_WITH_CUDA
    if (ctx->backend == NVLM_BACKEND_CUDA) {
        /* Its GEMMs are bf16 x bf16 whatever the precision (docs/cuda.md). */
        nvlm_status st = nv_backend_cuda_create(ctx, ctx->devices[r], out);
        if (st != NVLM_OK) {
            return nv_error_copy(m, ctx, st);
        }
        (*out)->precision = m->precision;
        st = nv_cuda_weight_slab(*out, (size_t)slab, m);
        if (st != NVLM_OK) {
            (*out)->ops->destroy(*out);
            *out = NULL;
            return st;
        }
        nv_engine *e = m->engine;
        e->upload_ranks[e->n_upload_ranks++] = *out;
        return NVLM_OK;
    }
#endif
    (void)r;
    (void)slab;
    nvlm_status st = nv_backend_cpu_create(ctx, out);
    if (st != NVLM_OK) {
        return nv_error(m, st, "cannot create the CPU backend");
    }
    /* The fast precision: bf16 GEMM inputs, and a bf16 KV cache unless a session asks. */
    (*out)->precision = m->precision;
    if (m->precision == NVLM_PRECISION_FAST) {
        (*out)->kv_default = NV_BF16;
    }
    return NVLM_OK;
}

/* The model's communicator: NCCL between distinct GPUs (one per model, its own stream per
 * rank); NULL otherwise: each session then makes a local one (staged through host memory for
 * device ranks). Without libnccl, NULL too, with a warning. */
static nvlm_status model_comm(nvlm_model *m, struct tp_comm **out)
{
    *out = NULL;
#ifdef NVLM_WITH_CUDA
    nvlm_context *ctx = m->h.ctx;
    if (ctx->backend != NVLM_BACKEND_CUDA) {
        return NVLM_OK;
    }
    for (int a = 0; a < ctx->tp_size; a++) {
        for (int b = a + 1; b < ctx->tp_size; b++) {
            if (ctx->devices[a] == ctx->devices[b]) {
                return NVLM_OK;
            }
        }
    }
    nvlm_status st = nv_tp_comm_nccl_create(ctx, ctx->tp_size, ctx->devices, NULL, m, out);
    if (st == NVLM_ERR_UNSUPPORTED) {
        nv_log(ctx, NVLM_LOG_WARN, "%s; tensor-parallel collectives go through host memory",
               nvlm_last_error(m));
        nv_clear(m);
        st = NVLM_OK;
    }
    return st;
#else
    (void)m;
    return NVLM_OK;
#endif
}

/* The backend, or ctx->tp_size rank backends under the tensor-parallel backend; slab: each
 * rank's weight bytes (memory_plan.h). */
static nvlm_status make_backend(nvlm_model *m, const uint64_t *slab, nv_backend **out)
{
    nvlm_context *ctx = m->h.ctx;
    int size = ctx->tp_size;
    if (size <= 1) {
        return one_backend(m, 0, slab[0], out);
    }
    nv_backend **ranks = nv_calloc(ctx, (size_t)size, sizeof *ranks);
    if (ranks == NULL) {
        return nv_error(m, NVLM_ERR_OUT_OF_MEMORY, "out of memory for %d ranks", size);
    }
    nvlm_status st = NVLM_OK;
    for (int r = 0; r < size && st == NVLM_OK; r++) {
        st = one_backend(m, r, slab[r], &ranks[r]);
    }
    if (st != NVLM_OK) {
        for (int r = 0; r < size; r++) {
            if (ranks[r] != NULL) {
                ranks[r]->ops->destroy(ranks[r]);
            }
        }
        m->engine->n_upload_ranks = 0;
        nv_free(ctx, ranks);
        return st;
    }
    struct tp_comm *shared = NULL;
    st = model_comm(m, &shared);
    if (st != NVLM_OK) {
        for (int r = 0; r < size; r++) {
            ranks[r]->ops->destroy(ranks[r]);
        }
        nv_free(ctx, ranks);
        return st;
    }
    st = nv_backend_tp_create(ctx, &m->cfg, ranks, size, shared, m, out);
    nv_free(ctx, ranks);
    return st;
}

/* Bytes of the checkpoint tensors eng_load lays out: every tensor of the layout, the tied
 * lm_head as a second pass over the embeddings (the total of the load progress). */
typedef struct load_walk {
    const nvlm_model *m;
    uint64_t bytes;
} load_walk;

static nvlm_status load_add(void *u, const nv_layout_tensor *t)
{
    load_walk *lw = u;
    const nv_weight *w = nv_model_weight(lw->m, t->name);
    if (w == NULL && t->optional) {
        w = nv_model_weight(lw->m, "language_model.model.embed_tokens.weight");
    }
    if (w != NULL) {
        lw->bytes += (uint64_t)nv_tensor_nelem(&w->t) * nv_dtype_size(w->t.dtype);
    }
    return NVLM_OK;
}

static uint64_t load_bytes(const nvlm_model *m)
{
    load_walk lw = {m, 0};
    nv_layout_tensors(&m->cfg, load_add, &lw);
    return lw.bytes;
}

nvlm_status nv_engine_init(nvlm_model *m)
{
    if (m == NULL || m->mode != NVLM_LOAD_FULL) {
        return NVLM_OK;
    }
    nvlm_context *ctx = m->h.ctx;
#ifndef NVLM_WITH_CUDA
    if (ctx->backend == NVLM_BACKEND_CUDA) {
        return nv_error(m, NVLM_ERR_UNSUPPORTED, "this build has no CUDA backend");
    }
#endif
    nv_engine *e = nv_calloc(ctx, 1, sizeof *e);
    if (e == NULL) {
        return nv_error(m, NVLM_ERR_OUT_OF_MEMORY, "out of memory for the engine");
    }
    m->engine = e;
    /* Before anything goes to a device: does the model fit (memory_plan.h)? Then each rank's
     * weight slab, sized by the same estimator. */
    uint64_t slab[NV_TP_MAX_RANKS];
    memset(slab, 0, sizeof slab);
    nv_mem_plan plan;
    bool lm_head = !m->cfg.llm.tie_word_embeddings ||
                   nv_model_weight(m, "language_model.lm_head.weight") != NULL;
    nvlm_status st = nv_mem_fit_model(m);
    if (st == NVLM_OK && ctx->backend == NVLM_BACKEND_CUDA) {
        st = nv_mem_estimate(&m->cfg, ctx->tp_size, m->weight_type == NVLM_WEIGHTS_FP8,
                             NV_BF16, 0, lm_head, slab, &plan, m);
    }
    if (st == NVLM_OK) {
        st = make_backend(m, slab, &e->be);
    }
    if (st != NVLM_OK) {
        nv_engine_free(m);
        return st;
    }
    nv_progress prog = {m->progress, m->progress_user, NV_LOAD_WEIGHTS_F0, 1.0f, 0, 0,
                        NV_LOAD_WEIGHTS_F0};
    if (m->progress != NULL) {
        prog.total = load_bytes(m);
        e->progress = &prog;
    }
    e->image_token_id = -1;
    if (m->tok != NULL) {
        e->image_token_id = nvlm_tokenizer_token_id(m->tok, "<|vision_pad|>");
    }
    const nv_backend_ops *ops = e->be->ops;
    int saved = ops->thread_enter != NULL ? ops->thread_enter(e->be) : 0;
    st = layout_build(e, m);
    if (st == NVLM_OK) {
        st = vit_init(e, m);
    }
    if (st == NVLM_OK) {
        st = proj_init(e, m);
    }
    if (st == NVLM_OK) {
        st = dec_init(e, m);
    }
    e->progress = NULL;
#ifdef NVLM_WITH_CUDA
    for (int r = 0; r < e->n_upload_ranks; r++) {
        nv_cuda_upload_end(e->upload_ranks[r]);
    }
#endif
    e->n_upload_ranks = 0;
    if (ops->thread_leave != NULL) {
        ops->thread_leave(e->be, saved);
    }
    if (st != NVLM_OK) {
        nv_engine_free(m);
    }
    return st;
}

/* ---- arena ------------------------------------------------------------------------------ */

size_t nv_arena_size(size_t n_floats)
{
    size_t b;
    if (!nv_mul_size(n_floats, sizeof(float), &b) || !nv_add_size(b, 63, &b)) {
        return SIZE_MAX;
    }
    return b & ~(size_t)63;
}

nvlm_status nv_arena_reserve(nv_arena *a, size_t bytes)
{
    if (bytes == SIZE_MAX) {
        return nv_error(a->ex->err_handle, NVLM_ERR_LIMIT, "activation size overflows");
    }
    a->used = 0;
    a->failed = false;
    if (bytes <= a->cap) {
        return NVLM_OK;
    }
    nv_arena_release(a);
    void *p = NULL;
    NVLM_TRY(a->ex->be->ops->alloc(a->ex, bytes, &p));
    a->base = p;
    a->cap = bytes;
    return NVLM_OK;
}

float *nv_arena_floats(nv_arena *a, size_t n)
{
    size_t b = nv_arena_size(n);
    if (a->failed || b == SIZE_MAX || b > a->cap - a->used) {
        a->failed = true;
        return NULL;
    }
    /* Pieces start at 64-byte offsets from a 16-byte aligned base at least. */
    float *p = (float *)(a->base + a->used);
    a->used += b;
    return p;
}

size_t nv_arena_mark(const nv_arena *a)
{
    return a->used;
}

void nv_arena_rewind(nv_arena *a, size_t mark)
{
    a->used = NV_MIN(mark, a->used);
    a->failed = false;
}

void nv_arena_release(nv_arena *a)
{
    if (a->base != NULL) {
        a->ex->be->ops->free(a->ex, a->base);
    }
    a->base = NULL;
    a->cap = 0;
    a->used = 0;
    a->failed = false;
}
