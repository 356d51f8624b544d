/*
 * test_model_load.c - nvlm_model_load and nvlm_model_get_info: the tiny fixture (full, mmap and
 * read), the real NVLM-D-72B config + index (config-only), a corpus of hostile model
 * directories built from the tiny checkpoint (each with its status and the name its message
 * must contain), an allocator failing at every allocation point, cancellation, and `nvlm info`
 * (when NVLM_CLI names the binary).
 */
#include "model.h"
#include "safetensors.h"
#include "testutil.h"

#include <cJSON.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define TINY "tests/data/tiny-nvlm-d"
#define BIG "tests/data/nvlm-d-72b"
#define SHARD1 "model-00001-of-00002.safetensors"
#define SHARD2 "model-00002-of-00002.safetensors"

/* ---- a checkpoint writer: tiny's tensors, mutated, written back ------------------------- */

typedef struct wt {
    char name[160];
    nv_dtype dtype;
    int ndim;
    int64_t shape[NV_MAX_DIMS];
    const void *data; /* NULL: zeros */
    int shard;        /* 0 or 1 */
} wt;

typedef struct model_files {
    wt w[256];
    size_t n;
    cJSON *config;
    bool single;                     /* one model.safetensors, no index */
    void (*index_hook)(cJSON *index); /* edits the generated index */
} model_files;

static nv_st_file *tiny_shards[2];
static char tmp_root[] = "/tmp/nvlm_load_XXXXXX";

static uint64_t wt_bytes(const wt *w)
{
    uint64_t n = nv_dtype_size(w->dtype);
    for (int i = 0; i < w->ndim; i++) {
        n *= (uint64_t)w->shape[i];
    }
    return n;
}

static cJSON *read_json(const char *path)
{
    size_t len;
    char *text = tu_read_file(path, &len);
    cJSON *j = text != NULL ? cJSON_ParseWithLength(text, len) : NULL;
    free(text);
    return j;
}

static void mf_init(model_files *mf)
{
    memset(mf, 0, sizeof *mf);
    for (int s = 0; s < 2; s++) {
        for (size_t i = 0; i < nv_st_count(tiny_shards[s]); i++) {
            const nv_weight *src = nv_st_at(tiny_shards[s], i);
            wt *w = &mf->w[mf->n++];
            snprintf(w->name, sizeof w->name, "%s", src->name);
            w->dtype = src->t.dtype;
            w->ndim = src->t.ndim;
            memcpy(w->shape, src->t.shape, sizeof w->shape);
            w->data = src->t.data;
            w->shard = s;
        }
    }
    mf->config = read_json(TINY "/config.json");
}

static wt *mf_find(model_files *mf, const char *name)
{
    for (size_t i = 0; i < mf->n; i++) {
        if (strcmp(mf->w[i].name, name) == 0) {
            return &mf->w[i];
        }
    }
    return NULL;
}

static void mf_drop(model_files *mf, const char *name)
{
    wt *w = mf_find(mf, name);
    if (w != NULL) {
        *w = mf->w[--mf->n];
    }
}

static wt *mf_add(model_files *mf, const char *name, nv_dtype dt, int ndim, const int64_t *shape,
                  int shard)
{
    wt *w = &mf->w[mf->n++];
    memset(w, 0, sizeof *w);
    snprintf(w->name, sizeof w->name, "%s", name);
    w->dtype = dt;
    w->ndim = ndim;
    memcpy(w->shape, shape, sizeof(int64_t) * (size_t)ndim);
    w->shard = shard;
    return w;
}

static void set_dims(wt *w, int ndim, const int64_t *shape)
{
    w->ndim = ndim;
    memcpy(w->shape, shape, sizeof(int64_t) * (size_t)ndim);
    w->data = NULL;
}

static void write_text(const char *path, const char *text)
{
    FILE *f = fopen(path, "wb");
    if (f != NULL) {
        fputs(text, f);
        fclose(f);
    }
}

static void write_json(const char *path, const cJSON *j)
{
    char *text = cJSON_Print(j);
    write_text(path, text);
    free(text);
}

/* Writes the tensors of `shard` (-1: all) as a safetensors file, in list order. */
static void write_st(const char *path, const model_files *mf, int shard)
{
    cJSON *hdr = cJSON_CreateObject();
    uint64_t off = 0;
    for (size_t i = 0; i < mf->n; i++) {
        const wt *w = &mf->w[i];
        if (shard >= 0 && w->shard != shard) {
            continue;
        }
        cJSON *e = cJSON_CreateObject();
        cJSON_AddStringToObject(e, "dtype", nv_dtype_name(w->dtype));
        cJSON *s = cJSON_AddArrayToObject(e, "shape");
        for (int d = 0; d < w->ndim; d++) {
            cJSON_AddItemToArray(s, cJSON_CreateNumber((double)w->shape[d]));
        }
        cJSON *o = cJSON_AddArrayToObject(e, "data_offsets");
        cJSON_AddItemToArray(o, cJSON_CreateNumber((double)off));
        off += wt_bytes(w);
        cJSON_AddItemToArray(o, cJSON_CreateNumber((double)off));
        cJSON_AddItemToObject(hdr, w->name, e);
    }
    char *text = cJSON_PrintUnformatted(hdr);
    size_t jl = strlen(text);
    size_t padded = (jl + 7) / 8 * 8;
    FILE *f = fopen(path, "wb");
    uint8_t pre[8];
    for (int i = 0; i < 8; i++) {
        pre[i] = (uint8_t)((uint64_t)padded >> (8 * i));
    }
    fwrite(pre, 1, 8, f);
    fwrite(text, 1, jl, f);
    for (size_t i = jl; i < padded; i++) {
        fputc(' ', f);
    }
    for (size_t i = 0; i < mf->n; i++) {
        const wt *w = &mf->w[i];
        if (shard >= 0 && w->shard != shard) {
            continue;
        }
        uint64_t n = wt_bytes(w);
        if (w->data != NULL) {
            fwrite(w->data, 1, (size_t)n, f);
        } else {
            for (uint64_t k = 0; k < n; k++) {
                fputc(0, f);
            }
        }
    }
    fclose(f);
    free(text);
    cJSON_Delete(hdr);
}

static void path_in(char *out, size_t cap, const char *dir, const char *name)
{
    snprintf(out, cap, "%s/%s", dir, name);
}

static void mf_write(model_files *mf, const char *dir)
{
    char p[512];
    mkdir(dir, 0755);
    path_in(p, sizeof p, dir, "config.json");
    write_json(p, mf->config);
    if (mf->single) {
        path_in(p, sizeof p, dir, "model.safetensors");
        write_st(p, mf, -1);
        return;
    }
    path_in(p, sizeof p, dir, SHARD1);
    write_st(p, mf, 0);
    path_in(p, sizeof p, dir, SHARD2);
    write_st(p, mf, 1);
    cJSON *ix = cJSON_CreateObject();
    cJSON *meta = cJSON_AddObjectToObject(ix, "metadata");
    cJSON_AddNumberToObject(meta, "total_size", 1234);
    cJSON *map = cJSON_AddObjectToObject(ix, "weight_map");
    for (size_t i = 0; i < mf->n; i++) {
        cJSON_AddStringToObject(map, mf->w[i].name, mf->w[i].shard == 0 ? SHARD1 : SHARD2);
    }
    if (mf->index_hook != NULL) {
        mf->index_hook(ix);
    }
    path_in(p, sizeof p, dir, "model.safetensors.index.json");
    write_json(p, ix);
    cJSON_Delete(ix);
}

static void mf_free(model_files *mf)
{
    cJSON_Delete(mf->config);
}

static void rm_dir(const char *dir)
{
    const char *names[] = {"config.json", "generation_config.json", "model.safetensors",
                           "model.safetensors.index.json", SHARD1, SHARD2};
    char p[512];
    for (size_t i = 0; i < NV_ARRAY_LEN(names); i++) {
        path_in(p, sizeof p, dir, names[i]);
        unlink(p);
    }
    rmdir(dir);
}

/* ---- mutations ---------------------------------------------------------------------------- */

static cJSON *llm_cfg(model_files *mf)
{
    return cJSON_GetObjectItem(mf->config, "llm_config");
}
static cJSON *vis_cfg(model_files *mf)
{
    return cJSON_GetObjectItem(mf->config, "vision_config");
}

static void m_none(model_files *mf)
{
    (void)mf;
}
static void m_zero_layers(model_files *mf)
{
    cJSON_ReplaceItemInObject(llm_cfg(mf), "num_hidden_layers", cJSON_CreateNumber(0));
}
static void m_heads_not_dividing(model_files *mf)
{
    cJSON_ReplaceItemInObject(vis_cfg(mf), "num_attention_heads", cJSON_CreateNumber(5));
}
static void m_kv_not_dividing(model_files *mf)
{
    cJSON_ReplaceItemInObject(llm_cfg(mf), "num_key_value_heads", cJSON_CreateNumber(3));
}
static void m_no_vision_config(model_files *mf)
{
    cJSON_DeleteItemFromObject(mf->config, "vision_config");
}
static void m_hidden_string(model_files *mf)
{
    cJSON_ReplaceItemInObject(llm_cfg(mf), "hidden_size", cJSON_CreateString("128"));
}
static void m_huge_vocab(model_files *mf)
{
    cJSON_ReplaceItemInObject(llm_cfg(mf), "vocab_size", cJSON_CreateNumber(1e12));
}
static void m_bad_ratio(model_files *mf)
{
    cJSON_ReplaceItemInObject(mf->config, "downsample_ratio", cJSON_CreateNumber(0.3));
}
static void m_min_gt_max(model_files *mf)
{
    cJSON_ReplaceItemInObject(mf->config, "min_dynamic_patch", cJSON_CreateNumber(9));
}
static void m_neg_eps(model_files *mf)
{
    cJSON_ReplaceItemInObject(llm_cfg(mf), "rms_norm_eps", cJSON_CreateNumber(-1));
}
static void ih_dotdot(cJSON *ix)
{
    cJSON *map = cJSON_GetObjectItem(ix, "weight_map");
    cJSON_ReplaceItemInObject(map, "mlp1.0.bias", cJSON_CreateString("../" SHARD1));
}
static void m_dotdot(model_files *mf)
{
    mf->index_hook = ih_dotdot;
}
static void ih_absolute(cJSON *ix)
{
    cJSON *map = cJSON_GetObjectItem(ix, "weight_map");
    cJSON_ReplaceItemInObject(map, "mlp1.0.bias", cJSON_CreateString("/etc/passwd"));
}
static void m_absolute(model_files *mf)
{
    mf->index_hook = ih_absolute;
}
static void ih_wrong_shard(cJSON *ix)
{
    cJSON *map = cJSON_GetObjectItem(ix, "weight_map");
    cJSON *e = cJSON_GetObjectItem(map, "mlp1.0.bias");
    const char *now = e != NULL ? e->valuestring : SHARD1;
    cJSON_ReplaceItemInObject(map, "mlp1.0.bias",
                              cJSON_CreateString(strcmp(now, SHARD1) == 0 ? SHARD2 : SHARD1));
}
static void m_index_wrong_shard(model_files *mf)
{
    mf->index_hook = ih_wrong_shard;
}
static void ih_drop_first(cJSON *ix)
{
    /* the generated index lists the tensor twice; keep one entry */
    cJSON_DeleteItemFromObject(cJSON_GetObjectItem(ix, "weight_map"), "mlp1.0.bias");
}
static void m_two_shards(model_files *mf)
{
    wt *w = mf_find(mf, "mlp1.0.bias");
    wt copy = *w;
    copy.shard = 1 - w->shard;
    mf->w[mf->n++] = copy;
    mf->index_hook = ih_drop_first;
}
static void ih_unlisted(cJSON *ix)
{
    cJSON_DeleteItemFromObject(cJSON_GetObjectItem(ix, "weight_map"), "mlp1.0.bias");
}
static void m_unlisted(model_files *mf)
{
    mf->index_hook = ih_unlisted;
}
static void ih_twice(cJSON *ix)
{
    cJSON *map = cJSON_GetObjectItem(ix, "weight_map");
    cJSON_AddItemToObject(map, "mlp1.0.bias", cJSON_CreateString(SHARD1));
}
static void m_index_twice(model_files *mf)
{
    mf->index_hook = ih_twice;
}
static void m_missing(model_files *mf)
{
    mf_drop(mf, "mlp1.3.weight");
}
static void m_many_missing(model_files *mf)
{
    mf_drop(mf, "mlp1.0.weight");
    mf_drop(mf, "mlp1.0.bias");
    mf_drop(mf, "mlp1.1.weight");
    mf_drop(mf, "mlp1.3.weight");
    mf_drop(mf, "language_model.model.norm.weight");
}
static void m_misshaped(model_files *mf)
{
    set_dims(mf_find(mf, "language_model.model.norm.weight"), 1, (int64_t[]){127});
}
static void m_transposed(model_files *mf)
{
    set_dims(mf_find(mf, "mlp1.3.weight"), 2, (int64_t[]){320, 128});
}
static void m_unexpected(model_files *mf)
{
    mf_add(mf, "extra.weight", NV_BF16, 1, (int64_t[]){4}, 1);
}
static void m_i64(model_files *mf)
{
    wt *w = mf_find(mf, "language_model.model.norm.weight");
    w->dtype = NV_I64;
    w->data = NULL;
}
static void m_bad_qkv(model_files *mf)
{
    for (int l = 0; l < 3; l++) {
        char name[160];
        snprintf(name, sizeof name, "vision_model.encoder.layers.%d.attn.qkv.weight", l);
        set_dims(mf_find(mf, name), 2, (int64_t[]){3 * 11 * 16 + 3, 64});
    }
}
static void m_single(model_files *mf)
{
    mf->single = true;
}
/* Three dummy heads instead of seven: every padded ViT attention tensor shrinks. */
static void m_three_dummy(model_files *mf)
{
    int64_t P = (4 + 3) * 16;
    for (int l = 0; l < 3; l++) {
        char name[160];
        const char *f = "vision_model.encoder.layers.%d.attn.%s";
        snprintf(name, sizeof name, f, l, "qkv.weight");
        set_dims(mf_find(mf, name), 2, (int64_t[]){3 * P, 64});
        snprintf(name, sizeof name, f, l, "q_norm.weight");
        set_dims(mf_find(mf, name), 1, (int64_t[]){P});
        snprintf(name, sizeof name, f, l, "k_norm.weight");
        set_dims(mf_find(mf, name), 1, (int64_t[]){P});
        snprintf(name, sizeof name, f, l, "proj.weight");
        set_dims(mf_find(mf, name), 2, (int64_t[]){64, P});
    }
}
static void m_mixed_dtypes(model_files *mf)
{
    wt *w = mf_find(mf, "vision_model.encoder.layers.0.attn.qkv.weight");
    w->dtype = NV_F32;
    w->data = NULL;
    w = mf_find(mf, "language_model.model.norm.weight");
    w->dtype = NV_F16;
    w->data = NULL;
}

static void p_unlink(const char *dir, const char *name)
{
    char p[512];
    path_in(p, sizeof p, dir, name);
    unlink(p);
}
static void p_no_config(const char *dir)
{
    p_unlink(dir, "config.json");
}
static void p_config_bad_json(const char *dir)
{
    char p[512];
    path_in(p, sizeof p, dir, "config.json");
    write_text(p, "{\"vision_config\": {");
}
static void p_config_array(const char *dir)
{
    char p[512];
    path_in(p, sizeof p, dir, "config.json");
    write_text(p, "[1, 2]");
}
static void p_no_shard2(const char *dir)
{
    p_unlink(dir, SHARD2);
}
static void p_no_weights(const char *dir)
{
    p_unlink(dir, SHARD1);
    p_unlink(dir, SHARD2);
    p_unlink(dir, "model.safetensors.index.json");
}
static void p_truncate_shard1(const char *dir)
{
    char p[512];
    path_in(p, sizeof p, dir, SHARD1);
    struct stat sb;
    if (stat(p, &sb) == 0) {
        CHECK(truncate(p, sb.st_size - 100) == 0, "truncate");
    }
}
static void p_index_bad_json(const char *dir)
{
    char p[512];
    path_in(p, sizeof p, dir, "model.safetensors.index.json");
    write_text(p, "{\"weight_map\": ");
}
static void p_shard2_bad_header(const char *dir)
{
    char p[512];
    path_in(p, sizeof p, dir, SHARD2);
    int fd = open(p, O_WRONLY);
    if (fd >= 0) {
        CHECK(pwrite(fd, "[", 1, 8) == 1, "corrupt header");
        close(fd);
    }
}
static void p_bad_gen_config(const char *dir)
{
    char p[512];
    path_in(p, sizeof p, dir, "generation_config.json");
    write_text(p, "{\"max_new_tokens\": -5}");
}

typedef struct dcase {
    const char *what;
    void (*mutate)(model_files *mf);
    void (*post)(const char *dir);
    nvlm_load_mode mode;
    nvlm_status want;
    const char *needle;
} dcase;

static const dcase dcases[] = {
    {"config missing", m_none, p_no_config, NVLM_LOAD_FULL, NVLM_ERR_NOT_FOUND, "config.json"},
    {"config bad JSON", m_none, p_config_bad_json, NVLM_LOAD_FULL, NVLM_ERR_FORMAT,
     "config.json: not valid JSON"},
    {"config not an object", m_none, p_config_array, NVLM_LOAD_CONFIG_ONLY, NVLM_ERR_FORMAT,
     "not a JSON object"},
    {"0 LLM layers", m_zero_layers, NULL, NVLM_LOAD_FULL, NVLM_ERR_FORMAT,
     "llm_config.num_hidden_layers = 0 is out of range"},
    {"ViT heads not dividing hidden", m_heads_not_dividing, NULL, NVLM_LOAD_FULL,
     NVLM_ERR_FORMAT, "vision_config.num_attention_heads does not divide hidden_size"},
    {"KV heads not dividing heads", m_kv_not_dividing, NULL, NVLM_LOAD_CONFIG_ONLY,
     NVLM_ERR_FORMAT, "llm_config.num_key_value_heads"},
    {"vision_config missing", m_no_vision_config, NULL, NVLM_LOAD_FULL, NVLM_ERR_FORMAT,
     "vision_config is missing"},
    {"hidden_size a string", m_hidden_string, NULL, NVLM_LOAD_FULL, NVLM_ERR_FORMAT,
     "llm_config.hidden_size is not a number"},
    {"vocab_size huge", m_huge_vocab, NULL, NVLM_LOAD_FULL, NVLM_ERR_FORMAT,
     "llm_config.vocab_size"},
    {"downsample_ratio 0.3", m_bad_ratio, NULL, NVLM_LOAD_FULL, NVLM_ERR_FORMAT,
     "downsample_ratio"},
    {"min_dynamic_patch > max", m_min_gt_max, NULL, NVLM_LOAD_FULL, NVLM_ERR_FORMAT,
     "min_dynamic_patch"},
    {"negative rms_norm_eps", m_neg_eps, NULL, NVLM_LOAD_FULL, NVLM_ERR_FORMAT,
     "llm_config.rms_norm_eps"},
    {"bad generation_config", m_none, p_bad_gen_config, NVLM_LOAD_FULL, NVLM_ERR_FORMAT,
     "generation_config.json: max_new_tokens"},
    {"missing shard", m_none, p_no_shard2, NVLM_LOAD_FULL, NVLM_ERR_NOT_FOUND, SHARD2},
    {"'..' in the index", m_dotdot, NULL, NVLM_LOAD_FULL, NVLM_ERR_FORMAT, "../" SHARD1},
    {"'..' in the index, config-only", m_dotdot, NULL, NVLM_LOAD_CONFIG_ONLY, NVLM_ERR_FORMAT,
     "outside the model directory"},
    {"absolute path in the index", m_absolute, NULL, NVLM_LOAD_FULL, NVLM_ERR_FORMAT,
     "/etc/passwd"},
    {"index names the wrong shard", m_index_wrong_shard, NULL, NVLM_LOAD_FULL, NVLM_ERR_FORMAT,
     "mlp1.0.bias' in"},
    {"tensor in two shards", m_two_shards, NULL, NVLM_LOAD_FULL, NVLM_ERR_FORMAT,
     "'mlp1.0.bias' is in two shards"},
    {"shard tensor not in the index", m_unlisted, NULL, NVLM_LOAD_FULL, NVLM_ERR_FORMAT,
     "'mlp1.0.bias', which model.safetensors.index.json does not list"},
    {"index lists a tensor twice", m_index_twice, NULL, NVLM_LOAD_FULL, NVLM_ERR_FORMAT,
     "'mlp1.0.bias' listed twice"},
    {"index bad JSON", m_none, p_index_bad_json, NVLM_LOAD_FULL, NVLM_ERR_FORMAT,
     "model.safetensors.index.json: not a valid JSON"},
    {"missing expected tensor", m_missing, NULL, NVLM_LOAD_FULL, NVLM_ERR_SHAPE,
     "1 expected tensor missing: mlp1.3.weight"},
    {"five missing tensors", m_many_missing, NULL, NVLM_LOAD_FULL, NVLM_ERR_SHAPE,
     "5 expected tensors missing: language_model.model.norm.weight, mlp1.0.bias, "
     "mlp1.0.weight, ..."},
    {"misshaped tensor", m_misshaped, NULL, NVLM_LOAD_FULL, NVLM_ERR_SHAPE,
     "language_model.model.norm.weight has shape [127], expected [128]"},
    {"transposed tensor", m_transposed, NULL, NVLM_LOAD_CONFIG_ONLY, NVLM_ERR_SHAPE,
     "mlp1.3.weight has shape [320, 128], expected [128, 320]"},
    {"unexpected tensor", m_unexpected, NULL, NVLM_LOAD_FULL, NVLM_ERR_SHAPE,
     "1 unexpected tensor: extra.weight"},
    {"I64 weight", m_i64, NULL, NVLM_LOAD_FULL, NVLM_ERR_SHAPE,
     "language_model.model.norm.weight has dtype I64"},
    {"qkv rows not whole heads", m_bad_qkv, NULL, NVLM_LOAD_FULL, NVLM_ERR_SHAPE,
     "qkv.weight has 531 rows"},
    {"truncated shard", m_none, p_truncate_shard1, NVLM_LOAD_FULL, NVLM_ERR_FORMAT,
     SHARD1 ": tensor"},
    {"corrupt shard header", m_none, p_shard2_bad_header, NVLM_LOAD_CONFIG_ONLY, NVLM_ERR_FORMAT,
     SHARD2 ": header"},
    {"no weights at all", m_none, p_no_weights, NVLM_LOAD_FULL, NVLM_ERR_NOT_FOUND,
     "no model.safetensors or model.safetensors.index.json"},
};

static void check_hostile_dirs(nvlm_context *ctx)
{
    char dir[512];
    for (size_t i = 0; i < NV_ARRAY_LEN(dcases); i++) {
        const dcase *c = &dcases[i];
        model_files mf;
        mf_init(&mf);
        c->mutate(&mf);
        snprintf(dir, sizeof dir, "%s/case%zu", tmp_root, i);
        mf_write(&mf, dir);
        if (c->post != NULL) {
            c->post(dir);
        }
        nvlm_model_params p;
        nvlm_model_default_params(&p);
        p.mode = c->mode;
        nvlm_model *m = (nvlm_model *)&p; /* must be reset to NULL on failure */
        nvlm_status st = nvlm_model_load(ctx, dir, &p, &m);
        CHECK(st == c->want && m == NULL, "%s: status %d (want %d): %s", c->what, st, c->want,
              nvlm_last_error(ctx));
        CHECK(strstr(nvlm_last_error(ctx), c->needle) != NULL, "%s: message names '%s': %s",
              c->what, c->needle, nvlm_last_error(ctx));
        nvlm_model_free(st == NVLM_OK ? m : NULL);
        mf_free(&mf);
        rm_dir(dir);
    }
}

/* Variants that must load, with what they change. */
static void check_good_variants(nvlm_context *ctx)
{
    char dir[512];
    snprintf(dir, sizeof dir, "%s/good", tmp_root);
    void (*muts[])(model_files *) = {m_single, m_three_dummy, m_mixed_dtypes};
    for (size_t k = 0; k < NV_ARRAY_LEN(muts); k++) {
        model_files mf;
        mf_init(&mf);
        muts[k](&mf);
        mf_write(&mf, dir);
        uint64_t numel = 0;
        uint64_t bytes = 0;
        for (size_t i = 0; i < mf.n; i++) {
            bytes += wt_bytes(&mf.w[i]);
            numel += wt_bytes(&mf.w[i]) / nv_dtype_size(mf.w[i].dtype);
        }
        for (int mode = 0; mode < 2; mode++) {
            nvlm_model_params p;
            nvlm_model_default_params(&p);
            p.mode = (nvlm_load_mode)mode;
            nvlm_model *m = NULL;
            nvlm_status st = nvlm_model_load(ctx, dir, &p, &m);
            CHECK(st == NVLM_OK, "variant %zu mode %d loads: %s", k, mode, nvlm_last_error(ctx));
            if (st != NVLM_OK) {
                continue;
            }
            nvlm_model_info info = {.struct_size = sizeof info};
            CHECK_OK(nvlm_model_get_info(m, &info));
            CHECK_EQ_INT(info.vision_num_dummy_heads, k == 1 ? 3 : 7, "dummy heads from qkv");
            CHECK_EQ_INT(info.n_params, numel, "params = elements of all tensors");
            CHECK_EQ_INT(info.weight_bytes, bytes, "weight bytes = stored bytes");
            const nv_weight *w = nv_model_weight(m, "language_model.model.norm.weight");
            CHECK(w != NULL && w->t.dtype == (k == 2 ? NV_F16 : NV_BF16) &&
                      (mode == 1) == (w->t.data == NULL),
                  "norm weight: dtype, data present only for a full load");
            nvlm_model_free(m);
        }
        mf_free(&mf);
        rm_dir(dir);
    }
}

/* ---- the tiny fixture and the real config -------------------------------------------------- */

static void check_tiny(nvlm_context *ctx)
{
    for (int use_mmap = 0; use_mmap < 2; use_mmap++) {
        nvlm_model_params p;
        nvlm_model_default_params(&p);
        CHECK_EQ_INT(p.mode, NVLM_LOAD_FULL, "default mode");
        CHECK_EQ_INT(p.use_mmap, 1, "default use_mmap");
        p.use_mmap = use_mmap;
        nvlm_model *m = NULL;
        nvlm_status st = nvlm_model_load(ctx, TINY, &p, &m);
        CHECK(st == NVLM_OK && m != NULL, "tiny loads (use_mmap %d): %s", use_mmap,
              nvlm_last_error(ctx));
        if (m == NULL) {
            continue;
        }
        nvlm_model_info i = {.struct_size = sizeof i};
        CHECK_OK(nvlm_model_get_info(m, &i));
        /* values from tests/data/README.md and config.json */
        CHECK_EQ_INT(i.vision_hidden_size, 64, "vision hidden");
        CHECK_EQ_INT(i.vision_intermediate_size, 256, "vision MLP");
        CHECK_EQ_INT(i.vision_num_hidden_layers, 3, "vision layers");
        CHECK_EQ_INT(i.vision_num_attention_heads, 4, "vision heads");
        CHECK_EQ_INT(i.vision_num_dummy_heads, 7, "vision dummy heads");
        CHECK_EQ_INT(i.vision_head_dim, 16, "vision head_dim");
        CHECK_EQ_INT(i.vision_image_size, 448, "image size");
        CHECK_EQ_INT(i.vision_patch_size, 14, "patch size");
        CHECK_EQ_INT(i.num_image_token, 256, "image tokens per tile");
        CHECK_EQ_INT(i.projector_input_size, 256, "projector in");
        CHECK_EQ_INT(i.projector_hidden_size, 320, "projector hidden");
        CHECK_EQ_INT(i.projector_output_size, 128, "projector out");
        CHECK_EQ_INT(i.llm_hidden_size, 128, "llm hidden");
        CHECK_EQ_INT(i.llm_intermediate_size, 320, "llm MLP");
        CHECK_EQ_INT(i.llm_num_hidden_layers, 3, "llm layers");
        CHECK_EQ_INT(i.llm_num_attention_heads, 4, "llm heads");
        CHECK_EQ_INT(i.llm_num_key_value_heads, 2, "llm kv heads");
        CHECK_EQ_INT(i.llm_head_dim, 32, "llm head_dim");
        CHECK_EQ_INT(i.vocab_size, 4032, "vocab");
        CHECK(i.rope_theta == 1e6 && i.rms_norm_eps == 1e-6 && i.downsample_ratio == 0.5,
              "theta, eps, ratio");
        CHECK(i.min_dynamic_patch == 1 && i.max_dynamic_patch == 6 && i.use_thumbnail == 1 &&
                  i.image_size == 448,
              "tile settings");
        /* llm_config says bos 4000 and pad null, but Qwen2 adds no BOS and pads with
         * <|endoftext|>: the info agrees with the tokenizer */
        CHECK(i.bos_token_id == -1 && i.eos_token_id == 4002 && i.pad_token_id == 4000,
              "token ids: bos %d eos %d pad %d", i.bos_token_id, i.eos_token_id,
              i.pad_token_id);
        nvlm_special_tokens sp = {.struct_size = sizeof sp};
        CHECK_OK(nvlm_tokenizer_special_tokens(nvlm_model_tokenizer(m), &sp));
        CHECK(sp.bos == i.bos_token_id && sp.pad == i.pad_token_id && sp.eos == i.eos_token_id,
              "model info and tokenizer agree (bos %d/%d, pad %d/%d, eos %d/%d)", sp.bos,
              i.bos_token_id, sp.pad, i.pad_token_id, sp.eos, i.eos_token_id);
        /* index total_size = stored bytes; all bf16, so params = bytes / 2 */
        CHECK_EQ_INT(i.weight_bytes, 4026304, "weight bytes");
        CHECK_EQ_INT(i.n_params, 4026304 / 2, "params");
        CHECK_EQ_INT(i.cpu_bytes, 4026304, "cpu bytes");
        /* the CUDA storage: bf16 matrices, f32 vectors, 256-byte aligned pieces (the exact
         * figure: test_memory_plan's oracle) */
        CHECK(i.cuda_bytes > 4026304 && i.cuda_bytes < 4026304 + 64 * 1024,
              "cuda bytes %llu: 2 bytes per parameter, vectors f32, alignment",
              (unsigned long long)i.cuda_bytes);
        CHECK_EQ_INT(i.kv_bytes_per_token_f32, 2 * 3 * 2 * 32 * 4, "kv f32");
        CHECK_EQ_INT(i.kv_bytes_per_token_bf16, 2 * 3 * 2 * 32 * 2, "kv bf16");
        CHECK_EQ_INT(i.weights_loaded, 1, "weights loaded");
        /* the mini tokenizer: 4000 BPE ids + 22 added tokens, <|vision_pad|> = 4011 (from
         * tokenizer.json's added_tokens) */
        CHECK(nvlm_model_tokenizer(m) != NULL, "tokenizer loaded with the model");
        CHECK_EQ_INT(i.tokenizer_vocab_size, 4022, "tokenizer vocab");
        CHECK_EQ_INT(i.image_context_token_id, 4011, "<|vision_pad|> id");
        CHECK_EQ_INT(m->cfg.gen_max_new_tokens, 1024, "generation max_new_tokens");
        CHECK(m->cfg.gen_n_eos == 1 && m->cfg.gen_eos_ids[0] == 4002, "generation eos");

        /* the weights are the file's bytes */
        int same = 0;
        for (int s = 0; s < 2; s++) {
            for (size_t k = 0; k < nv_st_count(tiny_shards[s]); k++) {
                const nv_weight *ref = nv_st_at(tiny_shards[s], k);
                const nv_weight *w = nv_model_weight(m, ref->name);
                same += w != NULL && w->t.dtype == ref->t.dtype &&
                        memcmp(w->t.data, ref->t.data, (size_t)nv_st_nbytes(ref)) == 0;
            }
        }
        CHECK_EQ_INT(same, 86, "all 86 tensors present with the file's bytes");
        CHECK(nv_model_weight(m, "nope") == NULL, "unknown weight is NULL");

        nvlm_image_params ip = {.struct_size = sizeof ip};
        CHECK_OK(nvlm_model_image_params(m, &ip));
        CHECK(ip.min_tiles == 1 && ip.max_tiles == 6 && ip.use_thumbnail == 1 &&
                  ip.tile_size == 448 && ip.struct_size == sizeof ip,
              "image params from the config");
        /* an old caller's shorter info struct: only its bytes are written */
        struct {
            uint32_t struct_size;
            int32_t vision_hidden_size;
            int32_t guard;
        } small = {sizeof(uint32_t) + sizeof(int32_t), 0, 12345};
        CHECK_OK(nvlm_model_get_info(m, (nvlm_model_info *)&small));
        CHECK(small.vision_hidden_size == 64 && small.guard == 12345, "short info struct");
        nvlm_model_free(m);
    }
}

static void check_big(nvlm_context *ctx)
{
    nvlm_model_params p;
    nvlm_model_default_params(&p);
    nvlm_model *m = NULL;
    CHECK_EQ_INT(nvlm_model_load(ctx, BIG, &p, &m), NVLM_ERR_NOT_FOUND, "72B full: no shards");
    CHECK(strstr(nvlm_last_error(ctx), "model-00001-of-00046.safetensors") != NULL,
          "names the first missing shard: %s", nvlm_last_error(ctx));
    p.mode = NVLM_LOAD_CONFIG_ONLY;
    nvlm_status st = nvlm_model_load(ctx, BIG, &p, &m);
    CHECK(st == NVLM_OK, "72B config-only: %s", nvlm_last_error(ctx));
    if (m == NULL) {
        return;
    }
    nvlm_model_info i = {.struct_size = sizeof i};
    CHECK_OK(nvlm_model_get_info(m, &i));
    CHECK(i.vision_hidden_size == 3200 && i.vision_intermediate_size == 12800 &&
              i.vision_num_hidden_layers == 45 && i.vision_num_attention_heads == 25 &&
              i.vision_num_dummy_heads == 7 && i.vision_head_dim == 128,
          "72B vision dims");
    CHECK(i.projector_input_size == 12800 && i.projector_hidden_size == 29568 &&
              i.projector_output_size == 8192 && i.num_image_token == 256,
          "72B projector dims");
    CHECK(i.llm_hidden_size == 8192 && i.llm_intermediate_size == 29568 &&
              i.llm_num_hidden_layers == 80 && i.llm_num_attention_heads == 64 &&
              i.llm_num_key_value_heads == 8 && i.llm_head_dim == 128 &&
              i.vocab_size == 152064 && i.max_position_embeddings == 32768,
          "72B llm dims");
    CHECK(i.bos_token_id == -1 && i.eos_token_id == 151645 && i.pad_token_id == 151643,
          "72B token ids: bos %d eos %d pad %d", i.bos_token_id, i.eos_token_id,
          i.pad_token_id);
    /* spec §2: 79.38 B parameters with the dummy-head padding; an independent sum over the
     * §2 table's shapes (tests/oracle is not needed: 6052672640 + 620717056 + 72706203648) */
    CHECK_EQ_INT(i.n_params, 79379593344ull, "72B params");
    CHECK_EQ_INT(i.weight_bytes, 176901927168ull, "72B weight bytes = index total_size");
    CHECK(i.cuda_bytes > 2 * 79379593344ull && i.cuda_bytes < 2 * 79379593344ull + (16 << 20),
          "72B cuda bytes %llu: 2 per parameter, vectors f32, alignment",
          (unsigned long long)i.cuda_bytes);
    CHECK_EQ_INT(i.kv_bytes_per_token_f32, 2 * 80 * 8 * 128 * 4, "72B kv f32");
    CHECK_EQ_INT(i.weights_loaded, 0, "config only");
    CHECK_EQ_INT(i.tokenizer_vocab_size, 151665, "72B tokenizer: 151643 BPE + 22 added");
    CHECK_EQ_INT(i.image_context_token_id, 151654, "72B <|vision_pad|> id");
    CHECK(nv_model_weight(m, "mlp1.1.weight") == NULL, "no tensor table without shards");
    nvlm_model_free(m);
}

/* ---- allocation failures, cancellation, arguments ------------------------------------------ */

typedef struct fail_alloc {
    int n;
    int fail_at;
} fail_alloc;

static void *fa_alloc(void *user, size_t size)
{
    fail_alloc *fa = user;
    if (fa->n++ == fa->fail_at) {
        return NULL;
    }
    return malloc(size);
}
static void *fa_realloc(void *user, void *p, size_t size)
{
    fail_alloc *fa = user;
    if (fa->n++ == fa->fail_at) {
        return NULL;
    }
    return realloc(p, size);
}
static void fa_free(void *user, void *p)
{
    (void)user;
    free(p);
}

static void check_alloc_failures(void)
{
    /* the tiny checkpoint without its tokenizer: every allocation point of the loader */
    char dir[512];
    snprintf(dir, sizeof dir, "%s/oom", tmp_root);
    model_files mf;
    mf_init(&mf);
    mf_write(&mf, dir);
    mf_free(&mf);
    /* 0: full, mapped; 1: full, read into memory; 2: config-only; 3: the fixture itself, its
     * tokenizer included */
    for (int variant = 0; variant < 4; variant++) {
        int bad = 0;
        int points = 0;
        for (int n = 0; n < 100000; n++) {
            fail_alloc fa = {0, n};
            nvlm_context_params cp;
            nvlm_context_default_params(&cp);
            cp.alloc_fn = fa_alloc;
            cp.realloc_fn = fa_realloc;
            cp.free_fn = fa_free;
            cp.alloc_user = &fa;
            cp.n_threads = 1;
            cp.backend = tu_backend();
            nvlm_context *ctx = NULL;
            if (nvlm_context_create(&cp, &ctx) != NVLM_OK) {
                continue; /* the failure hit the context itself */
            }
            nvlm_model_params p;
            nvlm_model_default_params(&p);
            p.use_mmap = variant != 1;
            p.mode = variant == 2 ? NVLM_LOAD_CONFIG_ONLY : NVLM_LOAD_FULL;
            nvlm_model *m = NULL;
            nvlm_status st = nvlm_model_load(ctx, variant == 3 ? TINY : dir, &p, &m);
            nvlm_model_free(m);
            nvlm_context_free(ctx);
            if (st == NVLM_OK) {
                points = n;
                printf("# variant %d: %d allocation points\n", variant, n);
                break;
            }
            if (st != NVLM_ERR_OUT_OF_MEMORY) {
                bad++;
                printf("# variant %d: failing allocation %d gave status %d\n", variant, n, st);
            }
        }
        CHECK(points > 5, "variant %d: load succeeds after %d failure points", variant, points);
        CHECK_EQ_INT(bad, 0, "every allocation failure is NVLM_ERR_OUT_OF_MEMORY");
    }
    rm_dir(dir);
}

typedef struct prog {
    float seen[1024];
    int n;
    int cancel_at;
} prog;

static int on_progress(void *user, float f)
{
    prog *pr = user;
    if (pr->n < 1024) {
        pr->seen[pr->n] = f;
    }
    return pr->n++ == pr->cancel_at;
}

static void check_progress(nvlm_context *ctx)
{
    prog pr = {.cancel_at = -1};
    nvlm_model_params p;
    nvlm_model_default_params(&p);
    p.progress = on_progress;
    p.progress_user = &pr;
    nvlm_model *m = NULL;
    CHECK_OK(nvlm_model_load(ctx, TINY, &p, &m));
    nvlm_model_free(m);
    bool mono = pr.n >= 4 && pr.n <= 1024 && pr.seen[0] == 0.0f && pr.seen[pr.n - 1] == 1.0f;
    for (int i = 1; i < pr.n && i < 1024; i++) {
        mono = mono && pr.seen[i] >= pr.seen[i - 1];
    }
    CHECK(mono, "progress runs 0 -> 1 monotonically (%d calls)", pr.n);
    int calls = pr.n;
    for (int k = 0; k < calls; k++) {
        prog c = {.cancel_at = k};
        p.progress_user = &c;
        m = NULL;
        nvlm_status st = nvlm_model_load(ctx, TINY, &p, &m);
        CHECK(st == NVLM_ERR_CANCELLED && m == NULL &&
                  strstr(nvlm_last_error(ctx), "cancelled") != NULL,
              "cancel at call %d -> %d: %s", k, st, nvlm_last_error(ctx));
    }
}

static void check_args(nvlm_context *ctx)
{
    nvlm_model *m = NULL;
    CHECK_EQ_INT(nvlm_model_load(NULL, TINY, NULL, &m), NVLM_ERR_INVALID_ARGUMENT, "NULL ctx");
    CHECK_EQ_INT(nvlm_model_load(ctx, NULL, NULL, &m), NVLM_ERR_INVALID_ARGUMENT, "NULL dir");
    CHECK_EQ_INT(nvlm_model_load(ctx, TINY, NULL, NULL), NVLM_ERR_INVALID_ARGUMENT, "NULL out");
    uint32_t zero = 0;
    CHECK_EQ_INT(nvlm_model_load(ctx, TINY, (const nvlm_model_params *)&zero, &m),
                 NVLM_ERR_INVALID_ARGUMENT, "struct_size 0");
    nvlm_model_params p;
    nvlm_model_default_params(&p);
    p.mode = (nvlm_load_mode)7;
    CHECK_EQ_INT(nvlm_model_load(ctx, TINY, &p, &m), NVLM_ERR_INVALID_ARGUMENT, "bad mode");
    /* an old caller knowing only struct_size and mode */
    struct {
        uint32_t struct_size;
        nvlm_load_mode mode;
    } old = {sizeof old, NVLM_LOAD_CONFIG_ONLY};
    CHECK_OK(nvlm_model_load(ctx, TINY, (const nvlm_model_params *)&old, &m));
    nvlm_model_info i = {.struct_size = sizeof i};
    CHECK(m != NULL && nvlm_model_get_info(m, &i) == NVLM_OK && i.weights_loaded == 0,
          "short params struct honoured");
    CHECK_EQ_INT(nvlm_model_get_info(NULL, &i), NVLM_ERR_INVALID_ARGUMENT, "info NULL model");
    CHECK_EQ_INT(nvlm_model_get_info(m, NULL), NVLM_ERR_INVALID_ARGUMENT, "info NULL out");
    CHECK(nvlm_model_tokenizer(NULL) == NULL, "tokenizer of NULL");
    nvlm_model_free(m);
    nvlm_model_free(NULL);
    CHECK_EQ_INT(nvlm_model_load(ctx, "/nonexistent/dir", NULL, &m), NVLM_ERR_NOT_FOUND,
                 "missing dir");
    nvlm_model_params_init(NULL, sizeof p);
}

/* ---- the CLI ------------------------------------------------------------------------------- */

static cJSON *run_cli_json(const char *cli, const char *args, int *rc)
{
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "%s info %s 2>/dev/null", cli, args);
    FILE *f = popen(cmd, "r");
    if (f == NULL) {
        *rc = -1;
        return NULL;
    }
    size_t cap = 1 << 16;
    char *buf = malloc(cap);
    size_t n = fread(buf, 1, cap - 1, f);
    buf[n] = '\0';
    int status = pclose(f);
    *rc = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    cJSON *j = cJSON_Parse(buf);
    free(buf);
    return j;
}

static double num(const cJSON *j, const char *obj, const char *key)
{
    const cJSON *o = obj != NULL ? cJSON_GetObjectItem(j, obj) : j;
    const cJSON *v = cJSON_GetObjectItem(o, key);
    return cJSON_IsNumber(v) ? v->valuedouble : -12345.0;
}

static void check_cli(void)
{
    const char *cli = getenv("NVLM_CLI");
    if (cli == NULL || cli[0] == '\0') {
        printf("SKIP nvlm info checks: NVLM_CLI is not set\n");
        return;
    }
    int rc;
    cJSON *j = run_cli_json(cli, TINY " --json", &rc);
    CHECK(rc == 0 && j != NULL, "nvlm info tiny --json: rc %d, JSON parsed", rc);
    CHECK(num(j, "vision", "hidden_size") == 64 && num(j, "vision", "num_attention_heads") == 4 &&
              num(j, "vision", "num_dummy_heads") == 7 &&
              num(j, "vision", "num_hidden_layers") == 3,
          "tiny vision object");
    CHECK(num(j, "projector", "input_size") == 256 && num(j, "projector", "hidden_size") == 320 &&
              num(j, "projector", "output_size") == 128,
          "tiny projector object");
    CHECK(num(j, "llm", "hidden_size") == 128 && num(j, "llm", "num_key_value_heads") == 2 &&
              num(j, "llm", "vocab_size") == 4032 && num(j, "llm", "intermediate_size") == 320,
          "tiny llm object");
    CHECK(num(j, "llm", "bos_token_id") == -1 && num(j, "llm", "pad_token_id") == 4000 &&
              num(j, "llm", "eos_token_id") == 4002,
          "tiny token ids as the tokenizer has them");
    CHECK(num(j, NULL, "params") == 2013152 && num(j, NULL, "weight_bytes") == 4026304,
          "tiny params and bytes");
    CHECK(num(j, NULL, "min_dynamic_patch") == 1 && num(j, NULL, "max_dynamic_patch") == 6 &&
              num(j, NULL, "force_image_size") == 448 &&
              cJSON_IsTrue(cJSON_GetObjectItem(j, "use_thumbnail")),
          "tiny tile settings");
    CHECK(cJSON_IsTrue(cJSON_GetObjectItem(j, "weights_loaded")), "tiny loads fully");
    CHECK(num(cJSON_GetObjectItem(j, "dtypes"), "BF16", "tensors") == 86, "dtype histogram");
    cJSON_Delete(j);

    j = run_cli_json(cli, BIG " --json", &rc);
    CHECK(rc == 0 && j != NULL, "nvlm info 72b --json: rc %d", rc);
    CHECK(num(j, "vision", "hidden_size") == 3200 && num(j, "vision", "num_hidden_layers") == 45 &&
              num(j, "llm", "hidden_size") == 8192 && num(j, "llm", "num_hidden_layers") == 80 &&
              num(j, "llm", "num_attention_heads") == 64 && num(j, "llm", "vocab_size") == 152064,
          "72B dims");
    CHECK(num(j, NULL, "params") == 79379593344.0, "72B params %.0f", num(j, NULL, "params"));
    CHECK(num(j, NULL, "weight_bytes") == 176901927168.0, "72B weight bytes");
    CHECK(cJSON_IsFalse(cJSON_GetObjectItem(j, "weights_loaded")), "72B config only");
    cJSON_Delete(j);

    j = run_cli_json(cli, "/nonexistent-model-dir", &rc);
    CHECK(rc == 1 && j == NULL, "missing dir: exit 1 (got %d)", rc);
    j = run_cli_json(cli, "", &rc);
    CHECK(rc == 2, "no dir: usage error (got %d)", rc);
    j = run_cli_json(cli, "--help", &rc);
    CHECK(rc == 0, "--help exits 0");
    char cmd[512];
    snprintf(cmd, sizeof cmd, "%s info %s > /dev/null 2>&1", cli, TINY);
    CHECK(system(cmd) == 0, "table output exits 0");
}

int main(void)
{
    nvlm_context *ctx = NULL;
    CHECK_OK(tu_context_create(&ctx));
    CHECK(mkdtemp(tmp_root) != NULL, "mkdtemp");
    CHECK_OK(nv_st_open(ctx, TINY "/" SHARD1, ctx, &tiny_shards[0]));
    CHECK_OK(nv_st_open(ctx, TINY "/" SHARD2, ctx, &tiny_shards[1]));
    if (tiny_shards[0] == NULL || tiny_shards[1] == NULL) {
        return tu_done();
    }

    tu_section("tiny fixture");
    check_tiny(ctx);
    tu_section("NVLM-D-72B config + index");
    check_big(ctx);
    tu_section("arguments and params");
    check_args(ctx);
    tu_section("hostile model directories");
    check_hostile_dirs(ctx);
    tu_section("variants that load");
    check_good_variants(ctx);
    tu_section("progress and cancellation");
    check_progress(ctx);
    tu_section("allocation failures");
    check_alloc_failures();
    tu_section("nvlm info");
    check_cli();

    nv_st_close(tiny_shards[0]);
    nv_st_close(tiny_shards[1]);
    rmdir(tmp_root);
    nvlm_context_free(ctx);
    return tu_done();
}
