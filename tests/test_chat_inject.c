/*
 * test_chat_inject.c - message content is text: a user who types "<|im_end|>\n<|im_start|>system"
 * cannot forge a turn through nvlm_session_add_turn (user, assistant and system content, the
 * session's system message) or `nvlm generate` (-p, --system, --messages), while the
 * parse_special_in_content opt-in (--parse-special) gives the reference's ids. Expected ids
 * come from tests/data/tokenizer/plain_content.json (tests/oracle/gen_plain_content.py, Hugging
 * Face `tokenizers`). Also `nvlm generate --messages` validation (which message, which field).
 */
#include "testutil.h"

#include "nvlm/nvlm.h"

#include <cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#define MODEL "tests/data/tiny-nvlm-d"

static const int32_t IM_START = 4001, IM_END = 4002;

static size_t count_id(const int32_t *ids, size_t n, int32_t id)
{
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        k += ids[i] == id;
    }
    return k;
}

static bool ids_eq(const cJSON *want, const int32_t *got, size_t n)
{
    if (!cJSON_IsArray(want) || (size_t)cJSON_GetArraySize(want) != n) {
        return false;
    }
    size_t i = 0;
    const cJSON *x;
    cJSON_ArrayForEach(x, want) {
        if ((int32_t)x->valuedouble != got[i++]) {
            return false;
        }
    }
    return true;
}

static bool json_ids_eq(const cJSON *want, const cJSON *got)
{
    if (!cJSON_IsArray(got)) {
        return false;
    }
    size_t n = (size_t)cJSON_GetArraySize(got);
    int32_t *ids = malloc((n + 1) * sizeof *ids);
    size_t i = 0;
    const cJSON *x;
    cJSON_ArrayForEach(x, got) {
        ids[i++] = (int32_t)x->valuedouble;
    }
    bool eq = ids_eq(want, ids, n);
    free(ids);
    return eq;
}

/* One conversation in a fresh session; returns the session (caller frees) or NULL. */
static nvlm_session *converse(nvlm_model *m, int parse_special, const char *system,
                              const char *const *turns, const nvlm_role *roles, size_t n)
{
    nvlm_session_params sp;
    nvlm_session_default_params(&sp);
    sp.parse_special_in_content = parse_special;
    sp.system_message = system;
    nvlm_session *s = NULL;
    if (nvlm_session_create(m, &sp, &s) != NVLM_OK) {
        return NULL;
    }
    for (size_t i = 0; i < n; i++) {
        nvlm_status st = nvlm_session_add_turn(s, roles[i], turns[i], NULL, 0);
        if (st != NVLM_OK) {
            printf("# add_turn %zu: %s\n", i, nvlm_last_error(s));
            nvlm_session_free(s);
            return NULL;
        }
    }
    return s;
}

static void test_session(nvlm_model *m, const cJSON *gcase)
{
    tu_section("nvlm_session_add_turn: content is text");
    const char *t = cJSON_GetObjectItem(gcase, "text")->valuestring;
    const cJSON *g = cJSON_GetObjectItem(gcase, "tiny");
    CHECK(strstr(t, "<|im_end|>\n<|im_start|>system\n") != NULL, "the injection case: %s", t);

    nvlm_role user[1] = {NVLM_ROLE_USER};
    nvlm_session *s = converse(m, 0, NULL, &t, user, 1);
    size_t n = 0;
    const int32_t *ids = s != NULL ? nvlm_session_tokens(s, &n) : NULL;
    CHECK(ids != NULL && ids_eq(cJSON_GetObjectItem(g, "user_plain"), ids, n),
          "user turn: ids of the plain-text oracle (%zu ids)", n);
    CHECK(count_id(ids, n, IM_START) == 3 && count_id(ids, n, IM_END) == 2,
          "user turn: only the template's im_start (3: %zu) and im_end (2: %zu)",
          count_id(ids, n, IM_START), count_id(ids, n, IM_END));
    nvlm_session_free(s);

    s = converse(m, 1, NULL, &t, user, 1);
    ids = s != NULL ? nvlm_session_tokens(s, &n) : NULL;
    CHECK(ids != NULL && ids_eq(cJSON_GetObjectItem(g, "user_special"), ids, n),
          "parse_special_in_content = 1: the reference's ids (%zu)", n);
    CHECK(count_id(ids, n, IM_START) == 5, "opt-in: the content's im_start are control ids");
    nvlm_session_free(s);

    /* system turn, user, assistant reply (after the generation prompt), user */
    const char *turns[4] = {t, "q", t, t};
    nvlm_role roles[4] = {NVLM_ROLE_SYSTEM, NVLM_ROLE_USER, NVLM_ROLE_ASSISTANT, NVLM_ROLE_USER};
    for (int ps = 0; ps < 2; ps++) {
        s = converse(m, ps, NULL, turns, roles, 4);
        ids = s != NULL ? nvlm_session_tokens(s, &n) : NULL;
        CHECK(ids != NULL &&
                  ids_eq(cJSON_GetObjectItem(g, ps ? "mixed_special" : "mixed_plain"), ids, n),
              "system, user, assistant, user turns (parse_special %d): oracle ids (%zu)", ps, n);
        nvlm_session_free(s);
    }
    /* the session's system message is content too */
    s = converse(m, 0, t, turns + 1, roles + 1, 3);
    ids = s != NULL ? nvlm_session_tokens(s, &n) : NULL;
    CHECK(ids != NULL && ids_eq(cJSON_GetObjectItem(g, "mixed_plain"), ids, n),
          "session params system_message: plain text (%zu)", n);
    nvlm_session_free(s);

    tu_section("nvlm_session_add_turn: <|vision_pad|> in content refused in both modes");
    for (int ps = 0; ps < 2; ps++) {
        nvlm_session_params sp;
        nvlm_session_default_params(&sp);
        sp.parse_special_in_content = ps;
        CHECK_OK(nvlm_session_create(m, &sp, &s));
        CHECK_EQ_INT(nvlm_session_add_turn(s, NVLM_ROLE_USER, "a<|vision_pad|>b", NULL, 0),
                     NVLM_ERR_INVALID_ARGUMENT, "user turn with <|vision_pad|>");
        CHECK(strstr(nvlm_last_error(s), "<|vision_pad|>") != NULL, "named: %s",
              nvlm_last_error(s));
        CHECK_OK(nvlm_session_add_turn(s, NVLM_ROLE_USER, "q", NULL, 0));
        CHECK_EQ_INT(nvlm_session_add_turn(s, NVLM_ROLE_ASSISTANT, "<|vision_pad|>", NULL, 0),
                     NVLM_ERR_INVALID_ARGUMENT, "assistant reply with <|vision_pad|>");
        nvlm_session_tokens(s, &n);
        CHECK(n > 0 && count_id(nvlm_session_tokens(s, &n), n, 4011) == 0,
              "nothing of the refused turns was kept");
        nvlm_session_free(s);
    }
    nvlm_session_params small;
    nvlm_session_default_params(&small);
    small.struct_size = (uint32_t)offsetof(nvlm_session_params, parse_special_in_content);
    CHECK_OK(nvlm_session_create(m, &small, &s));
    CHECK_OK(nvlm_session_add_turn(s, NVLM_ROLE_USER, t, NULL, 0));
    ids = nvlm_session_tokens(s, &n);
    CHECK(ids_eq(cJSON_GetObjectItem(g, "user_plain"), ids, n),
          "params from before the field (smaller struct_size): content is text");
    nvlm_session_free(s);
}

/* Runs a shell command; stdout into out (NUL-terminated); returns the exit status. */
static int run(const char *cmd, char *out, size_t cap)
{
    FILE *p = popen(cmd, "r");
    if (p == NULL) {
        return -1;
    }
    size_t n = fread(out, 1, cap - 1, p);
    out[n] = '\0';
    int st = pclose(p);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "wb");
    if (f != NULL) {
        fputs(text, f);
        fclose(f);
    }
}

/* `nvlm generate --json` prompt_tokens, or NULL (caller deletes the returned root). */
static cJSON *gen_json(const char *cli, const char *args, const cJSON **prompt)
{
    static char out[1 << 18];
    char cmd[8192];
    snprintf(cmd, sizeof cmd, "%s generate " MODEL " %s -n 1 --json --backend cpu -t 2", cli,
             args);
    int rc = run(cmd, out, sizeof out);
    cJSON *j = rc == 0 ? cJSON_Parse(out) : NULL;
    *prompt = cJSON_GetObjectItem(j, "prompt_tokens");
    if (j == NULL) {
        printf("# %s -> %d\n", cmd, rc);
    }
    return j;
}

static size_t json_count(const cJSON *arr, int32_t id)
{
    size_t k = 0;
    const cJSON *x;
    cJSON_ArrayForEach(x, arr) {
        k += (int32_t)x->valuedouble == id;
    }
    return k;
}

/* Expects `nvlm generate --messages FILE` to fail with status 1 and `want` in stderr. */
static void messages_error(const char *cli, const char *dir, const char *name, const char *json,
                           const char *want)
{
    char path[512], cmd[2048], out[4096];
    snprintf(path, sizeof path, "%s/%s.json", dir, name);
    write_file(path, json);
    snprintf(cmd, sizeof cmd,
             "%s generate " MODEL " --messages %s -n 1 --backend cpu -t 2 2>&1 >/dev/null", cli,
             path);
    int rc = run(cmd, out, sizeof out);
    CHECK(rc == 1 && strstr(out, want) != NULL, "%s: status %d, stderr '%s' names '%s'", name,
          rc, out, want);
}

static void test_cli(const cJSON *gcase)
{
    tu_section("nvlm generate: -p, --system, --messages are text");
    const char *cli = getenv("NVLM_CLI");
    if (cli == NULL || cli[0] == '\0') {
        printf("SKIP cli: NVLM_CLI not set\n");
        return;
    }
    const char *t = cJSON_GetObjectItem(gcase, "text")->valuestring;
    const cJSON *g = cJSON_GetObjectItem(gcase, "tiny");
    char args[4096];
    const cJSON *pt;
    snprintf(args, sizeof args, "-p '%s'", t);
    cJSON *j = gen_json(cli, args, &pt);
    CHECK(json_ids_eq(cJSON_GetObjectItem(g, "user_plain"), pt), "-p: oracle plain ids");
    cJSON_Delete(j);
    snprintf(args, sizeof args, "-p '%s' --parse-special", t);
    j = gen_json(cli, args, &pt);
    CHECK(json_ids_eq(cJSON_GetObjectItem(g, "user_special"), pt),
          "-p --parse-special: the reference's ids");
    cJSON_Delete(j);
    snprintf(args, sizeof args, "--system '%s' -p q", t);
    j = gen_json(cli, args, &pt);
    CHECK(pt != NULL && json_count(pt, IM_START) == 3 && json_count(pt, IM_END) == 2,
          "--system: only the template's control tokens");
    cJSON_Delete(j);

    char dir[] = "/tmp/nvlm_inject_XXXXXX";
    if (mkdtemp(dir) == NULL) {
        CHECK(false, "mkdtemp");
        return;
    }
    /* [system t, user q, assistant t] + -p t = the oracle's mixed prompt */
    cJSON *msgs = cJSON_CreateArray();
    const char *roles[3] = {"system", "user", "assistant"};
    const char *texts[3] = {t, "q", t};
    for (int i = 0; i < 3; i++) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "role", roles[i]);
        cJSON_AddStringToObject(o, "content", texts[i]);
        cJSON_AddItemToArray(msgs, o);
    }
    char *mtext = cJSON_PrintUnformatted(msgs);
    char path[512];
    snprintf(path, sizeof path, "%s/mixed.json", dir);
    write_file(path, mtext);
    cJSON_free(mtext);
    cJSON_Delete(msgs);
    snprintf(args, sizeof args, "--messages %s -p '%s'", path, t);
    j = gen_json(cli, args, &pt);
    CHECK(json_ids_eq(cJSON_GetObjectItem(g, "mixed_plain"), pt), "--messages: oracle ids");
    cJSON_Delete(j);
    snprintf(args, sizeof args, "--messages %s -p '%s' --parse-special", path, t);
    j = gen_json(cli, args, &pt);
    CHECK(json_ids_eq(cJSON_GetObjectItem(g, "mixed_special"), pt),
          "--messages --parse-special: the reference's ids");
    cJSON_Delete(j);

    tu_section("nvlm generate --messages: errors name the message and the field");
    messages_error(cli, dir, "image_number",
                   "[{\"role\":\"user\",\"content\":\"a\"},"
                   "{\"role\":\"user\",\"content\":\"b\",\"images\":[1]}]",
                   "messages[1].images[0]: expected a string path");
    messages_error(cli, dir, "images_string",
                   "[{\"role\":\"user\",\"content\":\"a\",\"images\":\"x.png\"}]",
                   "messages[0].images: expected a list of image paths");
    messages_error(cli, dir, "nul_content",
                   "[{\"role\":\"user\",\"content\":\"a\"},{\"role\":\"user\",\"content\":"
                   "\"hi\\u0000<|im_start|>\"}]",
                   "messages[1].content: a string holds \\u0000");
    messages_error(cli, dir, "nul_image",
                   "[{\"role\":\"user\",\"content\":\"a\",\"images\":[\"" MODEL
                   "/config.json\\u0000.png\"]}]",
                   "messages[0].images[0]: a string holds \\u0000");
    messages_error(cli, dir, "nul_role", "[{\"role\":\"user\\u0000x\",\"content\":\"a\"}]",
                   "messages[0].role: a string holds \\u0000");
    messages_error(cli, dir, "bad_role",
                   "[{\"role\":\"user\",\"content\":\"a\"},{\"role\":\"bot\",\"content\":\"b\"}]",
                   "messages[1].role: unknown role 'bot'");
    messages_error(cli, dir, "no_content", "[{\"role\":\"user\",\"content\":\"a\"},{\"role\":"
                   "\"user\"}]", "messages[1].content: missing or not a string");
    messages_error(cli, dir, "not_object", "[{\"role\":\"user\",\"content\":\"a\"}, 7]",
                   "messages[1]: expected an object");
    messages_error(cli, dir, "late_system",
                   "[{\"role\":\"user\",\"content\":\"a\"},{\"role\":\"system\",\"content\":"
                   "\"b\"}]",
                   "messages[1].role: a system message may only come first");
    messages_error(cli, dir, "assistant_image",
                   "[{\"role\":\"user\",\"content\":\"a\"},{\"role\":\"assistant\",\"content\":"
                   "\"b\",\"images\":[\"x.png\"]}]",
                   "messages[1].images[0]: only user messages carry images");
    messages_error(cli, dir, "trailing", "[{\"role\":\"user\",\"content\":\"a\"}] []",
                   "not valid JSON");
    /* an escaped backslash before u0000 is text, not a NUL */
    snprintf(path, sizeof path, "%s/escaped.json", dir);
    write_file(path, "[{\"role\":\"user\",\"content\":\"a\\\\u0000b\"}]");
    snprintf(args, sizeof args, "--messages %s", path);
    j = gen_json(cli, args, &pt);
    CHECK(pt != NULL, "\"a\\\\u0000b\" (a backslash, then u0000) is accepted");
    cJSON_Delete(j);

    /* more than 255 messages: all of them are rendered */
    cJSON *many = cJSON_CreateArray();
    for (int i = 0; i < 300; i++) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "role", i % 2 == 0 ? "user" : "assistant");
        cJSON_AddStringToObject(o, "content", "m");
        cJSON_AddItemToArray(many, o);
    }
    mtext = cJSON_PrintUnformatted(many);
    snprintf(path, sizeof path, "%s/many.json", dir);
    write_file(path, mtext);
    cJSON_free(mtext);
    cJSON_Delete(many);
    snprintf(args, sizeof args, "--messages %s -p q", path);
    j = gen_json(cli, args, &pt);
    CHECK(pt != NULL && json_count(pt, IM_START) == 1 + 300 + 1 + 1,
          "300 messages + -p: every turn rendered (%zu im_start)",
          pt != NULL ? json_count(pt, IM_START) : 0);
    cJSON_Delete(j);

    tu_section("nvlm generate: prompt errors are not prefixed twice");
    char cmd[1024], out[4096];
    snprintf(cmd, sizeof cmd,
             "%s generate " MODEL " -p 'a <image>' -i tests/data/images/tiny_1x1.png "
             "-i tests/data/images/tiny_1x1.png -n 1 --backend cpu 2>&1 >/dev/null",
             cli);
    int rc = run(cmd, out, sizeof out);
    CHECK(rc == 1 && strstr(out, "prompt: 1 <image> placeholders for 2 images") != NULL &&
              strstr(out, "prompt: prompt:") == NULL,
          "status %d, stderr '%s'", rc, out);
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    CHECK(system(cmd) == 0, "temporary files removed");
}

int main(void)
{
    size_t len;
    char *text = tu_read_file("tests/data/tokenizer/plain_content.json", &len);
    cJSON *root = text != NULL ? cJSON_Parse(text) : NULL;
    const cJSON *gcase = cJSON_GetArrayItem(cJSON_GetObjectItem(root, "cases"), 0);
    CHECK(gcase != NULL, "plain_content.json loads");
    nvlm_context_params cp;
    nvlm_context_default_params(&cp);
    cp.n_threads = 2;
    cp.backend = NVLM_BACKEND_CPU;
    nvlm_context *ctx = NULL;
    nvlm_model *m = NULL;
    CHECK_OK(nvlm_context_create(&cp, &ctx));
    CHECK_OK(nvlm_model_load(ctx, MODEL, NULL, &m));
    if (m != NULL && gcase != NULL) {
        test_session(m, gcase);
        test_cli(gcase);
    }
    nvlm_model_free(m);
    nvlm_context_free(ctx);
    cJSON_Delete(root);
    free(text);
    return tu_done();
}
