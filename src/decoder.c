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
        DEC_LOAD(q, "self_attn.q_proj.weight", HQ * D, HQ);
        DEC_LOAD(q_b, "self_attn.q_proj.bias", HQ, HQ);
        DEC_LOAD(k, "self_attn.k_proj.weight", KV * D, KV);
        DEC_LOAD(k_b, "self_attn.k_proj.bias", KV, KV);
        DEC_LOAD(v, "self_attn.v_proj.weight", KV * D, KV);
        DEC_LOAD(v_b, "self_attn.v_proj.bias", KV, KV);
        DEC_LOAD(o, "self_attn.o_proj.weight", D * HQ, D);
        DEC_LOAD(gate, "mlp.gate_proj.weight", (int64_t)w->I * D, w->I);
        DEC_LOAD(up, "mlp.up_proj.weight", (int64_t)w->I * D, w->I);
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
                                 &L->v, &L->v_b, &L->o, &L->gate, &L->up, &L->down};
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
    /* h, x, a, q, ctx, k, v, g, u, logits */
    size_t parts[] = {s.h, s.h, s.h, s.q, s.q, s.kv, s.kv, s.mlp, s.mlp, s.logits};
    size_t total = 0;
    for (size_t i = 0; i < NV_ARRAY_LEN(parts); i++) {
        if (!nv_add_size(total, nv_arena_size(parts[i]), &total)) {
            return SIZE_MAX;
        }
    }
    return total;
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
    int hd = w->head_dim;
    int HQ = w->n_heads * hd;
    int KV = w->n_kv_heads * hd;
    float *h = nv_arena_floats(ar, s.h);
    float *x = nv_arena_floats(ar, s.h);
    float *a = nv_arena_floats(ar, s.h);
    float *q = nv_arena_floats(ar, s.q);
    float *ctx = nv_arena_floats(ar, s.q);
    float *k = nv_arena_floats(ar, s.kv);
    float *v = nv_arena_floats(ar, s.kv);
    float *g = nv_arena_floats(ar, s.mlp);
    float *u = nv_arena_floats(ar, s.mlp);
    float *lg = nv_arena_floats(ar, s.logits);
    if (h == NULL || x == NULL || a == NULL || q == NULL || ctx == NULL || k == NULL ||
        v == NULL || g == NULL || u == NULL || lg == NULL) {
        return nv_error(eh, NVLM_ERR_INTERNAL, "decoder arena too small");
    }
    NVLM_TRY(op->rows_copy(ex, h, NULL, w->embed.t.data, w->embed.t.dtype, ids, (size_t)n, D));
    if (n_img > 0) {
        NVLM_TRY(op->rows_copy(ex, h, img_pos, img, NV_F32, img_row, (size_t)n_img, D));
    }
    if (trace != NULL && trace->embeds != NULL) {
        NVLM_TRY(op->download(ex, trace->embeds, h, s.h * sizeof(float)));
    }
    float scale = 1.0f / sqrtf((float)hd);
    for (int l = 0; l < w->n_layers; l++) {
        const dec_layer *L = &w->layers[l];
        NVLM_TRY(op->rmsnorm(ex, x, D, h, D, &L->in_norm, n, D, D, w->eps));
        NVLM_TRY(op->matmul(ex, q, x, &L->q, &L->q_b, n));
        NVLM_TRY(op->matmul(ex, k, x, &L->k, &L->k_b, n));
        NVLM_TRY(op->matmul(ex, v, x, &L->v, &L->v_b, n));
        NVLM_TRY(op->rope(ex, q, HQ, n, w->n_heads, hd, pos0, w->theta));
        NVLM_TRY(op->rope(ex, k, KV, n, w->n_kv_heads, hd, pos0, w->theta));
        NVLM_TRY(op->store_rows(ex, kv->k[l], kv->type, pos0, k, KV, (size_t)n, KV));
        NVLM_TRY(op->store_rows(ex, kv->v[l], kv->type, pos0, v, KV, (size_t)n, KV));
        NVLM_TRY(op->attention(ex, ctx, HQ, q, HQ, kv->k[l], kv->v[l], KV, kv->type, 1, n,
                               (int)(pos0 + n), w->n_heads, w->n_kv_heads, hd, scale, pos0,
                               NV_TP_LLM_HEADS));
        NVLM_TRY(op->matmul(ex, a, ctx, &L->o, NULL, n));
        NVLM_TRY(op->add_scaled(ex, h, a, NULL, n, D));
        NVLM_TRY(op->rmsnorm(ex, x, D, h, D, &L->post_norm, n, D, D, w->eps));
        NVLM_TRY(op->matmul(ex, g, x, &L->gate, NULL, n));
        NVLM_TRY(op->matmul(ex, u, x, &L->up, NULL, n));
        NVLM_TRY(op->silu_mul(ex, g, g, u, s.mlp));
        NVLM_TRY(op->matmul(ex, a, g, &L->down, NULL, n));
        NVLM_TRY(op->add_scaled(ex, h, a, NULL, n, D));
        if (trace != NULL && trace->layers != NULL) {
            NVLM_TRY(op->download(ex, trace->layers + (size_t)l * s.h, h, s.h * sizeof(float)));
        }
    }
    if (trace != NULL && trace->final_norm != NULL) {
        NVLM_TRY(op->rmsnorm(ex, x, D, h, D, &w->norm, n, D, D, w->eps));
        NVLM_TRY(op->download(ex, trace->final_norm, x, s.h * sizeof(float)));
    }
    if (n_logits > 0) {
        size_t first = (size_t)(n - n_logits) * D;
        NVLM_TRY(op->rmsnorm(ex, x, D, h + first, D, &w->norm, n_logits, D, D, w->eps));
        NVLM_TRY(op->matmul(ex, lg, x, &w->lm_head, NULL, n_logits));
        NVLM_TRY(op->download(ex, logits, lg, s.logits * sizeof(float)));
    }
    NVLM_TRY(op->sync(ex));
    kv->n = pos0 + n;
    return NVLM_OK;
}
