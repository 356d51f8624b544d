/*
 * test_concurrency.c - one model, 8 sessions used from 4 threads at once (each thread
 * alternates turns between its 2 sessions): every session's tokens and last logits must be
 * bit-identical to running the same conversations one by one. Greedy and seeded sampling,
 * text and image turns, two user turns each; once on the plain CPU backend and once over
 * tensor-parallel CPU ranks (TP 2). `make tsan-test` runs it under ThreadSanitizer.
 */
#include "eng_golden.h"

#include <pthread.h>

#define N_SESSIONS 8
#define N_THREADS 4
#define N_NEW 8

static const char *const questions[N_SESSIONS] = {
    "Hello, who are you?", "<image>\nWhat animal is this?", "Tell me a story.",
    "Réponds en français — 你好! 😀", "What is 2 + 2?", "Describe the sky.",
    "<image>\nWhat is different here?", "List three colours."};

typedef struct conv_out {
    int32_t tokens[1024];
    size_t n_tokens;
    float logits[4032];
    nvlm_status st;
} conv_out;

typedef struct run_env {
    nvlm_model *model;
    nvlm_image *img;
    conv_out *out;          /* N_SESSIONS results */
    int thread;             /* -1: all sessions, sequentially */
} run_env;

/* One turn (t = 0, 1) of conversation i in session s. */
static nvlm_status turn(nvlm_session *s, int i, int t, nvlm_image *img)
{
    nvlm_image *imgs[1] = {img};
    bool with = t == 0 && strstr(questions[i], "<image>") != NULL;
    NVLM_TRY(nvlm_session_add_turn(s, NVLM_ROLE_USER, t == 0 ? questions[i] : "Why?",
                                   with ? imgs : NULL, with ? 1 : 0));
    nvlm_sampler_params p;
    nvlm_sampler_default_params(&p);
    p.max_new_tokens = N_NEW;
    p.stop_ids = (const int32_t[1]){0};
    p.n_stop_ids = 0;
    if (i % 2 == 1) {
        p.temperature = 0.9f;
        p.top_k = 40;
        p.top_p = 0.9f;
    }
    return nvlm_session_generate(s, &p, NULL, NULL, NULL);
}

static void finish(nvlm_session *s, conv_out *o, nvlm_status st)
{
    o->st = st;
    if (st != NVLM_OK) {
        return;
    }
    const int32_t *t = nvlm_session_tokens(s, &o->n_tokens);
    if (o->n_tokens <= NV_ARRAY_LEN(o->tokens)) {
        memcpy(o->tokens, t, o->n_tokens * sizeof(int32_t));
    }
    size_t v = 0;
    const float *l = nvlm_session_logits(s, &v);
    if (l != NULL && v == NV_ARRAY_LEN(o->logits)) {
        memcpy(o->logits, l, sizeof o->logits);
    }
}

static void *run(void *arg)
{
    run_env *env = arg;
    int mine[N_SESSIONS];
    int n = 0;
    for (int i = 0; i < N_SESSIONS; i++) {
        if (env->thread < 0 || i % N_THREADS == env->thread) {
            mine[n++] = i;
        }
    }
    nvlm_session *s[N_SESSIONS] = {0};
    nvlm_status st[N_SESSIONS];
    for (int k = 0; k < n; k++) {
        nvlm_session_params sp;
        nvlm_session_default_params(&sp);
        sp.seed = 1000 + (uint64_t)mine[k];
        sp.kv_type = mine[k] == 5 ? NVLM_KV_BF16 : NVLM_KV_DEFAULT;
        st[k] = nvlm_session_create(env->model, &sp, &s[k]);
    }
    /* Interleave: turn 0 of every session, then turn 1 of every session. */
    for (int t = 0; t < 2; t++) {
        for (int k = 0; k < n; k++) {
            if (st[k] == NVLM_OK) {
                st[k] = turn(s[k], mine[k], t, env->img);
            }
        }
    }
    for (int k = 0; k < n; k++) {
        finish(s[k], &env->out[mine[k]], st[k]);
        nvlm_session_free(s[k]);
    }
    return NULL;
}

static void run_all(int tp)
{
    nvlm_context_params cp;
    nvlm_context_default_params(&cp);
    cp.n_threads = 2;
    cp.backend = NVLM_BACKEND_CPU;
    cp.tp_size = tp;
    nvlm_context *ctx = NULL;
    CHECK_OK(nvlm_context_create(&cp, &ctx));
    nvlm_model *m = NULL;
    if (ctx != NULL) {
        CHECK_OK(nvlm_model_load(ctx, EG_MODEL_DIR, NULL, &m));
    }
    nvlm_image *img = NULL;
    if (m != NULL) {
        CHECK_OK(nvlm_image_load_file(ctx, "tests/data/images/chelsea_square_160.png", NULL,
                                      &img));
    }
    static conv_out seq[N_SESSIONS];
    static conv_out par[N_SESSIONS];
    if (m != NULL && img != NULL) {
        char sec[80];
        snprintf(sec, sizeof sec, "TP %d: sequential reference", tp);
        tu_section(sec);
        run_env env = {.model = m, .img = img, .out = seq, .thread = -1};
        run(&env);
        for (int i = 0; i < N_SESSIONS; i++) {
            CHECK(seq[i].st == NVLM_OK, "sequential conversation %d -> %d", i, (int)seq[i].st);
        }
        snprintf(sec, sizeof sec, "TP %d: 8 sessions on 4 threads", tp);
        tu_section(sec);
        pthread_t th[N_THREADS];
        run_env envs[N_THREADS];
        for (int t = 0; t < N_THREADS; t++) {
            envs[t] = (run_env){.model = m, .img = img, .out = par, .thread = t};
            CHECK(pthread_create(&th[t], NULL, run, &envs[t]) == 0, "start thread %d", t);
        }
        for (int t = 0; t < N_THREADS; t++) {
            pthread_join(th[t], NULL);
        }
        for (int i = 0; i < N_SESSIONS; i++) {
            CHECK(par[i].st == NVLM_OK, "concurrent conversation %d -> %d", i, (int)par[i].st);
            CHECK(par[i].n_tokens == seq[i].n_tokens && par[i].n_tokens > 2 * N_NEW &&
                      memcmp(par[i].tokens, seq[i].tokens,
                             seq[i].n_tokens * sizeof(int32_t)) == 0,
                  "TP %d conversation %d: same %zu tokens", tp, i, seq[i].n_tokens);
            CHECK(memcmp(par[i].logits, seq[i].logits, sizeof seq[i].logits) == 0,
                  "TP %d conversation %d: bit-identical last logits", tp, i);
        }
    }
    nvlm_image_free(img);
    nvlm_model_free(m);
    nvlm_context_free(ctx);
}

int main(void)
{
    run_all(1);
    run_all(2);
    return tu_done();
}
