/*
 * cmd_generate.c - `nvlm generate MODEL_DIR [-i IMAGE]... -p PROMPT [options]`: renders the
 * conversation (optional --messages history, then -p as the last user turn) exactly like the
 * reference's chat(), prefills it in one pass and streams the answer to stdout. --json prints
 * {"prompt_tokens":[...],"tokens":[...],"text":"..."}; --logits-out writes every step's logits
 * as a float32 .npy (steps x vocab). Public API only.
 */
#include "cli.h"

#include <cJSON.h>
#include <ctype.h>
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define MAX_IMAGES 64
#define MAX_DEPTH 16
#define PATH_LABEL 4160

static void help(FILE *f)
{
    fprintf(f,
            "usage: nvlm generate MODEL_DIR [-i IMAGE]... -p PROMPT [options]\n"
            "\n"
            "Answers PROMPT (with the images attached to it) and streams the text to stdout.\n"
            "Defaults come from the model's generation config (greedy, at most 1024 new\n"
            "tokens, stop at <|im_end|>).\n"
            "\n"
            "  -i, --image PATH     attach an image to the prompt (repeatable; a prompt without\n"
            "                       <image> gets one \"<image>\\n\" per image in front)\n"
            "  -p, --prompt TEXT    the user turn\n"
            "  --system TEXT        system message (default \"Answer the questions.\")\n"
            "  --messages FILE      JSON list of {\"role\":\"system|user|assistant\",\n"
            "                       \"content\":\"...\",\"images\":[\"path\",...]} history\n"
            "                       (any number of messages; a system message only first,\n"
            "                       images only on user messages, no \\u0000 in strings);\n"
            "                       -p adds a final user turn\n"
            "  --parse-special      treat added tokens in the prompt, system message and\n"
            "                       messages (<|im_start|>, <|im_end|>, ...) as control\n"
            "                       tokens, as the reference does; by default message text\n"
            "                       is plain text, so it cannot open or close turns. Only\n"
            "                       for trusted text\n"
            "  -n, --max-new N      at most N new tokens\n"
            "  --temp T             temperature (0 = greedy)\n"
            "  --top-k K, --top-p P sampling filters\n"
            "  --seed S             sampling seed\n"
            "  -t, --threads N      CPU threads (default: all cores)\n"
            "  --precision P        exact (default: f32 GEMMs) or fast (bf16 GEMM inputs and\n"
            "                       a bf16 KV cache; faster prefill and vision on CPUs with\n"
            "                       AVX512-BF16, logits within ~1e-2 relative)\n"
            "  --backend NAME       auto (default), cpu or cuda\n"
            "  --tp N               shard the model over N tensor-parallel ranks (CPU: groups\n"
            "                       of the threads; CUDA: the first N GPUs; 1 .. the LLM's\n"
            "                       query heads)\n"
            "  --devices LIST       the GPU of each rank, e.g. 0,1,2,3 (sets --tp)\n"
            "  --weights TYPE       auto (as stored, the default), bf16, or fp8: the LLM's\n"
            "                       linear layers quantized to FP8 E4M3 at load\n"
            "  --json               print {\"prompt_tokens\":[...],\"tokens\":[...],\n"
            "                       \"text\":\"...\"} (text: special tokens skipped, stripped)\n"
            "  --logits-out FILE    write each step's logits as float32 .npy (steps x vocab)\n"
            "  -h, --help           this text\n");
}

typedef struct gen_state {
    nvlm_session *s;
    int json;
    int32_t *tokens;
    size_t n_tokens;
    size_t cap_tokens;
    float *logits;          /* n_tokens x vocab when --logits-out */
    size_t vocab;
    int keep_logits;
    int failed;
} gen_state;

static int on_token(void *user, int32_t token, const char *text, size_t len)
{
    gen_state *g = user;
    if (g->n_tokens == g->cap_tokens) {
        size_t cap = g->cap_tokens ? g->cap_tokens * 2 : 256;
        int32_t *t = realloc(g->tokens, cap * sizeof *t);
        float *l = g->keep_logits ? realloc(g->logits, cap * g->vocab * sizeof *l) : NULL;
        if (t != NULL) {
            g->tokens = t;
        }
        if (l != NULL) {
            g->logits = l;
        }
        if (t == NULL || (g->keep_logits && l == NULL)) {
            g->failed = 1;
            return 1;
        }
        g->cap_tokens = cap;
    }
    if (g->keep_logits) {
        /* the session's logits are still those that chose `token` */
        size_t v = 0;
        const float *lg = nvlm_session_logits(g->s, &v);
        if (lg == NULL || v != g->vocab) {
            g->failed = 1;
            return 1;
        }
        memcpy(g->logits + g->n_tokens * g->vocab, lg, v * sizeof(float));
    }
    g->tokens[g->n_tokens++] = token;
    if (!g->json && len > 0) {
        fwrite(text, 1, len, stdout);
        fflush(stdout);
    }
    return 0;
}

static int write_npy(const char *path, const float *data, size_t rows, size_t cols)
{
    FILE *f = fopen(path, "wb");
    if (f == NULL) {
        fprintf(stderr, "nvlm: generate: cannot write %s: %s\n", path, strerror(errno));
        return 1;
    }
    char dict[128];
    int n = snprintf(dict, sizeof dict,
                     "{'descr': '<f4', 'fortran_order': False, 'shape': (%zu, %zu), }", rows,
                     cols);
    /* magic (6) + version (2) + length (2) + dict, padded with spaces to 64 bytes, '\n' last */
    size_t total = 10 + (size_t)n + 1;
    size_t pad = (64 - total % 64) % 64;
    uint16_t hlen = (uint16_t)((size_t)n + pad + 1);
    unsigned char head[10] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0, (unsigned char)(hlen & 0xff),
                              (unsigned char)(hlen >> 8)};
    int ok = fwrite(head, 1, 10, f) == 10 && fwrite(dict, 1, (size_t)n, f) == (size_t)n;
    for (size_t i = 0; ok && i < pad; i++) {
        ok = fputc(' ', f) != EOF;
    }
    ok = ok && fputc('\n', f) != EOF;
    ok = ok && (rows * cols == 0 || fwrite(data, sizeof(float), rows * cols, f) == rows * cols);
    ok = fclose(f) == 0 && ok;
    if (!ok) {
        fprintf(stderr, "nvlm: generate: error writing %s\n", path);
        return 1;
    }
    return 0;
}

static void print_ids(cJSON *obj, const char *key, const int32_t *ids, size_t n)
{
    cJSON *arr = cJSON_AddArrayToObject(obj, key);
    for (size_t i = 0; i < n; i++) {
        cJSON_AddItemToArray(arr, cJSON_CreateNumber(ids[i]));
    }
}

/* The reference's answer: skip special tokens, strip surrounding whitespace. */
static char *answer_text(const nvlm_tokenizer *tok, const int32_t *ids, size_t n)
{
    size_t len = 0;
    nvlm_detokenize(tok, ids, n, NVLM_DETOKENIZE_SKIP_SPECIAL, NULL, 0, &len);
    char *buf = malloc(len + 1);
    if (buf == NULL ||
        nvlm_detokenize(tok, ids, n, NVLM_DETOKENIZE_SKIP_SPECIAL, buf, len + 1, &len) !=
            NVLM_OK) {
        free(buf);
        return NULL;
    }
    char *cut = strstr(buf, "<|im_end|>");
    if (cut != NULL) {
        *cut = '\0';
    }
    size_t e = strlen(buf);
    while (e > 0 && isspace((unsigned char)buf[e - 1])) {
        buf[--e] = '\0';
    }
    size_t a = 0;
    while (buf[a] != '\0' && isspace((unsigned char)buf[a])) {
        a++;
    }
    memmove(buf, buf + a, e - a + 1);
    return buf;
}

typedef struct conv {
    nvlm_chat_message *msgs;     /* n_msgs of cap_msgs */
    size_t n_msgs;
    size_t cap_msgs;
    int32_t tiles[MAX_IMAGES];
    nvlm_image *images[MAX_IMAGES];
    size_t n_images;
    cJSON *json;                 /* --messages document (owns the content strings) */
} conv;

/* Loads an image for the message being built; `what` (NULL: the path) names it in errors. */
static int load_image(nvlm_context *ctx, nvlm_model *model, conv *c, const char *path,
                      const char *what)
{
    if (c->n_images == MAX_IMAGES) {
        fprintf(stderr, "nvlm: generate: %s: more than %d images in all\n",
                what != NULL ? what : path, MAX_IMAGES);
        return 1;
    }
    nvlm_image_params ip;
    nvlm_image_default_params(&ip);
    nvlm_model_image_params(model, &ip);
    nvlm_status st = nvlm_image_load_file(ctx, path, &ip, &c->images[c->n_images]);
    if (st != NVLM_OK) {
        /* the message names the file; a --messages image also says which message */
        return cli_fail(what != NULL ? what : "generate", st, ctx);
    }
    c->tiles[c->n_images] = nvlm_image_tile_count(c->images[c->n_images]);
    c->n_images++;
    return 0;
}

/* Path of the innermost value of a JSON walk: "messages[3].images[0]". */
typedef struct jpath {
    int depth;
    char kind[MAX_DEPTH];        /* '[' or '{' */
    long index[MAX_DEPTH];       /* array element */
    char key[MAX_DEPTH][32];     /* object member (shortened) */
} jpath;

static void jpath_text(const jpath *p, char *out, size_t cap)
{
    size_t n = (size_t)snprintf(out, cap, "messages");
    for (int i = 1; i <= p->depth && i < MAX_DEPTH && n < cap; i++) {
        if (p->kind[i] == '[') {
            n += (size_t)snprintf(out + n, cap - n, "[%ld]", p->index[i]);
        } else {
            n += (size_t)snprintf(out + n, cap - n, ".%s", p->key[i]);
        }
    }
}

/* cJSON decodes "\u0000" to a NUL byte, so such a string would silently end there: finds the
 * first string (member name or value) of the valid JSON text buf[0..n) whose literal holds
 * the escape \u0000 and writes its path to out. Returns 1 when one is found. */
static int find_nul_string(const char *buf, size_t n, char *out, size_t cap)
{
    jpath p = {0};
    int expect_key = 0;
    for (size_t i = 0; i < n; i++) {
        char ch = buf[i];
        if (ch == '[' || ch == '{') {
            p.depth++;
            if (p.depth < MAX_DEPTH) {
                p.kind[p.depth] = ch;
                p.index[p.depth] = 0;
                p.key[p.depth][0] = '\0';
            }
            expect_key = ch == '{';
        } else if (ch == ']' || ch == '}') {
            p.depth--;
            expect_key = 0;
        } else if (ch == ',') {
            if (p.depth < MAX_DEPTH && p.kind[p.depth] == '[') {
                p.index[p.depth]++;
            }
            expect_key = p.depth < MAX_DEPTH && p.kind[p.depth] == '{';
        } else if (ch == '"') {
            size_t start = ++i;
            int nul = 0;
            while (i < n && buf[i] != '"') {
                if (buf[i] == '\\' && i + 1 < n) {
                    nul = nul || (buf[i + 1] == 'u' && i + 5 < n &&
                                  memcmp(buf + i + 2, "0000", 4) == 0);
                    i++;
                }
                i++;
            }
            if (expect_key && p.depth < MAX_DEPTH) {
                size_t k = i - start < sizeof p.key[0] - 1 ? i - start : sizeof p.key[0] - 1;
                memcpy(p.key[p.depth], buf + start, k);
                p.key[p.depth][k] = '\0';
            }
            if (nul) {
                jpath_text(&p, out, cap);
                if (expect_key) {
                    size_t m = strlen(out);
                    snprintf(out + m, cap - m, " (a member name)");
                }
                return 1;
            }
            expect_key = 0;
        }
    }
    return 0;
}

static int load_messages(nvlm_context *ctx, nvlm_model *model, conv *c, const char *path)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        fprintf(stderr, "nvlm: generate: cannot open %s: %s\n", path, strerror(errno));
        return 1;
    }
    size_t cap = 1 << 16;
    size_t n = 0;
    char *buf = malloc(cap);
    for (;;) {
        if (buf == NULL) {
            fclose(f);
            fprintf(stderr, "nvlm: generate: %s: out of memory\n", path);
            return 1;
        }
        n += fread(buf + n, 1, cap - n - 1, f);
        if (n < cap - 1) {
            break;
        }
        cap *= 2;
        char *b = realloc(buf, cap);
        if (b == NULL) {
            free(buf);
            buf = NULL;
            continue;
        }
        buf = b;
    }
    fclose(f);
    buf[n] = '\0';
    const char *raw_nul = memchr(buf, '\0', n);
    if (raw_nul != NULL) {
        fprintf(stderr, "nvlm: generate: %s: a NUL byte at offset %zu\n", path,
                (size_t)(raw_nul - buf));
        free(buf);
        return 1;
    }
    c->json = cJSON_ParseWithLengthOpts(buf, n + 1, NULL, 1); /* + its NUL: nothing may follow */
    char where[256];
    if (c->json != NULL && find_nul_string(buf, n, where, sizeof where)) {
        fprintf(stderr, "nvlm: generate: %s: %s: a string holds \\u0000 (NUL)\n", path, where);
        free(buf);
        return 1;
    }
    free(buf);
    if (c->json == NULL) {
        fprintf(stderr, "nvlm: generate: %s: not valid JSON (or text after the list)\n", path);
        return 1;
    }
    if (!cJSON_IsArray(c->json)) {
        fprintf(stderr, "nvlm: generate: %s: expected a JSON list of messages\n", path);
        return 1;
    }
    size_t total = (size_t)cJSON_GetArraySize(c->json) + 1; /* + the -p turn */
    c->msgs = calloc(total, sizeof *c->msgs);
    if (c->msgs == NULL) {
        fprintf(stderr, "nvlm: generate: %s: out of memory\n", path);
        return 1;
    }
    c->cap_msgs = total;
    const cJSON *m;
    size_t idx = 0;
    cJSON_ArrayForEach(m, c->json)
    {
        const cJSON *role = cJSON_GetObjectItemCaseSensitive(m, "role");
        const cJSON *content = cJSON_GetObjectItemCaseSensitive(m, "content");
        const cJSON *images = cJSON_GetObjectItemCaseSensitive(m, "images");
        const char *bad = NULL;
        char field[64];
        snprintf(field, sizeof field, "messages[%zu]", idx);
        if (!cJSON_IsObject(m)) {
            bad = "expected an object {\"role\": ..., \"content\": ...}";
        } else if (!cJSON_IsString(role)) {
            snprintf(field, sizeof field, "messages[%zu].role", idx);
            bad = "missing or not a string";
        } else if (!cJSON_IsString(content)) {
            snprintf(field, sizeof field, "messages[%zu].content", idx);
            bad = "missing or not a string";
        } else if (images != NULL && !cJSON_IsArray(images) && !cJSON_IsNull(images)) {
            snprintf(field, sizeof field, "messages[%zu].images", idx);
            bad = "expected a list of image paths";
        }
        if (bad != NULL) {
            fprintf(stderr, "nvlm: generate: %s: %s: %s\n", path, field, bad);
            return 1;
        }
        nvlm_chat_message *msg = &c->msgs[c->n_msgs++];
        snprintf(field, sizeof field, "messages[%zu].role", idx);
        if (strcmp(role->valuestring, "system") == 0) {
            msg->role = NVLM_ROLE_SYSTEM;
        } else if (strcmp(role->valuestring, "user") == 0) {
            msg->role = NVLM_ROLE_USER;
        } else if (strcmp(role->valuestring, "assistant") == 0) {
            msg->role = NVLM_ROLE_ASSISTANT;
        } else {
            fprintf(stderr,
                    "nvlm: generate: %s: %s: unknown role '%.64s' (system, user or assistant)\n",
                    path, field, role->valuestring);
            return 1;
        }
        if (msg->role == NVLM_ROLE_SYSTEM && idx > 0) {
            fprintf(stderr, "nvlm: generate: %s: %s: a system message may only come first\n",
                    path, field);
            return 1;
        }
        msg->content = content->valuestring;
        size_t first = c->n_images;
        const cJSON *img;
        size_t k = 0;
        const cJSON *list = cJSON_IsArray(images) ? images : NULL;
        cJSON_ArrayForEach(img, list)
        {
            snprintf(field, sizeof field, "messages[%zu].images[%zu]", idx, k++);
            if (msg->role != NVLM_ROLE_USER) {
                fprintf(stderr, "nvlm: generate: %s: %s: only user messages carry images\n",
                        path, field);
                return 1;
            }
            if (!cJSON_IsString(img)) {
                fprintf(stderr, "nvlm: generate: %s: %s: expected a string path\n", path, field);
                return 1;
            }
            char what[PATH_LABEL];
            snprintf(what, sizeof what, "%s: %s", path, field);
            if (load_image(ctx, model, c, img->valuestring, what) != 0) {
                return 1;
            }
        }
        msg->n_images = c->n_images - first;
        msg->image_tiles = msg->n_images > 0 ? c->tiles + first : NULL;
        idx++;
    }
    return 0;
}

static int parse_num(const char *opt, const char *v, double lo, double hi, double *out)
{
    char *end = NULL;
    double d = v != NULL ? strtod(v, &end) : 0.0;
    if (v == NULL || end == v || *end != '\0' || !(d >= lo && d <= hi)) {
        fprintf(stderr, "nvlm: generate: %s needs a number in [%g, %g]\n", opt, lo, hi);
        return 2;
    }
    *out = d;
    return 0;
}

int cmd_generate(int argc, char **argv)
{
    const char *dir = NULL;
    const char *prompt = NULL;
    const char *system = NULL;
    const char *messages = NULL;
    const char *logits_out = NULL;
    const char *image_paths[MAX_IMAGES];
    size_t n_paths = 0;
    int json = 0;
    int parse_special = 0;
    nvlm_backend backend = NVLM_BACKEND_AUTO;
    nvlm_precision precision = NVLM_PRECISION_EXACT;
    double max_new = -1, temp = -1, top_k = -1, top_p = -1, seed = -1, threads = 0, tp = 1;
    int32_t devices[256];
    int n_devices = 0;
    nvlm_weight_type weights = NVLM_WEIGHTS_AUTO;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        int rc = 0;
        if (cli_is_help(a)) {
            help(stdout);
            return 0;
        } else if (strcmp(a, "-i") == 0 || strcmp(a, "--image") == 0) {
            if (v == NULL || n_paths == MAX_IMAGES) {
                rc = 2;
            } else {
                image_paths[n_paths++] = v;
                i++;
            }
        } else if (strcmp(a, "-p") == 0 || strcmp(a, "--prompt") == 0) {
            prompt = v;
            rc = v == NULL ? 2 : 0;
            i++;
        } else if (strcmp(a, "--system") == 0) {
            system = v;
            rc = v == NULL ? 2 : 0;
            i++;
        } else if (strcmp(a, "--messages") == 0) {
            messages = v;
            rc = v == NULL ? 2 : 0;
            i++;
        } else if (strcmp(a, "--logits-out") == 0) {
            logits_out = v;
            rc = v == NULL ? 2 : 0;
            i++;
        } else if (strcmp(a, "--backend") == 0) {
            if (v != NULL && strcmp(v, "cpu") == 0) {
                backend = NVLM_BACKEND_CPU;
            } else if (v != NULL && strcmp(v, "cuda") == 0) {
                backend = NVLM_BACKEND_CUDA;
            } else if (v != NULL && strcmp(v, "auto") == 0) {
                backend = NVLM_BACKEND_AUTO;
            } else {
                rc = 2;
            }
            i++;
        } else if (strcmp(a, "--json") == 0) {
            json = 1;
        } else if (strcmp(a, "--parse-special") == 0) {
            parse_special = 1;
        } else if (strcmp(a, "-n") == 0 || strcmp(a, "--max-new") == 0) {
            rc = parse_num(a, v, 0, 1 << 30, &max_new);
            i++;
        } else if (strcmp(a, "--temp") == 0) {
            rc = parse_num(a, v, 0, 1e6, &temp);
            i++;
        } else if (strcmp(a, "--top-k") == 0) {
            rc = parse_num(a, v, 0, 1 << 30, &top_k);
            i++;
        } else if (strcmp(a, "--top-p") == 0) {
            rc = parse_num(a, v, 1e-9, 1, &top_p);
            i++;
        } else if (strcmp(a, "--seed") == 0) {
            rc = parse_num(a, v, 0, 1.8e19, &seed);
            i++;
        } else if (strcmp(a, "-t") == 0 || strcmp(a, "--threads") == 0) {
            rc = parse_num(a, v, 1, 4096, &threads);
            i++;
        } else if (strcmp(a, "--tp") == 0) {
            rc = parse_num(a, v, 1, 256, &tp);
            i++;
        } else if (strcmp(a, "--precision") == 0) {
            rc = cli_parse_precision("generate", v, &precision);
            i++;
        } else if (strcmp(a, "--weights") == 0) {
            rc = cli_parse_weights(v, &weights) ? 0 : 2;
            i++;
        } else if (strcmp(a, "--devices") == 0) {
            n_devices = v != NULL ? cli_parse_devices(v, devices, 256) : -1;
            if (n_devices < 0) {
                fprintf(stderr, "nvlm: generate: --devices needs a list such as 0,1,2,3\n");
                rc = 2;
            }
            i++;
        } else if (a[0] == '-' || dir != NULL) {
            fprintf(stderr, "nvlm: generate: unexpected argument '%s'\n", a);
            rc = 2;
        } else {
            dir = a;
        }
        if (rc != 0) {
            help(stderr);
            return 2;
        }
    }
    if (dir == NULL || (prompt == NULL && messages == NULL)) {
        help(stderr);
        return 2;
    }

    int rc = 1;
    nvlm_context *ctx = NULL;
    nvlm_model *model = NULL;
    nvlm_session *s = NULL;
    conv *c = calloc(1, sizeof *c);
    int32_t *ids = NULL;
    nvlm_image **feed_images = NULL;
    gen_state g = {0};
    nvlm_context_params cp;
    nvlm_context_default_params(&cp);
    cp.n_threads = (int32_t)threads;
    cp.backend = backend;
    cp.tp_size = (int32_t)tp;
    cp.n_devices = n_devices;
    cp.devices = n_devices > 0 ? devices : NULL;
    nvlm_status st = NVLM_ERR_OUT_OF_MEMORY;
    if (c == NULL) {
        fprintf(stderr, "nvlm: generate: %s\n", nvlm_status_str(st));
        goto done;
    }
    st = cli_context("generate", &cp, &ctx);
    if (st != NVLM_OK) {
        goto done;
    }
    nvlm_model_params mp;
    nvlm_model_default_params(&mp);
    mp.precision = precision;
    mp.weight_type = weights;
    st = nvlm_model_load(ctx, dir, &mp, &model);
    if (st != NVLM_OK) {
        rc = cli_fail("generate", st, ctx);
        goto done;
    }
    const nvlm_tokenizer *tok = nvlm_model_tokenizer(model);
    if (tok == NULL) {
        fprintf(stderr, "nvlm: generate: %s has no tokenizer\n", dir);
        goto done;
    }
    if (messages != NULL && load_messages(ctx, model, c, messages) != 0) {
        goto done;
    }
    if (c->msgs == NULL) {
        c->msgs = calloc(1, sizeof *c->msgs);
        c->cap_msgs = 1;
        if (c->msgs == NULL) {
            fprintf(stderr, "nvlm: generate: out of memory\n");
            goto done;
        }
    }
    if (prompt != NULL) {
        size_t first = c->n_images;
        for (size_t i = 0; i < n_paths; i++) {
            if (load_image(ctx, model, c, image_paths[i], NULL) != 0) {
                goto done;
            }
        }
        nvlm_chat_message *m = &c->msgs[c->n_msgs++];
        m->role = NVLM_ROLE_USER;
        m->content = prompt;
        m->n_images = c->n_images - first;
        m->image_tiles = m->n_images > 0 ? c->tiles + first : NULL;
    }
    nvlm_prompt_params pp;
    nvlm_prompt_default_params(&pp);
    pp.system_message = system;
    pp.parse_special_in_content = parse_special;
    size_t n_ids = 0;
    st = nvlm_prompt_tokenize(tok, c->msgs, c->n_msgs, &pp, NULL, 0, &n_ids, NULL, 0, NULL);
    if (st != NVLM_OK && st != NVLM_ERR_BUFFER_TOO_SMALL) {
        rc = cli_fail("generate", st, tok); /* the text starts with "prompt: " */
        goto done;
    }
    ids = malloc((n_ids + 1) * sizeof *ids);
    st = ids != NULL ? nvlm_prompt_tokenize(tok, c->msgs, c->n_msgs, &pp, ids, n_ids, &n_ids,
                                            NULL, 0, NULL)
                     : NVLM_ERR_OUT_OF_MEMORY;
    if (st != NVLM_OK) {
        rc = cli_fail("generate", st, tok); /* the text starts with "prompt: " */
        goto done;
    }
    nvlm_session_params sp;
    nvlm_session_default_params(&sp);
    if (seed >= 0) {
        sp.seed = (uint64_t)seed;
    }
    st = nvlm_session_create(model, &sp, &s);
    if (st != NVLM_OK) {
        rc = cli_fail("session", st, model);
        goto done;
    }
    st = nvlm_session_feed(s, ids, n_ids, c->images, c->n_images);
    if (st != NVLM_OK) {
        rc = cli_fail("prefill", st, s);
        goto done;
    }
    nvlm_sampler_params smp;
    nvlm_sampler_default_params(&smp);
    if (max_new >= 0) {
        smp.max_new_tokens = (int32_t)max_new;
    }
    if (temp >= 0) {
        smp.temperature = (float)temp;
    }
    if (top_k >= 0) {
        smp.top_k = (int32_t)top_k;
    }
    if (top_p > 0) {
        smp.top_p = (float)top_p;
    }
    g.s = s;
    g.json = json;
    g.keep_logits = logits_out != NULL;
    nvlm_session_logits(s, &g.vocab);
    nvlm_generate_result res;
    res.struct_size = sizeof res;
    st = nvlm_session_generate(s, &smp, on_token, &g, &res);
    if (st != NVLM_OK || g.failed) {
        rc = g.failed ? (fprintf(stderr, "nvlm: generate: out of memory\n"), 1)
                      : cli_fail("generate", st, s);
        goto done;
    }
    if (json) {
        char *text = answer_text(tok, g.tokens, g.n_tokens);
        cJSON *o = cJSON_CreateObject();
        print_ids(o, "prompt_tokens", ids, n_ids);
        print_ids(o, "tokens", g.tokens, g.n_tokens);
        cJSON_AddStringToObject(o, "text", text != NULL ? text : "");
        char *out = cJSON_PrintUnformatted(o);
        if (out != NULL) {
            printf("%s\n", out);
        }
        cJSON_free(out);
        cJSON_Delete(o);
        free(text);
    } else {
        printf("\n");
    }
    rc = 0;
    if (logits_out != NULL) {
        rc = write_npy(logits_out, g.logits, g.n_tokens, g.vocab);
    }
done:
    free(feed_images);
    free(g.tokens);
    free(g.logits);
    free(ids);
    nvlm_session_free(s);
    if (c != NULL) {
        for (size_t i = 0; i < c->n_images; i++) {
            nvlm_image_free(c->images[i]);
        }
        cJSON_Delete(c->json);
        free(c->msgs);
        free(c);
    }
    nvlm_model_free(model);
    nvlm_context_free(ctx);
    return rc;
}
