/*
 * cmd_quantize.c - `nvlm quantize IN_DIR OUT_DIR`: an FP8 copy of a bf16 checkpoint in the
 * compressed-tensors format (nvlm_checkpoint_quantize), loadable as-is.
 */
#include "cli.h"

#include <string.h>
#include <unistd.h>

static void help(FILE *f)
{
    fprintf(f,
            "usage: nvlm quantize IN_DIR OUT_DIR\n"
            "\n"
            "Writes an FP8 copy of a bf16/f16/f32 NVLM-D checkpoint: the LLM's q/k/v/o, gate,\n"
            "up and down projections as F8_E4M3 with one F32 scale per output channel (the\n"
            "rule of --weights fp8), everything else copied; config.json gains a\n"
            "compressed-tensors quantization_config; the index, tokenizer and generation\n"
            "files follow. Works shard by shard (memory: one tensor at a time). Loading\n"
            "OUT_DIR gives the same results as loading IN_DIR with --weights fp8.\n"
            "\n"
            "  -h, --help   this text\n");
}

static int show_progress(void *user, float fraction)
{
    (void)user;
    fprintf(stderr, "\rquantizing: %3d%%%s", (int)(fraction * 100.0f + 0.5f),
            fraction >= 1.0f ? "\n" : "");
    return 0;
}

int cmd_quantize(int argc, char **argv)
{
    const char *dirs[2] = {NULL, NULL};
    int n = 0;
    for (int i = 1; i < argc; i++) {
        if (cli_is_help(argv[i])) {
            help(stdout);
            return 0;
        }
        if (argv[i][0] == '-' || n == 2) {
            fprintf(stderr, "nvlm: quantize: unexpected argument '%s'\n", argv[i]);
            help(stderr);
            return 2;
        }
        dirs[n++] = argv[i];
    }
    if (n != 2) {
        help(stderr);
        return 2;
    }
    nvlm_context *ctx = NULL;
    nvlm_status st = nvlm_context_create(NULL, &ctx);
    if (st != NVLM_OK) {
        return cli_fail("context", st, NULL);
    }
    st = nvlm_checkpoint_quantize(ctx, dirs[0], dirs[1],
                                  isatty(STDERR_FILENO) ? show_progress : NULL, NULL);
    int rc = st == NVLM_OK ? 0 : cli_fail("quantize", st, ctx);
    nvlm_context_free(ctx);
    return rc;
}
