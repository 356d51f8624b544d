/*
 * vision.c - InternViT-6B encoder (spec §4): tiles (T, 3, 448, 448) f32 -> patch features
 * (T * 1024, D) with the CLS token dropped. Patch embedding as a GEMM over im2col rows, CLS +
 * position embedding, then per layer h += ls1 * Attn(RMSNorm1(h)), h += ls2 * MLP(RMSNorm2(h)).
 * Attention uses NVLM's padded head layout (q/k/v blocks of (heads + dummies) * head_dim rows)
 * with QK-norm whose variance runs over the first D channels only. All tiles are one batch.
 */
#include "engine.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#define VIT_PREFIX "vision_model."

static bool rows_all_zero(const nv_tensor *t, int64_t r0, int64_t r1, int64_t cols)
{
    size_t es = nv_dtype_size(t->dtype);
    const unsigned char *p = (const unsigned char *)t->data + (size_t)(r0 * cols) * es;
    size_t n = (size_t)((r1 - r0) * cols);
    for (size_t i = 0; i < n; i++) {
        float v;
        nv_to_f32(&v, p + i * es, t->dtype, 1);
        if (v != 0.0f) {
            return false;
        }
    }
    return true;
}

nvlm_status vit_init(nv_engine *e, const nvlm_model *m)
{
    const nv_vision_config *c = &m->cfg.vision;
    vit_weights *w = &e->vit;
    void *eh = (void *)m;
    w->D = c->hidden_size;
    w->I = c->intermediate_size;
    w->n_layers = c->num_layers;
    w->n_heads = c->num_heads;
    w->n_heads_padded = c->num_heads + c->num_dummy_heads;
    w->head_dim = c->head_dim;
    w->patch = c->patch_size;
    w->image = c->image_size;
    w->eps = (float)c->layer_norm_eps;
    if (w->D <= 0 || w->I <= 0 || w->n_layers <= 0 || w->n_heads <= 0 || w->head_dim <= 0 ||
        w->patch <= 0 || w->image % w->patch != 0 || c->num_channels != 3 ||
        c->num_dummy_heads < 0) {
        return nv_error(eh, NVLM_ERR_UNSUPPORTED, "unsupported vision config");
    }
    int g = w->image / w->patch;
    w->n_patches = g * g;
    int64_t D = w->D;
    int64_t HP = (int64_t)w->n_heads_padded * w->head_dim;
    int64_t F = 3LL * w->patch * w->patch;
    NVLM_TRY(eng_load(e, m, VIT_PREFIX "embeddings.class_embedding", D, -1, &w->cls));
    NVLM_TRY(eng_load(e, m, VIT_PREFIX "embeddings.patch_embedding.weight", D * F, D,
                      &w->patch_w));
    NVLM_TRY(eng_load(e, m, VIT_PREFIX "embeddings.patch_embedding.bias", D, D,
                      &w->patch_b));
    NVLM_TRY(eng_load(e, m, VIT_PREFIX "embeddings.position_embedding",
                      (int64_t)(w->n_patches + 1) * D, -1, &w->pos));
    w->layers = nv_calloc(e->be->ctx, (size_t)w->n_layers, sizeof *w->layers);
    if (w->layers == NULL) {
        return nv_error(eh, NVLM_ERR_OUT_OF_MEMORY, "out of memory");
    }
    w->skip_dummy = c->num_dummy_heads > 0;
    for (int l = 0; l < w->n_layers; l++) {
        vit_layer *L = &w->layers[l];
        char n[128];
#define VIT_LOAD(field, suffix, nelem, rows)                                               \
    do {                                                                                   \
        snprintf(n, sizeof n, VIT_PREFIX "encoder.layers.%d.%s", l, suffix);               \
        NVLM_TRY(eng_load(e, m, n, nelem, rows, &L->field));                               \
    } while (0)
        VIT_LOAD(norm1, "norm1.weight", D, D);
        VIT_LOAD(norm2, "norm2.weight", D, D);
        VIT_LOAD(qkv, "attn.qkv.weight", 3 * HP * D, 3 * HP);
        VIT_LOAD(q_norm, "attn.q_norm.weight", HP, HP);
        VIT_LOAD(k_norm, "attn.k_norm.weight", HP, HP);
        VIT_LOAD(proj, "attn.proj.weight", D * HP, D);
        VIT_LOAD(proj_b, "attn.proj.bias", D, D);
        VIT_LOAD(ls1, "ls1", D, D);
        VIT_LOAD(ls2, "ls2", D, D);
        VIT_LOAD(fc1, "mlp.fc1.weight", (int64_t)w->I * D, w->I);
        VIT_LOAD(fc1_b, "mlp.fc1.bias", w->I, w->I);
        VIT_LOAD(fc2, "mlp.fc2.weight", D * w->I, D);
        VIT_LOAD(fc2_b, "mlp.fc2.bias", D, D);
#undef VIT_LOAD
        /* Dummy heads may be skipped only when their q, k and v rows are all zero (then
         * their context is exactly 0); otherwise (e.g. the tiny fixture) compute them. */
        if (w->skip_dummy) {
            snprintf(n, sizeof n, VIT_PREFIX "encoder.layers.%d.attn.qkv.weight", l);
            const nv_weight *q = nv_model_weight(m, n);
            int64_t real = (int64_t)w->n_heads * w->head_dim;
            for (int s = 0; s < 3 && w->skip_dummy; s++) {
                w->skip_dummy = rows_all_zero(&q->t, s * HP + real, (s + 1) * HP, D);
            }
        }
    }
    return NVLM_OK;
}

void vit_free(nv_engine *e)
{
    vit_weights *w = &e->vit;
    eng_unload(e, &w->cls);
    eng_unload(e, &w->patch_w);
    eng_unload(e, &w->patch_b);
    eng_unload(e, &w->pos);
    if (w->layers != NULL) {
        for (int l = 0; l < w->n_layers; l++) {
            vit_layer *L = &w->layers[l];
            nv_bweight *all[] = {&L->norm1, &L->norm2, &L->qkv, &L->q_norm, &L->k_norm,
                                 &L->proj, &L->proj_b, &L->ls1, &L->ls2, &L->fc1,
                                 &L->fc1_b, &L->fc2, &L->fc2_b};
            for (size_t i = 0; i < NV_ARRAY_LEN(all); i++) {
                eng_unload(e, all[i]);
            }
        }
        nv_free(e->be->ctx, w->layers);
        w->layers = NULL;
    }
}

/* Sizes of the activations, in floats, for T tiles. */
typedef struct vit_sizes {
    size_t pix, cols, pe, h, qkv, ctx, mlp, out;
} vit_sizes;

static bool vit_sizes_of(const vit_weights *w, int T, vit_sizes *s)
{
    size_t P = (size_t)w->n_patches;
    size_t N = (size_t)T * (P + 1);
    size_t HP = (size_t)w->n_heads_padded * w->head_dim;
    size_t S = (size_t)w->image;
    size_t F = 3 * (size_t)w->patch * w->patch;
    return nv_mul_size((size_t)T * 3 * S, S, &s->pix) &&
           nv_mul_size((size_t)T * P, F, &s->cols) &&
           nv_mul_size((size_t)T * P, (size_t)w->D, &s->pe) &&
           nv_mul_size(N, (size_t)w->D, &s->h) && nv_mul_size(N, 3 * HP, &s->qkv) &&
           nv_mul_size(N, HP, &s->ctx) && nv_mul_size(N, (size_t)w->I, &s->mlp) &&
           nv_mul_size((size_t)T * P, (size_t)w->D, &s->out);
}

size_t vit_arena_bytes(const vit_weights *w, int n_tiles)
{
    vit_sizes s;
    if (n_tiles <= 0 || !vit_sizes_of(w, n_tiles, &s)) {
        return SIZE_MAX;
    }
    /* pix, out, cols, pe, h, x, qkv, ctx, a, mlp */
    size_t parts[] = {s.pix, s.out, s.cols, s.pe, s.h, s.h, s.qkv, s.ctx, s.h, s.mlp};
    size_t total = 0;
    for (size_t i = 0; i < NV_ARRAY_LEN(parts); i++) {
        if (!nv_add_size(total, nv_arena_size(parts[i]), &total)) {
            return SIZE_MAX;
        }
    }
    return total;
}

/* The activations of the layers (vit_arena_bytes' pieces h .. mlp). */
typedef struct vit_bufs {
    float *h, *x, *qkv, *ctx, *a, *mlp;
} vit_bufs;

/* Takes the layers' activations from the arena in vit_arena_bytes' order; false when it is too
 * small. */
static bool vit_take(nv_arena *ar, const vit_sizes *s, vit_bufs *b)
{
    b->h = nv_arena_floats(ar, s->h);
    b->x = nv_arena_floats(ar, s->h);
    b->qkv = nv_arena_floats(ar, s->qkv);
    b->ctx = nv_arena_floats(ar, s->ctx);
    b->a = nv_arena_floats(ar, s->h);
    b->mlp = nv_arena_floats(ar, s->mlp);
    return b->h != NULL && b->x != NULL && b->qkv != NULL && b->ctx != NULL && b->a != NULL &&
           b->mlp != NULL;
}

/* ViT layer l on the N = T * (P + 1) rows of b->h (T tiles attended separately). With
 * add_rmsnorm (fuse), *pend / *pend_s (may be NULL) are the previous layer's MLP output and its
 * ls2, added to h by this layer's first norm; defer leaves this layer's in *pend / *pend_s
 * instead of adding them (the next layer's first norm, or the caller, adds them). b->ctx must
 * have been zeroed when the dummy heads are skipped (their columns are never written). */
static nvlm_status vit_layer_fwd(nv_exec *ex, const vit_weights *w, int l, int T,
                                 const vit_bufs *b, bool defer, const float **pend,
                                 const nv_bweight **pend_s)
{
    const nv_backend_ops *op = ex->be->ops;
    const vit_layer *L = &w->layers[l];
    int NP1 = w->n_patches + 1;
    int N = T * NP1;
    int D = w->D;
    int hd = w->head_dim;
    int HP = w->n_heads_padded * hd;
    int n_heads = w->skip_dummy ? w->n_heads : w->n_heads_padded;
    float scale = 1.0f / sqrtf((float)hd);
    bool fuse = op->add_rmsnorm != NULL;
    float *h = b->h;
    float *x = b->x;
    float *qkv = b->qkv;
    float *a = b->a;
    if (fuse) {
        NVLM_TRY(op->add_rmsnorm(ex, h, *pend, *pend_s, x, &L->norm1, N, D, w->eps));
        *pend = NULL;
        *pend_s = NULL;
    } else {
        NVLM_TRY(op->rmsnorm(ex, x, D, h, D, &L->norm1, N, D, D, w->eps));
    }
    NVLM_TRY(op->matmul(ex, qkv, x, &L->qkv, NULL, N));
    NVLM_TRY(op->rmsnorm(ex, qkv, 3 * HP, qkv, 3 * HP, &L->q_norm, N, HP, D, w->eps));
    NVLM_TRY(op->rmsnorm(ex, qkv + HP, 3 * HP, qkv + HP, 3 * HP, &L->k_norm, N, HP, D, w->eps));
    NVLM_TRY(op->attention(ex, b->ctx, HP, qkv, 3 * HP, qkv + HP, qkv + 2 * HP, 3 * HP, NV_F32,
                           T, NP1, NP1, n_heads, n_heads, hd, scale, -1, NV_TP_VIT_HEADS));
    NVLM_TRY(op->matmul(ex, a, b->ctx, &L->proj, &L->proj_b, N));
    if (fuse) {
        NVLM_TRY(op->add_rmsnorm(ex, h, a, &L->ls1, x, &L->norm2, N, D, w->eps));
    } else {
        NVLM_TRY(op->add_scaled(ex, h, a, &L->ls1, N, D));
        NVLM_TRY(op->rmsnorm(ex, x, D, h, D, &L->norm2, N, D, D, w->eps));
    }
    NVLM_TRY(op->matmul(ex, b->mlp, x, &L->fc1, &L->fc1_b, N));
    NVLM_TRY(op->gelu(ex, b->mlp, b->mlp, (size_t)N * (size_t)w->I));
    NVLM_TRY(op->matmul(ex, a, b->mlp, &L->fc2, &L->fc2_b, N));
    if (fuse && defer) {
        *pend = a;
        *pend_s = &L->ls2;
    } else {
        NVLM_TRY(op->add_scaled(ex, h, a, &L->ls2, N, D));
    }
    return NVLM_OK;
}

nvlm_status vit_forward(nv_exec *ex, nv_arena *ar, const vit_weights *w, const float *pix,
                        int n_tiles, float **out, float *hidden)
{
    const nv_backend_ops *op = ex->be->ops;
    void *eh = ex->err_handle;
    vit_sizes s;
    if (n_tiles <= 0 || !vit_sizes_of(w, n_tiles, &s)) {
        return nv_error(eh, NVLM_ERR_LIMIT, "too many tiles");
    }
    int T = n_tiles;
    int P = w->n_patches;
    int NP1 = P + 1;
    int N = T * NP1;
    int D = w->D;
    float *o = nv_arena_floats(ar, s.out);
    float *cols = nv_arena_floats(ar, s.cols);
    float *pe = nv_arena_floats(ar, s.pe);
    vit_bufs bf;
    bool took = vit_take(ar, &s, &bf);
    float *h = bf.h;
    if (o == NULL || cols == NULL || pe == NULL || !took) {
        return nv_error(eh, NVLM_ERR_INTERNAL, "vision arena too small");
    }
    /* Row maps: patch p of tile b sits at token b * (P + 1) + 1 + p; CLS at b * (P + 1). */
    nvlm_context *nctx = ex->be->ctx;
    int32_t *tok_idx = nv_alloc_array(nctx, (size_t)T * P, sizeof(int32_t));
    int32_t *cls_idx = nv_alloc_array(nctx, (size_t)T * 2, sizeof(int32_t));
    if (tok_idx == NULL || cls_idx == NULL) {
        nv_free(nctx, tok_idx);
        nv_free(nctx, cls_idx);
        return nv_error(eh, NVLM_ERR_OUT_OF_MEMORY, "out of memory");
    }
    for (int b = 0; b < T; b++) {
        for (int p = 0; p < P; p++) {
            tok_idx[(size_t)b * P + p] = b * NP1 + 1 + p;
        }
        cls_idx[b] = b * NP1;
        cls_idx[T + b] = 0;
    }
    nvlm_status st;
#define VT(expr)                  \
    do {                          \
        st = (expr);              \
        if (st != NVLM_OK) {      \
            goto done;            \
        }                         \
    } while (0)
    VT(op->im2col(ex, cols, pix, T, 3, w->image, w->image, w->patch));
    VT(op->matmul(ex, pe, cols, &w->patch_w, &w->patch_b, T * P));
    VT(op->rows_copy(ex, h, tok_idx, pe, NV_F32, NULL, (size_t)T * P, D));
    VT(op->rows_copy(ex, h, cls_idx, w->cls.t.data, w->cls.t.dtype, cls_idx + T, (size_t)T, D));
    VT(op->add_rows(ex, h, &w->pos, NP1, N, D));
    if (hidden != NULL && w->n_layers > 1) {
        VT(op->download(ex, hidden, h, s.h * sizeof(float)));
    }
    if (w->skip_dummy) {
        VT(op->zero(ex, bf.ctx, s.ctx * sizeof(float)));
    }
    /* With add_rmsnorm, a layer's ls2-scaled MLP output is added to h by the next layer's first
     * norm (pend), unless `hidden` wants h after every layer. */
    bool defer = hidden == NULL;
    const float *pend = NULL;
    const nv_bweight *pend_s = NULL;
    for (int l = 0; l < w->n_layers; l++) {
        VT(vit_layer_fwd(ex, w, l, T, &bf, defer, &pend, &pend_s));
        if (hidden != NULL && l + 1 < w->n_layers) {
            VT(op->download(ex, hidden + (size_t)(l + 1) * s.h, h, s.h * sizeof(float)));
        }
    }
    if (pend != NULL) {
        VT(op->add_scaled(ex, h, pend, pend_s, N, D));
    }
    VT(op->rows_copy(ex, o, NULL, h, NV_F32, tok_idx, (size_t)T * P, D));
    *out = o;
#undef VT
done:
    nv_free(nctx, tok_idx);
    nv_free(nctx, cls_idx);
    return st;
}

nvlm_status vit_stage(nv_exec *ex, nv_arena *ar, const vit_weights *w, int layer, int n_tiles,
                      const float *in, float *out)
{
    const nv_backend_ops *op = ex->be->ops;
    void *eh = ex->err_handle;
    vit_sizes s;
    if (layer < 0 || layer >= w->n_layers || n_tiles <= 0 || !vit_sizes_of(w, n_tiles, &s)) {
        return nv_error(eh, NVLM_ERR_INVALID_ARGUMENT, "bad vision stage %d of %d tiles", layer,
                        n_tiles);
    }
    vit_bufs b;
    if (!vit_take(ar, &s, &b)) {
        return nv_error(eh, NVLM_ERR_INTERNAL, "vision arena too small");
    }
    NVLM_TRY(op->upload(ex, b.h, in, s.h * sizeof(float)));
    if (w->skip_dummy) {
        NVLM_TRY(op->zero(ex, b.ctx, s.ctx * sizeof(float)));
    }
    const float *pend = NULL;
    const nv_bweight *pend_s = NULL;
    NVLM_TRY(vit_layer_fwd(ex, w, layer, n_tiles, &b, false, &pend, &pend_s));
    NVLM_TRY(op->download(ex, out, b.h, s.h * sizeof(float)));
    return op->sync(ex);
}
