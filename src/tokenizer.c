/*
 * tokenizer.c - text <-> ids with a loaded byte-level BPE (spec NVLM-D.md §7.3), exact to
 * Hugging Face `tokenizers`: added tokens split out of the raw text (leftmost-longest), each
 * remaining segment NFC-normalized (utf8proc), regex-split (PCRE2, UTF+UCP, JIT), byte-mapped
 * and merged by lowest rank (leftmost first) with a sharded, locked cache. Decoding maps ids to
 * bytes and replaces invalid UTF-8 as Rust's String::from_utf8_lossy does; the stream decoder
 * holds back an incomplete trailing sequence. All scratch memory is per call: a tokenizer is
 * shared read-only between threads.
 */
#include "tokenizer.h"

#include <stdio.h>
#include <string.h>
#include <utf8proc.h>

/* ---- id / span vectors ---------------------------------------------------------------------- */

nvlm_status tok_ids_reserve(tok_ids *v, size_t extra)
{
    size_t need;
    if (!nv_add_size(v->n, extra, &need)) {
        return NVLM_ERR_OUT_OF_MEMORY;
    }
    if (need <= v->cap) {
        return NVLM_OK;
    }
    size_t cap = v->cap ? v->cap : 64;
    while (cap < need) {
        if (!nv_mul_size(cap, 2, &cap)) {
            return NVLM_ERR_OUT_OF_MEMORY;
        }
    }
    size_t bytes;
    if (!nv_mul_size(cap, sizeof *v->data, &bytes)) {
        return NVLM_ERR_OUT_OF_MEMORY;
    }
    int32_t *d = nv_realloc(v->ctx, v->data, bytes);
    if (d == NULL) {
        return NVLM_ERR_OUT_OF_MEMORY;
    }
    v->data = d;
    v->cap = cap;
    return NVLM_OK;
}

nvlm_status tok_ids_push(tok_ids *v, int32_t id)
{
    if (v->n == v->cap) {
        NVLM_TRY(tok_ids_reserve(v, 1));
    }
    v->data[v->n++] = id;
    return NVLM_OK;
}

void tok_ids_free(tok_ids *v)
{
    nv_free(v->ctx, v->data);
    v->data = NULL;
    v->n = v->cap = 0;
}

nvlm_status tok_spans_push(tok_spans *v, const nvlm_image_span *s)
{
    if (v->n == v->cap) {
        size_t cap = v->cap ? v->cap * 2 : 16;
        size_t bytes;
        if (!nv_mul_size(cap, sizeof *v->data, &bytes)) {
            return NVLM_ERR_OUT_OF_MEMORY;
        }
        nvlm_image_span *d = nv_realloc(v->ctx, v->data, bytes);
        if (d == NULL) {
            return NVLM_ERR_OUT_OF_MEMORY;
        }
        v->data = d;
        v->cap = cap;
    }
    v->data[v->n++] = *s;
    return NVLM_OK;
}

void tok_spans_free(tok_spans *v)
{
    nv_free(v->ctx, v->data);
    v->data = NULL;
    v->n = v->cap = 0;
}

/* ---- error text on a shared handle ---------------------------------------------------------- */

nvlm_status tok_fail(const nvlm_tokenizer *t, nvlm_status st, const char *fmt, ...)
{
    char buf[NV_ERR_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    nvlm_tokenizer *m = (nvlm_tokenizer *)t;
    pthread_mutex_lock(&m->err_lock);
    nv_error(m, st, "%s", buf);
    pthread_mutex_unlock(&m->err_lock);
    return st;
}

void tok_ok(const nvlm_tokenizer *t)
{
    nvlm_tokenizer *m = (nvlm_tokenizer *)t;
    pthread_mutex_lock(&m->err_lock);
    nv_clear(m);
    pthread_mutex_unlock(&m->err_lock);
}

static bool valid_tok(const nvlm_tokenizer *t)
{
    return t != NULL && t->h.magic == NV_MAGIC_TOKENIZER;
}

/* ---- UTF-8 ----------------------------------------------------------------------------------- */

/* Length of the valid character at s (> 0), or 0 with *bad = length of the maximal invalid
 * subpart and *incomplete = whether that subpart is a valid prefix cut by the end of input. */
static size_t utf8_next(const uint8_t *s, size_t n, size_t *bad, bool *incomplete)
{
    uint8_t c = s[0];
    if (c < 0x80) {
        return 1;
    }
    size_t need;
    uint8_t lo = 0x80, hi = 0xbf;
    if (c >= 0xc2 && c <= 0xdf) {
        need = 1;
    } else if (c == 0xe0) {
        need = 2;
        lo = 0xa0;
    } else if ((c >= 0xe1 && c <= 0xec) || c == 0xee || c == 0xef) {
        need = 2;
    } else if (c == 0xed) {
        need = 2;
        hi = 0x9f;
    } else if (c == 0xf0) {
        need = 3;
        lo = 0x90;
    } else if (c >= 0xf1 && c <= 0xf3) {
        need = 3;
    } else if (c == 0xf4) {
        need = 3;
        hi = 0x8f;
    } else {
        *bad = 1;
        *incomplete = false;
        return 0;
    }
    for (size_t i = 1; i <= need; i++) {
        if (i >= n) {
            *bad = i;
            *incomplete = true;
            return 0;
        }
        uint8_t l = i == 1 ? lo : 0x80, h = i == 1 ? hi : 0xbf;
        if (s[i] < l || s[i] > h) {
            *bad = i;
            *incomplete = false;
            return 0;
        }
    }
    return need + 1;
}

size_t tok_utf8_check(const uint8_t *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        if (s[i] < 0x80) {
            i++;
            continue;
        }
        size_t bad;
        bool inc;
        size_t k = utf8_next(s + i, n - i, &bad, &inc);
        if (k == 0) {
            return i;
        }
        i += k;
    }
    return n;
}

size_t tok_utf8_lossy(const uint8_t *s, size_t n, uint8_t *out)
{
    size_t i = 0, o = 0;
    while (i < n) {
        size_t bad;
        bool inc;
        size_t k = utf8_next(s + i, n - i, &bad, &inc);
        if (k > 0) {
            if (out != NULL) {
                memcpy(out + o, s + i, k);
            }
            o += k;
            i += k;
        } else {
            if (out != NULL) {
                memcpy(out + o, "\xef\xbf\xbd", 3);
            }
            o += 3;
            i += bad;
        }
    }
    return o;
}

/* Bytes of s[0..n) that can be finalised: all but a trailing incomplete valid prefix. */
static size_t utf8_final(const uint8_t *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        size_t bad;
        bool inc;
        size_t k = utf8_next(s + i, n - i, &bad, &inc);
        if (k > 0) {
            i += k;
        } else if (inc) {
            return i;
        } else {
            i += bad;
        }
    }
    return n;
}

static uint32_t decode_cp(const uint8_t *s, size_t k)
{
    switch (k) {
    case 1: return s[0];
    case 2: return ((uint32_t)(s[0] & 0x1f) << 6) | (s[1] & 0x3f);
    case 3: return ((uint32_t)(s[0] & 0x0f) << 12) | ((uint32_t)(s[1] & 0x3f) << 6) | (s[2] & 0x3f);
    default:
        return ((uint32_t)(s[0] & 0x07) << 18) | ((uint32_t)(s[1] & 0x3f) << 12) |
               ((uint32_t)(s[2] & 0x3f) << 6) | (s[3] & 0x3f);
    }
}

/* Rust char::is_whitespace (Unicode White_Space). */
static bool is_white(uint32_t c)
{
    return (c >= 9 && c <= 13) || c == 0x20 || c == 0x85 || c == 0xa0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200a) || c == 0x2028 || c == 0x2029 || c == 0x202f ||
           c == 0x205f || c == 0x3000;
}

static bool is_word_char(uint32_t c)
{
    if (c < 0x80) {
        return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
               c == '_';
    }
    utf8proc_category_t cat = utf8proc_category((utf8proc_int32_t)c);
    return (cat >= UTF8PROC_CATEGORY_LU && cat <= UTF8PROC_CATEGORY_LO) ||
           (cat >= UTF8PROC_CATEGORY_ND && cat <= UTF8PROC_CATEGORY_NO) ||
           (cat >= UTF8PROC_CATEGORY_MN && cat <= UTF8PROC_CATEGORY_ME);
}

/* Last character before position `end` of valid UTF-8 s (end > 0). */
static uint32_t cp_before(const uint8_t *s, size_t end, size_t *start)
{
    size_t i = end - 1;
    while (i > 0 && (s[i] & 0xc0) == 0x80) {
        i--;
    }
    *start = i;
    return decode_cp(s + i, end - i);
}

static uint32_t cp_at(const uint8_t *s, size_t n, size_t *len)
{
    size_t bad;
    bool inc;
    size_t k = utf8_next(s, n, &bad, &inc);
    *len = k ? k : 1;
    return k ? decode_cp(s, k) : 0xfffd;
}

/* ---- per-call scratch ------------------------------------------------------------------------ */

typedef struct piece {
    size_t s, e;
    bool m;   /* regex match (before the split behavior is applied) */
} piece;

typedef struct heap_ent {
    uint32_t rank;
    int32_t pos;
    int32_t left, right;  /* the pair's ids when pushed; stale when they changed */
    int32_t merged;
} heap_ent;

typedef struct work {
    nvlm_context *ctx;
    uint8_t *norm;
    size_t norm_cap;
    piece *pa, *pb, *pm;
    size_t pa_cap, pb_cap, pm_cap;
    int32_t *sym, *prev, *next;
    uint32_t *rank;
    size_t sym_cap;
    heap_ent *heap;
    size_t heap_cap;
    char *bl;           /* byte-level string of a piece (ignore_merges lookup) */
    size_t bl_cap;
    pcre2_match_data *md;
    pcre2_match_context *mctx;
    pcre2_jit_stack *jit;
    /* plain ranges: pairs of offsets from pl_base where added tokens are not matched */
    const uint8_t *pl_base;
    const size_t *pl;
    size_t n_pl;
    uint8_t *pn;        /* normalized text of a segment cut at plain-range edges */
    size_t pn_cap;
    size_t *pnr;        /* the plain ranges of pn */
    size_t pnr_cap;
} work;

static void work_free(work *w)
{
    void *p[] = {w->norm, w->pa,   w->pb, w->pm, w->sym, w->prev,
                 w->next, w->rank, w->heap, w->bl, w->pn, w->pnr};
    for (size_t i = 0; i < NV_ARRAY_LEN(p); i++) {
        nv_free(w->ctx, p[i]);
    }
    pcre2_match_data_free(w->md);
    pcre2_match_context_free(w->mctx);
    pcre2_jit_stack_free(w->jit);
}

/* Grows *buf (elem bytes each) to at least n elements. */
static bool grow(nvlm_context *ctx, void **buf, size_t *cap, size_t n, size_t elem)
{
    if (n <= *cap) {
        return true;
    }
    size_t c = *cap ? *cap : 64;
    while (c < n) {
        if (!nv_mul_size(c, 2, &c)) {
            return false;
        }
    }
    size_t bytes;
    if (!nv_mul_size(c, elem, &bytes)) {
        return false;
    }
    void *p = nv_realloc(ctx, *buf, bytes);
    if (p == NULL) {
        return false;
    }
    *buf = p;
    *cap = c;
    return true;
}

/* ---- BPE ------------------------------------------------------------------------------------- */

static inline bool merge_find(const nvlm_tokenizer *t, int32_t a, int32_t b, uint32_t *rank,
                              int32_t *merged)
{
    uint64_t key = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
    size_t i = (size_t)((key * 0x9e3779b97f4a7c15ull) >> 20) & t->mhash_mask;
    for (;;) {
        uint64_t k = t->mkey[i];
        if (k == key) {
            *rank = t->mrank[i];
            *merged = t->mnew[i];
            return true;
        }
        if (k == UINT64_MAX) {
            return false;
        }
        i = (i + 1) & t->mhash_mask;
    }
}

static bool heap_less(const heap_ent *a, const heap_ent *b)
{
    return a->rank < b->rank || (a->rank == b->rank && a->pos < b->pos);
}

static void heap_push(heap_ent *h, size_t *n, heap_ent e)
{
    size_t i = (*n)++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!heap_less(&e, &h[p])) {
            break;
        }
        h[i] = h[p];
        i = p;
    }
    h[i] = e;
}

static heap_ent heap_pop(heap_ent *h, size_t *n)
{
    heap_ent top = h[0];
    heap_ent last = h[--(*n)];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= *n) {
            break;
        }
        if (c + 1 < *n && heap_less(&h[c + 1], &h[c])) {
            c++;
        }
        if (!heap_less(&h[c], &last)) {
            break;
        }
        h[i] = h[c];
        i = c;
    }
    h[i] = last;
    return top;
}

/* Leftmost lowest-rank merge until none applies, over a compact array (short pieces). */
static size_t merge_small(const nvlm_tokenizer *t, int32_t *sym, uint32_t *rank, int32_t *mnew,
                          size_t m)
{
    for (size_t i = 0; i + 1 < m; i++) {
        if (!merge_find(t, sym[i], sym[i + 1], &rank[i], &mnew[i])) {
            rank[i] = UINT32_MAX;
        }
    }
    while (m > 1) {
        size_t best = 0;
        uint32_t br = UINT32_MAX;
        for (size_t i = 0; i + 1 < m; i++) {
            if (rank[i] < br) {
                br = rank[i];
                best = i;
            }
        }
        if (br == UINT32_MAX) {
            break;
        }
        sym[best] = mnew[best];
        memmove(sym + best + 1, sym + best + 2, (m - best - 2) * sizeof *sym);
        memmove(rank + best + 1, rank + best + 2, (m - best - 2) * sizeof *rank);
        memmove(mnew + best + 1, mnew + best + 2, (m - best - 2) * sizeof *mnew);
        m--;
        if (best > 0 && !merge_find(t, sym[best - 1], sym[best], &rank[best - 1],
                                    &mnew[best - 1])) {
            rank[best - 1] = UINT32_MAX;
        }
        if (best + 1 < m) {
            if (!merge_find(t, sym[best], sym[best + 1], &rank[best], &mnew[best])) {
                rank[best] = UINT32_MAX;
            }
        } else {
            rank[best] = UINT32_MAX;
        }
    }
    return m;
}

/* The same order with a heap of (rank, position) and a linked list: tokenizers' algorithm,
 * O(n log n) for long pieces. Compacts the result into sym. */
static size_t merge_heap(const nvlm_tokenizer *t, work *w, size_t m)
{
    int32_t *sym = w->sym, *prev = w->prev, *next = w->next;
    heap_ent *h = w->heap;
    size_t hn = 0;
    for (size_t i = 0; i < m; i++) {
        prev[i] = (int32_t)i - 1;
        next[i] = i + 1 < m ? (int32_t)i + 1 : -1;
    }
    for (size_t i = 0; i + 1 < m; i++) {
        heap_ent e = {0, (int32_t)i, sym[i], sym[i + 1], 0};
        if (merge_find(t, sym[i], sym[i + 1], &e.rank, &e.merged)) {
            heap_push(h, &hn, e);
        }
    }
    while (hn > 0) {
        heap_ent e = heap_pop(h, &hn);
        int32_t p = e.pos;
        int32_t r = next[p];
        if (sym[p] < 0 || r < 0 || sym[p] != e.left || sym[r] != e.right) {
            continue;
        }
        sym[p] = e.merged;
        sym[r] = -1;
        next[p] = next[r];
        if (next[r] >= 0) {
            prev[next[r]] = p;
        }
        if (prev[p] >= 0) {
            int32_t q = prev[p];
            heap_ent f = {0, q, sym[q], sym[p], 0};
            if (merge_find(t, sym[q], sym[p], &f.rank, &f.merged)) {
                heap_push(h, &hn, f);
            }
        }
        if (next[p] >= 0) {
            int32_t q = next[p];
            heap_ent f = {0, p, sym[p], sym[q], 0};
            if (merge_find(t, sym[p], sym[q], &f.rank, &f.merged)) {
                heap_push(h, &hn, f);
            }
        }
    }
    size_t k = 0;
    for (size_t i = 0; i < m; i++) {
        if (sym[i] >= 0) {
            sym[k++] = sym[i];
        }
    }
    return k;
}

static bool cache_get(const nvlm_tokenizer *t, uint64_t h, const uint8_t *s, size_t n,
                      tok_ids *out)
{
    tok_cache_shard *sh = &t->cache[h & (TOK_CACHE_SHARDS - 1)];
    size_t idx = (size_t)(h >> 32) & (TOK_CACHE_SLOTS - 1);
    int32_t ids[TOK_CACHE_IDS];
    size_t k = 0;
    bool hit = false;
    pthread_mutex_lock(&sh->lock);
    const tok_cache_slot *c = &sh->slot[idx];
    if (c->len == n && memcmp(c->word, s, n) == 0) {
        k = c->n_ids;
        memcpy(ids, c->ids, k * sizeof *ids);
        hit = true;
    }
    pthread_mutex_unlock(&sh->lock);
    if (!hit || tok_ids_reserve(out, k) != NVLM_OK) {
        return false;
    }
    memcpy(out->data + out->n, ids, k * sizeof *ids);
    out->n += k;
    return true;
}

static void cache_put(const nvlm_tokenizer *t, uint64_t h, const uint8_t *s, size_t n,
                      const int32_t *ids, size_t k)
{
    tok_cache_shard *sh = &t->cache[h & (TOK_CACHE_SHARDS - 1)];
    size_t idx = (size_t)(h >> 32) & (TOK_CACHE_SLOTS - 1);
    pthread_mutex_lock(&sh->lock);
    tok_cache_slot *c = &sh->slot[idx];
    c->len = (uint8_t)n;
    c->n_ids = (uint8_t)k;
    memcpy(c->word, s, n);
    memcpy(c->ids, ids, k * sizeof *ids);
    pthread_mutex_unlock(&sh->lock);
}

/* Symbol arrays for a piece of n bytes (prev/next/rank follow sym; the heap holds 3 per symbol:
 * the initial pairs and two per merge). */
static bool ensure_sym(work *w, size_t n)
{
    if (n <= w->sym_cap) {
        return true;
    }
    size_t cap = w->sym_cap ? w->sym_cap : 64;
    while (cap < n) {
        cap *= 2;
    }
    size_t c0 = w->sym_cap, c1 = w->sym_cap, c2 = w->sym_cap, c3 = w->sym_cap;
    size_t c4 = w->sym_cap * 3;
    if (cap > SIZE_MAX / 64 || !grow(w->ctx, (void **)&w->sym, &c0, cap, sizeof *w->sym) ||
        !grow(w->ctx, (void **)&w->prev, &c1, cap, sizeof *w->prev) ||
        !grow(w->ctx, (void **)&w->next, &c2, cap, sizeof *w->next) ||
        !grow(w->ctx, (void **)&w->rank, &c3, cap, sizeof *w->rank) ||
        !grow(w->ctx, (void **)&w->heap, &c4, cap * 3, sizeof *w->heap)) {
        return false;
    }
    w->sym_cap = NV_MIN(NV_MIN(c0, c1), NV_MIN(c2, c3));
    return true;
}

static nvlm_status oom(const nvlm_tokenizer *t)
{
    return tok_fail(t, NVLM_ERR_OUT_OF_MEMORY, "tokenizer: out of memory");
}

static nvlm_status bpe(const nvlm_tokenizer *t, work *w, const uint8_t *s, size_t n,
                       tok_ids *out)
{
    bool cacheable = t->cache != NULL && n <= TOK_CACHE_WORD;
    uint64_t h = 0;
    if (cacheable) {
        h = tok_hash(s, n);
        if (cache_get(t, h, s, n, out)) {
            return NVLM_OK;
        }
    }
    if (t->ignore_merges) {
        /* the whole piece as one vocabulary token, when it is one */
        size_t cap;
        if (!nv_mul_size(n, 2, &cap) ||
            !grow(w->ctx, (void **)&w->bl, &w->bl_cap, cap + 1, 1)) {
            return oom(t);
        }
        size_t k = 0;
        for (size_t i = 0; i < n; i++) {
            uint32_t cp = s[i];
            if (!((cp >= 33 && cp <= 126) || (cp >= 161 && cp <= 172) || cp >= 174)) {
                cp = 0;
                for (uint32_t b = 0; b < s[i]; b++) {
                    cp += !((b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174);
                }
                cp += 256;
            }
            k += cp < 0x80 ? 1 : 2;
            if (cp < 0x80) {
                w->bl[k - 1] = (char)cp;
            } else {
                w->bl[k - 2] = (char)(0xc0 | (cp >> 6));
                w->bl[k - 1] = (char)(0x80 | (cp & 0x3f));
            }
        }
        int32_t id = tok_vocab_find(t, w->bl, k);
        if (id >= 0) {
            return tok_ids_push(out, id) == NVLM_OK ? NVLM_OK : oom(t);
        }
    }
    if (!ensure_sym(w, n)) {
        return oom(t);
    }
    size_t m = 0;
    for (size_t i = 0; i < n; i++) {
        int32_t id = t->byte_id[s[i]];
        if (id >= 0) {
            w->sym[m++] = id;
        }
    }
    if (m < t->bpe_heap_min) {
        m = merge_small(t, w->sym, w->rank, w->prev, m);
    } else {
        m = merge_heap(t, w, m);
    }
    if (tok_ids_reserve(out, m) != NVLM_OK) {
        return oom(t);
    }
    memcpy(out->data + out->n, w->sym, m * sizeof *w->sym);
    out->n += m;
    if (cacheable && m <= TOK_CACHE_IDS) {
        cache_put(t, h, s, n, w->sym, m);
    }
    return NVLM_OK;
}

/* ---- normalization ----------------------------------------------------------------------- */

/* Characters whose NFC quick-check is Yes with combining class 0: a text made only of them is
 * already in NFC (and NFD/NFKC/NFKD leave ASCII alone). */
static bool nfc_inert(uint32_t c)
{
    return c < 0x300 || (c >= 0x3040 && c < 0x3099) || (c >= 0x309b && c < 0x3100) ||
           (c >= 0x4e00 && c < 0xa000) || (c >= 0xac00 && c < 0xd7a4) ||
           (c >= 0x1f300 && c < 0x1fb00);
}

static bool needs_norm(const nvlm_tokenizer *t, const uint8_t *s, size_t n)
{
    if (t->n_norm == 0) {
        return false;
    }
    bool nfc_only = true;
    for (int i = 0; i < t->n_norm; i++) {
        nfc_only = nfc_only && t->norm_opts[i] == (UTF8PROC_STABLE | UTF8PROC_COMPOSE);
    }
    size_t i = 0;
    while (i < n) {
        if (s[i] < 0x80) {
            i++;
            continue;
        }
        if (!nfc_only) {
            return true;
        }
        size_t k;
        uint32_t c = cp_at(s + i, n - i, &k);
        if (!nfc_inert(c)) {
            return true;
        }
        i += k;
    }
    return false;
}

/* Normalizes s[0..n) into w->norm; *out / *out_n give the result (s itself when unchanged). */
static nvlm_status normalize(const nvlm_tokenizer *t, work *w, const uint8_t *s, size_t n,
                             const uint8_t **out, size_t *out_n)
{
    *out = s;
    *out_n = n;
    if (!needs_norm(t, s, n)) {
        return NVLM_OK;
    }
    for (int step = 0; step < t->n_norm; step++) {
        /* decomposition never needs more than 18 code points per byte... grow on demand */
        size_t cps = n + 16;
        for (;;) {
            size_t bytes;
            if (!nv_mul_size(cps, 4, &bytes) ||
                !grow(w->ctx, (void **)&w->norm, &w->norm_cap, bytes, 1)) {
                return oom(t);
            }
            utf8proc_ssize_t r = utf8proc_decompose_custom(
                *out, (utf8proc_ssize_t)*out_n, (utf8proc_int32_t *)(void *)w->norm,
                (utf8proc_ssize_t)(w->norm_cap / 4), (utf8proc_option_t)t->norm_opts[step], NULL,
                NULL);
            if (r < 0) {
                return tok_fail(t, NVLM_ERR_INTERNAL, "tokenizer: normalization failed: %s",
                                utf8proc_errmsg(r));
            }
            if ((size_t)r <= w->norm_cap / 4) {
                utf8proc_ssize_t b = utf8proc_reencode((utf8proc_int32_t *)(void *)w->norm, r,
                                                       (utf8proc_option_t)t->norm_opts[step]);
                if (b < 0) {
                    return tok_fail(t, NVLM_ERR_INTERNAL, "tokenizer: normalization failed: %s",
                                    utf8proc_errmsg(b));
                }
                *out = w->norm;
                *out_n = (size_t)b;
                break;
            }
            cps = (size_t)r;
        }
        if (step + 1 < t->n_norm) {
            /* the next step reads from a copy: w->norm is its output buffer */
            return tok_fail(t, NVLM_ERR_UNSUPPORTED, "tokenizer: chained normalizers");
        }
    }
    return NVLM_OK;
}

/* ---- added tokens ------------------------------------------------------------------------- */

/* Whether s[0..n) overlaps one of the work's plain ranges (s points into the ranges' text). */
static bool in_plain(const work *w, const uint8_t *s, size_t n)
{
    if (w->n_pl == 0) {
        return false;
    }
    size_t a = (size_t)(s - w->pl_base), b = a + n;
    size_t lo = 0, hi = w->n_pl;
    while (lo < hi) { /* the first range that ends after a */
        size_t mid = lo + (hi - lo) / 2;
        if (w->pl[2 * mid + 1] <= a) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    return lo < w->n_pl && w->pl[2 * lo] < b;
}

/* tokenizers' AddedVocabulary::find_matches: leftmost-longest matches of the added tokens whose
 * `normalized` flag equals `norm_pass` and that lie wholly outside the plain ranges; calls seg()
 * for the text between matches and pushes the ids of matches. */
typedef nvlm_status (*seg_fn)(const nvlm_tokenizer *t, work *w, const uint8_t *s, size_t n,
                              uint32_t flags, tok_ids *out);

static nvlm_status split_added(const nvlm_tokenizer *t, work *w, const uint8_t *s, size_t n,
                               uint32_t flags, bool norm_pass, seg_fn seg, tok_ids *out)
{
    size_t pos = 0, done = 0;
    bool split_special = (flags & NVLM_TOKENIZE_SPLIT_SPECIAL) != 0;
    while (pos < n) {
        uint8_t c = s[pos];
        if (!(t->added_first[c >> 3] & (1u << (c & 7)))) {
            pos++;
            continue;
        }
        const tok_added *best = NULL;
        for (size_t i = 0; i < t->n_added; i++) {
            const tok_added *a = &t->added[i];
            if (a->normalized == norm_pass && (uint8_t)a->content[0] == c && a->len <= n - pos &&
                (best == NULL || a->len > best->len) && memcmp(a->content, s + pos, a->len) == 0 &&
                !in_plain(w, s + pos, a->len)) {
                best = a;
            }
        }
        if (best == NULL) {
            pos++;
            continue;
        }
        size_t start = pos, stop = pos + best->len;
        pos = stop;
        if (split_special && best->special) {
            continue;
        }
        if (best->single_word) {
            size_t k;
            bool start_ok = start == 0 || !is_word_char(cp_before(s, start, &k));
            bool stop_ok = stop == n || !is_word_char(cp_at(s + stop, n - stop, &k));
            if (!start_ok || !stop_ok) {
                continue;
            }
        }
        if (best->lstrip) {
            while (start > done) {
                size_t k;
                uint32_t cp = cp_before(s, start, &k);
                if (!is_white(cp)) {
                    break;
                }
                start = NV_MAX(k, done);
            }
        }
        if (best->rstrip) {
            while (stop < n) {
                size_t k;
                uint32_t cp = cp_at(s + stop, n - stop, &k);
                if (!is_white(cp)) {
                    break;
                }
                stop += k;
            }
        }
        if (start > done) {
            NVLM_TRY(seg(t, w, s + done, start - done, flags, out));
        }
        if (tok_ids_push(out, best->id) != NVLM_OK) {
            return oom(t);
        }
        done = stop;
        pos = NV_MAX(pos, stop);
    }
    if (n > done) {
        NVLM_TRY(seg(t, w, s + done, n - done, flags, out));
    }
    return NVLM_OK;
}

/* ---- pre-tokenization ------------------------------------------------------------------- */

static nvlm_status regex_fail(const nvlm_tokenizer *t, int rc)
{
    PCRE2_UCHAR msg[160];
    pcre2_get_error_message(rc, msg, sizeof msg);
    nvlm_status st = rc == PCRE2_ERROR_JIT_STACKLIMIT || rc == PCRE2_ERROR_MATCHLIMIT ||
                             rc == PCRE2_ERROR_DEPTHLIMIT || rc == PCRE2_ERROR_HEAPLIMIT
                         ? NVLM_ERR_LIMIT
                         : NVLM_ERR_INTERNAL;
    return tok_fail(t, st, "tokenizer: split regex: %s", (const char *)msg);
}

static int run_match(const nvlm_tokenizer *t, work *w, pcre2_code *re, const uint8_t *s,
                     size_t n, size_t pos)
{
    int rc = pcre2_match(re, s, n, pos, PCRE2_NO_UTF_CHECK, w->md, w->mctx);
    if (rc == PCRE2_ERROR_JIT_STACKLIMIT && w->jit == NULL) {
        /* long whitespace runs: retry with a bigger JIT stack for this call */
        if (w->mctx == NULL) {
            w->mctx = pcre2_match_context_create(NULL);
        }
        w->jit = pcre2_jit_stack_create(64 * 1024, 64 * 1024 * 1024, NULL);
        if (w->mctx == NULL || w->jit == NULL) {
            return PCRE2_ERROR_NOMEMORY;
        }
        pcre2_jit_stack_assign(w->mctx, NULL, w->jit);
        rc = pcre2_match(re, s, n, pos, PCRE2_NO_UTF_CHECK, w->md, w->mctx);
    }
    (void)t;
    return rc;
}

/* The next non-empty match of `re` in s[0..n) at or after *pos: sets *ms, *me and *found.
 * Empty matches yield no piece; the search steps over one character past them. */
static nvlm_status next_match(const nvlm_tokenizer *t, work *w, pcre2_code *re, const uint8_t *s,
                              size_t n, size_t pos, size_t *ms, size_t *me, bool *found)
{
    *found = false;
    while (pos < n) {
        int rc = run_match(t, w, re, s, n, pos);
        if (rc == PCRE2_ERROR_NOMATCH) {
            return NVLM_OK;
        }
        if (rc < 0) {
            return regex_fail(t, rc);
        }
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(w->md);
        if (ov[1] > ov[0]) {
            *ms = ov[0];
            *me = ov[1];
            *found = true;
            return NVLM_OK;
        }
        size_t k;
        (void)cp_at(s + ov[0], n - ov[0], &k);
        pos = ov[0] + k;
    }
    return NVLM_OK;
}

/* Splits one piece by a regex step and applies the behavior; appends pieces (absolute
 * offsets) to *dst. */
static nvlm_status split_piece(const nvlm_tokenizer *t, work *w, const tok_pre_step *st,
                               const uint8_t *s, size_t ps, size_t pe, piece **dst, size_t *dn,
                               size_t *dcap)
{
    size_t nm = 0;
    size_t pos = 0, prev = 0, n = pe - ps;
    const uint8_t *sub = s + ps;
    while (pos < n) {
        size_t ms, me;
        bool found;
        NVLM_TRY(next_match(t, w, st->re, sub, n, pos, &ms, &me, &found));
        if (!found) {
            break;
        }
        if (!grow(w->ctx, (void **)&w->pm, &w->pm_cap, nm + 2, sizeof *w->pm)) {
            return oom(t);
        }
        if (ms > prev) {
            w->pm[nm++] = (piece){ps + prev, ps + ms, false};
        }
        w->pm[nm++] = (piece){ps + ms, ps + me, true};
        prev = pos = me;
    }
    if (!grow(w->ctx, (void **)&w->pm, &w->pm_cap, nm + 1, sizeof *w->pm)) {
        return oom(t);
    }
    if (n > prev) {
        w->pm[nm++] = (piece){ps + prev, pe, false};
    }
    piece *m = w->pm;
    if (st->invert) {
        for (size_t i = 0; i < nm; i++) {
            m[i].m = !m[i].m;
        }
    }
    if (!grow(w->ctx, (void **)dst, dcap, *dn + nm, sizeof **dst)) {
        return oom(t);
    }
    piece *d = *dst;
    size_t k = *dn, first = *dn;
    bool prev_match = false;
    switch (st->behavior) {
    case TOK_SPLIT_ISOLATED:
        for (size_t i = 0; i < nm; i++) {
            d[k++] = m[i];
        }
        break;
    case TOK_SPLIT_REMOVED:
        for (size_t i = 0; i < nm; i++) {
            if (!m[i].m) {
                d[k++] = m[i];
            }
        }
        break;
    case TOK_SPLIT_MERGED_PREV:
        for (size_t i = 0; i < nm; i++) {
            if (m[i].m && !prev_match && k > first) {
                d[k - 1].e = m[i].e;
            } else {
                d[k++] = m[i];
            }
            prev_match = m[i].m;
        }
        break;
    case TOK_SPLIT_MERGED_NEXT:
        /* walk backwards, then reverse what was added */
        for (size_t i = nm; i-- > 0;) {
            if (m[i].m && !prev_match && k > first) {
                d[k - 1].s = m[i].s;
            } else {
                d[k++] = m[i];
            }
            prev_match = m[i].m;
        }
        for (size_t a = first, b = k; a + 1 < b; a++, b--) {
            piece tmp = d[a];
            d[a] = d[b - 1];
            d[b - 1] = tmp;
        }
        break;
    case TOK_SPLIT_CONTIGUOUS:
        for (size_t i = 0; i < nm; i++) {
            if (m[i].m == prev_match && k > first) {
                d[k - 1].e = m[i].e;
            } else {
                d[k++] = m[i];
            }
            prev_match = m[i].m;
        }
        break;
    }
    *dn = k;
    return NVLM_OK;
}

/* A normalized segment: regex steps, then byte-level BPE of every piece. */
static nvlm_status encode_pieces(const nvlm_tokenizer *t, work *w, const uint8_t *s, size_t n,
                                 uint32_t flags, tok_ids *out)
{
    (void)flags;
    if (n == 0) {
        return NVLM_OK;
    }
    if (t->n_pre == 1 && t->pre[0].behavior == TOK_SPLIT_ISOLATED && !t->pre[0].invert) {
        /* the common case (Qwen2): every match and every gap is a piece, in order */
        size_t pos = 0, prev = 0;
        while (pos < n) {
            size_t ms, me;
            bool found;
            NVLM_TRY(next_match(t, w, t->pre[0].re, s, n, pos, &ms, &me, &found));
            if (!found) {
                break;
            }
            if (ms > prev) {
                NVLM_TRY(bpe(t, w, s + prev, ms - prev, out));
            }
            NVLM_TRY(bpe(t, w, s + ms, me - ms, out));
            prev = pos = me;
        }
        if (n > prev) {
            NVLM_TRY(bpe(t, w, s + prev, n - prev, out));
        }
        return NVLM_OK;
    }
    size_t na = 0, nb = 0;
    if (!grow(w->ctx, (void **)&w->pa, &w->pa_cap, 1, sizeof *w->pa)) {
        return oom(t);
    }
    w->pa[na++] = (piece){0, n, false};
    for (int i = 0; i < t->n_pre; i++) {
        nb = 0;
        for (size_t j = 0; j < na; j++) {
            NVLM_TRY(split_piece(t, w, &t->pre[i], s, w->pa[j].s, w->pa[j].e, &w->pb, &nb,
                                 &w->pb_cap));
        }
        piece *tp = w->pa;
        size_t tc = w->pa_cap;
        w->pa = w->pb;
        w->pa_cap = w->pb_cap;
        w->pb = tp;
        w->pb_cap = tc;
        na = nb;
    }
    for (size_t j = 0; j < na; j++) {
        if (w->pa[j].e > w->pa[j].s) {
            NVLM_TRY(bpe(t, w, s + w->pa[j].s, w->pa[j].e - w->pa[j].s, out));
        }
    }
    return NVLM_OK;
}

/* The normalized-token pass over a raw segment that overlaps plain ranges: each stretch between
 * range edges is normalized on its own (NFC never joins across them in a chat template: the
 * edges sit next to ASCII), so the ranges carry over to the normalized text. */
static nvlm_status encode_plain_segment(const nvlm_tokenizer *t, work *w, const uint8_t *s,
                                        size_t n, uint32_t flags, tok_ids *out)
{
    size_t cut = (size_t)(s - w->pl_base), b = cut + n;
    size_t nn = 0, nr = 0, r = 0;
    while (cut < b) {
        while (r < w->n_pl && w->pl[2 * r + 1] <= cut) {
            r++;
        }
        bool plain = r < w->n_pl && w->pl[2 * r] <= cut;
        size_t end = r == w->n_pl ? b : NV_MIN(w->pl[2 * r + (plain ? 1 : 0)], b);
        const uint8_t *ns;
        size_t nl, need;
        NVLM_TRY(normalize(t, w, w->pl_base + cut, end - cut, &ns, &nl));
        if (!nv_add_size(nn, nl, &need) || !grow(w->ctx, (void **)&w->pn, &w->pn_cap, need, 1) ||
            !grow(w->ctx, (void **)&w->pnr, &w->pnr_cap, 2 * nr + 2, sizeof *w->pnr)) {
            return oom(t);
        }
        memcpy(w->pn + nn, ns, nl);
        if (plain) {
            w->pnr[2 * nr] = nn;
            w->pnr[2 * nr + 1] = need;
            nr++;
        }
        nn = need;
        cut = end;
    }
    const uint8_t *base = w->pl_base;
    const size_t *pl = w->pl;
    size_t n_pl = w->n_pl;
    w->pl_base = w->pn;
    w->pl = w->pnr;
    w->n_pl = nr;
    nvlm_status st = split_added(t, w, w->pn, nn, flags, true, encode_pieces, out);
    w->pl_base = base;
    w->pl = pl;
    w->n_pl = n_pl;
    return st;
}

/* A raw segment between added tokens: normalize, split normalized added tokens, pieces. */
static nvlm_status encode_segment(const nvlm_tokenizer *t, work *w, const uint8_t *s, size_t n,
                                  uint32_t flags, tok_ids *out)
{
    if (t->any_normalized_added && in_plain(w, s, n)) {
        return encode_plain_segment(t, w, s, n, flags, out);
    }
    const uint8_t *ns;
    size_t nn;
    NVLM_TRY(normalize(t, w, s, n, &ns, &nn));
    if (t->any_normalized_added) {
        return split_added(t, w, ns, nn, flags, true, encode_pieces, out);
    }
    return encode_pieces(t, w, ns, nn, flags, out);
}

nvlm_status tok_encode(const nvlm_tokenizer *t, const char *text, size_t len, uint32_t flags,
                       tok_ids *out)
{
    return tok_encode_plain(t, text, len, flags, NULL, 0, out);
}

nvlm_status tok_encode_plain(const nvlm_tokenizer *t, const char *text, size_t len,
                             uint32_t flags, const size_t *plain, size_t n_plain, tok_ids *out)
{
    const uint8_t *s = (const uint8_t *)text;
    for (size_t i = 0; i < n_plain; i++) {
        if (plain[2 * i] > plain[2 * i + 1] || plain[2 * i + 1] > len ||
            (i > 0 && plain[2 * i] < plain[2 * i - 1])) {
            return tok_fail(t, NVLM_ERR_INTERNAL, "tokenize: plain ranges out of order");
        }
    }
    size_t bad = tok_utf8_check(s, len);
    if (bad < len) {
        return tok_fail(t, NVLM_ERR_INVALID_ARGUMENT,
                        "tokenize: invalid UTF-8 at byte offset %zu", bad);
    }
    work w = {0};
    w.ctx = t->h.ctx;
    w.pl_base = s;
    w.pl = plain;
    w.n_pl = n_plain;
    w.md = pcre2_match_data_create(4, NULL);
    if (w.md == NULL) {
        return oom(t);
    }
    nvlm_status st = split_added(t, &w, s, len, flags, false, encode_segment, out);
    work_free(&w);
    return st;
}

/* ---- decoding ------------------------------------------------------------------------------- */

const uint8_t *tok_piece(const nvlm_tokenizer *t, int32_t id, size_t *len)
{
    if (id < 0 || id >= t->n_ids || !(t->id_flags[id] & TOK_F_PRESENT)) {
        return NULL;
    }
    if (t->decoder == TOK_DEC_NONE) {
        *len = t->str_len[id];
        return (const uint8_t *)t->str_arena + t->str_off[id];
    }
    *len = t->dec_len[id];
    return t->dec_arena + t->dec_off[id];
}

bool tok_is_special(const nvlm_tokenizer *t, int32_t id)
{
    return id >= 0 && id < t->n_ids && (t->id_flags[id] & TOK_F_SPECIAL) != 0;
}

/* Concatenated bytes of the kept ids (no decoder: joined by " "). */
static nvlm_status gather(const nvlm_tokenizer *t, const int32_t *ids, size_t n, uint32_t flags,
                          uint8_t **buf, size_t *len)
{
    size_t total = 0, kept = 0;
    for (size_t i = 0; i < n; i++) {
        size_t k;
        if (tok_piece(t, ids[i], &k) == NULL) {
            return tok_fail(t, NVLM_ERR_INVALID_ARGUMENT, "detokenize: id %d (index %zu) out of "
                            "range", (int)ids[i], i);
        }
        if ((flags & NVLM_DETOKENIZE_SKIP_SPECIAL) && tok_is_special(t, ids[i])) {
            continue;
        }
        total += k + (t->decoder == TOK_DEC_NONE && kept > 0);
        kept++;
    }
    uint8_t *b = nv_malloc(t->h.ctx, total + 1);
    if (b == NULL) {
        return oom(t);
    }
    size_t o = 0;
    kept = 0;
    for (size_t i = 0; i < n; i++) {
        if ((flags & NVLM_DETOKENIZE_SKIP_SPECIAL) && tok_is_special(t, ids[i])) {
            continue;
        }
        size_t k;
        const uint8_t *p = tok_piece(t, ids[i], &k);
        if (t->decoder == TOK_DEC_NONE && kept > 0) {
            b[o++] = ' ';
        }
        memcpy(b + o, p, k);
        o += k;
        kept++;
    }
    *buf = b;
    *len = o;
    return NVLM_OK;
}

/* snprintf-style copy of `n` bytes. */
static void put_text(const uint8_t *s, size_t n, char *buf, size_t cap)
{
    if (cap == 0 || buf == NULL) {
        return;
    }
    size_t k = NV_MIN(n, cap - 1);
    memcpy(buf, s, k);
    buf[k] = '\0';
}

/* ---- public API --------------------------------------------------------------------------- */

nvlm_status nvlm_tokenizer_load(nvlm_context *ctx, const char *path, nvlm_tokenizer **out)
{
    if (out != NULL) {
        *out = NULL;
    }
    if (ctx == NULL || path == NULL || out == NULL) {
        return nv_error(ctx, NVLM_ERR_INVALID_ARGUMENT, "tokenizer_load: NULL argument");
    }
    nv_clear(ctx);
    return tok_load_path(ctx, path, out);
}

void nvlm_tokenizer_free(nvlm_tokenizer *tok)
{
    if (valid_tok(tok)) {
        tok_free(tok);
    }
}

int32_t nvlm_tokenizer_vocab_size(const nvlm_tokenizer *tok)
{
    return valid_tok(tok) ? tok->n_ids : 0;
}

int32_t nvlm_tokenizer_token_id(const nvlm_tokenizer *tok, const char *text)
{
    if (!valid_tok(tok) || text == NULL) {
        return -1;
    }
    size_t n = strlen(text);
    for (size_t i = 0; i < tok->n_added; i++) {
        if (tok->added[i].len == n && memcmp(tok->added[i].content, text, n) == 0) {
            return tok->added[i].id;
        }
    }
    return tok_vocab_find(tok, text, n);
}

nvlm_status nvlm_tokenizer_special_tokens(const nvlm_tokenizer *tok, nvlm_special_tokens *out)
{
    if (!valid_tok(tok) || out == NULL || out->struct_size < sizeof(uint32_t)) {
        return nv_error(valid_tok(tok) ? (void *)tok : NULL, NVLM_ERR_INVALID_ARGUMENT,
                        "special_tokens: NULL argument or struct_size");
    }
    nvlm_special_tokens s = {
        .struct_size = out->struct_size,
        .bos = tok->bos,
        .eos = tok->eos,
        .pad = tok->pad,
        .image_context = tok->id_vision_pad,
        .im_start = tok->id_im_start,
        .im_end = tok->id_im_end,
    };
    memcpy(out, &s, NV_MIN((size_t)out->struct_size, sizeof s));
    return NVLM_OK;
}

nvlm_status nvlm_tokenize(const nvlm_tokenizer *tok, const char *text, size_t len, uint32_t flags,
                          int32_t *ids, size_t cap, size_t *n_ids)
{
    if (!valid_tok(tok)) {
        return NVLM_ERR_INVALID_ARGUMENT;
    }
    if ((text == NULL && len > 0) || n_ids == NULL || (ids == NULL && cap > 0)) {
        return tok_fail(tok, NVLM_ERR_INVALID_ARGUMENT, "tokenize: NULL argument");
    }
    if ((flags & ~(uint32_t)NVLM_TOKENIZE_SPLIT_SPECIAL) != 0) {
        return tok_fail(tok, NVLM_ERR_INVALID_ARGUMENT, "tokenize: unknown flag bits 0x%x",
                        (unsigned)(flags & ~(uint32_t)NVLM_TOKENIZE_SPLIT_SPECIAL));
    }
    tok_ids v = {.ctx = tok->h.ctx};
    nvlm_status st = tok_encode(tok, text != NULL ? text : "", len, flags, &v);
    if (st != NVLM_OK) {
        tok_ids_free(&v);
        return st;
    }
    *n_ids = v.n;
    if (v.n > cap) {
        tok_ids_free(&v);
        return tok_fail(tok, NVLM_ERR_BUFFER_TOO_SMALL, "tokenize: %zu ids need room, %zu given",
                        *n_ids, cap);
    }
    if (v.n > 0) {
        memcpy(ids, v.data, v.n * sizeof *ids);
    }
    tok_ids_free(&v);
    tok_ok(tok);
    return NVLM_OK;
}

nvlm_status nvlm_detokenize(const nvlm_tokenizer *tok, const int32_t *ids, size_t n_ids,
                            uint32_t flags, char *buf, size_t cap, size_t *len)
{
    if (!valid_tok(tok)) {
        return NVLM_ERR_INVALID_ARGUMENT;
    }
    if ((ids == NULL && n_ids > 0) || len == NULL || (buf == NULL && cap > 0)) {
        return tok_fail(tok, NVLM_ERR_INVALID_ARGUMENT, "detokenize: NULL argument");
    }
    if ((flags & ~(uint32_t)NVLM_DETOKENIZE_SKIP_SPECIAL) != 0) {
        return tok_fail(tok, NVLM_ERR_INVALID_ARGUMENT, "detokenize: unknown flag bits 0x%x",
                        (unsigned)(flags & ~(uint32_t)NVLM_DETOKENIZE_SKIP_SPECIAL));
    }
    uint8_t *raw = NULL;
    size_t n = 0;
    NVLM_TRY(gather(tok, ids, n_ids, flags, &raw, &n));
    size_t out_n = tok_utf8_lossy(raw, n, NULL);
    nvlm_status st = NVLM_OK;
    *len = out_n;
    if (out_n == n) {
        put_text(raw, n, buf, cap);
    } else {
        uint8_t *fixed = nv_malloc(tok->h.ctx, out_n + 1);
        if (fixed == NULL) {
            st = oom(tok);
        } else {
            tok_utf8_lossy(raw, n, fixed);
            put_text(fixed, out_n, buf, cap);
            nv_free(tok->h.ctx, fixed);
        }
    }
    nv_free(tok->h.ctx, raw);
    if (st == NVLM_OK) {
        tok_ok(tok);
    }
    return st;
}

nvlm_status nvlm_token_to_piece(const nvlm_tokenizer *tok, int32_t id, char *buf, size_t cap,
                                size_t *len)
{
    if (!valid_tok(tok)) {
        return NVLM_ERR_INVALID_ARGUMENT;
    }
    if (len == NULL || (buf == NULL && cap > 0)) {
        return tok_fail(tok, NVLM_ERR_INVALID_ARGUMENT, "token_to_piece: NULL argument");
    }
    size_t n;
    const uint8_t *p = tok_piece(tok, id, &n);
    if (p == NULL) {
        return tok_fail(tok, NVLM_ERR_INVALID_ARGUMENT, "token_to_piece: id %d out of range",
                        (int)id);
    }
    *len = n;
    if (buf != NULL) {
        memcpy(buf, p, NV_MIN(n, cap));
    }
    tok_ok(tok);
    return NVLM_OK;
}

/* ---- stream decoder ----------------------------------------------------------------------- */

struct nvlm_stream_decoder {
    nv_handle h;
    const nvlm_tokenizer *tok;
    uint32_t flags;
    uint8_t pend[4];     /* an incomplete UTF-8 prefix (at most 3 bytes) */
    size_t n_pend;
    bool any;            /* a token was emitted (the no-decoder join needs " " before next) */
};

nvlm_status nvlm_stream_decoder_create(const nvlm_tokenizer *tok, uint32_t flags,
                                       nvlm_stream_decoder **out)
{
    if (out != NULL) {
        *out = NULL;
    }
    if (!valid_tok(tok)) {
        return NVLM_ERR_INVALID_ARGUMENT;
    }
    if (out == NULL) {
        return tok_fail(tok, NVLM_ERR_INVALID_ARGUMENT, "stream_decoder_create: NULL out");
    }
    if ((flags & ~(uint32_t)NVLM_DETOKENIZE_SKIP_SPECIAL) != 0) {
        return tok_fail(tok, NVLM_ERR_INVALID_ARGUMENT,
                        "stream_decoder_create: unknown flag bits 0x%x",
                        (unsigned)(flags & ~(uint32_t)NVLM_DETOKENIZE_SKIP_SPECIAL));
    }
    nvlm_stream_decoder *sd = nv_calloc(tok->h.ctx, 1, sizeof *sd);
    if (sd == NULL) {
        return oom(tok);
    }
    nv_handle_init(&sd->h, NV_MAGIC_STREAM, tok->h.ctx);
    sd->tok = tok;
    sd->flags = flags;
    *out = sd;
    return NVLM_OK;
}

static bool valid_sd(const nvlm_stream_decoder *sd)
{
    return sd != NULL && sd->h.magic == NV_MAGIC_STREAM;
}

/* Emits lossy(s[0..fin)); keeps s[fin..n) pending. The state changes only on success. */
static nvlm_status sd_emit(nvlm_stream_decoder *sd, const uint8_t *s, size_t n, size_t fin,
                           bool any, char *buf, size_t cap, size_t *len)
{
    size_t out_n = tok_utf8_lossy(s, fin, NULL);
    *len = out_n;
    if (buf == NULL || cap < out_n + 1) {
        return nv_error(sd, NVLM_ERR_BUFFER_TOO_SMALL, "stream decoder: %zu bytes need room",
                        out_n + 1);
    }
    tok_utf8_lossy(s, fin, (uint8_t *)buf);
    buf[out_n] = '\0';
    sd->n_pend = n - fin;
    memmove(sd->pend, s + fin, n - fin);
    sd->any = any;
    nv_clear(sd);
    return NVLM_OK;
}

nvlm_status nvlm_stream_decoder_push(nvlm_stream_decoder *sd, int32_t id, char *buf, size_t cap,
                                     size_t *len)
{
    if (!valid_sd(sd)) {
        return NVLM_ERR_INVALID_ARGUMENT;
    }
    if (len == NULL) {
        return nv_error(sd, NVLM_ERR_INVALID_ARGUMENT, "stream decoder: NULL len");
    }
    const nvlm_tokenizer *t = sd->tok;
    size_t k;
    const uint8_t *p = tok_piece(t, id, &k);
    if (p == NULL) {
        *len = 0;
        return nv_error(sd, NVLM_ERR_INVALID_ARGUMENT, "stream decoder: id %d out of range",
                        (int)id);
    }
    if ((sd->flags & NVLM_DETOKENIZE_SKIP_SPECIAL) && tok_is_special(t, id)) {
        k = 0;
    }
    bool sep = t->decoder == TOK_DEC_NONE && sd->any && k > 0;
    size_t n = sd->n_pend + sep + k;
    uint8_t small[256];
    uint8_t *s = small;
    if (n > sizeof small) {
        s = nv_malloc(t->h.ctx, n);
        if (s == NULL) {
            return nv_error(sd, NVLM_ERR_OUT_OF_MEMORY, "stream decoder: out of memory");
        }
    }
    memcpy(s, sd->pend, sd->n_pend);
    if (sep) {
        s[sd->n_pend] = ' ';
    }
    if (k > 0) {
        memcpy(s + sd->n_pend + sep, p, k);
    }
    nvlm_status st = sd_emit(sd, s, n, utf8_final(s, n), sd->any || k > 0, buf, cap, len);
    if (s != small) {
        nv_free(t->h.ctx, s);
    }
    return st;
}

nvlm_status nvlm_stream_decoder_flush(nvlm_stream_decoder *sd, char *buf, size_t cap, size_t *len)
{
    if (!valid_sd(sd)) {
        return NVLM_ERR_INVALID_ARGUMENT;
    }
    if (len == NULL) {
        return nv_error(sd, NVLM_ERR_INVALID_ARGUMENT, "stream decoder: NULL len");
    }
    uint8_t s[4];
    size_t n = sd->n_pend;
    memcpy(s, sd->pend, n);
    NVLM_TRY(sd_emit(sd, s, n, n, false, buf, cap, len));
    return NVLM_OK;
}

void nvlm_stream_decoder_free(nvlm_stream_decoder *sd)
{
    if (valid_sd(sd)) {
        sd->h.magic = NV_MAGIC_DEAD;
        nv_free(sd->h.ctx, sd);
    }
}
