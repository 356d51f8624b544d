/*
 * fp8_ckpt.c - FP8 checkpoints in the compressed-tensors format (as vLLM and llm-compressor
 * write them): config.json's quantization_config (top level or inside llm_config), the ignore
 * list (module-name suffixes or "re:" regexes, matched from the start as Python's re.match), and
 * the per-channel or per-tensor `*.weight_scale` tensors that go with F8_E4M3 weights.
 */
#include "fp8.h"
#include "json.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <cJSON.h>
#include <math.h>
#include <string.h>

static const char *jstr(const cJSON *o, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

/* One config group: weights 8-bit float per channel or tensor; activations dynamic or none. */
static nvlm_status check_group(const cJSON *g, const char *name, const char *format, void *eh)
{
    const char *f = jstr(g, "format");
    f = f != NULL ? f : format;
    if (f != NULL && strcmp(f, "float-quantized") != 0) {
        return nv_error(eh, NVLM_ERR_UNSUPPORTED, "config.json: quantization_config group %s "
                        "has format \"%s\" (only float-quantized FP8 is supported)", name, f);
    }
    const cJSON *w = cJSON_GetObjectItemCaseSensitive(g, "weights");
    if (!cJSON_IsObject(w)) {
        return nv_error(eh, NVLM_ERR_FORMAT, "config.json: quantization_config group %s has no "
                        "weights object", name);
    }
    const cJSON *bits = cJSON_GetObjectItemCaseSensitive(w, "num_bits");
    const char *type = jstr(w, "type"), *strategy = jstr(w, "strategy");
    if (!cJSON_IsNumber(bits) || bits->valuedouble != 8.0 || type == NULL ||
        strcmp(type, "float") != 0 || strategy == NULL ||
        (strcmp(strategy, "channel") != 0 && strcmp(strategy, "tensor") != 0)) {
        return nv_error(eh, NVLM_ERR_UNSUPPORTED, "config.json: quantization_config group %s: "
                        "only 8-bit float weights per channel or per tensor are supported", name);
    }
    const cJSON *a = cJSON_GetObjectItemCaseSensitive(g, "input_activations");
    if (a != NULL && !cJSON_IsNull(a)) {
        const cJSON *dyn = cJSON_GetObjectItemCaseSensitive(a, "dynamic");
        if (!cJSON_IsObject(a) || !cJSON_IsTrue(dyn)) {
            return nv_error(eh, NVLM_ERR_UNSUPPORTED, "config.json: quantization_config group "
                            "%s has static input activation scales (only dynamic ones are "
                            "supported)", name);
        }
    }
    return NVLM_OK;
}

/* quant_method "fp8" (per-tensor weight_scale, dynamic activations); the block-wise form
 * (weight_block_size, weight_scale_inv) is not supported. */
static nvlm_status check_fp8_method(const cJSON *qc, void *eh)
{
    const char *act = jstr(qc, "activation_scheme");
    if (act != NULL && strcmp(act, "dynamic") != 0) {
        return nv_error(eh, NVLM_ERR_UNSUPPORTED, "config.json: quantization_config "
                        "activation_scheme \"%s\" is not supported (only dynamic)", act);
    }
    const cJSON *blk = cJSON_GetObjectItemCaseSensitive(qc, "weight_block_size");
    if (blk != NULL && !cJSON_IsNull(blk)) {
        return nv_error(eh, NVLM_ERR_UNSUPPORTED, "config.json: block-wise FP8 "
                        "(weight_block_size) is not supported, only per-channel or per-tensor "
                        "scales");
    }
    return NVLM_OK;
}

static nvlm_status parse_qc(nvlm_context *ctx, const cJSON *qc, fp8_qconfig *out, void *eh)
{
    if (!cJSON_IsObject(qc)) {
        return nv_error(eh, NVLM_ERR_FORMAT, "config.json: quantization_config is not an object");
    }
    const char *method = jstr(qc, "quant_method");
    const char *ignore_key = "ignore";
    if (method != NULL && strcmp(method, "fp8") == 0) {
        NVLM_TRY(check_fp8_method(qc, eh));
        ignore_key = "ignored_layers";
    } else if (method == NULL || strcmp(method, "compressed-tensors") != 0) {
        return nv_error(eh, NVLM_ERR_UNSUPPORTED, "config.json: quantization_config "
                        "quant_method \"%s\" is not supported (only compressed-tensors and "
                        "fp8)", method != NULL ? method : "(none)");
    } else {
        const char *format = jstr(qc, "format");
        const cJSON *groups = cJSON_GetObjectItemCaseSensitive(qc, "config_groups");
        if (!cJSON_IsObject(groups) || groups->child == NULL) {
            return nv_error(eh, NVLM_ERR_FORMAT, "config.json: quantization_config has no "
                            "config_groups");
        }
        for (const cJSON *g = groups->child; g != NULL; g = g->next) {
            NVLM_TRY(check_group(g, g->string != NULL ? g->string : "?", format, eh));
        }
    }
    const cJSON *ign = cJSON_GetObjectItemCaseSensitive(qc, ignore_key);
    if (ign != NULL && !cJSON_IsNull(ign) && !cJSON_IsArray(ign)) {
        return nv_error(eh, NVLM_ERR_FORMAT, "config.json: quantization_config %s is not a "
                        "list", ignore_key);
    }
    size_t n = ign != NULL ? (size_t)cJSON_GetArraySize(ign) : 0;
    out->ignore = n > 0 ? nv_calloc(ctx, n, sizeof *out->ignore) : NULL;
    if (n > 0 && out->ignore == NULL) {
        return nv_error(eh, NVLM_ERR_OUT_OF_MEMORY, "out of memory for the ignore list");
    }
    for (const cJSON *e = ign != NULL ? ign->child : NULL; e != NULL; e = e->next) {
        if (!cJSON_IsString(e)) {
            return nv_error(eh, NVLM_ERR_FORMAT, "config.json: quantization_config %s "
                            "holds a non-string", ignore_key);
        }
        out->ignore[out->n_ignore] = nv_strdup(ctx, e->valuestring);
        if (out->ignore[out->n_ignore] == NULL) {
            return nv_error(eh, NVLM_ERR_OUT_OF_MEMORY, "out of memory for the ignore list");
        }
        out->n_ignore++;
    }
    out->present = true;
    return NVLM_OK;
}

nvlm_status fp8_qconfig_parse(nvlm_context *ctx, const char *json, size_t len, fp8_qconfig *out,
                              void *err_handle)
{
    memset(out, 0, sizeof *out);
    bool oom = false;
    cJSON *root = nv_json_parse(json, len, NULL, &oom);
    if (root == NULL) {
        return nv_json_fail(err_handle, oom, "config.json", "not valid JSON");
    }
    const cJSON *qc = cJSON_GetObjectItemCaseSensitive(root, "quantization_config");
    if (qc == NULL) {
        const cJSON *llm = cJSON_GetObjectItemCaseSensitive(root, "llm_config");
        qc = cJSON_IsObject(llm) ? cJSON_GetObjectItemCaseSensitive(llm, "quantization_config")
                                 : NULL;
    }
    nvlm_status st = qc != NULL && !cJSON_IsNull(qc) ? parse_qc(ctx, qc, out, err_handle)
                                                     : NVLM_OK;
    cJSON_Delete(root);
    if (st != NVLM_OK) {
        fp8_qconfig_free(ctx, out);
    }
    return st;
}

void fp8_qconfig_free(nvlm_context *ctx, fp8_qconfig *q)
{
    if (q == NULL) {
        return;
    }
    for (size_t i = 0; i < q->n_ignore; i++) {
        nv_free(ctx, q->ignore[i]);
    }
    nv_free(ctx, q->ignore);
    memset(q, 0, sizeof *q);
}

static bool re_match(const char *pattern, const char *s)
{
    int err;
    PCRE2_SIZE off;
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)pattern, PCRE2_ZERO_TERMINATED, PCRE2_ANCHORED,
                                   &err, &off, NULL);
    if (re == NULL) {
        return false;
    }
    pcre2_match_data *md = pcre2_match_data_create_from_pattern(re, NULL);
    bool hit = md != NULL &&
               pcre2_match(re, (PCRE2_SPTR)s, strlen(s), 0, 0, md, NULL) >= 0;
    pcre2_match_data_free(md);
    pcre2_code_free(re);
    return hit;
}

bool fp8_ignored(const fp8_qconfig *q, const char *module)
{
    size_t ml = strlen(module);
    for (size_t i = 0; q != NULL && i < q->n_ignore; i++) {
        const char *e = q->ignore[i];
        if (strncmp(e, "re:", 3) == 0) {
            if (re_match(e + 3, module)) {
                return true;
            }
            continue;
        }
        size_t el = strlen(e);
        if (el <= ml && strcmp(module + ml - el, e) == 0 &&
            (el == ml || module[ml - el - 1] == '.')) {
            return true;
        }
    }
    return false;
}

bool fp8_scale_ok(const nv_tensor *s, int64_t N)
{
    if (s->dtype != NV_F32 && s->dtype != NV_BF16) {
        return false;
    }
    int64_t n = nv_tensor_nelem(s);
    return (s->ndim == 2 && s->shape[0] == N && s->shape[1] == 1) ||
           (s->ndim == 1 && (s->shape[0] == N || s->shape[0] == 1)) || (s->ndim == 0 && n == 1);
}

bool fp8_scale_expand(float *out, const nv_tensor *s, int64_t N)
{
    int64_t n = nv_tensor_nelem(s);
    for (int64_t i = 0; i < N; i++) {
        float v;
        nv_to_f32(&v, (const char *)s->data + (size_t)(n == 1 ? 0 : i) * nv_dtype_size(s->dtype),
                  s->dtype, 1);
        if (!(v > 0.0f && v <= 3.40282347e+38f)) {
            return false;
        }
        out[i] = v;
    }
    return true;
}
