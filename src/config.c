/*
 * config.c - config.json (NVLM_D: top-level tiling/projector fields, nested vision_config for
 * InternViT and llm_config for Qwen2) and generation_config.json -> nv_config. Every number is
 * range-checked and the derived sizes (head dims, image tokens per tile, projector widths) are
 * computed here; a bad value is NVLM_ERR_FORMAT naming the field. Spec §1.
 */
#include "json.h"
#include "model.h"

#include <cJSON.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

/* Sanity bounds: far above NVLM-D-72B, far below anything that overflows the size math. */
#define MAX_HIDDEN (1 << 16)
#define MAX_INTERMEDIATE (1 << 20)
#define MAX_LAYERS 1024
#define MAX_HEADS 1024
#define MAX_VOCAB (1 << 24)
#define MAX_POSITIONS (1 << 24)
#define MAX_IMAGE 8192
#define MAX_TILES 256

typedef struct reader {
    const cJSON *obj;
    const char *prefix; /* "vision_config." or "" */
    const char *file;   /* "config.json" */
    void *eh;
} reader;

static nvlm_status bad(const reader *r, const char *key, const char *what)
{
    return nv_error(r->eh, NVLM_ERR_FORMAT, "%s: %s%s %s", r->file, r->prefix, key, what);
}

static const cJSON *field(const reader *r, const char *key)
{
    return cJSON_GetObjectItemCaseSensitive(r->obj, key);
}

/* Integer field in [lo, hi]; `dflt` when absent or null and not required. */
static nvlm_status get_int(const reader *r, const char *key, bool required, int dflt, int lo,
                           int hi, int *out)
{
    const cJSON *it = field(r, key);
    if (it == NULL || cJSON_IsNull(it)) {
        if (required) {
            return bad(r, key, "is missing");
        }
        *out = dflt;
        return NVLM_OK;
    }
    if (!cJSON_IsNumber(it)) {
        return bad(r, key, "is not a number");
    }
    double d = it->valuedouble;
    if (!isfinite(d) || floor(d) != d) {
        return bad(r, key, "is not an integer");
    }
    if (d < (double)lo || d > (double)hi) {
        char msg[96];
        snprintf(msg, sizeof msg, "= %.17g is out of range [%d, %d]", d, lo, hi);
        return bad(r, key, msg);
    }
    *out = (int)d;
    return NVLM_OK;
}

/* Real field in (lo, hi]. */
static nvlm_status get_real(const reader *r, const char *key, double dflt, double lo, double hi,
                            double *out)
{
    const cJSON *it = field(r, key);
    if (it == NULL || cJSON_IsNull(it)) {
        *out = dflt;
        return NVLM_OK;
    }
    if (!cJSON_IsNumber(it)) {
        return bad(r, key, "is not a number");
    }
    double d = it->valuedouble;
    if (!isfinite(d) || d <= lo || d > hi) {
        char msg[96];
        snprintf(msg, sizeof msg, "= %.17g is out of range (%g, %g]", d, lo, hi);
        return bad(r, key, msg);
    }
    *out = d;
    return NVLM_OK;
}

/* Boolean field; 0/1 numbers are accepted as the Python configs sometimes write them. */
static nvlm_status get_bool(const reader *r, const char *key, bool dflt, bool *out)
{
    const cJSON *it = field(r, key);
    if (it == NULL || cJSON_IsNull(it)) {
        *out = dflt;
        return NVLM_OK;
    }
    if (cJSON_IsBool(it)) {
        *out = cJSON_IsTrue(it);
        return NVLM_OK;
    }
    if (cJSON_IsNumber(it) && (it->valuedouble == 0.0 || it->valuedouble == 1.0)) {
        *out = it->valuedouble != 0.0;
        return NVLM_OK;
    }
    return bad(r, key, "is not a boolean");
}

/* Optional string field; *out NULL when absent. */
static nvlm_status get_str(const reader *r, const char *key, const char **out)
{
    const cJSON *it = field(r, key);
    *out = NULL;
    if (it == NULL || cJSON_IsNull(it)) {
        return NVLM_OK;
    }
    if (!cJSON_IsString(it)) {
        return bad(r, key, "is not a string");
    }
    *out = it->valuestring;
    return NVLM_OK;
}

/* Token id: integer, null (-1) or a list (its first entry). */
static nvlm_status get_token(const reader *r, const char *key, int vocab, int *out)
{
    const cJSON *it = field(r, key);
    if (cJSON_IsArray(it)) {
        if (cJSON_GetArraySize(it) == 0) {
            *out = -1;
            return NVLM_OK;
        }
        it = it->child;
        if (!cJSON_IsNumber(it)) {
            return bad(r, key, "[0] is not a number");
        }
        double d = it->valuedouble;
        if (!isfinite(d) || floor(d) != d || d < 0 || d >= vocab) {
            return bad(r, key, "[0] is not a token id below vocab_size");
        }
        *out = (int)d;
        return NVLM_OK;
    }
    return get_int(r, key, false, -1, -1, vocab - 1, out);
}

static nvlm_status parse_vision(const cJSON *obj, nv_vision_config *v, void *eh)
{
    reader r = {obj, "vision_config.", "config.json", eh};
    NVLM_TRY(get_int(&r, "hidden_size", true, 0, 1, MAX_HIDDEN, &v->hidden_size));
    NVLM_TRY(get_int(&r, "intermediate_size", true, 0, 1, MAX_INTERMEDIATE,
                     &v->intermediate_size));
    NVLM_TRY(get_int(&r, "num_hidden_layers", true, 0, 1, MAX_LAYERS, &v->num_layers));
    NVLM_TRY(get_int(&r, "num_attention_heads", true, 0, 1, MAX_HEADS, &v->num_heads));
    NVLM_TRY(get_int(&r, "image_size", false, 448, 1, MAX_IMAGE, &v->image_size));
    NVLM_TRY(get_int(&r, "patch_size", false, 14, 1, MAX_IMAGE, &v->patch_size));
    NVLM_TRY(get_int(&r, "num_channels", false, 3, 1, 16, &v->num_channels));
    NVLM_TRY(get_real(&r, "layer_norm_eps", 1e-6, 0.0, 1.0, &v->layer_norm_eps));
    NVLM_TRY(get_bool(&r, "qk_normalization", true, &v->qk_normalization));
    NVLM_TRY(get_bool(&r, "qkv_bias", false, &v->qkv_bias));
    const char *norm;
    NVLM_TRY(get_str(&r, "norm_type", &norm));
    if (norm != NULL && strcmp(norm, "rms_norm") != 0) {
        return nv_error(eh, NVLM_ERR_UNSUPPORTED,
                        "config.json: vision_config.norm_type '%.40s' (only rms_norm)", norm);
    }
    if (v->hidden_size % v->num_heads != 0) {
        return bad(&r, "num_attention_heads", "does not divide hidden_size");
    }
    if (v->image_size % v->patch_size != 0) {
        return bad(&r, "patch_size", "does not divide image_size");
    }
    v->head_dim = v->hidden_size / v->num_heads;
    v->num_dummy_heads = 7; /* the reference's value; the loader derives it from the qkv shape */
    return NVLM_OK;
}

static nvlm_status parse_llm(const cJSON *obj, nv_llm_config *l, void *eh)
{
    reader r = {obj, "llm_config.", "config.json", eh};
    NVLM_TRY(get_int(&r, "hidden_size", true, 0, 1, MAX_HIDDEN, &l->hidden_size));
    NVLM_TRY(get_int(&r, "intermediate_size", true, 0, 1, MAX_INTERMEDIATE,
                     &l->intermediate_size));
    NVLM_TRY(get_int(&r, "num_hidden_layers", true, 0, 1, MAX_LAYERS, &l->num_layers));
    NVLM_TRY(get_int(&r, "num_attention_heads", true, 0, 1, MAX_HEADS, &l->num_heads));
    NVLM_TRY(get_int(&r, "num_key_value_heads", false, l->num_heads, 1, MAX_HEADS,
                     &l->num_kv_heads));
    NVLM_TRY(get_int(&r, "vocab_size", true, 0, 1, MAX_VOCAB, &l->vocab_size));
    NVLM_TRY(get_int(&r, "max_position_embeddings", false, 32768, 1, MAX_POSITIONS,
                     &l->max_position_embeddings));
    NVLM_TRY(get_real(&r, "rope_theta", 10000.0, 0.0, 1e12, &l->rope_theta));
    NVLM_TRY(get_real(&r, "rms_norm_eps", 1e-6, 0.0, 1.0, &l->rms_norm_eps));
    NVLM_TRY(get_bool(&r, "tie_word_embeddings", false, &l->tie_word_embeddings));
    NVLM_TRY(get_token(&r, "bos_token_id", l->vocab_size, &l->bos_token_id));
    NVLM_TRY(get_token(&r, "eos_token_id", l->vocab_size, &l->eos_token_id));
    NVLM_TRY(get_token(&r, "pad_token_id", l->vocab_size, &l->pad_token_id));
    if (l->hidden_size % l->num_heads != 0) {
        return bad(&r, "num_attention_heads", "does not divide hidden_size");
    }
    if (l->num_heads % l->num_kv_heads != 0) {
        return bad(&r, "num_key_value_heads", "does not divide num_attention_heads");
    }
    l->head_dim = l->hidden_size / l->num_heads;
    if (l->head_dim % 2 != 0) {
        return bad(&r, "num_attention_heads", "gives an odd head_dim (RoPE needs pairs)");
    }
    return NVLM_OK;
}

static nvlm_status parse_top(const cJSON *root, nv_config *cfg, void *eh)
{
    reader r = {root, "", "config.json", eh};
    const cJSON *vis = field(&r, "vision_config");
    const cJSON *llm = field(&r, "llm_config");
    if (!cJSON_IsObject(vis)) {
        return bad(&r, "vision_config", "is missing or not an object");
    }
    if (!cJSON_IsObject(llm)) {
        return bad(&r, "llm_config", "is missing or not an object");
    }
    NVLM_TRY(parse_vision(vis, &cfg->vision, eh));
    NVLM_TRY(parse_llm(llm, &cfg->llm, eh));

    NVLM_TRY(get_real(&r, "downsample_ratio", 0.5, 0.0, 1.0, &cfg->downsample_ratio));
    NVLM_TRY(get_int(&r, "force_image_size", false, cfg->vision.image_size, 1, MAX_IMAGE,
                     &cfg->force_image_size));
    NVLM_TRY(get_int(&r, "min_dynamic_patch", false, 1, 1, MAX_TILES, &cfg->min_dynamic_patch));
    NVLM_TRY(get_int(&r, "max_dynamic_patch", false, 6, 1, MAX_TILES, &cfg->max_dynamic_patch));
    NVLM_TRY(get_bool(&r, "use_thumbnail", false, &cfg->use_thumbnail));
    NVLM_TRY(get_bool(&r, "dynamic_image_size", false, &cfg->dynamic_image_size));
    NVLM_TRY(get_int(&r, "select_layer", false, -1, -MAX_LAYERS, MAX_LAYERS, &cfg->select_layer));
    if (cfg->min_dynamic_patch > cfg->max_dynamic_patch) {
        return bad(&r, "min_dynamic_patch", "is greater than max_dynamic_patch");
    }
    if (cfg->force_image_size != cfg->vision.image_size) {
        return nv_error(eh, NVLM_ERR_UNSUPPORTED,
                        "config.json: force_image_size %d differs from vision_config.image_size %d",
                        cfg->force_image_size, cfg->vision.image_size);
    }
    if (cfg->select_layer != -1) {
        return nv_error(eh, NVLM_ERR_UNSUPPORTED,
                        "config.json: select_layer %d (only -1, the last layer)",
                        cfg->select_layer);
    }
    const char *ps;
    NVLM_TRY(get_str(&r, "ps_version", &ps));
    if (ps == NULL || strcmp(ps, "v2") != 0) {
        return nv_error(eh, NVLM_ERR_UNSUPPORTED, "config.json: ps_version '%.20s' (only v2)",
                        ps != NULL ? ps : "v1 (default)");
    }
    cfg->ps_version = 2;
    const char *tmpl;
    NVLM_TRY(get_str(&r, "template", &tmpl));
    if (tmpl == NULL) {
        tmpl = "chatml";
    }
    if (strlen(tmpl) >= sizeof cfg->template_name) {
        return bad(&r, "template", "is too long");
    }
    snprintf(cfg->template_name, sizeof cfg->template_name, "%s", tmpl);

    /* Pixel shuffle by k = 1/downsample_ratio: the (g x g) patch grid becomes (g/k x g/k)
     * tokens of k^2 * hidden features, so k must be an integer dividing g. */
    double kd = 1.0 / cfg->downsample_ratio;
    int k = (int)lround(kd);
    int grid = cfg->vision.image_size / cfg->vision.patch_size;
    if (k < 1 || fabs(kd - k) > 1e-9 || grid % k != 0) {
        return bad(&r, "downsample_ratio", "is not 1/k for an integer k dividing the patch grid");
    }
    int64_t proj_in = (int64_t)cfg->vision.hidden_size * k * k;
    if (proj_in > MAX_INTERMEDIATE) {
        return bad(&r, "downsample_ratio", "makes the projector input too wide");
    }
    cfg->num_image_token = (grid / k) * (grid / k);
    cfg->proj_input_size = (int)proj_in;
    cfg->proj_hidden_size = cfg->llm.intermediate_size;
    cfg->proj_output_size = cfg->llm.hidden_size;

    cfg->gen_max_new_tokens = 1024;
    cfg->gen_n_eos = 0;
    if (cfg->llm.eos_token_id >= 0) {
        cfg->gen_eos_ids[0] = cfg->llm.eos_token_id;
        cfg->gen_n_eos = 1;
    }
    cfg->gen_do_sample = false;
    return NVLM_OK;
}

nvlm_status nv_config_parse(nv_config *cfg, const char *json, size_t len, void *err_handle)
{
    memset(cfg, 0, sizeof *cfg);
    bool oom;
    cJSON *root = nv_json_parse(json, len, NULL, &oom);
    if (root == NULL) {
        return nv_json_fail(err_handle, oom, "config.json", "not valid JSON");
    }
    nvlm_status st;
    if (!cJSON_IsObject(root)) {
        st = nv_error(err_handle, NVLM_ERR_FORMAT, "config.json: not a JSON object");
    } else {
        st = parse_top(root, cfg, err_handle);
    }
    cJSON_Delete(root);
    return st;
}

nvlm_status nv_gen_config_parse(nv_config *cfg, const char *json, size_t len, void *err_handle)
{
    bool oom;
    cJSON *root = nv_json_parse(json, len, NULL, &oom);
    if (root == NULL) {
        return nv_json_fail(err_handle, oom, "generation_config.json", "not a valid JSON object");
    }
    if (!cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return nv_error(err_handle, NVLM_ERR_FORMAT,
                        "generation_config.json: not a valid JSON object");
    }
    reader r = {root, "", "generation_config.json", err_handle};
    nvlm_status st = get_int(&r, "max_new_tokens", false, cfg->gen_max_new_tokens, 1,
                             MAX_POSITIONS, &cfg->gen_max_new_tokens);
    if (st == NVLM_OK) {
        st = get_bool(&r, "do_sample", cfg->gen_do_sample, &cfg->gen_do_sample);
    }
    const cJSON *eos = field(&r, "eos_token_id");
    if (st == NVLM_OK && cJSON_IsArray(eos)) {
        int n = cJSON_GetArraySize(eos);
        if (n > (int)NV_ARRAY_LEN(cfg->gen_eos_ids)) {
            st = bad(&r, "eos_token_id", "lists more than 4 ids");
        }
        int i = 0;
        for (const cJSON *it = eos->child; st == NVLM_OK && it != NULL; it = it->next, i++) {
            double d = it->valuedouble;
            if (!cJSON_IsNumber(it) || !isfinite(d) || floor(d) != d || d < 0 ||
                d >= cfg->llm.vocab_size) {
                st = bad(&r, "eos_token_id", "holds a value that is not a token id");
            } else {
                cfg->gen_eos_ids[i] = (int)d;
            }
        }
        if (st == NVLM_OK) {
            cfg->gen_n_eos = n;
        }
    } else if (st == NVLM_OK && eos != NULL && !cJSON_IsNull(eos)) {
        int id;
        st = get_int(&r, "eos_token_id", true, 0, 0, cfg->llm.vocab_size - 1, &id);
        if (st == NVLM_OK) {
            cfg->gen_eos_ids[0] = id;
            cfg->gen_n_eos = 1;
        }
    }
    cJSON_Delete(root);
    return st;
}
