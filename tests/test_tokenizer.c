/*
 * test_tokenizer.c - encoding and decoding against Hugging Face `tokenizers` goldens:
 * tests/data/tokenizer-golden.json (161 strings; nvlm_d_ids with both file forms of
 * nvlm-d-72b, ids with qwen-tokenizer, mini_ids with both forms of tiny-nvlm-d) and
 * tests/data/tokenizer/extra_cases.json (tests/oracle/gen_tokenizer_cases.py: edge white space,
 * long runs, split_special, random id sequences). Also streaming == one-shot decoding, invalid
 * UTF-8, unsupported components, both merge forms, the heap BPE path, threads and the CLI.
 */
#include "testutil.h"
#include "tokenizer.h"

#include <cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

typedef struct gcase {
    char *text;
    size_t len;
    const cJSON *node;
} gcase;

static char *unhex(const char *hex, size_t *len)
{
    size_t n = strlen(hex) / 2;
    char *s = malloc(n + 1);
    for (size_t i = 0; i < n; i++) {
        unsigned v;
        sscanf(hex + 2 * i, "%2x", &v);
        s[i] = (char)v;
    }
    s[n] = '\0';
    *len = n;
    return s;
}

/* ids of a JSON array; returns count. */
static size_t json_ids(const cJSON *arr, int32_t **out)
{
    size_t n = (size_t)cJSON_GetArraySize(arr);
    int32_t *ids = malloc((n + 1) * sizeof *ids);
    size_t i = 0;
    const cJSON *it;
    cJSON_ArrayForEach(it, arr) {
        ids[i++] = (int32_t)it->valuedouble;
    }
    *out = ids;
    return n;
}

static bool encode_eq(const nvlm_tokenizer *t, const char *s, size_t len, uint32_t flags,
                      const cJSON *want_arr, const char *what, size_t idx)
{
    int32_t *want;
    size_t nw = json_ids(want_arr, &want);
    size_t n = 0;
    int32_t buf[4096];
    nvlm_status st = nvlm_tokenize(t, s, len, flags, buf, 4096, &n);
    bool ok = st == NVLM_OK && n == nw && memcmp(buf, want, n * sizeof *buf) == 0;
    if (!ok) {
        CHECK(false, "%s case %zu: status %d, %zu ids, want %zu (%s)", what, idx, (int)st, n, nw,
              nvlm_last_error(t));
        for (size_t i = 0; i < NV_MIN(n, (size_t)40); i++) {
            fprintf(stderr, "%d%s", buf[i], i < nw && buf[i] == want[i] ? " " : "* ");
        }
        fprintf(stderr, "\n");
    }
    free(want);
    return ok;
}

static char *detok(const nvlm_tokenizer *t, const int32_t *ids, size_t n, uint32_t flags,
                   size_t *len)
{
    size_t need = 0;
    if (nvlm_detokenize(t, ids, n, flags, NULL, 0, &need) != NVLM_OK) {
        return NULL;
    }
    char *s = malloc(need + 1);
    nvlm_detokenize(t, ids, n, flags, s, need + 1, len);
    return s;
}

/* Streaming decode of ids equals one-shot; buffers sized one byte short first. */
static bool stream_eq(const nvlm_tokenizer *t, const int32_t *ids, size_t n, uint32_t flags)
{
    size_t one_n;
    char *one = detok(t, ids, n, flags, &one_n);
    nvlm_stream_decoder *sd;
    if (one == NULL || nvlm_stream_decoder_create(t, flags, &sd) != NVLM_OK) {
        free(one);
        return false;
    }
    char *acc = malloc(one_n + 64);
    size_t an = 0;
    bool ok = true;
    char piece[1024];
    for (size_t i = 0; i < n && ok; i++) {
        size_t k = 0;
        nvlm_status st = nvlm_stream_decoder_push(sd, ids[i], piece, 1, &k);
        if (st == NVLM_ERR_BUFFER_TOO_SMALL) {
            st = nvlm_stream_decoder_push(sd, ids[i], piece, k + 1, &k);
        }
        ok = st == NVLM_OK && an + k <= one_n + 8 && piece[k] == '\0';
        if (ok) {
            memcpy(acc + an, piece, k);
            an += k;
        }
    }
    size_t k = 0;
    ok = ok && nvlm_stream_decoder_flush(sd, piece, sizeof piece, &k) == NVLM_OK;
    if (ok) {
        memcpy(acc + an, piece, k);
        an += k;
    }
    ok = ok && an == one_n && memcmp(acc, one, an) == 0;
    nvlm_stream_decoder_free(sd);
    free(acc);
    free(one);
    return ok;
}

static bool str_eq(const char *got, size_t n, const char *want)
{
    return got != NULL && want != NULL && strlen(want) == n && memcmp(got, want, n) == 0;
}

static bool hex_eq(const char *got, size_t n, const char *hex)
{
    size_t wn;
    char *want = unhex(hex, &wn);
    bool ok = got != NULL && wn == n && memcmp(got, want, n) == 0;
    free(want);
    return ok;
}

/* A golden `decoded` string: JSON strings with U+0000 are cut by cJSON, so where the golden
 * says decoding gives the (NFC-unchanged) text back, compare with the text's bytes. */
static bool golden_text_eq(const gcase *g, const char *got, size_t n, const char *key)
{
    const cJSON *same = cJSON_GetObjectItem(g->node, "decode_equals_nfc_text");
    const cJSON *nfc = cJSON_GetObjectItem(g->node, "nfc_changes_text");
    const char *want = cJSON_GetObjectItem(g->node, key)->valuestring;
    const char *dec = cJSON_GetObjectItem(g->node, "decoded")->valuestring;
    if (cJSON_IsTrue(same) && !cJSON_IsTrue(nfc) && strcmp(want, dec) == 0) {
        return got != NULL && n == g->len && memcmp(got, g->text, n) == 0;
    }
    return str_eq(got, n, want);
}

static void copy_file(const char *src, const char *dst)
{
    size_t n;
    char *d = tu_read_file(src, &n);
    FILE *f = fopen(dst, "wb");
    if (d != NULL && f != NULL) {
        fwrite(d, 1, n, f);
    }
    if (f != NULL) {
        fclose(f);
    }
    free(d);
}

/* A temp directory holding only the vocab.json + merges.txt + tokenizer_config.json form. */
static void vocab_form_dir(const char *model, char *dir)
{
    strcpy(dir, "/tmp/nvlm_tok_XXXXXX");
    if (mkdtemp(dir) == NULL) {
        dir[0] = '\0';
        return;
    }
    const char *files[] = {"vocab.json", "merges.txt", "tokenizer_config.json"};
    for (int i = 0; i < 3; i++) {
        char s[512], d[512];
        snprintf(s, sizeof s, "%s/%s", model, files[i]);
        snprintf(d, sizeof d, "%s/%s", dir, files[i]);
        copy_file(s, d);
    }
}

static void rm_dir(const char *dir)
{
    const char *files[] = {"vocab.json", "merges.txt", "tokenizer_config.json", "tokenizer.json"};
    for (int i = 0; i < 4; i++) {
        char p[512];
        snprintf(p, sizeof p, "%s/%s", dir, files[i]);
        unlink(p);
    }
    rmdir(dir);
}

static nvlm_tokenizer *load(nvlm_context *ctx, const char *path)
{
    nvlm_tokenizer *t = NULL;
    nvlm_status st = nvlm_tokenizer_load(ctx, path, &t);
    CHECK(st == NVLM_OK && t != NULL, "load %s: %s", path, nvlm_last_error(ctx));
    return t;
}

/* ---- goldens -------------------------------------------------------------------------------- */

static void golden_encode(nvlm_tokenizer *t, gcase *g, size_t n, const char *key,
                          const char *what)
{
    size_t bad = 0;
    for (size_t i = 0; i < n; i++) {
        const cJSON *want = cJSON_GetObjectItem(g[i].node, key);
        if (!encode_eq(t, g[i].text, g[i].len, 0, want, what, i)) {
            bad++;
        }
    }
    CHECK(bad == 0, "%s: %zu of %zu golden strings differ", what, bad, n);
}

static void golden_decode(nvlm_tokenizer *t, gcase *g, size_t n, const char *ids_key,
                          const char *dec_key, const char *skip_key, const char *what)
{
    size_t bad = 0, bad_stream = 0;
    for (size_t i = 0; i < n; i++) {
        int32_t *ids;
        size_t k = json_ids(cJSON_GetObjectItem(g[i].node, ids_key), &ids);
        size_t len;
        char *s = detok(t, ids, k, 0, &len);
        if (!golden_text_eq(&g[i], s, len, dec_key)) {
            bad++;
            CHECK(false, "%s decode case %zu", what, i);
        }
        free(s);
        if (skip_key != NULL) {
            s = detok(t, ids, k, NVLM_DETOKENIZE_SKIP_SPECIAL, &len);
            if (!golden_text_eq(&g[i], s, len, skip_key)) {
                bad++;
                CHECK(false, "%s decode(skip special) case %zu", what, i);
            }
            free(s);
        }
        if (!stream_eq(t, ids, k, 0) || !stream_eq(t, ids, k, NVLM_DETOKENIZE_SKIP_SPECIAL)) {
            bad_stream++;
        }
        free(ids);
    }
    CHECK(bad == 0, "%s: %zu decodings differ", what, bad);
    CHECK(bad_stream == 0, "%s: streaming == one-shot for all %zu goldens (%zu differ)", what, n,
          bad_stream);
}

/* ---- small synthetic tokenizers (component checks) ----------------------------------------- */

static nvlm_status load_str(nvlm_context *ctx, const char *json, nvlm_tokenizer **t)
{
    return tok_load_json(ctx, json, strlen(json), t);
}

static void unsupported(nvlm_context *ctx)
{
    tu_section("unsupported components are refused, named");
    const char *base_model = "\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":1,\"ab\":2},"
                             "\"merges\":[\"a b\"]}";
    struct {
        const char *part, *name;
    } cases[] = {
        {"\"normalizer\":{\"type\":\"Lowercase\"},\"pre_tokenizer\":{\"type\":\"ByteLevel\"}",
         "Lowercase"},
        {"\"pre_tokenizer\":{\"type\":\"Whitespace\"}", "Whitespace"},
        {"\"pre_tokenizer\":{\"type\":\"ByteLevel\"},\"decoder\":{\"type\":\"WordPiece\"}",
         "WordPiece"},
        {"\"pre_tokenizer\":{\"type\":\"Sequence\",\"pretokenizers\":[{\"type\":\"Metaspace\"}]}",
         "Metaspace"},
        {"\"pre_tokenizer\":{\"type\":\"ByteLevel\",\"add_prefix_space\":true}",
         "add_prefix_space"},
        {"\"pre_tokenizer\":{\"type\":\"Split\",\"pattern\":{\"Regex\":\"x\"},"
         "\"behavior\":\"Weird\"}", "Weird"},
    };
    for (size_t i = 0; i < NV_ARRAY_LEN(cases); i++) {
        char json[1024];
        snprintf(json, sizeof json, "{%s,%s}", cases[i].part, base_model);
        nvlm_tokenizer *t = NULL;
        nvlm_status st = load_str(ctx, json, &t);
        CHECK(st == NVLM_ERR_UNSUPPORTED && t == NULL &&
                  strstr(nvlm_last_error(ctx), cases[i].name) != NULL,
              "%s refused: status %d, '%s'", cases[i].name, (int)st, nvlm_last_error(ctx));
        nvlm_tokenizer_free(t);
    }
    nvlm_tokenizer *t = NULL;
    nvlm_status st = load_str(ctx,
                              "{\"pre_tokenizer\":{\"type\":\"ByteLevel\"},\"model\":{\"type\":"
                              "\"WordPiece\",\"vocab\":{}}}",
                              &t);
    CHECK(st == NVLM_ERR_UNSUPPORTED && strstr(nvlm_last_error(ctx), "WordPiece") != NULL,
          "model WordPiece refused: %s", nvlm_last_error(ctx));
    st = load_str(ctx, "{\"pre_tokenizer\":{\"type\":\"ByteLevel\"},\"model\":{\"type\":\"BPE\","
                       "\"vocab\":{\"a\":0},\"merges\":[\"a zz\"]}}", &t);
    CHECK_EQ_INT(st, NVLM_ERR_FORMAT, "merge with a token outside the vocabulary");
    st = load_str(ctx, "{\"model\": [1,2", &t);
    CHECK_EQ_INT(st, NVLM_ERR_FORMAT, "truncated JSON");
    CHECK_EQ_INT(nvlm_tokenizer_load(ctx, "tests/data/no-such-dir", &t), NVLM_ERR_NOT_FOUND,
                 "missing path");
    CHECK_EQ_INT(nvlm_tokenizer_load(ctx, "tests/data/images", &t), NVLM_ERR_NOT_FOUND,
                 "directory without tokenizer files");
    CHECK_EQ_INT(nvlm_tokenizer_load(NULL, "x", &t), NVLM_ERR_INVALID_ARGUMENT, "NULL ctx");
}

/* The tiny tokenizer.json with its ["a","b"] merges rewritten as "a b" strings. */
static void merge_forms(nvlm_context *ctx, gcase *g, size_t n)
{
    tu_section("merges as \"a b\" strings == [\"a\",\"b\"] pairs");
    size_t len;
    char *text = tu_read_file("tests/data/tiny-nvlm-d/tokenizer.json", &len);
    cJSON *root = cJSON_Parse(text);
    cJSON *merges = cJSON_GetObjectItem(cJSON_GetObjectItem(root, "model"), "merges");
    cJSON *strs = cJSON_CreateArray();
    const cJSON *it;
    cJSON_ArrayForEach(it, merges) {
        char buf[256];
        snprintf(buf, sizeof buf, "%s %s", cJSON_GetArrayItem(it, 0)->valuestring,
                 cJSON_GetArrayItem(it, 1)->valuestring);
        cJSON_AddItemToArray(strs, cJSON_CreateString(buf));
    }
    cJSON_ReplaceItemInObject(cJSON_GetObjectItem(root, "model"), "merges", strs);
    char *out = cJSON_PrintUnformatted(root);
    nvlm_tokenizer *t = NULL;
    CHECK_OK(tok_load_json(ctx, out, strlen(out), &t));
    if (t != NULL) {
        golden_encode(t, g, n, "mini_ids", "tiny, string merges");
    }
    nvlm_tokenizer_free(t);
    free(out);
    cJSON_Delete(root);
    free(text);
}

/* ---- allocation failures ----------------------------------------------------------------- */

static int g_allocs, g_fail_at = -1;

static void *fail_alloc(void *u, size_t n)
{
    (void)u;
    return g_allocs++ == g_fail_at ? NULL : malloc(n);
}
static void *fail_realloc(void *u, void *p, size_t n)
{
    (void)u;
    return g_allocs++ == g_fail_at ? NULL : realloc(p, n);
}
static void fail_free(void *u, void *p)
{
    (void)u;
    free(p);
}

static void alloc_failures(void)
{
    tu_section("allocation failure at every step of load, encode, prompt");
    nvlm_context_params cp;
    nvlm_context_default_params(&cp);
    cp.alloc_fn = fail_alloc;
    cp.realloc_fn = fail_realloc;
    cp.free_fn = fail_free;
    cp.backend = tu_backend();
    nvlm_context *ctx;
    if (nvlm_context_create(&cp, &ctx) != NVLM_OK) {
        CHECK(false, "context with hooks");
        return;
    }
    int oom = 0, other = 0, steps = 0;
    const char *text = "Hello <|im_end|> wörld 你好 aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    for (int n = 0; n < 400; n++, steps++) {
        g_allocs = 0;
        g_fail_at = n;
        nvlm_tokenizer *t = NULL;
        nvlm_status st = nvlm_tokenizer_load(ctx, "tests/data/tiny-nvlm-d", &t);
        if (st == NVLM_OK) {
            int32_t ids[64];
            size_t k = 0;
            st = nvlm_tokenize(t, text, strlen(text), 0, ids, 64, &k);
            if (st == NVLM_OK) {
                int32_t one = 1;
                nvlm_chat_message m = {NVLM_ROLE_USER, "hi", 1, &one};
                int32_t pids[400];
                st = nvlm_prompt_tokenize(t, &m, 1, NULL, pids, 400, &k, NULL, 0, NULL);
            }
            nvlm_tokenizer_free(t);
        }
        if (st == NVLM_OK && g_allocs <= n) {
            break; /* every allocation succeeded: all failure points were visited */
        }
        oom += st == NVLM_ERR_OUT_OF_MEMORY;
        other += st != NVLM_ERR_OUT_OF_MEMORY && st != NVLM_OK;
    }
    g_fail_at = -1;
    CHECK(steps > 20 && steps < 400 && other == 0,
          "%d failure points: %d reported out of memory, %d other statuses", steps, oom, other);
    nvlm_context_free(ctx);
}

/* ---- threads ------------------------------------------------------------------------------- */

typedef struct thr_arg {
    const nvlm_tokenizer *t;
    gcase *g;
    size_t n;
    int bad;
} thr_arg;

static void *thr_main(void *p)
{
    thr_arg *a = p;
    for (int rep = 0; rep < 3; rep++) {
        for (size_t i = 0; i < a->n; i++) {
            int32_t *want, got[4096];
            size_t nw = json_ids(cJSON_GetObjectItem(a->g[i].node, "nvlm_d_ids"), &want), k = 0;
            if (nvlm_tokenize(a->t, a->g[i].text, a->g[i].len, 0, got, 4096, &k) != NVLM_OK ||
                k != nw || memcmp(got, want, k * sizeof *got) != 0) {
                a->bad++;
            }
            free(want);
        }
    }
    return NULL;
}

/* ---- CLI ----------------------------------------------------------------------------------- */

static void cli_tests(void)
{
    tu_section("CLI: nvlm tokenize");
    const char *cli = getenv("NVLM_CLI");
    if (cli == NULL || cli[0] == '\0') {
        printf("SKIP CLI tests: NVLM_CLI is not set\n");
        return;
    }
    char cmd[1024], out[4096];
    snprintf(cmd, sizeof cmd, "%s tokenize tests/data/nvlm-d-72b 'Hello, who are you?'", cli);
    FILE *p = popen(cmd, "r");
    size_t n = p ? fread(out, 1, sizeof out - 1, p) : 0;
    out[n] = '\0';
    CHECK(p != NULL && pclose(p) == 0, "cli exit status");
    CHECK(strcmp(out, "9707 11 879 525 498 30\n") == 0, "cli ids: '%s'", out);

    /* stdin byte for byte: the trailing newline and the special token are kept */
    snprintf(cmd, sizeof cmd,
             "printf 'hi<|im_end|>\\n' | %s tokenize --json "
             "tests/data/tiny-nvlm-d/tokenizer.json -",
             cli);
    p = popen(cmd, "r");
    n = p ? fread(out, 1, sizeof out - 1, p) : 0;
    out[n] = '\0';
    CHECK(p != NULL && pclose(p) == 0, "cli stdin exit status");
    CHECK(strcmp(out, "[71, 72, 4002, 198]\n") == 0, "cli --json stdin: '%s'", out);

    snprintf(cmd, sizeof cmd, "%s tokenize --split-special tests/data/nvlm-d-72b '<|im_end|>'",
             cli);
    p = popen(cmd, "r");
    n = p ? fread(out, 1, sizeof out - 1, p) : 0;
    out[n] = '\0';
    CHECK(p != NULL && pclose(p) == 0, "cli split-special exit status");
    CHECK(strcmp(out, "27 91 318 6213 91 29\n") == 0, "cli --split-special: '%s'", out);

    snprintf(cmd, sizeof cmd, "%s tokenize tests/data/no-such 2>/dev/null", cli);
    p = popen(cmd, "r");
    CHECK(p != NULL && pclose(p) != 0, "cli fails on a missing path");
}

int main(void)
{
    nvlm_context *ctx;
    CHECK_OK(tu_context_create(&ctx));

    size_t glen;
    char *gtext = tu_read_file("tests/data/tokenizer-golden.json", &glen);
    cJSON *groot = gtext ? cJSON_Parse(gtext) : NULL;
    const cJSON *strings = cJSON_GetObjectItem(groot, "strings");
    size_t ng = (size_t)cJSON_GetArraySize(strings);
    CHECK_EQ_INT(ng, 161, "golden strings");
    gcase *g = calloc(ng + 1, sizeof *g);
    for (size_t i = 0; i < ng; i++) {
        g[i].node = cJSON_GetArrayItem(strings, (int)i);
        g[i].text = unhex(cJSON_GetObjectItem(g[i].node, "text_utf8_hex")->valuestring, &g[i].len);
    }

    tu_section("NVLM-D tokenizer.json: encode == nvlm_d_ids");
    double t0 = nv_time_ms();
    nvlm_tokenizer *nv = load(ctx, "tests/data/nvlm-d-72b/tokenizer.json");
    printf("# load nvlm-d-72b/tokenizer.json: %.1f ms\n", nv_time_ms() - t0);
    if (nv != NULL) {
        golden_encode(nv, g, ng, "nvlm_d_ids", "nvlm-d tokenizer.json");
        CHECK_EQ_INT(nvlm_tokenizer_vocab_size(nv), 151665, "vocab size");
        nvlm_special_tokens sp = {.struct_size = sizeof sp};
        CHECK_OK(nvlm_tokenizer_special_tokens(nv, &sp));
        CHECK(sp.bos == -1 && sp.eos == 151645 && sp.pad == 151643 && sp.image_context == 151654 &&
                  sp.im_start == 151644 && sp.im_end == 151645,
              "special ids %d %d %d %d %d %d", sp.bos, sp.eos, sp.pad, sp.image_context,
              sp.im_start, sp.im_end);
        CHECK_EQ_INT(nvlm_tokenizer_token_id(nv, "\xc4\xa0world"), 1879, "token_id(Gworld)");
        CHECK_EQ_INT(nvlm_tokenizer_token_id(nv, "<|vision_pad|>"), 151654, "token_id(pad)");
        CHECK_EQ_INT(nvlm_tokenizer_token_id(nv, "no such token!!"), -1, "token_id(missing)");
        char piece[16];
        size_t pl = 0;
        CHECK_OK(nvlm_token_to_piece(nv, 1879, piece, sizeof piece, &pl));
        CHECK(pl == 6 && memcmp(piece, " world", 6) == 0, "piece of 1879");
        CHECK_EQ_INT(nvlm_token_to_piece(nv, 999999, piece, sizeof piece, &pl),
                     NVLM_ERR_INVALID_ARGUMENT, "piece of a bad id");

        tu_section("heap BPE path == short-piece path");
        nv->bpe_heap_min = 0;
        nvlm_tokenizer *keep_cache = nv;
        tok_cache_shard *cache = keep_cache->cache;
        nv->cache = NULL; /* no cache: every piece is merged again */
        golden_encode(nv, g, ng, "nvlm_d_ids", "heap BPE");
        nv->bpe_heap_min = 1u << 30;
        golden_encode(nv, g, ng, "nvlm_d_ids", "array BPE");
        nv->cache = cache;
        nv->bpe_heap_min = 24;

        tu_section("invalid UTF-8 and API errors");
        size_t n = 0;
        int32_t ids[64];
        nvlm_status st = nvlm_tokenize(nv, "abc\xe4\xbd", 5, 0, ids, 64, &n);
        CHECK(st == NVLM_ERR_INVALID_ARGUMENT && strstr(nvlm_last_error(nv), "offset 3"),
              "truncated sequence at 3: %s", nvlm_last_error(nv));
        st = nvlm_tokenize(nv, "ab\xed\xa0\x80z", 6, 0, ids, 64, &n);
        CHECK(st == NVLM_ERR_INVALID_ARGUMENT && strstr(nvlm_last_error(nv), "offset 2"),
              "surrogate at 2: %s", nvlm_last_error(nv));
        st = nvlm_tokenize(nv, "\xc0\xafx", 3, 0, ids, 64, &n);
        CHECK(st == NVLM_ERR_INVALID_ARGUMENT && strstr(nvlm_last_error(nv), "offset 0"),
              "overlong at 0: %s", nvlm_last_error(nv));
        st = nvlm_tokenize(nv, "Hello world", 11, 0, ids, 1, &n);
        CHECK(st == NVLM_ERR_BUFFER_TOO_SMALL && n == 2, "size query: %d, n=%zu", (int)st, n);
        CHECK_OK(nvlm_tokenize(nv, "Hello world", 11, 0, ids, 2, &n));
        CHECK_EQ_INT(strcmp(nvlm_last_error(nv), ""), 0, "error text cleared after success");
        CHECK_OK(nvlm_tokenize(nv, NULL, 0, 0, NULL, 0, &n));
        CHECK_EQ_INT(n, 0, "empty text");
        CHECK_EQ_INT(nvlm_tokenize(NULL, "a", 1, 0, ids, 1, &n), NVLM_ERR_INVALID_ARGUMENT,
                     "NULL tokenizer");
        int32_t bad_ids[] = {9707, 151665};
        CHECK_EQ_INT(nvlm_detokenize(nv, bad_ids, 2, 0, NULL, 0, &n), NVLM_ERR_INVALID_ARGUMENT,
                     "decode id out of range");
        char small[6];
        int32_t hw[] = {9707, 1879};
        CHECK_OK(nvlm_detokenize(nv, hw, 2, 0, small, sizeof small, &n));
        CHECK(n == 11 && strcmp(small, "Hello") == 0, "detokenize truncates snprintf-style");

        tu_section("split_special");
        const char *s1 = "<|im_start|>x<tool_call>";
        int32_t want_split[] = {27, 91, 318, 4906, 91, 29, 87, 151657};
        st = nvlm_tokenize(nv, s1, strlen(s1), NVLM_TOKENIZE_SPLIT_SPECIAL, ids, 64, &n);
        CHECK(st == NVLM_OK && n == 8 && memcmp(ids, want_split, sizeof want_split) == 0,
              "special tokens as text, non-special <tool_call> still matched (n=%zu)", n);

        tu_section("unknown flag bits are refused");
        const char *im = "<|im_end|>";
        st = nvlm_tokenize(nv, im, strlen(im), 1u << 1, ids, 64, &n);
        CHECK(st == NVLM_ERR_INVALID_ARGUMENT && strstr(nvlm_last_error(nv), "0x2") != NULL,
              "tokenize flag 0x2: %d %s", (int)st, nvlm_last_error(nv));
        st = nvlm_tokenize(nv, im, strlen(im), NVLM_TOKENIZE_SPLIT_SPECIAL | 0x80000000u, ids, 64,
                           &n);
        CHECK(st == NVLM_ERR_INVALID_ARGUMENT &&
                  strstr(nvlm_last_error(nv), "unknown flag bits 0x80000000") != NULL,
              "tokenize: a known bit with an unknown one: %s", nvlm_last_error(nv));
        char dbuf[32];
        st = nvlm_detokenize(nv, hw, 2, 0x10, dbuf, sizeof dbuf, &n);
        CHECK(st == NVLM_ERR_INVALID_ARGUMENT && strstr(nvlm_last_error(nv), "0x10") != NULL,
              "detokenize flag 0x10: %d %s", (int)st, nvlm_last_error(nv));
        nvlm_stream_decoder *bad_sd = NULL;
        st = nvlm_stream_decoder_create(nv, NVLM_DETOKENIZE_SKIP_SPECIAL | 0x4, &bad_sd);
        CHECK(st == NVLM_ERR_INVALID_ARGUMENT && bad_sd == NULL &&
                  strstr(nvlm_last_error(nv), "0x4") != NULL,
              "stream decoder flag 0x4: %d %s", (int)st, nvlm_last_error(nv));
        CHECK_OK(nvlm_tokenize(nv, im, strlen(im), NVLM_TOKENIZE_SPLIT_SPECIAL, ids, 64, &n));
        CHECK_OK(nvlm_detokenize(nv, hw, 2, NVLM_DETOKENIZE_SKIP_SPECIAL, dbuf, sizeof dbuf, &n));

        tu_section("extra oracle cases (tests/oracle/gen_tokenizer_cases.py)");
        size_t elen;
        char *etext = tu_read_file("tests/data/tokenizer/extra_cases.json", &elen);
        cJSON *eroot = etext ? cJSON_Parse(etext) : NULL;
        const cJSON *cases = cJSON_GetObjectItem(eroot, "cases");
        size_t bad = 0, nc = 0;
        const cJSON *it;
        cJSON_ArrayForEach(it, cases) {
            size_t len;
            char *s = unhex(cJSON_GetObjectItem(it, "text_utf8_hex")->valuestring, &len);
            bad += !encode_eq(nv, s, len, 0, cJSON_GetObjectItem(it, "ids"), "extra", nc);
            bad += !encode_eq(nv, s, len, NVLM_TOKENIZE_SPLIT_SPECIAL,
                              cJSON_GetObjectItem(it, "split_special_ids"), "extra split", nc);
            int32_t *ids2;
            size_t k = json_ids(cJSON_GetObjectItem(it, "ids"), &ids2);
            size_t dl;
            char *d = detok(nv, ids2, k, 0, &dl);
            bad += !hex_eq(d, dl, cJSON_GetObjectItem(it, "decoded_utf8_hex")->valuestring);
            free(d);
            d = detok(nv, ids2, k, NVLM_DETOKENIZE_SKIP_SPECIAL, &dl);
            bad += !hex_eq(d, dl,
                           cJSON_GetObjectItem(it, "decoded_skip_special_utf8_hex")->valuestring);
            free(d);
            free(ids2);
            free(s);
            nc++;
        }
        CHECK(nc >= 150 && bad == 0, "extra cases: %zu of %zu differ", bad, nc);
        const cJSON *seqs = cJSON_GetObjectItem(eroot, "decode_sequences");
        bad = 0;
        nc = 0;
        cJSON_ArrayForEach(it, seqs) {
            int32_t *ids2;
            size_t k = json_ids(cJSON_GetObjectItem(it, "ids"), &ids2);
            size_t len;
            char *s = detok(nv, ids2, k, 0, &len);
            bad += !hex_eq(s, len, cJSON_GetObjectItem(it, "decoded_utf8_hex")->valuestring);
            free(s);
            s = detok(nv, ids2, k, NVLM_DETOKENIZE_SKIP_SPECIAL, &len);
            bad += !hex_eq(s, len,
                           cJSON_GetObjectItem(it, "decoded_skip_special_utf8_hex")->valuestring);
            free(s);
            bad += !stream_eq(nv, ids2, k, 0);
            bad += !stream_eq(nv, ids2, k, NVLM_DETOKENIZE_SKIP_SPECIAL);
            free(ids2);
            nc++;
        }
        CHECK(nc == 60 && bad == 0, "random id sequences (lossy U+FFFD, stream): %zu bad", bad);
        cJSON_Delete(eroot);
        free(etext);

        tu_section("random ids: stream == one-shot");
        uint64_t rng = 88172645463325252ull;
        size_t sbad = 0;
        for (int r = 0; r < 300; r++) {
            int32_t seq[24];
            size_t k = 1 + (size_t)(r % 24);
            for (size_t i = 0; i < k; i++) {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                /* half the ids are single bytes 0x80..0xff (split characters) */
                seq[i] = (rng & 1) ? nv->byte_id[0x80 + ((rng >> 8) & 0x7f)]
                                   : (int32_t)((rng >> 8) % 151665);
            }
            sbad += !stream_eq(nv, seq, k, r & 1 ? NVLM_DETOKENIZE_SKIP_SPECIAL : 0);
        }
        CHECK_EQ_INT(sbad, 0, "random sequences where streaming differs");

        tu_section("threads share one tokenizer");
        pthread_t th[4];
        thr_arg args[4];
        for (int i = 0; i < 4; i++) {
            args[i] = (thr_arg){nv, g, ng, 0};
            pthread_create(&th[i], NULL, thr_main, &args[i]);
        }
        int tbad = 0;
        for (int i = 0; i < 4; i++) {
            pthread_join(th[i], NULL);
            tbad += args[i].bad;
        }
        CHECK_EQ_INT(tbad, 0, "encodings that differ under 4 threads");
    }
    nvlm_tokenizer_free(nv);

    tu_section("NVLM-D vocab.json + merges.txt + tokenizer_config.json");
    char dir[64];
    vocab_form_dir("tests/data/nvlm-d-72b", dir);
    t0 = nv_time_ms();
    nv = load(ctx, dir);
    printf("# load nvlm-d-72b vocab.json + merges.txt: %.1f ms\n", nv_time_ms() - t0);
    if (nv != NULL) {
        golden_encode(nv, g, ng, "nvlm_d_ids", "nvlm-d vocab+merges");
        CHECK_EQ_INT(nvlm_tokenizer_vocab_size(nv), 151665, "vocab size (vocab form)");
        nvlm_special_tokens sp = {.struct_size = sizeof sp};
        CHECK_OK(nvlm_tokenizer_special_tokens(nv, &sp));
        CHECK(sp.eos == 151645 && sp.pad == 151643 && sp.bos == -1, "special ids (vocab form)");
    }
    nvlm_tokenizer_free(nv);
    rm_dir(dir);

    tu_section("Qwen tokenizer: encode == ids, decode == decoded");
    nvlm_tokenizer *qw = load(ctx, "tests/data/qwen-tokenizer/tokenizer.json");
    if (qw != NULL) {
        golden_encode(qw, g, ng, "ids", "qwen tokenizer.json");
        golden_decode(qw, g, ng, "ids", "decoded", "decoded_skip_special", "qwen");
    }
    nvlm_tokenizer_free(qw);

    tu_section("tiny tokenizer (both forms): encode == mini_ids");
    nvlm_tokenizer *tiny = load(ctx, "tests/data/tiny-nvlm-d/tokenizer.json");
    if (tiny != NULL) {
        golden_encode(tiny, g, ng, "mini_ids", "tiny tokenizer.json");
        golden_decode(tiny, g, ng, "mini_ids", "mini_decoded", NULL, "tiny");
    }
    nvlm_tokenizer_free(tiny);
    vocab_form_dir("tests/data/tiny-nvlm-d", dir);
    tiny = load(ctx, dir);
    if (tiny != NULL) {
        golden_encode(tiny, g, ng, "mini_ids", "tiny vocab+merges");
        CHECK_EQ_INT(nvlm_tokenizer_vocab_size(tiny), 4022, "tiny vocab size");
    }
    nvlm_tokenizer_free(tiny);
    rm_dir(dir);

    merge_forms(ctx, g, ng);
    unsupported(ctx);
    alloc_failures();
    cli_tests();

    for (size_t i = 0; i < ng; i++) {
        free(g[i].text);
    }
    free(g);
    cJSON_Delete(groot);
    free(gtext);
    nvlm_context_free(ctx);
    return tu_done();
}
