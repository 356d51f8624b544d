/*
 * bench_tokenizer.c - tokenizer speed and footprint: load time and resident memory of the full
 * Qwen2.5/NVLM-D tokenizer, then encoding of a >= 5 MB multilingual corpus generated here
 * (deterministically, from the golden strings plus synthetic text in several scripts) one
 * document at a time on one thread. Writes the corpus to OUT_DIR/corpus.txt (documents
 * separated by 0x1e) so bench/bench_tokenizer_hf.py encodes the same text with `tokenizers`.
 *
 *     bench_tokenizer OUT_DIR [MODEL_PATH]
 */
#include "nvlm/nvlm.h"

#include <cJSON.h>
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static long rss_kb(void)
{
    FILE *f = fopen("/proc/self/statm", "r");
    long pages = 0, res = 0;
    if (f != NULL) {
        if (fscanf(f, "%ld %ld", &pages, &res) != 2) {
            res = 0;
        }
        fclose(f);
    }
    return res * (sysconf(_SC_PAGESIZE) / 1024);
}

typedef struct buf {
    char *s;
    size_t n, cap;
} buf;

static void put(buf *b, const char *s, size_t n)
{
    if (b->n + n + 1 > b->cap) {
        b->cap = (b->n + n + 1) * 2;
        b->s = realloc(b->s, b->cap);
        if (b->s == NULL) {
            exit(1);
        }
    }
    memcpy(b->s + b->n, s, n);
    b->n += n;
    b->s[b->n] = '\0';
}

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static uint32_t next(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (uint32_t)(rng >> 16);
}

static void put_cp(buf *b, uint32_t c)
{
    char u[4];
    size_t n;
    if (c < 0x80) {
        u[0] = (char)c;
        n = 1;
    } else if (c < 0x800) {
        u[0] = (char)(0xc0 | (c >> 6));
        u[1] = (char)(0x80 | (c & 0x3f));
        n = 2;
    } else if (c < 0x10000) {
        u[0] = (char)(0xe0 | (c >> 12));
        u[1] = (char)(0x80 | ((c >> 6) & 0x3f));
        u[2] = (char)(0x80 | (c & 0x3f));
        n = 3;
    } else {
        u[0] = (char)(0xf0 | (c >> 18));
        u[1] = (char)(0x80 | ((c >> 12) & 0x3f));
        u[2] = (char)(0x80 | ((c >> 6) & 0x3f));
        u[3] = (char)(0x80 | (c & 0x3f));
        n = 4;
    }
    put(b, u, n);
}

static const char *WORDS[] = {
    "the", "of", "and", "to", "in", "is", "that", "for", "it", "with", "as", "was", "on", "model",
    "image", "vision", "language", "token", "inference", "describe", "picture", "What", "How",
    "Please", "because", "between", "different", "approximately", "internationalization",
    "return", "struct", "int", "const", "char", "void", "if", "else", "while", "printf", "self",
    "def", "import", "numpy", "torch", "HTTP", "JSON", "GPU", "don't", "it's", "We'll", "I'm",
    "Réponse", "français", "über", "straße", "naïve", "café",
    "Ελληνικά", "русский", "язык",
};
static const uint32_t CJK[] = {0x4f60, 0x597d, 0x6211, 0x662f, 0x4e00, 0x4e2a, 0x56fe, 0x7247,
                               0x7684, 0x4eba, 0x5927, 0x5b66, 0x751f, 0x6a21, 0x578b, 0x8bed,
                               0x8a00, 0x4e2d, 0x56fd, 0x65e5, 0x672c, 0x6587, 0x5b57, 0x6c34};

/* One synthetic document of about `target` bytes. */
static void synth_doc(buf *b, size_t target)
{
    size_t start = b->n;
    while (b->n - start < target) {
        uint32_t r = next() % 100;
        if (r < 55) {
            const char *w = WORDS[next() % (sizeof WORDS / sizeof *WORDS)];
            put(b, " ", 1);
            put(b, w, strlen(w));
        } else if (r < 70) {
            int n = 2 + (int)(next() % 8);
            for (int i = 0; i < n; i++) {
                put_cp(b, CJK[next() % (sizeof CJK / sizeof *CJK)]);
            }
            put_cp(b, 0x3002);
        } else if (r < 76) {
            int n = 3 + (int)(next() % 6);
            for (int i = 0; i < n; i++) {
                put_cp(b, 0x3041 + next() % 0x50); /* hiragana */
            }
        } else if (r < 81) {
            put(b, " ", 1);
            int n = 3 + (int)(next() % 6);
            for (int i = 0; i < n; i++) {
                put_cp(b, 0x0627 + next() % 0x20); /* Arabic letters */
            }
        } else if (r < 86) {
            char num[32];
            int k = snprintf(num, sizeof num, " %u.%02u", next() % 100000, next() % 100);
            put(b, num, (size_t)k);
        } else if (r < 90) {
            static const char *punct[] = {", ", ". ", "; ", "(", ")", " = ", " {", "}", "->", "!="};
            const char *p = punct[next() % 10];
            put(b, p, strlen(p));
        } else if (r < 93) {
            put(b, next() % 2 ? "\n" : "\n\n    ", next() % 2 ? 1 : 6);
        } else if (r < 95) {
            put_cp(b, 0x1f600 + next() % 0x40);
        } else {
            put(b, "\t", 1);
        }
    }
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: bench_tokenizer OUT_DIR [MODEL_PATH]\n");
        return 2;
    }
    const char *out_dir = argv[1];
    const char *model = argc > 2 ? argv[2] : "tests/data/nvlm-d-72b/tokenizer.json";
    mkdir(out_dir, 0755);

    nvlm_context *ctx;
    if (nvlm_context_create(NULL, &ctx) != NVLM_OK) {
        return 1;
    }
    /* load: best of 3; RSS growth of the first load */
    nvlm_tokenizer *tok = NULL;
    double best = 1e30;
    long rss0 = rss_kb(), rss1 = 0, rss2 = 0;
    for (int i = 0; i < 3; i++) {
        double t0 = now_ms();
        if (nvlm_tokenizer_load(ctx, model, &tok) != NVLM_OK) {
            fprintf(stderr, "load %s: %s\n", model, nvlm_last_error(ctx));
            return 1;
        }
        double dt = now_ms() - t0;
        best = dt < best ? dt : best;
        if (i == 0) {
            rss1 = rss_kb();
            malloc_trim(0); /* give back the freed JSON parse tree */
            rss2 = rss_kb();
        }
        if (i < 2) {
            nvlm_tokenizer_free(tok);
        }
    }
    printf("tokenizer load (%s): %.1f ms (best of 3), +%.1f MiB resident after load, "
           "+%.1f MiB after malloc_trim (the tokenizer itself)\n",
           model, best, (rss1 - rss0) / 1024.0, (rss2 - rss0) / 1024.0);

    /* corpus: golden strings, then synthetic documents, to >= 5 MB */
    buf corpus = {0};
    size_t glen = 0;
    FILE *gf = fopen("tests/data/tokenizer-golden.json", "rb");
    char *gtext = NULL;
    if (gf != NULL) {
        fseek(gf, 0, SEEK_END);
        glen = (size_t)ftell(gf);
        fseek(gf, 0, SEEK_SET);
        gtext = malloc(glen + 1);
        glen = fread(gtext, 1, glen, gf);
        gtext[glen] = '\0';
        fclose(gf);
    }
    cJSON *groot = gtext ? cJSON_Parse(gtext) : NULL;
    const cJSON *strs = cJSON_GetObjectItem(groot, "strings");
    size_t n_docs = 0;
    while (corpus.n < 5500000) {
        if (n_docs % 8 == 0 && cJSON_GetArraySize(strs) > 0) {
            /* a document of golden strings (texts without NUL) */
            for (int k = 0; k < 12; k++) {
                const cJSON *s = cJSON_GetArrayItem(strs, (int)(next() % (uint32_t)
                                                               cJSON_GetArraySize(strs)));
                const char *t = cJSON_GetObjectItem(s, "text")->valuestring;
                put(&corpus, t, strlen(t));
                put(&corpus, "\n", 1);
            }
        } else {
            synth_doc(&corpus, 500 + next() % 3000);
        }
        put(&corpus, "\x1e", 1);
        n_docs++;
    }
    cJSON_Delete(groot);
    free(gtext);
    char path[1024];
    snprintf(path, sizeof path, "%s/corpus.txt", out_dir);
    FILE *f = fopen(path, "wb");
    if (f == NULL || fwrite(corpus.s, 1, corpus.n, f) != corpus.n) {
        fprintf(stderr, "cannot write %s\n", path);
        return 1;
    }
    fclose(f);

    /* encode document by document; first pass warms the BPE cache like a long-running server */
    size_t cap = 1 << 20, total = 0;
    int32_t *ids = malloc(cap * sizeof *ids);
    double enc_best = 1e30;
    for (int rep = 0; rep < 3; rep++) {
        total = 0;
        double t0 = now_ms();
        size_t pos = 0;
        while (pos < corpus.n) {
            const char *e = memchr(corpus.s + pos, 0x1e, corpus.n - pos);
            size_t len = (size_t)(e - (corpus.s + pos));
            size_t n = 0;
            if (nvlm_tokenize(tok, corpus.s + pos, len, 0, ids, cap, &n) != NVLM_OK) {
                fprintf(stderr, "tokenize: %s\n", nvlm_last_error(tok));
                return 1;
            }
            total += n;
            pos += len + 1;
        }
        double dt = now_ms() - t0;
        enc_best = dt < enc_best ? dt : enc_best;
    }
    double mb = corpus.n / 1e6;
    printf("nvlm encode: %.2f MB in %zu documents -> %zu tokens, %.1f ms (best of 3): "
           "%.2f MB/s, %.0f tokens/s (1 thread)\n",
           mb, n_docs, total, enc_best, mb / (enc_best / 1e3), total / (enc_best / 1e3));
    snprintf(path, sizeof path, "%s/nvlm_result.txt", out_dir);
    f = fopen(path, "w");
    if (f != NULL) {
        fprintf(f, "%.6f %zu %.3f\n", mb, total, enc_best);
        fclose(f);
    }
    free(ids);
    free(corpus.s);
    nvlm_tokenizer_free(tok);
    nvlm_context_free(ctx);
    return 0;
}
