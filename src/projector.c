/*
 * projector.c - pixel shuffle v2 + mlp1 (spec §5, §6): ViT features (T * 1024, D) ->
 * (T * 256, 4 D) by gathering each 2x2 patch block (top-left, top-right, bottom-left,
 * bottom-right) -> LayerNorm(4 D, eps 1e-5, weight + bias) -> Linear (no bias) -> GELU (erf)
 * -> Linear (no bias) -> (T * 256, llm D), the rows spliced over <|vision_pad|>.
 */
#include "engine.h"

#include <math.h>

nvlm_status proj_init(nv_engine *e, const nvlm_model *m)
{
    const nv_config *c = &m->cfg;
    proj_weights *w = &e->proj;
    void *eh = (void *)m;
    w->in = c->proj_input_size;
    w->hidden = c->proj_hidden_size;
    w->out = c->proj_output_size;
    double f = 1.0 / c->downsample_ratio;
    int fi = (int)lround(f);
    int g = e->vit.image / e->vit.patch;
    if (fi < 1 || fabs(f - fi) > 1e-9 || g % fi != 0 || w->in != e->vit.D * fi * fi ||
        w->hidden <= 0 || w->out <= 0) {
        return nv_error(eh, NVLM_ERR_UNSUPPORTED,
                        "unsupported projector shape (downsample_ratio %g, input %d)",
                        c->downsample_ratio, w->in);
    }
    NVLM_TRY(eng_load(e, m, "mlp1.0.weight", w->in, w->in, &w->ln_w));
    NVLM_TRY(eng_load(e, m, "mlp1.0.bias", w->in, w->in, &w->ln_b));
    NVLM_TRY(eng_load(e, m, "mlp1.1.weight", (int64_t)w->hidden * w->in, w->hidden, &w->w1));
    NVLM_TRY(eng_load(e, m, "mlp1.3.weight", (int64_t)w->out * w->hidden, w->out, &w->w2));
    return NVLM_OK;
}

void proj_free(nv_engine *e)
{
    proj_weights *w = &e->proj;
    eng_unload(e, &w->ln_w);
    eng_unload(e, &w->ln_b);
    eng_unload(e, &w->w1);
    eng_unload(e, &w->w2);
}

typedef struct proj_sizes {
    size_t rows, shuf, hid, out;
} proj_sizes;

static bool proj_sizes_of(const proj_weights *w, const vit_weights *v, int T, proj_sizes *s)
{
    int f2 = w->in / v->D;
    s->rows = (size_t)T * (size_t)(v->n_patches / f2);
    return nv_mul_size(s->rows, (size_t)w->in, &s->shuf) &&
           nv_mul_size(s->rows, (size_t)w->hidden, &s->hid) &&
           nv_mul_size(s->rows, (size_t)w->out, &s->out);
}

size_t proj_arena_bytes(const proj_weights *w, const vit_weights *v, int n_tiles)
{
    proj_sizes s;
    if (n_tiles <= 0 || !proj_sizes_of(w, v, n_tiles, &s)) {
        return SIZE_MAX;
    }
    /* shuf, x, hid (the output rows are the caller's) */
    size_t parts[] = {s.shuf, s.shuf, s.hid};
    size_t total = 0;
    for (size_t i = 0; i < NV_ARRAY_LEN(parts); i++) {
        if (!nv_add_size(total, nv_arena_size(parts[i]), &total)) {
            return SIZE_MAX;
        }
    }
    return total;
}

nvlm_status proj_forward(nv_exec *ex, nv_arena *ar, const proj_weights *w, const vit_weights *v,
                         const float *vit, int n_tiles, float *out, float *shuffled)
{
    const nv_backend_ops *op = ex->be->ops;
    void *eh = ex->err_handle;
    proj_sizes s;
    if (n_tiles <= 0 || !proj_sizes_of(w, v, n_tiles, &s)) {
        return nv_error(eh, NVLM_ERR_LIMIT, "too many tiles");
    }
    float *shuf = nv_arena_floats(ar, s.shuf);
    float *x = nv_arena_floats(ar, s.shuf);
    float *hid = nv_arena_floats(ar, s.hid);
    if (shuf == NULL || x == NULL || hid == NULL) {
        return nv_error(eh, NVLM_ERR_INTERNAL, "projector arena too small");
    }
    /* Pixel shuffle v2 as a row gather: output token (R, C) of tile t takes, as its q-th block
     * of D channels (q = dy * f + dx), the ViT row of patch (f R + dy, f C + dx). */
    int f2 = w->in / v->D;
    int f = (int)lround(sqrt((double)f2));
    int g = v->image / v->patch;
    int g2 = g / f;
    size_t n = (size_t)n_tiles * v->n_patches;
    int32_t *idx = nv_alloc_array(ex->be->ctx, n, sizeof(int32_t));
    if (idx == NULL) {
        return nv_error(eh, NVLM_ERR_OUT_OF_MEMORY, "out of memory");
    }
    size_t k = 0;
    for (int t = 0; t < n_tiles; t++) {
        for (int R = 0; R < g2; R++) {
            for (int C = 0; C < g2; C++) {
                for (int dy = 0; dy < f; dy++) {
                    for (int dx = 0; dx < f; dx++) {
                        idx[k++] = t * v->n_patches + (f * R + dy) * g + f * C + dx;
                    }
                }
            }
        }
    }
    nvlm_status st = op->rows_copy(ex, shuf, NULL, vit, NV_F32, idx, n, v->D);
    nv_free(ex->be->ctx, idx);
    NVLM_TRY(st);
    if (shuffled != NULL) {
        NVLM_TRY(op->download(ex, shuffled, shuf, s.shuf * sizeof(float)));
    }
    int rows = (int)s.rows;
    NVLM_TRY(op->layernorm(ex, x, shuf, &w->ln_w, &w->ln_b, rows, w->in, 1e-5f));
    NVLM_TRY(op->matmul(ex, hid, x, &w->w1, NULL, rows));
    NVLM_TRY(op->gelu(ex, hid, hid, s.hid));
    return op->matmul(ex, out, hid, &w->w2, NULL, rows);
}
