/*
 * eng_golden.h - helpers shared by the engine tests (test_vision, test_projector, test_decoder,
 * test_session, test_concurrency, test_tp, ...): open the tiny model and the golden safetensors,
 * compare float arrays with |got - want| <= atol + rtol |want|, build a golden case's
 * conversation (tests/data/golden/cases.json).
 */
#ifndef NVLM_ENG_GOLDEN_H
#define NVLM_ENG_GOLDEN_H

#include "engine.h"
#include "safetensors.h"
#include "testutil.h"

#include <cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define EG_MODEL_DIR "tests/data/tiny-nvlm-d"
#define EG_GOLDEN_DIR "tests/data/golden/"
#define EG_RTOL 1e-4

static const char *const eg_cases[] = {"case1_multitile", "case2_single_tile",
                                       "case3_text_only", "case4_two_images",
                                       "case5_multiturn"};

static inline nv_st_file *eg_open(nvlm_context *ctx, const char *case_name)
{
    char path[256];
    snprintf(path, sizeof path, EG_GOLDEN_DIR "%s.safetensors", case_name);
    nv_st_file *f = NULL;
    nvlm_status st = nv_st_open(ctx, path, NULL, &f);
    CHECK(st == NVLM_OK, "open %s -> %d", path, (int)st);
    return st == NVLM_OK ? f : NULL;
}

/* The tensor `name` with the expected dtype, or NULL (a failed check). */
static inline const nv_tensor *eg_tensor(const nv_st_file *f, const char *name, nv_dtype dt)
{
    const nv_weight *w = f != NULL ? nv_st_find(f, name) : NULL;
    CHECK(w != NULL && w->t.dtype == dt, "golden tensor %s present with dtype %d", name,
          (int)dt);
    return (w != NULL && w->t.dtype == dt) ? &w->t : NULL;
}

/* int64 golden ids -> int32 array (malloc'd); *n gets the count. */
static inline int32_t *eg_ids(const nv_st_file *f, const char *name, size_t *n)
{
    const nv_tensor *t = eg_tensor(f, name, NV_I64);
    *n = 0;
    if (t == NULL) {
        return NULL;
    }
    size_t c = (size_t)nv_tensor_nelem(t);
    int32_t *ids = malloc(c * sizeof(int32_t));
    const int64_t *src = t->data;
    for (size_t i = 0; i < c; i++) {
        ids[i] = (int32_t)src[i];
    }
    *n = c;
    return ids;
}

/* Compares n floats; one CHECK with the worst element. Returns whether all pass. */
static inline bool eg_close(const char *what, const float *got, const float *want, size_t n,
                            double atol)
{
    size_t bad = 0;
    size_t worst = 0;
    double worst_excess = -1e30;
    double max_abs = 0.0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)got[i] - (double)want[i]);
        double lim = atol + EG_RTOL * fabs((double)want[i]);
        if (!(d <= lim)) {
            bad++;
        }
        if (d > max_abs || isnan(d)) {
            max_abs = d;
        }
        if (d - lim > worst_excess || isnan(d)) {
            worst_excess = d - lim;
            worst = i;
        }
    }
    printf("#   %s: max |diff| %.3g over %zu values\n", what, max_abs, n);
    CHECK(bad == 0, "%s: %zu of %zu elements outside tolerance (max |diff| %.3g; worst at %zu: "
          "got %.7g want %.7g)", what, bad, n, max_abs, worst, n ? got[worst] : 0.0,
          n ? want[worst] : 0.0);
    return bad == 0;
}

static inline int32_t eg_argmax(const float *v, int n)
{
    int32_t best = 0;
    for (int i = 1; i < n; i++) {
        if (v[i] > v[best]) {
            best = i;
        }
    }
    return best;
}

/* Loads the tiny model with n_threads worker threads; NULL on failure (a failed check). */
static inline nvlm_model *eg_load_model(nvlm_context **ctx_out, int n_threads)
{
    nvlm_context_params cp;
    nvlm_context_default_params(&cp);
    cp.n_threads = n_threads;
    cp.backend = tu_backend(); /* the CPU unless the test opted in to NVLM_BACKEND */
    nvlm_context *ctx = NULL;
    CHECK_OK(nvlm_context_create(&cp, &ctx));
    nvlm_model *m = NULL;
    nvlm_status st = ctx != NULL ? nvlm_model_load(ctx, EG_MODEL_DIR, NULL, &m) : NVLM_ERR_IO;
    CHECK(st == NVLM_OK, "load %s -> %d: %s", EG_MODEL_DIR, (int)st,
          ctx != NULL ? nvlm_last_error(ctx) : "");
    *ctx_out = ctx;
    return st == NVLM_OK ? m : NULL;
}

static inline const char *eg_jstr(const cJSON *o, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

/* Runs the ViT on one tile of normalized pixels (3 x S x S floats, host) in an arena of its
 * own: *out (arena rows, valid until *ar is released) and the returned hidden states
 * (n_layers x (1 + n_patches) x D, malloc'd; embeddings then every layer's output but the
 * last). NULL (a failed check) on failure. */
static inline float *eg_vit_one_tile(nv_exec *ex, nv_arena *ar, const vit_weights *w,
                                     const float *pixels, float **out)
{
    *ar = (nv_arena){.ex = ex};
    *out = NULL;
    size_t npix = (size_t)3 * w->image * w->image;
    CHECK_OK(nv_arena_reserve(ar, vit_arena_bytes(w, 1))); /* the pixels included */
    float *pix = nv_arena_floats(ar, npix);
    size_t per = (size_t)(w->n_patches + 1) * w->D;
    float *hidden = malloc((size_t)w->n_layers * per * sizeof(float));
    if (pix == NULL || hidden == NULL) {
        CHECK(false, "ViT arena and hidden states");
        free(hidden);
        return NULL;
    }
    memcpy(pix, pixels, npix * sizeof(float));
    CHECK_OK(vit_forward(ex, ar, w, pix, 1, out, hidden));
    return hidden;
}

/* Greedy, no stop ids, at most n tokens. */
static inline void eg_greedy_params(nvlm_sampler_params *p, int n)
{
    static const int32_t none[1] = {0};
    nvlm_sampler_default_params(p);
    p->max_new_tokens = n;
    p->stop_ids = none;
    p->n_stop_ids = 0;
}

/* Builds a golden case's conversation (cases.json: images, history, question) in a new
 * session with params sp (may be NULL); NULL on failure (a failed check). */
static inline nvlm_session *eg_build_case(nvlm_context *ctx, nvlm_model *m, const cJSON *c,
                                          const nvlm_session_params *sp)
{
    nvlm_image *imgs[4] = {0};
    size_t n_img = 0;
    const cJSON *jimg;
    cJSON_ArrayForEach(jimg, cJSON_GetObjectItemCaseSensitive(c, "images"))
    {
        char path[256];
        snprintf(path, sizeof path, "tests/data/images/%s", jimg->valuestring);
        nvlm_status st = nvlm_image_load_file(ctx, path, NULL, &imgs[n_img]);
        CHECK(st == NVLM_OK, "load %s -> %d", path, (int)st);
        n_img += st == NVLM_OK;
    }
    nvlm_session *s = NULL;
    CHECK_OK(nvlm_session_create(m, sp, &s));
    const cJSON *hist = cJSON_GetObjectItemCaseSensitive(c, "history");
    nvlm_status st = s != NULL ? NVLM_OK : NVLM_ERR_INTERNAL;
    bool images_used = false;
    if (cJSON_IsArray(hist)) {
        const cJSON *turn;
        cJSON_ArrayForEach(turn, hist)
        {
            const char *q = cJSON_GetArrayItem(turn, 0)->valuestring;
            const char *a = cJSON_GetArrayItem(turn, 1)->valuestring;
            bool with = !images_used && strstr(q, "<image>") != NULL;
            if (st == NVLM_OK) {
                st = nvlm_session_add_turn(s, NVLM_ROLE_USER, q, with ? imgs : NULL,
                                           with ? n_img : 0);
            }
            images_used = images_used || with;
            if (st == NVLM_OK) {
                st = nvlm_session_add_turn(s, NVLM_ROLE_ASSISTANT, a, NULL, 0);
            }
        }
    }
    if (st == NVLM_OK) {
        st = nvlm_session_add_turn(s, NVLM_ROLE_USER, eg_jstr(c, "question"),
                                   images_used ? NULL : imgs, images_used ? 0 : n_img);
    }
    CHECK(st == NVLM_OK, "%s: turns -> %d: %s", eg_jstr(c, "name"), (int)st, nvlm_last_error(s));
    for (size_t i = 0; i < n_img; i++) {
        nvlm_image_free(imgs[i]);
    }
    if (st != NVLM_OK) {
        nvlm_session_free(s);
        return NULL;
    }
    return s;
}

#endif /* NVLM_ENG_GOLDEN_H */
