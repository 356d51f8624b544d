/*
 * test_vision.c - InternViT on the tiny model against the reference goldens: case2's
 * normalized pixels -> every hidden state and vit_out; case1's 7 uint8 tiles (normalized here
 * as the reference does) as one batch -> vit_out of tiles 0 and 6. atol 2e-4, rtol 1e-4.
 */
#include "eng_golden.h"

#include <stdlib.h>

static const float k_mean[3] = {0.485f, 0.456f, 0.406f};
static const float k_std[3] = {0.229f, 0.224f, 0.225f};

static void test_case2(nv_engine *e, nv_exec *ex, nvlm_context *ctx)
{
    tu_section("vision: case2 single tile, hidden states");
    nv_st_file *f = eg_open(ctx, "case2_single_tile");
    const nv_tensor *pv = eg_tensor(f, "pixel_values", NV_F32);
    const nv_tensor *hs = eg_tensor(f, "vit_hidden_states", NV_F32);
    const nv_tensor *vo = eg_tensor(f, "vit_out", NV_F32);
    if (pv == NULL || hs == NULL || vo == NULL) {
        nv_st_close(f);
        return;
    }
    const vit_weights *w = &e->vit;
    nv_arena ar;
    float *out = NULL;
    float *hidden = eg_vit_one_tile(ex, &ar, w, pv->data, &out);
    size_t per = (size_t)(w->n_patches + 1) * w->D;
    CHECK_EQ_INT(hs->shape[0], w->n_layers, "hidden state count");
    const float *want = hs->data;
    for (int l = 0; l < w->n_layers && out != NULL; l++) {
        char what[64];
        snprintf(what, sizeof what, "vit hidden state %d", l);
        eg_close(what, hidden + (size_t)l * per, want + (size_t)l * per, per, 2e-4);
    }
    if (out != NULL) {
        eg_close("case2 vit_out", out, vo->data, (size_t)w->n_patches * w->D, 2e-4);
    }
    free(hidden);
    nv_arena_release(&ar);
    nv_st_close(f);
}

static void test_case1(nv_engine *e, nv_exec *ex, nvlm_context *ctx)
{
    tu_section("vision: case1 seven tiles in one batch");
    nv_st_file *f = eg_open(ctx, "case1_multitile");
    nv_st_file *pf = NULL;
    CHECK_OK(nv_st_open(ctx, EG_GOLDEN_DIR "preprocess/coffee_600x400.safetensors", NULL, &pf));
    const nv_tensor *tiles = pf != NULL ? eg_tensor(pf, "tiles_uint8", NV_U8) : NULL;
    const nv_tensor *vo = eg_tensor(f, "vit_out", NV_F32);
    const nv_tensor *vi = eg_tensor(f, "vit_out_tile_index", NV_I64);
    const vit_weights *w = &e->vit;
    if (tiles == NULL || vo == NULL || vi == NULL) {
        nv_st_close(pf);
        nv_st_close(f);
        return;
    }
    int T = (int)tiles->shape[0];
    int S = w->image;
    CHECK_EQ_INT(T, 7, "case1 tiles");
    CHECK_EQ_INT(tiles->shape[1], S, "tile size");
    nv_arena ar = {.ex = ex};
    size_t npix = (size_t)T * 3 * S * S;
    CHECK_OK(nv_arena_reserve(&ar, nv_arena_size(npix) + vit_arena_bytes(w, T)));
    float *pix = nv_arena_floats(&ar, npix);
    const uint8_t *u8 = tiles->data;
    /* ToTensor + Normalize with true float32 divisions, HWC -> CHW */
    for (int t = 0; t < T; t++) {
        for (int c = 0; c < 3; c++) {
            for (size_t i = 0; i < (size_t)S * S; i++) {
                float v = (float)u8[((size_t)t * S * S + i) * 3 + c] / 255.0f;
                pix[((size_t)t * 3 + c) * S * S + i] = (v - k_mean[c]) / k_std[c];
            }
        }
    }
    float *out = NULL;
    CHECK_OK(vit_forward(ex, &ar, w, pix, T, &out, NULL));
    const int64_t *idx = vi->data;
    size_t per = (size_t)w->n_patches * w->D;
    for (int i = 0; i < (int)vi->shape[0] && out != NULL; i++) {
        char what[64];
        snprintf(what, sizeof what, "case1 vit_out tile %lld", (long long)idx[i]);
        eg_close(what, out + (size_t)idx[i] * per, (const float *)vo->data + (size_t)i * per,
                 per, 2e-4);
    }
    nv_arena_release(&ar);
    nv_st_close(pf);
    nv_st_close(f);
}

/* With all-zero dummy q/k/v rows, skipping the dummy heads must give what computing them
 * gives: the model is read into memory (not mapped) so the test can zero those rows. */
static void test_skip_dummy(nvlm_context *ctx)
{
    tu_section("vision: zero dummy heads are skipped with the same result");
    nvlm_model_params mp;
    nvlm_model_default_params(&mp);
    mp.use_mmap = 0;
    nvlm_model *m = NULL;
    CHECK_OK(nvlm_model_load(ctx, EG_MODEL_DIR, &mp, &m));
    nv_engine *e = m != NULL ? m->engine : NULL;
    if (e == NULL) {
        nvlm_model_free(m);
        return;
    }
    vit_weights *w = &e->vit;
    size_t HP = (size_t)w->n_heads_padded * w->head_dim;
    size_t real = (size_t)w->n_heads * w->head_dim;
    for (int l = 0; l < w->n_layers; l++) {
        nv_tensor *t = &w->layers[l].qkv.t;
        size_t es = nv_dtype_size(t->dtype);
        for (int s = 0; s < 3; s++) {
            memset((char *)t->data + ((size_t)s * HP + real) * w->D * es, 0,
                   (HP - real) * w->D * es);
        }
    }
    nv_exec *ex = NULL;
    CHECK_OK(e->be->ops->exec_create(e->be, 2, m, &ex));
    nv_arena ar = {.ex = ex};
    size_t npix = (size_t)3 * w->image * w->image;
    size_t per = (size_t)w->n_patches * w->D;
    float *res[2] = {malloc(per * sizeof(float)), malloc(per * sizeof(float))};
    for (int skip = 0; skip < 2 && ex != NULL; skip++) {
        w->skip_dummy = skip;
        CHECK_OK(nv_arena_reserve(&ar, nv_arena_size(npix) + vit_arena_bytes(w, 1)));
        float *pix = nv_arena_floats(&ar, npix);
        for (size_t i = 0; i < npix; i++) {
            pix[i] = (float)((i * 7919) % 1000) / 500.0f - 1.0f;
        }
        float *out = NULL;
        CHECK_OK(vit_forward(ex, &ar, w, pix, 1, &out, NULL));
        if (out != NULL) {
            memcpy(res[skip], out, per * sizeof(float));
        }
    }
    if (ex != NULL) {
        eg_close("dummy heads skipped vs computed", res[1], res[0], per, 1e-5);
    }
    free(res[0]);
    free(res[1]);
    nv_arena_release(&ar);
    if (ex != NULL) {
        e->be->ops->exec_free(ex);
    }
    nvlm_model_free(m);
}

int main(void)
{
    nvlm_context *ctx = NULL;
    nvlm_model *m = eg_load_model(&ctx, 2);
    if (m != NULL) {
        nv_engine *e = m->engine;
        CHECK(e != NULL, "engine prepared at load");
        if (e != NULL) {
            tu_section("vision: weights");
            CHECK_EQ_INT(e->vit.n_heads_padded, 11, "padded heads (4 + 7 dummies)");
            CHECK(!e->vit.skip_dummy, "random dummy heads are computed, not skipped");
            nv_exec *ex = NULL;
            CHECK_OK(e->be->ops->exec_create(e->be, 2, m, &ex));
            if (ex != NULL) {
                test_case2(e, ex, ctx);
                test_case1(e, ex, ctx);
                e->be->ops->exec_free(ex);
            }
        }
        test_skip_dummy(ctx);
    }
    nvlm_model_free(m);
    nvlm_context_free(ctx);
    return tu_done();
}
