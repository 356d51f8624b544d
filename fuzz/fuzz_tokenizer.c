/*
 * fuzz_tokenizer.c - libFuzzer target for the tokenizer. The first input byte picks the mode:
 *   even: the rest is a tokenizer.json; a successful load must encode and decode a few fixed
 *         strings without error or crash;
 *   odd:  the rest is text for the tiny model's tokenizer (tests/data/tiny-nvlm-d/tokenizer.json,
 *         loaded once; run from the repository root): encoding (with and without
 *         split_special) must either succeed or report invalid UTF-8, and the streaming decoder
 *         must reproduce the one-shot decoding of the ids.
 * Both modes also encode with plain ranges (message content): the whole text plain must give
 * no added-token id, and a middle range must encode whenever the plain call does.
 */
#include "tokenizer.h"

#include <stdlib.h>
#include <string.h>

static nvlm_context *g_ctx;
static nvlm_tokenizer *g_tiny;

static void init(void)
{
    if (g_ctx != NULL) {
        return;
    }
    nvlm_context_params cp; /* parsing only: the CPU, never the plugin (auto) */
    nvlm_context_default_params(&cp);
    cp.backend = NVLM_BACKEND_CPU;
    if (nvlm_context_create(&cp, &g_ctx) != NVLM_OK ||
        nvlm_tokenizer_load(g_ctx, "tests/data/tiny-nvlm-d/tokenizer.json", &g_tiny) != NVLM_OK) {
        abort();
    }
}

static void round_trip(const nvlm_tokenizer *t, const char *s, size_t n, uint32_t flags)
{
    tok_ids v = {.ctx = g_ctx};
    nvlm_status st = tok_encode(t, s, n, flags, &v);
    if (st != NVLM_OK) {
        if (st != NVLM_ERR_INVALID_ARGUMENT && st != NVLM_ERR_LIMIT) {
            abort();
        }
        if (st == NVLM_ERR_INVALID_ARGUMENT && tok_utf8_check((const uint8_t *)s, n) == n) {
            abort(); /* valid text refused */
        }
        tok_ids_free(&v);
        return;
    }
    size_t len = 0;
    if (nvlm_detokenize(t, v.data, v.n, 0, NULL, 0, &len) != NVLM_OK) {
        abort();
    }
    char *one = malloc(len + 1);
    nvlm_detokenize(t, v.data, v.n, 0, one, len + 1, &len);
    nvlm_stream_decoder *sd;
    if (nvlm_stream_decoder_create(t, 0, &sd) != NVLM_OK) {
        abort();
    }
    char *acc = malloc(len + 16);
    size_t an = 0;
    static char piece[1 << 17];
    for (size_t i = 0; i < v.n; i++) {
        size_t k = 0;
        if (nvlm_stream_decoder_push(sd, v.data[i], piece, sizeof piece, &k) != NVLM_OK ||
            an + k > len) {
            abort();
        }
        memcpy(acc + an, piece, k);
        an += k;
    }
    size_t k = 0;
    if (nvlm_stream_decoder_flush(sd, piece, sizeof piece, &k) != NVLM_OK || an + k != len) {
        abort();
    }
    memcpy(acc + an, piece, k);
    if (memcmp(acc, one, len) != 0) {
        abort();
    }
    nvlm_stream_decoder_free(sd);
    free(acc);
    free(one);
    tok_ids_free(&v);
}

/* tok_encode_plain over the whole text and over its middle half. check_ids: no id of the
 * result is an added token (for the tiny tokenizer, whose added tokens are not in its BPE
 * vocabulary; a fuzzed tokenizer.json may give a vocabulary token the added flag). */
static void plain_ranges(const nvlm_tokenizer *t, const char *s, size_t n, bool check_ids)
{
    size_t whole[2] = {0, n};
    size_t mid[2] = {n / 4, n - n / 4};
    tok_ids v = {.ctx = g_ctx};
    nvlm_status st = tok_encode_plain(t, s, n, 0, whole, 1, &v);
    if (st != NVLM_OK && st != NVLM_ERR_INVALID_ARGUMENT && st != NVLM_ERR_LIMIT) {
        abort();
    }
    for (size_t i = 0; check_ids && st == NVLM_OK && i < v.n; i++) {
        if (v.data[i] < 0 || v.data[i] >= t->n_ids || (t->id_flags[v.data[i]] & TOK_F_ADDED)) {
            abort(); /* an added token matched inside plain text */
        }
    }
    tok_ids_free(&v);
    nvlm_status st2 = tok_encode_plain(t, s, n, 0, mid, 1, &v);
    if ((st == NVLM_OK) != (st2 == NVLM_OK) && st2 != NVLM_ERR_LIMIT && st != NVLM_ERR_LIMIT) {
        abort();
    }
    tok_ids_free(&v);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    init();
    if (size < 1) {
        return 0;
    }
    const char *rest = (const char *)data + 1;
    size_t n = size - 1;
    if ((data[0] & 1) == 0) {
        nvlm_tokenizer *t = NULL;
        if (tok_load_json(g_ctx, rest, n, &t) == NVLM_OK) {
            static const char *texts[] = {"Hello world", "  x\r\n\t 你好 <|im_end|>",
                                          "aaaaaaaaaa", ""};
            for (size_t i = 0; i < sizeof texts / sizeof *texts; i++) {
                round_trip(t, texts[i], strlen(texts[i]), 0);
                round_trip(t, texts[i], strlen(texts[i]), NVLM_TOKENIZE_SPLIT_SPECIAL);
                plain_ranges(t, texts[i], strlen(texts[i]), false);
            }
            nvlm_tokenizer_free(t);
        }
    } else {
        round_trip(g_tiny, rest, n, 0);
        round_trip(g_tiny, rest, n, NVLM_TOKENIZE_SPLIT_SPECIAL);
        plain_ranges(g_tiny, rest, n, true);
    }
    return 0;
}
