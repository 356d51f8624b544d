/*
 * test_tp.c - tensor parallelism over CPU ranks (src/tp/backend_tp.c). The tiny model at TP 2,
 * 3 and 4 reproduces every golden case of the original Python code (prompt ids, per-step logits
 * of all 16 greedy steps within 2e-4 + 1e-4 |want|, the tokens); synthetic models with other
 * head counts (16 query / 8 kv heads, a ViT of 6 real + 2 dummy heads, heads straddling kv
 * groups) give the TP 1 logits and ViT rows at TP 2..8 (rel-L2 <= 1e-5); a rank that fails
 * makes the call fail on every rank within a second, and the session works again afterwards.
 */
#include "eng_golden.h"

#include <stdatomic.h>
#include <time.h>

static nvlm_context *tp_context(int tp, int n_threads)
{
    nvlm_context_params cp;
    nvlm_context_default_params(&cp);
    cp.n_threads = n_threads;
    cp.backend = NVLM_BACKEND_CPU;
    cp.tp_size = tp;
    nvlm_context *ctx = NULL;
    CHECK_OK(nvlm_context_create(&cp, &ctx));
    return ctx;
}

/* Per-step logits of a greedy run, checked against the golden's step_logits in the callback
 * (the logits that chose each token). */
typedef struct steps {
    nvlm_session *s;
    const float *want;
    size_t V;
    int step;
    int bad_steps;
    double worst;
} steps;

static int check_step(void *user, int32_t token, const char *text, size_t len)
{
    (void)token;
    (void)text;
    (void)len;
    steps *st = user;
    size_t V = 0;
    const float *lg = nvlm_session_logits(st->s, &V);
    const float *want = st->want + (size_t)st->step * st->V;
    bool ok = lg != NULL && V == st->V;
    for (size_t i = 0; ok && i < V; i++) {
        double d = fabs((double)lg[i] - want[i]);
        st->worst = d > st->worst ? d : st->worst;
        ok = d <= 2e-4 + EG_RTOL * fabs((double)want[i]);
    }
    st->bad_steps += !ok;
    st->step++;
    return 0;
}

static void golden_case(nvlm_context *ctx, nvlm_model *m, const cJSON *c, int tp)
{
    const char *name = eg_jstr(c, "name");
    nv_st_file *f = eg_open(ctx, name);
    size_t n_ids = 0;
    size_t n_steps = 0;
    int32_t *ids = eg_ids(f, "prompt_ids", &n_ids);
    int32_t *want = eg_ids(f, "step_tokens", &n_steps);
    const nv_tensor *sl = eg_tensor(f, "step_logits", NV_F32);
    nvlm_session *s = eg_build_case(ctx, m, c, NULL);
    if (s != NULL && ids != NULL && want != NULL && sl != NULL) {
        size_t n_tok = 0;
        const int32_t *tok = nvlm_session_tokens(s, &n_tok);
        CHECK(n_tok == n_ids && memcmp(tok, ids, n_ids * sizeof *ids) == 0,
              "TP %d %s: prompt ids equal the golden", tp, name);
        nvlm_sampler_params p;
        nvlm_sampler_default_params(&p);
        static const int32_t none[1] = {0};
        p.stop_ids = none;
        p.n_stop_ids = 0;
        p.max_new_tokens = (int32_t)n_steps;
        steps st = {s, sl->data, (size_t)sl->shape[sl->ndim - 1], 0, 0, 0.0};
        CHECK_OK(nvlm_session_generate(s, &p, check_step, &st, NULL));
        CHECK(st.step == (int)n_steps && st.bad_steps == 0,
              "TP %d %s: logits of all %d steps within 2e-4 + 1e-4|want| (%d off; max |diff| "
              "%.3g)", tp, name, st.step, st.bad_steps, st.worst);
        tok = nvlm_session_tokens(s, &n_tok);
        CHECK(n_tok == n_ids + n_steps &&
                  memcmp(tok + n_ids, want, n_steps * sizeof *want) == 0,
              "TP %d %s: the %zu greedy tokens equal the golden", tp, name, n_steps);
    }
    nvlm_session_free(s);
    free(ids);
    free(want);
    nv_st_close(f);
}

static void test_goldens(void)
{
    char *json = tu_read_file(EG_GOLDEN_DIR "cases.json", NULL);
    cJSON *root = json != NULL ? cJSON_Parse(json) : NULL;
    free(json);
    CHECK(root != NULL, "cases.json parses");
    const cJSON *cases = cJSON_GetObjectItemCaseSensitive(root, "cases");
    for (int tp = 2; tp <= 4; tp++) {
        char sec[64];
        snprintf(sec, sizeof sec, "goldens at TP %d", tp);
        tu_section(sec);
        nvlm_context *ctx = tp_context(tp, 4);
        nvlm_model *m = NULL;
        nvlm_status st = ctx != NULL ? nvlm_model_load(ctx, EG_MODEL_DIR, NULL, &m)
                                     : NVLM_ERR_INTERNAL;
        CHECK(st == NVLM_OK, "TP %d: load -> %d: %s", tp, (int)st, nvlm_last_error(ctx));
        const cJSON *c;
        cJSON_ArrayForEach(c, cases)
        {
            if (m != NULL) {
                golden_case(ctx, m, c, tp);
            }
        }
        nvlm_model_free(m);
        nvlm_context_free(ctx);
    }
    cJSON_Delete(root);
}

/* ---- synthetic models: TP k against TP 1 ------------------------------------------------ */

static double rel_l2(const float *a, const float *b, size_t n)
{
    double num = 0.0;
    double den = 0.0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)a[i] - b[i];
        num += d * d;
        den += (double)b[i] * b[i];
    }
    return den > 0.0 ? sqrt(num / den) : sqrt(num);
}

typedef struct synth_out {
    float *logits;   /* n_ids x vocab: the logits after each prefix, fed in two pieces */
    float *vit;      /* n_tiles * patches x D */
    size_t n_logits, n_vit;
} synth_out;

/* Runs the synthetic model of cfg at TP tp: ids fed as a prefill of n_ids - 3 then three decode
 * steps (logits of the last 4 positions), and the ViT over two tiles of a fixed pattern. */
static bool synth_run(const nv_config *cfg, int tp, bool staged, const int32_t *ids, int n_ids,
                      synth_out *out)
{
    memset(out, 0, sizeof *out);
    nvlm_context *ctx = tp_context(tp, 4);
    nvlm_model *m = NULL;
    nvlm_status st = ctx != NULL ? nv_model_synthetic(ctx, cfg, 11, &m) : NVLM_ERR_INTERNAL;
    CHECK(st == NVLM_OK, "TP %d synthetic model -> %d: %s", tp, (int)st, nvlm_last_error(ctx));
    nvlm_session *s = NULL;
    if (st == NVLM_OK && staged) {
        nv_tp_set_staged(m->engine->be, true);
    }
    if (st == NVLM_OK) {
        st = nvlm_session_create(m, NULL, &s);
    }
    int V = cfg->llm.vocab_size;
    out->n_logits = (size_t)4 * V;
    out->logits = calloc(out->n_logits, sizeof(float));
    if (st == NVLM_OK) {
        st = nvlm_session_feed(s, ids, (size_t)n_ids - 3, NULL, 0);
    }
    for (int i = 0; i < 4 && st == NVLM_OK; i++) {
        size_t nv = 0;
        const float *lg = nvlm_session_logits(s, &nv);
        memcpy(out->logits + (size_t)i * V, lg, (size_t)V * sizeof(float));
        if (i < 3) {
            st = nvlm_session_feed(s, ids + n_ids - 3 + i, 1, NULL, 0);
        }
    }
    CHECK(st == NVLM_OK, "TP %d: feeds -> %d: %s", tp, (int)st,
          s != NULL ? nvlm_last_error(s) : "");
    /* the ViT through the engine, two tiles */
    if (st == NVLM_OK) {
        const nv_engine *e = m->engine;
        int T = 2;
        int S = e->vit.image;
        size_t n_pix = (size_t)T * 3 * S * S;
        nv_exec *ex = NULL;
        nv_arena ar = {0};
        st = e->be->ops->exec_create(e->be, 4, m, &ex);
        if (st == NVLM_OK) {
            ar.ex = ex;
            st = nv_arena_reserve(&ar, vit_arena_bytes(&e->vit, T));
        }
        float *pix = st == NVLM_OK ? nv_arena_floats(&ar, n_pix) : NULL;
        float *host = malloc(n_pix * sizeof(float));
        for (size_t i = 0; i < n_pix; i++) {
            host[i] = (float)((i * 2654435761u) % 1000) / 500.0f - 1.0f;
        }
        if (pix != NULL) {
            st = e->be->ops->upload(ex, pix, host, n_pix * sizeof(float));
        }
        float *rows = NULL;
        if (st == NVLM_OK && pix != NULL) {
            st = vit_forward(ex, &ar, &e->vit, pix, T, &rows, NULL);
        }
        if (st == NVLM_OK && rows != NULL) {
            out->n_vit = (size_t)T * e->vit.n_patches * e->vit.D;
            out->vit = malloc(out->n_vit * sizeof(float));
            st = e->be->ops->download(ex, out->vit, rows, out->n_vit * sizeof(float));
        }
        CHECK(st == NVLM_OK, "TP %d: ViT -> %d: %s", tp, (int)st, nvlm_last_error(m));
        free(host);
        nv_arena_release(&ar);
        if (ex != NULL) {
            e->be->ops->exec_free(ex);
        }
    }
    nvlm_session_free(s);
    nvlm_model_free(m);
    nvlm_context_free(ctx);
    return st == NVLM_OK;
}

static void synth_compare(const char *name, const nv_config *cfg, const int *sizes, int n,
                          bool staged)
{
    tu_section(name);
    int32_t ids[40];
    for (int i = 0; i < 40; i++) {
        ids[i] = (int32_t)((i * 37 + 5) % cfg->llm.vocab_size);
    }
    synth_out ref;
    if (!synth_run(cfg, 1, false, ids, 40, &ref)) {
        return;
    }
    for (int i = 0; i < n; i++) {
        synth_out o;
        if (synth_run(cfg, sizes[i], staged, ids, 40, &o)) {
            double dl = rel_l2(o.logits, ref.logits, ref.n_logits);
            double dv = o.vit != NULL ? rel_l2(o.vit, ref.vit, ref.n_vit) : 1.0;
            const char *how = staged ? " (collectives staged through host buffers)" : "";
            CHECK(dl <= 1e-5, "%s TP %d%s: prefill + decode logits rel-L2 %.2g vs TP 1", name,
                  sizes[i], how, dl);
            CHECK(dv <= 1e-5, "%s TP %d%s: ViT rows rel-L2 %.2g vs TP 1", name, sizes[i], how,
                  dv);
        }
        free(o.logits);
        free(o.vit);
    }
    free(ref.logits);
    free(ref.vit);
}

static bool tiny_config(nv_config *cfg)
{
    size_t len = 0;
    char *json = tu_read_file(EG_MODEL_DIR "/config.json", &len);
    memset(cfg, 0, sizeof *cfg);
    bool ok = json != NULL && nv_config_parse(cfg, json, len, NULL) == NVLM_OK;
    free(json);
    CHECK(ok, "tiny config parses");
    return ok;
}

/* A smaller image (8 x 8 patches) keeps the ViT runs short. */
static void set_vit(nv_config *c, int heads, int dummies, int image)
{
    nv_vision_config *v = &c->vision;
    v->num_heads = heads;
    v->num_dummy_heads = dummies;
    v->hidden_size = heads * v->head_dim;
    v->image_size = image;
    c->force_image_size = image;
    int g = image / v->patch_size;
    c->num_image_token = (int)(g * g * c->downsample_ratio * c->downsample_ratio);
    c->proj_input_size = (int)(v->hidden_size / (c->downsample_ratio * c->downsample_ratio));
}

static void test_synthetic(void)
{
    nv_config base;
    if (!tiny_config(&base)) {
        return;
    }
    nv_config c = base;
    c.llm.num_heads = 16;
    c.llm.num_kv_heads = 8;
    c.llm.head_dim = c.llm.hidden_size / 16;
    set_vit(&c, 6, 2, 112);
    synth_compare("synthetic 16 q / 8 kv heads, ViT 6 + 2 heads", &c,
                  (const int[]){2, 3, 4, 8}, 4, false);
    /* the path of device ranks over the local communicator: every collective downloads,
     * reduces in host memory and uploads */
    synth_compare("staged collectives", &c, (const int[]){3}, 1, true);
    /* 12 query heads over 3 kv heads at TP 5: ranks straddle kv groups; 11 padded ViT heads */
    nv_config d = base;
    d.llm.num_heads = 12;
    d.llm.num_kv_heads = 3;
    d.llm.head_dim = 8;
    d.llm.hidden_size = 96;
    d.proj_output_size = 96;
    set_vit(&d, 4, 7, 112);
    synth_compare("synthetic 12 q / 3 kv heads, ViT 4 + 7 heads", &d, (const int[]){5, 12}, 2,
                  false);
}

/* ---- failures --------------------------------------------------------------------------- */

static double now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1e3 + (double)t.tv_nsec / 1e6;
}

static void test_failure(void)
{
    tu_section("a failing rank");
    nvlm_context *ctx = tp_context(3, 3);
    nvlm_model *m = NULL;
    if (ctx == NULL || nvlm_model_load(ctx, EG_MODEL_DIR, NULL, &m) != NVLM_OK) {
        CHECK(false, "load at TP 3");
        nvlm_context_free(ctx);
        return;
    }
    nvlm_session *s = NULL;
    CHECK_OK(nvlm_session_create(m, NULL, &s));
    int32_t ids[24];
    for (int i = 0; i < 24; i++) {
        ids[i] = 100 + 7 * i;
    }
    CHECK_OK(nvlm_session_feed(s, ids, 24, NULL, 0));
    size_t V = 0;
    const float *lg = nvlm_session_logits(s, &V);
    float *before = malloc(V * sizeof(float));
    memcpy(before, lg, V * sizeof(float));
    CHECK_OK(nvlm_session_reset(s));
    /* each session exec owns its ranks; reach this one's through the session's engine exec */
    int bad_status = 0;
    double worst_ms = 0.0;
    for (int rank = 0; rank < 3; rank++) {
        for (int op = 1; op <= 40; op += 13) {
            nv_tp_inject_failure(nv_session_exec(s), rank, op);
            double t0 = now_ms();
            nvlm_status st = nvlm_session_feed(s, ids, 24, NULL, 0);
            double dt = now_ms() - t0;
            worst_ms = dt > worst_ms ? dt : worst_ms;
            bad_status += st != NVLM_ERR_BACKEND ||
                          strstr(nvlm_last_error(s), "injected failure") == NULL;
            nv_tp_inject_failure(nv_session_exec(s), -1, 0);
        }
    }
    CHECK(bad_status == 0, "a failure in any rank's op returns NVLM_ERR_BACKEND naming it");
    CHECK(worst_ms < 1000.0, "every failing call returned within a second (worst %.0f ms)",
          worst_ms);
    size_t n_tok = 9;
    nvlm_session_tokens(s, &n_tok);
    CHECK_EQ_INT(n_tok, 0, "failed feeds keep nothing");
    CHECK_OK(nvlm_session_feed(s, ids, 24, NULL, 0));
    lg = nvlm_session_logits(s, &V);
    CHECK(lg != NULL && memcmp(lg, before, V * sizeof(float)) == 0,
          "after the failures the same feed gives the same logits, bitwise");
    free(before);
    nvlm_session_free(s);
    nvlm_model_free(m);
    nvlm_context_free(ctx);

    tu_section("bad sizes");
    ctx = tp_context(5, 2);
    m = NULL;
    nvlm_status st = ctx != NULL ? nvlm_model_load(ctx, EG_MODEL_DIR, NULL, &m) : NVLM_OK;
    CHECK(st == NVLM_ERR_INVALID_ARGUMENT && strstr(nvlm_last_error(ctx), "1 .. 4") != NULL,
          "TP 5 over 4 query heads is refused at load (%d: %s)", (int)st, nvlm_last_error(ctx));
    nvlm_model_free(m);
    nvlm_context_free(ctx);
    nvlm_context_params cp;
    nvlm_context_default_params(&cp);
    cp.tp_size = -1;
    CHECK_EQ_INT(nvlm_context_create(&cp, &ctx), NVLM_ERR_INVALID_ARGUMENT, "tp_size -1");
    const int32_t devs[3] = {0, 1, 2};
    nvlm_context_default_params(&cp);
    cp.tp_size = 2;
    cp.n_devices = 3;
    cp.devices = devs;
    CHECK_EQ_INT(nvlm_context_create(&cp, &ctx), NVLM_ERR_INVALID_ARGUMENT,
                 "3 devices for tp_size 2");
    cp.tp_size = 3;
    cp.devices = NULL;
    CHECK_EQ_INT(nvlm_context_create(&cp, &ctx), NVLM_ERR_INVALID_ARGUMENT, "devices NULL");
    const int32_t neg[3] = {0, -1, 2};
    cp.devices = neg;
    CHECK_EQ_INT(nvlm_context_create(&cp, &ctx), NVLM_ERR_INVALID_ARGUMENT, "device -1");
    cp.devices = devs;
    cp.backend = NVLM_BACKEND_CUDA;
    nvlm_status st2 = nvlm_context_create(&cp, &ctx);
    CHECK(st2 == NVLM_ERR_NO_DEVICE || st2 == NVLM_OK,
          "CUDA on devices 0, 1, 2: NO_DEVICE unless all three exist (%d)", (int)st2);
    if (st2 == NVLM_OK) {
        nvlm_context_free(ctx);
    }
    /* the device list sets tp_size; the CPU backend ignores the devices themselves */
    cp.backend = NVLM_BACKEND_CPU;
    cp.tp_size = 0;
    ctx = NULL;
    CHECK_OK(nvlm_context_create(&cp, &ctx));
    m = NULL;
    if (ctx != NULL) {
        CHECK_OK(nvlm_model_load(ctx, EG_MODEL_DIR, NULL, &m));
    }
    nvlm_model_info info;
    memset(&info, 0, sizeof info);
    info.struct_size = sizeof info;
    if (m != NULL) {
        CHECK_OK(nvlm_model_get_info(m, &info));
    }
    CHECK_EQ_INT(info.tp_size, 3, "n_devices 3 gives tp_size 3");
    nvlm_model_free(m);
    nvlm_context_free(ctx);
}

/* ---- allocation failures ------------------------------------------------------------------ */

/* Allocator hooks that fail once `budget` allocations have been made (-1: never). The ranks'
 * threads allocate too, so the counter is atomic. */
static atomic_long alloc_count;
static atomic_long alloc_budget = -1;

static bool budget_left(void)
{
    long b = atomic_load(&alloc_budget);
    return b < 0 || atomic_fetch_add(&alloc_count, 1) < b;
}

static void *fail_alloc(void *user, size_t n)
{
    (void)user;
    return budget_left() ? malloc(n) : NULL;
}

static void *fail_realloc(void *user, void *p, size_t n)
{
    (void)user;
    return budget_left() ? realloc(p, n) : NULL;
}

static void fail_free(void *user, void *p)
{
    (void)user;
    free(p);
}

/* One run under a budget: load at TP 2 (when m is NULL) or a session on m. */
static nvlm_status budget_run(nvlm_context *ctx, nvlm_model *m, long budget)
{
    atomic_store(&alloc_count, 0);
    atomic_store(&alloc_budget, budget);
    nvlm_status st = NVLM_OK;
    if (m == NULL) {
        nvlm_model *tmp = NULL;
        st = nvlm_model_load(ctx, EG_MODEL_DIR, NULL, &tmp);
        nvlm_model_free(tmp);
    } else {
        nvlm_session *s = NULL;
        st = nvlm_session_create(m, NULL, &s);
        if (st == NVLM_OK) {
            st = nvlm_session_add_turn(s, NVLM_ROLE_USER, "Hello, who are you?", NULL, 0);
        }
        if (st == NVLM_OK) {
            nvlm_sampler_params p;
            eg_greedy_params(&p, 3);
            st = nvlm_session_generate(s, &p, NULL, NULL, NULL);
        }
        nvlm_session_free(s);
    }
    atomic_store(&alloc_budget, -1);
    return st;
}

static void test_alloc_failures(void)
{
    tu_section("allocation failures at TP 2: load, then a session");
    nvlm_context_params cp;
    nvlm_context_default_params(&cp);
    cp.n_threads = 2;
    cp.backend = NVLM_BACKEND_CPU;
    cp.tp_size = 2;
    cp.alloc_fn = fail_alloc;
    cp.realloc_fn = fail_realloc;
    cp.free_fn = fail_free;
    nvlm_context *ctx = NULL;
    CHECK_OK(nvlm_context_create(&cp, &ctx));
    if (ctx == NULL) {
        return;
    }
    nvlm_model *m = NULL;
    for (int phase = 0; phase < 2; phase++) {
        int failures = 0;
        int bad_status = 0;
        bool done = false;
        /* every budget up to 300, then every 41st: both load and session allocate thousands */
        for (long n = 0; n < 20000 && !done; n += n < 300 ? 1 : 41) {
            nvlm_status st = budget_run(ctx, m, n);
            if (st == NVLM_OK) {
                done = true;
            } else {
                failures++;
                bad_status += st != NVLM_ERR_OUT_OF_MEMORY;
            }
        }
        const char *what = phase == 0 ? "load" : "session";
        CHECK(done && failures > 50, "%s: succeeds once allocations are left (%d failing budgets)",
              what, failures);
        CHECK_EQ_INT(bad_status, 0, "every failing budget reported NVLM_ERR_OUT_OF_MEMORY");
        if (phase == 0) {
            CHECK_OK(nvlm_model_load(ctx, EG_MODEL_DIR, NULL, &m));
            if (m == NULL) {
                break;
            }
        }
    }
    nvlm_model_free(m);
    nvlm_context_free(ctx);
}

/* ---- the CLI ---------------------------------------------------------------------------- */

/* Runs cmd and returns its stdout (static buffer) and exit status. */
static const char *run_cli(const char *cmd, int *rc)
{
    static char out[1 << 16];
    out[0] = '\0';
    FILE *pf = popen(cmd, "r");
    if (pf == NULL) {
        *rc = -1;
        return out;
    }
    size_t n = fread(out, 1, sizeof out - 1, pf);
    out[n] = '\0';
    *rc = pclose(pf);
    return out;
}

static void test_cli(const cJSON *case1)
{
    tu_section("cli: --tp");
    const char *cli = getenv("NVLM_CLI");
    if (cli == NULL || cli[0] == '\0') {
        printf("SKIP cli: NVLM_CLI not set\n");
        return;
    }
    char cmd[1024];
    snprintf(cmd, sizeof cmd,
             "%s generate " EG_MODEL_DIR " -i tests/data/images/coffee_600x400.jpg -p '%s' "
             "-n 16 --json --backend cpu --tp 2", cli, eg_jstr(case1, "question"));
    int rc = 0;
    cJSON *j = cJSON_Parse(run_cli(cmd, &rc));
    CHECK(rc == 0 && j != NULL, "nvlm generate --tp 2 --json runs");
    const cJSON *want = cJSON_GetObjectItemCaseSensitive(
        cJSON_GetObjectItemCaseSensitive(case1, "greedy"), "tokens");
    const cJSON *got = cJSON_GetObjectItemCaseSensitive(j, "tokens");
    bool eq = cJSON_GetArraySize(got) > 0 && cJSON_GetArraySize(got) <= cJSON_GetArraySize(want);
    for (int i = 0; eq && i < cJSON_GetArraySize(got); i++) {
        eq = cJSON_GetArrayItem(got, i)->valueint == cJSON_GetArrayItem(want, i)->valueint;
    }
    CHECK(eq, "case1 at --tp 2 through the CLI: the golden greedy tokens");
    cJSON_Delete(j);

    snprintf(cmd, sizeof cmd, "%s info tests/data/nvlm-d-72b --tp 4 --json 2>/dev/null", cli);
    j = cJSON_Parse(run_cli(cmd, &rc));
    const cJSON *b = cJSON_GetObjectItemCaseSensitive(j, "per_rank_weight_bytes");
    double gib = 1024.0 * 1024.0 * 1024.0;
    CHECK(rc == 0 && cJSON_IsNumber(b) && b->valuedouble > 147.0 * gib / 4 &&
              b->valuedouble < 50.0 * gib,
          "nvlm info NVLM-D-72B --tp 4: per_rank_weight_bytes %.0f (between a quarter of "
          "147 GiB and 50 GiB)", cJSON_IsNumber(b) ? b->valuedouble : -1.0);
    cJSON_Delete(j);
    snprintf(cmd, sizeof cmd, "%s info tests/data/nvlm-d-72b --tp 65 2>&1", cli);
    const char *out = run_cli(cmd, &rc);
    CHECK(rc != 0 && strstr(out, "1 .. 64") != NULL, "nvlm info --tp 65 is refused: %s", out);
}

/* `test_tp --synthetic`: only the synthetic models and a failing rank (the ThreadSanitizer run
 * in `make tsan-test`; the whole test takes minutes under it). */
int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "--synthetic") == 0) {
        test_synthetic();
        test_failure();
        return tu_done();
    }
    test_goldens();
    test_synthetic();
    test_failure();
    test_alloc_failures();
    char *json = tu_read_file(EG_GOLDEN_DIR "cases.json", NULL);
    cJSON *root = json != NULL ? cJSON_Parse(json) : NULL;
    free(json);
    const cJSON *c;
    cJSON_ArrayForEach(c, cJSON_GetObjectItemCaseSensitive(root, "cases"))
    {
        const char *name = eg_jstr(c, "name");
        if (name != NULL && strcmp(name, "case1_multitile") == 0) {
            test_cli(c);
        }
    }
    cJSON_Delete(root);
    return tu_done();
}
