/*
 * tokenizer_load.c - builds a read-only byte-level BPE tokenizer from Hugging Face files:
 * tokenizer.json (model BPE, added_tokens, normalizer, pre_tokenizer, decoder) or
 * vocab.json + merges.txt + tokenizer_config.json (added_tokens_decoder; Qwen2's pipeline).
 * Every file is untrusted: ids, counts and lengths are checked; unknown component types are
 * refused with NVLM_ERR_UNSUPPORTED naming them (spec NVLM-D.md §7.3).
 */
#include "tokenizer.h"

#include "json.h"

#include <cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <utf8proc.h>

/* Qwen2's split regex (tokenizer.json pre_tokenizer; Qwen2TokenizerFast) for the vocab.json +
 * merges.txt form. */
static const char QWEN2_PATTERN[] =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}"
    "| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
/* GPT-2's regex, used by a ByteLevel pre-tokenizer with use_regex true. */
static const char GPT2_PATTERN[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

/* Oniguruma's \s (what tokenizers uses) is Unicode White_Space; PCRE2's UCP \s also matches
 * U+180E, so \s and \S are rewritten to this explicit set. */
static const char WHITE_SPACE[] =
    "\\t\\n\\x{0B}\\f\\r \\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}\\x{202F}"
    "\\x{205F}\\x{3000}";

enum { MAX_IDS = 1 << 24, MAX_TOKEN_BYTES = 1 << 16, MAX_PATTERN = 1 << 16 };

/* One vocabulary entry before the tables are built: borrowed string, id. */
typedef struct vocab_item {
    const char *s;
    size_t len;
    int32_t id;
} vocab_item;

typedef struct merge_item {
    const char *a, *b;
    size_t alen, blen;
} merge_item;

/* What both file forms hand to the common builder. */
typedef struct tok_spec {
    vocab_item *vocab;
    size_t n_vocab;
    merge_item *merges;
    size_t n_merges;
    tok_added *added;   /* contents borrowed until build copies them */
    size_t n_added;
    bool ignore_merges;
    const char *eos, *pad, *bos; /* token texts from tokenizer_config.json, may be NULL */
} tok_spec;

/* ---- byte-level table (GPT-2 bytes_to_unicode) --------------------------------------------- */

static void byte_table(uint32_t byte_cp[256], int16_t cp_byte[324])
{
    for (int i = 0; i < 324; i++) {
        cp_byte[i] = -1;
    }
    uint32_t n = 0;
    for (int b = 0; b < 256; b++) {
        bool keep = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
        byte_cp[b] = keep ? (uint32_t)b : 256 + n++;
        cp_byte[byte_cp[b]] = (int16_t)b;
    }
}

static size_t put_utf8(uint32_t cp, char *out)
{
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xc0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3f));
        return 2;
    }
    out[0] = (char)(0xe0 | (cp >> 12));
    out[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
    out[2] = (char)(0x80 | (cp & 0x3f));
    return 3;
}

/* What the ByteLevel decoder makes of one token string: each char mapped back to its byte, or
 * the string's own bytes when any char is not a byte-level char (tokenizers' rule). */
static size_t bytelevel_decode(const int16_t cp_byte[324], const char *s, size_t n, uint8_t *out)
{
    size_t o = 0;
    utf8proc_ssize_t i = 0;
    while ((size_t)i < n) {
        utf8proc_int32_t cp;
        utf8proc_ssize_t k = utf8proc_iterate((const uint8_t *)s + i, (utf8proc_ssize_t)n - i, &cp);
        if (k <= 0 || cp < 0 || cp >= 324 || cp_byte[cp] < 0) {
            memcpy(out, s, n);
            return n;
        }
        out[o++] = (uint8_t)cp_byte[cp];
        i += k;
    }
    return o;
}

/* ---- hash tables ----------------------------------------------------------------------------- */

static size_t table_size(size_t n)
{
    size_t s = 64;
    while (s < n * 2) {
        s <<= 1;
    }
    return s;
}

static int32_t vhash_find(const nvlm_tokenizer *t, const char *s, size_t n)
{
    if (t->vhash == NULL) {
        return -1;
    }
    size_t i = (size_t)tok_hash(s, n) & t->vhash_mask;
    for (;;) {
        uint32_t v = t->vhash[i];
        if (v == 0) {
            return -1;
        }
        int32_t id = (int32_t)(v - 1);
        if (t->str_len[id] == n && memcmp(t->str_arena + t->str_off[id], s, n) == 0) {
            return id;
        }
        i = (i + 1) & t->vhash_mask;
    }
}

int32_t tok_vocab_find(const nvlm_tokenizer *t, const char *s, size_t n)
{
    return vhash_find(t, s, n);
}

static void vhash_insert(nvlm_tokenizer *t, int32_t id)
{
    size_t i = (size_t)tok_hash(t->str_arena + t->str_off[id], t->str_len[id]) & t->vhash_mask;
    while (t->vhash[i] != 0) {
        i = (i + 1) & t->vhash_mask;
    }
    t->vhash[i] = (uint32_t)id + 1;
}

static void mhash_put(nvlm_tokenizer *t, uint64_t key, uint32_t rank, int32_t merged)
{
    size_t i = (size_t)((key * 0x9e3779b97f4a7c15ull) >> 20) & t->mhash_mask;
    while (t->mkey[i] != UINT64_MAX && t->mkey[i] != key) {
        i = (i + 1) & t->mhash_mask;
    }
    /* a repeated pair keeps the later rank, as tokenizers' HashMap collect does */
    t->mkey[i] = key;
    t->mrank[i] = rank;
    t->mnew[i] = merged;
}

/* ---- regex ------------------------------------------------------------------------------ */

/* Rewrites \s and \S (outside and inside classes) to Oniguruma's White_Space set. */
static char *rewrite_pattern(nvlm_context *ctx, const char *p, size_t n)
{
    size_t ws = sizeof WHITE_SPACE - 1;
    size_t cap = n * (ws + 4) + 1;
    char *o = nv_malloc(ctx, cap);
    if (o == NULL) {
        return NULL;
    }
    size_t k = 0;
    bool in_class = false;
    for (size_t i = 0; i < n; i++) {
        char c = p[i];
        if (c == '\\' && i + 1 < n) {
            char d = p[i + 1];
            if (d == 's' || (d == 'S' && !in_class)) {
                if (!in_class) {
                    o[k++] = '[';
                    if (d == 'S') {
                        o[k++] = '^';
                    }
                }
                memcpy(o + k, WHITE_SPACE, ws);
                k += ws;
                if (!in_class) {
                    o[k++] = ']';
                }
            } else {
                o[k++] = c;
                o[k++] = d;
            }
            i++;
            continue;
        }
        if (c == '[' && !in_class) {
            in_class = true;
            o[k++] = c;
            /* a ']' right after '[' or '[^' is a literal */
            if (i + 1 < n && p[i + 1] == '^') {
                o[k++] = p[++i];
            }
            if (i + 1 < n && p[i + 1] == ']') {
                o[k++] = p[++i];
            }
            continue;
        }
        if (c == ']' && in_class) {
            in_class = false;
        }
        o[k++] = c;
    }
    o[k] = '\0';
    return o;
}

static nvlm_status compile_regex(nvlm_context *ctx, const char *pat, size_t n, bool literal,
                                 pcre2_code **out)
{
    if (n > MAX_PATTERN) {
        return nv_error(ctx, NVLM_ERR_LIMIT, "tokenizer: split pattern of %zu bytes", n);
    }
    char *rw = NULL;
    uint32_t opts = PCRE2_UTF | PCRE2_UCP;
    if (literal) {
        opts |= PCRE2_LITERAL;
    } else {
        rw = rewrite_pattern(ctx, pat, n);
        if (rw == NULL) {
            return nv_error(ctx, NVLM_ERR_OUT_OF_MEMORY, "tokenizer: out of memory");
        }
        pat = rw;
        n = strlen(rw);
    }
    int err = 0;
    PCRE2_SIZE off = 0;
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)pat, n, opts, &err, &off, NULL);
    nv_free(ctx, rw);
    if (re == NULL) {
        PCRE2_UCHAR msg[160];
        pcre2_get_error_message(err, msg, sizeof msg);
        return nv_error(ctx, NVLM_ERR_FORMAT, "tokenizer: split regex at offset %zu: %s",
                        (size_t)off, (const char *)msg);
    }
    /* JIT is an optimisation: without it (unsupported platform) pcre2_match is used. */
    (void)pcre2_jit_compile(re, PCRE2_JIT_COMPLETE);
    *out = re;
    return NVLM_OK;
}

/* ---- common builder ----------------------------------------------------------------------- */

static nvlm_status oom(nvlm_context *ctx)
{
    return nv_error(ctx, NVLM_ERR_OUT_OF_MEMORY, "tokenizer: out of memory");
}

static nvlm_status new_tokenizer(nvlm_context *ctx, nvlm_tokenizer **out)
{
    nvlm_tokenizer *t = nv_calloc(ctx, 1, sizeof *t);
    if (t == NULL) {
        return oom(ctx);
    }
    nv_handle_init(&t->h, NV_MAGIC_TOKENIZER, ctx);
    pthread_mutex_init(&t->err_lock, NULL);
    t->id_im_start = t->id_im_end = t->id_endoftext = t->id_vision_pad = -1;
    t->eos = t->pad = t->bos = -1;
    t->bpe_heap_min = 24;
    *out = t;
    return NVLM_OK;
}

static int32_t find_text(const nvlm_tokenizer *t, const char *s)
{
    size_t n = strlen(s);
    for (size_t i = 0; i < t->n_added; i++) {
        if (t->added[i].len == n && memcmp(t->added[i].content, s, n) == 0) {
            return t->added[i].id;
        }
    }
    return vhash_find(t, s, n);
}

static int cmp_added(const void *a, const void *b)
{
    const tok_added *x = a, *y = b;
    return (x->id > y->id) - (x->id < y->id);
}

static nvlm_status build(nvlm_context *ctx, nvlm_tokenizer *t, const tok_spec *sp)
{
    /* ids, arena sizes */
    int64_t max_id = -1;
    size_t bytes = 0;
    for (size_t i = 0; i < sp->n_vocab; i++) {
        const vocab_item *v = &sp->vocab[i];
        if (v->id < 0 || v->id >= MAX_IDS) {
            return nv_error(ctx, NVLM_ERR_FORMAT, "tokenizer: vocabulary id %d out of range",
                            (int)v->id);
        }
        if (v->len == 0 || v->len > MAX_TOKEN_BYTES) {
            return nv_error(ctx, NVLM_ERR_FORMAT, "tokenizer: vocabulary entry %d has length %zu",
                            (int)v->id, v->len);
        }
        max_id = NV_MAX(max_id, (int64_t)v->id);
        bytes += v->len;
    }
    for (size_t i = 0; i < sp->n_added; i++) {
        const tok_added *a = &sp->added[i];
        if (a->id < 0 || a->id >= MAX_IDS || a->len == 0 || a->len > MAX_TOKEN_BYTES) {
            return nv_error(ctx, NVLM_ERR_FORMAT, "tokenizer: added token %zu: bad id or content",
                            i);
        }
        max_id = NV_MAX(max_id, (int64_t)a->id);
        bytes += a->len;
    }
    if (max_id < 0) {
        return nv_error(ctx, NVLM_ERR_FORMAT, "tokenizer: empty vocabulary");
    }
    /* real vocabularies are dense; a sparse one is a corrupt (or hostile) file */
    if ((size_t)max_id > 2 * (sp->n_vocab + sp->n_added) + 65536) {
        return nv_error(ctx, NVLM_ERR_FORMAT, "tokenizer: id %lld with only %zu tokens",
                        (long long)max_id, sp->n_vocab + sp->n_added);
    }
    size_t n_ids = (size_t)max_id + 1;
    t->n_ids = (int32_t)n_ids;
    t->n_base = (int32_t)sp->n_vocab;
    t->str_arena = nv_malloc(ctx, bytes + 1);
    t->dec_arena = nv_malloc(ctx, bytes + 1);
    t->str_off = nv_alloc_array(ctx, n_ids, sizeof *t->str_off);
    t->str_len = nv_alloc_array(ctx, n_ids, sizeof *t->str_len);
    t->dec_off = nv_alloc_array(ctx, n_ids, sizeof *t->dec_off);
    t->dec_len = nv_alloc_array(ctx, n_ids, sizeof *t->dec_len);
    t->id_flags = nv_calloc(ctx, n_ids, 1);
    size_t vsize = table_size(sp->n_vocab);
    t->vhash = nv_calloc(ctx, vsize, sizeof *t->vhash);
    t->vhash_mask = vsize - 1;
    if (t->str_arena == NULL || t->dec_arena == NULL || t->str_off == NULL ||
        t->str_len == NULL || t->dec_off == NULL || t->dec_len == NULL || t->id_flags == NULL ||
        t->vhash == NULL) {
        return oom(ctx);
    }
    for (size_t i = 0; i < n_ids; i++) {
        t->str_len[i] = UINT32_MAX;
        t->dec_len[i] = 0;
        t->str_off[i] = 0;
        t->dec_off[i] = 0;
    }
    uint32_t byte_cp[256];
    int16_t cp_byte[324];
    byte_table(byte_cp, cp_byte);

    size_t so = 0;
    for (size_t i = 0; i < sp->n_vocab; i++) {
        const vocab_item *v = &sp->vocab[i];
        if (t->id_flags[v->id] & TOK_F_PRESENT) {
            return nv_error(ctx, NVLM_ERR_FORMAT, "tokenizer: vocabulary id %d used twice",
                            (int)v->id);
        }
        t->id_flags[v->id] = TOK_F_PRESENT;
        memcpy(t->str_arena + so, v->s, v->len);
        t->str_off[v->id] = (uint32_t)so;
        t->str_len[v->id] = (uint32_t)v->len;
        t->dec_off[v->id] = (uint32_t)so;
        t->dec_len[v->id] =
            (uint32_t)bytelevel_decode(cp_byte, v->s, v->len, t->dec_arena + so);
        so += v->len;
        if (vhash_find(t, v->s, v->len) >= 0) {
            return nv_error(ctx, NVLM_ERR_FORMAT, "tokenizer: vocabulary token %.*s repeated",
                            (int)NV_MIN(v->len, (size_t)64), v->s);
        }
        vhash_insert(t, v->id);
    }

    /* added tokens: owned copies, sorted by id; their text is what decoding gives */
    t->added = nv_calloc(ctx, sp->n_added ? sp->n_added : 1, sizeof *t->added);
    if (t->added == NULL) {
        return oom(ctx);
    }
    for (size_t i = 0; i < sp->n_added; i++) {
        t->added[i] = sp->added[i];
        t->added[i].content = nv_strndup(ctx, sp->added[i].content, sp->added[i].len);
        if (t->added[i].content == NULL) {
            return oom(ctx);
        }
        t->n_added = i + 1;
    }
    qsort(t->added, t->n_added, sizeof *t->added, cmp_added);
    for (size_t i = 0; i < t->n_added; i++) {
        tok_added *a = &t->added[i];
        if (i > 0 && t->added[i - 1].id == a->id) {
            return nv_error(ctx, NVLM_ERR_FORMAT, "tokenizer: added token id %d repeated",
                            (int)a->id);
        }
        memcpy(t->str_arena + so, a->content, a->len);
        t->str_off[a->id] = (uint32_t)so;
        t->str_len[a->id] = (uint32_t)a->len;
        t->dec_off[a->id] = (uint32_t)so;
        t->dec_len[a->id] =
            (uint32_t)bytelevel_decode(cp_byte, a->content, a->len, t->dec_arena + so);
        so += a->len;
        t->id_flags[a->id] |= TOK_F_PRESENT | TOK_F_ADDED | (a->special ? TOK_F_SPECIAL : 0);
        t->added_first[(uint8_t)a->content[0] >> 3] |= (uint8_t)(1u << (a->content[0] & 7));
        if (a->normalized) {
            t->any_normalized_added = true;
        }
    }

    /* byte -> initial symbol */
    for (int b = 0; b < 256; b++) {
        char u[4];
        size_t n = put_utf8(byte_cp[b], u);
        t->byte_id[b] = vhash_find(t, u, n);
    }

    /* merges */
    size_t msize = table_size(sp->n_merges);
    t->mkey = nv_alloc_array(ctx, msize, sizeof *t->mkey);
    t->mrank = nv_alloc_array(ctx, msize, sizeof *t->mrank);
    t->mnew = nv_alloc_array(ctx, msize, sizeof *t->mnew);
    char *cat = nv_malloc(ctx, 2 * MAX_TOKEN_BYTES + 1);
    if (t->mkey == NULL || t->mrank == NULL || t->mnew == NULL || cat == NULL) {
        nv_free(ctx, cat);
        return oom(ctx);
    }
    memset(t->mkey, 0xff, msize * sizeof *t->mkey);
    t->mhash_mask = msize - 1;
    for (size_t i = 0; i < sp->n_merges; i++) {
        const merge_item *m = &sp->merges[i];
        int32_t a = vhash_find(t, m->a, m->alen);
        int32_t b = vhash_find(t, m->b, m->blen);
        int32_t c = -1;
        if (a >= 0 && b >= 0 && m->alen <= MAX_TOKEN_BYTES && m->blen <= MAX_TOKEN_BYTES) {
            memcpy(cat, m->a, m->alen);
            memcpy(cat + m->alen, m->b, m->blen);
            c = vhash_find(t, cat, m->alen + m->blen);
        }
        if (c < 0) {
            nv_free(ctx, cat);
            return nv_error(ctx, NVLM_ERR_FORMAT,
                            "tokenizer: merge %zu (%.*s %.*s) uses a token not in the vocabulary",
                            i, (int)NV_MIN(m->alen, (size_t)32), m->a,
                            (int)NV_MIN(m->blen, (size_t)32), m->b);
        }
        mhash_put(t, ((uint64_t)(uint32_t)a << 32) | (uint32_t)b, (uint32_t)i, c);
    }
    nv_free(ctx, cat);
    t->n_merges = sp->n_merges;
    t->ignore_merges = sp->ignore_merges;

    t->id_im_start = find_text(t, "<|im_start|>");
    t->id_im_end = find_text(t, "<|im_end|>");
    t->id_endoftext = find_text(t, "<|endoftext|>");
    t->id_vision_pad = find_text(t, "<|vision_pad|>");
    t->eos = sp->eos != NULL ? find_text(t, sp->eos) : t->id_im_end;
    t->pad = sp->pad != NULL ? find_text(t, sp->pad) : t->id_endoftext;
    t->bos = sp->bos != NULL ? find_text(t, sp->bos) : -1;

    t->cache = nv_calloc(ctx, TOK_CACHE_SHARDS, sizeof *t->cache);
    if (t->cache == NULL) {
        return oom(ctx);
    }
    for (int i = 0; i < TOK_CACHE_SHARDS; i++) {
        pthread_mutex_init(&t->cache[i].lock, NULL);
    }
    return NVLM_OK;
}

void tok_free(nvlm_tokenizer *t)
{
    if (t == NULL) {
        return;
    }
    nvlm_context *ctx = t->h.ctx;
    for (int i = 0; i < t->n_pre; i++) {
        pcre2_code_free(t->pre[i].re);
    }
    for (size_t i = 0; i < t->n_added; i++) {
        nv_free(ctx, t->added[i].content);
    }
    if (t->cache != NULL) {
        for (int i = 0; i < TOK_CACHE_SHARDS; i++) {
            pthread_mutex_destroy(&t->cache[i].lock);
        }
    }
    void *blocks[] = {t->added, t->str_arena, t->dec_arena, t->str_off, t->str_len, t->dec_off,
                      t->dec_len, t->id_flags, t->vhash, t->mkey, t->mrank, t->mnew, t->cache};
    for (size_t i = 0; i < NV_ARRAY_LEN(blocks); i++) {
        nv_free(ctx, blocks[i]);
    }
    pthread_mutex_destroy(&t->err_lock);
    t->h.magic = NV_MAGIC_DEAD;
    nv_free(ctx, t);
}

/* ---- JSON helpers ------------------------------------------------------------------------- */

static const char *jstr(const cJSON *o, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

/* Boolean field; absent or null -> def. */
static bool jbool(const cJSON *o, const char *key, bool def)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (cJSON_IsBool(v)) {
        return cJSON_IsTrue(v);
    }
    return def;
}

static bool jid(const cJSON *v, int32_t *id)
{
    if (!cJSON_IsNumber(v) || !(v->valuedouble >= 0) || v->valuedouble >= MAX_IDS ||
        v->valuedouble != (double)(int32_t)v->valuedouble) {
        return false;
    }
    *id = (int32_t)v->valuedouble;
    return true;
}

/* Whether a string-valued option is null/absent or "". */
static bool jempty(const cJSON *o, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return v == NULL || cJSON_IsNull(v) || (cJSON_IsString(v) && v->valuestring[0] == '\0');
}

static nvlm_status parse_added_obj(nvlm_context *ctx, const cJSON *a, int32_t id, tok_added *out)
{
    const char *content = jstr(a, "content");
    if (content == NULL || content[0] == '\0') {
        return nv_error(ctx, NVLM_ERR_FORMAT, "tokenizer: added token %d has no content",
                        (int)id);
    }
    out->content = (char *)content;
    out->len = strlen(content);
    out->id = id;
    out->special = jbool(a, "special", false);
    out->lstrip = jbool(a, "lstrip", false);
    out->rstrip = jbool(a, "rstrip", false);
    out->single_word = jbool(a, "single_word", false);
    out->normalized = jbool(a, "normalized", !out->special);
    return NVLM_OK;
}

static nvlm_status parse_normalizer(nvlm_context *ctx, nvlm_tokenizer *t, const cJSON *n,
                                    int depth)
{
    if (n == NULL || cJSON_IsNull(n)) {
        return NVLM_OK;
    }
    const char *type = jstr(n, "type");
    if (type == NULL) {
        return nv_error(ctx, NVLM_ERR_FORMAT, "tokenizer: normalizer without a type");
    }
    if (strcmp(type, "Sequence") == 0 && depth < 4) {
        const cJSON *list = cJSON_GetObjectItemCaseSensitive(n, "normalizers");
        if (!cJSON_IsArray(list)) {
            return nv_error(ctx, NVLM_ERR_FORMAT, "tokenizer: Sequence normalizer without list");
        }
        const cJSON *it;
        cJSON_ArrayForEach(it, list) {
            NVLM_TRY(parse_normalizer(ctx, t, it, depth + 1));
        }
        return NVLM_OK;
    }
    int opts;
    if (strcmp(type, "NFC") == 0) {
        opts = UTF8PROC_STABLE | UTF8PROC_COMPOSE;
    } else if (strcmp(type, "NFD") == 0) {
        opts = UTF8PROC_STABLE | UTF8PROC_DECOMPOSE;
    } else if (strcmp(type, "NFKC") == 0) {
        opts = UTF8PROC_STABLE | UTF8PROC_COMPOSE | UTF8PROC_COMPAT;
    } else if (strcmp(type, "NFKD") == 0) {
        opts = UTF8PROC_STABLE | UTF8PROC_DECOMPOSE | UTF8PROC_COMPAT;
    } else {
        return nv_error(ctx, NVLM_ERR_UNSUPPORTED, "tokenizer: normalizer type '%.64s'", type);
    }
    if (t->n_norm >= TOK_MAX_NORM) {
        return nv_error(ctx, NVLM_ERR_LIMIT, "tokenizer: more than %d normalizers", TOK_MAX_NORM);
    }
    t->norm_opts[t->n_norm++] = opts;
    return NVLM_OK;
}

static nvlm_status add_split(nvlm_context *ctx, nvlm_tokenizer *t, const char *pat, size_t n,
                             bool literal, tok_split_behavior b, bool invert)
{
    if (t->n_pre >= TOK_MAX_PRE) {
        return nv_error(ctx, NVLM_ERR_LIMIT, "tokenizer: more than %d pre-tokenizers",
                        TOK_MAX_PRE);
    }
    tok_pre_step *s = &t->pre[t->n_pre];
    NVLM_TRY(compile_regex(ctx, pat, n, literal, &s->re));
    s->behavior = b;
    s->invert = invert;
    t->n_pre++;
    return NVLM_OK;
}

/* *byte_level is set once a ByteLevel step was seen; it must be the last step. */
static nvlm_status parse_pre(nvlm_context *ctx, nvlm_tokenizer *t, const cJSON *p, int depth,
                             bool *byte_level)
{
    if (p == NULL || cJSON_IsNull(p)) {
        return NVLM_OK;
    }
    const char *type = jstr(p, "type");
    if (type == NULL) {
        return nv_error(ctx, NVLM_ERR_FORMAT, "tokenizer: pre_tokenizer without a type");
    }
    if (*byte_level) {
        return nv_error(ctx, NVLM_ERR_UNSUPPORTED,
                        "tokenizer: pre_tokenizer '%.64s' after ByteLevel", type);
    }
    if (strcmp(type, "Sequence") == 0 && depth < 4) {
        const cJSON *list = cJSON_GetObjectItemCaseSensitive(p, "pretokenizers");
        if (!cJSON_IsArray(list)) {
            return nv_error(ctx, NVLM_ERR_FORMAT, "tokenizer: Sequence pre_tokenizer without list");
        }
        const cJSON *it;
        cJSON_ArrayForEach(it, list) {
            NVLM_TRY(parse_pre(ctx, t, it, depth + 1, byte_level));
        }
        return NVLM_OK;
    }
    if (strcmp(type, "Split") == 0) {
        const cJSON *pat = cJSON_GetObjectItemCaseSensitive(p, "pattern");
        const char *re = jstr(pat, "Regex");
        const char *lit = jstr(pat, "String");
        const char *beh = jstr(p, "behavior");
        if ((re == NULL && lit == NULL) || beh == NULL) {
            return nv_error(ctx, NVLM_ERR_FORMAT, "tokenizer: Split without pattern/behavior");
        }
        static const struct {
            const char *name;
            tok_split_behavior b;
        } behs[] = {{"Isolated", TOK_SPLIT_ISOLATED},
                    {"Removed", TOK_SPLIT_REMOVED},
                    {"MergedWithPrevious", TOK_SPLIT_MERGED_PREV},
                    {"MergedWithNext", TOK_SPLIT_MERGED_NEXT},
                    {"Contiguous", TOK_SPLIT_CONTIGUOUS}};
        for (size_t i = 0; i < NV_ARRAY_LEN(behs); i++) {
            if (strcmp(beh, behs[i].name) == 0) {
                const char *s = re != NULL ? re : lit;
                return add_split(ctx, t, s, strlen(s), re == NULL, behs[i].b,
                                 jbool(p, "invert", false));
            }
        }
        return nv_error(ctx, NVLM_ERR_UNSUPPORTED, "tokenizer: Split behavior '%.64s'", beh);
    }
    if (strcmp(type, "ByteLevel") == 0) {
        if (jbool(p, "add_prefix_space", false)) {
            return nv_error(ctx, NVLM_ERR_UNSUPPORTED,
                            "tokenizer: ByteLevel pre_tokenizer with add_prefix_space");
        }
        if (jbool(p, "use_regex", true)) {
            NVLM_TRY(add_split(ctx, t, GPT2_PATTERN, sizeof GPT2_PATTERN - 1, false,
                               TOK_SPLIT_ISOLATED, false));
        }
        *byte_level = true;
        return NVLM_OK;
    }
    return nv_error(ctx, NVLM_ERR_UNSUPPORTED, "tokenizer: pre_tokenizer type '%.64s'", type);
}

static nvlm_status parse_decoder(nvlm_context *ctx, nvlm_tokenizer *t, const cJSON *d)
{
    if (d == NULL || cJSON_IsNull(d)) {
        t->decoder = TOK_DEC_NONE;
        return NVLM_OK;
    }
    const char *type = jstr(d, "type");
    if (type != NULL && strcmp(type, "Sequence") == 0) {
        const cJSON *list = cJSON_GetObjectItemCaseSensitive(d, "decoders");
        if (cJSON_GetArraySize(list) == 1) {
            return parse_decoder(ctx, t, cJSON_GetArrayItem(list, 0));
        }
    }
    if (type == NULL || strcmp(type, "ByteLevel") != 0) {
        return nv_error(ctx, NVLM_ERR_UNSUPPORTED, "tokenizer: decoder type '%.64s'",
                        type != NULL ? type : "(none)");
    }
    t->decoder = TOK_DEC_BYTELEVEL;
    return NVLM_OK;
}

static nvlm_status parse_model(nvlm_context *ctx, const cJSON *m, tok_spec *sp)
{
    const char *type = jstr(m, "type");
    if (!cJSON_IsObject(m)) {
        return nv_error(ctx, NVLM_ERR_FORMAT, "tokenizer: no model");
    }
    if (type != NULL && strcmp(type, "BPE") != 0) {
        return nv_error(ctx, NVLM_ERR_UNSUPPORTED, "tokenizer: model type '%.64s'", type);
    }
    const cJSON *dropout = cJSON_GetObjectItemCaseSensitive(m, "dropout");
    if (dropout != NULL && !cJSON_IsNull(dropout)) {
        return nv_error(ctx, NVLM_ERR_UNSUPPORTED, "tokenizer: BPE dropout");
    }
    if (!jempty(m, "continuing_subword_prefix") || !jempty(m, "end_of_word_suffix")) {
        return nv_error(ctx, NVLM_ERR_UNSUPPORTED,
                        "tokenizer: BPE continuing_subword_prefix/end_of_word_suffix");
    }
    if (jbool(m, "byte_fallback", false)) {
        return nv_error(ctx, NVLM_ERR_UNSUPPORTED, "tokenizer: BPE byte_fallback");
    }
    sp->ignore_merges = jbool(m, "ignore_merges", false);
    const cJSON *vocab = cJSON_GetObjectItemCaseSensitive(m, "vocab");
    const cJSON *merges = cJSON_GetObjectItemCaseSensitive(m, "merges");
    if (!cJSON_IsObject(vocab) || !cJSON_IsArray(merges)) {
        return nv_error(ctx, NVLM_ERR_FORMAT, "tokenizer: BPE model without vocab/merges");
    }
    return NVLM_OK;
}

static nvlm_status collect_vocab(nvlm_context *ctx, const cJSON *vocab, tok_spec *sp)
{
    size_t n = (size_t)cJSON_GetArraySize(vocab);
    sp->vocab = nv_alloc_array(ctx, n ? n : 1, sizeof *sp->vocab);
    if (sp->vocab == NULL) {
        return oom(ctx);
    }
    const cJSON *it;
    size_t i = 0;
    cJSON_ArrayForEach(it, vocab) {
        if (i >= n || it->string == NULL || !jid(it, &sp->vocab[i].id)) {
            return nv_error(ctx, NVLM_ERR_FORMAT, "tokenizer: bad vocabulary entry %zu", i);
        }
        sp->vocab[i].s = it->string;
        sp->vocab[i].len = strlen(it->string);
        i++;
    }
    sp->n_vocab = i;
    return NVLM_OK;
}

static void spec_free(nvlm_context *ctx, tok_spec *sp)
{
    nv_free(ctx, sp->vocab);
    nv_free(ctx, sp->merges);
    nv_free(ctx, sp->added);
}

/* eos/pad/bos token texts of tokenizer_config.json (strings or {"content": ...}). */
static const char *config_token(const cJSON *cfg, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(cfg, key);
    if (cJSON_IsString(v)) {
        return v->valuestring;
    }
    return jstr(v, "content");
}

static nvlm_status finish(nvlm_context *ctx, nvlm_tokenizer *t, nvlm_status st,
                          nvlm_tokenizer **out)
{
    if (st != NVLM_OK) {
        tok_free(t);
        return st;
    }
    *out = t;
    return NVLM_OK;
}

/* `label` names the text in messages (the path it was read from, or "tokenizer.json"). */
static nvlm_status load_json(nvlm_context *ctx, const char *json, size_t len, const cJSON *cfg,
                             const char *label, nvlm_tokenizer **out)
{
    bool no_mem;
    cJSON *root = nv_json_parse(json, len, NULL, &no_mem);
    if (root == NULL || !cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return nv_json_fail(ctx, no_mem, label, "not a JSON object");
    }
    nvlm_tokenizer *t = NULL;
    tok_spec sp = {0};
    nvlm_status st = new_tokenizer(ctx, &t);
    if (st != NVLM_OK) {
        cJSON_Delete(root);
        return st;
    }
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
    bool byte_level = false;
    st = parse_model(ctx, model, &sp);
    if (st == NVLM_OK) {
        st = parse_normalizer(ctx, t, cJSON_GetObjectItemCaseSensitive(root, "normalizer"), 0);
    }
    if (st == NVLM_OK) {
        st = parse_pre(ctx, t, cJSON_GetObjectItemCaseSensitive(root, "pre_tokenizer"), 0,
                       &byte_level);
    }
    if (st == NVLM_OK && !byte_level) {
        st = nv_error(ctx, NVLM_ERR_UNSUPPORTED,
                      "tokenizer: pre_tokenizer without ByteLevel (not a byte-level BPE)");
    }
    if (st == NVLM_OK) {
        st = parse_decoder(ctx, t, cJSON_GetObjectItemCaseSensitive(root, "decoder"));
    }
    if (st == NVLM_OK) {
        st = collect_vocab(ctx, cJSON_GetObjectItemCaseSensitive(model, "vocab"), &sp);
    }
    if (st == NVLM_OK) {
        const cJSON *merges = cJSON_GetObjectItemCaseSensitive(model, "merges");
        size_t n = (size_t)cJSON_GetArraySize(merges);
        sp.merges = nv_alloc_array(ctx, n ? n : 1, sizeof *sp.merges);
        st = sp.merges == NULL ? oom(ctx) : NVLM_OK;
        const cJSON *it;
        size_t i = 0;
        cJSON_ArrayForEach(it, merges) {
            if (st != NVLM_OK || i >= n) {
                break;
            }
            merge_item *m = &sp.merges[i];
            if (cJSON_IsString(it)) {
                /* "a b": exactly one space (byte-level tokens never contain one) */
                const char *s = it->valuestring;
                const char *sp1 = strchr(s, ' ');
                if (sp1 == NULL || strchr(sp1 + 1, ' ') != NULL) {
                    st = nv_error(ctx, NVLM_ERR_FORMAT, "tokenizer: merge %zu is not \"a b\"", i);
                    break;
                }
                m->a = s;
                m->alen = (size_t)(sp1 - s);
                m->b = sp1 + 1;
                m->blen = strlen(sp1 + 1);
            } else if (cJSON_GetArraySize(it) == 2 &&
                       cJSON_IsString(cJSON_GetArrayItem(it, 0)) &&
                       cJSON_IsString(cJSON_GetArrayItem(it, 1))) {
                m->a = cJSON_GetArrayItem(it, 0)->valuestring;
                m->b = cJSON_GetArrayItem(it, 1)->valuestring;
                m->alen = strlen(m->a);
                m->blen = strlen(m->b);
            } else {
                st = nv_error(ctx, NVLM_ERR_FORMAT, "tokenizer: merge %zu malformed", i);
                break;
            }
            i++;
        }
        sp.n_merges = i;
    }
    if (st == NVLM_OK) {
        const cJSON *added = cJSON_GetObjectItemCaseSensitive(root, "added_tokens");
        size_t n = (size_t)cJSON_GetArraySize(added);
        sp.added = nv_calloc(ctx, n ? n : 1, sizeof *sp.added);
        st = sp.added == NULL ? oom(ctx) : NVLM_OK;
        const cJSON *it;
        cJSON_ArrayForEach(it, added) {
            if (st != NVLM_OK || sp.n_added >= n) {
                break;
            }
            int32_t id;
            if (!jid(cJSON_GetObjectItemCaseSensitive(it, "id"), &id)) {
                st = nv_error(ctx, NVLM_ERR_FORMAT, "tokenizer: added token %zu: bad id",
                              sp.n_added);
                break;
            }
            st = parse_added_obj(ctx, it, id, &sp.added[sp.n_added]);
            sp.n_added++;
        }
    }
    if (st == NVLM_OK) {
        sp.eos = config_token(cfg, "eos_token");
        sp.pad = config_token(cfg, "pad_token");
        sp.bos = config_token(cfg, "bos_token");
        st = build(ctx, t, &sp);
    }
    spec_free(ctx, &sp);
    cJSON_Delete(root);
    return finish(ctx, t, st, out);
}

nvlm_status tok_load_json(nvlm_context *ctx, const char *json, size_t len, nvlm_tokenizer **out)
{
    return load_json(ctx, json, len, NULL, "tokenizer.json", out);
}

static bool is_ws(char c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == '\v' || c == '\f';
}

/* merges.txt: one "a b" per line; a first line "#version..." and blank lines are skipped
 * (Qwen2Tokenizer's reader); rank = index among the kept lines. */
static nvlm_status parse_merges_txt(nvlm_context *ctx, const char *txt, size_t len, tok_spec *sp)
{
    size_t lines = 1;
    for (size_t i = 0; i < len; i++) {
        lines += txt[i] == '\n';
    }
    sp->merges = nv_alloc_array(ctx, lines, sizeof *sp->merges);
    if (sp->merges == NULL) {
        return oom(ctx);
    }
    size_t pos = 0, line = 0;
    while (pos < len) {
        const char *nl = memchr(txt + pos, '\n', len - pos);
        size_t end = nl != NULL ? (size_t)(nl - txt) : len;
        size_t a = pos, e = end;
        while (a < e && is_ws(txt[a])) {
            a++;
        }
        while (e > a && is_ws(txt[e - 1])) {
            e--;
        }
        bool skip = a == e || (line == 0 && e - a >= 9 && memcmp(txt + a, "#version:", 9) == 0);
        if (!skip) {
            size_t s1 = a;
            while (s1 < e && !is_ws(txt[s1])) {
                s1++;
            }
            size_t b = s1;
            while (b < e && is_ws(txt[b])) {
                b++;
            }
            size_t s2 = b;
            while (s2 < e && !is_ws(txt[s2])) {
                s2++;
            }
            if (b == e || s2 != e) {
                return nv_error(ctx, NVLM_ERR_FORMAT, "merges.txt: line %zu is not \"a b\"",
                                line + 1);
            }
            merge_item *m = &sp->merges[sp->n_merges++];
            m->a = txt + a;
            m->alen = s1 - a;
            m->b = txt + b;
            m->blen = s2 - b;
        }
        line++;
        pos = end + 1;
    }
    return NVLM_OK;
}

nvlm_status tok_load_vocab_merges(nvlm_context *ctx, const char *vocab_json, size_t vocab_len,
                                  const char *merges, size_t merges_len, const char *config_json,
                                  size_t config_len, nvlm_tokenizer **out)
{
    bool no_mem;
    cJSON *vocab = nv_json_parse(vocab_json, vocab_len, NULL, &no_mem);
    if (!cJSON_IsObject(vocab)) {
        cJSON_Delete(vocab);
        return nv_json_fail(ctx, no_mem, "vocab.json", "not a JSON object");
    }
    cJSON *cfg = NULL;
    if (config_json != NULL) {
        cfg = nv_json_parse(config_json, config_len, NULL, &no_mem);
        if (!cJSON_IsObject(cfg)) {
            cJSON_Delete(cfg);
            cJSON_Delete(vocab);
            return nv_json_fail(ctx, no_mem, "tokenizer_config.json", "not a JSON object");
        }
    }
    nvlm_tokenizer *t = NULL;
    tok_spec sp = {0};
    nvlm_status st = new_tokenizer(ctx, &t);
    if (st == NVLM_OK) {
        st = collect_vocab(ctx, vocab, &sp);
    }
    if (st == NVLM_OK) {
        st = parse_merges_txt(ctx, merges, merges_len, &sp);
    }
    const cJSON *dec = cJSON_GetObjectItemCaseSensitive(cfg, "added_tokens_decoder");
    if (st == NVLM_OK && dec != NULL) {
        size_t n = (size_t)cJSON_GetArraySize(dec);
        sp.added = nv_calloc(ctx, n ? n : 1, sizeof *sp.added);
        st = sp.added == NULL ? oom(ctx) : NVLM_OK;
        const cJSON *it;
        cJSON_ArrayForEach(it, dec) {
            if (st != NVLM_OK || sp.n_added >= n) {
                break;
            }
            char *end = NULL;
            long id = it->string != NULL ? strtol(it->string, &end, 10) : -1;
            if (end == NULL || *end != '\0' || end == it->string || id < 0 || id >= MAX_IDS) {
                st = nv_error(ctx, NVLM_ERR_FORMAT,
                              "tokenizer_config.json: added_tokens_decoder key is not an id");
                break;
            }
            st = parse_added_obj(ctx, it, (int32_t)id, &sp.added[sp.n_added]);
            sp.n_added++;
        }
    }
    if (st == NVLM_OK) {
        /* Qwen2TokenizerFast: NFC, the split regex (Isolated), ByteLevel without regex */
        t->norm_opts[t->n_norm++] = UTF8PROC_STABLE | UTF8PROC_COMPOSE;
        st = add_split(ctx, t, QWEN2_PATTERN, sizeof QWEN2_PATTERN - 1, false,
                       TOK_SPLIT_ISOLATED, false);
        t->decoder = TOK_DEC_BYTELEVEL;
    }
    if (st == NVLM_OK) {
        sp.eos = config_token(cfg, "eos_token");
        sp.pad = config_token(cfg, "pad_token");
        sp.bos = config_token(cfg, "bos_token");
        st = build(ctx, t, &sp);
    }
    spec_free(ctx, &sp);
    cJSON_Delete(cfg);
    cJSON_Delete(vocab);
    return finish(ctx, t, st, out);
}

static nvlm_status read_opt(nvlm_context *ctx, const char *dir, const char *name, char **data,
                            size_t *size, bool *found)
{
    size_t n = strlen(dir) + strlen(name) + 2;
    char *p = nv_malloc(ctx, n);
    if (p == NULL) {
        return oom(ctx);
    }
    snprintf(p, n, "%s/%s", dir, name);
    /* Present in any form counts as found: nv_read_file then refuses a FIFO or directory. */
    struct stat sb;
    *found = stat(p, &sb) == 0;
    nvlm_status st = NVLM_OK;
    *data = NULL;
    *size = 0;
    if (*found) {
        st = nv_read_file(ctx, ctx, p, (size_t)1 << 30, data, size);
    }
    nv_free(ctx, p);
    return st;
}

nvlm_status tok_load_path(nvlm_context *ctx, const char *path, nvlm_tokenizer **out)
{
    struct stat sb;
    if (stat(path, &sb) != 0) {
        return nv_error(ctx, errno == ENOENT ? NVLM_ERR_NOT_FOUND : NVLM_ERR_IO,
                        "tokenizer: cannot open %s: %s", path, strerror(errno));
    }
    char *json = NULL, *cfg = NULL, *vocab = NULL, *merges = NULL;
    size_t json_n = 0, cfg_n = 0, vocab_n = 0, merges_n = 0;
    bool has_json, has_cfg, has_vocab, has_merges;
    nvlm_status st;
    if (!S_ISDIR(sb.st_mode)) {
        /* `path` names tokenizer.json itself (nv_read_file refuses a FIFO, device, socket) */
        st = nv_read_file(ctx, ctx, path, (size_t)1 << 30, &json, &json_n);
        if (st == NVLM_OK) {
            st = load_json(ctx, json, json_n, NULL, path, out);
        }
        nv_free(ctx, json);
        return st;
    }
    st = read_opt(ctx, path, "tokenizer.json", &json, &json_n, &has_json);
    if (st == NVLM_OK) {
        st = read_opt(ctx, path, "tokenizer_config.json", &cfg, &cfg_n, &has_cfg);
    }
    cJSON *cfg_root = NULL;
    if (st == NVLM_OK && has_cfg) {
        bool no_mem;
        cfg_root = nv_json_parse(cfg, cfg_n, NULL, &no_mem);
        if (!cJSON_IsObject(cfg_root)) {
            st = nv_json_fail(ctx, no_mem, "tokenizer_config.json", "not a JSON object");
        }
    }
    if (st == NVLM_OK && has_json) {
        st = load_json(ctx, json, json_n, cfg_root, "tokenizer.json", out);
    } else if (st == NVLM_OK) {
        st = read_opt(ctx, path, "vocab.json", &vocab, &vocab_n, &has_vocab);
        if (st == NVLM_OK) {
            st = read_opt(ctx, path, "merges.txt", &merges, &merges_n, &has_merges);
        }
        if (st == NVLM_OK && (!has_vocab || !has_merges)) {
            st = nv_error(ctx, NVLM_ERR_NOT_FOUND,
                          "tokenizer: %s has no tokenizer.json nor vocab.json + merges.txt", path);
        }
        if (st == NVLM_OK) {
            st = tok_load_vocab_merges(ctx, vocab, vocab_n, merges, merges_n, cfg, cfg_n, out);
        }
    }
    cJSON_Delete(cfg_root);
    nv_free(ctx, json);
    nv_free(ctx, cfg);
    nv_free(ctx, vocab);
    nv_free(ctx, merges);
    return st;
}
