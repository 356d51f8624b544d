/*
 * test_safetensors.c - the safetensors reader: every golden/fixture file read in all three modes
 * and compared with an independent listing (tests/oracle/safetensors_listing.py, via the
 * `safetensors` package: names, dtypes, shapes, offsets, FNV-1a of the bytes), plus a corpus
 * of hostile headers, each with its expected status and the word its message must contain.
 */
#include "safetensors.h"
#include "testutil.h"

#include <cJSON.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static uint64_t fnv1a(const uint8_t *p, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++) {
        h = (h ^ p[i]) * 0x100000001b3ull;
    }
    return h;
}

static void check_listing(nvlm_context *ctx)
{
    size_t len;
    char *text = tu_read_file("tests/data/safetensors/listing.json", &len);
    CHECK(text != NULL, "listing.json readable");
    if (text == NULL) {
        return;
    }
    cJSON *root = cJSON_Parse(text);
    free(text);
    CHECK(cJSON_IsArray(root) && cJSON_GetArraySize(root) >= 20, "listing has the files");
    int n_files = 0;
    int n_tensors = 0;
    const cJSON *file;
    cJSON_ArrayForEach(file, root)
    {
        const char *path = cJSON_GetObjectItem(file, "path")->valuestring;
        const cJSON *tensors = cJSON_GetObjectItem(file, "tensors");
        uint64_t data_bytes = (uint64_t)cJSON_GetObjectItem(file, "data_bytes")->valuedouble;
        nv_st_file *f[3] = {NULL, NULL, NULL};
        for (int mode = 0; mode < 3; mode++) {
            nvlm_status st = nv_st_open_mode(ctx, path, (nv_st_mode)mode, ctx, &f[mode]);
            CHECK(st == NVLM_OK, "%s mode %d opens: %s", path, mode, nvlm_last_error(ctx));
        }
        if (f[0] == NULL || f[1] == NULL || f[2] == NULL) {
            for (int mode = 0; mode < 3; mode++) {
                nv_st_close(f[mode]);
            }
            continue;
        }
        n_files++;
        bool all_ok = true;
        for (int mode = 0; mode < 3; mode++) {
            all_ok &= nv_st_count(f[mode]) == (size_t)cJSON_GetArraySize(tensors);
            all_ok &= nv_st_data_bytes(f[mode]) == data_bytes;
        }
        CHECK(all_ok, "%s: tensor count and data size match the oracle", path);
        size_t i = 0;
        const cJSON *t;
        cJSON_ArrayForEach(t, tensors)
        {
            const char *name = cJSON_GetObjectItem(t, "name")->valuestring;
            const nv_weight *w = nv_st_at(f[0], i);
            bool ok = w != NULL && strcmp(w->name, name) == 0;
            ok = ok && strcmp(nv_dtype_name(w->t.dtype),
                              cJSON_GetObjectItem(t, "dtype")->valuestring) == 0;
            const cJSON *shape = cJSON_GetObjectItem(t, "shape");
            ok = ok && w->t.ndim == cJSON_GetArraySize(shape);
            int d = 0;
            const cJSON *s;
            cJSON_ArrayForEach(s, shape)
            {
                ok = ok && d < w->t.ndim && w->t.shape[d] == (int64_t)s->valuedouble;
                d++;
            }
            uint64_t want_hash = strtoull(cJSON_GetObjectItem(t, "fnv1a")->valuestring, NULL, 16);
            uint64_t nbytes = ok ? nv_st_nbytes(w) : 0;
            uint64_t want_bytes = (uint64_t)(cJSON_GetObjectItem(t, "end")->valuedouble -
                                             cJSON_GetObjectItem(t, "begin")->valuedouble);
            ok = ok && nbytes == want_bytes;
            ok = ok && fnv1a(w->t.data, nbytes) == want_hash;
            /* the other modes: same tensor, same bytes (read copy), no data (header only) */
            const nv_weight *r = nv_st_find(f[1], name);
            const nv_weight *h = nv_st_find(f[2], name);
            ok = ok && r != NULL && r == nv_st_at(f[1], i) && fnv1a(r->t.data, nbytes) == want_hash;
            ok = ok && h != NULL && h->t.data == NULL && h->t.ndim == w->t.ndim;
            ok = ok && nv_st_find(f[0], name) == w;
            CHECK(ok, "%s: tensor %zu '%s' matches the oracle in all modes", path, i, name);
            i++;
            n_tensors++;
        }
        CHECK(nv_st_find(f[0], "no.such.tensor") == NULL, "%s: miss gives NULL", path);
        CHECK(nv_st_at(f[0], nv_st_count(f[0])) == NULL, "%s: at(count) gives NULL", path);
        for (int mode = 0; mode < 3; mode++) {
            nv_st_close(f[mode]);
        }
    }
    CHECK_EQ_INT(n_files, cJSON_GetArraySize(root), "files checked");
    CHECK(n_tensors >= 100, "tensors checked: %d", n_tensors);
    cJSON_Delete(root);
}

/* ---- hostile headers ---------------------------------------------------------------------- */

/* Builds a file image: 8-byte length, `json` padded with spaces to a multiple of 8, then
 * `data_bytes` bytes of data. `hlen_override` (if non-zero) replaces the length prefix. */
static uint8_t *mk(const char *json, size_t data_bytes, uint64_t hlen_override, size_t *size)
{
    size_t jl = strlen(json);
    size_t padded = (jl + 7) / 8 * 8;
    *size = 8 + padded + data_bytes;
    uint8_t *buf = calloc(1, *size + 1);
    uint64_t h = hlen_override != 0 ? hlen_override : padded;
    for (int i = 0; i < 8; i++) {
        buf[i] = (uint8_t)(h >> (8 * i));
    }
    memset(buf + 8, ' ', padded);
    memcpy(buf + 8, json, jl);
    return buf;
}

typedef struct hostile {
    const char *what;
    const char *json;   /* NULL: raw bytes below */
    size_t data_bytes;
    uint64_t hlen;      /* length prefix override */
    nvlm_status want;
    const char *needle; /* must appear in the message */
} hostile;

#define T1(name, body) "{\"" name "\":" body "}"

static const hostile cases[] = {
    {"bad JSON", "{\"a\": {\"dtype\": ", 0, 0, NVLM_ERR_FORMAT, "not valid JSON"},
    {"JSON not an object", "[1, 2, 3]", 0, 0, NVLM_ERR_FORMAT, "not an object"},
    {"unknown dtype", T1("x", "{\"dtype\":\"Q7\",\"shape\":[1],\"data_offsets\":[0,1]}"), 1, 0,
     NVLM_ERR_UNSUPPORTED, "unknown dtype 'Q7'"},
    {"negative dim", T1("x", "{\"dtype\":\"U8\",\"shape\":[-4],\"data_offsets\":[0,4]}"), 4, 0,
     NVLM_ERR_FORMAT, "shape[0]"},
    {"fractional dim", T1("x", "{\"dtype\":\"U8\",\"shape\":[1.5],\"data_offsets\":[0,1]}"), 1, 0,
     NVLM_ERR_FORMAT, "shape[0]"},
    {"huge dims overflow",
     T1("x", "{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,16],\"data_offsets\":[0,4]}"),
     4, 0, NVLM_ERR_FORMAT, "overflows"},
    {"dim beyond 2^53", T1("x", "{\"dtype\":\"U8\",\"shape\":[1e300],\"data_offsets\":[0,1]}"), 1,
     0, NVLM_ERR_FORMAT, "shape[0]"},
    {"too many dims",
     T1("x", "{\"dtype\":\"U8\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,1]}"), 1, 0,
     NVLM_ERR_LIMIT, "dims"},
    {"offsets out of range", T1("x", "{\"dtype\":\"U8\",\"shape\":[8],\"data_offsets\":[0,8]}"), 4,
     0, NVLM_ERR_FORMAT, "out of range"},
    {"begin > end", T1("x", "{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[4,0]}"), 4, 0,
     NVLM_ERR_FORMAT, "begin after end"},
    {"byte count != dtype x shape",
     T1("x", "{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,4]}"), 4, 0, NVLM_ERR_FORMAT,
     "does not match"},
    {"overlapping",
     "{\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]},"
     "\"b\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[2,6]}}",
     6, 0, NVLM_ERR_FORMAT, "overlaps"},
    {"unordered and overlapping",
     "{\"b\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[3,7]},"
     "\"c\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[7,8]},"
     "\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]}}",
     8, 0, NVLM_ERR_FORMAT, "overlaps"},
    {"gap",
     "{\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]},"
     "\"b\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[6,10]}}",
     10, 0, NVLM_ERR_FORMAT, "gap of 2 bytes"},
    {"gap at the start", T1("a", "{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[4,8]}"), 8, 0,
     NVLM_ERR_FORMAT, "gap of 4 bytes"},
    {"trailing data", T1("a", "{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]}"), 12, 0,
     NVLM_ERR_FORMAT, "trailing gap"},
    {"duplicated names",
     "{\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]},"
     "\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[4,8]}}",
     8, 0, NVLM_ERR_FORMAT, "duplicate tensor name 'a'"},
    {"offsets not a pair", T1("a", "{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0]}"), 4, 0,
     NVLM_ERR_FORMAT, "pair"},
    {"offsets not integers",
     T1("a", "{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[\"0\",4]}"), 4, 0,
     NVLM_ERR_FORMAT, "not non-negative integers"},
    {"dtype missing", T1("a", "{\"shape\":[4],\"data_offsets\":[0,4]}"), 4, 0, NVLM_ERR_FORMAT,
     "dtype missing"},
    {"shape not an array", T1("a", "{\"dtype\":\"U8\",\"shape\":4,\"data_offsets\":[0,4]}"), 4, 0,
     NVLM_ERR_FORMAT, "shape missing"},
    {"entry not an object", T1("a", "[1]"), 0, 0, NVLM_ERR_FORMAT, "not a JSON object"},
    {"metadata value not a string", T1("__metadata__", "{\"format\": 1}"), 0, 0, NVLM_ERR_FORMAT,
     "__metadata__"},
    {"trailing bytes after JSON", "{} x", 0, 0, NVLM_ERR_FORMAT, "trailing bytes"},
    {"misaligned F32",
     "{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},"
     "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[1,5]}}",
     5, 0, NVLM_ERR_UNSUPPORTED, "aligned"},
    {"header length > file", "{}", 0, 4096, NVLM_ERR_FORMAT, "exceeds the file"},
    {"header length 2^63", "{}", 0, 1ull << 63, NVLM_ERR_FORMAT, "exceeds the file"},
    {"header length 1", "{}", 0, 1, NVLM_ERR_FORMAT, "too small"},
};

static const hostile good[] = {
    {"empty header", "{}", 0, 0, NVLM_OK, NULL},
    {"JSON order differs from offset order",
     "{\"b\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[8,12]},"
     "\"__metadata__\":{\"format\":\"pt\"},"
     "\"z\":{\"dtype\":\"F32\",\"shape\":[0, 7],\"data_offsets\":[12,12]},"
     "\"a\":{\"dtype\":\"I64\",\"shape\":[],\"data_offsets\":[0,8]}}",
     12, 0, NVLM_OK, NULL},
};

static void write_file(const char *path, const void *data, size_t n)
{
    FILE *f = fopen(path, "wb");
    if (f != NULL) {
        if (n > 0) {
            fwrite(data, 1, n, f);
        }
        fclose(f);
    }
}

static void check_hostile(nvlm_context *ctx, const char *tmp)
{
    char path[512];
    snprintf(path, sizeof path, "%s/h.safetensors", tmp);
    for (size_t i = 0; i < NV_ARRAY_LEN(cases); i++) {
        const hostile *h = &cases[i];
        size_t size;
        uint8_t *buf = mk(h->json, h->data_bytes, h->hlen, &size);
        write_file(path, buf, size);
        nv_st_file *f = NULL;
        nvlm_status st = nv_st_parse(ctx, buf, size, "mem", ctx, &f);
        CHECK(st == h->want && f == NULL, "%s: memory parse -> %d (want %d): %s", h->what, st,
              h->want, nvlm_last_error(ctx));
        CHECK(strstr(nvlm_last_error(ctx), h->needle) != NULL, "%s: message names '%s': %s",
              h->what, h->needle, nvlm_last_error(ctx));
        for (int mode = 0; mode < 3; mode++) {
            f = NULL;
            st = nv_st_open_mode(ctx, path, (nv_st_mode)mode, ctx, &f);
            CHECK(st == h->want && f == NULL &&
                      strstr(nvlm_last_error(ctx), h->needle) != NULL &&
                      strstr(nvlm_last_error(ctx), "h.safetensors") != NULL,
                  "%s: file mode %d -> %d: %s", h->what, mode, st, nvlm_last_error(ctx));
        }
        free(buf);
    }
    for (size_t i = 0; i < NV_ARRAY_LEN(good); i++) {
        size_t size;
        uint8_t *buf = mk(good[i].json, good[i].data_bytes, 0, &size);
        nv_st_file *f = NULL;
        nvlm_status gst = nv_st_parse(ctx, buf, size, "mem", ctx, &f);
        CHECK(gst == NVLM_OK, "%s: accepted: %s", good[i].what, nvlm_last_error(ctx));
        if (i == 1 && f != NULL) {
            CHECK_EQ_INT(nv_st_count(f), 3, "three tensors, metadata skipped");
            const nv_weight *a = nv_st_at(f, 0);
            const nv_weight *z = nv_st_find(f, "z");
            CHECK(a != NULL && strcmp(a->name, "a") == 0 && a->t.ndim == 0 &&
                      a->t.data == buf + size - 12,
                  "offset order: scalar 'a' first, data at the start of the data area");
            CHECK(z != NULL && z->t.ndim == 2 && z->t.shape[1] == 7 && nv_st_nbytes(z) == 0,
                  "zero-size tensor kept");
            CHECK(nv_st_find(f, "__metadata__") == NULL, "metadata is not a tensor");
        }
        nv_st_close(f);
        free(buf);
    }

    /* empty and short files */
    write_file(path, "", 0);
    nv_st_file *f = NULL;
    for (int mode = 0; mode < 3; mode++) {
        CHECK_EQ_INT(nv_st_open_mode(ctx, path, (nv_st_mode)mode, ctx, &f), NVLM_ERR_FORMAT,
                     "empty file");
        CHECK(strstr(nvlm_last_error(ctx), "too short") != NULL, "empty: %s",
              nvlm_last_error(ctx));
    }
    write_file(path, "\x02\0\0\0", 4);
    CHECK_EQ_INT(nv_st_open(ctx, path, ctx, &f), NVLM_ERR_FORMAT, "4-byte file");

    /* a header over the 100 MB cap, in a sparse file (nothing is read or allocated) */
    int fd = open(path, O_WRONLY | O_TRUNC);
    uint64_t big = NV_ST_MAX_HEADER + 8;
    uint8_t pre[8];
    for (int i = 0; i < 8; i++) {
        pre[i] = (uint8_t)(big >> (8 * i));
    }
    CHECK(fd >= 0 && write(fd, pre, 8) == 8 && ftruncate(fd, (off_t)(big + 16)) == 0,
          "sparse file");
    close(fd);
    for (int mode = 0; mode < 3; mode++) {
        CHECK_EQ_INT(nv_st_open_mode(ctx, path, (nv_st_mode)mode, ctx, &f), NVLM_ERR_LIMIT,
                     "header over the cap");
        CHECK(strstr(nvlm_last_error(ctx), "cap") != NULL, "cap: %s", nvlm_last_error(ctx));
    }

    /* a truncated copy of a real shard */
    size_t len;
    char *shard = tu_read_file("tests/data/tiny-nvlm-d/model-00001-of-00002.safetensors", &len);
    CHECK(shard != NULL && len > 4096, "shard read");
    if (shard != NULL) {
        write_file(path, shard, len - 1000);
        for (int mode = 0; mode < 3; mode++) {
            CHECK_EQ_INT(nv_st_open_mode(ctx, path, (nv_st_mode)mode, ctx, &f), NVLM_ERR_FORMAT,
                         "truncated shard");
            CHECK(strstr(nvlm_last_error(ctx), "truncated") != NULL, "truncated: %s",
                  nvlm_last_error(ctx));
        }
        free(shard);
    }
    unlink(path);

    snprintf(path, sizeof path, "%s/absent.safetensors", tmp);
    CHECK_EQ_INT(nv_st_open(ctx, path, ctx, &f), NVLM_ERR_NOT_FOUND, "missing file");
    CHECK_EQ_INT(nv_st_open(ctx, tmp, ctx, &f), NVLM_ERR_IO, "a directory");
    CHECK_EQ_INT(nv_st_open(ctx, NULL, ctx, &f), NVLM_ERR_INVALID_ARGUMENT, "NULL path");
    nv_st_close(NULL);
}

/* Every prefix of a valid file must fail cleanly (the file-size checks), never crash. */
static void check_prefixes(nvlm_context *ctx)
{
    size_t size;
    uint8_t *buf = mk("{\"a\":{\"dtype\":\"BF16\",\"shape\":[2,3],\"data_offsets\":[0,12]},"
                      "\"b\":{\"dtype\":\"U8\",\"shape\":[3],\"data_offsets\":[12,15]}}",
                      15, 0, &size);
    int bad = 0;
    for (size_t n = 0; n < size; n++) {
        uint8_t *copy = malloc(n + 1);
        memcpy(copy, buf, n);
        nv_st_file *f = NULL;
        nvlm_status st = nv_st_parse(ctx, copy, n, "prefix", ctx, &f);
        bad += st != NVLM_ERR_FORMAT || f != NULL;
        free(copy);
    }
    CHECK_EQ_INT(bad, 0, "every proper prefix is NVLM_ERR_FORMAT");
    nv_st_file *f = NULL;
    CHECK_OK(nv_st_parse(ctx, buf, size, "whole", ctx, &f));
    const nv_weight *a = nv_st_find(f, "a");
    CHECK(a != NULL && a->t.dtype == NV_BF16 && a->t.shape[0] == 2 && a->t.shape[1] == 3,
          "BF16 tensor parsed");
    CHECK(strcmp(nv_st_path(f), "whole") == 0, "name kept");
    nv_st_close(f);
    free(buf);
}

int main(void)
{
    nvlm_context *ctx = NULL;
    CHECK_OK(tu_context_create(&ctx));
    char tmp[] = "/tmp/nvlm_st_XXXXXX";
    CHECK(mkdtemp(tmp) != NULL, "mkdtemp");

    tu_section("golden and fixture files vs the Python listing");
    check_listing(ctx);
    tu_section("hostile headers");
    check_hostile(ctx, tmp);
    tu_section("truncations");
    check_prefixes(ctx);

    rmdir(tmp);
    nvlm_context_free(ctx);
    return tu_done();
}
