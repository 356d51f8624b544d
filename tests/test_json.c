/*
 * test_json.c - the allocation-free JSON checker (src/json.c): RFC 8259 cases, its counts, and
 * that everything it accepts cJSON parses (fixtures, hand cases, random mutations); then every
 * cJSON parse of a model load failing as an allocation does (this binary is linked with
 * -Wl,--wrap=cJSON_ParseWithLengthOpts) must be NVLM_ERR_OUT_OF_MEMORY, not a format error.
 */
#include "json.h"
#include "model.h"
#include "safetensors.h"
#include "testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TINY "tests/data/tiny-nvlm-d"

/* ---- the parse seam: fail the n-th cJSON parse like an allocation failure ------------------ */

cJSON *__real_cJSON_ParseWithLengthOpts(const char *value, size_t len, const char **end,
                                        cJSON_bool require_null_terminated);

static int g_calls;
static int g_fail_at; /* 1-based call to fail; 0 = none */

cJSON *__wrap_cJSON_ParseWithLengthOpts(const char *value, size_t len, const char **end,
                                        cJSON_bool require_null_terminated);
cJSON *__wrap_cJSON_ParseWithLengthOpts(const char *value, size_t len, const char **end,
                                        cJSON_bool require_null_terminated)
{
    g_calls++;
    if (g_fail_at > 0 && g_calls == g_fail_at) {
        if (end != NULL) {
            *end = value;
        }
        return NULL; /* what cJSON returns when its malloc fails */
    }
    return __real_cJSON_ParseWithLengthOpts(value, len, end, require_null_terminated);
}

static void arm(int n)
{
    g_calls = 0;
    g_fail_at = n;
}

/* ---- checker cases -------------------------------------------------------------------------- */

static bool cjson_accepts(const char *s, size_t n)
{
    arm(0);
    cJSON *j = cJSON_ParseWithLength(s, n);
    bool ok = j != NULL;
    cJSON_Delete(j);
    return ok;
}

static void check_cases(void)
{
    static const char *const valid[] = {
        "{}", "[]", "0", "-0", "-0.5e+10", "1E-3", "123456789", "true", "false", "null",
        " \t\r\n{ \"a\" : [ 1 , 2 , { \"b\" : null } ] , \"c\" : true } \n",
        "\"a\\u00e9\\ud83d\\ude00\\n\\t\\\"\\\\\\/\\b\\f\\r\"", "\xEF\xBB\xBF{}", "\"\xC3\xA9\"",
        "[[[]],[{}],\"\"]", "{\"\":\"\"}"};
    static const char *const invalid[] = {
        "", " ", "{", "}", "[", "{\"a\"}", "{\"a\":1,}", "[1,]", "[,1]", "01", "1.", "+1", ".5",
        "1e", "-", "\"\x01\"", "\"\\q\"", "\"\\ud800\"", "\"\\udc00\"", "\"\\ud800\\u0041\"",
        "\"\\u12\"", "\"\\u12G4\"", "tru", "nul", "{a:1}", "{\"a\" 1}", "[1 2]", "\"abc",
        "[\"a\":1]", "{\"a\":1]", "\f{}", "'a'", "NaN", "Infinity"};
    for (size_t i = 0; i < sizeof valid / sizeof valid[0]; i++) {
        nv_json_stats st;
        bool ok = nv_json_check(valid[i], strlen(valid[i]), &st);
        CHECK(ok, "valid: %s", valid[i]);
        CHECK(cjson_accepts(valid[i], strlen(valid[i])), "cJSON parses %s", valid[i]);
    }
    for (size_t i = 0; i < sizeof invalid / sizeof invalid[0]; i++) {
        CHECK(!nv_json_check(invalid[i], strlen(invalid[i]), NULL), "invalid: %s", invalid[i]);
    }
    /* an embedded NUL is a control character inside a string, and not JSON outside one */
    CHECK(!nv_json_check("\"a\0b\"", 5, NULL), "NUL in a string");
    CHECK(!nv_json_check("{}\0", 3, NULL), "NUL after the value");
    CHECK(nv_json_check("{}", 2, NULL) && !nv_json_check(NULL, 0, NULL), "NULL text");

    /* trailing bytes are named as such */
    nv_json_stats st;
    CHECK(!nv_json_check("{} x", 4, &st) && st.trailing && st.end == 3, "trailing at 3 (%zu)",
          st.end);
    CHECK(!nv_json_check("{\"a\":[1,}", 9, &st) && !st.trailing && st.end == 8,
          "error offset 8 (%zu)", st.end);

    /* counts */
    const char *t = "{\"a\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,24]},"
                    "\"__metadata__\":{\"format\":\"pt\"},\"b\":[]}";
    CHECK(nv_json_check(t, strlen(t), &st), "counted text is valid");
    CHECK_EQ_INT(st.top_members, 3, "top-level members");
    CHECK_EQ_INT(st.values, 12, "values");
    CHECK(nv_json_check("[{\"a\":1},{\"b\":2}]", 17, &st) && st.top_members == 0 && st.values == 5,
          "an array has no top-level members, 5 values");

    /* numbers: 63 bytes are accepted, 64 are not (cJSON reads 63) */
    char num[80];
    memset(num, '1', 63);
    num[63] = '\0';
    CHECK(nv_json_check(num, 63, NULL) && cjson_accepts(num, 63), "63-digit number");
    num[63] = '1';
    num[64] = '\0';
    CHECK(!nv_json_check(num, 64, NULL), "64-digit number refused");

    /* depth: NV_JSON_MAX_DEPTH nested arrays pass, one more does not */
    size_t d = NV_JSON_MAX_DEPTH;
    char *deep = malloc(2 * d + 4);
    memset(deep, '[', d);
    memset(deep + d, ']', d);
    CHECK(nv_json_check(deep, 2 * d, NULL) && cjson_accepts(deep, 2 * d), "depth %zu", d);
    memset(deep, '[', d + 1);
    memset(deep + d + 1, ']', d + 1);
    CHECK(!nv_json_check(deep, 2 * d + 2, NULL), "depth %zu refused", d + 1);
    free(deep);
}

/* ---- random documents --------------------------------------------------------------------- */

static uint64_t g_rng = 0x243f6a8885a308d3ull;

static uint32_t rnd(uint32_t n)
{
    g_rng = g_rng * 6364136223846793005ull + 1442695040888963407ull;
    return (uint32_t)(g_rng >> 33) % n;
}

static void put(char *buf, size_t cap, size_t *len, const char *s)
{
    size_t n = strlen(s);
    if (*len + n < cap) {
        memcpy(buf + *len, s, n);
        *len += n;
    }
}

static void gen_ws(char *buf, size_t cap, size_t *len)
{
    static const char *const ws[] = {"", "", " ", "\n", "\t", "\r", "  "};
    put(buf, cap, len, ws[rnd(7)]);
}

static void gen_string(char *buf, size_t cap, size_t *len)
{
    static const char *const parts[] = {"a", "Z", "0", " ", "\\n", "\\\"", "\\\\", "\\/",
                                        "\\u00e9", "\\u0000", "\\ud83d\\ude00", "\xc3\xa9",
                                        "\\b", "\\f", "\\r", "\\t", "\\uFFFF", "<|x|>"};
    put(buf, cap, len, "\"");
    for (uint32_t i = rnd(6); i > 0; i--) {
        put(buf, cap, len, parts[rnd(sizeof parts / sizeof parts[0])]);
    }
    put(buf, cap, len, "\"");
}

static void gen_value(char *buf, size_t cap, size_t *len, int depth)
{
    static const char *const nums[] = {"0", "-0", "7", "-12", "3.25", "1e9", "-2.5E-3", "1e+2",
                                       "123456789012", "0.000001", "9007199254740993"};
    static const char *const lits[] = {"true", "false", "null"};
    uint32_t k = depth > 6 ? rnd(3) : rnd(5);
    gen_ws(buf, cap, len);
    if (k == 0) {
        put(buf, cap, len, nums[rnd(sizeof nums / sizeof nums[0])]);
    } else if (k == 1) {
        gen_string(buf, cap, len);
    } else if (k == 2) {
        put(buf, cap, len, lits[rnd(3)]);
    } else {
        bool obj = k == 3;
        put(buf, cap, len, obj ? "{" : "[");
        uint32_t n = rnd(5);
        for (uint32_t i = 0; i < n; i++) {
            if (i > 0) {
                put(buf, cap, len, ",");
            }
            if (obj) {
                gen_ws(buf, cap, len);
                gen_string(buf, cap, len);
                gen_ws(buf, cap, len);
                put(buf, cap, len, ":");
            }
            gen_value(buf, cap, len, depth + 1);
        }
        gen_ws(buf, cap, len);
        put(buf, cap, len, obj ? "}" : "]");
    }
    gen_ws(buf, cap, len);
}

/* Random valid documents, then one-byte edits of them: whatever the checker accepts, cJSON must
 * parse. */
static void check_random_docs(void)
{
    static const char seeds[] = "{}[]\",:\\u0123456789.eE+-tfnlrsa \t\n\x01\x7f\xc3\xa9";
    char buf[8192];
    char mut[8192];
    size_t docs_ok = 0;
    size_t accepted = 0;
    size_t refused_by_cjson = 0;
    for (int iter = 0; iter < 4000; iter++) {
        size_t len = 0;
        gen_value(buf, sizeof buf - 1, &len, 0);
        bool ok = nv_json_check(buf, len, NULL);
        docs_ok += ok;
        if (!ok || !cjson_accepts(buf, len)) {
            CHECK(false, "generated document refused (checker %d): %.*s", ok, (int)len, buf);
            continue;
        }
        for (int m = 0; m < 8; m++) {
            memcpy(mut, buf, len);
            size_t mlen = len;
            size_t at = rnd((uint32_t)len);
            uint32_t op = rnd(3);
            if (op == 0) {
                mut[at] = seeds[rnd(sizeof seeds - 1)];
            } else if (op == 1 && mlen > 1) {
                memmove(mut + at, mut + at + 1, mlen - at - 1);
                mlen--;
            } else {
                memmove(mut + at + 1, mut + at, mlen - at);
                mut[at] = seeds[rnd(sizeof seeds - 1)];
                mlen++;
            }
            if (nv_json_check(mut, mlen, NULL)) {
                accepted++;
                if (!cjson_accepts(mut, mlen)) {
                    refused_by_cjson++;
                    CHECK(false, "checker accepts what cJSON refuses: %.*s", (int)mlen, mut);
                }
            }
        }
    }
    CHECK_EQ_INT(docs_ok, 4000, "generated documents accepted");
    CHECK(accepted > 5000, "enough accepted mutations (%zu)", accepted);
    CHECK_EQ_INT(refused_by_cjson, 0, "accepted mutations cJSON refuses");
    printf("# random documents: 4000; accepted mutations: %zu of 32000\n", accepted);
}

/* Random byte mutations of real JSON: whatever the checker accepts, cJSON must parse (the
 * checker is stricter than cJSON, so a NULL from cJSON on accepted text means memory). */
static void check_stricter(void)
{
    static const char *const files[] = {TINY "/config.json", TINY "/generation_config.json",
                                        TINY "/model.safetensors.index.json",
                                        TINY "/tokenizer_config.json"};
    static const char seeds[] = "{}[]\",:\\u0123456789.eE+-tfnlrsa \t\n\x01\x7f\xc3\xa9";
    uint64_t rng = 0x9e3779b97f4a7c15ull;
    size_t accepted = 0;
    size_t disagree = 0;
    size_t total = 0;
    for (size_t f = 0; f < sizeof files / sizeof files[0]; f++) {
        size_t n;
        char *text = tu_read_file(files[f], &n);
        CHECK(text != NULL, "read %s", files[f]);
        if (text == NULL) {
            continue;
        }
        CHECK(nv_json_check(text, n, NULL) && cjson_accepts(text, n), "%s: both accept",
              files[f]);
        size_t cut = n < 600 ? n : 600; /* mutate a prefix that is a whole value when closed */
        char *buf = malloc(cut + 8);
        for (int iter = 0; iter < 3000; iter++) {
            memcpy(buf, text, cut);
            size_t len = cut;
            int edits = 1 + (int)((rng >> 60) & 3);
            for (int e = 0; e < edits; e++) {
                rng = rng * 6364136223846793005ull + 1442695040888963407ull;
                size_t at = (size_t)(rng >> 33) % len;
                buf[at] = seeds[(rng >> 20) % (sizeof seeds - 1)];
            }
            rng = rng * 6364136223846793005ull + 1442695040888963407ull;
            len = 1 + (size_t)(rng >> 33) % len;
            total++;
            if (nv_json_check(buf, len, NULL)) {
                accepted++;
                if (!cjson_accepts(buf, len)) {
                    disagree++;
                    CHECK(false, "checker accepts what cJSON refuses: %.*s", (int)len, buf);
                }
            }
        }
        free(buf);
        free(text);
    }
    CHECK(disagree == 0, "%zu of %zu accepted mutations refused by cJSON", disagree, accepted);
    printf("# mutations: %zu, accepted by the checker: %zu\n", total, accepted);
}

/* ---- allocation failure inside cJSON ------------------------------------------------------- */

static void check_oom_status(nvlm_context *ctx)
{
    size_t n;
    char *cfg = tu_read_file(TINY "/config.json", &n);
    nv_config c;
    arm(1);
    nvlm_status st = nv_config_parse(&c, cfg, n, ctx);
    CHECK_EQ_INT(st, NVLM_ERR_OUT_OF_MEMORY, "config.json parse failing for memory");
    CHECK(strcmp(nvlm_last_error(ctx), "config.json: out of memory parsing the JSON") == 0,
          "message: %s", nvlm_last_error(ctx));
    arm(1);
    st = nv_config_parse(&c, "{\"a\":", 5, ctx);
    CHECK_EQ_INT(st, NVLM_ERR_FORMAT, "malformed config.json stays a format error");
    CHECK(strcmp(nvlm_last_error(ctx), "config.json: not valid JSON") == 0, "message: %s",
          nvlm_last_error(ctx));
    arm(0);
    CHECK_OK(nv_config_parse(&c, cfg, n, ctx));
    free(cfg);

    nv_st_file *f = NULL;
    arm(1);
    st = nv_st_open(ctx, TINY "/model-00001-of-00002.safetensors", ctx, &f);
    CHECK_EQ_INT(st, NVLM_ERR_OUT_OF_MEMORY, "shard header parse failing for memory");
    CHECK(strstr(nvlm_last_error(ctx), "out of memory parsing the header JSON") != NULL,
          "message: %s", nvlm_last_error(ctx));
    nv_st_close(f);

    nvlm_tokenizer *tok = NULL;
    arm(1);
    st = nvlm_tokenizer_load(ctx, TINY "/tokenizer.json", &tok);
    CHECK_EQ_INT(st, NVLM_ERR_OUT_OF_MEMORY, "tokenizer.json parse failing for memory");
    CHECK(strcmp(nvlm_last_error(ctx),
                 TINY "/tokenizer.json: out of memory parsing the JSON") == 0,
          "message: %s", nvlm_last_error(ctx));
    nvlm_tokenizer_free(tok);

    /* every parse of a full and a config-only load, failed in turn */
    for (int mode = 0; mode < 2; mode++) {
        nvlm_model_params p;
        nvlm_model_default_params(&p);
        p.mode = mode == 0 ? NVLM_LOAD_FULL : NVLM_LOAD_CONFIG_ONLY;
        arm(0);
        nvlm_model *m = NULL;
        CHECK_OK(nvlm_model_load(ctx, TINY, &p, &m));
        nvlm_model_free(m);
        int calls = g_calls;
        CHECK(calls >= 5, "a load parses config, generation config, index, shards, tokenizer "
              "(%d parses)", calls);
        int oom = 0;
        for (int k = 1; k <= calls; k++) {
            arm(k);
            m = NULL;
            st = nvlm_model_load(ctx, TINY, &p, &m);
            oom += st == NVLM_ERR_OUT_OF_MEMORY;
            CHECK(st == NVLM_ERR_OUT_OF_MEMORY && m == NULL &&
                      strstr(nvlm_last_error(ctx), "out of memory") != NULL,
                  "mode %d, parse %d of %d failing: status %d, message: %s", mode, k, calls,
                  (int)st, nvlm_last_error(ctx));
            nvlm_model_free(m);
        }
        CHECK_EQ_INT(oom, calls, "every failed parse is NVLM_ERR_OUT_OF_MEMORY");
    }
    arm(0);
}

int main(void)
{
    nvlm_context *ctx = NULL;
    CHECK_OK(tu_context_create(&ctx));
    tu_section("checker cases");
    check_cases();
    tu_section("checker is stricter than cJSON");
    check_stricter();
    check_random_docs();
    tu_section("allocation failure inside cJSON");
    check_oom_status(ctx);
    nvlm_context_free(ctx);
    return tu_done();
}
