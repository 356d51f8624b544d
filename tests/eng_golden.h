/*
 * eng_golden.h - helpers shared by the engine tests (test_vision, test_projector, test_decoder,
 * test_session, test_concurrency): open the tiny model and the golden safetensors, compare
 * float arrays with |got - want| <= atol + rtol |want| (tests/data/golden/cases.json).
 */
#ifndef NVLM_ENG_GOLDEN_H
#define NVLM_ENG_GOLDEN_H

#include "engine.h"
#include "safetensors.h"
#include "testutil.h"

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
    cp.backend = NVLM_BACKEND_CPU; /* the goldens' tolerances are the CPU backend's */
    nvlm_context *ctx = NULL;
    CHECK_OK(nvlm_context_create(&cp, &ctx));
    nvlm_model *m = NULL;
    nvlm_status st = ctx != NULL ? nvlm_model_load(ctx, EG_MODEL_DIR, NULL, &m) : NVLM_ERR_IO;
    CHECK(st == NVLM_OK, "load %s -> %d: %s", EG_MODEL_DIR, (int)st,
          ctx != NULL ? nvlm_last_error(ctx) : "");
    *ctx_out = ctx;
    return st == NVLM_OK ? m : NULL;
}

#endif /* NVLM_ENG_GOLDEN_H */
