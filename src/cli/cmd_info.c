/*
 * cmd_info.c - `nvlm info MODEL_DIR [--json] [--config-only]`: a model's dimensions, tensor
 * dtypes, parameter count and memory needs per backend, from the public API (plus a look at
 * the already validated shard headers for the dtype histogram).
 */
#include "cli.h"

#include <cJSON.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MAX_DTYPES 16

typedef struct dtype_stat {
    char name[16];
    uint64_t tensors;
    uint64_t bytes;
} dtype_stat;

static void help(FILE *f)
{
    fprintf(f,
            "usage: nvlm info MODEL_DIR [--json] [--config-only] [--tp N] [--precision P]\n"
            "       [--weights TYPE]\n"
            "\n"
            "Shows an NVLM-D model's vision/projector/LLM dimensions, the dtypes of its tensors,\n"
            "its parameter count (dummy ViT heads included) and the memory it needs per backend.\n"
            "Weights are loaded and checked when present; a directory with only config.json\n"
            "(and model.safetensors.index.json) is read config-only.\n"
            "\n"
            "  --json          print one JSON object: vision, projector and llm objects with\n"
            "                  config.json's field names, params, weight_bytes, tile settings;\n"
            "                  memory.cuda: the CUDA estimate per device behind the fit check\n"
            "                  (weights, workspace, activations, KV cache per token and for\n"
            "                  the default context, headroom, load_bytes)\n"
            "  --config-only   never map the weights (shard headers are still checked)\n"
            "  --tp N          the weight bytes of the largest of N tensor-parallel ranks\n"
            "                  (as the CUDA backend stores them): per_rank_weight_bytes\n"
            "  --precision P   load with exact (default) or fast precision (bf16 GEMM inputs,\n"
            "                  bf16 KV cache by default): the precision line / key\n"
            "  --weights TYPE  auto (as stored), bf16 or fp8: the memory figures for that\n"
            "                  weight type (fp8: the LLM's linear layers as E4M3 + scales)\n"
            "  -h, --help      this text\n");
}

static int show_progress(void *user, float fraction)
{
    (void)user;
    int width = 30;
    int done = (int)(fraction * (float)width + 0.5f);
    fprintf(stderr, "\rloading [");
    for (int i = 0; i < width; i++) {
        fputc(i < done ? '=' : ' ', stderr);
    }
    fprintf(stderr, "] %3d%%", (int)(fraction * 100.0f + 0.5f));
    if (fraction >= 1.0f) {
        fputc('\n', stderr);
    }
    fflush(stderr);
    return 0;
}

/* Adds one shard header's tensors to the histogram. The library already validated the file. */
static void count_file(const char *path, dtype_stat *st, int *n_st)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        return;
    }
    unsigned char pre[8];
    uint64_t hlen = 0;
    if (fread(pre, 1, 8, f) == 8) {
        for (int i = 7; i >= 0; i--) {
            hlen = (hlen << 8) | pre[i];
        }
    }
    char *hdr = hlen > 0 && hlen <= (100u << 20) ? malloc((size_t)hlen) : NULL;
    if (hdr == NULL || fread(hdr, 1, (size_t)hlen, f) != hlen) {
        free(hdr);
        fclose(f);
        return;
    }
    fclose(f);
    cJSON *root = cJSON_ParseWithLength(hdr, (size_t)hlen);
    free(hdr);
    const cJSON *t;
    cJSON_ArrayForEach(t, root)
    {
        const cJSON *dt = cJSON_GetObjectItemCaseSensitive(t, "dtype");
        const cJSON *off = cJSON_GetObjectItemCaseSensitive(t, "data_offsets");
        if (!cJSON_IsString(dt) || cJSON_GetArraySize(off) != 2) {
            continue;
        }
        int k = 0;
        while (k < *n_st && strcmp(st[k].name, dt->valuestring) != 0) {
            k++;
        }
        if (k == *n_st) {
            if (*n_st == MAX_DTYPES) {
                continue;
            }
            snprintf(st[k].name, sizeof st[k].name, "%s", dt->valuestring);
            (*n_st)++;
        }
        st[k].tensors++;
        st[k].bytes += (uint64_t)(cJSON_GetArrayItem(off, 1)->valuedouble -
                                  cJSON_GetArrayItem(off, 0)->valuedouble);
    }
    cJSON_Delete(root);
}

/* dtype histogram over the checkpoint's shards (empty when there are none). */
static int dtype_histogram(const char *dir, dtype_stat *st)
{
    int n = 0;
    char path[4096];
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        snprintf(path, sizeof path, "%s/model.safetensors", dir);
        count_file(path, st, &n);
        return n;
    }
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    rewind(f);
    char *text = len > 0 && len < (64L << 20) ? malloc((size_t)len) : NULL;
    if (text == NULL || fread(text, 1, (size_t)len, f) != (size_t)len) {
        free(text);
        fclose(f);
        return 0;
    }
    fclose(f);
    cJSON *root = cJSON_ParseWithLength(text, (size_t)len);
    free(text);
    const cJSON *map = cJSON_GetObjectItemCaseSensitive(root, "weight_map");
    /* Each distinct shard once: the index lists shards in runs, compare with all seen. */
    const char *seen[4096];
    int n_seen = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, map)
    {
        if (!cJSON_IsString(e)) {
            continue;
        }
        int k = 0;
        while (k < n_seen && strcmp(seen[k], e->valuestring) != 0) {
            k++;
        }
        if (k < n_seen || n_seen == 4096) {
            continue;
        }
        seen[n_seen++] = e->valuestring;
        snprintf(path, sizeof path, "%s/%s", dir, e->valuestring);
        count_file(path, st, &n);
    }
    cJSON_Delete(root);
    return n;
}

static void human(char *buf, size_t cap, uint64_t bytes)
{
    const char *units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    double v = (double)bytes;
    int u = 0;
    while (v >= 1024.0 && u < 4) {
        v /= 1024.0;
        u++;
    }
    snprintf(buf, cap, "%.2f %s", v, units[u]);
}

static void print_json(const char *dir, const nvlm_model_info *i, const dtype_stat *st, int n_st,
                       nvlm_precision prec)
{
    cJSON *root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "model_dir", dir);
    cJSON_AddBoolToObject(root, "weights_loaded", i->weights_loaded);
    cJSON *v = cJSON_AddObjectToObject(root, "vision");
    cJSON_AddNumberToObject(v, "hidden_size", i->vision_hidden_size);
    cJSON_AddNumberToObject(v, "intermediate_size", i->vision_intermediate_size);
    cJSON_AddNumberToObject(v, "num_hidden_layers", i->vision_num_hidden_layers);
    cJSON_AddNumberToObject(v, "num_attention_heads", i->vision_num_attention_heads);
    cJSON_AddNumberToObject(v, "num_dummy_heads", i->vision_num_dummy_heads);
    cJSON_AddNumberToObject(v, "head_dim", i->vision_head_dim);
    cJSON_AddNumberToObject(v, "image_size", i->vision_image_size);
    cJSON_AddNumberToObject(v, "patch_size", i->vision_patch_size);
    cJSON_AddNumberToObject(v, "layer_norm_eps", i->vision_layer_norm_eps);
    cJSON *p = cJSON_AddObjectToObject(root, "projector");
    cJSON_AddNumberToObject(p, "downsample_ratio", i->downsample_ratio);
    cJSON_AddNumberToObject(p, "num_image_token", i->num_image_token);
    cJSON_AddNumberToObject(p, "input_size", i->projector_input_size);
    cJSON_AddNumberToObject(p, "hidden_size", i->projector_hidden_size);
    cJSON_AddNumberToObject(p, "output_size", i->projector_output_size);
    cJSON *l = cJSON_AddObjectToObject(root, "llm");
    cJSON_AddNumberToObject(l, "hidden_size", i->llm_hidden_size);
    cJSON_AddNumberToObject(l, "intermediate_size", i->llm_intermediate_size);
    cJSON_AddNumberToObject(l, "num_hidden_layers", i->llm_num_hidden_layers);
    cJSON_AddNumberToObject(l, "num_attention_heads", i->llm_num_attention_heads);
    cJSON_AddNumberToObject(l, "num_key_value_heads", i->llm_num_key_value_heads);
    cJSON_AddNumberToObject(l, "head_dim", i->llm_head_dim);
    cJSON_AddNumberToObject(l, "vocab_size", i->vocab_size);
    cJSON_AddNumberToObject(l, "max_position_embeddings", i->max_position_embeddings);
    cJSON_AddNumberToObject(l, "rope_theta", i->rope_theta);
    cJSON_AddNumberToObject(l, "rms_norm_eps", i->rms_norm_eps);
    cJSON_AddNumberToObject(l, "bos_token_id", i->bos_token_id);
    cJSON_AddNumberToObject(l, "eos_token_id", i->eos_token_id);
    cJSON_AddNumberToObject(l, "pad_token_id", i->pad_token_id);
    cJSON_AddNumberToObject(root, "force_image_size", i->image_size);
    cJSON_AddNumberToObject(root, "min_dynamic_patch", i->min_dynamic_patch);
    cJSON_AddNumberToObject(root, "max_dynamic_patch", i->max_dynamic_patch);
    cJSON_AddBoolToObject(root, "use_thumbnail", i->use_thumbnail);
    cJSON_AddNumberToObject(root, "image_context_token_id", i->image_context_token_id);
    cJSON_AddNumberToObject(root, "tokenizer_vocab_size", i->tokenizer_vocab_size);
    cJSON_AddNumberToObject(root, "params", (double)i->n_params);
    cJSON_AddNumberToObject(root, "weight_bytes", (double)i->weight_bytes);
    cJSON_AddNumberToObject(root, "tp_size", i->tp_size);
    cJSON_AddNumberToObject(root, "per_rank_weight_bytes", (double)i->per_rank_weight_bytes);
    cJSON_AddStringToObject(root, "weight_type",
                            i->weight_type == NVLM_WEIGHTS_FP8 ? "fp8" : "bf16");
    cJSON *m = cJSON_AddObjectToObject(root, "memory");
    cJSON_AddNumberToObject(m, "cpu_bytes", (double)i->cpu_bytes);
    cJSON_AddNumberToObject(m, "cuda_bytes", (double)i->cuda_bytes);
    cJSON_AddNumberToObject(m, "kv_bytes_per_token_f32", (double)i->kv_bytes_per_token_f32);
    cJSON_AddNumberToObject(m, "kv_bytes_per_token_bf16", (double)i->kv_bytes_per_token_bf16);
    /* the CUDA estimate per device (rank) behind the fit check */
    cJSON *c = cJSON_AddObjectToObject(m, "cuda");
    cJSON_AddNumberToObject(c, "weights_bytes", (double)i->per_rank_weight_bytes);
    cJSON_AddNumberToObject(c, "workspace_bytes", (double)i->cuda_workspace_bytes);
    cJSON_AddNumberToObject(c, "activation_bytes", (double)i->cuda_activation_bytes);
    cJSON_AddNumberToObject(c, "kv_bytes_per_token", (double)i->cuda_kv_bytes_per_token);
    cJSON_AddNumberToObject(c, "default_n_ctx", i->cuda_default_n_ctx);
    cJSON_AddNumberToObject(c, "kv_bytes_default_ctx", (double)i->cuda_kv_bytes_default_ctx);
    cJSON_AddNumberToObject(c, "headroom_bytes", (double)i->cuda_headroom_bytes);
    cJSON_AddNumberToObject(c, "load_n_ctx", i->cuda_load_n_ctx);
    cJSON_AddNumberToObject(c, "load_bytes", (double)i->cuda_load_bytes);
    cJSON_AddNumberToObject(c, "default_ctx_bytes", (double)i->cuda_default_ctx_bytes);
    cJSON_AddStringToObject(root, "precision", prec == NVLM_PRECISION_FAST ? "fast" : "exact");
    cJSON *d = cJSON_AddObjectToObject(root, "dtypes");
    for (int k = 0; k < n_st; k++) {
        cJSON *e = cJSON_AddObjectToObject(d, st[k].name);
        cJSON_AddNumberToObject(e, "tensors", (double)st[k].tensors);
        cJSON_AddNumberToObject(e, "bytes", (double)st[k].bytes);
    }
    char *text = cJSON_Print(root);
    if (text != NULL) {
        printf("%s\n", text);
    }
    free(text);
    cJSON_Delete(root);
}

static void print_table(const char *dir, const nvlm_model_info *i, const dtype_stat *st,
                        int n_st, nvlm_precision prec)
{
    char a[32];
    char b[32];
    printf("model         %s (%s)\n", dir, i->weights_loaded ? "weights loaded" : "config only");
    printf("vision        hidden %d, MLP %d, %d layers, %d heads + %d dummy (head_dim %d), "
           "image %d, patch %d\n",
           i->vision_hidden_size, i->vision_intermediate_size, i->vision_num_hidden_layers,
           i->vision_num_attention_heads, i->vision_num_dummy_heads, i->vision_head_dim,
           i->vision_image_size, i->vision_patch_size);
    printf("projector     pixel shuffle x%g -> %d tokens/tile, %d -> %d -> %d\n",
           i->downsample_ratio, i->num_image_token, i->projector_input_size,
           i->projector_hidden_size, i->projector_output_size);
    printf("llm           hidden %d, MLP %d, %d layers, %d heads / %d KV heads (head_dim %d), "
           "vocab %d, max positions %d, rope_theta %g\n",
           i->llm_hidden_size, i->llm_intermediate_size, i->llm_num_hidden_layers,
           i->llm_num_attention_heads, i->llm_num_key_value_heads, i->llm_head_dim,
           i->vocab_size, i->max_position_embeddings, i->rope_theta);
    printf("tokens        bos %d, eos %d, pad %d, image context %d, tokenizer vocab %d\n",
           i->bos_token_id, i->eos_token_id, i->pad_token_id, i->image_context_token_id,
           i->tokenizer_vocab_size);
    printf("tiles         %dx%d, %d..%d tiles, thumbnail %s\n", i->image_size, i->image_size,
           i->min_dynamic_patch, i->max_dynamic_patch, i->use_thumbnail ? "yes" : "no");
    printf("parameters    %llu (%.2f B, dummy heads included)\n",
           (unsigned long long)i->n_params, (double)i->n_params / 1e9);
    human(a, sizeof a, i->weight_bytes);
    printf("weights       %llu bytes (%s) as stored\n", (unsigned long long)i->weight_bytes, a);
    for (int k = 0; k < n_st; k++) {
        human(a, sizeof a, st[k].bytes);
        printf("  %-10s  %llu tensors, %s\n", st[k].name, (unsigned long long)st[k].tensors, a);
    }
    human(a, sizeof a, i->cpu_bytes);
    int fp8 = i->weight_type == NVLM_WEIGHTS_FP8;
    printf("memory cpu    %s weights (%s)\n", a,
           fp8 ? "LLM projections FP8 + scales, the rest in place" : "used in place");
    human(a, sizeof a, i->cuda_bytes);
    printf("memory cuda   %s weights (%s)\n", a,
           fp8 ? "LLM projections FP8 + scales, matrices bf16, vectors f32"
               : "matrices bf16, vectors f32");
    if (i->tp_size > 1) {
        human(a, sizeof a, i->per_rank_weight_bytes);
        printf("per rank      %s weights on the largest of %d tensor-parallel ranks\n", a,
               i->tp_size);
    }
    human(a, sizeof a, i->kv_bytes_per_token_f32);
    human(b, sizeof b, i->kv_bytes_per_token_bf16);
    printf("kv cache      %s per token (f32), %s per token (bf16)\n", a, b);
    human(a, sizeof a, i->cuda_load_bytes);
    human(b, sizeof b, i->cuda_default_ctx_bytes);
    printf("cuda device   needs %s free to load (%d-token pass), %s with a session at the "
           "default context (%d tokens)%s\n", a, i->cuda_load_n_ctx, b, i->cuda_default_n_ctx,
           i->tp_size > 1 ? ", per rank" : "");
    char w[32], k[32];
    human(a, sizeof a, i->cuda_workspace_bytes);
    human(b, sizeof b, i->cuda_activation_bytes);
    human(w, sizeof w, i->cuda_kv_bytes_per_token);
    human(k, sizeof k, i->cuda_kv_bytes_default_ctx);
    printf("  per session workspace %s, activations %s, KV cache %s per token (bf16), %s for "
           "the default context\n", a, b, w, k);
    printf("precision     %s\n", prec == NVLM_PRECISION_FAST
                                     ? "fast (bf16 GEMM inputs, f32 sums; KV cache bf16 on the CPU)"
                                     : "exact (f32 GEMMs; KV cache f32 on the CPU)");
}

int cmd_info(int argc, char **argv)
{
    const char *dir = NULL;
    int json = 0;
    int config_only = 0;
    long tp = 1;
    nvlm_precision precision = NVLM_PRECISION_EXACT;
    nvlm_weight_type weights = NVLM_WEIGHTS_AUTO;
    for (int i = 1; i < argc; i++) {
        if (cli_is_help(argv[i])) {
            help(stdout);
            return 0;
        } else if (strcmp(argv[i], "--tp") == 0) {
            char *end = NULL;
            tp = i + 1 < argc ? strtol(argv[i + 1], &end, 10) : 0;
            if (end == NULL || end == argv[i + 1] || *end != '\0' || tp < 1 || tp > 256) {
                fprintf(stderr, "nvlm: info: --tp needs a rank count in [1, 256]\n");
                return 2;
            }
            i++;
        } else if (strcmp(argv[i], "--precision") == 0) {
            if (cli_parse_precision("info", i + 1 < argc ? argv[i + 1] : NULL, &precision)) {
                help(stderr);
                return 2;
            }
            i++;
        } else if (strcmp(argv[i], "--weights") == 0) {
            if (!cli_parse_weights(i + 1 < argc ? argv[i + 1] : NULL, &weights)) {
                return 2;
            }
            i++;
        } else if (strcmp(argv[i], "--json") == 0) {
            json = 1;
        } else if (strcmp(argv[i], "--config-only") == 0) {
            config_only = 1;
        } else if (argv[i][0] == '-' || dir != NULL) {
            fprintf(stderr, "nvlm info: unexpected argument '%s'\n", argv[i]);
            help(stderr);
            return 2;
        } else {
            dir = argv[i];
        }
    }
    if (dir == NULL) {
        help(stderr);
        return 2;
    }
    nvlm_context_params cp;
    nvlm_context_default_params(&cp);
    cp.tp_size = (int32_t)tp;
    nvlm_context *ctx;
    nvlm_status st = nvlm_context_create(&cp, &ctx);
    if (st != NVLM_OK) {
        return cli_fail("context", st, NULL);
    }
    nvlm_model_params mp;
    nvlm_model_default_params(&mp);
    mp.mode = config_only ? NVLM_LOAD_CONFIG_ONLY : NVLM_LOAD_FULL;
    mp.precision = precision;
    mp.weight_type = weights;
    if (isatty(STDERR_FILENO)) {
        mp.progress = show_progress;
    }
    nvlm_model *model = NULL;
    st = nvlm_model_load(ctx, dir, &mp, &model);
    if (st == NVLM_ERR_NOT_FOUND && !config_only) {
        /* Weights missing (a config + index download, or a partial one): say which file is
         * missing, then fall back to what config.json and the index tell. */
        fprintf(stderr, "nvlm: info: %s; showing config-only figures\n", nvlm_last_error(ctx));
        mp.mode = NVLM_LOAD_CONFIG_ONLY;
        st = nvlm_model_load(ctx, dir, &mp, &model);
    }
    if (st != NVLM_OK) {
        int rc = cli_fail("info", st, ctx);
        nvlm_context_free(ctx);
        return rc;
    }
    nvlm_model_info info;
    memset(&info, 0, sizeof info);
    info.struct_size = sizeof info;
    st = nvlm_model_get_info(model, &info);
    if (st != NVLM_OK) {
        int rc = cli_fail("info", st, model);
        nvlm_model_free(model);
        nvlm_context_free(ctx);
        return rc;
    }
    if (info.tp_size > 1 && info.per_rank_weight_bytes == 0) {
        fprintf(stderr, "nvlm: info: --tp %d: must be 1 .. %d (the LLM's query heads)\n",
                info.tp_size, info.llm_num_attention_heads);
        nvlm_model_free(model);
        nvlm_context_free(ctx);
        return 2;
    }
    dtype_stat hist[MAX_DTYPES];
    memset(hist, 0, sizeof hist);
    int n_hist = dtype_histogram(dir, hist);
    if (json) {
        print_json(dir, &info, hist, n_hist, precision);
    } else {
        print_table(dir, &info, hist, n_hist, precision);
    }
    nvlm_model_free(model);
    nvlm_context_free(ctx);
    return 0;
}
