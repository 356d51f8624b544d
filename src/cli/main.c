/*
 * main.c - `nvlm` subcommand dispatch.
 */
#include "cli.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

static const struct {
    const char *name;
    int (*fn)(int, char **);
    const char *summary;
} commands[] = {
    {"info", cmd_info, "show a model's dimensions, parameter count and memory needs"},
    {"tokenize", cmd_tokenize, "encode text with a model's tokenizer"},
    {"preprocess", cmd_preprocess, "decode an image and show or dump its tiles"},
    {"generate", cmd_generate, "answer a prompt (with images) and stream the text"},
    {"chat", cmd_chat, "interactive conversation"},
    {"quantize", cmd_quantize, "write an FP8 copy of a checkpoint (compressed-tensors)"},
};

/* Prints "nvlm: WHAT: <the handle's message>". WHAT is the subcommand (or the step), never a
 * path: the library's messages name the files they are about. */
int cli_fail(const char *what, nvlm_status st, const void *handle)
{
    const char *detail = nvlm_last_error(handle);
    if (detail != NULL && detail[0] != '\0') {
        fprintf(stderr, "nvlm: %s: %s\n", what, detail);
    } else {
        fprintf(stderr, "nvlm: %s: %s\n", what, nvlm_status_str(st));
    }
    return 1;
}

nvlm_status cli_context(const char *what, const nvlm_context_params *cp, nvlm_context **out)
{
    nvlm_status st = nvlm_context_create(cp, out);
    if (st == NVLM_OK) {
        return st;
    }
    /* the first rank whose device cannot run, with the library's reason (ranks and their
     * devices as nvlm_context_params documents them) */
    char why[512] = "";
    if (st == NVLM_ERR_NO_DEVICE && cp != NULL) {
        bool listed = cp->n_devices > 0 && cp->devices != NULL;
        int32_t n = listed ? cp->n_devices : cp->tp_size > 1 ? cp->tp_size : 1;
        for (int32_t r = 0; r < n && why[0] == '\0'; r++) {
            int32_t dev = listed ? cp->devices[r] : n == 1 ? cp->device : r;
            if (nvlm_backend_probe(cp->backend, dev, why, sizeof why) == NVLM_OK) {
                why[0] = '\0';
            }
        }
    }
    if (why[0] != '\0') {
        fprintf(stderr, "nvlm: %s: %s: %s\n", what, nvlm_status_str(st), why);
    } else {
        fprintf(stderr, "nvlm: %s: %s\n", what, nvlm_status_str(st));
    }
    return st;
}

int cli_parse_precision(const char *cmd, const char *text, nvlm_precision *out)
{
    if (text != NULL && strcmp(text, "exact") == 0) {
        *out = NVLM_PRECISION_EXACT;
        return 0;
    }
    if (text != NULL && strcmp(text, "fast") == 0) {
        *out = NVLM_PRECISION_FAST;
        return 0;
    }
    fprintf(stderr, "nvlm: %s: --precision needs exact or fast\n", cmd);
    return 2;
}

int cli_parse_devices(const char *text, int32_t *out, int cap)
{
    int n = 0;
    const char *p = text;
    while (p != NULL && *p != '\0') {
        char *end = NULL;
        long d = strtol(p, &end, 10);
        if (end == p || d < 0 || d > 1023 || n == cap || (*end != ',' && *end != '\0')) {
            return -1;
        }
        out[n++] = (int32_t)d;
        p = *end == ',' ? end + 1 : end;
    }
    return n > 0 ? n : -1;
}

int cli_parse_weights(const char *text, nvlm_weight_type *out)
{
    if (text != NULL && strcmp(text, "auto") == 0) {
        *out = NVLM_WEIGHTS_AUTO;
    } else if (text != NULL && strcmp(text, "bf16") == 0) {
        *out = NVLM_WEIGHTS_BF16;
    } else if (text != NULL && strcmp(text, "fp8") == 0) {
        *out = NVLM_WEIGHTS_FP8;
    } else {
        fprintf(stderr, "nvlm: --weights needs auto, bf16 or fp8\n");
        return 0;
    }
    return 1;
}

int cli_is_help(const char *arg)
{
    return strcmp(arg, "-h") == 0 || strcmp(arg, "--help") == 0;
}

static void usage(FILE *f)
{
    fprintf(f, "usage: nvlm COMMAND [ARGS]   (nvlm COMMAND --help for details)\n\ncommands:\n");
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++) {
        fprintf(f, "  %-11s %s\n", commands[i].name, commands[i].summary);
    }
    fprintf(f, "\nnvlm %s\n", nvlm_version());
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    if (cli_is_help(argv[1])) {
        usage(stdout);
        return 0;
    }
    if (strcmp(argv[1], "--version") == 0) {
        printf("nvlm %s\n", nvlm_version());
        return 0;
    }
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++) {
        if (strcmp(argv[1], commands[i].name) == 0) {
            return commands[i].fn(argc - 1, argv + 1);
        }
    }
    fprintf(stderr, "nvlm: unknown command '%s'\n", argv[1]);
    usage(stderr);
    return 2;
}
