/*
 * test_dlopen.c - loading and unloading the shared library at run time, the way FFI bindings
 * (Python's cffi and ctypes, Go's purego) do: dlopen -> context -> model -> session -> dlclose
 * while every handle is still live (the CPU pool's worker threads among them), then a second
 * dlopen + load + generate in the same process, then a clean shutdown. libnvlm.so is linked with
 * -z nodelete, so dlclose never unmaps code that live worker threads still run.
 * The program links only libdl (not the library); NVLM_TEST_SHLIB is the path of the .so of the
 * same build tree (the sanitizer tree has its own), NVLM_TEST_SHLIB overrides it from the
 * environment.
 */
#include "testutil.h"

#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "nvlm/nvlm.h"

#ifndef NVLM_TEST_SHLIB
#define NVLM_TEST_SHLIB "lib/libnvlm.so.0"
#endif

#define MODEL_DIR "tests/data/tiny-nvlm-d"
#define N_GEN 8

/* The library's entry points, resolved through dlsym. */
typedef struct api {
    void (*context_params_init)(nvlm_context_params *, size_t);
    nvlm_status (*context_create)(const nvlm_context_params *, nvlm_context **);
    void (*context_free)(nvlm_context *);
    nvlm_status (*model_load)(nvlm_context *, const char *, const nvlm_model_params *,
                              nvlm_model **);
    void (*model_free)(nvlm_model *);
    nvlm_status (*session_create)(nvlm_model *, const nvlm_session_params *, nvlm_session **);
    void (*session_free)(nvlm_session *);
    nvlm_status (*session_add_turn)(nvlm_session *, nvlm_role, const char *,
                                    nvlm_image *const *, size_t);
    void (*sampler_params_init)(nvlm_sampler_params *, size_t);
    nvlm_status (*session_generate)(nvlm_session *, const nvlm_sampler_params *, nvlm_token_fn,
                                    void *, nvlm_generate_result *);
    const char *(*last_error)(const void *);
} api;

/* The first load's handles stay live on purpose after its dlclose; kept in globals so that
 * LeakSanitizer sees them as reachable. */
static nvlm_context *g_ctx;
static nvlm_model *g_model;
static nvlm_session *g_sess;

typedef struct gen_out {
    int32_t ids[N_GEN + 4];
    int n;
} gen_out;

static int on_token(void *user, int32_t token, const char *text, size_t len)
{
    (void)text;
    (void)len;
    gen_out *g = user;
    if (g->n < (int)(sizeof g->ids / sizeof g->ids[0])) {
        g->ids[g->n++] = token;
    }
    return 0;
}

static void *sym(void *lib, const char *name)
{
    void *p = dlsym(lib, name);
    CHECK(p != NULL, "dlsym %s: %s", name, p != NULL ? "ok" : dlerror());
    return p;
}

static bool resolve(void *lib, api *a)
{
    memset(a, 0, sizeof *a);
    *(void **)&a->context_params_init = sym(lib, "nvlm_context_params_init");
    *(void **)&a->context_create = sym(lib, "nvlm_context_create");
    *(void **)&a->context_free = sym(lib, "nvlm_context_free");
    *(void **)&a->model_load = sym(lib, "nvlm_model_load");
    *(void **)&a->model_free = sym(lib, "nvlm_model_free");
    *(void **)&a->session_create = sym(lib, "nvlm_session_create");
    *(void **)&a->session_free = sym(lib, "nvlm_session_free");
    *(void **)&a->session_add_turn = sym(lib, "nvlm_session_add_turn");
    *(void **)&a->sampler_params_init = sym(lib, "nvlm_sampler_params_init");
    *(void **)&a->session_generate = sym(lib, "nvlm_session_generate");
    *(void **)&a->last_error = sym(lib, "nvlm_last_error");
    return a->context_params_init != NULL && a->context_create != NULL &&
           a->context_free != NULL && a->model_load != NULL && a->model_free != NULL &&
           a->session_create != NULL && a->session_free != NULL && a->session_add_turn != NULL &&
           a->sampler_params_init != NULL && a->session_generate != NULL &&
           a->last_error != NULL;
}

/* Context (CPU, two threads: one pool worker) -> model -> session -> one user turn -> N_GEN
 * greedy tokens into *out. */
static bool load_and_generate(const api *a, nvlm_context **ctx, nvlm_model **model,
                              nvlm_session **sess, gen_out *out)
{
    nvlm_context_params cp;
    a->context_params_init(&cp, sizeof cp);
    cp.backend = NVLM_BACKEND_CPU;
    cp.n_threads = 2;
    nvlm_status st = a->context_create(&cp, ctx);
    CHECK(st == NVLM_OK, "context_create -> %d", (int)st);
    if (st != NVLM_OK) {
        return false;
    }
    st = a->model_load(*ctx, MODEL_DIR, NULL, model);
    CHECK(st == NVLM_OK, "model_load -> %d: %s", (int)st, a->last_error(*ctx));
    if (st != NVLM_OK) {
        return false;
    }
    st = a->session_create(*model, NULL, sess);
    CHECK(st == NVLM_OK, "session_create -> %d: %s", (int)st, a->last_error(*model));
    if (st != NVLM_OK) {
        return false;
    }
    st = a->session_add_turn(*sess, NVLM_ROLE_USER, "Describe a cat in one sentence.", NULL, 0);
    CHECK(st == NVLM_OK, "add_turn -> %d: %s", (int)st, a->last_error(*sess));
    nvlm_sampler_params sp;
    a->sampler_params_init(&sp, sizeof sp);
    sp.max_new_tokens = N_GEN;
    static const int32_t no_stop = 0;
    sp.stop_ids = &no_stop; /* non-NULL with n_stop_ids 0: no stop token, exactly N_GEN */
    sp.n_stop_ids = 0;
    memset(out, 0, sizeof *out);
    nvlm_generate_result res;
    memset(&res, 0, sizeof res);
    res.struct_size = sizeof res;
    st = a->session_generate(*sess, &sp, on_token, out, &res);
    CHECK(st == NVLM_OK, "generate -> %d: %s", (int)st, a->last_error(*sess));
    CHECK_EQ_INT(out->n, N_GEN, "tokens generated");
    CHECK_EQ_INT(res.n_tokens, N_GEN, "result n_tokens");
    return st == NVLM_OK && out->n == N_GEN;
}

int main(void)
{
    const char *path = getenv("NVLM_TEST_SHLIB");
    if (path == NULL || path[0] == '\0') {
        path = NVLM_TEST_SHLIB;
    }
    printf("library: %s\n", path);

    tu_section("first load, dlclose with live handles");
    void *lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    CHECK(lib != NULL, "dlopen %s: %s", path, lib != NULL ? "ok" : dlerror());
    if (lib == NULL) {
        return tu_done();
    }
    api a;
    if (!resolve(lib, &a)) {
        return tu_done();
    }
    gen_out first;
    bool ok1 = load_and_generate(&a, &g_ctx, &g_model, &g_sess, &first);
    /* Right after generate the pool worker is still spinning in library code (or blocked in a
     * wait that returns into it): an unmapping dlclose makes it fault. */
    CHECK(dlclose(lib) == 0, "dlclose with a live context, model and session");
    /* -z nodelete: the library stays mapped after its last dlclose. */
    void *still = dlopen(path, RTLD_NOW | RTLD_LOCAL | RTLD_NOLOAD);
    CHECK(still != NULL, "library still mapped after dlclose (linked with -z nodelete)");
    if (still != NULL) {
        dlclose(still);
    }
    /* Give the live worker time to run (it would fault in unmapped code). */
    struct timespec pause = {0, 50 * 1000 * 1000};
    nanosleep(&pause, NULL);

    tu_section("second load in the same process");
    lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    CHECK(lib != NULL, "second dlopen %s: %s", path, lib != NULL ? "ok" : dlerror());
    if (lib == NULL) {
        return tu_done();
    }
    if (!resolve(lib, &a)) {
        return tu_done();
    }
    nvlm_context *ctx = NULL;
    nvlm_model *model = NULL;
    nvlm_session *sess = NULL;
    gen_out second;
    bool ok2 = load_and_generate(&a, &ctx, &model, &sess, &second);
    if (ok1 && ok2) {
        /* Greedy decoding of the same prompt: the second load gives the same tokens. */
        CHECK(memcmp(first.ids, second.ids, sizeof(int32_t) * N_GEN) == 0,
              "second load generates the same greedy tokens as the first");
    }
    /* The first load's handles still work after the dlclose / dlopen round trip. */
    if (ok1) {
        gen_out again;
        memset(&again, 0, sizeof again);
        nvlm_sampler_params sp;
        a.sampler_params_init(&sp, sizeof sp);
        sp.max_new_tokens = 2;
        nvlm_status st = a.session_generate(g_sess, &sp, on_token, &again, NULL);
        CHECK(st == NVLM_OK, "first load's session generates after dlclose -> %d", (int)st);
    }
    a.session_free(sess);
    a.model_free(model);
    a.context_free(ctx);
    /* The first load's handles are freed last, through the second handle's functions. */
    a.session_free(g_sess);
    a.model_free(g_model);
    a.context_free(g_ctx);
    g_sess = NULL;
    g_model = NULL;
    g_ctx = NULL;
    CHECK(dlclose(lib) == 0, "final dlclose");
    return tu_done();
}
