/*
 * test_sampler.c - what the sampler may never choose. Rows past the tokenizer's ids (the
 * checkpoint's padding rows) and non-finite logits (NaN, +Inf, -Inf) are out, greedy or
 * sampled, before top-k / top-p / min-p; no finite logit left is NVLM_ERR_BACKEND "all logits
 * are non-finite", a bias that bans every token NVLM_ERR_INVALID_ARGUMENT. Unit tests on
 * smp_sample, then copies of the tiny checkpoint with NaN/Inf written into one weight (embed,
 * lm_head, a projection, a norm, the ViT and the projector with an image) or a config that
 * overflows (rope_theta 1e-300), through the public API and `nvlm generate` (env NVLM_CLI).
 * Also max_new_tokens: -1 is the model's default, other negative values are refused.
 */
#include "eng_golden.h"

#include <cJSON.h>
#include <dirent.h>
#include <float.h>
#include <sys/stat.h>
#include <unistd.h>

#define BF16_NAN 0x7fc0u
#define BF16_PINF 0x7f80u
#define BF16_NINF 0xff80u

/* ---- unit tests on smp_sample ------------------------------------------------------------ */

/* smp_sample into *tok; errors go to ctx. */
static nvlm_status draw(nvlm_context *ctx, const nvlm_sampler_params *p, const float *l,
                        smp_work *w, smp_rng *rng, int32_t *tok)
{
    *tok = -1;
    return smp_sample(p, l, w, NULL, 0, rng, tok, ctx);
}

static void test_unit_padding(nvlm_context *ctx)
{
    tu_section("sampler: padding rows (ids the tokenizer lacks) are never chosen");
    enum { V = 12 };
    smp_work w;
    CHECK_OK(smp_work_init(NULL, &w, V));
    smp_rng rng;
    smp_seed(&rng, 3);
    /* rows 9..11 are padding and hold the largest logits */
    w.usable[9] = w.usable[10] = w.usable[11] = 0;
    float l[V] = {0.0f, 0.6931472f, -1.0f, -2.0f, -3.0f, -4.0f, -5.0f, -6.0f, -7.0f,
                  50.0f, 60.0f, 70.0f};
    nvlm_sampler_params p;
    nvlm_sampler_default_params(&p);
    p.max_new_tokens = 1; /* smp_check sees it resolved */
    int32_t t = -1;
    CHECK_OK(draw(ctx, &p, l, &w, &rng, &t));
    CHECK_EQ_INT(t, 1, "greedy skips the padding rows");
    p.temperature = 1.0f;
    p.top_k = 2;
    int c1 = 0;
    int bad = 0;
    const int N = 6000;
    for (int i = 0; i < N; i++) {
        bad += draw(ctx, &p, l, &w, &rng, &t) != NVLM_OK;
        c1 += t == 1;
        bad += t != 0 && t != 1;
    }
    CHECK_EQ_INT(bad, 0, "top_k 2 keeps the two best usable rows");
    CHECK(fabs((double)c1 / N - 2.0 / 3.0) < 0.03,
          "top-k normalises over usable rows only: frequency %.3f ~ 2/3", (double)c1 / N);
    p.top_k = 0;
    p.temperature = 1e6f;
    bad = 0;
    for (int i = 0; i < 2000; i++) {
        draw(ctx, &p, l, &w, &rng, &t);
        bad += t < 0 || t >= 9;
    }
    CHECK_EQ_INT(bad, 0, "temperature 1e6: never a padding row");
    p.temperature = 1.0f;
    p.top_p = 0.5f;
    p.min_p = 0.1f;
    bad = 0;
    for (int i = 0; i < 500; i++) {
        draw(ctx, &p, l, &w, &rng, &t);
        bad += t != 1;
    }
    CHECK_EQ_INT(bad, 0, "top_p 0.5 over usable rows keeps token 1 only");
    p.top_p = 1.0f;
    p.min_p = 0.0f;
    nvlm_logit_bias b = {10, 1.0f};
    p.logit_bias = &b;
    p.n_logit_bias = 1;
    CHECK_EQ_INT(smp_check(&p, &w, ctx), NVLM_ERR_INVALID_ARGUMENT, "a bias on a padding row");
    CHECK(strstr(nvlm_last_error(ctx), "padding") != NULL, "message: %s", nvlm_last_error(ctx));
    b.token = 8;
    CHECK_OK(smp_check(&p, &w, ctx));
    /* everything usable is banned: the padding rows do not step in */
    nvlm_logit_bias ban[9];
    for (int i = 0; i < 9; i++) {
        ban[i] = (nvlm_logit_bias){i, -INFINITY};
    }
    p.logit_bias = ban;
    p.n_logit_bias = 9;
    p.temperature = 0.0f;
    CHECK_EQ_INT(draw(ctx, &p, l, &w, &rng, &t), NVLM_ERR_INVALID_ARGUMENT,
                 "a bias banning every usable row");
    CHECK(strcmp(nvlm_last_error(ctx), "the logit bias bans every token") == 0, "message: %s",
          nvlm_last_error(ctx));
    p.n_logit_bias = 0;
    for (int i = 0; i < 9; i++) {
        l[i] = NAN;
    }
    CHECK_EQ_INT(draw(ctx, &p, l, &w, &rng, &t), NVLM_ERR_BACKEND,
                 "only padding rows finite: nothing to choose");
    CHECK(strcmp(nvlm_last_error(ctx), "all logits are non-finite") == 0, "message: %s",
          nvlm_last_error(ctx));
    smp_work_free(NULL, &w);
}

/* Plain greedy (no bias, no penalties) takes a one-pass path of its own: it must choose as
 * the general path does (a zero bias forces that one), the lowest index among ties included. */
static void test_unit_greedy_paths(nvlm_context *ctx)
{
    tu_section("sampler: plain greedy chooses as the general path (ties, NaN, Inf, padding)");
    enum { V = 4099 };
    smp_work w;
    CHECK_OK(smp_work_init(NULL, &w, V));
    smp_rng rng;
    smp_seed(&rng, 5);
    float *l = malloc(V * sizeof(float));
    CHECK(l != NULL, "malloc");
    if (l == NULL) {
        smp_work_free(NULL, &w);
        return;
    }
    nvlm_sampler_params p, pb;
    nvlm_sampler_default_params(&p);
    pb = p;
    nvlm_logit_bias zero = {0, 0.0f};
    pb.logit_bias = &zero;
    pb.n_logit_bias = 1;
    uint64_t x = 99;
    int mismatch = 0, not_first = 0;
    for (int trial = 0; trial < 200; trial++) {
        for (int i = 0; i < V; i++) {
            x = x * 6364136223846793005ull + 1442695040888963407ull;
            unsigned r = (unsigned)(x >> 33);
            /* few distinct values: many ties for the largest */
            l[i] = (float)(r % 7u) - 3.0f;
            l[i] = r % 97u == 0 ? NAN : r % 89u == 0 ? INFINITY : r % 83u == 0 ? -INFINITY : l[i];
            w.usable[i] = (uint8_t)(r % 31u != 0);
        }
        zero.token = 0;
        while (!w.usable[zero.token]) {
            zero.token++;
        }
        int32_t a = -1, b = -1;
        CHECK_OK(draw(ctx, &p, l, &w, &rng, &a));
        CHECK_OK(draw(ctx, &pb, l, &w, &rng, &b));
        mismatch += a != b;
        int first = -1;
        for (int i = 0; i < V; i++) {
            if (w.usable[i] && isfinite(l[i]) && (first < 0 || l[i] > l[first])) {
                first = i;
            }
        }
        not_first += a != first;
    }
    CHECK_EQ_INT(mismatch, 0, "plain greedy and the general path choose the same token");
    CHECK_EQ_INT(not_first, 0, "greedy: the lowest index of the largest usable finite logit");
    free(l);
    smp_work_free(NULL, &w);
}

static void test_unit_nonfinite(nvlm_context *ctx)
{
    tu_section("sampler: NaN, +Inf and -Inf logits are never chosen");
    enum { V = 8 };
    smp_work w;
    CHECK_OK(smp_work_init(NULL, &w, V));
    smp_rng rng;
    smp_seed(&rng, 11);
    float l[V] = {NAN, INFINITY, 1.0f, -INFINITY, 2.0f, NAN, 0.5f, INFINITY};
    nvlm_sampler_params p;
    nvlm_sampler_default_params(&p);
    int32_t t = -1;
    CHECK_OK(draw(ctx, &p, l, &w, &rng, &t));
    CHECK_EQ_INT(t, 4, "greedy: the best finite logit");
    p.temperature = 1.0f;
    p.top_k = 1;
    int bad = 0;
    for (int i = 0; i < 200; i++) {
        draw(ctx, &p, l, &w, &rng, &t);
        bad += t != 4;
    }
    CHECK_EQ_INT(bad, 0, "top_k 1: the best finite logit");
    p.top_k = 0;
    int cnt[V] = {0};
    const int N = 6000;
    for (int i = 0; i < N; i++) {
        draw(ctx, &p, l, &w, &rng, &t);
        cnt[t >= 0 && t < V ? t : 0] += 1;
    }
    CHECK(cnt[0] + cnt[1] + cnt[3] + cnt[5] + cnt[7] == 0, "sampled: never a non-finite row");
    double want4 = exp(2.0) / (exp(2.0) + exp(1.0) + exp(0.5));
    CHECK(fabs((double)cnt[4] / N - want4) < 0.03,
          "softmax over the finite logits only: %.3f ~ %.3f", (double)cnt[4] / N, want4);
    p.top_p = 0.6f;
    bad = 0;
    for (int i = 0; i < 200; i++) {
        draw(ctx, &p, l, &w, &rng, &t);
        bad += t != 4;
    }
    CHECK_EQ_INT(bad, 0, "top_p 0.6 over the finite logits keeps token 4 only (p = 0.63)");
    p.top_p = 1.0f;
    p.min_p = 0.5f;
    bad = 0;
    for (int i = 0; i < 200; i++) {
        draw(ctx, &p, l, &w, &rng, &t);
        bad += t != 4;
    }
    CHECK_EQ_INT(bad, 0, "min_p 0.5 keeps token 4 only");
    p.min_p = 0.0f;

    /* a bias never revives a non-finite logit; +inf forces a finite one */
    nvlm_logit_bias b[2] = {{0, INFINITY}, {5, 100.0f}};
    p.logit_bias = b;
    p.n_logit_bias = 2;
    p.temperature = 0.0f;
    CHECK_OK(draw(ctx, &p, l, &w, &rng, &t));
    CHECK_EQ_INT(t, 4, "a bias on NaN rows changes nothing");
    b[0] = (nvlm_logit_bias){6, INFINITY};
    CHECK_OK(draw(ctx, &p, l, &w, &rng, &t));
    CHECK_EQ_INT(t, 6, "+inf bias forces a finite token (greedy)");
    p.temperature = 1.0f;
    bad = 0;
    for (int i = 0; i < 200; i++) {
        draw(ctx, &p, l, &w, &rng, &t);
        bad += t != 6;
    }
    CHECK_EQ_INT(bad, 0, "+inf bias forces a finite token (sampled)");
    /* penalties on non-finite rows keep them out */
    int32_t hist[4] = {0, 1, 3, 7};
    p.n_logit_bias = 0;
    p.temperature = 0.0f;
    p.repetition_penalty = 1.5f;
    p.frequency_penalty = -1e30f;
    p.penalty_last_n = -1;
    t = -1;
    CHECK_OK(smp_sample(&p, l, &w, hist, 4, &rng, &t, ctx));
    CHECK_EQ_INT(t, 4, "penalties do not revive non-finite rows");
    p.repetition_penalty = 1.0f;
    p.frequency_penalty = 0.0f;

    /* nothing finite */
    float none[V] = {NAN, NAN, NAN, NAN, NAN, NAN, NAN, NAN};
    float mix[V] = {NAN, INFINITY, -INFINITY, NAN, INFINITY, -INFINITY, NAN, -INFINITY};
    float neg[V];
    for (int i = 0; i < V; i++) {
        neg[i] = -INFINITY;
    }
    const float *all_bad[3] = {none, mix, neg};
    for (int k = 0; k < 3; k++) {
        for (int temp = 0; temp < 2; temp++) {
            p.temperature = temp ? 0.7f : 0.0f;
            nv_clear(ctx);
            CHECK_EQ_INT(draw(ctx, &p, all_bad[k], &w, &rng, &t), NVLM_ERR_BACKEND,
                         "no finite logit");
            CHECK(strcmp(nvlm_last_error(ctx), "all logits are non-finite") == 0,
                  "case %d, temperature %d: message '%s'", k, temp, nvlm_last_error(ctx));
        }
    }
    /* the bias bans every finite token */
    nvlm_logit_bias ban[3] = {{2, -INFINITY}, {4, -INFINITY}, {6, -INFINITY}};
    p.logit_bias = ban;
    p.n_logit_bias = 3;
    for (int temp = 0; temp < 2; temp++) {
        p.temperature = temp ? 0.7f : 0.0f;
        CHECK_EQ_INT(draw(ctx, &p, l, &w, &rng, &t), NVLM_ERR_INVALID_ARGUMENT,
                     "bias bans every finite token");
        CHECK(strcmp(nvlm_last_error(ctx), "the logit bias bans every token") == 0,
              "message '%s'", nvlm_last_error(ctx));
    }
    smp_work_free(NULL, &w);
}

/* ---- checkpoint copies ------------------------------------------------------------------- */

static char tmp_root[] = "/tmp/nvlm_sampler_XXXXXX";
static int n_copies = 0;

static bool copy_file(const char *src, const char *dst)
{
    size_t n = 0;
    char *data = tu_read_file(src, &n);
    FILE *f = data != NULL ? fopen(dst, "wb") : NULL;
    bool ok = f != NULL && fwrite(data, 1, n, f) == n;
    ok = (f != NULL && fclose(f) == 0) && ok;
    free(data);
    return ok;
}

/* A fresh copy of the tiny checkpoint; its directory is written to dir. */
static bool copy_model(char *dir, size_t cap)
{
    snprintf(dir, cap, "%s/m%d", tmp_root, n_copies++);
    if (mkdir(dir, 0700) != 0) {
        return false;
    }
    DIR *d = opendir(EG_MODEL_DIR);
    if (d == NULL) {
        return false;
    }
    bool ok = true;
    struct dirent *e;
    while (ok && (e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.') {
            continue;
        }
        char src[512];
        char dst[512];
        snprintf(src, sizeof src, "%s/%s", EG_MODEL_DIR, e->d_name);
        snprintf(dst, sizeof dst, "%s/%s", dir, e->d_name);
        ok = copy_file(src, dst);
    }
    closedir(d);
    CHECK(ok, "copy of the tiny checkpoint in %s", dir);
    return ok;
}

/* Writes `count` bf16 values `bits` from element `first` of tensor `name` (in whichever shard
 * of the copy holds it). */
static bool patch_bf16(const char *dir, const char *name, size_t first, size_t count,
                       uint16_t bits)
{
    static const char *const shards[2] = {"model-00001-of-00002.safetensors",
                                          "model-00002-of-00002.safetensors"};
    bool done = false;
    for (int k = 0; k < 2 && !done; k++) {
        char path[512];
        snprintf(path, sizeof path, "%s/%s", dir, shards[k]);
        size_t n = 0;
        char *data = tu_read_file(path, &n);
        uint64_t hlen = 0;
        if (data == NULL || n < 8) {
            free(data);
            break;
        }
        memcpy(&hlen, data, 8);
        cJSON *h = hlen <= n - 8 ? cJSON_ParseWithLength(data + 8, (size_t)hlen) : NULL;
        const cJSON *t = cJSON_GetObjectItemCaseSensitive(h, name);
        const cJSON *off = cJSON_GetObjectItemCaseSensitive(t, "data_offsets");
        const char *dt = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(t, "dtype"));
        if (cJSON_GetArraySize(off) == 2 && dt != NULL && strcmp(dt, "BF16") == 0) {
            size_t a = (size_t)cJSON_GetArrayItem(off, 0)->valuedouble;
            size_t b = (size_t)cJSON_GetArrayItem(off, 1)->valuedouble;
            size_t at = 8 + (size_t)hlen + a + first * 2;
            if ((first + count) * 2 <= b - a && at + count * 2 <= n) {
                for (size_t i = 0; i < count; i++) {
                    memcpy(data + at + 2 * i, &bits, 2);
                }
                FILE *f = fopen(path, "wb");
                done = f != NULL && fwrite(data, 1, n, f) == n;
                done = (f != NULL && fclose(f) == 0) && done;
            }
        }
        cJSON_Delete(h);
        free(data);
    }
    CHECK(done, "patch %s[%zu..+%zu] in %s", name, first, count, dir);
    return done;
}

/* Sets llm_config.<key> (a number) in the copy's config.json. */
static bool patch_config(const char *dir, const char *key, double value)
{
    char path[512];
    snprintf(path, sizeof path, "%s/config.json", dir);
    char *text = tu_read_file(path, NULL);
    cJSON *j = text != NULL ? cJSON_Parse(text) : NULL;
    cJSON *llm = cJSON_GetObjectItemCaseSensitive(j, "llm_config");
    bool ok = llm != NULL;
    if (ok) {
        cJSON_DeleteItemFromObjectCaseSensitive(llm, key);
        cJSON_AddNumberToObject(llm, key, value);
        char *out = cJSON_Print(j);
        FILE *f = out != NULL ? fopen(path, "w") : NULL;
        ok = f != NULL && fputs(out, f) >= 0;
        ok = (f != NULL && fclose(f) == 0) && ok;
        cJSON_free(out);
    }
    cJSON_Delete(j);
    free(text);
    CHECK(ok, "config.json of %s: %s = %g", dir, key, value);
    return ok;
}

static void write_text(const char *dir, const char *name, const char *text)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    bool ok = f != NULL && fputs(text, f) >= 0;
    ok = (f != NULL && fclose(f) == 0) && ok;
    CHECK(ok, "write %s", path);
}

static void rm_tree(const char *dir)
{
    DIR *d = opendir(dir);
    if (d == NULL) {
        return;
    }
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) {
            continue;
        }
        char p[512];
        snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
        if (e->d_type == DT_DIR) {
            rm_tree(p);
        } else {
            unlink(p);
        }
    }
    closedir(d);
    rmdir(dir);
}

static nvlm_model *load(nvlm_context *ctx, const char *dir)
{
    nvlm_model *m = NULL;
    nvlm_status st = nvlm_model_load(ctx, dir, NULL, &m);
    CHECK(st == NVLM_OK, "load %s -> %d: %s", dir, (int)st, nvlm_last_error(ctx));
    return m;
}

static const char *const question = "Hello, who are you?";

/* Greedy, no stop ids, at most n tokens. */
static void greedy(nvlm_sampler_params *p, int n)
{
    static const int32_t none[1] = {0};
    nvlm_sampler_default_params(p);
    p->max_new_tokens = n;
    p->stop_ids = none;
    p->n_stop_ids = 0;
}

/* Index of the largest of l[0..n) other than the ids in skip[0..n_skip). */
static int32_t argmax_except(const float *l, int32_t n, const int32_t *skip, int n_skip)
{
    int32_t best = -1;
    for (int32_t i = 0; i < n; i++) {
        bool skipped = false;
        for (int k = 0; k < n_skip; k++) {
            skipped = skipped || skip[k] == i;
        }
        if (!skipped && (best < 0 || l[i] > l[best])) {
            best = i;
        }
    }
    return best;
}

/* The original model's first-step logits for `question` (malloc'd) and its tokenizer's ids. */
static float *first_logits(nvlm_model *m, size_t *vocab)
{
    nvlm_session *s = NULL;
    CHECK_OK(nvlm_session_create(m, NULL, &s));
    float *out = NULL;
    if (s != NULL && nvlm_session_add_turn(s, NVLM_ROLE_USER, question, NULL, 0) == NVLM_OK) {
        const float *l = nvlm_session_logits(s, vocab);
        out = malloc(*vocab * sizeof(float));
        memcpy(out, l, *vocab * sizeof(float));
    }
    nvlm_session_free(s);
    return out;
}

static void test_padding_rows(nvlm_context *ctx, nvlm_model *orig)
{
    tu_section("session: padding rows of the real layout are never generated");
    int32_t n_tok = nvlm_tokenizer_vocab_size(nvlm_model_tokenizer(orig));
    nvlm_model_info info;
    info.struct_size = sizeof info;
    CHECK_OK(nvlm_model_get_info(orig, &info));
    CHECK(n_tok > 0 && n_tok < info.vocab_size, "tiny model: %d ids, %d rows", n_tok,
          info.vocab_size);
    /* Hot sampling on the plain checkpoint: before the mask, padding ids came out and the
     * stream decoder failed ("id ... out of range"). */
    for (uint64_t seed = 1; seed <= 4; seed++) {
        nvlm_session_params sp;
        nvlm_session_default_params(&sp);
        sp.seed = seed;
        nvlm_session *s = NULL;
        CHECK_OK(nvlm_session_create(orig, &sp, &s));
        if (s == NULL) {
            return;
        }
        nvlm_sampler_params p;
        greedy(&p, 300);
        p.temperature = 100.0f;
        nvlm_generate_result r;
        r.struct_size = sizeof r;
        CHECK_OK(nvlm_session_add_turn(s, NVLM_ROLE_USER, question, NULL, 0));
        nvlm_status st = nvlm_session_generate(s, &p, NULL, NULL, &r);
        CHECK(st == NVLM_OK && r.n_tokens == 300, "seed %llu: 300 hot tokens -> %d (%s)",
              (unsigned long long)seed, (int)st, nvlm_last_error(s));
        size_t n = 0;
        const int32_t *t = nvlm_session_tokens(s, &n);
        int bad = 0;
        for (size_t i = 0; i < n; i++) {
            bad += t[i] >= n_tok;
        }
        CHECK_EQ_INT(bad, 0, "generated ids past the tokenizer");
        nvlm_session_free(s);
    }

    /* A copy whose last padding row is 4x the greedy token's row: its logit is the largest. */
    size_t V = 0;
    float *l0 = first_logits(orig, &V);
    if (l0 == NULL) {
        return;
    }
    int32_t t0 = argmax_except(l0, n_tok, NULL, 0);
    CHECK(l0[t0] > 0.0f, "the greedy logit is positive (%g)", (double)l0[t0]);
    char dir[256];
    int32_t pad = (int32_t)V - 1;
    bool ok = copy_model(dir, sizeof dir);
    if (ok) {
        char path[512];
        snprintf(path, sizeof path, "%s/model-00002-of-00002.safetensors", dir);
        size_t n = 0;
        char *data = tu_read_file(path, &n);
        uint64_t hlen = 0;
        memcpy(&hlen, data, 8);
        cJSON *h = cJSON_ParseWithLength(data + 8, (size_t)hlen);
        const cJSON *off = cJSON_GetObjectItemCaseSensitive(
            cJSON_GetObjectItemCaseSensitive(h, "language_model.lm_head.weight"),
            "data_offsets");
        int d = info.llm_hidden_size;
        ok = off != NULL;
        if (ok) {
            uint16_t *w = (uint16_t *)(data + 8 + hlen +
                                       (size_t)cJSON_GetArrayItem(off, 0)->valuedouble);
            for (int k = 0; k < d; k++) {
                uint16_t v = w[(size_t)t0 * d + k];
                /* x4 in bf16: exponent + 2 (tiny weights: no overflow, zero stays zero) */
                w[(size_t)pad * d + k] = (v & 0x7fffu) == 0 ? v : (uint16_t)(v + (2u << 7));
            }
            FILE *f = fopen(path, "wb");
            ok = f != NULL && fwrite(data, 1, n, f) == n;
            ok = (f != NULL && fclose(f) == 0) && ok;
        }
        cJSON_Delete(h);
        free(data);
        CHECK(ok, "lm_head row %d = 4 x row %d", pad, t0);
    }
    nvlm_model *m = ok ? load(ctx, dir) : NULL;
    nvlm_session *s = NULL;
    if (m != NULL) {
        CHECK_OK(nvlm_session_create(m, NULL, &s));
    }
    if (s != NULL) {
        CHECK_OK(nvlm_session_add_turn(s, NVLM_ROLE_USER, question, NULL, 0));
        size_t v2 = 0;
        const float *l = nvlm_session_logits(s, &v2);
        CHECK(l != NULL && v2 == V, "logits keep every row (%zu)", v2);
        CHECK(l != NULL && l[pad] > l[t0] && argmax_except(l, (int32_t)V, NULL, 0) == pad,
              "the padding row holds the largest logit");
        nvlm_sampler_params p;
        greedy(&p, 1);
        int32_t tok = -1;
        CHECK_OK(nvlm_session_sample(s, &p, &tok));
        CHECK_EQ_INT(tok, t0, "greedy: the best row the tokenizer has");
        p.temperature = 1.0f;
        p.top_k = 1;
        CHECK_OK(nvlm_session_sample(s, &p, &tok));
        CHECK_EQ_INT(tok, t0, "top_k 1: the best row the tokenizer has");
        p.top_k = 0;
        p.temperature = 1000.0f;
        int bad = 0;
        for (int i = 0; i < 500; i++) {
            bad += nvlm_session_sample(s, &p, &tok) != NVLM_OK || tok >= n_tok;
        }
        CHECK_EQ_INT(bad, 0, "temperature 1000: 500 draws, none past the tokenizer");
        nvlm_logit_bias b = {pad, 1.0f};
        p.logit_bias = &b;
        p.n_logit_bias = 1;
        CHECK_EQ_INT(nvlm_session_sample(s, &p, &tok), NVLM_ERR_INVALID_ARGUMENT,
                     "a bias on a padding row");
        CHECK(strstr(nvlm_last_error(s), "padding") != NULL, "message: %s",
              nvlm_last_error(s));
        greedy(&p, 4);
        nvlm_generate_result r;
        r.struct_size = sizeof r;
        CHECK_OK(nvlm_session_generate(s, &p, NULL, NULL, &r));
        size_t n = 0;
        const int32_t *t = nvlm_session_tokens(s, &n);
        CHECK(r.n_tokens == 4 && t[n - 4] == t0, "generate starts with token %d", t0);
    }
    nvlm_session_free(s);
    nvlm_model_free(m);
    free(l0);

    /* The CLI on that copy: no "stream decoder: id ... out of range" */
    const char *cli = getenv("NVLM_CLI");
    if (ok && cli != NULL && cli[0] != '\0') {
        char cmd[1024];
        snprintf(cmd, sizeof cmd, "%s generate %s -p '%s' -n 8 --backend cpu 2>&1", cli, dir,
                 question);
        FILE *pf = popen(cmd, "r");
        char out[4096] = "";
        size_t got = pf != NULL ? fread(out, 1, sizeof out - 1, pf) : 0;
        out[got] = '\0';
        int rc = pf != NULL ? pclose(pf) : -1;
        CHECK(rc == 0 && strstr(out, "out of range") == NULL, "cli: rc %d, output '%s'", rc,
              out);
    }
}

typedef struct nf_case {
    const char *what;
    const char *tensor;     /* NULL: rope_theta 1e-300 in the config */
    size_t first;           /* elements [first, first + count) get `bits` */
    size_t count;
    uint16_t bits;
    bool image;             /* the prompt has an image */
} nf_case;

/* Runs `question` (with an image when asked) on the model in dir and checks that generate and
 * sample refuse with "all logits are non-finite". */
static void expect_nonfinite(nvlm_context *ctx, const char *dir, const char *what, bool image,
                             nvlm_image *img)
{
    nvlm_model *m = load(ctx, dir);
    nvlm_session *s = NULL;
    if (m != NULL) {
        CHECK_OK(nvlm_session_create(m, NULL, &s));
    }
    if (s == NULL) {
        nvlm_model_free(m);
        return;
    }
    nvlm_image *imgs[1] = {img};
    CHECK_OK(nvlm_session_add_turn(s, NVLM_ROLE_USER, question, image ? imgs : NULL,
                                   image ? 1 : 0));
    nvlm_sampler_params p;
    greedy(&p, 4);
    nvlm_generate_result r;
    r.struct_size = sizeof r;
    r.n_tokens = -1;
    nvlm_status st = nvlm_session_generate(s, &p, NULL, NULL, &r);
    CHECK(st == NVLM_ERR_BACKEND && strcmp(nvlm_last_error(s), "all logits are non-finite") == 0,
          "%s: greedy generate -> %d '%s'", what, (int)st, nvlm_last_error(s));
    CHECK_EQ_INT(r.n_tokens, 0, "no token generated");
    p.temperature = 0.8f;
    p.top_k = 40;
    st = nvlm_session_generate(s, &p, NULL, NULL, &r);
    CHECK(st == NVLM_ERR_BACKEND && strcmp(nvlm_last_error(s), "all logits are non-finite") == 0,
          "%s: sampled generate -> %d '%s'", what, (int)st, nvlm_last_error(s));
    int32_t tok = 7;
    st = nvlm_session_sample(s, &p, &tok);
    CHECK(st == NVLM_ERR_BACKEND, "%s: nvlm_session_sample -> %d", what, (int)st);
    nvlm_session_free(s);
    nvlm_model_free(m);
}

static void test_nonfinite_models(nvlm_context *ctx, nvlm_model *orig, nvlm_image *img)
{
    tu_section("session: NaN/Inf weights or an overflowing config -> all logits are non-finite");
    nvlm_special_tokens sp;
    sp.struct_size = sizeof sp;
    CHECK_OK(nvlm_tokenizer_special_tokens(nvlm_model_tokenizer(orig), &sp));
    nvlm_model_info info;
    info.struct_size = sizeof info;
    CHECK_OK(nvlm_model_get_info(orig, &info));
    size_t d = (size_t)info.llm_hidden_size;
    size_t emb_row = (size_t)sp.im_start * d; /* the prompt's first token */
    size_t lm_all = (size_t)info.vocab_size * d;
    const char *emb = "language_model.model.embed_tokens.weight";
    const char *q0 = "language_model.model.layers.0.self_attn.q_proj.weight";
    const nf_case cases[] = {
        {"NaN in embed_tokens", emb, emb_row, 1, BF16_NAN, false},
        {"+Inf in embed_tokens", emb, emb_row + 3, 1, BF16_PINF, false},
        {"+Inf in all of lm_head", "language_model.lm_head.weight", 0, lm_all, BF16_PINF, false},
        {"NaN in layer 0 q_proj", q0, 5, 1, BF16_NAN, false},
        {"+Inf in layer 0 q_proj", q0, 5, 1, BF16_PINF, false},
        {"-Inf in layer 2 down_proj", "language_model.model.layers.2.mlp.down_proj.weight", 9, 1,
         BF16_NINF, false},
        {"NaN in layer 0 input_layernorm", "language_model.model.layers.0.input_layernorm.weight",
         1, 1, BF16_NAN, false},
        {"+Inf in the final norm", "language_model.model.norm.weight", 2, 1, BF16_PINF, false},
        {"NaN in the ViT patch embedding", "vision_model.embeddings.patch_embedding.weight", 0, 1,
         BF16_NAN, true},
        {"+Inf in a ViT MLP", "vision_model.encoder.layers.0.mlp.fc1.weight", 17, 1, BF16_PINF,
         true},
        {"NaN in the projector's LayerNorm", "mlp1.0.weight", 3, 1, BF16_NAN, true},
        {"+Inf in the projector's first linear", "mlp1.1.weight", 40, 1, BF16_PINF, true},
        {"rope_theta 1e-300", NULL, 0, 0, 0, false},
    };
    char cli_dir[256] = "";
    for (size_t i = 0; i < NV_ARRAY_LEN(cases); i++) {
        const nf_case *c = &cases[i];
        char dir[256];
        if (!copy_model(dir, sizeof dir)) {
            continue;
        }
        bool ok = c->tensor != NULL ? patch_bf16(dir, c->tensor, c->first, c->count, c->bits)
                                    : patch_config(dir, "rope_theta", 1e-300);
        if (!ok) {
            continue;
        }
        expect_nonfinite(ctx, dir, c->what, c->image, img);
        if (c->image) {
            /* the same weights answer a text-only prompt as the original model does */
            nvlm_model *m = load(ctx, dir);
            nvlm_session *a = NULL;
            nvlm_session *b = NULL;
            if (m != NULL) {
                CHECK_OK(nvlm_session_create(m, NULL, &a));
                CHECK_OK(nvlm_session_create(orig, NULL, &b));
            }
            if (a != NULL && b != NULL) {
                nvlm_sampler_params p;
                greedy(&p, 6);
                CHECK_OK(nvlm_session_add_turn(a, NVLM_ROLE_USER, question, NULL, 0));
                CHECK_OK(nvlm_session_add_turn(b, NVLM_ROLE_USER, question, NULL, 0));
                CHECK_OK(nvlm_session_generate(a, &p, NULL, NULL, NULL));
                CHECK_OK(nvlm_session_generate(b, &p, NULL, NULL, NULL));
                size_t na = 0;
                size_t nb = 0;
                const int32_t *ta = nvlm_session_tokens(a, &na);
                const int32_t *tb = nvlm_session_tokens(b, &nb);
                CHECK(na == nb && memcmp(ta, tb, na * sizeof(int32_t)) == 0,
                      "%s: a text-only prompt is unaffected", c->what);
            }
            nvlm_session_free(a);
            nvlm_session_free(b);
            nvlm_model_free(m);
        }
        if (cli_dir[0] == '\0' && !c->image) {
            snprintf(cli_dir, sizeof cli_dir, "%s", dir);
        }
    }

    /* lm_head: one row NaN, two rows with one +Inf / -Inf element (their logits are +-Inf):
     * never chosen, the rest works as before. */
    size_t V = 0;
    float *l0 = first_logits(orig, &V);
    int32_t n_tok = nvlm_tokenizer_vocab_size(nvlm_model_tokenizer(orig));
    char dir[256];
    if (l0 != NULL && copy_model(dir, sizeof dir)) {
        int32_t t0 = argmax_except(l0, n_tok, NULL, 0);
        int32_t skip[3] = {t0, -1, -1};
        int32_t t1 = argmax_except(l0, n_tok, skip, 1);
        skip[1] = t1;
        int32_t r1 = t0 != 10 && t1 != 10 ? 10 : 20;
        int32_t r2 = t0 != 11 && t1 != 11 ? 11 : 21;
        const char *lm = "language_model.lm_head.weight";
        patch_bf16(dir, lm, (size_t)t0 * d, d, BF16_NAN);
        patch_bf16(dir, lm, (size_t)r1 * d, d, 0);
        patch_bf16(dir, lm, (size_t)r2 * d, d, 0);
        patch_bf16(dir, lm, (size_t)r1 * d + 7, 1, BF16_PINF);
        patch_bf16(dir, lm, (size_t)r2 * d + 7, 1, BF16_NINF);
        nvlm_model *m = load(ctx, dir);
        nvlm_session *s = NULL;
        if (m != NULL) {
            CHECK_OK(nvlm_session_create(m, NULL, &s));
        }
        if (s != NULL) {
            CHECK_OK(nvlm_session_add_turn(s, NVLM_ROLE_USER, question, NULL, 0));
            const float *l = nvlm_session_logits(s, &V);
            CHECK(l != NULL && isnan(l[t0]) && isinf(l[r1]) && isinf(l[r2]) &&
                      (l[r1] > 0) != (l[r2] > 0),
                  "logits: row %d NaN, rows %d/%d +-Inf", t0, r1, r2);
            nvlm_sampler_params p;
            greedy(&p, 1);
            int32_t tok = -1;
            CHECK_OK(nvlm_session_sample(s, &p, &tok));
            CHECK_EQ_INT(tok, t1, "greedy: the best finite logit");
            p.temperature = 2.0f;
            int bad = 0;
            for (int i = 0; i < 500; i++) {
                bad += nvlm_session_sample(s, &p, &tok) != NVLM_OK || tok == t0 || tok == r1 ||
                       tok == r2;
            }
            CHECK_EQ_INT(bad, 0, "sampled: never a non-finite row (500 draws)");
            greedy(&p, 3);
            CHECK_OK(nvlm_session_generate(s, &p, NULL, NULL, NULL));
            size_t n = 0;
            const int32_t *t = nvlm_session_tokens(s, &n);
            CHECK(t != NULL && t[n - 3] == t1, "generate starts with token %d", t1);
        }
        nvlm_session_free(s);
        nvlm_model_free(m);
    }
    free(l0);

    const char *cli = getenv("NVLM_CLI");
    if (cli_dir[0] != '\0' && cli != NULL && cli[0] != '\0') {
        char cmd[1024];
        snprintf(cmd, sizeof cmd, "%s generate %s -p 'hi' -n 4 --backend cpu 2>&1", cli,
                 cli_dir);
        FILE *pf = popen(cmd, "r");
        char out[4096] = "";
        size_t got = pf != NULL ? fread(out, 1, sizeof out - 1, pf) : 0;
        out[got] = '\0';
        int rc = pf != NULL ? pclose(pf) : -1;
        CHECK(rc != 0 && strstr(out, "all logits are non-finite") != NULL,
              "cli on NaN weights: rc %d, output '%s'", rc, out);
    } else {
        printf("SKIP cli: NVLM_CLI not set\n");
    }
}

static void test_max_new_tokens(nvlm_context *ctx, nvlm_model *orig)
{
    tu_section("sampler params: max_new_tokens -1 = the model's default, < -1 refused");
    char dir[256];
    char dir2[256];
    if (!copy_model(dir, sizeof dir) || !copy_model(dir2, sizeof dir2)) {
        return;
    }
    write_text(dir, "generation_config.json", "{\"eos_token_id\": 4002, \"max_new_tokens\": 7}");
    char path[512];
    snprintf(path, sizeof path, "%s/generation_config.json", dir2);
    CHECK(unlink(path) == 0, "no generation_config.json in %s", dir2);
    nvlm_model *models[3] = {load(ctx, dir), load(ctx, dir2), orig};
    const int want[3] = {7, 1024, 1024};
    for (int k = 0; k < 3; k++) {
        nvlm_session *s = NULL;
        if (models[k] != NULL) {
            CHECK_OK(nvlm_session_create(models[k], NULL, &s));
        }
        if (s == NULL) {
            continue;
        }
        CHECK_OK(nvlm_session_add_turn(s, NVLM_ROLE_USER, question, NULL, 0));
        nvlm_sampler_params p;
        greedy(&p, -1);
        nvlm_generate_result r;
        r.struct_size = sizeof r;
        if (k < 2) {
            CHECK_OK(nvlm_session_generate(s, &p, NULL, NULL, &r));
            CHECK(r.n_tokens == want[k] && r.finish_reason == NVLM_FINISH_MAX_TOKENS,
                  "model %d: -1 -> %d tokens (want %d)", k, r.n_tokens, want[k]);
        }
        const int32_t bad[4] = {-2, -3, -1000, INT32_MIN};
        for (int i = 0; i < 4; i++) {
            greedy(&p, bad[i]);
            size_t n0 = 0;
            size_t n1 = 0;
            nvlm_session_tokens(s, &n0);
            CHECK_EQ_INT(nvlm_session_generate(s, &p, NULL, NULL, &r), NVLM_ERR_INVALID_ARGUMENT,
                         "negative max_new_tokens other than -1");
            CHECK(strstr(nvlm_last_error(s), "max_new_tokens") != NULL, "message: %s",
                  nvlm_last_error(s));
            int32_t tok = 0;
            CHECK_EQ_INT(nvlm_session_sample(s, &p, &tok), NVLM_ERR_INVALID_ARGUMENT,
                         "sample checks it too");
            nvlm_session_tokens(s, &n1);
            CHECK_EQ_INT(n1, n0, "nothing generated");
        }
        greedy(&p, 0);
        r.n_tokens = -1;
        CHECK_OK(nvlm_session_generate(s, &p, NULL, NULL, &r));
        CHECK(r.n_tokens == 0 && r.finish_reason == NVLM_FINISH_MAX_TOKENS,
              "max_new_tokens 0 generates nothing");
        nvlm_session_free(s);
    }
    nvlm_model_free(models[0]);
    nvlm_model_free(models[1]);
}

int main(void)
{
    nvlm_context *ctx = NULL;
    nvlm_model *m = eg_load_model(&ctx, 2);
    nvlm_image *img = NULL;
    if (m != NULL) {
        CHECK_OK(nvlm_image_load_file(ctx, "tests/data/images/chelsea_square_160.png", NULL,
                                      &img));
    }
    bool tmp = mkdtemp(tmp_root) != NULL;
    CHECK(tmp, "mkdtemp");
    if (m != NULL && img != NULL && tmp) {
        test_unit_padding(ctx);
        test_unit_nonfinite(ctx);
        test_unit_greedy_paths(ctx);
        test_padding_rows(ctx, m);
        test_nonfinite_models(ctx, m, img);
        test_max_new_tokens(ctx, m);
    }
    if (tmp) {
        rm_tree(tmp_root);
    }
    nvlm_image_free(img);
    nvlm_model_free(m);
    nvlm_context_free(ctx);
    return tu_done();
}
