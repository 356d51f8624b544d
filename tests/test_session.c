/*
 * test_session.c - the whole tiny model through the public API against the reference goldens:
 * image files -> nvlm_session_add_turn (turns as the reference renders them) -> prompt ids,
 * first logits, 16 greedy tokens (max_new_tokens 16, no stop ids), streamed text and the
 * reference's chat_response. Also: feed of raw ids, KV reuse across turns equals a fresh
 * prefill, sampler features (seeded RNG, top-k/p, min-p, bias, penalties, stop ids/strings,
 * cancel), context limits, argument errors, and `nvlm generate --json` (env NVLM_CLI). On the
 * CPU; opts in to NVLM_BACKEND (testutil.h): NVLM_BACKEND=cuda runs it on CUDA (gpu_check).
 */
#include "eng_golden.h"

#include <cJSON.h>
#include <ctype.h>

typedef struct text_acc {
    char buf[4096];
    size_t len;
    int calls;
    int cancel_at;      /* return 1 on this call (1-based); 0 = never */
    const float *first_logits;
    nvlm_session *s;
} text_acc;

static int on_token(void *user, int32_t token, const char *text, size_t len)
{
    (void)token;
    text_acc *a = user;
    if (len > 0 && a->len + len < sizeof a->buf) {
        memcpy(a->buf + a->len, text, len);
        a->len += len;
        a->buf[a->len] = '\0';
    }
    a->calls++;
    return a->cancel_at > 0 && a->calls == a->cancel_at;
}

static void strip(char *s)
{
    size_t n = strlen(s);
    while (n > 0 && isspace((unsigned char)s[n - 1])) {
        s[--n] = '\0';
    }
    size_t a = 0;
    while (s[a] != '\0' && isspace((unsigned char)s[a])) {
        a++;
    }
    memmove(s, s + a, n - a + 1);
}

static void test_case(nvlm_context *ctx, nvlm_model *m, const cJSON *c)
{
    const char *name = eg_jstr(c, "name");
    tu_section(name);
    nv_st_file *f = eg_open(ctx, name);
    size_t n_ids = 0;
    size_t n_steps = 0;
    int32_t *ids = eg_ids(f, "prompt_ids", &n_ids);
    int32_t *steps = eg_ids(f, "step_tokens", &n_steps);
    const nv_tensor *sl = eg_tensor(f, "step_logits", NV_F32);
    nvlm_session *s = eg_build_case(ctx, m, c, NULL);
    if (s == NULL || ids == NULL || steps == NULL || sl == NULL) {
        goto out;
    }
    size_t n_tok = 0;
    const int32_t *tok = nvlm_session_tokens(s, &n_tok);
    CHECK_EQ_INT(n_tok, n_ids, "prompt length");
    size_t same = 0;
    while (same < n_tok && same < n_ids && tok[same] == ids[same]) {
        same++;
    }
    CHECK(same == n_ids && n_tok == n_ids, "%s: prompt ids equal the golden (first diff at %zu)",
          name, same);
    size_t V = 0;
    const float *lg = nvlm_session_logits(s, &V);
    CHECK(lg != NULL && V == 4032, "logits of the last prompt position");
    if (lg != NULL) {
        eg_close("first-step logits", lg, sl->data, V, 2e-4);
    }
    nvlm_sampler_params p;
    eg_greedy_params(&p, 16);
    text_acc acc = {.len = 0};
    nvlm_generate_result r;
    r.struct_size = sizeof r;
    CHECK_OK(nvlm_session_generate(s, &p, on_token, &acc, &r));
    CHECK_EQ_INT(r.n_tokens, 16, "generated tokens");
    CHECK_EQ_INT(r.finish_reason, NVLM_FINISH_MAX_TOKENS, "finish reason");
    CHECK_EQ_INT(acc.calls, 16, "callback calls");
    tok = nvlm_session_tokens(s, &n_tok);
    bool eq = n_tok == n_ids + 16;
    for (size_t i = 0; eq && i < 16; i++) {
        eq = tok[n_ids + i] == steps[i];
    }
    CHECK(eq, "%s: 16 greedy tokens equal the golden", name);
    const cJSON *g = cJSON_GetObjectItemCaseSensitive(c, "greedy");
    const char *want = eg_jstr(g, "text_skip_special");
    CHECK(want != NULL && strcmp(acc.buf, want) == 0, "%s: streamed text '%s' == '%s'", name,
          acc.buf, want != NULL ? want : "");
    strip(acc.buf);
    const char *resp = eg_jstr(c, "chat_response");
    CHECK(resp != NULL && strcmp(acc.buf, resp) == 0, "%s: chat_response", name);
out:
    nvlm_session_free(s);
    free(ids);
    free(steps);
    nv_st_close(f);
}

/* Raw ids through nvlm_session_feed give the same logits; a continued conversation equals a
 * fresh prefill of the same tokens. */
static void test_feed_and_reuse(nvlm_context *ctx, nvlm_model *m)
{
    tu_section("session: feed raw ids with an image; KV reuse across turns");
    nv_st_file *f = eg_open(ctx, "case2_single_tile");
    size_t n_ids = 0;
    int32_t *ids = eg_ids(f, "prompt_ids", &n_ids);
    const nv_tensor *sl = eg_tensor(f, "step_logits", NV_F32);
    nvlm_image *img = NULL;
    CHECK_OK(nvlm_image_load_file(ctx, "tests/data/images/chelsea_square_160.png", NULL, &img));
    nvlm_session *s = NULL;
    CHECK_OK(nvlm_session_create(m, NULL, &s));
    if (s != NULL && ids != NULL && img != NULL && sl != NULL) {
        CHECK_EQ_INT(nvlm_session_feed(s, ids, n_ids, NULL, 0), NVLM_ERR_INVALID_ARGUMENT,
                     "pad tokens without images");
        CHECK_EQ_INT(nvlm_session_feed(s, ids, 10, &img, 1), NVLM_ERR_INVALID_ARGUMENT,
                     "an image without pad tokens");
        CHECK_OK(nvlm_session_feed(s, ids, n_ids, &img, 1));
        size_t V = 0;
        const float *lg = nvlm_session_logits(s, &V);
        if (lg != NULL) {
            eg_close("feed: first-step logits", lg, sl->data, V, 2e-4);
        }
    }
    nvlm_session_free(s);
    nvlm_image_free(img);
    free(ids);
    nv_st_close(f);

    /* Text-only conversation: turn 1, 5 generated tokens, turn 2 prefilled on top. */
    nvlm_session *a = NULL;
    nvlm_session *b = NULL;
    CHECK_OK(nvlm_session_create(m, NULL, &a));
    CHECK_OK(nvlm_session_create(m, NULL, &b));
    if (a == NULL || b == NULL) {
        nvlm_session_free(a);
        nvlm_session_free(b);
        return;
    }
    nvlm_sampler_params p;
    eg_greedy_params(&p, 5);
    CHECK_OK(nvlm_session_add_turn(a, NVLM_ROLE_USER, "Hello there.", NULL, 0));
    CHECK_OK(nvlm_session_generate(a, &p, NULL, NULL, NULL));
    CHECK_OK(nvlm_session_add_turn(a, NVLM_ROLE_USER, "And then?", NULL, 0));
    size_t n = 0;
    const int32_t *t = nvlm_session_tokens(a, &n);
    /* 5 generated ids without <|im_end|>: the next turn closes the reply first */
    CHECK(n > 5 && t != NULL, "tokens after two turns");
    CHECK_OK(nvlm_session_feed(b, t, n, NULL, 0));
    size_t V = 0;
    const float *la = nvlm_session_logits(a, &V);
    const float *lb = nvlm_session_logits(b, &V);
    if (la != NULL && lb != NULL) {
        eg_close("continued session == fresh prefill", la, lb, V, 2e-5);
    }
    CHECK_OK(nvlm_session_reset(a));
    CHECK(nvlm_session_logits(a, &V) == NULL, "no logits after reset");
    CHECK_EQ_INT(nvlm_session_generate(a, &p, NULL, NULL, NULL), NVLM_ERR_INVALID_ARGUMENT,
                 "generate before anything is fed");
    nvlm_session_free(a);
    nvlm_session_free(b);
}

static void test_generation_controls(nvlm_model *m)
{
    tu_section("session: stop ids, stop strings, cancel, context full, seeded sampling");
    static const char *q = "Hello, who are you? Réponds en français — 你好! 😀";
    /* case3's greedy tokens: 63 3861 3927 3241 ...; text "`iresrest window..." */
    nvlm_session *s = NULL;
    CHECK_OK(nvlm_session_create(m, NULL, &s));
    if (s == NULL) {
        return;
    }
    nvlm_sampler_params p;
    nvlm_generate_result r;
    r.struct_size = sizeof r;
    int32_t stop[1] = {3241};
    CHECK_OK(nvlm_session_add_turn(s, NVLM_ROLE_USER, q, NULL, 0));
    eg_greedy_params(&p, 16);
    p.stop_ids = stop;
    p.n_stop_ids = 1;
    CHECK_OK(nvlm_session_generate(s, &p, NULL, NULL, &r));
    CHECK_EQ_INT(r.n_tokens, 4, "stopped at the 4th token");
    CHECK_EQ_INT(r.finish_reason, NVLM_FINISH_STOP_TOKEN, "stop token");

    CHECK_OK(nvlm_session_reset(s));
    CHECK_OK(nvlm_session_add_turn(s, NVLM_ROLE_USER, q, NULL, 0));
    eg_greedy_params(&p, 16);
    const char *ss[1] = {"rest w"};
    p.stop_strings = ss;
    p.n_stop_strings = 1;
    text_acc acc = {.len = 0};
    CHECK_OK(nvlm_session_generate(s, &p, on_token, &acc, &r));
    CHECK_EQ_INT(r.finish_reason, NVLM_FINISH_STOP_STRING, "stop string");
    CHECK_EQ_INT(r.n_tokens, 4, "stop string completed by the 4th token");
    CHECK(strstr(acc.buf, "rest w") != NULL, "text up to the stop string streamed: '%s'",
          acc.buf);

    CHECK_OK(nvlm_session_reset(s));
    CHECK_OK(nvlm_session_add_turn(s, NVLM_ROLE_USER, q, NULL, 0));
    eg_greedy_params(&p, 16);
    text_acc c2 = {.cancel_at = 2};
    CHECK_OK(nvlm_session_generate(s, &p, on_token, &c2, &r));
    CHECK_EQ_INT(r.n_tokens, 2, "cancelled after 2");
    CHECK_EQ_INT(r.finish_reason, NVLM_FINISH_CANCELLED, "cancelled");

    /* A generated <|vision_pad|> is an ordinary token (forced here by a logit bias). */
    CHECK_OK(nvlm_session_reset(s));
    CHECK_OK(nvlm_session_add_turn(s, NVLM_ROLE_USER, q, NULL, 0));
    eg_greedy_params(&p, 3);
    nvlm_logit_bias pad_bias = {4011, 100.0f};
    p.logit_bias = &pad_bias;
    p.n_logit_bias = 1;
    CHECK_OK(nvlm_session_generate(s, &p, NULL, NULL, &r));
    size_t n_pad = 0;
    const int32_t *tp = nvlm_session_tokens(s, &n_pad);
    CHECK(r.n_tokens == 3 && tp != NULL && tp[n_pad - 1] == 4011, "generated <|vision_pad|> x3");
    nvlm_session_free(s);

    /* n_ctx = prompt (51) + 3 */
    nvlm_session_params sp;
    nvlm_session_default_params(&sp);
    sp.n_ctx = 54;
    CHECK_OK(nvlm_session_create(m, &sp, &s));
    if (s != NULL) {
        CHECK_OK(nvlm_session_add_turn(s, NVLM_ROLE_USER, q, NULL, 0));
        eg_greedy_params(&p, 16);
        CHECK_OK(nvlm_session_generate(s, &p, NULL, NULL, &r));
        CHECK_EQ_INT(r.n_tokens, 3, "tokens until the context is full");
        CHECK_EQ_INT(r.finish_reason, NVLM_FINISH_CONTEXT_FULL, "context full");
        size_t n = 0;
        nvlm_session_tokens(s, &n);
        CHECK_EQ_INT(nvlm_session_add_turn(s, NVLM_ROLE_USER, "more", NULL, 0),
                     NVLM_ERR_CONTEXT_FULL, "a turn past n_ctx");
        size_t n2 = 0;
        nvlm_session_tokens(s, &n2);
        CHECK_EQ_INT(n2, n, "nothing of the refused turn kept");
        nvlm_session_free(s);
    }

    /* Seeded sampling: same seed -> same tokens, also after reset; bf16 KV runs. */
    int32_t runs[3][12];
    for (int k = 0; k < 3; k++) {
        nvlm_session_default_params(&sp);
        sp.seed = k < 2 ? 42 : 43;
        sp.kv_type = k == 1 ? NVLM_KV_F32 : NVLM_KV_DEFAULT;
        s = NULL;
        CHECK_OK(nvlm_session_create(m, &sp, &s));
        if (s == NULL) {
            return;
        }
        nvlm_sampler_default_params(&p);
        p.temperature = 1.5f;
        p.top_k = 50;
        p.top_p = 0.95f;
        p.min_p = 0.01f;
        p.repetition_penalty = 1.1f;
        p.max_new_tokens = 12;
        p.stop_ids = stop;
        p.n_stop_ids = 0;
        for (int rep = 0; rep < 2; rep++) {
            CHECK_OK(nvlm_session_reset(s));
            CHECK_OK(nvlm_session_add_turn(s, NVLM_ROLE_USER, q, NULL, 0));
            CHECK_OK(nvlm_session_generate(s, &p, NULL, NULL, &r));
            size_t n = 0;
            const int32_t *t = nvlm_session_tokens(s, &n);
            if (rep == 0) {
                memcpy(runs[k], t + n - 12, sizeof runs[k]);
            } else {
                CHECK(memcmp(runs[k], t + n - 12, sizeof runs[k]) == 0,
                      "reset reseeds: the same 12 sampled tokens");
            }
        }
        nvlm_session_free(s);
    }
    CHECK(memcmp(runs[0], runs[1], sizeof runs[0]) == 0, "same seed, same tokens");
    CHECK(memcmp(runs[0], runs[2], sizeof runs[0]) != 0, "another seed, other tokens");
}

/* smp_sample's token, or -1 after a failed check. */
static int32_t pick(const nvlm_sampler_params *p, const float *l, smp_work *w,
                    const int32_t *hist, size_t n_hist, smp_rng *rng)
{
    int32_t t = -1;
    nvlm_status st = smp_sample(p, l, w, hist, n_hist, rng, &t, NULL);
    CHECK(st == NVLM_OK, "smp_sample -> %d", (int)st);
    return st == NVLM_OK ? t : -1;
}

static void test_sampler_unit(void)
{
    tu_section("sampler: greedy ties, bias, penalties, top-k/p, min-p, distribution");
    smp_work w;
    CHECK_OK(smp_work_init(NULL, &w, 8));
    smp_rng rng;
    smp_seed(&rng, 7);
    nvlm_sampler_params p;
    nvlm_sampler_default_params(&p);
    p.max_new_tokens = 1;
    CHECK_OK(smp_check(&p, &w, NULL));
    float l[8] = {1, 3, 3, 0, -1, 2, 3, -5};
    CHECK_EQ_INT(pick(&p, l, &w, NULL, 0, &rng), 1, "greedy: lowest index of the ties");
    nvlm_logit_bias b[2] = {{1, -INFINITY}, {2, -INFINITY}};
    p.logit_bias = b;
    p.n_logit_bias = 2;
    CHECK_EQ_INT(pick(&p, l, &w, NULL, 0, &rng), 6, "banned tokens skipped");
    p.n_logit_bias = 0;
    int32_t hist[3] = {1, 2, 1};
    p.repetition_penalty = 2.0f;
    CHECK_EQ_INT(pick(&p, l, &w, hist, 3, &rng), 6, "repetition penalty 3 -> 1.5");
    p.repetition_penalty = 1.0f;
    p.frequency_penalty = 0.6f;
    CHECK_EQ_INT(pick(&p, l, &w, hist, 3, &rng), 6,
                 "frequency penalty: 1 and 2 pushed below 6");
    p.frequency_penalty = 0.0f;
    p.presence_penalty = 1.5f;
    p.penalty_last_n = 1;
    CHECK_EQ_INT(pick(&p, l, &w, hist, 3, &rng), 2, "presence over the last 1 token");
    p.presence_penalty = 0.0f;
    bool zero = true;
    for (int i = 0; i < 8; i++) {
        zero = zero && w.count[i] == 0;
    }
    CHECK(zero, "penalty counts cleared");
    p.temperature = 1.0f;
    p.top_k = 1;
    int hits = 0;
    for (int i = 0; i < 50; i++) {
        hits += pick(&p, l, &w, NULL, 0, &rng) == 1;
    }
    CHECK_EQ_INT(hits, 50, "top_k 1 with temperature is greedy");
    p.top_k = 0;
    p.top_p = 0.01f;
    hits = 0;
    for (int i = 0; i < 50; i++) {
        hits += pick(&p, l, &w, NULL, 0, &rng) == 1;
    }
    CHECK_EQ_INT(hits, 50, "tiny top_p keeps the best only");
    p.top_p = 1.0f;
    p.min_p = 1.0f;
    hits = 0;
    for (int i = 0; i < 50; i++) {
        int32_t t = pick(&p, l, &w, NULL, 0, &rng);
        hits += t == 1 || t == 2 || t == 6;
    }
    CHECK_EQ_INT(hits, 50, "min_p 1 keeps the tied best only");
    p.min_p = 0.0f;
    /* two tokens with p = 1/3, 2/3 */
    float two[8] = {0.0f, logf(2.0f), -INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY,
                    -INFINITY};
    int c1 = 0;
    int N = 6000;
    for (int i = 0; i < N; i++) {
        c1 += pick(&p, two, &w, NULL, 0, &rng) == 1;
    }
    CHECK(fabs((double)c1 / N - 2.0 / 3.0) < 0.03, "sampled frequency %.3f ~ 2/3",
          (double)c1 / N);
    p.temperature = -1.0f;
    CHECK_EQ_INT(smp_check(&p, &w, NULL), NVLM_ERR_INVALID_ARGUMENT, "negative temperature");
    p.temperature = 0.0f;
    int32_t badstop = 8;
    p.stop_ids = &badstop;
    p.n_stop_ids = 1;
    CHECK_EQ_INT(smp_check(&p, &w, NULL), NVLM_ERR_INVALID_ARGUMENT, "stop id out of range");
    smp_work_free(NULL, &w);
}

/* Allocator hooks that fail once `alloc_budget` allocations have been made (-1: never). */
static long alloc_budget = -1;
static long alloc_count = 0;

static void *fail_alloc(void *user, size_t size)
{
    (void)user;
    if (alloc_budget >= 0 && alloc_count++ >= alloc_budget) {
        return NULL;
    }
    return malloc(size);
}

static void *fail_realloc(void *user, void *ptr, size_t size)
{
    (void)user;
    if (alloc_budget >= 0 && alloc_count++ >= alloc_budget) {
        return NULL;
    }
    return realloc(ptr, size);
}

static void fail_free(void *user, void *ptr)
{
    (void)user;
    free(ptr);
}

/* Every allocation of session create / add_turn / generate failing in turn: each failure is a
 * clean status (no crash; leaks show under ASan), and the run succeeds once enough memory is
 * allowed. */
static void test_alloc_failures(void)
{
    tu_section("session: allocation failure at every step");
    nvlm_context_params cp;
    nvlm_context_default_params(&cp);
    cp.n_threads = 2;
    cp.backend = NVLM_BACKEND_CPU;
    cp.alloc_fn = fail_alloc;
    cp.realloc_fn = fail_realloc;
    cp.free_fn = fail_free;
    nvlm_context *ctx = NULL;
    nvlm_model *m = NULL;
    alloc_budget = -1;
    CHECK_OK(nvlm_context_create(&cp, &ctx));
    CHECK_OK(ctx != NULL ? nvlm_model_load(ctx, EG_MODEL_DIR, NULL, &m) : NVLM_ERR_INTERNAL);
    if (m == NULL) {
        nvlm_context_free(ctx);
        return;
    }
    int failures = 0;
    int bad_status = 0;
    bool done = false;
    for (long n = 0; n < 2000 && !done; n++) {
        alloc_count = 0;
        alloc_budget = n;
        nvlm_session *s = NULL;
        nvlm_status st = nvlm_session_create(m, NULL, &s);
        if (st == NVLM_OK) {
            st = nvlm_session_add_turn(s, NVLM_ROLE_USER, "Hello, who are you?", NULL, 0);
        }
        if (st == NVLM_OK) {
            nvlm_sampler_params p;
            eg_greedy_params(&p, 4);
            const char *stop[1] = {"zzz"};
            p.stop_strings = stop;
            p.n_stop_strings = 1;
            st = nvlm_session_generate(s, &p, NULL, NULL, NULL);
        }
        nvlm_session_free(s);
        if (st == NVLM_OK) {
            done = true;
        } else {
            failures++;
            bad_status += st != NVLM_ERR_OUT_OF_MEMORY;
        }
    }
    alloc_budget = -1;
    CHECK(done, "the run succeeds with enough memory (after %d failing budgets)", failures);
    CHECK(failures > 10, "allocations were exercised (%d failing budgets)", failures);
    CHECK_EQ_INT(bad_status, 0, "every failure reported NVLM_ERR_OUT_OF_MEMORY");
    nvlm_model_free(m);
    nvlm_context_free(ctx);
}

static void test_cli(const cJSON *case1)
{
    tu_section("cli: nvlm generate --json on case1");
    const char *cli = getenv("NVLM_CLI");
    if (cli == NULL || cli[0] == '\0') {
        printf("SKIP cli: NVLM_CLI not set\n");
        return;
    }
    char cmd[1024];
    snprintf(cmd, sizeof cmd,
             "%s generate " EG_MODEL_DIR " -i tests/data/images/coffee_600x400.jpg "
             "-p '%s' -n 16 --json --backend %s",
             cli, eg_jstr(case1, "question"), tu_backend_name());
    FILE *pf = popen(cmd, "r");
    CHECK(pf != NULL, "popen %s", cmd);
    if (pf == NULL) {
        return;
    }
    static char out[1 << 16];
    size_t n = fread(out, 1, sizeof out - 1, pf);
    out[n] = '\0';
    int rc = pclose(pf);
    CHECK_EQ_INT(rc, 0, "nvlm generate exit status");
    cJSON *j = cJSON_Parse(out);
    CHECK(j != NULL, "--json output parses: %.200s", out);
    if (j == NULL) {
        return;
    }
    const cJSON *toks = cJSON_GetObjectItemCaseSensitive(j, "tokens");
    const cJSON *want = cJSON_GetObjectItemCaseSensitive(
        cJSON_GetObjectItemCaseSensitive(case1, "greedy"), "tokens");
    /* Compare up to and including the first eos (4002); the goldens run 16 steps anyway. */
    int nw = cJSON_GetArraySize(want);
    int cut = nw;
    for (int i = 0; i < nw; i++) {
        if (cJSON_GetArrayItem(want, i)->valueint == 4002) {
            cut = i + 1;
            break;
        }
    }
    bool eq = cJSON_GetArraySize(toks) == cut;
    for (int i = 0; eq && i < cut; i++) {
        eq = cJSON_GetArrayItem(toks, i)->valueint == cJSON_GetArrayItem(want, i)->valueint;
    }
    CHECK(eq, "cli tokens equal the golden greedy tokens");
    const char *text = eg_jstr(j, "text");
    const char *resp = eg_jstr(case1, "chat_response");
    CHECK(text != NULL && resp != NULL && strcmp(text, resp) == 0, "cli text == chat_response");
    const cJSON *pt = cJSON_GetObjectItemCaseSensitive(j, "prompt_tokens");
    CHECK_EQ_INT(cJSON_GetArraySize(pt), 1873, "cli prompt tokens");
    cJSON_Delete(j);
}


/* A backend with a per-thread state like CUDA's current device: the model's backend ops
 * wrapped so that every allocation "selects device 7" and thread_enter/leave save and restore
 * the state. Every public call must give the caller's state back, session creation (the
 * exec, the KV cache and the device logits allocated) and its failure path included. */
static int g_cur_dev;
static const nv_backend_ops *g_real_ops;
static int g_fail_alloc;      /* the alloc call (1-based) that fails; 0 = none */
static int g_allocs;

static int dev_enter(nv_backend *be)
{
    (void)be;
    return g_cur_dev;
}

static void dev_leave(nv_backend *be, int saved)
{
    (void)be;
    g_cur_dev = saved;
}

static nvlm_status dev_alloc(nv_exec *ex, size_t bytes, void **out)
{
    g_cur_dev = 7;
    if (++g_allocs == g_fail_alloc) {
        *out = NULL;
        return nv_error(ex->err_handle, NVLM_ERR_OUT_OF_MEMORY, "injected");
    }
    return g_real_ops->alloc(ex, bytes, out);
}

static nvlm_status dev_alloc_kv(nv_exec *ex, int64_t rows, int kv_heads, int head_dim,
                                nv_dtype dtype, void **out)
{
    g_cur_dev = 7;
    if (++g_allocs == g_fail_alloc) {
        *out = NULL;
        return nv_error(ex->err_handle, NVLM_ERR_OUT_OF_MEMORY, "injected");
    }
    return g_real_ops->alloc_kv(ex, rows, kv_heads, head_dim, dtype, out);
}

static void test_device_restored(nvlm_model *m)
{
    tu_section("session create and free give the caller's device back");
    nv_backend *be = m->engine->be;
    g_real_ops = be->ops;
    nv_backend_ops ops = *be->ops;
    ops.thread_enter = dev_enter;
    ops.thread_leave = dev_leave;
    ops.alloc = dev_alloc;
    ops.alloc_kv = dev_alloc_kv;
    be->ops = &ops;
    bool reserve = be->kv_reserve_all; /* the KV cache allocated at creation, as on CUDA */
    be->kv_reserve_all = true;
    nvlm_session_params sp;
    nvlm_session_default_params(&sp);
    sp.n_ctx = 64;
    for (int fail = 0; fail <= 2; fail++) {
        g_cur_dev = 3;
        g_allocs = 0;
        g_fail_alloc = fail;
        nvlm_session *s = NULL;
        nvlm_status st = nvlm_session_create(m, &sp, &s);
        CHECK_EQ_INT(st, fail ? NVLM_ERR_OUT_OF_MEMORY : NVLM_OK,
                     fail ? "create with a failing allocation" : "create");
        CHECK(g_allocs >= (fail > 0 ? fail : 2), "the session allocated through the backend (%d)",
              g_allocs);
        CHECK_EQ_INT(g_cur_dev, 3, "the caller's device after create");
        g_cur_dev = 3;
        nvlm_session_free(s);
        CHECK_EQ_INT(g_cur_dev, 3, "the caller's device after free");
    }
    be->ops = g_real_ops;
    be->kv_reserve_all = reserve;
}

int main(void)
{
    tu_backend_from_env(); /* NVLM_BACKEND=cuda: the public-API goldens on CUDA */
    size_t size = 0;
    char *json = tu_read_file(EG_GOLDEN_DIR "cases.json", &size);
    cJSON *root = json != NULL ? cJSON_Parse(json) : NULL;
    CHECK(root != NULL, "cases.json parses");
    nvlm_context *ctx = NULL;
    nvlm_model *m = eg_load_model(&ctx, 2);
    const cJSON *cases = cJSON_GetObjectItemCaseSensitive(root, "cases");
    if (m != NULL && cases != NULL) {
        tu_section("session: argument checks");
        nvlm_session *s = NULL;
        CHECK_EQ_INT(nvlm_session_create(NULL, NULL, &s), NVLM_ERR_INVALID_ARGUMENT,
                     "NULL model");
        CHECK_EQ_INT(nvlm_session_create(m, NULL, NULL), NVLM_ERR_INVALID_ARGUMENT, "NULL out");
        CHECK_EQ_INT(nvlm_session_add_turn(NULL, NVLM_ROLE_USER, "x", NULL, 0),
                     NVLM_ERR_INVALID_ARGUMENT, "NULL session");
        nvlm_session_params sp;
        nvlm_session_default_params(&sp);
        sp.n_ctx = 1 << 30;
        CHECK_EQ_INT(nvlm_session_create(m, &sp, &s), NVLM_ERR_INVALID_ARGUMENT,
                     "n_ctx above max_position_embeddings");
        nvlm_session_free(NULL);
        const cJSON *c;
        cJSON_ArrayForEach(c, cases)
        {
            test_case(ctx, m, c);
        }
        test_feed_and_reuse(ctx, m);
        test_generation_controls(m);
        test_sampler_unit();
        test_alloc_failures();
        test_device_restored(m);
        test_cli(cJSON_GetArrayItem(cases, 0));
    }
    nvlm_model_free(m);
    nvlm_context_free(ctx);
    cJSON_Delete(root);
    free(json);
    return tu_done();
}
