/*
 * test_sample_emu.cpp - the device sampler (src/cuda/sample.cu) run through the host emulation
 * of the kernels, against the CPU sampler: smp_sample_device over an emulated `sample` op must
 * give the same tokens, the same RNG stream and the same errors as smp_sample for the same
 * logits, at the real vocabulary (N = 152,064 with 399 padding rows) and at small N: greedy,
 * each filter alone and combined, penalties, logit bias (banned, forced, named twice), padding
 * rows, non-finite logits, ties, all non-finite, everything banned, several seeds; the small
 * cases under each schedule order of the emulation, and with each barrier of sample.cu turned
 * off in turn (some case must then differ). A session over the CPU backend with the emulated
 * op generates the host session's tokens without downloading the logits. Sanitizer builds
 * (NVLM_EMU_SMALL) use small N only.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <vector>

extern "C" {
#include "engine.h"
#include "testutil.h"
}
#include "cuda/cuda_internal.h"

#if defined(NVLM_EMU_SMALL) || defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define SANITIZED 1
#else
#define SANITIZED 0
#endif

static int g_threads = CUDA_SAMPLE_THREADS;
static int g_calls;

/* The `sample` op over the emulated kernel: "device" memory is host memory here. */
static nvlm_status emu_sample(nv_exec *ex, const nv_sample_args *a, int32_t *token, int *outcome)
{
    std::vector<float> val((size_t)a->n);
    std::vector<unsigned long long> key((size_t)a->n);
    std::vector<double> prob((size_t)a->n);
    int32_t out[2] = {-7, -7};
    cuda_sample_kargs k;
    memset(&k, 0, sizeof k);
    k.logits = a->logits;
    k.usable = a->usable;
    k.n = a->n;
    k.val = val.data();
    k.key = key.data();
    k.prob = prob.data();
    k.list = a->list;
    k.n_bias = (int)a->n_bias;
    k.bias_serial = a->bias_unique ? 0 : 1;
    k.n_pen = (int)a->n_pen;
    k.temperature = a->temperature;
    k.top_k = a->top_k;
    k.top_p = a->top_p;
    k.min_p = a->min_p;
    k.rep = a->repetition_penalty;
    k.presence = a->presence_penalty;
    k.freq = a->frequency_penalty;
    k.uniform = a->uniform;
    k.out = out;
    g_calls++;
    cudaError_t e = cuda_sample_launch(NULL, g_threads, &k);
    if (e != cudaSuccess) {
        return nv_error(ex->err_handle, NVLM_ERR_BACKEND, "launch: %s", nvemu_message());
    }
    *token = out[0];
    *outcome = out[1];
    return NVLM_OK;
}

typedef struct emu_dev {
    nv_backend_ops ops;
    nv_backend be;
    nv_exec ex;
} emu_dev;

static void emu_init(emu_dev *d, nvlm_context *ctx)
{
    memset(d, 0, sizeof *d);
    d->ops.name = "emu";
    d->ops.sample = emu_sample;
    d->be.ops = &d->ops;
    d->ex.be = &d->be;
    d->ex.err_handle = ctx;
}

/* Deterministic pseudo-random numbers for the fixtures. */
static uint64_t g_fix = 88172645463325252ull;
static double fix_u(void)
{
    g_fix ^= g_fix << 13;
    g_fix ^= g_fix >> 7;
    g_fix ^= g_fix << 17;
    return (double)(g_fix >> 11) * 0x1.0p-53;
}

/* Logits like a model's: a few strong candidates over a long tail, with exact ties (at the
 * top and in the tail), -0/+0, non-finite values and the last `pad` rows unusable. */
static void make_logits(std::vector<float> &l, std::vector<uint8_t> &usable, int n, int pad)
{
    l.resize((size_t)n);
    usable.assign((size_t)n, 1);
    for (int i = 0; i < n; i++) {
        double g = fix_u() + fix_u() + fix_u() - 1.5;
        l[(size_t)i] = (float)(g * 4.0 - 2.0);
    }
    for (int j = 0; j < 12; j++) {
        l[(size_t)(fix_u() * n)] = (float)(9.0 + fix_u() * 4.0);
    }
    int a = n / 3;
    int b = n / 2;
    l[(size_t)a] = 14.0f; /* a tie for the top: the lower index wins */
    l[(size_t)b] = 14.0f;
    l[(size_t)(n / 5)] = 0.0f;
    l[(size_t)(n / 5 + 1)] = -0.0f;
    l[(size_t)(n / 7)] = NAN;
    l[(size_t)(n / 7 + 1)] = INFINITY;
    l[(size_t)(n / 7 + 2)] = -INFINITY;
    for (int i = n - pad; i < n; i++) {
        usable[(size_t)i] = 0;
        l[(size_t)i] = 30.0f; /* would win if it were not masked */
    }
}

typedef struct pset {
    const char *name;
    float temperature;
    int top_k;
    float top_p;
    float min_p;
    float rep;
    float presence;
    float freq;
    int last_n;
    int bias; /* 0 none, 1 ban + boosts, 2 a token named twice, 3 two forced (+inf) tokens,
                 4 boosts of the penalised tokens of the history */
} pset;

static const pset g_psets[] = {
    {"greedy", 0.0f, 0, 1.0f, 0.0f, 1.0f, 0.0f, 0.0f, 64, 0},
    {"temperature", 1.0f, 0, 1.0f, 0.0f, 1.0f, 0.0f, 0.0f, 64, 0},
    {"hot", 3.0f, 0, 1.0f, 0.0f, 1.0f, 0.0f, 0.0f, 64, 0},
    {"top-k 1", 0.8f, 1, 1.0f, 0.0f, 1.0f, 0.0f, 0.0f, 64, 0},
    {"top-k 40", 0.8f, 40, 1.0f, 0.0f, 1.0f, 0.0f, 0.0f, 64, 0},
    {"top-k 1000", 2.0f, 1000, 1.0f, 0.0f, 1.0f, 0.0f, 0.0f, 64, 0},
    {"top-p", 1.5f, 0, 0.9f, 0.0f, 1.0f, 0.0f, 0.0f, 64, 0},
    {"min-p", 2.0f, 0, 1.0f, 0.05f, 1.0f, 0.0f, 0.0f, 64, 0},
    {"combined", 1.2f, 50, 0.95f, 0.02f, 1.0f, 0.0f, 0.0f, 64, 0},
    {"penalties", 1.0f, 0, 1.0f, 0.0f, 1.3f, 0.4f, 0.25f, 64, 0},
    {"penalties greedy", 0.0f, 0, 1.0f, 0.0f, 1.7f, 0.5f, 0.5f, -1, 0},
    {"bias", 0.9f, 20, 1.0f, 0.0f, 1.0f, 0.0f, 0.0f, 64, 1},
    {"bias named twice", 1.0f, 0, 0.8f, 0.0f, 1.1f, 0.0f, 0.1f, 8, 2},
    {"forced tokens", 1.0f, 0, 1.0f, 0.0f, 1.0f, 0.0f, 0.0f, 64, 3},
    {"forced greedy", 0.0f, 0, 1.0f, 0.0f, 1.0f, 0.0f, 0.0f, 64, 3},
    {"bias and penalties on one token", 2.0f, 0, 1.0f, 0.0f, 1.5f, 0.3f, 0.2f, 64, 4},
};

static void make_bias(int kind, int n, int pad, std::vector<nvlm_logit_bias> &b)
{
    b.clear();
    int u = n - pad;
    if (kind == 1) {
        b.push_back({n / 3, -INFINITY}); /* ban the top */
        b.push_back({7 % u, 25.0f});
        b.push_back({u / 2 + 1, 12.5f});
        b.push_back({u - 1, -3.0f});
    } else if (kind == 2) {
        b.push_back({5 % u, 3.25f});
        b.push_back({9 % u, -1.0f});
        b.push_back({5 % u, 1.0e-7f}); /* added after the first: order matters */
        b.push_back({5 % u, 6.0f});
    } else if (kind == 4) {
        b.push_back({n / 2, 2.0f});
        b.push_back({n / 3, 6.0f});
    } else if (kind == 3) {
        b.push_back({u - 2, INFINITY});
        b.push_back({3, INFINITY});
    }
}

/* Runs `draws` tokens with both samplers from the same seed; returns the mismatches. */
static int compare(nvlm_context *ctx, emu_dev *d, const pset *ps, const std::vector<float> &l,
                   smp_work *w, int pad, uint64_t seed, int draws, bool quiet)
{
    int n = w->n_vocab;
    std::vector<nvlm_logit_bias> bias;
    make_bias(ps->bias, n, pad, bias);
    nvlm_sampler_params p;
    nvlm_sampler_default_params(&p);
    p.temperature = ps->temperature;
    p.top_k = ps->top_k;
    p.top_p = ps->top_p;
    p.min_p = ps->min_p;
    p.repetition_penalty = ps->rep;
    p.presence_penalty = ps->presence;
    p.frequency_penalty = ps->freq;
    p.penalty_last_n = ps->last_n;
    p.max_new_tokens = 16;
    p.logit_bias = bias.empty() ? NULL : bias.data();
    p.n_logit_bias = bias.size();
    if (smp_check(&p, w, ctx) != NVLM_OK) {
        CHECK(false, "%s: params refused: %s", ps->name, nvlm_last_error(ctx));
        return 1;
    }
    /* a history with repeats of strong tokens (the penalties have something to do) */
    std::vector<int32_t> hist;
    for (int i = 0; i < 40; i++) {
        hist.push_back((int32_t)((i % 3 == 0) ? n / 3 : (int)(fix_u() * (n - pad))));
    }
    hist.push_back(n / 2);
    smp_rng r_cpu;
    smp_rng r_dev;
    smp_seed(&r_cpu, seed);
    smp_seed(&r_dev, seed);
    int bad = 0;
    for (int t = 0; t < draws; t++) {
        int32_t a = -1;
        int32_t b = -1;
        nvlm_status s1 = smp_sample(&p, l.data(), w, hist.data(), hist.size(), &r_cpu, &a, ctx);
        nvlm_status s2 = smp_sample_device(&d->ex, &p, l.data(), w, hist.data(), hist.size(),
                                           &r_dev, &b, ctx);
        if (s1 != NVLM_OK || s2 != NVLM_OK || a != b ||
            memcmp(&r_cpu, &r_dev, sizeof r_cpu) != 0) {
            if (!quiet) {
                CHECK(false, "%s, seed %llu, draw %d: cpu %d (st %d), device %d (st %d): %s",
                      ps->name, (unsigned long long)seed, t, (int)a, (int)s1, (int)b, (int)s2,
                      nvlm_last_error(ctx));
            }
            bad++;
            break;
        }
        hist.push_back(a);
    }
    return bad;
}

static void run_sets(nvlm_context *ctx, emu_dev *d, int n, int pad, int seeds, int draws)
{
    std::vector<float> l;
    std::vector<uint8_t> usable;
    make_logits(l, usable, n, pad);
    smp_work w;
    CHECK_OK(smp_work_init(NULL, &w, n));
    memcpy(w.usable, usable.data(), (size_t)n);
    for (size_t i = 0; i < sizeof g_psets / sizeof g_psets[0]; i++) {
        int bad = 0;
        for (int s = 0; s < seeds; s++) {
            bad += compare(ctx, d, &g_psets[i], l, &w, pad, 1000u + 77u * (unsigned)s, draws,
                           false);
        }
        CHECK(bad == 0, "N %d, %s: device tokens and RNG equal the CPU's over %d seeds", n,
              g_psets[i].name, seeds);
    }
    smp_work_free(NULL, &w);
}

/* Flat and nearly flat logits: every candidate ties, the draw lands deep in the order. */
static void test_ties(nvlm_context *ctx, emu_dev *d, int n)
{
    std::vector<float> l((size_t)n, 1.0f);
    smp_work w;
    CHECK_OK(smp_work_init(NULL, &w, n));
    for (int i = 0; i < n; i += 3) {
        l[(size_t)i] = 1.0f + (float)(i % 7) * 1.0e-6f;
    }
    const pset flat[] = {
        {"flat greedy", 0.0f, 0, 1.0f, 0.0f, 1.0f, 0.0f, 0.0f, 64, 0},
        {"flat", 1.0f, 0, 1.0f, 0.0f, 1.0f, 0.0f, 0.0f, 64, 0},
        {"flat top-k", 1.0f, 100, 1.0f, 0.0f, 1.0f, 0.0f, 0.0f, 64, 0},
        {"flat top-p", 0.5f, 0, 0.3f, 0.0f, 1.0f, 0.0f, 0.0f, 64, 0},
    };
    for (size_t i = 0; i < sizeof flat / sizeof flat[0]; i++) {
        int bad = 0;
        for (int s = 0; s < 3; s++) {
            bad += compare(ctx, d, &flat[i], l, &w, 0, 5u + (unsigned)s, 4, false);
        }
        CHECK(bad == 0, "N %d, %s: equal to the CPU", n, flat[i].name);
    }
    /* exact cumulative boundaries: 2048 equal logits, top-p 0.5 keeps exactly the first 1024
     * (the running mass reaches the target exactly: ">=" and ">" differ) */
    {
        std::vector<float> e(2048, 1.0f);
        smp_work w2;
        CHECK_OK(smp_work_init(NULL, &w2, 2048));
        const pset half = {"top-p at an exact boundary", 1.0f, 0, 0.5f, 0.0f, 1.0f, 0.0f, 0.0f,
                           64, 0};
        int bad = 0;
        for (int s = 0; s < 3; s++) {
            bad += compare(ctx, d, &half, e, &w2, 0, 11u + (unsigned)s, 6, false);
        }
        CHECK(bad == 0, "%s: equal to the CPU", half.name);
        smp_work_free(NULL, &w2);
    }
    /* -0 and +0 are equal values: the lower index wins whatever the sign */
    for (int i = 0; i < n; i++) {
        l[(size_t)i] = -1.0f - (float)(i % 5);
    }
    l[(size_t)(n / 4)] = -0.0f;
    l[(size_t)(n / 2)] = 0.0f;
    for (int i = 0; i < 2; i++) {
        CHECK(compare(ctx, d, &flat[0], l, &w, 0, 1, 1, false) == 0 &&
                  compare(ctx, d, &g_psets[3], l, &w, 0, 1, 1, false) == 0,
              "N %d, signed zeros (-0 first): the lower index", n);
        l[(size_t)(n / 4)] = 0.0f;
        l[(size_t)(n / 2)] = -0.0f;
    }
    smp_work_free(NULL, &w);
}

/* The errors: same status, same text, RNG untouched. */
static void test_errors(nvlm_context *ctx, emu_dev *d, int n)
{
    smp_work w;
    CHECK_OK(smp_work_init(NULL, &w, n));
    std::vector<float> l((size_t)n);
    for (int i = 0; i < n; i++) {
        l[(size_t)i] = (i % 2) ? NAN : INFINITY;
    }
    l[(size_t)(n - 1)] = 3.0f;
    w.usable[n - 1] = 0; /* the one finite logit is a padding row */
    for (int temp = 0; temp < 2; temp++) {
        nvlm_sampler_params p;
        nvlm_sampler_default_params(&p);
        p.temperature = temp ? 0.7f : 0.0f;
        smp_rng r0;
        smp_rng r1;
        smp_seed(&r0, 3);
        r1 = r0;
        int32_t tok = 123;
        CHECK_EQ_INT(smp_sample_device(&d->ex, &p, l.data(), &w, NULL, 0, &r1, &tok, ctx),
                     NVLM_ERR_BACKEND, "all non-finite: status");
        CHECK(strcmp(nvlm_last_error(ctx), "all logits are non-finite") == 0, "message '%s'",
              nvlm_last_error(ctx));
        CHECK(memcmp(&r0, &r1, sizeof r0) == 0, "the RNG is untouched after an error");
    }
    /* one finite usable logit, banned by the bias */
    w.usable[n - 1] = 1;
    nvlm_logit_bias ban = {n - 1, -INFINITY};
    nvlm_sampler_params p;
    nvlm_sampler_default_params(&p);
    p.temperature = 1.0f;
    p.logit_bias = &ban;
    p.n_logit_bias = 1;
    smp_rng r;
    smp_seed(&r, 9);
    int32_t tok = 0;
    CHECK_EQ_INT(smp_sample_device(&d->ex, &p, l.data(), &w, NULL, 0, &r, &tok, ctx),
                 NVLM_ERR_INVALID_ARGUMENT, "banned: status");
    CHECK(strcmp(nvlm_last_error(ctx), "the logit bias bans every token") == 0, "message '%s'",
          nvlm_last_error(ctx));
    /* and without the ban it is the only choice */
    p.n_logit_bias = 0;
    CHECK_OK(smp_sample_device(&d->ex, &p, l.data(), &w, NULL, 0, &r, &tok, ctx));
    CHECK_EQ_INT(tok, n - 1, "the only finite usable logit");
    smp_work_free(NULL, &w);
}

/* Whether line `line` of `file` says "nvemu: redundant". */
static bool marked_redundant(const char *file, int line)
{
    FILE *f = fopen(file, "r");
    if (f == NULL) {
        return false;
    }
    char buf[512];
    bool found = false;
    for (int n = 1; fgets(buf, sizeof buf, f) != NULL; n++) {
        if (n == line) {
            found = strstr(buf, "nvemu: redundant") != NULL;
            break;
        }
    }
    fclose(f);
    return found;
}

static void collect_site(const nvemu::site *s, void *arg)
{
    std::vector<const nvemu::site *> *v = (std::vector<const nvemu::site *> *)arg;
    size_t len = strlen(s->file);
    if (len >= 9 && strcmp(s->file + len - 9, "sample.cu") == 0) {
        v->push_back(s);
    }
}

/* Small cases that together need every barrier: mismatches (or errors) over them. */
static int mutation_cases(nvlm_context *ctx, emu_dev *d, const std::vector<float> &l, smp_work *w,
                          int pad)
{
    static const int sets[] = {0, 4, 6, 7, 8, 9, 11, 12, 13, 15};
    int bad = 0;
    for (size_t i = 0; i < sizeof sets / sizeof sets[0] && bad == 0; i++) {
        for (int s = 0; s < 3 && bad == 0; s++) {
            bad += compare(ctx, d, &g_psets[sets[i]], l, w, pad, 40u + (unsigned)s, 3, true);
        }
    }
    return bad;
}

/* Mutations: each barrier of sample.cu turned off in turn must make some case differ from the
 * CPU under one of the emulation's three schedule orders (unless the source marks it
 * redundant); with every barrier on, the cases agree under each order. */
static void test_mutation(nvlm_context *ctx, emu_dev *d, int n, int pad)
{
    std::vector<float> l;
    std::vector<uint8_t> usable;
    make_logits(l, usable, n, pad);
    smp_work w;
    CHECK_OK(smp_work_init(NULL, &w, n));
    memcpy(w.usable, usable.data(), (size_t)n);
    static const int orders[] = {NVEMU_SCHED_IN_ORDER, NVEMU_SCHED_WARP_FIRST,
                                 NVEMU_SCHED_REVERSE};
    for (int o : orders) {
        nvemu_schedule(o);
        CHECK(mutation_cases(ctx, d, l, &w, pad) == 0, "schedule order %d: equal to the CPU", o);
    }
    nvemu_schedule(NVEMU_SCHED_IN_ORDER);
    std::vector<const nvemu::site *> sites;
    nvemu_sites(collect_site, &sites);
    CHECK(sites.size() >= 8, "the sampler's barriers were reached (%zu)", sites.size());
    int caught = 0;
    for (const nvemu::site *s : sites) {
        CHECK(nvemu_mutate("cuda/sample.cu", s->line, false) >= 1, "site sample.cu:%d off",
              s->line);
        int bad = 0;
        for (int o : orders) {
            if (bad == 0) {
                nvemu_schedule(o);
                bad = mutation_cases(ctx, d, l, &w, pad);
            }
        }
        nvemu_schedule(NVEMU_SCHED_IN_ORDER);
        nvemu_mutate("cuda/sample.cu", s->line, true);
        if (bad == 0 && marked_redundant(s->file, s->line)) {
            printf("# __syncthreads sample.cu:%d removed: no case fails (marked redundant)\n",
                   s->line);
            continue;
        }
        CHECK(bad > 0, "__syncthreads sample.cu:%d removed: the tokens differ from the CPU's",
              s->line);
        caught += bad > 0;
    }
    nvemu_mutate_clear();
    CHECK(caught >= 8, "%d removed barriers detected", caught);
    CHECK(mutation_cases(ctx, d, l, &w, pad) == 0, "equal again with every barrier on");
    smp_work_free(NULL, &w);
}

/* ---- the session over a backend that samples on its "device" ------------------------------ */

static int g_downloads;
static nvlm_status (*g_cpu_download)(nv_exec *, void *, const void *, size_t);

static nvlm_status counting_download(nv_exec *ex, void *host, const void *src, size_t bytes)
{
    g_downloads++;
    return g_cpu_download(ex, host, src, bytes);
}

typedef struct gen_rec {
    std::vector<int32_t> tokens;
    nvlm_session *s;
    int logits_ok;
} gen_rec;

static int on_token(void *user, int32_t token, const char *text, size_t len)
{
    (void)text;
    (void)len;
    gen_rec *r = (gen_rec *)user;
    r->tokens.push_back(token);
    size_t nv = 0;
    r->logits_ok += nvlm_session_logits(r->s, &nv) != NULL && nv > 0;
    return 0;
}

/* The CPU backend with the emulated `sample` op (its "device" memory is host memory): the
 * session keeps the logits where the backend put them, downloads them only when asked, and
 * generates the same tokens as a session sampling on the host. */
static void test_session(void)
{
    nvlm_context_params cp;
    nvlm_context_default_params(&cp);
    cp.n_threads = 2;
    cp.backend = NVLM_BACKEND_CPU;
    nvlm_context *ctx = NULL;
    nvlm_model *m = NULL;
    CHECK_OK(nvlm_context_create(&cp, &ctx));
    CHECK_OK(ctx != NULL ? nvlm_model_load(ctx, "tests/data/tiny-nvlm-d", NULL, &m)
                         : NVLM_ERR_INTERNAL);
    if (m == NULL) {
        nvlm_context_free(ctx);
        return;
    }
    nvlm_session_params sp;
    nvlm_session_default_params(&sp);
    sp.seed = 42;
    nvlm_session *host = NULL;
    nvlm_session *dev = NULL;
    CHECK_OK(nvlm_session_create(m, &sp, &host));
    nv_backend *be = nv_session_exec(host)->be;
    const nv_backend_ops *cpu_ops = be->ops;
    static nv_backend_ops ops;
    ops = *cpu_ops;
    ops.sample = emu_sample;
    g_cpu_download = cpu_ops->download;
    ops.download = counting_download;
    be->ops = &ops;
    CHECK_OK(nvlm_session_create(m, &sp, &dev));
    nvlm_sampler_params p[2];
    nvlm_sampler_default_params(&p[0]);
    p[0].max_new_tokens = 12;
    p[0].temperature = 0.9f;
    p[0].top_k = 40;
    p[0].top_p = 0.95f;
    p[0].repetition_penalty = 1.1f;
    p[0].stop_ids = p[0].stop_ids; /* the model's eos */
    nvlm_sampler_default_params(&p[1]);
    p[1].max_new_tokens = 8;
    g_threads = 256;
    for (int round = 0; round < 2 && dev != NULL; round++) {
        CHECK_OK(nvlm_session_add_turn(host, NVLM_ROLE_USER, "Hello, who are you?", NULL, 0));
        g_downloads = 0;
        CHECK_OK(nvlm_session_add_turn(dev, NVLM_ROLE_USER, "Hello, who are you?", NULL, 0));
        CHECK_EQ_INT(g_downloads, 0, "a feed leaves the logits on the device");
        size_t n1 = 0;
        size_t n2 = 0;
        const float *l1 = nvlm_session_logits(host, &n1);
        const float *l2 = nvlm_session_logits(dev, &n2);
        CHECK_EQ_INT(g_downloads, 1, "asking for the logits downloads them once");
        const float *l3 = nvlm_session_logits(dev, &n2);
        CHECK_EQ_INT(g_downloads, 1, "asking again does not");
        CHECK(l1 != NULL && l2 != NULL && l2 == l3 && n1 == n2 && n1 > 0 &&
                  memcmp(l1, l2, n1 * sizeof(float)) == 0,
              "the downloaded logits equal the host session's");
        gen_rec a;
        gen_rec b;
        a.s = host;
        a.logits_ok = 0;
        b.s = dev;
        b.logits_ok = 0;
        int calls = g_calls;
        CHECK_OK(nvlm_session_generate(host, &p[round], on_token, &a, NULL));
        g_downloads = 0;
        CHECK_OK(nvlm_session_generate(dev, &p[round], NULL, NULL, NULL));
        CHECK_EQ_INT(g_downloads, 0, "generate without asking for logits downloads none");
        CHECK(g_calls - calls == (int)a.tokens.size() && !a.tokens.empty(),
              "every token was sampled by the device op (%d calls, %zu tokens)", g_calls - calls,
              a.tokens.size());
        size_t nt1 = 0;
        size_t nt2 = 0;
        const int32_t *t1 = nvlm_session_tokens(host, &nt1);
        const int32_t *t2 = nvlm_session_tokens(dev, &nt2);
        CHECK(nt1 == nt2 && memcmp(t1, t2, nt1 * sizeof(int32_t)) == 0,
              "round %d: the device-sampling session generated the host session's tokens",
              round);
        CHECK_EQ_INT(a.logits_ok, (int)a.tokens.size(), "logits inside the callback");
    }
    /* the logits of the last feed, asked for from a token callback of the device session */
    gen_rec c;
    c.s = dev;
    c.logits_ok = 0;
    CHECK_OK(nvlm_session_add_turn(dev, NVLM_ROLE_USER, "And then?", NULL, 0));
    CHECK_OK(nvlm_session_generate(dev, &p[1], on_token, &c, NULL));
    CHECK(c.logits_ok == (int)c.tokens.size() && !c.tokens.empty(),
          "nvlm_session_logits works inside the device session's callback");
    nvlm_session_free(dev);
    nvlm_session_free(host);
    be->ops = cpu_ops;
    nvlm_model_free(m);
    nvlm_context_free(ctx);
}

int main(void)
{
    nvlm_context *ctx = NULL;
    CHECK_OK(nvlm_context_create(NULL, &ctx));
    emu_dev d;
    emu_init(&d, ctx);

    tu_section("device sampler (emulated) = CPU sampler, small N");
    g_threads = 256;
    run_sets(ctx, &d, 1000, 37, 4, 6);
    run_sets(ctx, &d, 300, 0, 3, 6);
    test_ties(ctx, &d, 2000);
    test_errors(ctx, &d, 513);
    test_mutation(ctx, &d, 700, 20);
    tu_section("session sampling through the device op (CPU backend + emulated kernel)");
    test_session();

    if (!SANITIZED) {
        tu_section("device sampler (emulated) = CPU sampler, N = 152,064");
        g_threads = CUDA_SAMPLE_THREADS;
        run_sets(ctx, &d, 152064, 399, 2, 3);
        test_ties(ctx, &d, 152064);
    } else {
        printf("SKIP N = 152,064 under the sanitizer (small N above)\n");
    }
    CHECK(g_calls > 0, "the emulated op ran (%d calls)", g_calls);
    nvlm_context_free(ctx);
    return tu_done();
}
