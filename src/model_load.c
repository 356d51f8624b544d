/*
 * model_load.c - load: model directory -> nvlm_model. config.json (+ generation_config.json),
 * then model.safetensors or model.safetensors.index.json + shards (each opened once, mapped
 * read-only or read into memory, headers validated by safetensors.c), the index checked against
 * the shards, every expected NVLM-D tensor (spec §2, shapes from the config) checked by name,
 * shape and dtype, then the tokenizer and, for NVLM_LOAD_FULL, the engine.
 */
#include "engine.h"
#include "fp8.h"
#include "json.h"
#include "memory_plan.h"
#include "model.h"
#include "safetensors.h"
#include "tokenizer.h"

#include <cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define MAX_CONFIG_BYTES ((size_t)16 << 20)
#define MAX_INDEX_BYTES ((size_t)64 << 20)
#define MAX_SHARDS 4096
#define PATH_LEN 4096
#define MAX_DUMMY_HEADS 1024
#define LIST_NAMES 3 /* names quoted in a missing/unexpected message */
/* All shards together hold at most twice the layout's tensors plus this many: the bound keeps
 * memory small while a few stray tensors still get the precise "unexpected"/"in two shards"
 * message from the checks after loading. */
#define EXTRA_TENSORS 1024
/* All shard headers together: a fixed allowance plus this much per tensor of the layout. */
#define HEADER_BYTES_BASE ((uint64_t)64 << 20)
#define HEADER_BYTES_PER_TENSOR 4096
/* JSON values an index may hold beyond one per tensor of the layout (metadata). */
#define INDEX_VALUES_SLACK 65536

typedef struct tensor_ref {
    const char *name;
    const nv_weight *w; /* NULL for index-only entries */
    size_t shard;
} tensor_ref;

struct nv_checkpoint {
    nvlm_context *ctx;
    nv_st_file **shards;
    size_t n_shards;
    tensor_ref *table; /* all tensors of all shards, sorted by name */
    size_t n;
};

typedef struct expected {
    char name[NV_LAYOUT_NAME_MAX];
    int ndim;
    int64_t shape[4];
    bool optional;
    bool seen;
} expected;

typedef struct exp_list {
    expected *v;
    size_t n;
    size_t cap;
    nvlm_context *ctx;  /* where exp_add reports */
} exp_list;

/* ---- small helpers -------------------------------------------------------------------------- */

static nvlm_status join(char *out, const char *dir, const char *name, void *eh)
{
    int n = snprintf(out, PATH_LEN, "%s/%s", dir, name);
    if (n < 0 || n >= PATH_LEN) {
        return nv_error(eh, NVLM_ERR_LIMIT, "path %s/%s is too long", dir, name);
    }
    return NVLM_OK;
}

/* Whether `path` exists in any form: a FIFO, directory or device under a checkpoint file's name
 * is then refused by the reader (nv_open_regular) instead of being skipped as absent. */
static bool file_exists(const char *path)
{
    struct stat sb;
    return stat(path, &sb) == 0;
}

static int cmp_ref(const void *a, const void *b)
{
    return strcmp(((const tensor_ref *)a)->name, ((const tensor_ref *)b)->name);
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static int cmp_exp(const void *a, const void *b)
{
    return strcmp(((const expected *)a)->name, ((const expected *)b)->name);
}

static const tensor_ref *find_ref(const tensor_ref *v, size_t n, const char *name)
{
    tensor_ref key = {name, NULL, 0};
    return bsearch(&key, v, n, sizeof *v, cmp_ref);
}

static nvlm_status progress(const nvlm_model_params *p, nvlm_context *ctx, float f)
{
    if (p->progress != NULL && p->progress(p->progress_user, f) != 0) {
        return nv_error(ctx, NVLM_ERR_CANCELLED, "model load cancelled by the progress callback");
    }
    return NVLM_OK;
}

/* Appends ", name" to a message list (up to LIST_NAMES names). */
static void list_add(char *buf, size_t cap, size_t *count, const char *name)
{
    if (*count < LIST_NAMES) {
        size_t len = strlen(buf);
        snprintf(buf + len, cap - len, "%s%.100s", len > 0 ? ", " : "", name);
    } else if (*count == LIST_NAMES) {
        size_t len = strlen(buf);
        snprintf(buf + len, cap - len, ", ...");
    }
    (*count)++;
}

/* ---- the expected tensor set (spec §2) -------------------------------------------------- */

static nvlm_status exp_add(void *u, const nv_layout_tensor *t)
{
    exp_list *L = u;
    if (L->n == L->cap) {
        return nv_error(L->ctx, NVLM_ERR_INTERNAL, "expected tensor list overflow");
    }
    expected *e = &L->v[L->n++];
    memset(e, 0, sizeof *e);
    snprintf(e->name, sizeof e->name, "%s", t->name);
    e->ndim = t->ndim;
    memcpy(e->shape, t->shape, sizeof e->shape);
    e->optional = t->optional;
    return NVLM_OK;
}

/* The layout's tensors (layout.c), sorted by name for check_tensors. */
static nvlm_status exp_build(const nv_config *c, nvlm_context *ctx, exp_list *L)
{
    size_t cap = nv_layout_count(c);
    L->v = nv_alloc_array(ctx, cap, sizeof *L->v);
    if (L->v == NULL) {
        return nv_error(ctx, NVLM_ERR_OUT_OF_MEMORY, "out of memory for the expected tensor set");
    }
    L->cap = cap;
    L->n = 0;
    L->ctx = ctx;
    NVLM_TRY(nv_layout_tensors(c, exp_add, L));
    qsort(L->v, L->n, sizeof *L->v, cmp_exp);
    return NVLM_OK;
}

static void shape_str(char *buf, size_t cap, int ndim, const int64_t *shape)
{
    size_t len = 0;
    buf[0] = '\0';
    len += (size_t)snprintf(buf, cap, "[");
    for (int i = 0; i < ndim && len < cap; i++) {
        len += (size_t)snprintf(buf + len, cap - len, "%s%lld", i ? ", " : "",
                                (long long)shape[i]);
    }
    if (len < cap) {
        snprintf(buf + len, cap - len, "]");
    }
}

/* Checks the tensors (table, sorted by name) against the expected set. With `have_shapes`
 * false (index only) only the names are compared. */
static const tensor_ref *table_find(const tensor_ref *table, size_t n, const char *name)
{
    tensor_ref key = {name, NULL, 0};
    return bsearch(&key, table, n, sizeof key, cmp_ref);
}

/* An extra tensor of an FP8 checkpoint: `X.weight_scale` beside an F8_E4M3 projection `X.weight`
 * (accepted; checked with its weight) or a static `X.input_scale` (unsupported). *ok: whether
 * the name is accounted for. */
static nvlm_status fp8_extra(nvlm_context *ctx, const char *name, const tensor_ref *table,
                             size_t n, bool have_shapes, bool *ok)
{
    static const char ws[] = ".weight_scale", is[] = ".input_scale";
    size_t len = strlen(name);
    *ok = false;
    if (len > sizeof is - 1 && strcmp(name + len - (sizeof is - 1), is) == 0) {
        return nv_error(ctx, NVLM_ERR_UNSUPPORTED, "tensor %s: static activation scales are "
                        "not supported (FP8 checkpoints with dynamic input_activations only)",
                        name);
    }
    if (len <= sizeof ws - 1 || len >= NV_LAYOUT_NAME_MAX ||
        strcmp(name + len - (sizeof ws - 1), ws) != 0) {
        return NVLM_OK;
    }
    char base[NV_LAYOUT_NAME_MAX];
    snprintf(base, sizeof base, "%.*s.weight", (int)(len - (sizeof ws - 1)), name);
    const tensor_ref *w = table_find(table, n, base);
    if (w == NULL || !fp8_is_projection(base)) {
        return NVLM_OK; /* reported as unexpected */
    }
    if (have_shapes && w->w->t.dtype != NV_F8_E4M3) {
        return nv_error(ctx, NVLM_ERR_FORMAT, "tensor %s: a weight scale for %s, which is "
                        "stored as %s, not F8_E4M3", name, base, nv_dtype_name(w->w->t.dtype));
    }
    *ok = true;
    return NVLM_OK;
}

/* An F8_E4M3 tensor: one of the seven LLM projections, with a well-formed weight_scale, not on
 * quantization_config's ignore list. */
static nvlm_status fp8_check(nvlm_context *ctx, const nvlm_model *m, const char *name,
                             const nv_tensor *t, const tensor_ref *table, size_t n)
{
    if (!fp8_is_projection(name) || t->ndim != 2) {
        return nv_error(ctx, NVLM_ERR_SHAPE, "tensor %s is stored as F8_E4M3, but only the "
                        "LLM's q/k/v/o, gate, up and down projections may be FP8", name);
    }
    char sname[NV_LAYOUT_NAME_MAX + 8];
    snprintf(sname, sizeof sname, "%s_scale", name);
    const tensor_ref *s = table_find(table, n, sname);
    if (s == NULL) {
        return nv_error(ctx, NVLM_ERR_FORMAT, "FP8 tensor %s has no %s", name, sname);
    }
    if (!fp8_scale_ok(&s->w->t, t->shape[0])) {
        char got[128];
        shape_str(got, sizeof got, s->w->t.ndim, s->w->t.shape);
        return nv_error(ctx, NVLM_ERR_FORMAT, "tensor %s: %s %s, want F32 or BF16 of shape "
                        "[%lld, 1], [%lld], [1] or []", sname, nv_dtype_name(s->w->t.dtype), got,
                        (long long)t->shape[0], (long long)t->shape[0]);
    }
    char module[NV_LAYOUT_NAME_MAX];
    snprintf(module, sizeof module, "%.*s", (int)(strlen(name) - 7), name);
    if (m->qcfg != NULL && fp8_ignored(m->qcfg, module)) {
        return nv_error(ctx, NVLM_ERR_FORMAT, "tensor %s is stored as F8_E4M3, but "
                        "quantization_config's ignore list names %s", name, module);
    }
    return NVLM_OK;
}

static nvlm_status check_tensors(nvlm_model *m, exp_list *L, const tensor_ref *table, size_t n,
                                 bool have_shapes)
{
    nvlm_context *ctx = m->h.ctx;
    char missing[512] = "";
    char unexpected[512] = "";
    size_t n_missing = 0;
    size_t n_unexpected = 0;
    for (size_t i = 0; i < n; i++) {
        expected key;
        snprintf(key.name, sizeof key.name, "%s", table[i].name);
        expected *e = strlen(table[i].name) < sizeof key.name
                          ? bsearch(&key, L->v, L->n, sizeof *L->v, cmp_exp)
                          : NULL;
        if (e == NULL) {
            bool ok;
            NVLM_TRY(fp8_extra(ctx, table[i].name, table, n, have_shapes, &ok));
            if (!ok) {
                list_add(unexpected, sizeof unexpected, &n_unexpected, table[i].name);
            }
            continue;
        }
        e->seen = true;
        if (!have_shapes) {
            continue;
        }
        const nv_tensor *t = &table[i].w->t;
        if (t->dtype == NV_F8_E4M3) {
            NVLM_TRY(fp8_check(ctx, m, e->name, t, table, n));
            m->has_fp8 = true;
        } else if (t->dtype != NV_BF16 && t->dtype != NV_F16 && t->dtype != NV_F32) {
            return nv_error(ctx, NVLM_ERR_SHAPE, "tensor %s has dtype %s (need BF16, F16 or F32)",
                            e->name, nv_dtype_name(t->dtype));
        }
        bool same = t->ndim == e->ndim;
        for (int d = 0; same && d < e->ndim; d++) {
            same = t->shape[d] == e->shape[d];
        }
        if (!same) {
            char got[128];
            char want[128];
            shape_str(got, sizeof got, t->ndim, t->shape);
            shape_str(want, sizeof want, e->ndim, e->shape);
            return nv_error(ctx, NVLM_ERR_SHAPE, "tensor %s has shape %s, expected %s", e->name,
                            got, want);
        }
    }
    for (size_t i = 0; i < L->n; i++) {
        if (!L->v[i].seen && !L->v[i].optional) {
            list_add(missing, sizeof missing, &n_missing, L->v[i].name);
        }
    }
    if (n_missing > 0) {
        return nv_error(ctx, NVLM_ERR_SHAPE, "%zu expected tensor%s missing: %s", n_missing,
                        n_missing == 1 ? "" : "s", missing);
    }
    if (n_unexpected > 0) {
        return nv_error(ctx, NVLM_ERR_SHAPE, "%zu unexpected tensor%s: %s", n_unexpected,
                        n_unexpected == 1 ? "" : "s", unexpected);
    }
    return NVLM_OK;
}

/* ---- checkpoint: index, shards, table --------------------------------------------------- */

static void ckpt_free(struct nv_checkpoint *ck)
{
    if (ck == NULL) {
        return;
    }
    for (size_t i = 0; i < ck->n_shards; i++) {
        nv_st_close(ck->shards[i]);
    }
    nv_free(ck->ctx, ck->shards);
    nv_free(ck->ctx, ck->table);
    nv_free(ck->ctx, ck);
}

typedef struct index_info {
    cJSON *root;
    tensor_ref *entries; /* name -> shard number, sorted by name */
    size_t n;
    const char **files;  /* distinct shard file names, sorted */
    size_t n_files;
    uint64_t total_size; /* metadata.total_size, 0 when absent */
} index_info;

static void index_free(nvlm_context *ctx, index_info *ix)
{
    cJSON_Delete(ix->root);
    nv_free(ctx, ix->entries);
    nv_free(ctx, ix->files);
    memset(ix, 0, sizeof *ix);
}

static bool safe_file_name(const char *s)
{
    return s[0] != '\0' && strchr(s, '/') == NULL && strchr(s, '\\') == NULL &&
           strstr(s, "..") == NULL && strcmp(s, ".") != 0;
}

/* Reads the index; n_layout (the config's tensor count) bounds its size before cJSON builds a
 * node per value. */
static nvlm_status index_parse(nvlm_context *ctx, const char *path, size_t n_layout,
                               index_info *ix)
{
    char *text = NULL;
    size_t len = 0;
    NVLM_TRY(nv_read_file(ctx, ctx, path, MAX_INDEX_BYTES, &text, &len));
    const char *fname = "model.safetensors.index.json";
    nv_json_stats js;
    if (!nv_json_check(text, len, &js)) {
        nv_free(ctx, text);
        return nv_error(ctx, NVLM_ERR_FORMAT, "%s: not a valid JSON object (near byte %zu)",
                        fname, js.end);
    }
    if (js.nul_string != SIZE_MAX) {
        /* cJSON would cut the name at the NUL: "model-00001\u0000.x" would become a different
         * file name. Quote the string as written (up to 100 bytes). */
        size_t a = js.nul_string + 1;
        size_t b = a;
        while (b < len && text[b] != '"' && b - a < 100) {
            b += text[b] == '\\' ? 2 : 1;
        }
        nvlm_status st = nv_error(ctx, NVLM_ERR_FORMAT,
                                  "%s: the name \"%.*s\" holds a NUL character (\\u0000), "
                                  "which tensor and shard names cannot", fname,
                                  (int)(NV_MIN(b, len) - a), text + a);
        nv_free(ctx, text);
        return st;
    }
    if (js.values > n_layout + INDEX_VALUES_SLACK) {
        nv_free(ctx, text);
        return nv_error(ctx, NVLM_ERR_LIMIT, "%s: %zu JSON values, more than an index of the "
                        "config's %zu tensors holds", fname, js.values, n_layout);
    }
    bool oom;
    ix->root = nv_json_parse(text, len, NULL, &oom);
    nv_free(ctx, text);
    if (ix->root == NULL) {
        return nv_json_fail(ctx, oom, fname, "not a valid JSON object");
    }
    if (!cJSON_IsObject(ix->root)) {
        return nv_error(ctx, NVLM_ERR_FORMAT, "%s: not a valid JSON object", fname);
    }
    const cJSON *meta = cJSON_GetObjectItemCaseSensitive(ix->root, "metadata");
    const cJSON *ts = cJSON_GetObjectItemCaseSensitive(meta, "total_size");
    if (cJSON_IsNumber(ts) && isfinite(ts->valuedouble) && ts->valuedouble >= 0 &&
        ts->valuedouble < 9007199254740992.0) {
        ix->total_size = (uint64_t)ts->valuedouble;
    }
    const cJSON *map = cJSON_GetObjectItemCaseSensitive(ix->root, "weight_map");
    if (!cJSON_IsObject(map)) {
        return nv_error(ctx, NVLM_ERR_FORMAT, "%s: weight_map missing or not an object", fname);
    }
    size_t n = 0;
    for (const cJSON *it = map->child; it != NULL; it = it->next) {
        if (!cJSON_IsString(it)) {
            return nv_error(ctx, NVLM_ERR_FORMAT, "%s: weight_map entry '%.100s' is not a string",
                            fname, it->string);
        }
        if (!safe_file_name(it->valuestring)) {
            return nv_error(ctx, NVLM_ERR_FORMAT,
                            "%s: tensor '%.100s' names shard '%.100s' outside the model directory "
                            "(paths with '/' or '..' are refused)", fname, it->string,
                            it->valuestring);
        }
        n++;
    }
    ix->entries = nv_alloc_array(ctx, n, sizeof *ix->entries);
    ix->files = nv_alloc_array(ctx, n, sizeof *ix->files);
    if (ix->entries == NULL || ix->files == NULL) {
        return nv_error(ctx, NVLM_ERR_OUT_OF_MEMORY, "out of memory reading %s", fname);
    }
    size_t i = 0;
    for (const cJSON *it = map->child; it != NULL; it = it->next, i++) {
        ix->entries[i].name = it->string;
        ix->entries[i].w = NULL;
        ix->files[i] = it->valuestring;
    }
    ix->n = n;
    qsort(ix->files, n, sizeof *ix->files, cmp_str);
    size_t nf = 0;
    for (i = 0; i < n; i++) {
        if (nf == 0 || strcmp(ix->files[nf - 1], ix->files[i]) != 0) {
            ix->files[nf++] = ix->files[i];
        }
    }
    ix->n_files = nf;
    if (nf > MAX_SHARDS) {
        return nv_error(ctx, NVLM_ERR_LIMIT, "%s: %zu shards, more than the %d allowed", fname, nf,
                        MAX_SHARDS);
    }
    i = 0;
    for (const cJSON *it = map->child; it != NULL; it = it->next, i++) {
        const char **f = bsearch(&it->valuestring, ix->files, nf, sizeof *ix->files, cmp_str);
        ix->entries[i].shard = (size_t)(f - ix->files);
    }
    qsort(ix->entries, n, sizeof *ix->entries, cmp_ref);
    for (i = 1; i < n; i++) {
        if (strcmp(ix->entries[i - 1].name, ix->entries[i].name) == 0) {
            return nv_error(ctx, NVLM_ERR_FORMAT, "%s: tensor '%.100s' listed twice", fname,
                            ix->entries[i].name);
        }
    }
    return NVLM_OK;
}

typedef struct file_id {
    dev_t dev;
    ino_t ino;
    size_t idx;
} file_id;

static int cmp_file_id(const void *a, const void *b)
{
    const file_id *x = a;
    const file_id *y = b;
    if (x->dev != y->dev) {
        return x->dev < y->dev ? -1 : 1;
    }
    if (x->ino != y->ino) {
        return x->ino < y->ino ? -1 : 1;
    }
    return x->idx < y->idx ? -1 : (x->idx > y->idx);
}

/* Stats the index's shards before any header is read: *present turns false when one is missing
 * (NVLM_ERR_NOT_FOUND for a full load), and one file under two names (a symlink, a hard link:
 * the same st_dev and st_ino) is NVLM_ERR_FORMAT, so no header is ever parsed twice. */
static nvlm_status stat_shards(nvlm_model *m, const char **files, size_t n, bool full,
                               bool *present)
{
    nvlm_context *ctx = m->h.ctx;
    file_id *ids = nv_alloc_array(ctx, n > 0 ? n : 1, sizeof *ids);
    if (ids == NULL) {
        return nv_error(ctx, NVLM_ERR_OUT_OF_MEMORY, "out of memory for the shard list");
    }
    *present = true;
    nvlm_status st = NVLM_OK;
    size_t k = 0;
    char path[PATH_LEN];
    for (size_t i = 0; st == NVLM_OK && i < n; i++) {
        struct stat sb;
        st = join(path, m->dir, files[i], ctx);
        if (st != NVLM_OK) {
            break;
        }
        if (stat(path, &sb) != 0) {
            *present = false;
            if (full) {
                st = nv_error(ctx, NVLM_ERR_NOT_FOUND, "shard %s listed in the index is "
                              "missing from %s", files[i], m->dir);
            }
            continue;
        }
        ids[k++] = (file_id){sb.st_dev, sb.st_ino, i};
    }
    if (st == NVLM_OK) {
        qsort(ids, k, sizeof *ids, cmp_file_id);
        for (size_t i = 1; i < k; i++) {
            if (ids[i].dev == ids[i - 1].dev && ids[i].ino == ids[i - 1].ino) {
                st = nv_error(ctx, NVLM_ERR_FORMAT,
                              "model.safetensors.index.json: shards %.200s and %.200s are the "
                              "same file (a link); each shard must be a distinct file",
                              files[ids[i - 1].idx], files[ids[i].idx]);
                break;
            }
        }
    }
    nv_free(ctx, ids);
    return st;
}

/* Opens the shards, builds the sorted table and checks it against the index (if any). The
 * config's layout bounds the tensors of all shards together and their header bytes, checked
 * before each shard's per-tensor state is allocated. */
static nvlm_status ckpt_open(nvlm_model *m, const nvlm_model_params *p, const char **files,
                             size_t n_files, const index_info *ix, nv_st_mode mode)
{
    nvlm_context *ctx = m->h.ctx;
    struct nv_checkpoint *ck = nv_calloc(ctx, 1, sizeof *ck);
    if (ck == NULL) {
        return nv_error(ctx, NVLM_ERR_OUT_OF_MEMORY, "out of memory for the checkpoint");
    }
    ck->ctx = ctx;
    m->ckpt = ck;
    ck->shards = nv_calloc(ctx, n_files, sizeof *ck->shards);
    if (ck->shards == NULL) {
        return nv_error(ctx, NVLM_ERR_OUT_OF_MEMORY, "out of memory for the shard table");
    }
    size_t total = 0;
    size_t n_layout = nv_layout_count(&m->cfg);
    size_t max_total = 2 * n_layout + EXTRA_TENSORS;
    uint64_t header_budget = HEADER_BYTES_BASE + (uint64_t)n_layout * HEADER_BYTES_PER_TENSOR;
    uint64_t header_used = 0;
    char why[160];
    snprintf(why, sizeof why, "all shards may hold %zu tensors and %llu header bytes for the "
             "config's layout of %zu tensors", max_total, (unsigned long long)header_budget,
             n_layout);
    char path[PATH_LEN];
    for (size_t i = 0; i < n_files; i++) {
        NVLM_TRY(join(path, m->dir, files[i], ctx));
        nv_st_limits lim = {max_total - total, header_budget - header_used, why};
        NVLM_TRY(nv_st_open_limited(ctx, path, mode, &lim, ctx, &ck->shards[i]));
        ck->n_shards = i + 1;
        total += nv_st_count(ck->shards[i]);
        header_used += nv_st_header_bytes(ck->shards[i]);
        NVLM_TRY(progress(p, ctx, 0.1f + 0.2f * (float)(i + 1) / (float)n_files));
    }
    ck->table = nv_alloc_array(ctx, total, sizeof *ck->table);
    if (ck->table == NULL) {
        return nv_error(ctx, NVLM_ERR_OUT_OF_MEMORY, "out of memory for %zu tensors", total);
    }
    for (size_t s = 0; s < ck->n_shards; s++) {
        for (size_t i = 0; i < nv_st_count(ck->shards[s]); i++) {
            const nv_weight *w = nv_st_at(ck->shards[s], i);
            ck->table[ck->n++] = (tensor_ref){w->name, w, s};
        }
    }
    qsort(ck->table, ck->n, sizeof *ck->table, cmp_ref);
    for (size_t i = 1; i < ck->n; i++) {
        if (strcmp(ck->table[i - 1].name, ck->table[i].name) == 0) {
            return nv_error(ctx, NVLM_ERR_FORMAT, "tensor '%.100s' is in two shards: %s and %s",
                            ck->table[i].name, files[ck->table[i - 1].shard],
                            files[ck->table[i].shard]);
        }
    }
    if (ix == NULL) {
        return NVLM_OK;
    }
    for (size_t i = 0; i < ix->n; i++) {
        const tensor_ref *r = find_ref(ck->table, ck->n, ix->entries[i].name);
        if (r == NULL || r->shard != ix->entries[i].shard) {
            return nv_error(ctx, NVLM_ERR_FORMAT,
                            "model.safetensors.index.json lists tensor '%.100s' in %s, which does "
                            "not hold it", ix->entries[i].name, files[ix->entries[i].shard]);
        }
    }
    for (size_t i = 0; i < ck->n; i++) {
        if (find_ref(ix->entries, ix->n, ck->table[i].name) == NULL) {
            return nv_error(ctx, NVLM_ERR_FORMAT,
                            "%s holds tensor '%.100s', which model.safetensors.index.json does "
                            "not list", files[ck->table[i].shard], ck->table[i].name);
        }
    }
    return NVLM_OK;
}

/* The ViT's dummy heads from the qkv rows: rows = 3 * (heads + dummy) * head_dim. */
static nvlm_status derive_dummy_heads(nvlm_model *m)
{
    const nv_weight *w = nv_model_weight(m, "vision_model.encoder.layers.0.attn.qkv.weight");
    nv_vision_config *v = &m->cfg.vision;
    if (w == NULL || w->t.ndim != 2) {
        return NVLM_OK; /* reported by the tensor check */
    }
    int64_t rows = w->t.shape[0];
    int64_t per = 3 * (int64_t)v->head_dim;
    int64_t heads = rows / per;
    if (rows % per != 0 || heads < v->num_heads || heads - v->num_heads > MAX_DUMMY_HEADS) {
        return nv_error(m->h.ctx, NVLM_ERR_SHAPE,
                        "tensor vision_model.encoder.layers.0.attn.qkv.weight has %lld rows, not "
                        "3 x (%d heads + dummy heads) x head_dim %d", (long long)rows,
                        v->num_heads, v->head_dim);
    }
    v->num_dummy_heads = (int)(heads - v->num_heads);
    return NVLM_OK;
}

/* ---- public API ------------------------------------------------------------------------- */

void nvlm_model_params_init(nvlm_model_params *p, size_t size)
{
    if (p == NULL || size < sizeof(uint32_t)) {
        return;
    }
    nvlm_model_params d;
    memset(&d, 0, sizeof d);
    d.mode = NVLM_LOAD_FULL;
    d.progress = NULL;
    d.progress_user = NULL;
    d.use_mmap = 1;
    d.precision = NVLM_PRECISION_EXACT;
    d.weight_type = NVLM_WEIGHTS_AUTO;
    size_t n = NV_MIN(size, sizeof d);
    memcpy(p, &d, n);
    p->struct_size = (uint32_t)size;
}

const nv_weight *nv_model_weight(const nvlm_model *m, const char *name)
{
    if (m == NULL || name == NULL) {
        return NULL;
    }
    if (m->ckpt != NULL) {
        const tensor_ref *r = find_ref(m->ckpt->table, m->ckpt->n, name);
        return r != NULL ? r->w : NULL;
    }
    for (size_t i = 0; i < m->n_mem_weights; i++) {
        if (strcmp(m->mem_weights[i].name, name) == 0) {
            return &m->mem_weights[i];
        }
    }
    return NULL;
}

void nvlm_model_free(nvlm_model *m)
{
    if (m == NULL || m->h.magic != NV_MAGIC_MODEL) {
        return;
    }
    nvlm_context *ctx = m->h.ctx;
    nv_engine_free(m);
    nvlm_tokenizer_free(m->tok);
    ckpt_free(m->ckpt);
    for (size_t i = 0; i < m->n_mem_weights; i++) {
        nv_free(ctx, (void *)m->mem_weights[i].name);
    }
    nv_free(ctx, m->mem_block);
    nv_free(ctx, m->mem_weights);
    nv_free(ctx, m->dir);
    fp8_qconfig_free(ctx, m->qcfg);
    nv_free(ctx, m->qcfg);
    m->h.magic = NV_MAGIC_DEAD;
    nv_free(ctx, m);
}

static nvlm_status load_config(nvlm_model *m)
{
    nvlm_context *ctx = m->h.ctx;
    char path[PATH_LEN];
    char *text = NULL;
    size_t len = 0;
    NVLM_TRY(join(path, m->dir, "config.json", ctx));
    nvlm_status st = nv_read_file(ctx, ctx, path, MAX_CONFIG_BYTES, &text, &len);
    if (st == NVLM_ERR_NOT_FOUND) {
        return nv_error(ctx, st, "no config.json in %s", m->dir);
    }
    NVLM_TRY(st);
    st = nv_config_parse(&m->cfg, text, len, ctx);
    m->qcfg = st == NVLM_OK ? nv_calloc(ctx, 1, sizeof *m->qcfg) : NULL;
    if (st == NVLM_OK && m->qcfg == NULL) {
        st = nv_error(ctx, NVLM_ERR_OUT_OF_MEMORY, "out of memory");
    }
    if (st == NVLM_OK) {
        st = fp8_qconfig_parse(ctx, text, len, m->qcfg, ctx);
    }
    nv_free(ctx, text);
    NVLM_TRY(st);
    NVLM_TRY(join(path, m->dir, "generation_config.json", ctx));
    if (file_exists(path)) {
        NVLM_TRY(nv_read_file(ctx, ctx, path, MAX_CONFIG_BYTES, &text, &len));
        st = nv_gen_config_parse(&m->cfg, text, len, ctx);
        nv_free(ctx, text);
    }
    return st;
}

static nvlm_status load_weights(nvlm_model *m, const nvlm_model_params *p)
{
    nvlm_context *ctx = m->h.ctx;
    char path[PATH_LEN];
    bool full = p->mode == NVLM_LOAD_FULL;
    nv_st_mode mode = !full ? NV_ST_HEADER_ONLY : p->use_mmap ? NV_ST_MMAP : NV_ST_READ;
    index_info ix;
    memset(&ix, 0, sizeof ix);
    exp_list L = {NULL, 0, 0, NULL};
    nvlm_status st = NVLM_OK;

    NVLM_TRY(join(path, m->dir, "model.safetensors.index.json", ctx));
    bool have_index = file_exists(path);
    const char *single = "model.safetensors";
    const char **files = NULL;
    size_t n_files = 0;
    bool shards_present = false;
    if (have_index) {
        st = index_parse(ctx, path, nv_layout_count(&m->cfg), &ix);
        files = ix.files;
        n_files = ix.n_files;
        if (st == NVLM_OK) {
            st = stat_shards(m, files, n_files, full, &shards_present);
        }
    } else {
        NVLM_TRY(join(path, m->dir, single, ctx));
        if (file_exists(path)) {
            files = &single;
            n_files = 1;
            shards_present = true;
        } else if (full) {
            st = nv_error(ctx, NVLM_ERR_NOT_FOUND,
                          "no model.safetensors or model.safetensors.index.json in %s", m->dir);
        }
    }
    if (st == NVLM_OK) {
        st = progress(p, ctx, 0.1f);
    }
    if (st == NVLM_OK && shards_present) {
        st = ckpt_open(m, p, files, n_files, have_index ? &ix : NULL, mode);
        if (st == NVLM_OK) {
            st = derive_dummy_heads(m);
        }
    }
    if (st == NVLM_OK && (shards_present || have_index)) {
        st = exp_build(&m->cfg, ctx, &L);
        if (st == NVLM_OK && shards_present) {
            st = check_tensors(m, &L, m->ckpt->table, m->ckpt->n, true);
        } else if (st == NVLM_OK) {
            st = check_tensors(m, &L, ix.entries, ix.n, false);
        }
    }
    if (st == NVLM_OK) {
        m->n_params = nv_layout_params(&m->cfg);
        if (m->ckpt != NULL) {
            m->weight_bytes = 0;
            for (size_t i = 0; i < m->ckpt->n_shards; i++) {
                m->weight_bytes += nv_st_data_bytes(m->ckpt->shards[i]);
            }
        } else if (ix.total_size > 0) {
            m->weight_bytes = ix.total_size;
        } else {
            m->weight_bytes = m->n_params * 2;
        }
    }
    nv_free(ctx, L.v);
    index_free(ctx, &ix);
    return st;
}

/* The tokenizer must fit the model (both load modes): every id it can produce has an embedding
 * row, and the tokens the chat template and the image placeholders are built from (prompt.c)
 * are added tokens, so that the template's text becomes exactly those ids. NVLM_ERR_FORMAT. */
static nvlm_status check_tokenizer(nvlm_model *m)
{
    static const char *const template_tokens[] = {"<|im_start|>", "<|im_end|>", "<|vision_pad|>"};
    nvlm_context *ctx = m->h.ctx;
    const nvlm_tokenizer *t = m->tok;
    int32_t rows = m->cfg.llm.vocab_size;
    if (t->n_ids > rows) {
        int32_t first = -1;
        int32_t count = 0;
        for (int32_t id = rows; id < t->n_ids; id++) {
            if (t->id_flags[id] & TOK_F_PRESENT) {
                first = first < 0 ? id : first;
                count++;
            }
        }
        const char *text = "";
        for (size_t i = 0; i < t->n_added; i++) {
            if (t->added[i].id == first) {
                text = t->added[i].content;
            }
        }
        return nv_error(ctx, NVLM_ERR_FORMAT,
                        "tokenizer: id %d%s%.60s%s has no embedding row: the model has %d "
                        "(llm_config.vocab_size) and the tokenizer %d id%s at or above that",
                        (int)first, text[0] ? " (" : "", text, text[0] ? ")" : "", (int)rows,
                        (int)count, count == 1 ? "" : "s");
    }
    for (size_t k = 0; k < NV_ARRAY_LEN(template_tokens); k++) {
        const char *name = template_tokens[k];
        bool added = false;
        for (size_t i = 0; i < t->n_added && !added; i++) {
            added = strcmp(t->added[i].content, name) == 0;
        }
        if (!added) {
            return nv_error(ctx, NVLM_ERR_FORMAT,
                            "tokenizer: %s, which the chat template uses, is not one of its "
                            "added tokens", name);
        }
    }
    return NVLM_OK;
}

static nvlm_status load_tokenizer(nvlm_model *m)
{
    nvlm_context *ctx = m->h.ctx;
    /* No tokenizer files (NOT_FOUND) leaves a model without a tokenizer. UNSUPPORTED is also
     * tolerated while the tokenizer module is a stub (it returns UNSUPPORTED for everything);
     * once it lands, an unsupported tokenizer type should arguably fail the load instead. */
    nvlm_status st = nvlm_tokenizer_load(ctx, m->dir, &m->tok);
    if (st == NVLM_ERR_NOT_FOUND || st == NVLM_ERR_UNSUPPORTED) {
        nv_log(ctx, NVLM_LOG_WARN, "model %s: no tokenizer loaded (%s%s%s)", m->dir,
               nvlm_status_str(st), nvlm_last_error(ctx)[0] ? ": " : "", nvlm_last_error(ctx));
        m->tok = NULL;
        return NVLM_OK;
    }
    NVLM_TRY(st);
    return check_tokenizer(m);
}

/* The weight type from the request and what the checkpoint stores (nvlm.h). */
static nvlm_status resolve_weights(nvlm_model *m, nvlm_weight_type want)
{
    bool stored = m->has_fp8 || (m->ckpt == NULL && m->qcfg != NULL && m->qcfg->present);
    if (want == NVLM_WEIGHTS_BF16 && stored) {
        return nv_error(m->h.ctx, NVLM_ERR_UNSUPPORTED, "%s stores FP8 weights: loading them "
                        "as bf16 is not supported (use weight type auto or fp8)", m->dir);
    }
    m->quantize_fp8 = want == NVLM_WEIGHTS_FP8;
    m->weight_type = want == NVLM_WEIGHTS_FP8 || stored ? NVLM_WEIGHTS_FP8 : NVLM_WEIGHTS_BF16;
    return NVLM_OK;
}

nvlm_status nvlm_model_load(nvlm_context *ctx, const char *dir, const nvlm_model_params *params,
                            nvlm_model **out)
{
    if (out != NULL) {
        *out = NULL;
    }
    if (ctx == NULL || ctx->h.magic != NV_MAGIC_CONTEXT) {
        return NVLM_ERR_INVALID_ARGUMENT;
    }
    nv_clear(ctx);
    if (dir == NULL || out == NULL) {
        return nv_error(ctx, NVLM_ERR_INVALID_ARGUMENT,
                        "nvlm_model_load: dir and out are required");
    }
    nvlm_model_params p;
    nvlm_model_default_params(&p);
    if (!nv_params_copy(&p, sizeof p, params, sizeof(uint32_t))) {
        return nv_error(ctx, NVLM_ERR_INVALID_ARGUMENT, "nvlm_model_load: bad params struct_size");
    }
    if (p.mode != NVLM_LOAD_FULL && p.mode != NVLM_LOAD_CONFIG_ONLY) {
        return nv_error(ctx, NVLM_ERR_INVALID_ARGUMENT, "nvlm_model_load: bad mode %d",
                        (int)p.mode);
    }
    if (p.precision != NVLM_PRECISION_EXACT && p.precision != NVLM_PRECISION_FAST) {
        return nv_error(ctx, NVLM_ERR_INVALID_ARGUMENT,
                        "nvlm_model_load: bad precision %d (0 exact, 1 fast)", (int)p.precision);
    }
    if (p.weight_type != NVLM_WEIGHTS_AUTO && p.weight_type != NVLM_WEIGHTS_BF16 &&
        p.weight_type != NVLM_WEIGHTS_FP8) {
        return nv_error(ctx, NVLM_ERR_INVALID_ARGUMENT, "nvlm_model_load: bad weight_type %d",
                        (int)p.weight_type);
    }
    nvlm_model *m = nv_calloc(ctx, 1, sizeof *m);
    if (m == NULL) {
        return nv_error(ctx, NVLM_ERR_OUT_OF_MEMORY, "out of memory for the model");
    }
    nv_handle_init(&m->h, NV_MAGIC_MODEL, ctx);
    m->mode = p.mode;
    m->precision = p.precision;
    m->dir = nv_strdup(ctx, dir);
    nvlm_status st = m->dir != NULL ? NVLM_OK
                                    : nv_error(ctx, NVLM_ERR_OUT_OF_MEMORY, "out of memory");
    if (st == NVLM_OK) {
        st = progress(&p, ctx, 0.0f);
    }
    if (st == NVLM_OK) {
        st = load_config(m);
    }
    if (st == NVLM_OK) {
        st = load_weights(m, &p);
    }
    if (st == NVLM_OK) {
        st = resolve_weights(m, p.weight_type);
    }
    if (st == NVLM_OK) {
        st = load_tokenizer(m);
    }
    if (st == NVLM_OK) {
        st = progress(&p, ctx, NV_LOAD_WEIGHTS_F0);
    }
    if (st == NVLM_OK && p.mode == NVLM_LOAD_FULL) {
        /* the engine reports NV_LOAD_WEIGHTS_F0 .. 1 by bytes of weights laid out (uploaded) */
        m->progress = p.progress;
        m->progress_user = p.progress_user;
        st = nv_engine_init(m);
        m->progress = NULL;
        m->progress_user = NULL;
        if (st != NVLM_OK && m->h.err[0] != '\0') {
            nv_error_copy(ctx, m, st);
        } else if (st != NVLM_OK && nvlm_last_error(ctx)[0] == '\0') {
            nv_error(ctx, st, "engine initialisation failed: %s", nvlm_status_str(st));
        }
    }
    if (st == NVLM_OK) {
        st = progress(&p, ctx, 1.0f);
    }
    if (st != NVLM_OK) {
        nvlm_model_free(m);
        return st;
    }
    nv_clear(ctx);
    *out = m;
    return NVLM_OK;
}

typedef struct proj_count {
    uint64_t elems, rows;
} proj_count;

static nvlm_status proj_add(void *u, const nv_layout_tensor *t)
{
    proj_count *p = u;
    if (!t->optional && t->ndim == 2 && fp8_is_projection(t->name)) {
        p->elems += (uint64_t)t->shape[0] * (uint64_t)t->shape[1];
        p->rows += (uint64_t)t->shape[0];
    }
    return NVLM_OK;
}

nvlm_status nvlm_model_get_info(const nvlm_model *m, nvlm_model_info *info)
{
    if (m == NULL || m->h.magic != NV_MAGIC_MODEL || info == NULL ||
        info->struct_size < sizeof(uint32_t)) {
        return NVLM_ERR_INVALID_ARGUMENT;
    }
    const nv_config *c = &m->cfg;
    nvlm_model_info i;
    memset(&i, 0, sizeof i);
    i.vision_hidden_size = c->vision.hidden_size;
    i.vision_intermediate_size = c->vision.intermediate_size;
    i.vision_num_hidden_layers = c->vision.num_layers;
    i.vision_num_attention_heads = c->vision.num_heads;
    i.vision_num_dummy_heads = c->vision.num_dummy_heads;
    i.vision_head_dim = c->vision.head_dim;
    i.vision_image_size = c->vision.image_size;
    i.vision_patch_size = c->vision.patch_size;
    i.vision_layer_norm_eps = c->vision.layer_norm_eps;
    i.downsample_ratio = c->downsample_ratio;
    i.num_image_token = c->num_image_token;
    i.projector_input_size = c->proj_input_size;
    i.projector_hidden_size = c->proj_hidden_size;
    i.projector_output_size = c->proj_output_size;
    i.llm_hidden_size = c->llm.hidden_size;
    i.llm_intermediate_size = c->llm.intermediate_size;
    i.llm_num_hidden_layers = c->llm.num_layers;
    i.llm_num_attention_heads = c->llm.num_heads;
    i.llm_num_key_value_heads = c->llm.num_kv_heads;
    i.llm_head_dim = c->llm.head_dim;
    i.vocab_size = c->llm.vocab_size;
    i.max_position_embeddings = c->llm.max_position_embeddings;
    i.rope_theta = c->llm.rope_theta;
    i.rms_norm_eps = c->llm.rms_norm_eps;
    i.image_size = c->force_image_size;
    i.min_dynamic_patch = c->min_dynamic_patch;
    i.max_dynamic_patch = c->max_dynamic_patch;
    i.use_thumbnail = c->use_thumbnail ? 1 : 0;
    /* Qwen2 puts no BOS before a prompt whatever llm_config says; bos and pad agree with
     * nvlm_tokenizer_special_tokens */
    i.bos_token_id = -1;
    i.eos_token_id = c->llm.eos_token_id;
    i.pad_token_id = c->llm.pad_token_id;
    i.image_context_token_id = -1;
    if (m->tok != NULL) {
        nvlm_special_tokens sp = {.struct_size = sizeof sp};
        if (nvlm_tokenizer_special_tokens(m->tok, &sp) == NVLM_OK) {
            i.bos_token_id = sp.bos;
            i.pad_token_id = sp.pad;
        }
        i.image_context_token_id = nvlm_tokenizer_token_id(m->tok, "<|vision_pad|>");
        i.tokenizer_vocab_size = nvlm_tokenizer_vocab_size(m->tok);
    }
    i.n_params = m->n_params;
    i.weight_bytes = m->weight_bytes;
    /* The CPU backend uses the stored tensors in place (bf16/f16/f32 converted on use). FP8:
     * codes + f32 scales of the projections; quantized at load, they replace the stored
     * (bf16, 2-byte) projections, whose mapped pages are read once and not kept. */
    proj_count pc = {0, 0};
    nv_layout_tensors(c, proj_add, &pc);
    bool fp8 = m->weight_type == NVLM_WEIGHTS_FP8;
    i.cpu_bytes = m->weight_bytes;
    if (fp8) {
        uint64_t q = pc.elems + 4 * pc.rows;
        i.cpu_bytes = m->has_fp8 ? m->weight_bytes + 4 * pc.rows
                                 : m->weight_bytes - NV_MIN(m->weight_bytes, 2 * pc.elems) + q;
    }
    /* The device figures: the estimator the CUDA fit check uses (memory_plan.h). */
    bool lm_head = !c->llm.tie_word_embeddings ||
                   nv_model_weight(m, "language_model.lm_head.weight") != NULL;
    nv_mem_plan one;
    nv_mem_plan tp;
    nv_mem_plan pass;
    int64_t n_pass = NV_MIN((int64_t)DEC_MAX_BATCH, (int64_t)c->llm.max_position_embeddings);
    if (nv_mem_estimate(c, 1, fp8, NV_BF16, 0, lm_head, NULL, &one, NULL) == NVLM_OK) {
        i.cuda_bytes = one.weights;
    }
    i.weight_type = fp8 ? NVLM_WEIGHTS_FP8 : NVLM_WEIGHTS_BF16;
    uint64_t kv = 2 * (uint64_t)c->llm.num_layers * (uint64_t)c->llm.num_kv_heads *
                  (uint64_t)c->llm.head_dim;
    i.kv_bytes_per_token_f32 = kv * 4;
    i.kv_bytes_per_token_bf16 = kv * 2;
    i.weights_loaded = m->mode == NVLM_LOAD_FULL ? 1 : 0;
    i.tp_size = m->h.ctx->tp_size;
    if (nv_mem_estimate(c, i.tp_size, fp8, NV_BF16, 0, lm_head, NULL, &tp, NULL) == NVLM_OK &&
        nv_mem_estimate(c, i.tp_size, fp8, NV_BF16, n_pass, lm_head, NULL, &pass, NULL) ==
            NVLM_OK) {
        i.per_rank_weight_bytes = tp.weights;
        i.cuda_workspace_bytes = tp.workspace;
        i.cuda_activation_bytes = tp.activations;
        i.cuda_kv_bytes_per_token = tp.kv_per_token;
        i.cuda_kv_bytes_default_ctx = tp.kv;
        i.cuda_headroom_bytes = tp.headroom;
        i.cuda_load_bytes = pass.total;
        i.cuda_default_ctx_bytes = tp.total;
        i.cuda_default_n_ctx = (int32_t)tp.n_ctx;
        i.cuda_load_n_ctx = (int32_t)pass.n_ctx;
    }
    uint32_t size = info->struct_size;
    memcpy(info, &i, NV_MIN((size_t)size, sizeof i));
    info->struct_size = size;
    return NVLM_OK;
}

nvlm_tokenizer *nvlm_model_tokenizer(const nvlm_model *m)
{
    if (m == NULL || m->h.magic != NV_MAGIC_MODEL) {
        return NULL;
    }
    return m->tok;
}

nvlm_status nvlm_model_image_params(const nvlm_model *m, nvlm_image_params *p)
{
    if (m == NULL || m->h.magic != NV_MAGIC_MODEL || p == NULL ||
        p->struct_size < sizeof(uint32_t)) {
        return NVLM_ERR_INVALID_ARGUMENT;
    }
    uint32_t size = p->struct_size;
    nvlm_image_params d;
    nvlm_image_default_params(&d);
    d.min_tiles = m->cfg.min_dynamic_patch;
    d.max_tiles = m->cfg.max_dynamic_patch;
    d.use_thumbnail = m->cfg.use_thumbnail ? 1 : 0;
    d.tile_size = m->cfg.force_image_size;
    memcpy(p, &d, NV_MIN((size_t)size, sizeof d));
    p->struct_size = size;
    return NVLM_OK;
}
