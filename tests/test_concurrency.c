/*
 * test_concurrency.c - one model, 8 sessions used from 4 threads at once (each thread
 * alternates turns between its 2 sessions): every session's tokens and last logits must be
 * bit-identical to running the same conversations one by one. Greedy and seeded sampling,
 * text and image turns, two user turns each. Then the busy flag: calls that change a session
 * made from its own token callback, or from a second thread while the first is inside
 * generate, return NVLM_ERR_BUSY and change nothing; nvlm_session_free there is deferred.
 * All of it on the plain CPU backend, over tensor-parallel CPU ranks (TP 2), and over TP 2
 * with one communicator for the model that its sessions take turns on.
 * `make tsan-test` runs it under ThreadSanitizer.
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

/* ---- the busy flag ------------------------------------------------------------------------ */

static const char *const busy_q = "Hello, who are you?";

static void busy_params(nvlm_sampler_params *p, int n)
{
    nvlm_sampler_default_params(p);
    p->max_new_tokens = n;
    p->stop_ids = (const int32_t[1]){0};
    p->n_stop_ids = 0;
    p->temperature = 0.9f; /* sampled: a refused nvlm_session_sample must not draw */
    p->top_k = 40;
}

/* The tokens of busy_q + n sampled tokens in a fresh session (seed 77); 0 on failure. */
static size_t busy_reference(nvlm_model *m, int n, int32_t *out, size_t cap)
{
    nvlm_session_params sp;
    nvlm_session_default_params(&sp);
    sp.seed = 77;
    nvlm_session *s = NULL;
    CHECK_OK(nvlm_session_create(m, &sp, &s));
    nvlm_sampler_params p;
    busy_params(&p, n);
    size_t got = 0;
    if (s != NULL && nvlm_session_add_turn(s, NVLM_ROLE_USER, busy_q, NULL, 0) == NVLM_OK &&
        nvlm_session_generate(s, &p, NULL, NULL, NULL) == NVLM_OK) {
        const int32_t *t = nvlm_session_tokens(s, &got);
        got = got <= cap ? got : 0;
        memcpy(out, t, got * sizeof(int32_t));
    }
    nvlm_session_free(s);
    CHECK(got > 0, "reference run");
    return got;
}

static nvlm_session *busy_session(nvlm_model *m)
{
    nvlm_session_params sp;
    nvlm_session_default_params(&sp);
    sp.seed = 77;
    nvlm_session *s = NULL;
    CHECK_OK(nvlm_session_create(m, &sp, &s));
    if (s != NULL) {
        CHECK_OK(nvlm_session_add_turn(s, NVLM_ROLE_USER, busy_q, NULL, 0));
    }
    return s;
}

/* Every call that changes the session, made on `s`; statuses into got[5]. */
static void busy_calls(nvlm_session *s, nvlm_image *img, nvlm_status got[5])
{
    nvlm_sampler_params p;
    busy_params(&p, 2);
    int32_t ids[2] = {5, 6};
    int32_t tok = -1;
    nvlm_image *imgs[1] = {img};
    got[0] = nvlm_session_generate(s, &p, NULL, NULL, NULL);
    got[1] = nvlm_session_reset(s);
    got[2] = nvlm_session_add_turn(s, NVLM_ROLE_USER, "<image>\nagain", imgs, 1);
    got[3] = nvlm_session_feed(s, ids, 2, NULL, 0);
    got[4] = nvlm_session_sample(s, &p, &tok);
}

static const char *const busy_names[5] = {"generate", "reset", "add_turn", "feed", "sample"};

typedef struct reenter {
    nvlm_session *s;
    nvlm_image *img;
    int calls;
    int at;                 /* act on this call (1-based) */
    bool do_free;           /* act = nvlm_session_free; else the five calls */
    nvlm_status got[5];
    size_t n_tokens;        /* nvlm_session_tokens inside the callback */
    bool logits_ok;
    bool err_empty;
} reenter;

static int reenter_cb(void *user, int32_t token, const char *text, size_t len)
{
    (void)token;
    (void)text;
    (void)len;
    reenter *r = user;
    r->calls++;
    if (r->calls != r->at) {
        return 0;
    }
    if (r->do_free) {
        nvlm_session_free(r->s);
        return 0;
    }
    busy_calls(r->s, r->img, r->got);
    size_t v = 0;
    r->logits_ok = nvlm_session_logits(r->s, &v) != NULL && v == 4032;
    nvlm_session_tokens(r->s, &r->n_tokens);
    r->err_empty = strcmp(nvlm_last_error(r->s), "") == 0;
    return 0;
}

static void test_busy_reentry(nvlm_model *m, nvlm_image *img)
{
    tu_section("busy: session calls from inside its own token callback");
    int32_t want[512];
    size_t n_want = busy_reference(m, 6, want, NV_ARRAY_LEN(want));
    nvlm_session *s = busy_session(m);
    if (s == NULL || n_want == 0) {
        nvlm_session_free(s);
        return;
    }
    size_t n0 = 0;
    nvlm_session_tokens(s, &n0);
    reenter r = {.s = s, .img = img, .at = 2};
    nvlm_sampler_params p;
    busy_params(&p, 6);
    nvlm_generate_result res;
    res.struct_size = sizeof res;
    CHECK_OK(nvlm_session_generate(s, &p, reenter_cb, &r, &res));
    for (int i = 0; i < 5; i++) {
        CHECK(r.got[i] == NVLM_ERR_BUSY, "%s inside the callback -> %d", busy_names[i],
              (int)r.got[i]);
    }
    CHECK(r.logits_ok, "nvlm_session_logits works inside the callback");
    CHECK_EQ_INT(r.n_tokens, n0 + 1, "nvlm_session_tokens inside the callback");
    CHECK(r.err_empty, "the refused calls left the error text alone");
    size_t n = 0;
    const int32_t *t = nvlm_session_tokens(s, &n);
    CHECK(res.n_tokens == 6 && n == n_want && memcmp(t, want, n * sizeof(int32_t)) == 0,
          "the refused calls changed nothing: the same %zu tokens as without them", n_want);
    nvlm_session_free(s);

    tu_section("busy: nvlm_session_free inside the token callback is deferred");
    s = busy_session(m);
    if (s == NULL) {
        return;
    }
    reenter f = {.s = s, .at = 2, .do_free = true};
    res.n_tokens = -1;
    CHECK_OK(nvlm_session_generate(s, &p, reenter_cb, &f, &res));
    /* the session is gone here: only the result may be read */
    CHECK(res.n_tokens == 1 && res.finish_reason == NVLM_FINISH_CANCELLED,
          "generate stopped after the callback that freed (%d tokens, reason %d)", res.n_tokens,
          (int)res.finish_reason);
}

typedef struct racer {
    nvlm_session *s;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool inside;            /* thread A is in its token callback */
    bool release;           /* thread A may leave it */
    nvlm_status st;
    nvlm_generate_result res;
} racer;

static int racer_cb(void *user, int32_t token, const char *text, size_t len)
{
    (void)token;
    (void)text;
    (void)len;
    racer *r = user;
    pthread_mutex_lock(&r->mu);
    if (!r->inside) {
        r->inside = true;
        pthread_cond_broadcast(&r->cv);
        while (!r->release) {
            pthread_cond_wait(&r->cv, &r->mu);
        }
    }
    pthread_mutex_unlock(&r->mu);
    return 0;
}

static void *racer_run(void *arg)
{
    racer *r = arg;
    nvlm_sampler_params p;
    busy_params(&p, 6);
    r->res.struct_size = sizeof r->res;
    r->st = nvlm_session_generate(r->s, &p, racer_cb, r, &r->res);
    return NULL;
}

static void test_busy_threads(nvlm_model *m, nvlm_image *img)
{
    int32_t want[512];
    size_t n_want = busy_reference(m, 6, want, NV_ARRAY_LEN(want));
    for (int mode = 0; mode < 2; mode++) {
        tu_section(mode == 0 ? "busy: a second thread's calls while the first generates"
                             : "busy: nvlm_session_free from a second thread is deferred");
        nvlm_session *s = busy_session(m);
        if (s == NULL || n_want == 0) {
            nvlm_session_free(s);
            return;
        }
        racer r = {.s = s};
        pthread_mutex_init(&r.mu, NULL);
        pthread_cond_init(&r.cv, NULL);
        pthread_t th;
        CHECK(pthread_create(&th, NULL, racer_run, &r) == 0, "start thread A");
        pthread_mutex_lock(&r.mu);
        while (!r.inside) {
            pthread_cond_wait(&r.cv, &r.mu);
        }
        pthread_mutex_unlock(&r.mu);
        /* thread A is inside generate (blocked in its callback) */
        if (mode == 0) {
            nvlm_status got[5];
            busy_calls(s, img, got);
            for (int i = 0; i < 5; i++) {
                CHECK(got[i] == NVLM_ERR_BUSY, "%s from thread B -> %d", busy_names[i],
                      (int)got[i]);
            }
        } else {
            nvlm_session_free(s);
        }
        pthread_mutex_lock(&r.mu);
        r.release = true;
        pthread_cond_broadcast(&r.cv);
        pthread_mutex_unlock(&r.mu);
        pthread_join(th, NULL);
        CHECK_OK(r.st);
        if (mode == 0) {
            size_t n = 0;
            const int32_t *t = nvlm_session_tokens(s, &n);
            CHECK(r.res.n_tokens == 6 && n == n_want &&
                      memcmp(t, want, n * sizeof(int32_t)) == 0,
                  "thread A's generation is unchanged");
            /* the session is free again */
            nvlm_status got[5];
            busy_calls(s, img, got);
            for (int i = 0; i < 5; i++) {
                CHECK(got[i] == NVLM_OK, "%s afterwards -> %d (%s)", busy_names[i],
                      (int)got[i], nvlm_last_error(s));
            }
            nvlm_session_free(s);
        } else {
            CHECK(r.res.n_tokens == 0 && r.res.finish_reason == NVLM_FINISH_CANCELLED,
                  "thread A stopped at the freed session (%d tokens, reason %d)",
                  r.res.n_tokens, (int)r.res.finish_reason);
        }
        pthread_cond_destroy(&r.cv);
        pthread_mutex_destroy(&r.mu);
    }
}

/* tp ranks; shared: the model's sessions share one communicator and take turns op by op (the
 * way a per-model NCCL communicator is used) instead of one communicator each. */
static void run_all(int tp, bool shared)
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
    if (m != NULL && shared) {
        CHECK_OK(nv_tp_share_local_comm(m->engine->be));
    }
    if (m != NULL) {
        CHECK_OK(nvlm_image_load_file(ctx, "tests/data/images/chelsea_square_160.png", NULL,
                                      &img));
    }
    static conv_out seq[N_SESSIONS];
    static conv_out par[N_SESSIONS];
    if (m != NULL && img != NULL) {
        char sec[80];
        snprintf(sec, sizeof sec, "TP %d%s: sequential reference", tp,
                 shared ? ", one communicator per model" : "");
        tu_section(sec);
        run_env env = {.model = m, .img = img, .out = seq, .thread = -1};
        run(&env);
        for (int i = 0; i < N_SESSIONS; i++) {
            CHECK(seq[i].st == NVLM_OK, "sequential conversation %d -> %d", i, (int)seq[i].st);
        }
        snprintf(sec, sizeof sec, "TP %d%s: 8 sessions on 4 threads", tp,
                 shared ? ", one communicator per model" : "");
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
        test_busy_reentry(m, img);
        test_busy_threads(m, img);
    }
    nvlm_image_free(img);
    nvlm_model_free(m);
    nvlm_context_free(ctx);
}

int main(void)
{
    run_all(1, false);
    run_all(2, false);
    run_all(2, true);
    return tu_done();
}
