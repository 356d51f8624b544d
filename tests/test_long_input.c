/*
 * test_long_input.c - feeds and turns longer than one decoder pass (DEC_MAX_BATCH tokens) on
 * the tiny model. A 5,000-token prompt against an independent float32 reference
 * (tests/oracle/qwen2_long_logits.py -> tests/data/long/): in one feed, in feeds that end on and
 * across pass boundaries, and in short passes. Image rows that straddle pass boundaries: the
 * golden image cases in short passes, and two 7-tile images (3,584 image rows) against the
 * reference. A long user turn through nvlm_session_add_turn and `nvlm generate -p` (env
 * NVLM_CLI), and the context limit of a long feed. The arena: mark, rewind, a failed piece
 * poisons it, and the decoder, vision and projector stages refuse a short arena.
 */
#include "eng_golden.h"

#include <cJSON.h>

#define LONG_GOLDEN "tests/data/long/qwen2_long_logits.safetensors"
#define IMAGE_PAD 4011

/* A session whose decoder passes take at most max_batch tokens; NULL on failure. */
static nvlm_session *new_session(nvlm_model *m, int max_batch)
{
    nvlm_session *s = NULL;
    CHECK_OK(nvlm_session_create(m, NULL, &s));
    if (s != NULL && max_batch != DEC_MAX_BATCH) {
        CHECK_OK(nv_session_set_max_batch(s, max_batch));
    }
    return s;
}

/* Compares the session's logits with `want` (vocab floats). */
static void check_logits(nvlm_session *s, const char *what, const float *want)
{
    size_t V = 0;
    const float *lg = nvlm_session_logits(s, &V);
    CHECK(lg != NULL && V == 4032 && want != NULL, "%s: logits present", what);
    if (lg != NULL && V == 4032 && want != NULL) {
        eg_close(what, lg, want, V, 2e-4);
    }
}

/* Number of pass boundaries (multiples of max_batch) that fall inside a run of image rows. */
static int straddles(const int32_t *ids, size_t n, int max_batch)
{
    int k = 0;
    for (size_t b = (size_t)max_batch; b < n; b += (size_t)max_batch) {
        k += ids[b - 1] == IMAGE_PAD && ids[b] == IMAGE_PAD;
    }
    return k;
}

/* Greedy, no stop ids, at most n tokens. */
static void greedy_params(nvlm_sampler_params *p, int n)
{
    static const int32_t none[1] = {0};
    nvlm_sampler_default_params(p);
    p->max_new_tokens = n;
    p->stop_ids = none;
    p->n_stop_ids = 0;
}

/* ---- the arena ----------------------------------------------------------------------------- */

static void test_arena(nvlm_model *m)
{
    tu_section("arena: mark, rewind, poison; every stage piece is checked");
    nv_engine *e = m->engine;
    nv_exec *ex = NULL;
    CHECK_OK(e->be->ops->exec_create(e->be, 1, m, &ex));
    if (ex == NULL) {
        return;
    }
    nv_arena ar = {.ex = ex};
    CHECK_OK(nv_arena_reserve(&ar, 1024));
    float *a = nv_arena_floats(&ar, 64);
    size_t mark = nv_arena_mark(&ar);
    CHECK(a != NULL && mark == 256, "a 256-byte piece, mark %zu", mark);
    CHECK(nv_arena_floats(&ar, 1000) == NULL, "a piece past the end");
    CHECK(nv_arena_floats(&ar, 16) == NULL, "a small piece after a failed one (poisoned)");
    CHECK(nv_arena_floats(&ar, 0) == NULL, "an empty piece after a failed one");
    nv_arena_rewind(&ar, mark);
    float *b = nv_arena_floats(&ar, 16);
    CHECK(a != NULL && b == a + 64, "rewind reuses the space above the mark");
    nv_arena_release(&ar);

    /* Decoder, one 64-byte block short: the up-projection piece does not fit while the empty
     * logits piece (n_logits 0) would. */
    const dec_weights *w = &e->dec;
    dec_kv kv;
    CHECK_OK(dec_kv_init(ex, w, &kv, NV_F32, 64));
    CHECK_OK(dec_kv_reserve(ex, &kv, 16));
    int32_t ids[16];
    for (int i = 0; i < 16; i++) {
        ids[i] = 100 + i;
    }
    CHECK_OK(nv_arena_reserve(&ar, dec_arena_bytes(w, 16, 0) - 64));
    CHECK_EQ_INT(dec_forward(ex, &ar, w, &kv, ids, 16, NULL, NULL, NULL, 0, 0, NULL, NULL),
                 NVLM_ERR_INTERNAL, "decoder arena one block short");
    CHECK_EQ_INT(kv.n, 0, "cache untouched");
    nv_arena_release(&ar);
    dec_kv_free(ex, &kv);

    /* Vision, short by its qkv piece: qkv does not fit, the three pieces after it would. */
    const vit_weights *v = &e->vit;
    size_t npix = (size_t)3 * v->image * v->image;
    size_t qkv = nv_arena_size((size_t)(v->n_patches + 1) * 3 * v->n_heads_padded * v->head_dim);
    CHECK_OK(nv_arena_reserve(&ar, vit_arena_bytes(v, 1) - qkv));
    float *pix = nv_arena_floats(&ar, npix);
    float *out = NULL;
    if (pix != NULL) {
        CHECK_OK(e->be->ops->zero(ex, pix, npix * sizeof(float)));
        CHECK_EQ_INT(vit_forward(ex, &ar, v, pix, 1, &out, NULL), NVLM_ERR_INTERNAL,
                     "vision arena short by the qkv piece");
    }
    nv_arena_release(&ar);

    /* Projector, one block short. */
    size_t rows = (size_t)v->n_patches / 4;
    size_t in_n = (size_t)v->n_patches * v->D;
    size_t out_n = rows * (size_t)e->proj.out;
    CHECK_OK(nv_arena_reserve(&ar, nv_arena_size(out_n) + nv_arena_size(in_n) +
                                       proj_arena_bytes(&e->proj, v, 1) - 64));
    float *po = nv_arena_floats(&ar, out_n);
    float *vin = nv_arena_floats(&ar, in_n);
    if (po != NULL && vin != NULL) {
        CHECK_OK(e->be->ops->zero(ex, vin, in_n * sizeof(float)));
        CHECK_EQ_INT(proj_forward(ex, &ar, &e->proj, v, vin, 1, po, NULL), NVLM_ERR_INTERNAL,
                     "projector arena one block short");
    }
    nv_arena_release(&ar);
    e->be->ops->exec_free(ex);
}

/* ---- a 5,000-token prompt against the reference ------------------------------------------ */

static void test_reference(nvlm_context *ctx, nvlm_model *m)
{
    nv_st_file *f = NULL;
    CHECK_OK(nv_st_open(ctx, LONG_GOLDEN, NULL, &f));
    size_t n = 0;
    int32_t *ids = f != NULL ? eg_ids(f, "ids", &n) : NULL;
    const nv_tensor *pt = f != NULL ? eg_tensor(f, "positions", NV_I64) : NULL;
    const nv_tensor *lt = f != NULL ? eg_tensor(f, "logits", NV_F32) : NULL;
    if (ids == NULL || pt == NULL || lt == NULL || n != 5000 || nv_tensor_nelem(pt) != 4 ||
        nv_tensor_nelem(lt) != 4 * 4032) {
        CHECK(false, "%s holds 5000 ids and the logits of 4 positions", LONG_GOLDEN);
        free(ids);
        nv_st_close(f);
        return;
    }
    /* Positions 2099, 4095, 4096, 4999: the last ids of the feeds below. */
    const int64_t *pos = pt->data;
    const float *want = lt->data;
    const size_t V = 4032;
    size_t ends[4];
    for (int i = 0; i < 4; i++) {
        ends[i] = (size_t)pos[i] + 1;
    }
    CHECK(ends[0] == 2100 && ends[1] == 4096 && ends[2] == 4097 && ends[3] == 5000,
          "reference positions");

    tu_section("long: one 5,000-token feed == the float32 reference");
    nvlm_session *s = new_session(m, DEC_MAX_BATCH);
    if (s != NULL) {
        nvlm_status st = nvlm_session_feed(s, ids, n, NULL, 0);
        CHECK(st == NVLM_OK, "feed 5000 ids -> %d: %s", (int)st, nvlm_last_error(s));
        size_t nt = 0;
        const int32_t *t = nvlm_session_tokens(s, &nt);
        CHECK(nt == n && t != NULL && memcmp(t, ids, n * sizeof *ids) == 0, "5000 tokens kept");
        check_logits(s, "one feed: logits of position 4999", want + 3 * V);
    }
    nvlm_session_free(s);

    tu_section("long: feeds ending across and on pass boundaries, up to n_ctx == the reference");
    nvlm_session_params sp;
    nvlm_session_default_params(&sp);
    sp.n_ctx = 5000;
    s = NULL;
    CHECK_OK(nvlm_session_create(m, &sp, &s));
    size_t from = 0;
    for (int i = 0; i < 4 && s != NULL; i++) {
        nvlm_status st = nvlm_session_feed(s, ids + from, ends[i] - from, NULL, 0);
        CHECK(st == NVLM_OK, "feed [%zu, %zu) -> %d: %s", from, ends[i], (int)st,
              nvlm_last_error(s));
        char what[64];
        snprintf(what, sizeof what, "feed [%zu, %zu): logits of position %lld", from, ends[i],
                 (long long)pos[i]);
        check_logits(s, what, want + (size_t)i * V);
        from = ends[i];
        if (i == 0) {
            /* 2100 + 5000 > n_ctx: refused before any work, the session unchanged */
            CHECK_EQ_INT(nvlm_session_feed(s, ids, n, NULL, 0), NVLM_ERR_CONTEXT_FULL,
                         "5000 more ids, n_ctx 5000");
            size_t nt = 0;
            nvlm_session_tokens(s, &nt);
            CHECK_EQ_INT(nt, 2100, "tokens after the refused feed");
            check_logits(s, "logits after the refused feed", want);
        }
    }
    nvlm_session_free(s);

    tu_section("long: 700-token passes == the reference");
    s = new_session(m, 700);
    if (s != NULL) {
        CHECK_OK(nvlm_session_feed(s, ids, n, NULL, 0));
        check_logits(s, "700-token passes: logits of position 4999", want + 3 * V);
    }
    nvlm_session_free(s);

    free(ids);
    nv_st_close(f);
}

/* ---- image rows across pass boundaries --------------------------------------------------- */

/* Feeds the golden prompt ids of `name` with its images in passes of max_batch tokens: the
 * first logits and 16 greedy tokens equal the golden. */
static void test_image_case(nvlm_context *ctx, nvlm_model *m, const char *name,
                            const char *const *files, size_t n_files, int max_batch)
{
    char sec[128];
    snprintf(sec, sizeof sec, "long: %s in %d-token passes", name, max_batch);
    tu_section(sec);
    nv_st_file *f = eg_open(ctx, name);
    size_t n = 0;
    size_t n_steps = 0;
    int32_t *ids = eg_ids(f, "prompt_ids", &n);
    int32_t *steps = eg_ids(f, "step_tokens", &n_steps);
    const nv_tensor *sl = eg_tensor(f, "step_logits", NV_F32);
    nvlm_image *imgs[4] = {0};
    for (size_t i = 0; i < n_files; i++) {
        char path[256];
        snprintf(path, sizeof path, "tests/data/images/%s", files[i]);
        CHECK_OK(nvlm_image_load_file(ctx, path, NULL, &imgs[i]));
    }
    nvlm_session *s = new_session(m, max_batch);
    if (s != NULL && ids != NULL && steps != NULL && sl != NULL && n_steps == 16) {
        int k = straddles(ids, n, max_batch);
        CHECK(k > 0, "%d pass boundaries fall inside image rows", k);
        nvlm_status st = nvlm_session_feed(s, ids, n, imgs, n_files);
        CHECK(st == NVLM_OK, "feed -> %d: %s", (int)st, nvlm_last_error(s));
        check_logits(s, "first-step logits", sl->data);
        nvlm_sampler_params p;
        greedy_params(&p, 16);
        CHECK_OK(nvlm_session_generate(s, &p, NULL, NULL, NULL));
        size_t nt = 0;
        const int32_t *t = nvlm_session_tokens(s, &nt);
        bool eq = nt == n + 16;
        for (size_t i = 0; eq && i < 16; i++) {
            eq = t[n + i] == steps[i];
        }
        CHECK(eq, "%s: 16 greedy tokens equal the golden", name);
    }
    nvlm_session_free(s);
    for (size_t i = 0; i < n_files; i++) {
        nvlm_image_free(imgs[i]);
    }
    free(ids);
    free(steps);
    nv_st_close(f);
}

/* case1's prompt twice (two 7-tile images, 3,584 image rows, 3,746 tokens) against the
 * reference, in default passes (the second image straddles position 2048) and short ones. */
static void test_two_big_images(nvlm_context *ctx, nvlm_model *m, int max_batch)
{
    char sec[128];
    snprintf(sec, sizeof sec, "long: two 7-tile images, %d-token passes == the reference",
             max_batch);
    tu_section(sec);
    nv_st_file *g = NULL;
    CHECK_OK(nv_st_open(ctx, LONG_GOLDEN, NULL, &g));
    const nv_tensor *want = g != NULL ? eg_tensor(g, "twice_logits", NV_F32) : NULL;
    nv_st_file *f = eg_open(ctx, "case1_multitile");
    size_t n = 0;
    int32_t *one = eg_ids(f, "prompt_ids", &n);
    nvlm_image *img = NULL;
    CHECK_OK(nvlm_image_load_file(ctx, "tests/data/images/coffee_600x400.jpg", NULL, &img));
    nvlm_session *s = new_session(m, max_batch);
    int32_t *ids = one != NULL ? malloc(2 * n * sizeof(int32_t)) : NULL;
    if (s != NULL && ids != NULL && img != NULL && want != NULL &&
        nv_tensor_nelem(want) == 4032) {
        memcpy(ids, one, n * sizeof(int32_t));
        memcpy(ids + n, one, n * sizeof(int32_t));
        size_t pads = 0;
        for (size_t i = 0; i < 2 * n; i++) {
            pads += ids[i] == IMAGE_PAD;
        }
        CHECK_EQ_INT(pads, 3584, "image rows");
        int k = straddles(ids, 2 * n, max_batch);
        CHECK(k > 0, "%d pass boundaries fall inside image rows", k);
        nvlm_image *both[2] = {img, img};
        nvlm_status st = nvlm_session_feed(s, ids, 2 * n, both, 2);
        CHECK(st == NVLM_OK, "feed -> %d: %s", (int)st, nvlm_last_error(s));
        check_logits(s, "last logits", want->data);
    }
    nvlm_session_free(s);
    nvlm_image_free(img);
    free(ids);
    free(one);
    nv_st_close(f);
    nv_st_close(g);
}

/* ---- a long user turn: add_turn and the CLI ---------------------------------------------- */

/* `n_words` space-separated words picked by an LCG (malloc'd). */
static char *long_text(size_t n_words, uint32_t seed)
{
    static const char *const words[] = {"the",   "quick", "brown", "fox",   "jumps", "over",
                                        "lazy",  "dog",   "river", "stone", "cloud", "light",
                                        "north", "green", "field", "house"};
    char *t = malloc(n_words * 8 + 1);
    size_t len = 0;
    uint32_t x = seed;
    for (size_t i = 0; t != NULL && i < n_words; i++) {
        x = x * 1664525u + 1013904223u;
        const char *w = words[(x >> 16) % NV_ARRAY_LEN(words)];
        if (i > 0 && (x >> 8) % 13 == 0) {
            t[len++] = '.';
        }
        if (i > 0) {
            t[len++] = ' ';
        }
        size_t wl = strlen(w);
        memcpy(t + len, w, wl);
        len += wl;
    }
    if (t != NULL) {
        t[len] = '\0';
    }
    return t;
}

static void test_cli(const char *text, const int32_t *prompt, size_t n_prompt,
                     const int32_t *gen, size_t n_gen)
{
    tu_section("long: nvlm generate -p with a 2,700-token prompt");
    const char *cli = getenv("NVLM_CLI");
    if (cli == NULL || cli[0] == '\0') {
        printf("SKIP cli: NVLM_CLI not set\n");
        return;
    }
    size_t cap = strlen(text) + strlen(cli) + 256;
    char *cmd = malloc(cap);
    size_t out_cap = (size_t)1 << 20;
    char *out = malloc(out_cap);
    if (cmd == NULL || out == NULL) {
        CHECK(false, "out of memory");
        free(cmd);
        free(out);
        return;
    }
    snprintf(cmd, cap, "%s generate " EG_MODEL_DIR " -p '%s' -n 4 --json --backend cpu", cli,
             text);
    FILE *pf = popen(cmd, "r");
    CHECK(pf != NULL, "popen nvlm generate");
    cJSON *j = NULL;
    if (pf != NULL) {
        size_t got = fread(out, 1, out_cap - 1, pf);
        out[got] = '\0';
        CHECK_EQ_INT(pclose(pf), 0, "nvlm generate exit status");
        j = cJSON_Parse(out);
    }
    CHECK(j != NULL, "--json output parses: %.200s", out);
    const cJSON *pt = cJSON_GetObjectItemCaseSensitive(j, "prompt_tokens");
    const cJSON *toks = cJSON_GetObjectItemCaseSensitive(j, "tokens");
    bool eq = j != NULL && (size_t)cJSON_GetArraySize(pt) == n_prompt;
    for (size_t i = 0; eq && i < n_prompt; i++) {
        eq = cJSON_GetArrayItem(pt, (int)i)->valueint == prompt[i];
    }
    CHECK(eq, "cli prompt tokens (%d) equal the session's (%zu)", cJSON_GetArraySize(pt),
          n_prompt);
    eq = j != NULL && (size_t)cJSON_GetArraySize(toks) == n_gen;
    for (size_t i = 0; eq && i < n_gen; i++) {
        eq = cJSON_GetArrayItem(toks, (int)i)->valueint == gen[i];
    }
    CHECK(eq, "cli tokens equal the session's greedy tokens");
    cJSON_Delete(j);
    free(cmd);
    free(out);
}

static void test_long_turns(nvlm_model *m)
{
    tu_section("long: a 2,700-token user turn, then a second long turn");
    char *text = long_text(1350, 7);
    char *text2 = long_text(800, 11);
    nvlm_session *a = new_session(m, DEC_MAX_BATCH);
    nvlm_session *b = new_session(m, 300);
    nvlm_session *c = new_session(m, 1000);
    if (text == NULL || text2 == NULL || a == NULL || b == NULL || c == NULL) {
        CHECK(false, "setup");
        goto out;
    }
    nvlm_status st = nvlm_session_add_turn(a, NVLM_ROLE_USER, text, NULL, 0);
    CHECK(st == NVLM_OK, "add_turn -> %d: %s", (int)st, nvlm_last_error(a));
    size_t n1 = 0;
    const int32_t *t = nvlm_session_tokens(a, &n1);
    CHECK(n1 > 2600 && n1 < 3000, "turn of %zu tokens (2,600..3,000)", n1);
    if (st != NVLM_OK || n1 <= DEC_MAX_BATCH) {
        goto out;
    }
    /* The same ids in 300-token passes give the same logits. */
    CHECK_OK(nvlm_session_feed(b, t, n1, NULL, 0));
    size_t V = 0;
    const float *lb = nvlm_session_logits(b, &V);
    check_logits(a, "add_turn == feed in 300-token passes", lb);
    int32_t *prompt = malloc(n1 * sizeof(int32_t));
    if (prompt == NULL) {
        goto out;
    }
    memcpy(prompt, t, n1 * sizeof(int32_t));
    nvlm_sampler_params p;
    nvlm_sampler_default_params(&p);
    p.max_new_tokens = 4;
    nvlm_generate_result r;
    r.struct_size = sizeof r;
    CHECK_OK(nvlm_session_generate(a, &p, NULL, NULL, &r));
    size_t n2 = 0;
    t = nvlm_session_tokens(a, &n2);
    CHECK(n2 > n1 && n2 <= n1 + 4, "generated %zu tokens", n2 - n1);
    test_cli(text, prompt, n1, t + n1, n2 - n1);
    free(prompt);

    st = nvlm_session_add_turn(a, NVLM_ROLE_USER, text2, NULL, 0);
    CHECK(st == NVLM_OK, "second add_turn -> %d: %s", (int)st, nvlm_last_error(a));
    size_t n3 = 0;
    t = nvlm_session_tokens(a, &n3);
    CHECK(n3 > n2 + DEC_MAX_BATCH / 2, "second turn of %zu tokens", n3 - n2);
    /* A fresh session fed every token in 1000-token passes gives the same logits. */
    CHECK_OK(nvlm_session_feed(c, t, n3, NULL, 0));
    const float *lc = nvlm_session_logits(c, &V);
    check_logits(a, "two long turns == fresh feed in 1000-token passes", lc);
out:
    nvlm_session_free(a);
    nvlm_session_free(b);
    nvlm_session_free(c);
    free(text);
    free(text2);
}

int main(void)
{
    nvlm_context *ctx = NULL;
    nvlm_model *m = eg_load_model(&ctx, 2);
    if (m != NULL) {
        nvlm_session *s = new_session(m, DEC_MAX_BATCH);
        CHECK_EQ_INT(nv_session_set_max_batch(s, 0), NVLM_ERR_INVALID_ARGUMENT, "batch 0");
        CHECK_EQ_INT(nv_session_set_max_batch(s, DEC_MAX_BATCH + 1), NVLM_ERR_INVALID_ARGUMENT,
                     "batch above DEC_MAX_BATCH");
        nvlm_session_free(s);
        test_arena(m);
        test_reference(ctx, m);
        static const char *const c1[] = {"coffee_600x400.jpg"};
        static const char *const c4[] = {"rocket_wide_640x320.jpg", "chelsea_square_160.png"};
        test_image_case(ctx, m, "case1_multitile", c1, 1, 100);
        test_image_case(ctx, m, "case1_multitile", c1, 1, 1000);
        test_image_case(ctx, m, "case4_two_images", c4, 2, 300);
        test_two_big_images(ctx, m, DEC_MAX_BATCH);
        test_two_big_images(ctx, m, 512);
        test_long_turns(m);
    }
    nvlm_model_free(m);
    nvlm_context_free(ctx);
    return tu_done();
}
