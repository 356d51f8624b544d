/*
 * test_prompt.c - the chatml prompt builder against the reference's golden prompts
 * (tests/data/golden/cases.json: prompt text, prompt_ids, image token spans, with the tiny
 * model's tokenizer), the spec §7.3 vectors with the real NVLM-D tokenizer (21 / 286 / 808
 * tokens), the turn-by-turn helpers a session uses, and the error paths.
 */
#include "testutil.h"
#include "tokenizer.h"

#include <cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { MAXM = 16, MAXIDS = 8192 };

static size_t count_tags(const char *s)
{
    size_t n = 0;
    for (const char *p = strstr(s, "<image>"); p != NULL; p = strstr(p + 1, "<image>")) {
        n++;
    }
    return n;
}

/* Messages for one golden case, as the reference's chat(question, history, pixel_values,
 * num_patches_list) sees them: images go to the user turns holding their <image>, or to the
 * question when no turn has one. */
static size_t case_messages(const cJSON *c, nvlm_chat_message *m, int32_t *tiles)
{
    const cJSON *np = cJSON_GetObjectItem(c, "num_patches_list");
    size_t n_img = (size_t)cJSON_GetArraySize(np);
    for (size_t i = 0; i < n_img; i++) {
        tiles[i] = (int32_t)cJSON_GetArrayItem(np, (int)i)->valuedouble;
    }
    size_t n = 0;
    const cJSON *hist = cJSON_GetObjectItem(c, "history");
    const cJSON *turn;
    cJSON_ArrayForEach(turn, hist) {
        m[n++] = (nvlm_chat_message){NVLM_ROLE_USER, cJSON_GetArrayItem(turn, 0)->valuestring, 0,
                                     NULL};
        m[n++] = (nvlm_chat_message){NVLM_ROLE_ASSISTANT,
                                     cJSON_GetArrayItem(turn, 1)->valuestring, 0, NULL};
    }
    m[n++] = (nvlm_chat_message){NVLM_ROLE_USER, cJSON_GetObjectItem(c, "question")->valuestring,
                                 0, NULL};
    size_t used = 0, tags_total = 0;
    for (size_t i = 0; i < n; i++) {
        tags_total += m[i].role == NVLM_ROLE_USER ? count_tags(m[i].content) : 0;
    }
    for (size_t i = 0; i < n && n_img > 0; i++) {
        if (m[i].role != NVLM_ROLE_USER) {
            continue;
        }
        size_t k = tags_total == 0 ? (i + 1 == n ? n_img : 0) : count_tags(m[i].content);
        m[i].n_images = k;
        m[i].image_tiles = tiles + used;
        used += k;
    }
    return n;
}

static void golden_cases(const nvlm_tokenizer *tiny)
{
    size_t len;
    char *text = tu_read_file("tests/data/golden/cases.json", &len);
    cJSON *root = text ? cJSON_Parse(text) : NULL;
    const cJSON *cases = cJSON_GetObjectItem(root, "cases");
    CHECK_EQ_INT(cJSON_GetArraySize(cases), 5, "golden cases");
    const cJSON *c;
    int32_t *ids = malloc(MAXIDS * sizeof *ids);
    cJSON_ArrayForEach(c, cases) {
        const char *name = cJSON_GetObjectItem(c, "name")->valuestring;
        tu_section(name);
        nvlm_chat_message m[MAXM];
        int32_t tiles[8];
        size_t nm = case_messages(c, m, tiles);
        nvlm_prompt_params pp;
        nvlm_prompt_default_params(&pp);
        pp.system_message = cJSON_GetObjectItem(c, "system_message")->valuestring;

        size_t plen = 0;
        CHECK_EQ_INT(nvlm_prompt_format(tiny, m, nm, &pp, NULL, 0, &plen), NVLM_OK, "size query");
        char *prompt = malloc(plen + 1);
        CHECK_OK(nvlm_prompt_format(tiny, m, nm, &pp, prompt, plen + 1, &plen));
        const char *want = cJSON_GetObjectItem(c, "prompt")->valuestring;
        CHECK(strcmp(prompt, want) == 0, "%s: prompt text equals the reference's (%zu bytes)",
              name, plen);
        free(prompt);

        size_t n = 0, ns = 0;
        nvlm_image_span spans[16];
        nvlm_status st = nvlm_prompt_tokenize(tiny, m, nm, &pp, ids, MAXIDS, &n, spans, 16, &ns);
        CHECK(st == NVLM_OK, "%s: prompt_tokenize: %s", name, nvlm_last_error(tiny));
        const cJSON *wid = cJSON_GetObjectItem(c, "prompt_ids");
        size_t nw = (size_t)cJSON_GetArraySize(wid);
        bool same = n == nw;
        for (size_t i = 0; same && i < n; i++) {
            same = ids[i] == (int32_t)cJSON_GetArrayItem(wid, (int)i)->valuedouble;
        }
        CHECK(same, "%s: prompt_ids equal (%zu ids, want %zu)", name, n, nw);
        const cJSON *wsp = cJSON_GetObjectItem(c, "image_token_spans_start_len");
        size_t nws = (size_t)cJSON_GetArraySize(wsp);
        bool sp_ok = ns == nws;
        for (size_t i = 0; sp_ok && i < ns; i++) {
            const cJSON *s = cJSON_GetArrayItem(wsp, (int)i);
            sp_ok = spans[i].start == (size_t)cJSON_GetArrayItem(s, 0)->valuedouble &&
                    spans[i].length == (size_t)cJSON_GetArrayItem(s, 1)->valuedouble;
        }
        CHECK(sp_ok, "%s: %zu tile spans equal the reference's %zu", name, ns, nws);
        /* image / tile numbering */
        size_t k = 0;
        bool num_ok = true;
        for (size_t im = 0; im < (size_t)cJSON_GetArraySize(cJSON_GetObjectItem(c,
                                                                "num_patches_list"));
             im++) {
            for (int32_t tl = 0; tl < tiles[im]; tl++, k++) {
                num_ok = num_ok && k < ns && spans[k].image == im && spans[k].tile == (uint32_t)tl;
            }
        }
        CHECK(num_ok && k == ns, "%s: spans numbered by image and tile", name);

        /* the session's path: system block, then one turn at a time */
        tok_ids v = {.ctx = tiny->h.ctx};
        tok_spans sv = {.ctx = tiny->h.ctx};
        st = tok_prompt_system(tiny, pp.system_message, false, &v);
        uint32_t img_base = 0;
        for (size_t i = 0; st == NVLM_OK && i < nm; i++) {
            st = tok_prompt_turn(tiny, m[i].role, m[i].content, m[i].image_tiles, m[i].n_images,
                                 i + 1 == nm, false, 0, img_base, &v, &sv);
            img_base += (uint32_t)m[i].n_images;
        }
        CHECK(st == NVLM_OK && v.n == n && memcmp(v.data, ids, n * sizeof *ids) == 0,
              "%s: turn-by-turn ids == whole prompt", name);
        bool tsp = sv.n == ns;
        for (size_t i = 0; tsp && i < ns; i++) {
            tsp = sv.data[i].start == spans[i].start && sv.data[i].image == spans[i].image &&
                  sv.data[i].tile == spans[i].tile;
        }
        CHECK(tsp, "%s: turn-by-turn spans == whole prompt", name);
        tok_ids_free(&v);
        tok_spans_free(&sv);
    }
    free(ids);
    cJSON_Delete(root);
    free(text);
}

static bool ids_eq(const int32_t *got, size_t n, const int32_t *want, size_t nw)
{
    return n == nw && memcmp(got, want, n * sizeof *got) == 0;
}

/* Expands "x"n run-length notation of the spec into ids. */
static size_t build_vec(const int32_t *parts, size_t np, int32_t *out)
{
    size_t n = 0;
    for (size_t i = 0; i < np; i++) {
        if (parts[i] == -256) {
            for (int k = 0; k < 256; k++) {
                out[n++] = 151654;
            }
        } else {
            out[n++] = parts[i];
        }
    }
    return n;
}

static void spec_vectors(const nvlm_tokenizer *nv)
{
    tu_section("spec §7.3 vectors with the real tokenizer");
    int32_t *ids = malloc(MAXIDS * sizeof *ids), *want = malloc(MAXIDS * sizeof *want);
    size_t n = 0, ns = 0;
    nvlm_chat_message m = {NVLM_ROLE_USER, "Hello, who are you?", 0, NULL};
    CHECK_OK(nvlm_prompt_tokenize(nv, &m, 1, NULL, ids, MAXIDS, &n, NULL, 0, &ns));
    const int32_t v21[] = {151644, 8948, 198, 16141, 279, 4755, 13, 151645, 151644, 872, 198,
                           9707, 11, 879, 525, 498, 30, 151645, 151644, 77091, 198};
    CHECK(ids_eq(ids, n, v21, NV_ARRAY_LEN(v21)) && ns == 0, "text-only: 21 tokens (%zu)", n);

    const int32_t head[] = {151644, 8948, 198, 16141, 279, 4755, 13, 151645, 151644, 872, 198,
                            46465, 1784};
    const int32_t tail[] = {522, 1906, 397, 5501, 7512, 279, 2168, 19620, 13, 151645, 151644,
                            77091, 198};
    int32_t p1[64], p3[96];
    size_t k = 0;
    memcpy(p1, head, sizeof head);
    k = NV_ARRAY_LEN(head);
    const int32_t one[] = {21094, 19296, 37824, 29, -256};
    memcpy(p1 + k, one, sizeof one);
    k += NV_ARRAY_LEN(one);
    memcpy(p1 + k, tail, sizeof tail);
    k += NV_ARRAY_LEN(tail);
    size_t nw = build_vec(p1, k, want);
    int32_t t1 = 1;
    m = (nvlm_chat_message){NVLM_ROLE_USER, "<image>\nPlease describe the image shortly.", 1,
                            &t1};
    nvlm_image_span sp[8];
    CHECK_OK(nvlm_prompt_tokenize(nv, &m, 1, NULL, ids, MAXIDS, &n, sp, 8, &ns));
    CHECK(ids_eq(ids, n, want, nw) && nw == 286, "one tile: 286 tokens (%zu)", n);
    CHECK(ns == 1 && sp[0].start == 17 && sp[0].length == 256, "one tile span at 17");

    /* n=3, the placeholder inserted by the builder ("<image>\n" in front) */
    memcpy(p3, head, sizeof head);
    k = NV_ARRAY_LEN(head);
    const int32_t three[] = {21094, 62, 16, 29, -256, 27, 21094, 62, 17, 29, -256, 27, 21094,
                             19296, 37824, 29, -256};
    memcpy(p3 + k, three, sizeof three);
    k += NV_ARRAY_LEN(three);
    memcpy(p3 + k, tail, sizeof tail);
    k += NV_ARRAY_LEN(tail);
    nw = build_vec(p3, k, want);
    int32_t t3 = 3;
    m = (nvlm_chat_message){NVLM_ROLE_USER, "Please describe the image shortly.", 1, &t3};
    CHECK_OK(nvlm_prompt_tokenize(nv, &m, 1, NULL, ids, MAXIDS, &n, sp, 8, &ns));
    CHECK(ids_eq(ids, n, want, nw) && nw == 808, "three tiles: 808 tokens (%zu)", n);
    CHECK(ns == 3 && sp[1].start == sp[0].start + 256 + 5 && sp[2].tile == 2, "three spans");
    free(ids);
    free(want);
}

/* ids of a JSON array equal got[0..n)? */
static bool json_ids_eq(const cJSON *want, const int32_t *got, size_t n)
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

static size_t count_id(const int32_t *ids, size_t n, int32_t id)
{
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        k += ids[i] == id;
    }
    return k;
}

/* Message content is text: tests/data/tokenizer/plain_content.json (tests/oracle/
 * gen_plain_content.py, Hugging Face `tokenizers` with added_tokens removed) for every added
 * token of both tokenizers, plain by default and parsed with parse_special_in_content. */
static void plain_content(const nvlm_tokenizer *tok, const char *name)
{
    char sec[96];
    snprintf(sec, sizeof sec, "message content is plain text (%s tokenizer)", name);
    tu_section(sec);
    size_t len;
    char *text = tu_read_file("tests/data/tokenizer/plain_content.json", &len);
    cJSON *root = text ? cJSON_Parse(text) : NULL;
    const cJSON *cases = cJSON_GetObjectItem(root, "cases");
    CHECK(cJSON_GetArraySize(cases) >= 40, "plain-content goldens loaded");
    int32_t *ids = malloc(MAXIDS * sizeof *ids);
    int32_t im_start = nvlm_tokenizer_token_id(tok, "<|im_start|>");
    int32_t im_end = nvlm_tokenizer_token_id(tok, "<|im_end|>");
    size_t n_cases = 0, plain_ok = 0, prompt_ok = 0, special_ok = 0, turn_ok = 0, pad_ok = 0;
    size_t n_prompt = 0, n_pad = 0, n_differ = 0, format_ok = 0, ctl_ok = 0;
    const cJSON *c;
    cJSON_ArrayForEach(c, cases) {
        const char *t = cJSON_GetObjectItem(c, "text")->valuestring;
        const cJSON *g = cJSON_GetObjectItem(c, name);
        n_cases++;
        /* the text alone, all of it plain */
        tok_ids v = {.ctx = tok->h.ctx};
        size_t whole[2] = {0, strlen(t)};
        nvlm_status st = tok_encode_plain(tok, t, strlen(t), 0, whole, 1, &v);
        plain_ok += st == NVLM_OK && json_ids_eq(cJSON_GetObjectItem(g, "plain"), v.data, v.n);
        if (!(st == NVLM_OK && json_ids_eq(cJSON_GetObjectItem(g, "plain"), v.data, v.n))) {
            printf("# plain ids differ for %s\n", t);
        }
        tok_ids_free(&v);

        nvlm_prompt_params pp;
        nvlm_prompt_default_params(&pp);
        nvlm_prompt_params pq = pp;
        pq.parse_special_in_content = 1;
        nvlm_chat_message user = {NVLM_ROLE_USER, t, 0, NULL};
        nvlm_chat_message mixed[4] = {{NVLM_ROLE_SYSTEM, t, 0, NULL},
                                      {NVLM_ROLE_USER, "q", 0, NULL},
                                      {NVLM_ROLE_ASSISTANT, t, 0, NULL},
                                      {NVLM_ROLE_USER, t, 0, NULL}};
        size_t n = 0;
        if (cJSON_GetObjectItem(g, "user_plain") == NULL) {
            /* "<|vision_pad|>" in content is refused in both modes */
            n_pad++;
            nvlm_status a = nvlm_prompt_tokenize(tok, &user, 1, &pp, ids, MAXIDS, &n, NULL, 0,
                                                 NULL);
            bool msg = strstr(nvlm_last_error(tok), "<|vision_pad|>") != NULL;
            nvlm_status b = nvlm_prompt_tokenize(tok, &user, 1, &pq, ids, MAXIDS, &n, NULL, 0,
                                                 NULL);
            pad_ok += a == NVLM_ERR_INVALID_ARGUMENT && b == NVLM_ERR_INVALID_ARGUMENT && msg;
            continue;
        }
        n_prompt++;
        st = nvlm_prompt_tokenize(tok, &user, 1, &pp, ids, MAXIDS, &n, NULL, 0, NULL);
        bool u_ok = st == NVLM_OK && json_ids_eq(cJSON_GetObjectItem(g, "user_plain"), ids, n);
        /* the template's own control tokens only: system, user, assistant headers */
        ctl_ok += st == NVLM_OK && count_id(ids, n, im_start) == 3 &&
                  count_id(ids, n, im_end) == 2;
        st = nvlm_prompt_tokenize(tok, mixed, 4, &pp, ids, MAXIDS, &n, NULL, 0, NULL);
        prompt_ok += u_ok && st == NVLM_OK &&
                     json_ids_eq(cJSON_GetObjectItem(g, "mixed_plain"), ids, n);
        if (!(u_ok && st == NVLM_OK)) {
            printf("# prompt ids differ for %s: %s\n", t, nvlm_last_error(tok));
        }
        /* opt-in: today's (the reference's) ids */
        st = nvlm_prompt_tokenize(tok, &user, 1, &pq, ids, MAXIDS, &n, NULL, 0, NULL);
        bool s_ok = st == NVLM_OK &&
                    json_ids_eq(cJSON_GetObjectItem(g, "user_special"), ids, n);
        st = nvlm_prompt_tokenize(tok, mixed, 4, &pq, ids, MAXIDS, &n, NULL, 0, NULL);
        special_ok += s_ok && st == NVLM_OK &&
                      json_ids_eq(cJSON_GetObjectItem(g, "mixed_special"), ids, n);
        n_differ += !cJSON_Compare(cJSON_GetObjectItem(g, "user_plain"),
                                   cJSON_GetObjectItem(g, "user_special"), true);
        /* the rendered text re-tokenized with added tokens parsed = the opt-in ids */
        char *buf = malloc(MAXIDS);
        size_t blen = 0;
        st = nvlm_prompt_format(tok, &user, 1, &pp, buf, MAXIDS, &blen);
        if (st == NVLM_OK && blen < MAXIDS) {
            st = nvlm_tokenize(tok, buf, blen, 0, ids, MAXIDS, &n);
            format_ok += st == NVLM_OK &&
                         json_ids_eq(cJSON_GetObjectItem(g, "user_special"), ids, n);
        }
        free(buf);
        /* turn by turn (the session's pieces) */
        tok_ids tv = {.ctx = tok->h.ctx};
        st = tok_prompt_system(tok, NULL, false, &tv);
        if (st == NVLM_OK) {
            st = tok_prompt_turn(tok, NVLM_ROLE_USER, t, NULL, 0, true, false, 0, 0, &tv, NULL);
        }
        turn_ok += st == NVLM_OK &&
                   json_ids_eq(cJSON_GetObjectItem(g, "user_plain"), tv.data, tv.n);
        tok_ids_free(&tv);
    }
    CHECK_EQ_INT(plain_ok, n_cases, "plain encodes equal tokenizers without added tokens");
    CHECK_EQ_INT(prompt_ok, n_prompt, "default prompts: content added tokens are plain text");
    CHECK_EQ_INT(ctl_ok, n_prompt, "default prompts: only the template's im_start/im_end");
    CHECK_EQ_INT(special_ok, n_prompt, "parse_special_in_content = 1: the reference's ids");
    CHECK_EQ_INT(format_ok, n_prompt, "format + nvlm_tokenize = the parse_special ids");
    CHECK_EQ_INT(turn_ok, n_prompt, "tok_prompt_system + tok_prompt_turn = whole prompt");
    CHECK_EQ_INT(pad_ok, n_pad, "<|vision_pad|> in content refused in both modes");
    CHECK(n_pad >= 2 && 2 * n_differ >= n_prompt,
          "the goldens exercise both (%zu pad cases, %zu of %zu differ)", n_pad, n_differ,
          n_prompt);
    free(ids);
    cJSON_Delete(root);
    free(text);
}

static void options_and_errors(const nvlm_tokenizer *nv)
{
    tu_section("system message options, generation prompt");
    char buf[512];
    size_t len = 0;
    nvlm_chat_message m[3] = {{NVLM_ROLE_SYSTEM, "Be brief.", 0, NULL},
                              {NVLM_ROLE_USER, "Hi", 0, NULL},
                              {NVLM_ROLE_ASSISTANT, "", 0, NULL}};
    CHECK_OK(nvlm_prompt_format(nv, m, 2, NULL, buf, sizeof buf, &len));
    CHECK(strcmp(buf, "<|im_start|>system\nBe brief.<|im_end|><|im_start|>user\nHi<|im_end|>"
                      "<|im_start|>assistant\n") == 0, "leading system message: '%s'", buf);
    nvlm_prompt_params pp;
    nvlm_prompt_default_params(&pp);
    pp.no_system_message = 1;
    pp.add_generation_prompt = 0;
    CHECK_OK(nvlm_prompt_format(nv, m + 1, 1, &pp, buf, sizeof buf, &len));
    CHECK(strcmp(buf, "<|im_start|>user\nHi<|im_end|>") == 0, "no system, no generation: '%s'",
          buf);
    pp.no_system_message = 0;
    pp.system_message = "S";
    CHECK_OK(nvlm_prompt_format(nv, m + 1, 2, &pp, buf, sizeof buf, &len));
    CHECK(strcmp(buf, "<|im_start|>system\nS<|im_end|><|im_start|>user\nHi<|im_end|>"
                      "<|im_start|>assistant\n") == 0,
          "custom system; empty message = role alone: '%s'", buf);
    CHECK_OK(nvlm_prompt_format(nv, m + 1, 1, NULL, buf, 5, &len));
    CHECK(strlen(buf) == 4 && len > 5, "format truncates snprintf-style");
    pp.struct_size = 2;
    CHECK_EQ_INT(nvlm_prompt_format(nv, m + 1, 1, &pp, buf, sizeof buf, &len),
                 NVLM_ERR_INVALID_ARGUMENT, "bad struct_size");

    tu_section("prompt errors");
    int32_t tiles[2] = {2, 1};
    nvlm_chat_message bad = {NVLM_ROLE_USER, "<image> and <image> and <image>", 2, tiles};
    CHECK_EQ_INT(nvlm_prompt_format(nv, &bad, 1, NULL, buf, sizeof buf, &len),
                 NVLM_ERR_INVALID_ARGUMENT, "3 placeholders for 2 images");
    CHECK(strstr(nvlm_last_error(nv), "placeholders") != NULL, "message names placeholders");
    bad = (nvlm_chat_message){NVLM_ROLE_ASSISTANT, "x", 1, tiles};
    CHECK_EQ_INT(nvlm_prompt_format(nv, &bad, 1, NULL, buf, sizeof buf, &len),
                 NVLM_ERR_INVALID_ARGUMENT, "images on an assistant turn");
    nvlm_chat_message late[2] = {{NVLM_ROLE_USER, "a", 0, NULL}, {NVLM_ROLE_SYSTEM, "b", 0, NULL}};
    CHECK_EQ_INT(nvlm_prompt_format(nv, late, 2, NULL, buf, sizeof buf, &len),
                 NVLM_ERR_INVALID_ARGUMENT, "system message not first");
    int32_t zero = 0;
    bad = (nvlm_chat_message){NVLM_ROLE_USER, "x", 1, &zero};
    CHECK_EQ_INT(nvlm_prompt_format(nv, &bad, 1, NULL, buf, sizeof buf, &len),
                 NVLM_ERR_INVALID_ARGUMENT, "image with 0 tiles");
    int32_t ids[600];
    size_t n = 0, ns = 0;
    int32_t one = 1;
    bad = (nvlm_chat_message){NVLM_ROLE_USER, "<|vision_pad|> <image>", 1, &one};
    CHECK_EQ_INT(nvlm_prompt_tokenize(nv, &bad, 1, NULL, ids, 600, &n, NULL, 0, &ns),
                 NVLM_ERR_INVALID_ARGUMENT, "text with its own <|vision_pad|>");
    nvlm_chat_message ok = {NVLM_ROLE_USER, "<image>", 1, &one};
    nvlm_image_span sp[1];
    CHECK_EQ_INT(nvlm_prompt_tokenize(nv, &ok, 1, NULL, ids, 10, &n, sp, 1, &ns),
                 NVLM_ERR_BUFFER_TOO_SMALL, "ids buffer too small");
    CHECK(n > 256 && ns == 1, "sizes reported (%zu ids, %zu spans)", n, ns);
    CHECK_EQ_INT(nvlm_prompt_tokenize(nv, &ok, 1, NULL, ids, 600, &n, sp, 0, &ns),
                 NVLM_ERR_BUFFER_TOO_SMALL, "span_cap smaller than the tiles");
    nvlm_chat_message text_only = {NVLM_ROLE_USER, "a <image> b", 0, NULL};
    CHECK_OK(nvlm_prompt_format(nv, &text_only, 1, NULL, buf, sizeof buf, &len));
    CHECK(strstr(buf, "a <image> b") != NULL, "no images: <image> stays plain text");
    CHECK_EQ_INT(nvlm_prompt_format(NULL, &ok, 1, NULL, buf, sizeof buf, &len),
                 NVLM_ERR_INVALID_ARGUMENT, "NULL tokenizer");
}

int main(void)
{
    nvlm_context *ctx;
    CHECK_OK(tu_context_create(&ctx));
    nvlm_tokenizer *tiny = NULL, *nv = NULL, *qwen = NULL;
    CHECK_OK(nvlm_tokenizer_load(ctx, "tests/data/tiny-nvlm-d", &tiny));
    CHECK_OK(nvlm_tokenizer_load(ctx, "tests/data/nvlm-d-72b/tokenizer.json", &nv));
    CHECK_OK(nvlm_tokenizer_load(ctx, "tests/data/qwen-tokenizer/tokenizer.json", &qwen));
    if (tiny != NULL) {
        golden_cases(tiny);
        plain_content(tiny, "tiny");
    }
    if (qwen != NULL) {
        plain_content(qwen, "qwen");
    }
    nvlm_tokenizer *norm = NULL;
    CHECK_OK(nvlm_tokenizer_load(ctx, "tests/data/tokenizer/tiny_normalized_added.json", &norm));
    if (norm != NULL) {
        CHECK(norm->any_normalized_added, "the variant has normalized added tokens");
        plain_content(norm, "tiny_norm");
    }
    nvlm_tokenizer_free(norm);
    if (nv != NULL) {
        spec_vectors(nv);
        options_and_errors(nv);
    }
    nvlm_tokenizer_free(tiny);
    nvlm_tokenizer_free(nv);
    nvlm_tokenizer_free(qwen);
    nvlm_context_free(ctx);
    return tu_done();
}
