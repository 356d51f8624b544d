/*
 * safetensors.c - safetensors reader: 8-byte little-endian header length H, H bytes of JSON
 * {name: {dtype, shape, data_offsets [begin, end)}, "__metadata__": {str: str}}, then the data.
 * Every number from the file is checked before use: header length cap, dtype known, dims and
 * byte counts overflow-checked, offsets in range, sorted, non-overlapping and covering the
 * data area exactly (the rules of the reference Rust implementation), names unique.
 */
#include "safetensors.h"

#include "json.h"

#include <cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* Integers in JSON are read through doubles: only values a double holds exactly are taken. */
#define MAX_JSON_INT 9007199254740992.0 /* 2^53 */

struct nv_st_file {
    nvlm_context *ctx;
    char *path;
    void *map;             /* NV_ST_MMAP: the mapping */
    size_t map_size;
    char *buf;             /* NV_ST_READ: the file; NV_ST_HEADER_ONLY: the header */
    uint64_t data_size;    /* bytes after the header */
    nv_weight *w;          /* n tensors, sorted by data offset */
    size_t n;
    size_t *by_name;       /* indices into w sorted by name */
    char *names;           /* all names, NUL-separated */
    uint64_t header_len;
    const nv_st_limits *lim; /* borrowed while opening; NULL = built-in caps only */
};

/* Per tensor, a header holds an object, dtype, shape and offsets arrays and their numbers:
 * at most 14 values. The slack allows a large __metadata__. */
#define VALUES_PER_TENSOR 16
#define VALUES_SLACK 65536

typedef struct entry {
    uint64_t begin;
    uint64_t end;
    size_t idx;
} entry;

size_t nv_st_count(const nv_st_file *f)
{
    return f != NULL ? f->n : 0;
}

const nv_weight *nv_st_at(const nv_st_file *f, size_t i)
{
    return f != NULL && i < f->n ? &f->w[i] : NULL;
}

uint64_t nv_st_data_bytes(const nv_st_file *f)
{
    return f != NULL ? f->data_size : 0;
}

uint64_t nv_st_header_bytes(const nv_st_file *f)
{
    return f != NULL ? f->header_len : 0;
}

const char *nv_st_path(const nv_st_file *f)
{
    return f != NULL ? f->path : "";
}

uint64_t nv_st_nbytes(const nv_weight *w)
{
    uint64_t n = nv_dtype_size(w->t.dtype);
    for (int i = 0; i < w->t.ndim; i++) {
        n *= (uint64_t)w->t.shape[i];
    }
    return n;
}

const nv_weight *nv_st_find(const nv_st_file *f, const char *name)
{
    if (f == NULL || name == NULL) {
        return NULL;
    }
    size_t lo = 0;
    size_t hi = f->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        const nv_weight *w = &f->w[f->by_name[mid]];
        int c = strcmp(w->name, name);
        if (c == 0) {
            return w;
        }
        if (c < 0) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    return NULL;
}

void nv_st_close(nv_st_file *f)
{
    if (f == NULL) {
        return;
    }
    nvlm_context *ctx = f->ctx;
    if (f->map != NULL) {
        munmap(f->map, f->map_size);
    }
    nv_free(ctx, f->buf);
    nv_free(ctx, f->w);
    nv_free(ctx, f->by_name);
    nv_free(ctx, f->names);
    nv_free(ctx, f->path);
    nv_free(ctx, f);
}

/* ---- header parsing ------------------------------------------------------------------------ */

static bool json_uint(const cJSON *item, uint64_t *out)
{
    if (!cJSON_IsNumber(item)) {
        return false;
    }
    double d = item->valuedouble;
    if (!isfinite(d) || d < 0.0 || d > MAX_JSON_INT || floor(d) != d) {
        return false;
    }
    *out = (uint64_t)d;
    return true;
}

static int cmp_entry(const void *a, const void *b)
{
    const entry *x = a;
    const entry *y = b;
    if (x->begin != y->begin) {
        return x->begin < y->begin ? -1 : 1;
    }
    if (x->end != y->end) {
        return x->end < y->end ? -1 : 1;
    }
    return x->idx < y->idx ? -1 : (x->idx > y->idx);
}

/* qsort has no user pointer: sort (name pointer, index) pairs instead. */
typedef struct name_ref {
    const char *name;
    size_t idx;
} name_ref;

static int cmp_name(const void *a, const void *b)
{
    return strcmp(((const name_ref *)a)->name, ((const name_ref *)b)->name);
}

static nvlm_status check_metadata(const cJSON *meta, const char *path, void *eh)
{
    if (!cJSON_IsObject(meta)) {
        return nv_error(eh, NVLM_ERR_FORMAT, "%s: __metadata__ is not an object", path);
    }
    for (const cJSON *it = meta->child; it != NULL; it = it->next) {
        if (!cJSON_IsString(it)) {
            return nv_error(eh, NVLM_ERR_FORMAT, "%s: __metadata__ value '%.80s' is not a string",
                            path, it->string != NULL ? it->string : "");
        }
    }
    return NVLM_OK;
}

/* One tensor entry -> w (name set by the caller), its offsets -> e. */
static nvlm_status parse_entry(const cJSON *it, const char *path, uint64_t data_size,
                               nv_weight *w, entry *e, void *eh)
{
    const char *name = it->string;
    if (!cJSON_IsObject(it)) {
        return nv_error(eh, NVLM_ERR_FORMAT, "%s: tensor '%.80s' is not a JSON object", path, name);
    }
    const cJSON *dt = cJSON_GetObjectItemCaseSensitive(it, "dtype");
    const cJSON *shape = cJSON_GetObjectItemCaseSensitive(it, "shape");
    const cJSON *offs = cJSON_GetObjectItemCaseSensitive(it, "data_offsets");
    if (!cJSON_IsString(dt)) {
        return nv_error(eh, NVLM_ERR_FORMAT, "%s: tensor '%.80s': dtype missing or not a string",
                        path, name);
    }
    int dtype = nv_dtype_from_name(dt->valuestring);
    if (dtype < 0) {
        return nv_error(eh, NVLM_ERR_UNSUPPORTED, "%s: tensor '%.80s': unknown dtype '%.40s'",
                        path, name, dt->valuestring);
    }
    if (!cJSON_IsArray(shape)) {
        return nv_error(eh, NVLM_ERR_FORMAT, "%s: tensor '%.80s': shape missing or not an array",
                        path, name);
    }
    int ndim = cJSON_GetArraySize(shape);
    if (ndim > NV_MAX_DIMS) {
        return nv_error(eh, NVLM_ERR_LIMIT, "%s: tensor '%.80s': %d dims, more than the %d allowed",
                        path, name, ndim, NV_MAX_DIMS);
    }
    uint64_t nbytes = nv_dtype_size((nv_dtype)dtype);
    w->t.dtype = (nv_dtype)dtype;
    w->t.ndim = ndim;
    w->t.device = -1;
    w->t.data = NULL;
    int d = 0;
    for (const cJSON *s = shape->child; s != NULL; s = s->next, d++) {
        uint64_t v;
        if (!json_uint(s, &v)) {
            return nv_error(eh, NVLM_ERR_FORMAT,
                            "%s: tensor '%.80s': shape[%d] is not a non-negative integer",
                            path, name, d);
        }
        if (!nv_mul_u64(nbytes, v, &nbytes)) {
            return nv_error(eh, NVLM_ERR_FORMAT,
                            "%s: tensor '%.80s': shape overflows the byte count", path, name);
        }
        w->t.shape[d] = (int64_t)v;
    }
    if (!cJSON_IsArray(offs) || cJSON_GetArraySize(offs) != 2) {
        return nv_error(eh, NVLM_ERR_FORMAT,
                        "%s: tensor '%.80s': data_offsets missing or not a pair", path, name);
    }
    if (!json_uint(offs->child, &e->begin) || !json_uint(offs->child->next, &e->end)) {
        return nv_error(eh, NVLM_ERR_FORMAT,
                        "%s: tensor '%.80s': data_offsets are not non-negative integers", path,
                        name);
    }
    if (e->begin > e->end) {
        return nv_error(eh, NVLM_ERR_FORMAT,
                        "%s: tensor '%.80s': data_offsets [%llu, %llu] begin after end", path, name,
                        (unsigned long long)e->begin, (unsigned long long)e->end);
    }
    if (e->end > data_size) {
        return nv_error(eh, NVLM_ERR_FORMAT,
                        "%s: tensor '%.80s': data_offsets end %llu out of range (data area is "
                        "%llu bytes; truncated file?)", path, name, (unsigned long long)e->end,
                        (unsigned long long)data_size);
    }
    if (e->end - e->begin != nbytes) {
        return nv_error(eh, NVLM_ERR_FORMAT,
                        "%s: tensor '%.80s': byte count %llu of data_offsets does not match "
                        "dtype x shape = %llu", path, name,
                        (unsigned long long)(e->end - e->begin), (unsigned long long)nbytes);
    }
    return NVLM_OK;
}

/* Checks offsets (sorted, contiguous, covering [0, data_size)) and names (unique); reorders
 * f->w by offset and builds f->by_name. */
static nvlm_status check_layout(nv_st_file *f, entry *ents, uint64_t hdr_end, void *eh)
{
    const char *path = f->path;
    qsort(ents, f->n, sizeof *ents, cmp_entry);
    uint64_t pos = 0;
    for (size_t i = 0; i < f->n; i++) {
        const nv_weight *w = &f->w[ents[i].idx];
        if (ents[i].begin < pos) {
            return nv_error(eh, NVLM_ERR_FORMAT,
                            "%s: tensor '%.80s' at [%llu, %llu) overlaps the previous tensor "
                            "(ends at %llu)", path, w->name, (unsigned long long)ents[i].begin,
                            (unsigned long long)ents[i].end, (unsigned long long)pos);
        }
        if (ents[i].begin > pos) {
            return nv_error(eh, NVLM_ERR_FORMAT,
                            "%s: gap of %llu bytes in the data area before tensor '%.80s'", path,
                            (unsigned long long)(ents[i].begin - pos), w->name);
        }
        size_t esize = nv_dtype_size(w->t.dtype);
        if ((hdr_end + ents[i].begin) % esize != 0) {
            return nv_error(eh, NVLM_ERR_UNSUPPORTED,
                            "%s: tensor '%.80s': data not aligned to its %zu-byte dtype", path,
                            w->name, esize);
        }
        pos = ents[i].end;
    }
    if (pos != f->data_size) {
        return nv_error(eh, NVLM_ERR_FORMAT,
                        "%s: data area is %llu bytes but the tensors cover %llu (trailing gap)",
                        path, (unsigned long long)f->data_size, (unsigned long long)pos);
    }

    /* Reorder by offset; names stay valid (they point into f->names). */
    nv_weight *sorted = nv_alloc_array(f->ctx, f->n, sizeof *sorted);
    name_ref *refs = nv_alloc_array(f->ctx, f->n, sizeof *refs);
    f->by_name = nv_alloc_array(f->ctx, f->n, sizeof *f->by_name);
    if (sorted == NULL || refs == NULL || f->by_name == NULL) {
        nv_free(f->ctx, sorted);
        nv_free(f->ctx, refs);
        return nv_error(eh, NVLM_ERR_OUT_OF_MEMORY, "%s: out of memory for the tensor table", path);
    }
    for (size_t i = 0; i < f->n; i++) {
        sorted[i] = f->w[ents[i].idx];
        refs[i].name = sorted[i].name;
        refs[i].idx = i;
    }
    nv_free(f->ctx, f->w);
    f->w = sorted;
    qsort(refs, f->n, sizeof *refs, cmp_name);
    nvlm_status st = NVLM_OK;
    for (size_t i = 0; i < f->n; i++) {
        if (i > 0 && strcmp(refs[i - 1].name, refs[i].name) == 0) {
            st = nv_error(eh, NVLM_ERR_FORMAT, "%s: duplicate tensor name '%.80s'", path,
                          refs[i].name);
            break;
        }
        f->by_name[i] = refs[i].idx;
    }
    nv_free(f->ctx, refs);
    return st;
}

/* Parses the header JSON hdr[0..hlen) of a file whose data area (data_size bytes) starts at
 * `data` (NULL when only the header was read). */
static nvlm_status parse_header(nv_st_file *f, const char *hdr, size_t hlen, const uint8_t *data,
                                void *eh)
{
    const char *path = f->path;
    const char *end = NULL;
    /* Scan before parsing: malformed text and headers over the caller's bounds are refused
     * before cJSON allocates a node per value. */
    nv_json_stats js;
    if (!nv_json_check(hdr, hlen, &js)) {
        if (js.trailing) {
            return nv_error(eh, NVLM_ERR_FORMAT, "%s: trailing bytes after the header JSON", path);
        }
        return nv_error(eh, NVLM_ERR_FORMAT, "%s: header is not valid JSON (near byte %zu)", path,
                        js.end);
    }
    if (js.nul_string != SIZE_MAX) {
        return nv_error(eh, NVLM_ERR_FORMAT, "%s: header string near byte %zu holds a NUL "
                        "character (\\u0000), which tensor names cannot", path, js.nul_string);
    }
    const nv_st_limits *lim = f->lim;
    if (lim != NULL && js.top_members > lim->max_tensors + 1) {
        return nv_error(eh, NVLM_ERR_LIMIT, "%s: header lists %zu entries, more than the %zu "
                        "tensors allowed (%s)", path, js.top_members, lim->max_tensors, lim->why);
    }
    if (lim != NULL && js.values > (lim->max_tensors + 1) * VALUES_PER_TENSOR + VALUES_SLACK) {
        return nv_error(eh, NVLM_ERR_LIMIT, "%s: header holds %zu JSON values, more than %zu "
                        "tensors need (%s)", path, js.values, lim->max_tensors, lim->why);
    }
    bool oom;
    cJSON *root = nv_json_parse(hdr, hlen, &end, &oom);
    if (root == NULL && oom) {
        return nv_error(eh, NVLM_ERR_OUT_OF_MEMORY, "%s: out of memory parsing the header JSON",
                        path);
    }
    if (root == NULL) {
        size_t at = end != NULL && end >= hdr ? (size_t)(end - hdr) : 0;
        return nv_error(eh, NVLM_ERR_FORMAT, "%s: header is not valid JSON (near byte %zu)", path,
                        at);
    }
    nvlm_status st = NVLM_OK;
    entry *ents = NULL;
    for (const char *p = end; p != NULL && p < hdr + hlen; p++) {
        if (*p != ' ' && *p != '\t' && *p != '\n' && *p != '\r') {
            st = nv_error(eh, NVLM_ERR_FORMAT, "%s: trailing bytes after the header JSON", path);
            goto done;
        }
    }
    if (!cJSON_IsObject(root)) {
        st = nv_error(eh, NVLM_ERR_FORMAT, "%s: header JSON is not an object", path);
        goto done;
    }
    size_t n = 0;
    size_t names_len = 0;
    bool have_meta = false;
    for (const cJSON *it = root->child; it != NULL; it = it->next) {
        if (strcmp(it->string, "__metadata__") == 0) {
            if (have_meta) {
                st = nv_error(eh, NVLM_ERR_FORMAT, "%s: duplicate __metadata__", path);
                goto done;
            }
            have_meta = true;
            st = check_metadata(it, path, eh);
            if (st != NVLM_OK) {
                goto done;
            }
            continue;
        }
        n++;
        /* Bounded by hlen (< 100 MB), so this cannot overflow. */
        names_len += strlen(it->string) + 1;
    }
    if (lim != NULL && n > lim->max_tensors) {
        st = nv_error(eh, NVLM_ERR_LIMIT, "%s: header lists %zu tensors, more than the %zu "
                      "allowed (%s)", path, n, lim->max_tensors, lim->why);
        goto done;
    }
    f->n = n;
    f->w = nv_calloc(f->ctx, n, sizeof *f->w);
    ents = nv_alloc_array(f->ctx, n, sizeof *ents);
    f->names = nv_malloc(f->ctx, names_len);
    if (f->w == NULL || ents == NULL || f->names == NULL) {
        st = nv_error(eh, NVLM_ERR_OUT_OF_MEMORY, "%s: out of memory for %zu tensors", path, n);
        goto done;
    }
    size_t i = 0;
    char *np = f->names;
    for (const cJSON *it = root->child; it != NULL; it = it->next) {
        if (strcmp(it->string, "__metadata__") == 0) {
            continue;
        }
        size_t len = strlen(it->string);
        memcpy(np, it->string, len + 1);
        f->w[i].name = np;
        np += len + 1;
        ents[i].idx = i;
        st = parse_entry(it, path, f->data_size, &f->w[i], &ents[i], eh);
        if (st != NVLM_OK) {
            goto done;
        }
        if (data != NULL) {
            f->w[i].t.data = (void *)(data + ents[i].begin);
        }
        i++;
    }
    st = check_layout(f, ents, 8 + (uint64_t)hlen, eh);
done:
    nv_free(f->ctx, ents);
    cJSON_Delete(root);
    return st;
}

static uint64_t read_le64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) {
        v = (v << 8) | p[i];
    }
    return v;
}

/* Checks the length prefix against the file size; *hlen gets the header length. */
static nvlm_status check_prefix(const char *path, const uint8_t *prefix, uint64_t size,
                                uint64_t *hlen, void *eh)
{
    if (size < 8) {
        return nv_error(eh, NVLM_ERR_FORMAT,
                        "%s: file is %llu bytes, too short for the 8-byte header length", path,
                        (unsigned long long)size);
    }
    uint64_t h = read_le64(prefix);
    if (h > size - 8) {
        return nv_error(eh, NVLM_ERR_FORMAT,
                        "%s: header length %llu exceeds the file (%llu bytes after the prefix; "
                        "truncated?)", path, (unsigned long long)h, (unsigned long long)(size - 8));
    }
    if (h > NV_ST_MAX_HEADER) {
        return nv_error(eh, NVLM_ERR_LIMIT, "%s: header length %llu exceeds the %llu-byte cap",
                        path, (unsigned long long)h, (unsigned long long)NV_ST_MAX_HEADER);
    }
    if (h < 2) {
        return nv_error(eh, NVLM_ERR_FORMAT, "%s: header length %llu is too small for JSON", path,
                        (unsigned long long)h);
    }
    *hlen = h;
    return NVLM_OK;
}

static nvlm_status new_file(nvlm_context *ctx, const char *path, void *eh, nv_st_file **out)
{
    nv_st_file *f = nv_calloc(ctx, 1, sizeof *f);
    if (f == NULL) {
        return nv_error(eh, NVLM_ERR_OUT_OF_MEMORY, "out of memory opening %s", path);
    }
    f->ctx = ctx;
    f->path = nv_strdup(ctx, path);
    if (f->path == NULL) {
        nv_free(ctx, f);
        return nv_error(eh, NVLM_ERR_OUT_OF_MEMORY, "out of memory opening %s", path);
    }
    *out = f;
    return NVLM_OK;
}

/* The caller's header byte bound, checked before the header is read. */
static nvlm_status check_header_bound(nv_st_file *f, uint64_t hlen, void *eh)
{
    f->header_len = hlen;
    if (f->lim != NULL && hlen > f->lim->max_header) {
        return nv_error(eh, NVLM_ERR_LIMIT, "%s: header of %llu bytes, more than the %llu "
                        "allowed (%s)", f->path, (unsigned long long)hlen,
                        (unsigned long long)f->lim->max_header, f->lim->why);
    }
    return NVLM_OK;
}

/* Parses the whole file image base[0..size). */
static nvlm_status parse_image(nv_st_file *f, const uint8_t *base, size_t size, void *eh)
{
    uint64_t hlen;
    NVLM_TRY(check_prefix(f->path, base, size, &hlen, eh));
    NVLM_TRY(check_header_bound(f, hlen, eh));
    f->data_size = size - 8 - hlen;
    return parse_header(f, (const char *)base + 8, (size_t)hlen, base + 8 + hlen, eh);
}

nvlm_status nv_st_parse(nvlm_context *ctx, const void *buf, size_t size, const char *name,
                        void *err_handle, nv_st_file **out)
{
    if (out == NULL || (buf == NULL && size > 0)) {
        return nv_error(err_handle, NVLM_ERR_INVALID_ARGUMENT, "nv_st_parse: NULL argument");
    }
    *out = NULL;
    nv_st_file *f;
    NVLM_TRY(new_file(ctx, name != NULL ? name : "<memory>", err_handle, &f));
    nvlm_status st = parse_image(f, buf, size, err_handle);
    if (st != NVLM_OK) {
        nv_st_close(f);
        return st;
    }
    *out = f;
    return NVLM_OK;
}

static nvlm_status open_fd(const char *path, int *fd, uint64_t *size, void *eh)
{
    struct stat sb;
    NVLM_TRY(nv_open_regular(eh, path, fd, &sb));
    *size = (uint64_t)sb.st_size;
    return NVLM_OK;
}

static nvlm_status open_header_only(nv_st_file *f, void *eh)
{
    int fd;
    uint64_t size;
    NVLM_TRY(open_fd(f->path, &fd, &size, eh));
    uint8_t prefix[8] = {0};
    nvlm_status st = NVLM_OK;
    uint64_t hlen = 0;
    if (size >= 8 && !nv_read_fd(fd, prefix, 8, 0)) {
        st = nv_error(eh, NVLM_ERR_IO, "%s: cannot read the header length", f->path);
    }
    if (st == NVLM_OK) {
        st = check_prefix(f->path, prefix, size, &hlen, eh);
    }
    if (st == NVLM_OK) {
        st = check_header_bound(f, hlen, eh);
    }
    if (st == NVLM_OK) {
        f->buf = nv_malloc(f->ctx, (size_t)hlen);
        if (f->buf == NULL) {
            st = nv_error(eh, NVLM_ERR_OUT_OF_MEMORY, "%s: out of memory for the header", f->path);
        } else if (!nv_read_fd(fd, f->buf, (size_t)hlen, 8)) {
            st = nv_error(eh, NVLM_ERR_IO, "%s: cannot read the header", f->path);
        }
    }
    close(fd);
    if (st == NVLM_OK) {
        f->data_size = size - 8 - hlen;
        st = parse_header(f, f->buf, (size_t)hlen, NULL, eh);
    }
    /* the names were copied: the header text is not kept */
    nv_free(f->ctx, f->buf);
    f->buf = NULL;
    return st;
}

static nvlm_status open_mmap(nv_st_file *f, void *eh)
{
    int fd;
    uint64_t size;
    NVLM_TRY(open_fd(f->path, &fd, &size, eh));
    if (size < 8 || size > SIZE_MAX) {
        close(fd);
        uint64_t dummy;
        uint8_t zero[8] = {0};
        return check_prefix(f->path, zero, size, &dummy, eh);
    }
    void *map = mmap(NULL, (size_t)size, PROT_READ, MAP_PRIVATE, fd, 0);
    int map_errno = errno;
    close(fd);
    if (map == MAP_FAILED) {
        return nv_error(eh, NVLM_ERR_IO, "cannot map %s: %s", f->path, strerror(map_errno));
    }
    f->map = map;
    f->map_size = (size_t)size;
    return parse_image(f, map, (size_t)size, eh);
}

static nvlm_status open_read(nv_st_file *f, void *eh)
{
    size_t size;
    NVLM_TRY(nv_read_file(f->ctx, eh, f->path, SIZE_MAX - 1, &f->buf, &size));
    return parse_image(f, (const uint8_t *)f->buf, size, eh);
}

nvlm_status nv_st_open_limited(nvlm_context *ctx, const char *path, nv_st_mode mode,
                               const nv_st_limits *limits, void *err_handle, nv_st_file **out)
{
    if (out == NULL || path == NULL) {
        return nv_error(err_handle, NVLM_ERR_INVALID_ARGUMENT, "nv_st_open: NULL argument");
    }
    *out = NULL;
    nv_st_file *f;
    NVLM_TRY(new_file(ctx, path, err_handle, &f));
    f->lim = limits;
    nvlm_status st;
    switch (mode) {
    case NV_ST_MMAP:
        st = open_mmap(f, err_handle);
        break;
    case NV_ST_READ:
        st = open_read(f, err_handle);
        break;
    case NV_ST_HEADER_ONLY:
        st = open_header_only(f, err_handle);
        break;
    default:
        st = nv_error(err_handle, NVLM_ERR_INVALID_ARGUMENT, "nv_st_open: bad mode %d", (int)mode);
        break;
    }
    f->lim = NULL;
    if (st != NVLM_OK) {
        nv_st_close(f);
        return st;
    }
    *out = f;
    return NVLM_OK;
}

nvlm_status nv_st_open_mode(nvlm_context *ctx, const char *path, nv_st_mode mode,
                            void *err_handle, nv_st_file **out)
{
    return nv_st_open_limited(ctx, path, mode, NULL, err_handle, out);
}

nvlm_status nv_st_open(nvlm_context *ctx, const char *path, void *err_handle, nv_st_file **out)
{
    return nv_st_open_mode(ctx, path, NV_ST_MMAP, err_handle, out);
}
