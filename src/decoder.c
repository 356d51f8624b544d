/*
 * decoder.c - Qwen2 decoder (spec §8, §9): token ids (+ image rows spliced over
 * <|vision_pad|>) -> per layer h += o(Attn(RoPE(q, k), v)) over the KV cache, h += down(silu(gate)
 * * up) with RMSNorms before both -> final RMSNorm -> lm_head logits for the last rows.
 * Batched over all new tokens (prefill) or one token (decode); GQA q head h uses kv head
 * h / (heads / kv_heads); causal over the cache; KV cache f32 or bf16, owned by the session.
 */
#include "engine.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#define LLM_PREFIX "language_model."

/* Loads layer l's q|k|v, their biases and gate|up as three grouped weights when the backend
 * groups them (and has silu_mul_cat for the grouped gate|up output); L->grouped says so. */
static nvlm_status dec_group(nv_engine *e, const nvlm_model *m, int l, dec_layer *L)
{
    static const char *const suffix[8] = {
        "self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight",
        "self_attn.q_proj.bias",   "self_attn.k_proj.bias",   "self_attn.v_proj.bias",
        "mlp.gate_proj.weight",    "mlp.up_proj.weight"};
    const dec_weights *w = &e->dec;
    L->grouped = false;
    if (e->be->ops->weight_load_group == NULL || e->be->ops->silu_mul_cat == NULL) {
        return NVLM_OK;
    }
    int64_t D = w->D;
    int64_t HQ = (int64_t)w->n_heads * w->head_dim;
    int64_t KV = (int64_t)w->n_kv_heads * w->head_dim;
    int64_t I = w->I;
    const int64_t nelem[8] = {HQ * D, KV * D, KV * D, HQ, KV, KV, I * D, I * D};
    const int64_t rows[8] = {HQ, KV, KV, HQ, KV, KV, I, I};
    char buf[8][128];
    const char *names[8];
    for (int i = 0; i < 8; i++) {
        snprintf(buf[i], sizeof buf[i], LLM_PREFIX "model.layers.%d.%s", l, suffix[i]);
        names[i] = buf[i];
    }
    bool g0 = false;
    bool g1 = false;
    bool g2 = false;
    nvlm_status st = eng_load_group(e, m, names, nelem, rows, 3, &L->qkv, &g0);
    if (st == NVLM_OK && g0) {
        st = eng_load_group(e, m, names + 3, nelem + 3, rows + 3, 3, &L->qkv_b, &g1);
    }
    if (st == NVLM_OK && g1) {
        st = eng_load_group(e, m, names + 6, nelem + 6, rows + 6, 2, &L->gate_up, &g2);
    }
    L->grouped = st == NVLM_OK && g0 && g1 && g2;
    if (!L->grouped) {
        eng_unload(e, &L->qkv);
        eng_unload(e, &L->qkv_b);
        eng_unload(e, &L->gate_up);
    }
    return st;
}

nvlm_status dec_init(nv_engine *e, const nvlm_model *m)
{
    const nv_llm_config *c = &m->cfg.llm;
    dec_weights *w = &e->dec;
    void *eh = (void *)m;
    w->D = c->hidden_size;
    w->I = c->intermediate_size;
    w->n_layers = c->num_layers;
    w->n_heads = c->num_heads;
    w->n_kv_heads = c->num_kv_heads;
    w->head_dim = c->head_dim;
    w->vocab = c->vocab_size;
    w->max_pos = c->max_position_embeddings;
    w->theta = c->rope_theta;
    w->eps = (float)c->rms_norm_eps;
    w->grouped = false;
    if (w->D <= 0 || w->I <= 0 || w->n_layers <= 0 || w->n_heads <= 0 || w->n_kv_heads <= 0 ||
        w->n_heads % w->n_kv_heads != 0 || w->head_dim <= 0 || w->head_dim % 2 != 0 ||
        w->vocab <= 0 || w->max_pos <= 0 || !(w->theta > 0.0)) {
        return nv_error(eh, NVLM_ERR_UNSUPPORTED, "unsupported llm config");
    }
    int64_t D = w->D;
    int64_t HQ = (int64_t)w->n_heads * w->head_dim;
    int64_t KV = (int64_t)w->n_kv_heads * w->head_dim;
    NVLM_TRY(eng_load(e, m, LLM_PREFIX "model.embed_tokens.weight",
                      (int64_t)w->vocab * D, w->vocab, &w->embed));
    NVLM_TRY(eng_load(e, m, LLM_PREFIX "model.norm.weight", D, D, &w->norm));
    const char *head = LLM_PREFIX "lm_head.weight";
    if (nv_model_weight(m, head) == NULL && c->tie_word_embeddings) {
        head = LLM_PREFIX "model.embed_tokens.weight";
    }
    NVLM_TRY(eng_load(e, m, head, (int64_t)w->vocab * D, w->vocab, &w->lm_head));
    w->layers = nv_calloc(e->be->ctx, (size_t)w->n_layers, sizeof *w->layers);
    if (w->layers == NULL) {
        return nv_error(eh, NVLM_ERR_OUT_OF_MEMORY, "out of memory");
    }
    for (int l = 0; l < w->n_layers; l++) {
        dec_layer *L = &w->layers[l];
        char n[128];
#define DEC_LOAD(field, suffix, nelem, rows)                                               \
    do {                                                                                   \
        snprintf(n, sizeof n, LLM_PREFIX "model.layers.%d.%s", l, suffix);                 \
        NVLM_TRY(eng_load(e, m, n, nelem, rows, &L->field));                               \
    } while (0)
        DEC_LOAD(in_norm, "input_layernorm.weight", D, D);
        DEC_LOAD(post_norm, "post_attention_layernorm.weight", D, D);
        NVLM_TRY(dec_group(e, m, l, L));
        w->grouped = w->grouped || L->grouped;
        if (!L->grouped) {
            DEC_LOAD(q, "self_attn.q_proj.weight", HQ * D, HQ);
            DEC_LOAD(q_b, "self_attn.q_proj.bias", HQ, HQ);
            DEC_LOAD(k, "self_attn.k_proj.weight", KV * D, KV);
            DEC_LOAD(k_b, "self_attn.k_proj.bias", KV, KV);
            DEC_LOAD(v, "self_attn.v_proj.weight", KV * D, KV);
            DEC_LOAD(v_b, "self_attn.v_proj.bias", KV, KV);
            DEC_LOAD(gate, "mlp.gate_proj.weight", (int64_t)w->I * D, w->I);
            DEC_LOAD(up, "mlp.up_proj.weight", (int64_t)w->I * D, w->I);
        }
        DEC_LOAD(o, "self_attn.o_proj.weight", D * HQ, D);
        DEC_LOAD(down, "mlp.down_proj.weight", D * w->I, D);
#undef DEC_LOAD
    }
    return NVLM_OK;
}

void dec_free(nv_engine *e)
{
    dec_weights *w = &e->dec;
    eng_unload(e, &w->embed);
    eng_unload(e, &w->norm);
    eng_unload(e, &w->lm_head);
    if (w->layers != NULL) {
        for (int l = 0; l < w->n_layers; l++) {
            dec_layer *L = &w->layers[l];
            nv_bweight *all[] = {&L->in_norm, &L->post_norm, &L->q, &L->q_b, &L->k, &L->k_b,
                                 &L->v, &L->v_b, &L->o, &L->gate, &L->up, &L->down,
                                 &L->qkv, &L->qkv_b, &L->gate_up};
            for (size_t i = 0; i < NV_ARRAY_LEN(all); i++) {
                eng_unload(e, all[i]);
            }
        }
        nv_free(e->be->ctx, w->layers);
        w->layers = NULL;
    }
}

/* ---- KV cache --------------------------------------------------------------------------- */

nvlm_status dec_kv_init(nv_exec *ex, const dec_weights *w, dec_kv *kv, nv_dtype type,
                        int64_t n_ctx)
{
    memset(kv, 0, sizeof *kv);
    kv->type = type;
    kv->n_layers = w->n_layers;
    kv->n_kv_heads = w->n_kv_heads;
    kv->head_dim = w->head_dim;
    kv->kv_dim = w->n_kv_heads * w->head_dim;
    kv->n_ctx = n_ctx;
    kv->k = nv_calloc(ex->be->ctx, (size_t)w->n_layers, sizeof(void *));
    kv->v = nv_calloc(ex->be->ctx, (size_t)w->n_layers, sizeof(void *));
    if (kv->k == NULL || kv->v == NULL) {
        dec_kv_free(ex, kv);
        return nv_error(ex->err_handle, NVLM_ERR_OUT_OF_MEMORY, "out of memory");
    }
    if (ex->be->kv_reserve_all) {
        nvlm_status st = dec_kv_reserve(ex, kv, n_ctx);
        if (st != NVLM_OK) {
            dec_kv_free(ex, kv);
        }
        return st;
    }
    return NVLM_OK;
}

void dec_kv_free(nv_exec *ex, dec_kv *kv)
{
    for (int l = 0; l < kv->n_layers; l++) {
        if (kv->k != NULL && kv->k[l] != NULL) {
            ex->be->ops->free(ex, kv->k[l]);
        }
        if (kv->v != NULL && kv->v[l] != NULL) {
            ex->be->ops->free(ex, kv->v[l]);
        }
    }
    nv_free(ex->be->ctx, kv->k);
    nv_free(ex->be->ctx, kv->v);
    memset(kv, 0, sizeof *kv);
}

nvlm_status dec_kv_reserve(nv_exec *ex, dec_kv *kv, int64_t rows)
{
    if (rows > kv->n_ctx) {
        return nv_error(ex->err_handle, NVLM_ERR_CONTEXT_FULL,
                        "context full: %lld tokens needed, n_ctx is %lld", (long long)rows,
                        (long long)kv->n_ctx);
    }
    if (rows <= kv->cap) {
        return NVLM_OK;
    }
    int64_t cap = NV_MAX(rows, NV_MAX((int64_t)256, kv->cap * 2));
    cap = ex->be->kv_reserve_all ? kv->n_ctx : NV_MIN(cap, kv->n_ctx);
    size_t row_bytes = (size_t)kv->kv_dim * nv_dtype_size(kv->type);
    size_t bytes;
    if (!nv_mul_size((size_t)cap, row_bytes, &bytes)) {
        return nv_error(ex->err_handle, NVLM_ERR_LIMIT, "KV cache size overflows");
    }
    const nv_backend_ops *op = ex->be->ops;
    nvlm_context *ctx = ex->be->ctx;
    void **nk = nv_calloc(ctx, (size_t)kv->n_layers * 2, sizeof(void *));
    if (nk == NULL) {
        return nv_error(ex->err_handle, NVLM_ERR_OUT_OF_MEMORY, "out of memory");
    }
    nvlm_status st = NVLM_OK;
    for (int i = 0; i < kv->n_layers * 2 && st == NVLM_OK; i++) {
        st = op->alloc_kv(ex, cap, kv->n_kv_heads, kv->head_dim, kv->type, &nk[i]);
    }
    for (int l = 0; l < kv->n_layers && st == NVLM_OK; l++) {
        if (kv->n > 0) {
            st = op->copy(ex, nk[2 * l], kv->k[l], (size_t)kv->n * row_bytes);
            if (st == NVLM_OK) {
                st = op->copy(ex, nk[2 * l + 1], kv->v[l], (size_t)kv->n * row_bytes);
            }
        }
    }
    if (st != NVLM_OK) {
        for (int i = 0; i < kv->n_layers * 2; i++) {
            if (nk[i] != NULL) {
                op->free(ex, nk[i]);
            }
        }
        nv_free(ctx, nk);
        return st;
    }
    for (int l = 0; l < kv->n_layers; l++) {
        if (kv->k[l] != NULL) {
            op->free(ex, kv->k[l]);
            op->free(ex, kv->v[l]);
        }
        kv->k[l] = nk[2 * l];
        kv->v[l] = nk[2 * l + 1];
    }
    nv_free(ctx, nk);
    kv->cap = cap;
    return NVLM_OK;
}

/* ---- forward ---------------------------------------------------------------------------- */

typedef struct dec_sizes {
    size_t h, q, kv, mlp, logits;
} dec_sizes;

static bool dec_sizes_of(const dec_weights *w, int n, int n_logits, dec_sizes *s)
{
    size_t HQ = (size_t)w->n_heads * w->head_dim;
    size_t KV = (size_t)w->n_kv_heads * w->head_dim;
    return n > 0 && n <= DEC_MAX_BATCH && n_logits >= 0 && n_logits <= n &&
           nv_mul_size((size_t)n, (size_t)w->D, &s->h) && nv_mul_size((size_t)n, HQ, &s->q) &&
           nv_mul_size((size_t)n, KV, &s->kv) && nv_mul_size((size_t)n, (size_t)w->I, &s->mlp) &&
           nv_mul_size((size_t)n_logits, (size_t)w->vocab, &s->logits);
}

size_t dec_arena_bytes(const dec_weights *w, int n, int n_logits)
{
    dec_sizes s;
    if (!dec_sizes_of(w, n, n_logits, &s)) {
        return SIZE_MAX;
    }
    /* h, x, a, q, ctx, k, v, g, u, logits; grouped weights: h, x, a, q|k|v, ctx, gate|up, g,
     * logits (q|k|v and gate|up are one piece each, the next piece is silu_mul_cat's output) */
    size_t parts[] = {s.h, s.h, s.h, s.q, s.q, s.kv, s.kv, s.mlp, s.mlp, s.logits, 0};
    if (w->grouped) {
        size_t ps[] = {s.h, s.h, s.h, s.q + 2 * s.kv, s.q, 2 * s.mlp, s.mlp, s.logits, 0, 0, 0};
        memcpy(parts, ps, sizeof parts);
    }
    size_t total = 0;
    for (size_t i = 0; i < NV_ARRAY_LEN(parts); i++) {
        if (!nv_add_size(total, nv_arena_size(parts[i]), &total)) {
            return SIZE_MAX;
        }
    }
    return total;
}

/* The activations of one pass of n rows (dec_arena_bytes' pieces). Plain weights: q, ctx, k,
 * v, g, u pieces. Grouped: q|k|v rows of QKV (q, k, v are column blocks of it), ctx, gate|up
 * rows of 2 I, then g from silu_mul_cat. */
typedef struct dec_bufs {
    float *h, *x, *a, *q, *ctx, *k, *v, *gu, *u, *g, *lg;
} dec_bufs;

static nvlm_status dec_take(nv_exec *ex, nv_arena *ar, const dec_weights *w, const dec_sizes *s,
                            dec_bufs *b)
{
    int HQ = w->n_heads * w->head_dim;
    int KV = w->n_kv_heads * w->head_dim;
    b->h = nv_arena_floats(ar, s->h);
    b->x = nv_arena_floats(ar, s->h);
    b->a = nv_arena_floats(ar, s->h);
    b->q = nv_arena_floats(ar, w->grouped ? s->q + 2 * s->kv : s->q);
    b->ctx = nv_arena_floats(ar, s->q);
    b->k = w->grouped ? b->q + HQ : nv_arena_floats(ar, s->kv);
    b->v = w->grouped ? b->q + HQ + KV : nv_arena_floats(ar, s->kv);
    b->gu = nv_arena_floats(ar, w->grouped ? 2 * s->mlp : s->mlp);
    b->u = w->grouped ? NULL : nv_arena_floats(ar, s->mlp);
    b->g = w->grouped ? nv_arena_floats(ar, s->mlp) : b->gu;
    b->lg = nv_arena_floats(ar, s->logits);
    if (b->h == NULL || b->x == NULL || b->a == NULL || b->q == NULL || b->ctx == NULL ||
        b->k == NULL || b->v == NULL || b->g == NULL || b->gu == NULL ||
        (b->u == NULL && !w->grouped) || b->lg == NULL) {
        return nv_error(ex->err_handle, NVLM_ERR_INTERNAL, "decoder arena too small");
    }
    return NVLM_OK;
}

/* Decoder layer l on the n rows of b->h at positions pos0..: its K (after RoPE) and V are
 * stored at rows pos0.. of the layer's cache, attention runs over cache rows 0 .. pos0 + n - 1.
 * With add_rmsnorm (fuse), *pend (may be NULL) is the previous layer's MLP output, added to h
 * by this layer's first norm; defer leaves this layer's MLP output in *pend instead of adding
 * it (the next layer's first norm, or the caller, adds it). */
static nvlm_status dec_layer_fwd(nv_exec *ex, const dec_weights *w, int l, dec_kv *kv,
                                 int64_t pos0, int n, const dec_bufs *b, bool defer,
                                 const float **pend)
{
    const nv_backend_ops *op = ex->be->ops;
    const dec_layer *L = &w->layers[l];
    int D = w->D;
    int hd = w->head_dim;
    int HQ = w->n_heads * hd;
    int KV = w->n_kv_heads * hd;
    int ldq = L->grouped ? HQ + 2 * KV : HQ;
    int ldkv = L->grouped ? HQ + 2 * KV : KV;
    float scale = 1.0f / sqrtf((float)hd);
    bool fuse = op->add_rmsnorm != NULL;
    float *h = b->h;
    float *x = b->x;
    float *a = b->a;
    if (fuse) {
        NVLM_TRY(op->add_rmsnorm(ex, h, *pend, NULL, x, &L->in_norm, n, D, w->eps));
        *pend = NULL;
    } else {
        NVLM_TRY(op->rmsnorm(ex, x, D, h, D, &L->in_norm, n, D, D, w->eps));
    }
    if (L->grouped) {
        NVLM_TRY(op->matmul(ex, b->q, x, &L->qkv, &L->qkv_b, n));
    } else {
        NVLM_TRY(op->matmul(ex, b->q, x, &L->q, &L->q_b, n));
        NVLM_TRY(op->matmul(ex, b->k, x, &L->k, &L->k_b, n));
        NVLM_TRY(op->matmul(ex, b->v, x, &L->v, &L->v_b, n));
    }
    NVLM_TRY(op->rope(ex, b->q, ldq, n, w->n_heads, hd, pos0, w->theta));
    if (op->rope_store != NULL) {
        NVLM_TRY(op->rope_store(ex, kv->k[l], kv->type, pos0, b->k, ldkv, n, w->n_kv_heads, hd,
                                w->theta));
    } else {
        NVLM_TRY(op->rope(ex, b->k, ldkv, n, w->n_kv_heads, hd, pos0, w->theta));
        NVLM_TRY(op->store_rows(ex, kv->k[l], kv->type, pos0, b->k, ldkv, (size_t)n, KV));
    }
    NVLM_TRY(op->store_rows(ex, kv->v[l], kv->type, pos0, b->v, ldkv, (size_t)n, KV));
    NVLM_TRY(op->attention(ex, b->ctx, HQ, b->q, ldq, kv->k[l], kv->v[l], KV, kv->type, 1, n,
                           (int)(pos0 + n), w->n_heads, w->n_kv_heads, hd, scale, pos0,
                           NV_TP_LLM_HEADS));
    NVLM_TRY(op->matmul(ex, a, b->ctx, &L->o, NULL, n));
    if (fuse) {
        NVLM_TRY(op->add_rmsnorm(ex, h, a, NULL, x, &L->post_norm, n, D, w->eps));
    } else {
        NVLM_TRY(op->add_scaled(ex, h, a, NULL, n, D));
        NVLM_TRY(op->rmsnorm(ex, x, D, h, D, &L->post_norm, n, D, D, w->eps));
    }
    size_t mlp = (size_t)n * (size_t)w->I;
    if (L->grouped) {
        NVLM_TRY(op->matmul(ex, b->gu, x, &L->gate_up, NULL, n));
        NVLM_TRY(op->silu_mul_cat(ex, b->g, b->gu, n, w->I));
    } else {
        NVLM_TRY(op->matmul(ex, b->g, x, &L->gate, NULL, n));
        NVLM_TRY(op->matmul(ex, b->u, x, &L->up, NULL, n));
        NVLM_TRY(op->silu_mul(ex, b->g, b->g, b->u, mlp));
    }
    NVLM_TRY(op->matmul(ex, a, b->g, &L->down, NULL, n));
    if (fuse && defer) {
        *pend = a;
    } else {
        NVLM_TRY(op->add_scaled(ex, h, a, NULL, n, D));
    }
    return NVLM_OK;
}

/* The head on n rows of h: the final RMSNorm into x, lm_head into lg (n x vocab). */
static nvlm_status dec_head(nv_exec *ex, const dec_weights *w, const dec_bufs *b,
                            const float *h, int n)
{
    const nv_backend_ops *op = ex->be->ops;
    NVLM_TRY(op->rmsnorm(ex, b->x, w->D, h, w->D, &w->norm, n, w->D, w->D, w->eps));
    return op->matmul(ex, b->lg, b->x, &w->lm_head, NULL, n);
}

nvlm_status dec_forward(nv_exec *ex, nv_arena *ar, const dec_weights *w, dec_kv *kv,
                        const int32_t *ids, int n, const float *img, const int32_t *img_pos,
                        const int32_t *img_row, int n_img, int n_logits, float *logits,
                        dec_trace *trace)
{
    const nv_backend_ops *op = ex->be->ops;
    void *eh = ex->err_handle;
    dec_sizes s;
    if (!dec_sizes_of(w, n, n_logits, &s)) {
        return nv_error(eh, NVLM_ERR_INTERNAL, "bad decoder batch %d", n);
    }
    int64_t pos0 = kv->n;
    if (pos0 + n > kv->cap) {
        return nv_error(eh, NVLM_ERR_INTERNAL, "KV cache not reserved");
    }
    for (int i = 0; i < n; i++) {
        if (ids[i] < 0 || ids[i] >= w->vocab) {
            return nv_error(eh, NVLM_ERR_INVALID_ARGUMENT, "token id %d out of range [0, %d)",
                            ids[i], w->vocab);
        }
    }
    int D = w->D;
    dec_bufs b;
    NVLM_TRY(dec_take(ex, ar, w, &s, &b));
    float *h = b.h;
    NVLM_TRY(op->rows_copy(ex, h, NULL, w->embed.t.data, w->embed.t.dtype, ids, (size_t)n, D));
    if (n_img > 0) {
        NVLM_TRY(op->rows_copy(ex, h, img_pos, img, NV_F32, img_row, (size_t)n_img, D));
    }
    if (trace != NULL && trace->embeds != NULL) {
        NVLM_TRY(op->download(ex, trace->embeds, h, s.h * sizeof(float)));
    }
    /* With add_rmsnorm, a layer's MLP output is added to h by the next layer's first norm
     * (pend), unless the trace wants h after every layer. */
    bool defer = trace == NULL || trace->layers == NULL;
    const float *pend = NULL;
    for (int l = 0; l < w->n_layers; l++) {
        NVLM_TRY(dec_layer_fwd(ex, w, l, kv, pos0, n, &b, defer, &pend));
        if (trace != NULL && trace->layers != NULL) {
            NVLM_TRY(op->download(ex, trace->layers + (size_t)l * s.h, h, s.h * sizeof(float)));
        }
    }
    if (pend != NULL) {
        NVLM_TRY(op->add_scaled(ex, h, pend, NULL, n, D));
    }
    if (trace != NULL && trace->final_norm != NULL) {
        NVLM_TRY(op->rmsnorm(ex, b.x, D, h, D, &w->norm, n, D, D, w->eps));
        NVLM_TRY(op->download(ex, trace->final_norm, b.x, s.h * sizeof(float)));
    }
    if (n_logits > 0) {
        NVLM_TRY(dec_head(ex, w, &b, h + (size_t)(n - n_logits) * D, n_logits));
        if (trace != NULL && trace->logits_dev != NULL) {
            NVLM_TRY(op->copy(ex, trace->logits_dev, b.lg, s.logits * sizeof(float)));
        } else {
            NVLM_TRY(op->download(ex, logits, b.lg, s.logits * sizeof(float)));
        }
    }
    NVLM_TRY(op->sync(ex));
    kv->n = pos0 + n;
    return NVLM_OK;
}

nvlm_status dec_stage(nv_exec *ex, nv_arena *ar, const dec_weights *w, dec_kv *kv, int layer,
                      int64_t pos0, int n, const float *in, float *out)
{
    const nv_backend_ops *op = ex->be->ops;
    void *eh = ex->err_handle;
    bool head = layer == w->n_layers;
    dec_sizes s;
    if (layer < 0 || layer > w->n_layers || !dec_sizes_of(w, n, head ? n : 0, &s)) {
        return nv_error(eh, NVLM_ERR_INVALID_ARGUMENT, "bad decoder stage %d of %d rows", layer,
                        n);
    }
    if (!head && (pos0 < 0 || pos0 + n > kv->cap)) {
        return nv_error(eh, NVLM_ERR_INTERNAL, "KV cache not reserved");
    }
    dec_bufs b;
    NVLM_TRY(dec_take(ex, ar, w, &s, &b));
    NVLM_TRY(op->upload(ex, b.h, in, s.h * sizeof(float)));
    if (head) {
        NVLM_TRY(dec_head(ex, w, &b, b.h, n));
        NVLM_TRY(op->download(ex, out, b.lg, s.logits * sizeof(float)));
    } else {
        const float *pend = NULL;
        NVLM_TRY(dec_layer_fwd(ex, w, layer, kv, pos0, n, &b, false, &pend));
        NVLM_TRY(op->download(ex, out, b.h, s.h * sizeof(float)));
    }
    return op->sync(ex);
}
