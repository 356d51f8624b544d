/*
 * cmd_chat.c - `nvlm chat MODEL_DIR [options]`: an interactive conversation. Each line is a user
 * turn (prefilled on top of the session's KV cache) answered with streamed text; `/image PATH`
 * attaches an image to the next turn, `/reset` starts over, `/quit` (or end of input) leaves.
 * Public API only.
 */
#include "cli.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#define MAX_PENDING 16

static void help(FILE *f)
{
    fprintf(f,
            "usage: nvlm chat MODEL_DIR [options]\n"
            "\n"
            "Interactive chat. Commands: /image PATH (attach to the next message), /reset,\n"
            "/quit. The session keeps the KV cache of the tokens actually generated.\n"
            "\n"
            "  --system TEXT    system message (default \"Answer the questions.\")\n"
            "  --parse-special  treat added tokens typed in messages and the system message\n"
            "                   (<|im_start|>, <|im_end|>, ...) as control tokens; by default\n"
            "                   they are plain text and cannot open or close turns\n"
            "  -n, --max-new N  at most N new tokens per answer (default: generation config)\n"
            "  --temp T         temperature (0 = greedy, the default)\n"
            "  --top-k K        top-k filter      --top-p P   top-p filter\n"
            "  --seed S         sampling seed\n"
            "  -t, --threads N  CPU threads (default: all cores)\n"
            "  --precision P    exact (default) or fast (bf16 GEMM inputs, bf16 KV cache)\n"
            "  --tp N           shard the model over N tensor-parallel ranks\n"
            "  --devices LIST   the GPU of each rank, e.g. 0,1,2,3 (sets --tp)\n"
            "  --weights TYPE   auto (as stored, the default), bf16, or fp8: the LLM's linear\n"
            "                   layers quantized to FP8 E4M3 at load\n"
            "  -h, --help       this text\n");
}

static int on_token(void *user, int32_t token, const char *text, size_t len)
{
    (void)user;
    (void)token;
    fwrite(text, 1, len, stdout);
    fflush(stdout);
    return 0;
}

static void strip_newline(char *s)
{
    size_t n = strlen(s);
    while (n > 0 && (s[n - 1] == '\n' || s[n - 1] == '\r')) {
        s[--n] = '\0';
    }
}

int cmd_chat(int argc, char **argv)
{
    const char *dir = NULL;
    nvlm_session_params sp;
    nvlm_session_default_params(&sp);
    nvlm_sampler_params smp;
    nvlm_sampler_default_params(&smp);
    int threads = 0;
    int tp = 1;
    nvlm_precision precision = NVLM_PRECISION_EXACT;
    int32_t devices[256];
    int n_devices = 0;
    nvlm_weight_type weights = NVLM_WEIGHTS_AUTO;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        bool takes = strcmp(a, "--system") == 0 || strcmp(a, "-n") == 0 ||
                     strcmp(a, "--max-new") == 0 || strcmp(a, "--temp") == 0 ||
                     strcmp(a, "--top-k") == 0 || strcmp(a, "--top-p") == 0 ||
                     strcmp(a, "--seed") == 0 || strcmp(a, "-t") == 0 ||
                     strcmp(a, "--threads") == 0 || strcmp(a, "--tp") == 0 ||
                     strcmp(a, "--devices") == 0 || strcmp(a, "--precision") == 0 ||
                     strcmp(a, "--weights") == 0;
        if (cli_is_help(a)) {
            help(stdout);
            return 0;
        }
        if (takes && v == NULL) {
            help(stderr);
            return 2;
        }
        if (strcmp(a, "--system") == 0) {
            sp.system_message = v;
        } else if (strcmp(a, "--parse-special") == 0) {
            sp.parse_special_in_content = 1;
        } else if (strcmp(a, "-n") == 0 || strcmp(a, "--max-new") == 0) {
            smp.max_new_tokens = atoi(v);
        } else if (strcmp(a, "--temp") == 0) {
            smp.temperature = strtof(v, NULL);
        } else if (strcmp(a, "--top-k") == 0) {
            smp.top_k = atoi(v);
        } else if (strcmp(a, "--top-p") == 0) {
            smp.top_p = strtof(v, NULL);
        } else if (strcmp(a, "--seed") == 0) {
            sp.seed = strtoull(v, NULL, 10);
        } else if (strcmp(a, "-t") == 0 || strcmp(a, "--threads") == 0) {
            threads = atoi(v);
        } else if (strcmp(a, "--tp") == 0) {
            tp = atoi(v);
        } else if (strcmp(a, "--precision") == 0) {
            if (cli_parse_precision("chat", v, &precision) != 0) {
                help(stderr);
                return 2;
            }
        } else if (strcmp(a, "--weights") == 0) {
            if (!cli_parse_weights(v, &weights)) {
                return 2;
            }
        } else if (strcmp(a, "--devices") == 0) {
            n_devices = cli_parse_devices(v, devices, 256);
            if (n_devices < 0) {
                fprintf(stderr, "nvlm: chat: --devices needs a list such as 0,1,2,3\n");
                return 2;
            }
        } else if (a[0] == '-' || dir != NULL) {
            fprintf(stderr, "nvlm: chat: unexpected argument '%s'\n", a);
            help(stderr);
            return 2;
        } else {
            dir = a;
        }
        i += takes ? 1 : 0;
    }
    if (dir == NULL) {
        help(stderr);
        return 2;
    }
    nvlm_context_params cp;
    nvlm_context_default_params(&cp);
    cp.n_threads = threads > 0 ? threads : 0;
    cp.tp_size = tp;
    cp.n_devices = n_devices;
    cp.devices = n_devices > 0 ? devices : NULL;
    nvlm_context *ctx = NULL;
    nvlm_model *model = NULL;
    nvlm_session *s = NULL;
    nvlm_image *pending[MAX_PENDING];
    size_t n_pending = 0;
    int rc = 1;
    nvlm_status st = cli_context("chat", &cp, &ctx);
    if (st != NVLM_OK) {
        return 1;
    }
    nvlm_model_params mp;
    nvlm_model_default_params(&mp);
    mp.precision = precision;
    mp.weight_type = weights;
    st = nvlm_model_load(ctx, dir, &mp, &model);
    if (st != NVLM_OK) {
        rc = cli_fail("chat", st, ctx);
        goto done;
    }
    st = nvlm_session_create(model, &sp, &s);
    if (st != NVLM_OK) {
        rc = cli_fail("session", st, model);
        goto done;
    }
    nvlm_image_params ip;
    nvlm_image_default_params(&ip);
    nvlm_model_image_params(model, &ip);
    fprintf(stderr, "nvlm chat: /image PATH, /reset, /quit\n");
    char *line = NULL;
    size_t cap = 0;
    for (;;) {
        fprintf(stderr, "> ");
        if (getline(&line, &cap, stdin) < 0) {
            break;
        }
        strip_newline(line);
        if (line[0] == '\0') {
            continue;
        }
        if (strcmp(line, "/quit") == 0 || strcmp(line, "/exit") == 0) {
            break;
        }
        if (strcmp(line, "/reset") == 0) {
            nvlm_session_reset(s);
            for (size_t i = 0; i < n_pending; i++) {
                nvlm_image_free(pending[i]);
            }
            n_pending = 0;
            fprintf(stderr, "(conversation reset)\n");
            continue;
        }
        if (strncmp(line, "/image ", 7) == 0) {
            if (n_pending == MAX_PENDING) {
                fprintf(stderr, "too many images for one message\n");
                continue;
            }
            st = nvlm_image_load_file(ctx, line + 7, &ip, &pending[n_pending]);
            if (st != NVLM_OK) {
                cli_fail("chat", st, ctx); /* the message names the file */
                continue;
            }
            fprintf(stderr, "(image %s: %d tiles, attached to the next message)\n", line + 7,
                    nvlm_image_tile_count(pending[n_pending]));
            n_pending++;
            continue;
        }
        st = nvlm_session_add_turn(s, NVLM_ROLE_USER, line, pending, n_pending);
        for (size_t i = 0; i < n_pending; i++) {
            nvlm_image_free(pending[i]);
        }
        n_pending = 0;
        if (st != NVLM_OK) {
            cli_fail("turn", st, s);
            continue;
        }
        nvlm_generate_result r;
        r.struct_size = sizeof r;
        st = nvlm_session_generate(s, &smp, on_token, NULL, &r);
        printf("\n");
        fflush(stdout);
        if (st != NVLM_OK) {
            cli_fail("generate", st, s);
        } else if (r.finish_reason == NVLM_FINISH_CONTEXT_FULL) {
            fprintf(stderr, "(context full: /reset to start over)\n");
        }
    }
    free(line);
    rc = 0;
done:
    for (size_t i = 0; i < n_pending; i++) {
        nvlm_image_free(pending[i]);
    }
    nvlm_session_free(s);
    nvlm_model_free(model);
    nvlm_context_free(ctx);
    return rc;
}
