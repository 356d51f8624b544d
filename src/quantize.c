/*
 * quantize.c - nvlm_checkpoint_quantize: a bf16/f16/f32 NVLM-D checkpoint directory -> an FP8
 * one in the compressed-tensors format, shard by shard: each of the LLM's seven projections
 * becomes F8_E4M3 codes plus an F32 [N, 1] `weight_scale` by the quantize-on-load rule (fp8.h),
 * every other tensor is copied byte for byte; config.json gets a quantization_config, the
 * index its new weight map, and the tokenizer and generation files are copied. Memory: one
 * shard's header plus one tensor's codes and scales at a time (shards are mapped).
 */
#include "fp8.h"
#include "json.h"
#include "safetensors.h"

#include <cJSON.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define Q_PATH 4096
#define Q_MAX_JSON ((size_t)64 << 20)

static const char *const copied[] = {"generation_config.json", "tokenizer.json",
                                     "tokenizer_config.json",  "vocab.json",
                                     "merges.txt",             "preprocessor_config.json",
                                     "special_tokens_map.json", "added_tokens.json"};

static nvlm_status path_join(nvlm_context *ctx, char *out, const char *dir, const char *name)
{
    int n = snprintf(out, Q_PATH, "%s/%s", dir, name);
    if (n < 0 || n >= Q_PATH) {
        return nv_error(ctx, NVLM_ERR_INVALID_ARGUMENT, "path too long: %s/%s", dir, name);
    }
    return NVLM_OK;
}

static nvlm_status write_all(nvlm_context *ctx, FILE *f, const void *p, size_t n,
                             const char *path)
{
    if (n > 0 && fwrite(p, 1, n, f) != n) {
        return nv_error(ctx, NVLM_ERR_IO, "cannot write %s: %s", path, strerror(errno));
    }
    return NVLM_OK;
}

static nvlm_status write_file(nvlm_context *ctx, const char *path, const void *p, size_t n)
{
    FILE *f = fopen(path, "wb");
    if (f == NULL) {
        return nv_error(ctx, NVLM_ERR_IO, "cannot create %s: %s", path, strerror(errno));
    }
    nvlm_status st = write_all(ctx, f, p, n, path);
    if (fclose(f) != 0 && st == NVLM_OK) {
        st = nv_error(ctx, NVLM_ERR_IO, "cannot write %s: %s", path, strerror(errno));
    }
    return st;
}

static nvlm_status copy_file(nvlm_context *ctx, const char *in_dir, const char *out_dir,
                             const char *name)
{
    char src[Q_PATH], dst[Q_PATH];
    NVLM_TRY(path_join(ctx, src, in_dir, name));
    NVLM_TRY(path_join(ctx, dst, out_dir, name));
    struct stat sb;
    if (stat(src, &sb) != 0) {
        return NVLM_OK; /* optional */
    }
    char *data = NULL;
    size_t len = 0;
    NVLM_TRY(nv_read_file(ctx, ctx, src, Q_MAX_JSON, &data, &len));
    nvlm_status st = write_file(ctx, dst, data, len);
    nv_free(ctx, data);
    return st;
}

static bool quantized(const nv_weight *w)
{
    return fp8_is_projection(w->name) && w->t.ndim == 2 &&
           (w->t.dtype == NV_BF16 || w->t.dtype == NV_F16 || w->t.dtype == NV_F32);
}

static cJSON *shape_json(const int64_t *shape, int ndim)
{
    cJSON *a = cJSON_CreateArray();
    for (int i = 0; a != NULL && i < ndim; i++) {
        cJSON_AddItemToArray(a, cJSON_CreateNumber((double)shape[i]));
    }
    return a;
}

static bool add_entry(cJSON *h, const char *name, nv_dtype dt, const int64_t *shape, int ndim,
                      uint64_t *off, uint64_t bytes)
{
    cJSON *e = cJSON_CreateObject();
    cJSON *o = cJSON_CreateArray();
    if (e == NULL || o == NULL) {
        cJSON_Delete(e);
        cJSON_Delete(o);
        return false;
    }
    cJSON_AddItemToArray(o, cJSON_CreateNumber((double)*off));
    cJSON_AddItemToArray(o, cJSON_CreateNumber((double)(*off + bytes)));
    cJSON_AddStringToObject(e, "dtype", nv_dtype_name(dt));
    cJSON_AddItemToObject(e, "shape", shape_json(shape, ndim));
    cJSON_AddItemToObject(e, "data_offsets", o);
    cJSON_AddItemToObject(h, name, e);
    *off += bytes;
    return true;
}

/* One shard: the header (scales first, so that they are 4-byte aligned), then the data. Adds
 * every name to weight_map (may be NULL) -> file. *bytes: the shard's data bytes. */
static nvlm_status quantize_shard(nvlm_context *ctx, const char *in_dir, const char *out_dir,
                                  const char *file, cJSON *weight_map, uint64_t *bytes)
{
    char src[Q_PATH], dst[Q_PATH];
    NVLM_TRY(path_join(ctx, src, in_dir, file));
    NVLM_TRY(path_join(ctx, dst, out_dir, file));
    nv_st_file *in = NULL;
    NVLM_TRY(nv_st_open_mode(ctx, src, NV_ST_MMAP, ctx, &in));
    size_t n = nv_st_count(in);
    cJSON *h = cJSON_CreateObject();
    bool ok = h != NULL;
    uint64_t off = 0;
    char sname[NV_LAYOUT_NAME_MAX + 16];
    for (int pass = 0; pass < 2 && ok; pass++) {
        for (size_t i = 0; i < n && ok; i++) {
            const nv_weight *w = nv_st_at(in, i);
            if (pass == 0 && quantized(w)) {
                int64_t sh[2] = {w->t.shape[0], 1};
                snprintf(sname, sizeof sname, "%s_scale", w->name);
                ok = add_entry(h, sname, NV_F32, sh, 2, &off, (uint64_t)sh[0] * 4u);
            } else if (pass == 1) {
                nv_dtype dt = quantized(w) ? NV_F8_E4M3 : w->t.dtype;
                uint64_t nb = quantized(w) ? (uint64_t)nv_tensor_nelem(&w->t) : nv_st_nbytes(w);
                ok = add_entry(h, w->name, dt, w->t.shape, w->t.ndim, &off, nb);
            }
            if (ok && weight_map != NULL && (pass == 1 || quantized(w))) {
                ok = cJSON_AddStringToObject(weight_map, pass == 0 ? sname : w->name, file) !=
                     NULL;
            }
        }
    }
    cJSON *meta = ok ? cJSON_CreateObject() : NULL;
    if (meta != NULL) {
        cJSON_AddStringToObject(meta, "format", "pt");
        cJSON_AddItemToObject(h, "__metadata__", meta);
    }
    char *text = meta != NULL ? cJSON_PrintUnformatted(h) : NULL;
    cJSON_Delete(h);
    if (text == NULL) {
        nv_st_close(in);
        return nv_error(ctx, NVLM_ERR_OUT_OF_MEMORY, "out of memory for the header of %s", dst);
    }
    size_t hl = strlen(text), pad = (8 - hl % 8) % 8;
    FILE *f = fopen(dst, "wb");
    nvlm_status st = f != NULL ? NVLM_OK
                               : nv_error(ctx, NVLM_ERR_IO, "cannot create %s: %s", dst,
                                          strerror(errno));
    uint8_t len8[8];
    uint64_t hlen = hl + pad;
    for (int b = 0; b < 8; b++) {
        len8[b] = (uint8_t)(hlen >> (8 * b));
    }
    if (st == NVLM_OK) {
        st = write_all(ctx, f, len8, 8, dst);
    }
    if (st == NVLM_OK) {
        st = write_all(ctx, f, text, hl, dst);
    }
    if (st == NVLM_OK) {
        st = write_all(ctx, f, "        ", pad, dst);
    }
    free(text);
    /* scales, then every tensor: one tensor's codes and scales in memory at a time */
    for (int pass = 0; pass < 2 && st == NVLM_OK; pass++) {
        for (size_t i = 0; i < n && st == NVLM_OK; i++) {
            const nv_weight *w = nv_st_at(in, i);
            if (!quantized(w)) {
                if (pass == 1) {
                    st = write_all(ctx, f, w->t.data, (size_t)nv_st_nbytes(w), dst);
                }
                continue;
            }
            int64_t N = w->t.shape[0], K = w->t.shape[1];
            float *s = nv_alloc_array(ctx, (size_t)N, sizeof(float));
            uint8_t *q = nv_malloc(ctx, (size_t)N * (size_t)K + 1);
            if (s == NULL || q == NULL) {
                st = nv_error(ctx, NVLM_ERR_OUT_OF_MEMORY, "out of memory quantizing %s",
                              w->name);
            } else if (!fp8_quantize(q, s, w->t.data, w->t.dtype, N, K)) {
                st = nv_error(ctx, NVLM_ERR_FORMAT, "tensor %s holds an infinity or NaN: it "
                              "cannot be quantized to FP8", w->name);
            } else if (pass == 0) {
                st = write_all(ctx, f, s, (size_t)N * sizeof(float), dst);
            } else {
                st = write_all(ctx, f, q, (size_t)N * (size_t)K, dst);
            }
            nv_free(ctx, s);
            nv_free(ctx, q);
        }
    }
    if (f != NULL && fclose(f) != 0 && st == NVLM_OK) {
        st = nv_error(ctx, NVLM_ERR_IO, "cannot write %s: %s", dst, strerror(errno));
    }
    *bytes = off;
    nv_st_close(in);
    return st;
}

static cJSON *qconfig_json(void)
{
    const char *text =
        "{\"quant_method\":\"compressed-tensors\",\"format\":\"float-quantized\","
        "\"quantization_status\":\"compressed\",\"config_groups\":{\"group_0\":{"
        "\"targets\":[\"Linear\"],\"weights\":{\"num_bits\":8,\"type\":\"float\","
        "\"strategy\":\"channel\",\"symmetric\":true,\"dynamic\":false},"
        "\"input_activations\":null}},"
        "\"ignore\":[\"language_model.lm_head\",\"re:vision_model\\\\..*\",\"re:mlp1\\\\..*\"]}";
    return cJSON_Parse(text);
}

static nvlm_status write_config(nvlm_context *ctx, const char *in_dir, const char *out_dir)
{
    char src[Q_PATH], dst[Q_PATH];
    NVLM_TRY(path_join(ctx, src, in_dir, "config.json"));
    NVLM_TRY(path_join(ctx, dst, out_dir, "config.json"));
    char *text = NULL;
    size_t len = 0;
    NVLM_TRY(nv_read_file(ctx, ctx, src, Q_MAX_JSON, &text, &len));
    fp8_qconfig qc;
    nvlm_status st = fp8_qconfig_parse(ctx, text, len, &qc, ctx);
    bool present = qc.present;
    fp8_qconfig_free(ctx, &qc);
    bool oom = false;
    cJSON *root = st == NVLM_OK ? nv_json_parse(text, len, NULL, &oom) : NULL;
    nv_free(ctx, text);
    NVLM_TRY(st);
    if (root == NULL) {
        return nv_json_fail(ctx, oom, "config.json", "not valid JSON");
    }
    cJSON *llm = cJSON_GetObjectItemCaseSensitive(root, "llm_config");
    if (present || cJSON_GetObjectItemCaseSensitive(root, "quantization_config") != NULL ||
        (cJSON_IsObject(llm) &&
         cJSON_GetObjectItemCaseSensitive(llm, "quantization_config") != NULL)) {
        cJSON_Delete(root);
        return nv_error(ctx, NVLM_ERR_UNSUPPORTED, "%s: the checkpoint is already quantized",
                        src);
    }
    cJSON *qj = qconfig_json();
    if (qj == NULL) {
        cJSON_Delete(root);
        return nv_error(ctx, NVLM_ERR_OUT_OF_MEMORY, "out of memory for config.json");
    }
    cJSON_AddItemToObject(root, "quantization_config", qj);
    char *out = cJSON_Print(root);
    cJSON_Delete(root);
    if (out == NULL) {
        return nv_error(ctx, NVLM_ERR_OUT_OF_MEMORY, "out of memory for config.json");
    }
    st = write_file(ctx, dst, out, strlen(out));
    free(out);
    return st;
}

nvlm_status nvlm_checkpoint_quantize(nvlm_context *ctx, const char *in_dir, const char *out_dir,
                                     nvlm_progress_fn progress, void *progress_user)
{
    if (ctx == NULL || ctx->h.magic != NV_MAGIC_CONTEXT) {
        return NVLM_ERR_INVALID_ARGUMENT;
    }
    nv_clear(ctx);
    if (in_dir == NULL || out_dir == NULL) {
        return nv_error(ctx, NVLM_ERR_INVALID_ARGUMENT,
                        "nvlm_checkpoint_quantize: in_dir and out_dir are required");
    }
    char a[PATH_MAX], b[PATH_MAX];
    if (realpath(in_dir, a) == NULL) {
        return nv_error(ctx, NVLM_ERR_NOT_FOUND, "%s: %s", in_dir, strerror(errno));
    }
    if (mkdir(out_dir, 0777) != 0 && errno != EEXIST) {
        return nv_error(ctx, NVLM_ERR_IO, "cannot create %s: %s", out_dir, strerror(errno));
    }
    if (realpath(out_dir, b) == NULL || strcmp(a, b) == 0) {
        return nv_error(ctx, NVLM_ERR_INVALID_ARGUMENT, "the output directory %s must be "
                        "another directory than the input", out_dir);
    }
    NVLM_TRY(write_config(ctx, in_dir, out_dir));
    char path[Q_PATH];
    NVLM_TRY(path_join(ctx, path, in_dir, "model.safetensors.index.json"));
    struct stat sb;
    nvlm_status st = NVLM_OK;
    uint64_t total = 0, bytes = 0;
    if (stat(path, &sb) != 0) {
        st = quantize_shard(ctx, in_dir, out_dir, "model.safetensors", NULL, &bytes);
        if (st == NVLM_OK && progress != NULL && progress(progress_user, 1.0f) != 0) {
            st = nv_error(ctx, NVLM_ERR_CANCELLED, "quantization cancelled");
        }
    } else {
        char *text = NULL;
        size_t len = 0;
        NVLM_TRY(nv_read_file(ctx, ctx, path, Q_MAX_JSON, &text, &len));
        bool oom = false;
        cJSON *ix = nv_json_parse(text, len, NULL, &oom);
        nv_free(ctx, text);
        if (ix == NULL) {
            return nv_json_fail(ctx, oom, "model.safetensors.index.json", "not valid JSON");
        }
        cJSON *map = cJSON_GetObjectItemCaseSensitive(ix, "weight_map");
        cJSON *nmap = cJSON_CreateObject();
        if (!cJSON_IsObject(map) || nmap == NULL) {
            cJSON_Delete(ix);
            cJSON_Delete(nmap);
            return nv_error(ctx, NVLM_ERR_FORMAT, "%s: no weight_map", path);
        }
        /* the shard files in order of first mention, each once */
        int n_files = 0, n_unique = 0;
        for (const cJSON *e = map->child; e != NULL; e = e->next) {
            bool seen = !cJSON_IsString(e);
            for (const cJSON *p = map->child; p != e && !seen; p = p->next) {
                seen = cJSON_IsString(p) && strcmp(p->valuestring, e->valuestring) == 0;
            }
            n_unique += !seen;
        }
        for (const cJSON *e = map->child; e != NULL && st == NVLM_OK; e = e->next) {
            if (!cJSON_IsString(e) || strchr(e->valuestring, '/') != NULL) {
                st = nv_error(ctx, NVLM_ERR_FORMAT, "%s: bad shard name for %s", path,
                              e->string);
                break;
            }
            bool seen = false;
            for (const cJSON *p = map->child; p != e && !seen; p = p->next) {
                seen = strcmp(p->valuestring, e->valuestring) == 0;
            }
            if (seen) {
                continue;
            }
            st = quantize_shard(ctx, in_dir, out_dir, e->valuestring, nmap, &bytes);
            total += bytes;
            n_files++;
            if (st == NVLM_OK && progress != NULL &&
                progress(progress_user, (float)n_files / (float)NV_MAX(1, n_unique)) != 0) {
                st = nv_error(ctx, NVLM_ERR_CANCELLED, "quantization cancelled");
            }
        }
        cJSON *out = NULL;
        if (st == NVLM_OK) {
            out = cJSON_CreateObject();
            cJSON *meta = cJSON_CreateObject();
            if (out != NULL && meta != NULL) {
                cJSON_AddNumberToObject(meta, "total_size", (double)total);
                cJSON_AddItemToObject(out, "metadata", meta);
                cJSON_AddItemToObject(out, "weight_map", nmap);
                nmap = NULL;
            } else {
                cJSON_Delete(meta);
            }
        }
        char *otext = out != NULL ? cJSON_Print(out) : NULL;
        if (st == NVLM_OK && otext == NULL) {
            st = nv_error(ctx, NVLM_ERR_OUT_OF_MEMORY, "out of memory for the index");
        }
        if (st == NVLM_OK) {
            char dst[Q_PATH];
            st = path_join(ctx, dst, out_dir, "model.safetensors.index.json");
            if (st == NVLM_OK) {
                st = write_file(ctx, dst, otext, strlen(otext));
            }
        }
        free(otext);
        cJSON_Delete(out);
        cJSON_Delete(nmap);
        cJSON_Delete(ix);
    }
    for (size_t i = 0; i < sizeof copied / sizeof copied[0] && st == NVLM_OK; i++) {
        st = copy_file(ctx, in_dir, out_dir, copied[i]);
    }
    return st;
}
