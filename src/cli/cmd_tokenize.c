/*
 * cmd_tokenize.c - `nvlm tokenize PATH [--split-special] [--json] [TEXT|-]`: encodes TEXT (or
 * stdin, byte for byte) with the tokenizer of a model directory (either file form) or a
 * tokenizer.json, and prints the ids separated by spaces, or a JSON array.
 */
#include "cli.h"

#include <stdlib.h>
#include <string.h>

static void usage(FILE *f)
{
    fprintf(f,
            "usage: nvlm tokenize PATH [--split-special] [--json] [TEXT|-]\n"
            "  PATH             model directory (tokenizer.json, or vocab.json + merges.txt +\n"
            "                   tokenizer_config.json) or a tokenizer.json file\n"
            "  TEXT             text to encode; '-' or nothing reads stdin as is (no newline\n"
            "                   is stripped)\n"
            "  --split-special  encode special tokens' text as plain text\n"
            "  --json           print a JSON array instead of space-separated ids\n");
}

static char *read_stdin(size_t *len)
{
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);
    while (buf != NULL) {
        size_t k = fread(buf + n, 1, cap - n, stdin);
        n += k;
        if (k == 0) {
            break;
        }
        if (n == cap) {
            char *p = realloc(buf, cap * 2);
            if (p == NULL) {
                free(buf);
                return NULL;
            }
            buf = p;
            cap *= 2;
        }
    }
    if (buf != NULL && ferror(stdin)) {
        free(buf);
        return NULL;
    }
    *len = n;
    return buf;
}

int cmd_tokenize(int argc, char **argv)
{
    const char *path = NULL, *text = NULL;
    int json = 0;
    uint32_t flags = 0;
    for (int i = 1; i < argc; i++) {
        if (cli_is_help(argv[i])) {
            usage(stdout);
            return 0;
        }
        if (strcmp(argv[i], "--json") == 0) {
            json = 1;
        } else if (strcmp(argv[i], "--split-special") == 0) {
            flags |= NVLM_TOKENIZE_SPLIT_SPECIAL;
        } else if (path == NULL) {
            path = argv[i];
        } else if (text == NULL) {
            text = argv[i];
        } else {
            usage(stderr);
            return 2;
        }
    }
    if (path == NULL) {
        usage(stderr);
        return 2;
    }
    nvlm_context *ctx;
    nvlm_status st = nvlm_context_create(NULL, &ctx);
    if (st != NVLM_OK) {
        return cli_fail("context", st, NULL);
    }
    nvlm_tokenizer *tok;
    st = nvlm_tokenizer_load(ctx, path, &tok);
    if (st != NVLM_OK) {
        int rc = cli_fail("tokenize", st, ctx);
        nvlm_context_free(ctx);
        return rc;
    }
    char *owned = NULL;
    size_t len = 0;
    if (text == NULL || strcmp(text, "-") == 0) {
        owned = read_stdin(&len);
        if (owned == NULL) {
            fprintf(stderr, "nvlm: tokenize: cannot read stdin\n");
            nvlm_tokenizer_free(tok);
            nvlm_context_free(ctx);
            return 1;
        }
        text = owned;
    } else {
        len = strlen(text);
    }
    size_t n = 0;
    int32_t *ids = NULL;
    st = nvlm_tokenize(tok, text, len, flags, NULL, 0, &n);
    if (st == NVLM_ERR_BUFFER_TOO_SMALL) {
        ids = malloc((n ? n : 1) * sizeof *ids);
        st = ids != NULL ? nvlm_tokenize(tok, text, len, flags, ids, n, &n)
                         : NVLM_ERR_OUT_OF_MEMORY;
    }
    int rc = 0;
    if (st != NVLM_OK) {
        rc = cli_fail("tokenize", st, tok);
    } else {
        fputs(json ? "[" : "", stdout);
        for (size_t i = 0; i < n; i++) {
            printf(i == 0 ? "%d" : (json ? ", %d" : " %d"), (int)ids[i]);
        }
        fputs(json ? "]\n" : "\n", stdout);
    }
    free(ids);
    free(owned);
    nvlm_tokenizer_free(tok);
    nvlm_context_free(ctx);
    return rc;
}
