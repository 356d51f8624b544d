/*
 * tokenizer.h - internal API of the byte-level BPE tokenizer (tokenizer.c, tokenizer_load.c)
 * and the chatml prompt builder (prompt.c). Text (UTF-8) -> added-token split -> NFC -> regex
 * split -> byte-level map -> BPE by merge rank -> ids, exact to Hugging Face `tokenizers`
 * (spec NVLM-D.md §7.3); ids -> bytes -> text with from_utf8_lossy semantics.
 * A loaded tokenizer is read-only: every function here may run on many threads at once.
 */
#ifndef NVLM_TOKENIZER_H
#define NVLM_TOKENIZER_H

#include "internal.h"

#ifndef PCRE2_CODE_UNIT_WIDTH
#define PCRE2_CODE_UNIT_WIDTH 8
#endif
#include <pcre2.h>
#include <string.h>

/* Growable id vector; memory from `ctx` (nv_malloc). Zero-initialise, set ctx, free with
 * tok_ids_free. */
typedef struct tok_ids {
    nvlm_context *ctx;
    int32_t *data;
    size_t n;
    size_t cap;
} tok_ids;

nvlm_status tok_ids_reserve(tok_ids *v, size_t extra);
nvlm_status tok_ids_push(tok_ids *v, int32_t id);
void tok_ids_free(tok_ids *v);

/* Growable tile-span vector (one nvlm_image_span per tile), same rules as tok_ids. */
typedef struct tok_spans {
    nvlm_context *ctx;
    nvlm_image_span *data;
    size_t n;
    size_t cap;
} tok_spans;

nvlm_status tok_spans_push(tok_spans *v, const nvlm_image_span *s);
void tok_spans_free(tok_spans *v);

/* ---- the tokenizer handle (fields are filled by tokenizer_load.c) -------------------------- */

typedef struct tok_added {
    char *content;   /* owned, NUL-terminated */
    size_t len;
    int32_t id;
    bool special, lstrip, rstrip, single_word, normalized;
} tok_added;

enum { TOK_MAX_NORM = 8, TOK_MAX_PRE = 8 };

typedef enum tok_split_behavior {
    TOK_SPLIT_ISOLATED = 0,
    TOK_SPLIT_REMOVED,
    TOK_SPLIT_MERGED_PREV,
    TOK_SPLIT_MERGED_NEXT,
    TOK_SPLIT_CONTIGUOUS
} tok_split_behavior;

typedef struct tok_pre_step {
    pcre2_code *re;              /* compiled with UTF|UCP, JIT when available */
    tok_split_behavior behavior;
    bool invert;
} tok_pre_step;

enum { TOK_CACHE_SHARDS = 64, TOK_CACHE_SLOTS = 512, TOK_CACHE_WORD = 22, TOK_CACHE_IDS = 7 };

/* One direct-mapped BPE cache slot: a short piece and its ids. */
typedef struct tok_cache_slot {
    uint8_t len;                 /* 0 = empty */
    uint8_t n_ids;
    uint8_t word[TOK_CACHE_WORD];
    int32_t ids[TOK_CACHE_IDS];
} tok_cache_slot;

typedef struct tok_cache_shard {
    pthread_mutex_t lock;
    tok_cache_slot slot[TOK_CACHE_SLOTS];
} tok_cache_shard;

struct nvlm_tokenizer {
    nv_handle h;
    pthread_mutex_t err_lock;    /* the tokenizer is shared: error text writes are serialised */
    int32_t n_ids;               /* highest id + 1 */
    int32_t n_base;              /* entries of the BPE vocabulary */

    /* per id: vocabulary string (as in the file) and decoded bytes; flags */
    char *str_arena;
    uint32_t *str_off, *str_len; /* n_ids entries; str_len UINT32_MAX = no token (a hole) */
    uint8_t *dec_arena;
    uint32_t *dec_off, *dec_len; /* what the decoder turns the token into */
    uint8_t *id_flags;           /* TOK_F_* */

    /* vocabulary string -> id (open addressing over ids + 1; 0 = empty) */
    uint32_t *vhash;
    size_t vhash_mask;

    /* merges: key (left id << 32 | right id) -> rank, merged id */
    uint64_t *mkey;              /* UINT64_MAX = empty */
    uint32_t *mrank;
    int32_t *mnew;
    size_t mhash_mask;
    size_t n_merges;

    int32_t byte_id[256];        /* id of each single byte's token, -1 when missing */
    bool ignore_merges;          /* BPE ignore_merges: whole piece looked up first */

    /* normalizer: a sequence of utf8proc option sets (NFC, NFD, NFKC, NFKD) */
    int n_norm;
    int norm_opts[TOK_MAX_NORM];

    /* pre-tokenizer: regex split steps, then the byte-level mapping */
    int n_pre;
    tok_pre_step pre[TOK_MAX_PRE];

    int decoder;                 /* TOK_DEC_* */

    tok_added *added;            /* sorted by id */
    size_t n_added;
    bool any_normalized_added;
    uint8_t added_first[32];     /* bitmap of first bytes of added tokens */

    int32_t id_im_start, id_im_end, id_endoftext, id_vision_pad;
    int32_t eos, pad, bos;

    size_t bpe_heap_min;         /* pieces at least this long use the heap merge (tests set 0) */
    tok_cache_shard *cache;      /* TOK_CACHE_SHARDS shards; NULL = no cache */
};

enum {
    TOK_F_PRESENT = 1u << 0,
    TOK_F_ADDED = 1u << 1,
    TOK_F_SPECIAL = 1u << 2
};

enum {
    TOK_DEC_BYTELEVEL = 0,
    TOK_DEC_NONE = 1             /* no decoder: tokens joined with " " as tokenizers does */
};

/* Hash of a byte string (vocabulary table, BPE cache). */
static inline uint64_t tok_hash(const void *p, size_t n)
{
    const uint8_t *s = p;
    uint64_t h = 0x9e3779b97f4a7c15ull ^ (uint64_t)n;
    while (n >= 8) {
        uint64_t v;
        memcpy(&v, s, 8);
        h = (h ^ v) * 0xff51afd7ed558ccdull;
        h ^= h >> 32;
        s += 8;
        n -= 8;
    }
    uint64_t v = 0;
    memcpy(&v, s, n);
    h = (h ^ v) * 0xc4ceb9fe1a85ec53ull;
    h ^= h >> 29;
    return h;
}

/* ---- loading (tokenizer_load.c) ---------------------------------------------------------- */

/* Loads from a tokenizer.json file or a directory (tokenizer.json, else vocab.json + merges.txt
 * + tokenizer_config.json). Failure text goes to ctx. */
nvlm_status tok_load_path(nvlm_context *ctx, const char *path, nvlm_tokenizer **out);
/* Loads from tokenizer.json bytes in memory (fuzzing, tests). Failure text goes to ctx. */
nvlm_status tok_load_json(nvlm_context *ctx, const char *json, size_t len, nvlm_tokenizer **out);
/* Loads the vocab.json + merges.txt form from memory; config_json (tokenizer_config.json, may
 * be NULL) supplies added_tokens_decoder. Uses Qwen2's NFC + split regex + ByteLevel. */
nvlm_status tok_load_vocab_merges(nvlm_context *ctx, const char *vocab_json, size_t vocab_len,
                                  const char *merges, size_t merges_len, const char *config_json,
                                  size_t config_len, nvlm_tokenizer **out);
void tok_free(nvlm_tokenizer *t);
/* Id of the vocabulary string s[0..n) (the BPE vocabulary, not added tokens), or -1. */
int32_t tok_vocab_find(const nvlm_tokenizer *t, const char *s, size_t n);

/* ---- encode / decode (tokenizer.c) -------------------------------------------------------- */

/* Appends the ids of `len` bytes of `text` to *out (flags: NVLM_TOKENIZE_*). Thread-safe.
 * Errors (invalid UTF-8 with its byte offset, out of memory, regex limits) go to the tokenizer's
 * error text. */
nvlm_status tok_encode(const nvlm_tokenizer *t, const char *text, size_t len, uint32_t flags,
                       tok_ids *out);
/* As tok_encode, with `n_plain` ranges [plain[2k], plain[2k + 1]) of text (byte offsets,
 * ascending, disjoint) that are plain text: an added token is matched only where it lies wholly
 * outside every range, so the characters of an added token inside a range are normalized,
 * pre-tokenized and merged like any text, together with the text around them up to the nearest
 * matched added token. The prompt builder marks message content so. */
nvlm_status tok_encode_plain(const nvlm_tokenizer *t, const char *text, size_t len,
                             uint32_t flags, const size_t *plain, size_t n_plain, tok_ids *out);

/* Sets the tokenizer's error text (serialised; the tokenizer is shared) and returns st. */
nvlm_status tok_fail(const nvlm_tokenizer *t, nvlm_status st, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Clears the tokenizer's error text after a successful public call. */
void tok_ok(const nvlm_tokenizer *t);

/* Special ids for the engine: -1 when the tokenizer lacks the token. */
static inline int32_t tok_id_im_start(const nvlm_tokenizer *t) { return t->id_im_start; }
static inline int32_t tok_id_im_end(const nvlm_tokenizer *t) { return t->id_im_end; }
static inline int32_t tok_id_vision_pad(const nvlm_tokenizer *t) { return t->id_vision_pad; }

/* Decoded bytes of one id (may be a partial UTF-8 sequence); NULL for an id out of range.
 * Borrowed from the tokenizer. */
const uint8_t *tok_piece(const nvlm_tokenizer *t, int32_t id, size_t *len);
/* Whether `id` is an added token flagged special (skipped by NVLM_DETOKENIZE_SKIP_SPECIAL). */
bool tok_is_special(const nvlm_tokenizer *t, int32_t id);

/* Length of the UTF-8 from_utf8_lossy output of `n` bytes; writes it to out when non-NULL
 * (out must hold the returned length). */
size_t tok_utf8_lossy(const uint8_t *s, size_t n, uint8_t *out);
/* Byte offset of the first invalid UTF-8 sequence in s, or n when all of it is valid. */
size_t tok_utf8_check(const uint8_t *s, size_t n);

/* ---- prompt (prompt.c) --------------------------------------------------------------------- */

enum { TOK_IMAGE_TOKENS = 256 }; /* <|vision_pad|> per tile in NVLM-D (num_image_token) */

/* Tokens of the system block alone: "<|im_start|>system\n{system_message}<|im_end|>"
 * (system_message NULL = "Answer the questions."), appended to *ids. The message is plain text
 * (its added tokens are not matched) unless parse_special. Errors go to t. */
nvlm_status tok_prompt_system(const nvlm_tokenizer *t, const char *system_message,
                              bool parse_special, tok_ids *ids);

/* Tokens of ONE turn, without the system block: "<|im_start|>{role}\n{content}<|im_end|>"
 * (role alone when content is empty) and, when add_generation_prompt, then
 * "<|im_start|>assistant\n". <image> placeholders are expanded for n_images images with
 * image_tiles[i] tiles each (a user turn with images and no placeholder gets "<image>\n" per
 * image in front; counts must match; only user turns may carry images). Ids are appended to
 * *ids; one span per tile is appended to *spans (may be NULL) with start = pos_base + the pad
 * run's index in *ids (pass the session's past length with a fresh *ids, or 0 when *ids holds
 * the whole sequence) and image = image_base + the image's index in this turn. content is plain
 * text (its added tokens are not matched; "<|vision_pad|>" in it is refused) unless
 * parse_special. Errors go to t. */
nvlm_status tok_prompt_turn(const nvlm_tokenizer *t, nvlm_role role, const char *content,
                            const int32_t *image_tiles, size_t n_images, bool add_generation_prompt,
                            bool parse_special, size_t pos_base, uint32_t image_base, tok_ids *ids,
                            tok_spans *spans);

#endif /* NVLM_TOKENIZER_H */
