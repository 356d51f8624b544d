/*
 * prompt.c - NVLM-D's chatml prompt (MPT style, spec NVLM-D.md §7.1-7.2): messages ->
 * "<|im_start|>system\n{sys}<|im_end|>" + per turn "<|im_start|>{role}\n{content}<|im_end|>"
 * (no newline between turns) + "<|im_start|>assistant\n"; each <image> becomes
 * <Image><tile_1>pad*256 ... <tile_global_thumbnail>pad*256</Image> (plain text, tokenized as a
 * whole). Output: the text, or ids plus one span per tile over its <|vision_pad|> run.
 */
#include "tokenizer.h"

#include <stdio.h>
#include <string.h>

static const char DEFAULT_SYSTEM[] = "Answer the questions.";
static const char IMAGE_TAG[] = "<image>";
static const char PAD[] = "<|vision_pad|>";
enum { MAX_TILES = 4096 };

typedef struct sbuf {
    nvlm_context *ctx;
    char *s;
    size_t n, cap;
    bool failed;
    bool parse_special;  /* added tokens in message content are matched (trusted text) */
    bool content_pad;    /* some message content holds "<|vision_pad|>" */
    size_t *plain;       /* pairs of offsets: the message content, tokenized as plain text */
    size_t n_plain, plain_cap;
} sbuf;

static void sb_free(sbuf *b)
{
    nv_free(b->ctx, b->s);
    nv_free(b->ctx, b->plain);
}

static void sb_put(sbuf *b, const char *s, size_t n)
{
    if (b->failed) {
        return;
    }
    size_t need;
    if (!nv_add_size(b->n, n + 1, &need)) {
        b->failed = true;
        return;
    }
    if (need > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < need) {
            if (!nv_mul_size(cap, 2, &cap)) {
                b->failed = true;
                return;
            }
        }
        char *p = nv_realloc(b->ctx, b->s, cap);
        if (p == NULL) {
            b->failed = true;
            return;
        }
        b->s = p;
        b->cap = cap;
    }
    memcpy(b->s + b->n, s, n);
    b->n += n;
    b->s[b->n] = '\0';
}

static void sb_str(sbuf *b, const char *s)
{
    sb_put(b, s, strlen(s));
}

/* Appends message content: its added tokens are plain text unless b->parse_special. */
static void sb_content(sbuf *b, const char *s, size_t n)
{
    size_t start = b->n;
    sb_put(b, s, n);
    if (b->failed || n == 0) {
        return;
    }
    for (size_t i = 0; i + sizeof PAD - 1 <= n && !b->content_pad; i++) {
        b->content_pad = memcmp(s + i, PAD, sizeof PAD - 1) == 0;
    }
    if (b->parse_special) {
        return;
    }
    if (b->n_plain > 0 && b->plain[2 * b->n_plain - 1] == start) {
        b->plain[2 * b->n_plain - 1] = b->n; /* adjacent to the last range: extend it */
        return;
    }
    if (b->n_plain == b->plain_cap) {
        size_t cap = b->plain_cap ? 2 * b->plain_cap : 8;
        size_t bytes;
        size_t *p = nv_mul_size(cap, 2 * sizeof *p, &bytes) ? nv_realloc(b->ctx, b->plain, bytes)
                                                             : NULL;
        if (p == NULL) {
            b->failed = true;
            return;
        }
        b->plain = p;
        b->plain_cap = cap;
    }
    b->plain[2 * b->n_plain] = start;
    b->plain[2 * b->n_plain + 1] = b->n;
    b->n_plain++;
}

static void put_image(sbuf *b, int32_t tiles)
{
    sb_str(b, "<Image>");
    for (int32_t i = 0; i < tiles; i++) {
        char tag[48];
        if (i + 1 < tiles) {
            snprintf(tag, sizeof tag, "<tile_%d>", (int)(i + 1));
        } else {
            snprintf(tag, sizeof tag, "<tile_global_thumbnail>");
        }
        sb_str(b, tag);
        for (int k = 0; k < TOK_IMAGE_TOKENS; k++) {
            sb_put(b, PAD, sizeof PAD - 1);
        }
    }
    sb_str(b, "</Image>");
}

static size_t count_tags(const char *s)
{
    size_t n = 0;
    for (const char *p = strstr(s, IMAGE_TAG); p != NULL; p = strstr(p + 1, IMAGE_TAG)) {
        n++;
    }
    return n;
}

/* Appends one turn's text: role, content with its images expanded, separator. */
static nvlm_status render_turn(const nvlm_tokenizer *t, sbuf *b, nvlm_role role,
                               const char *content, const int32_t *tiles, size_t n_images)
{
    if (role != NVLM_ROLE_USER && role != NVLM_ROLE_ASSISTANT) {
        return tok_fail(t, NVLM_ERR_INVALID_ARGUMENT,
                        "prompt: role %d here (a system message must come first)", (int)role);
    }
    if (content == NULL) {
        return tok_fail(t, NVLM_ERR_INVALID_ARGUMENT, "prompt: NULL content");
    }
    if (n_images > 0) {
        if (role != NVLM_ROLE_USER) {
            return tok_fail(t, NVLM_ERR_INVALID_ARGUMENT, "prompt: images on an assistant turn");
        }
        if (tiles == NULL) {
            return tok_fail(t, NVLM_ERR_INVALID_ARGUMENT, "prompt: NULL image_tiles");
        }
        if (t->id_vision_pad < 0) {
            return tok_fail(t, NVLM_ERR_INVALID_ARGUMENT,
                            "prompt: the tokenizer has no <|vision_pad|> for images");
        }
        for (size_t i = 0; i < n_images; i++) {
            if (tiles[i] < 1 || tiles[i] > MAX_TILES) {
                return tok_fail(t, NVLM_ERR_INVALID_ARGUMENT, "prompt: image %zu has %d tiles",
                                i, (int)tiles[i]);
            }
        }
    }
    sb_str(b, role == NVLM_ROLE_USER ? "<|im_start|>user\n" : "<|im_start|>assistant\n");
    if (content[0] == '\0' && n_images == 0) {
        return NVLM_OK; /* the template puts the role alone for an empty message */
    }
    if (n_images == 0) {
        /* text-only: "<image>" stays plain text, as in the reference without pixel_values */
        sb_content(b, content, strlen(content));
    } else {
        size_t tags = count_tags(content);
        if (tags == 0) {
            for (size_t i = 0; i < n_images; i++) {
                put_image(b, tiles[i]);
                sb_str(b, "\n");
            }
            sb_content(b, content, strlen(content));
        } else if (tags != n_images) {
            return tok_fail(t, NVLM_ERR_INVALID_ARGUMENT,
                            "prompt: %zu <image> placeholders for %zu images", tags, n_images);
        } else {
            const char *p = content;
            for (size_t i = 0; i < n_images; i++) {
                const char *q = strstr(p, IMAGE_TAG);
                sb_content(b, p, (size_t)(q - p));
                put_image(b, tiles[i]);
                p = q + sizeof IMAGE_TAG - 1;
            }
            sb_content(b, p, strlen(p));
        }
    }
    sb_str(b, "<|im_end|>");
    return NVLM_OK;
}

static void render_system(sbuf *b, const char *msg)
{
    const char *text = msg != NULL ? msg : DEFAULT_SYSTEM;
    sb_str(b, "<|im_start|>system\n");
    sb_content(b, text, strlen(text));
    sb_str(b, "<|im_end|>");
}

/* Tokenizes b and appends ids; spans for every <|vision_pad|> run (each must be one tile). */
static nvlm_status tokenize_spans(const nvlm_tokenizer *t, const sbuf *b, size_t n_tiles_want,
                                  size_t pos_base, uint32_t image_base, const int32_t *tiles,
                                  size_t n_tiles_list, tok_ids *ids, tok_spans *spans)
{
    if (b->failed) {
        return tok_fail(t, NVLM_ERR_OUT_OF_MEMORY, "prompt: out of memory");
    }
    if (b->content_pad && t->id_vision_pad >= 0) {
        /* in both modes: content never supplies image positions */
        return tok_fail(t, NVLM_ERR_INVALID_ARGUMENT,
                        "prompt: the text holds <|vision_pad|> tokens of its own");
    }
    size_t first = ids->n;
    NVLM_TRY(tok_encode_plain(t, b->s != NULL ? b->s : "", b->n, 0, b->plain, b->n_plain, ids));
    size_t found = 0, img = 0, tile = 0;
    for (size_t i = first; i < ids->n;) {
        if (ids->data[i] != t->id_vision_pad || t->id_vision_pad < 0) {
            i++;
            continue;
        }
        size_t j = i;
        while (j < ids->n && ids->data[j] == t->id_vision_pad) {
            j++;
        }
        if (j - i != TOK_IMAGE_TOKENS || found >= n_tiles_want) {
            return tok_fail(t, NVLM_ERR_INVALID_ARGUMENT,
                            "prompt: the text holds <|vision_pad|> tokens of its own");
        }
        if (spans != NULL) {
            nvlm_image_span s = {image_base + (uint32_t)img, (uint32_t)tile,
                                 pos_base + i, TOK_IMAGE_TOKENS};
            if (tok_spans_push(spans, &s) != NVLM_OK) {
                return tok_fail(t, NVLM_ERR_OUT_OF_MEMORY, "prompt: out of memory");
            }
        }
        found++;
        if (++tile == (size_t)tiles[img]) {
            tile = 0;
            img++;
        }
        i = j;
    }
    (void)n_tiles_list;
    if (found != n_tiles_want) {
        return tok_fail(t, NVLM_ERR_INVALID_ARGUMENT, "prompt: %zu tile runs for %zu tiles",
                        found, n_tiles_want);
    }
    return NVLM_OK;
}

nvlm_status tok_prompt_system(const nvlm_tokenizer *t, const char *system_message,
                              bool parse_special, tok_ids *ids)
{
    sbuf b = {.ctx = t->h.ctx, .parse_special = parse_special};
    render_system(&b, system_message);
    nvlm_status st = tokenize_spans(t, &b, 0, 0, 0, NULL, 0, ids, NULL);
    sb_free(&b);
    return st;
}

nvlm_status tok_prompt_turn(const nvlm_tokenizer *t, nvlm_role role, const char *content,
                            const int32_t *image_tiles, size_t n_images, bool add_generation_prompt,
                            bool parse_special, size_t pos_base, uint32_t image_base, tok_ids *ids,
                            tok_spans *spans)
{
    sbuf b = {.ctx = t->h.ctx, .parse_special = parse_special};
    nvlm_status st = render_turn(t, &b, role, content, image_tiles, n_images);
    size_t want = 0;
    for (size_t i = 0; st == NVLM_OK && i < n_images; i++) {
        want += (size_t)image_tiles[i];
    }
    if (st == NVLM_OK && add_generation_prompt) {
        sb_str(&b, "<|im_start|>assistant\n");
    }
    if (st == NVLM_OK) {
        st = tokenize_spans(t, &b, want, pos_base, image_base, image_tiles, n_images, ids, spans);
    }
    sb_free(&b);
    return st;
}

void nvlm_prompt_params_init(nvlm_prompt_params *p, size_t size)
{
    if (p == NULL || size < sizeof(uint32_t)) {
        return;
    }
    nvlm_prompt_params d;
    memset(&d, 0, sizeof d);
    d.system_message = NULL;
    d.no_system_message = 0;
    d.add_generation_prompt = 1;
    d.parse_special_in_content = 0;
    memcpy(p, &d, NV_MIN(size, sizeof d));
    p->struct_size = (uint32_t)size;
}

/* The whole prompt text; tiles and n_images list every image's tile count in order (owned). */
static nvlm_status render_all(const nvlm_tokenizer *t, const nvlm_chat_message *msgs,
                              size_t n_msgs, const nvlm_prompt_params *params, sbuf *b,
                              int32_t **tiles, size_t *n_images, size_t *n_tiles)
{
    nvlm_prompt_params p;
    nvlm_prompt_params_init(&p, sizeof p);
    if (!nv_params_copy(&p, sizeof p, params, sizeof(uint32_t))) {
        return tok_fail(t, NVLM_ERR_INVALID_ARGUMENT, "prompt: bad params struct_size");
    }
    if (msgs == NULL && n_msgs > 0) {
        return tok_fail(t, NVLM_ERR_INVALID_ARGUMENT, "prompt: NULL messages");
    }
    b->parse_special = p.parse_special_in_content != 0;
    size_t first = 0;
    const char *sys = p.system_message;
    if (n_msgs > 0 && msgs[0].role == NVLM_ROLE_SYSTEM) {
        if (msgs[0].content == NULL || msgs[0].n_images > 0) {
            return tok_fail(t, NVLM_ERR_INVALID_ARGUMENT, "prompt: bad system message");
        }
        sys = msgs[0].content;
        first = 1;
    }
    if (!p.no_system_message) {
        render_system(b, sys);
    }
    size_t total_images = 0;
    for (size_t i = first; i < n_msgs; i++) {
        if (!nv_add_size(total_images, msgs[i].n_images, &total_images)) {
            return tok_fail(t, NVLM_ERR_INVALID_ARGUMENT, "prompt: image count overflow");
        }
    }
    *tiles = nv_alloc_array(b->ctx, total_images ? total_images : 1, sizeof **tiles);
    if (*tiles == NULL) {
        return tok_fail(t, NVLM_ERR_OUT_OF_MEMORY, "prompt: out of memory");
    }
    size_t k = 0, nt = 0;
    for (size_t i = first; i < n_msgs; i++) {
        const nvlm_chat_message *m = &msgs[i];
        NVLM_TRY(render_turn(t, b, m->role, m->content, m->image_tiles, m->n_images));
        for (size_t j = 0; j < m->n_images; j++) {
            (*tiles)[k++] = m->image_tiles[j];
            nt += (size_t)m->image_tiles[j];
        }
    }
    if (p.add_generation_prompt) {
        sb_str(b, "<|im_start|>assistant\n");
    }
    if (b->failed) {
        return tok_fail(t, NVLM_ERR_OUT_OF_MEMORY, "prompt: out of memory");
    }
    *n_images = k;
    *n_tiles = nt;
    return NVLM_OK;
}

nvlm_status nvlm_prompt_format(const nvlm_tokenizer *tok, const nvlm_chat_message *msgs,
                               size_t n_msgs, const nvlm_prompt_params *params, char *buf,
                               size_t cap, size_t *len)
{
    if (tok == NULL || tok->h.magic != NV_MAGIC_TOKENIZER) {
        return NVLM_ERR_INVALID_ARGUMENT;
    }
    if (len == NULL || (buf == NULL && cap > 0)) {
        return tok_fail(tok, NVLM_ERR_INVALID_ARGUMENT, "prompt_format: NULL argument");
    }
    sbuf b = {.ctx = tok->h.ctx};
    int32_t *tiles = NULL;
    size_t n_images = 0, n_tiles = 0;
    nvlm_status st = render_all(tok, msgs, n_msgs, params, &b, &tiles, &n_images, &n_tiles);
    if (st == NVLM_OK) {
        *len = b.n;
        if (cap > 0) {
            size_t k = NV_MIN(b.n, cap - 1);
            if (k > 0) {
                memcpy(buf, b.s, k);
            }
            buf[k] = '\0';
        }
        tok_ok(tok);
    }
    nv_free(b.ctx, tiles);
    sb_free(&b);
    return st;
}

nvlm_status nvlm_prompt_tokenize(const nvlm_tokenizer *tok, const nvlm_chat_message *msgs,
                                 size_t n_msgs, const nvlm_prompt_params *params, int32_t *ids,
                                 size_t cap, size_t *n_ids, nvlm_image_span *spans,
                                 size_t span_cap, size_t *n_spans)
{
    if (tok == NULL || tok->h.magic != NV_MAGIC_TOKENIZER) {
        return NVLM_ERR_INVALID_ARGUMENT;
    }
    if (n_ids == NULL || (ids == NULL && cap > 0) || (spans == NULL && span_cap > 0)) {
        return tok_fail(tok, NVLM_ERR_INVALID_ARGUMENT, "prompt_tokenize: NULL argument");
    }
    sbuf b = {.ctx = tok->h.ctx};
    int32_t *tiles = NULL;
    size_t n_images = 0, n_tiles = 0;
    tok_ids v = {.ctx = tok->h.ctx};
    tok_spans sv = {.ctx = tok->h.ctx};
    nvlm_status st = render_all(tok, msgs, n_msgs, params, &b, &tiles, &n_images, &n_tiles);
    if (st == NVLM_OK) {
        st = tokenize_spans(tok, &b, n_tiles, 0, 0, tiles, n_images, &v, &sv);
    }
    if (st == NVLM_OK) {
        *n_ids = v.n;
        if (n_spans != NULL) {
            *n_spans = sv.n;
        }
        if (v.n > cap || (spans != NULL && sv.n > span_cap)) {
            st = tok_fail(tok, NVLM_ERR_BUFFER_TOO_SMALL,
                          "prompt_tokenize: %zu ids and %zu spans need room", v.n, sv.n);
        } else {
            if (v.n > 0) {
                memcpy(ids, v.data, v.n * sizeof *ids);
            }
            if (spans != NULL && sv.n > 0) {
                memcpy(spans, sv.data, sv.n * sizeof *spans);
            }
            tok_ok(tok);
        }
    }
    tok_ids_free(&v);
    tok_spans_free(&sv);
    nv_free(b.ctx, tiles);
    sb_free(&b);
    return st;
}
