/*
 * memory_plan.c - the device memory estimator (weights per rank in the CUDA backend's storage,
 * workspace, the activation arena of the largest pass, the KV cache), the fit checks at model
 * load and session creation that compare it with each device's free memory, and the load
 * progress by bytes. The host-side parts of the upload that the CUDA backend calls are in
 * upload_host.c.
 */
#include "memory_plan.h"
#ifdef NVLM_WITH_CUDA
#include "plugin/cuda_plugin.h"
#endif

#include "engine.h"
#include "fp8.h"
#include "tp/plan.h"

#ifdef NVLM_WITH_CUDA
#include "cuda/cuda_api.h"
#endif

#include <stdio.h>
#include <string.h>

/* ---- the estimator ---------------------------------------------------------------------- */

typedef struct weight_walk {
    const nv_config *cfg;
    const tp_plan *plan;         /* NULL at tp_size 1 */
    int size;
    bool fp8;
    bool lm_head_stored;
    uint64_t *rank;              /* size entries */
    bool overflow;
    uint64_t fp8_block;          /* FP8 matmul scratch: the largest widened block (elements) */
    uint64_t fp8_acc_cols;       /* and the widest per-block output row (0: no blocks) */
} weight_walk;

static void add_piece(weight_walk *w, int r, int ndim, const int64_t *shape, nv_dtype st)
{
    nv_dtype dt;
    size_t bytes;
    size_t piece = SIZE_MAX;
    if (nv_mem_weight_store(ndim, shape, st, &dt, &bytes)) {
        piece = nv_slab_piece(bytes);
    }
    if (piece == SIZE_MAX || w->rank[r] > UINT64_MAX - piece) {
        w->overflow = true;
        return;
    }
    w->rank[r] += piece;
    if (dt == NV_F8_E4M3 && ndim == 2) {
        /* the widening path's scratch for this piece, as fp8_gemm.cu sizes it */
        int64_t nc = nv_mem_fp8_block_rows(shape[0], shape[1]);
        w->fp8_block = NV_MAX(w->fp8_block, (uint64_t)nc * (uint64_t)shape[1]);
        if (nc < shape[0]) {
            w->fp8_acc_cols = NV_MAX(w->fp8_acc_cols, (uint64_t)nc);
        }
    }
}

static nvlm_status walk_weight(void *u, const nv_layout_tensor *t)
{
    weight_walk *w = u;
    nv_layout_tensor x = *t;
    if (t->optional) {
        if (!w->lm_head_stored) {
            /* a tied lm_head: the engine loads the embedding table a second time, with the
             * embedding's (replicated) cut */
            x.tp = (nv_tp_cut){NV_TP_WHOLE, false, 1};
        }
    }
    nv_dtype st = w->fp8 && x.ndim == 2 && fp8_is_projection(x.name) ? NV_F8_E4M3 : NV_BF16;
    if (w->plan == NULL) {
        add_piece(w, 0, x.ndim, x.shape, st);
        return NVLM_OK;
    }
    for (int r = 0; r < w->size; r++) {
        tp_slice s = tp_plan_slice(w->plan, r, &x.tp, x.ndim, x.shape);
        if (s.nelem == 0) {
            continue; /* the rank holds none of it (backend_tp.c skips it too) */
        }
        int64_t shape[4];
        memcpy(shape, x.shape, sizeof shape);
        if (!s.whole && s.cols) {
            shape[1] = s.count;
        } else if (!s.whole) {
            shape[0] = (int64_t)s.blocks * s.count;
        }
        add_piece(w, r, x.ndim, shape, st);
    }
    return NVLM_OK;
}

/* Shape-only stage structs from the config, for the arena functions of the stages. */
static void stage_shapes(const nv_config *c, vit_weights *v, proj_weights *p, dec_weights *d)
{
    memset(v, 0, sizeof *v);
    memset(p, 0, sizeof *p);
    memset(d, 0, sizeof *d);
    v->D = c->vision.hidden_size;
    v->I = c->vision.intermediate_size;
    v->n_layers = c->vision.num_layers;
    v->n_heads = c->vision.num_heads;
    v->n_heads_padded = c->vision.num_heads + c->vision.num_dummy_heads;
    v->head_dim = c->vision.head_dim;
    v->patch = c->vision.patch_size;
    v->image = c->vision.image_size;
    int g = v->patch > 0 ? v->image / v->patch : 0;
    v->n_patches = g * g;
    p->in = c->proj_input_size;
    p->hidden = c->proj_hidden_size;
    p->out = c->proj_output_size;
    d->D = c->llm.hidden_size;
    d->I = c->llm.intermediate_size;
    d->n_layers = c->llm.num_layers;
    d->n_heads = c->llm.num_heads;
    d->n_kv_heads = c->llm.num_kv_heads;
    d->head_dim = c->llm.head_dim;
    d->vocab = c->llm.vocab_size;
    d->max_pos = c->llm.max_position_embeddings;
}

static uint64_t max3(uint64_t a, uint64_t b, uint64_t c)
{
    return NV_MAX(a, NV_MAX(b, c));
}

/* Activation arena and the bf16 GEMM-input scratch of the largest pass of one session:
 * a DEC_MAX_BATCH decoder chunk, or one image of the most tiles (session.c's feed: its rows
 * below the vision + projector scratch or the decoder chunk, whichever is larger). fp8_in:
 * the widest FP8 matmul input of the decoder chunk (elements). */
static bool pass_bytes(const nv_config *c, uint64_t *arena, uint64_t *gemm_in,
                       uint64_t *fp8_in)
{
    vit_weights v;
    proj_weights p;
    dec_weights d;
    stage_shapes(c, &v, &p, &d);
    /* the CUDA backend loads q|k|v and gate|up grouped: the larger of the two arenas */
    d.grouped = true;
    int tiles = NV_MAX(1, c->max_dynamic_patch) + (c->use_thumbnail && c->max_dynamic_patch > 1);
    if (v.D <= 0 || v.n_patches <= 0 || p.in < v.D || p.in % v.D != 0) {
        return false;
    }
    int batch = (int)NV_MIN((int64_t)DEC_MAX_BATCH, (int64_t)NV_MAX(1, d.max_pos));
    size_t dec = dec_arena_bytes(&d, batch, 1);
    size_t vit = vit_arena_bytes(&v, tiles);
    size_t proj = proj_arena_bytes(&p, &v, tiles);
    uint64_t rows = (uint64_t)tiles * (uint64_t)(v.n_patches / (p.in / v.D));
    size_t row_bytes = nv_arena_size((size_t)(rows * (uint64_t)d.D));
    if (dec == SIZE_MAX || vit == SIZE_MAX || proj == SIZE_MAX || row_bytes == SIZE_MAX) {
        return false;
    }
    *arena = NV_MAX((uint64_t)dec, (uint64_t)row_bytes + (uint64_t)vit + (uint64_t)proj);
    /* the widest GEMM input of each stage, converted to bf16 (full widths: an upper bound
     * for a row-parallel rank, whose inputs are narrower) */
    uint64_t hp = (uint64_t)v.n_heads_padded * (uint64_t)v.head_dim;
    uint64_t f = 3ull * (uint64_t)v.patch * (uint64_t)v.patch;
    uint64_t vit_rows = (uint64_t)tiles * (uint64_t)(v.n_patches + 1);
    uint64_t vk = NV_MAX(max3((uint64_t)v.D, (uint64_t)v.I, hp), f);
    uint64_t hq = (uint64_t)d.n_heads * (uint64_t)d.head_dim;
    uint64_t dk = max3((uint64_t)d.D, (uint64_t)d.I, hq);
    uint64_t pk = NV_MAX((uint64_t)p.in, (uint64_t)p.hidden);
    *gemm_in = 2 * max3((uint64_t)batch * dk, vit_rows * vk, rows * pk);
    *fp8_in = (uint64_t)batch * dk;
    return true;
}

nvlm_status nv_mem_estimate(const nv_config *cfg, int tp_size, bool fp8, nv_dtype kv_type,
                            int64_t n_ctx, bool lm_head_stored, uint64_t *rank_weights,
                            nv_mem_plan *out, void *err_handle)
{
    memset(out, 0, sizeof *out);
    if (tp_size < 1 || tp_size > NV_TP_MAX_RANKS) {
        return nv_error(err_handle, NVLM_ERR_INVALID_ARGUMENT, "tp_size %d", tp_size);
    }
    tp_plan plan;
    if (tp_size > 1) {
        NVLM_TRY(tp_plan_init(&plan, cfg, tp_size, err_handle));
    }
    uint64_t local[NV_TP_MAX_RANKS];
    uint64_t *rank = rank_weights != NULL ? rank_weights : local;
    memset(rank, 0, (size_t)tp_size * sizeof *rank);
    weight_walk w = {cfg, tp_size > 1 ? &plan : NULL, tp_size, fp8, lm_head_stored, rank, false,
                     0, 0};
    NVLM_TRY(nv_layout_tensors(cfg, walk_weight, &w));
    uint64_t arena = 0;
    uint64_t gemm_in = 0;
    uint64_t fp8_in = 0;
    if (w.overflow || !pass_bytes(cfg, &arena, &gemm_in, &fp8_in)) {
        return nv_error(err_handle, NVLM_ERR_LIMIT, "the model's memory needs overflow");
    }
    out->tp_size = tp_size;
    out->fp8 = fp8;
    for (int r = 0; r < tp_size; r++) {
        out->weights = NV_MAX(out->weights, rank[r]);
        out->weights_all += rank[r];
    }
    /* the scratch buffers as cuda_scratch grows them; the device sampler and its logits; with
     * FP8 weights the FP8 matmul's workspace, quantized input and scales, widened weight block
     * and block output (either path may run) */
    uint64_t batch = (uint64_t)NV_MIN((int64_t)DEC_MAX_BATCH,
                                      (int64_t)NV_MAX(1, cfg->llm.max_position_embeddings));
    out->workspace = NV_MEM_GEMM_WORKSPACE + NV_MEM_ATTN_SCRATCH + NV_MEM_SCRATCH_CAP(gemm_in) +
                     (uint64_t)NV_MAX(0, cfg->llm.vocab_size) * NV_MEM_SAMPLER_BYTES_PER_ID;
    if (fp8) {
        out->workspace += NV_MEM_FP8_WORKSPACE + NV_MEM_SCRATCH_CAP(fp8_in) +
                          NV_MEM_SCRATCH_CAP(batch) * sizeof(float) +
                          NV_MEM_SCRATCH_CAP(w.fp8_block) * 2 +
                          NV_MEM_SCRATCH_CAP(batch * w.fp8_acc_cols) * sizeof(float);
    }
    out->activations = arena;
    int64_t kv_heads = tp_size > 1 ? tp_plan_max_count(&plan, NV_TP_LLM_KV_HEADS)
                                   : cfg->llm.num_kv_heads;
    out->kv_per_token = 2ull * (uint64_t)cfg->llm.num_layers * (uint64_t)kv_heads *
                        (uint64_t)cfg->llm.head_dim * nv_dtype_size(kv_type);
    out->n_ctx = n_ctx > 0 ? n_ctx : cfg->llm.max_position_embeddings;
    out->kv = out->kv_per_token * (uint64_t)out->n_ctx;
    out->headroom = NV_MEM_HEADROOM;
    out->total = out->weights + out->workspace + out->activations + out->kv + out->headroom;
    return NVLM_OK;
}

/* ---- the fit check ---------------------------------------------------------------------- */

void nv_mem_set_probe(nvlm_context *ctx, nv_mem_probe_fn fn, void *user)
{
    ctx->mem_probe = fn;
    ctx->mem_probe_user = user;
}

#ifdef NVLM_WITH_CUDA
/* user: the context, whose CUDA plugin asks the device */
static nvlm_status cuda_probe(void *user, int device, size_t *free_b, size_t *total_b, void *eh)
{
    return nv_cuda_device_memory(user, device, free_b, total_b, eh);
}
#endif

/* The probe of this context: a test's, the CUDA runtime's for the CUDA backend, or none. */
static nv_mem_probe_fn probe_of(const nvlm_context *ctx, void **user)
{
    *user = ctx->mem_probe_user;
    if (ctx->mem_probe != NULL) {
        return ctx->mem_probe;
    }
#ifdef NVLM_WITH_CUDA
    if (ctx->backend == NVLM_BACKEND_CUDA) {
        *user = (void *)ctx;
        return cuda_probe;
    }
#endif
    return NULL;
}

static bool lm_head_stored(const nvlm_model *m)
{
    return !m->cfg.llm.tie_word_embeddings ||
           nv_model_weight(m, "language_model.lm_head.weight") != NULL;
}

/* Remedies for a model that does not fit device `dev` with `free_b` bytes free: the smallest
 * larger tensor-parallel size whose per-rank need fits (or the largest tried), FP8 weights. */
static void remedies(const nvlm_model *m, const nv_mem_plan *cur, int64_t n_ctx, nv_dtype kv,
                     uint64_t free_b, char *buf, size_t cap)
{
    const nv_config *c = &m->cfg;
    nvlm_context *ctx = m->h.ctx;
    size_t len = 0;
    buf[0] = '\0';
    nv_mem_plan p;
    char g[32];
    int best = 0;
    uint64_t best_total = 0;
    for (int t = ctx->tp_size * 2; t <= NV_MIN(64, c->llm.num_heads); t *= 2) {
        if (nv_mem_estimate(c, t, cur->fp8, kv, n_ctx, lm_head_stored(m), NULL, &p, NULL) !=
            NVLM_OK) {
            break;
        }
        best = t;
        best_total = p.total;
        if (p.total <= free_b) {
            break;
        }
    }
    if (best > 0) {
        nv_mem_gib(g, sizeof g, best_total);
        len += (size_t)snprintf(buf + len, cap - len, "; tensor parallelism over %d devices "
                                "(tp_size %d, `--tp %d`) needs %s per device", best, best, best,
                                g);
    }
    if (!cur->fp8 && len < cap &&
        nv_mem_estimate(c, ctx->tp_size, true, kv, n_ctx, lm_head_stored(m), NULL, &p, NULL) ==
            NVLM_OK) {
        nv_mem_gib(g, sizeof g, p.total);
        len += (size_t)snprintf(buf + len, cap - len, "; FP8 weights (weight_type fp8, "
                                "`--weights fp8`) need %s per device", g);
    }
    if (len < cap && ctx->backend_auto) {
        snprintf(buf + len, cap - len, "; or the CPU backend (backend cpu, `--backend cpu`) "
                 "instead of auto");
    }
}

/* Compares, device by device, the ranks' needs (`base` per rank beyond its weights, the
 * weights when with_weights) with the probe's free memory. what: "model" or "session". */
static nvlm_status fit(const nvlm_model *m, const nv_mem_plan *p, const uint64_t *rank_w,
                       bool with_weights, nv_dtype kv, const char *what, void *eh)
{
    nvlm_context *ctx = m->h.ctx;
    void *user;
    nv_mem_probe_fn probe = probe_of(ctx, &user);
    if (probe == NULL) {
        return NVLM_OK;
    }
    int tp = ctx->tp_size;
    uint64_t base = p->workspace + p->activations + p->kv;
    for (int r = 0; r < tp; r++) {
        int dev = ctx->devices[r];
        bool seen = false;
        for (int q = 0; q < r && !seen; q++) {
            seen = ctx->devices[q] == dev;
        }
        if (seen) {
            continue;
        }
        uint64_t need = p->headroom;
        uint64_t weights = 0;
        int ranks = 0;
        for (int q = r; q < tp; q++) {
            if (ctx->devices[q] == dev) {
                weights += with_weights ? rank_w[q] : 0;
                need += base;
                ranks++;
            }
        }
        need += weights;
        size_t free_b = 0;
        size_t total_b = 0;
        NVLM_TRY(probe(user, dev, &free_b, &total_b, eh));
        nv_log(ctx, NVLM_LOG_INFO, "%s on CUDA device %d: needs %.2f GiB, %.2f GiB free", what,
               dev, (double)need / (double)(1ull << 30), (double)free_b / (double)(1ull << 30));
        if (need <= free_b) {
            continue;
        }
        char a[32], b[32], t[32], w[32], s[32], k[32], hr[32], more[512];
        nv_mem_gib(hr, sizeof hr, p->headroom);
        nv_mem_gib(a, sizeof a, need);
        nv_mem_gib(b, sizeof b, free_b);
        nv_mem_gib(t, sizeof t, total_b);
        nv_mem_gib(w, sizeof w, weights);
        nv_mem_gib(s, sizeof s, (p->workspace + p->activations) * (uint64_t)ranks);
        nv_mem_gib(k, sizeof k, p->kv * (uint64_t)ranks);
        if (with_weights) {
            remedies(m, p, p->n_ctx, kv, free_b, more, sizeof more);
            return nv_error(eh, NVLM_ERR_OUT_OF_MEMORY, "the %s needs %s, device %d has %s "
                            "free (of %s): weights %s, workspace and activations %s, KV cache "
                            "for %lld tokens %s, headroom %s%s", what, a, dev, b, t, w, s,
                            (long long)p->n_ctx, k, hr, more);
        }
        /* a session: how many tokens of context would fit */
        uint64_t fixed = need - p->kv * (uint64_t)ranks;
        uint64_t per = p->kv_per_token * (uint64_t)ranks;
        uint64_t fits = free_b > fixed && per > 0 ? (free_b - fixed) / per : 0;
        return nv_error(eh, NVLM_ERR_OUT_OF_MEMORY, "the %s needs %s, device %d has %s free "
                        "(of %s): KV cache for n_ctx %lld tokens %s, workspace and activations "
                        "%s, headroom %s; an n_ctx of at most %llu fits, or use more "
                        "tensor-parallel ranks (tp_size, `--tp N`)", what, a, dev, b, t,
                        (long long)p->n_ctx, k, s, hr, (unsigned long long)fits);
    }
    return NVLM_OK;
}

nvlm_status nv_mem_fit_model(const nvlm_model *m)
{
    nvlm_context *ctx = m->h.ctx;
    void *user;
    if (probe_of(ctx, &user) == NULL) {
        return NVLM_OK;
    }
    uint64_t rank_w[NV_TP_MAX_RANKS];
    nv_mem_plan p;
    int64_t n = NV_MIN((int64_t)DEC_MAX_BATCH, (int64_t)m->cfg.llm.max_position_embeddings);
    void *eh = (void *)m;
    NVLM_TRY(nv_mem_estimate(&m->cfg, ctx->tp_size, m->weight_type == NVLM_WEIGHTS_FP8, NV_BF16,
                             n, lm_head_stored(m), rank_w, &p, eh));
    return fit(m, &p, rank_w, true, NV_BF16, "model", eh);
}

nvlm_status nv_mem_fit_session(const nvlm_model *m, int64_t n_ctx, nv_dtype kv_type,
                               void *err_handle)
{
    nvlm_context *ctx = m->h.ctx;
    void *user;
    if (probe_of(ctx, &user) == NULL) {
        return NVLM_OK;
    }
    nv_mem_plan p;
    NVLM_TRY(nv_mem_estimate(&m->cfg, ctx->tp_size, m->weight_type == NVLM_WEIGHTS_FP8,
                             kv_type, n_ctx, lm_head_stored(m), NULL, &p, err_handle));
    return fit(m, &p, NULL, false, kv_type, "session", err_handle);
}

/* ---- load progress ---------------------------------------------------------------------- */

nvlm_status nv_progress_add(nv_progress *p, uint64_t bytes, void *err_handle)
{
    p->done = p->total - NV_MIN(p->total, p->done) > bytes ? p->done + bytes : p->total;
    if (p->fn == NULL) {
        return NVLM_OK;
    }
    double part = p->total > 0 ? (double)p->done / (double)p->total : 1.0;
    float f = p->f0 + (float)((double)(p->f1 - p->f0) * part);
    bool end = p->done >= p->total;
    if (!end && f - p->last < 1.0f / 512.0f) {
        return NVLM_OK;
    }
    if (end && p->last >= p->f1) {
        return NVLM_OK;
    }
    p->last = end ? p->f1 : f;
    if (p->fn(p->user, p->last) != 0) {
        return nv_error(err_handle, NVLM_ERR_CANCELLED,
                        "model load cancelled by the progress callback");
    }
    return NVLM_OK;
}
