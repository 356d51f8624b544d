/*
 * test_image.c - image decoding and tiling against the reference goldens (tests/data/golden:
 * Pillow + the reference load_image), Pillow-generated oracle cases (tests/data/image, made by
 * tests/oracle/image_*.py), a corpus of hostile files, the raw-pixel path, allocation failures
 * and the `nvlm preprocess` CLI (when NVLM_CLI names the binary).
 */
#include "image.h"
#include "safetensors.h"
#include "testutil.h"

#include <cJSON.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stddef.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define IMG_DIR "tests/data/images/"
#define GOLD_DIR "tests/data/golden/"
#define DATA_DIR "tests/data/image/"

/* ---- SHA-256 (FIPS 180-4), enough for hashing tiles --------------------------------------- */

typedef struct sha256_ctx {
    uint32_t h[8];
    uint8_t buf[64];
    size_t n;
    uint64_t len;
} sha256_ctx;

static const uint32_t sha_k[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
};

static uint32_t ror(uint32_t x, int n)
{
    return (x >> n) | (x << (32 - n));
}

static void sha_block(sha256_ctx *c, const uint8_t *p)
{
    uint32_t w[64];
    for (int i = 0; i < 16; i++) {
        w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 |
               (uint32_t)p[4 * i + 2] << 8 | p[4 * i + 3];
    }
    for (int i = 16; i < 64; i++) {
        uint32_t s0 = ror(w[i - 15], 7) ^ ror(w[i - 15], 18) ^ (w[i - 15] >> 3);
        uint32_t s1 = ror(w[i - 2], 17) ^ ror(w[i - 2], 19) ^ (w[i - 2] >> 10);
        w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    uint32_t a = c->h[0], b = c->h[1], cc = c->h[2], d = c->h[3];
    uint32_t e = c->h[4], f = c->h[5], g = c->h[6], h = c->h[7];
    for (int i = 0; i < 64; i++) {
        uint32_t t1 = h + (ror(e, 6) ^ ror(e, 11) ^ ror(e, 25)) + ((e & f) ^ (~e & g)) + sha_k[i] +
                      w[i];
        uint32_t t2 = (ror(a, 2) ^ ror(a, 13) ^ ror(a, 22)) + ((a & b) ^ (a & cc) ^ (b & cc));
        h = g;
        g = f;
        f = e;
        e = d + t1;
        d = cc;
        cc = b;
        b = a;
        a = t1 + t2;
    }
    c->h[0] += a;
    c->h[1] += b;
    c->h[2] += cc;
    c->h[3] += d;
    c->h[4] += e;
    c->h[5] += f;
    c->h[6] += g;
    c->h[7] += h;
}

static void sha256_hex(const void *data, size_t size, char hex[65])
{
    sha256_ctx c = {{0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c,
                     0x1f83d9ab, 0x5be0cd19},
                    {0},
                    0,
                    0};
    const uint8_t *p = data;
    size_t n = size;
    while (n >= 64) {
        sha_block(&c, p);
        p += 64;
        n -= 64;
    }
    uint8_t last[128];
    memset(last, 0, sizeof last);
    memcpy(last, p, n);
    last[n] = 0x80;
    size_t total = n + 9 <= 64 ? 64 : 128;
    uint64_t bits = (uint64_t)size * 8;
    for (int i = 0; i < 8; i++) {
        last[total - 1 - i] = (uint8_t)(bits >> (8 * i));
    }
    sha_block(&c, last);
    if (total == 128) {
        sha_block(&c, last + 64);
    }
    for (int i = 0; i < 8; i++) {
        snprintf(hex + 8 * i, 9, "%08x", c.h[i]);
    }
}

/* ---- helpers --------------------------------------------------------------------------------- */

static nvlm_context *g_ctx;

static cJSON *load_json(const char *path)
{
    size_t n;
    char *text = tu_read_file(path, &n);
    if (text == NULL) {
        return NULL;
    }
    cJSON *j = cJSON_Parse(text);
    free(text);
    return j;
}

/* Captures fd 2 while hostile inputs are decoded: the library must print nothing. */
typedef struct stderr_capture {
    int saved;
    char path[64];
} stderr_capture;

static void capture_begin(stderr_capture *c)
{
    snprintf(c->path, sizeof c->path, "/tmp/nvlm_test_image_stderr_%d", (int)getpid());
    fflush(stderr);
    c->saved = dup(2);
    int fd = open(c->path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    dup2(fd, 2);
    close(fd);
}

static long capture_end(stderr_capture *c)
{
    fflush(stderr);
    dup2(c->saved, 2);
    close(c->saved);
    struct stat sb;
    long n = stat(c->path, &sb) == 0 ? (long)sb.st_size : -1;
    unlink(c->path);
    return n;
}

static bool decode_file(const char *path, const nvlm_image_params *p, img_rgb *rgb)
{
    size_t n;
    char *data = tu_read_file(path, &n);
    if (data == NULL) {
        return false;
    }
    nvlm_status st = img_decode(g_ctx, g_ctx, (const uint8_t *)data, n,
                                p != NULL ? p->max_pixels : 64ull << 20,
                                p != NULL && p->apply_exif_orientation, rgb);
    free(data);
    return st == NVLM_OK;
}

/* ---- goldens --------------------------------------------------------------------------------- */

static void check_golden_tensors(const cJSON *e, const nvlm_image *img, const img_rgb *rgb)
{
    const cJSON *gf = cJSON_GetObjectItem(e, "golden_file");
    if (!cJSON_IsString(gf)) {
        return;
    }
    char path[512];
    snprintf(path, sizeof path, GOLD_DIR "%s", gf->valuestring);
    nv_st_file *f = NULL;
    if (!CHECK(nv_st_open(g_ctx, path, g_ctx, &f) == NVLM_OK, "open %s: %s", path,
               nvlm_last_error(g_ctx))) {
        return;
    }
    const nv_weight *t = nv_st_find(f, "tiles_uint8");
    if (cJSON_IsTrue(cJSON_GetObjectItem(e, "tiles_stored"))) {
        int32_t n;
        int32_t S;
        const uint8_t *tiles = img_tiles(img, &n, &S);
        if (CHECK(t != NULL && t->t.dtype == NV_U8 && t->t.ndim == 4 && t->t.shape[0] == n &&
                      t->t.shape[1] == S && t->t.shape[3] == 3,
                  "%s: tiles_uint8 shape", path)) {
            CHECK(memcmp(t->t.data, tiles, (size_t)n * S * S * 3) == 0,
                  "%s: tiles byte-identical", path);
        }
    }
    const nv_weight *d = nv_st_find(f, "decoded_rgb_uint8");
    if (cJSON_IsTrue(cJSON_GetObjectItem(e, "decoded_rgb_stored"))) {
        if (CHECK(d != NULL && d->t.ndim == 3 && d->t.shape[0] == rgb->h &&
                      d->t.shape[1] == rgb->w && d->t.shape[2] == 3,
                  "%s: decoded_rgb_uint8 shape", path)) {
            CHECK(memcmp(d->t.data, rgb->px, (size_t)rgb->w * rgb->h * 3) == 0,
                  "%s: decoded RGB byte-identical", path);
        }
    }
    nv_st_close(f);
}

static void test_goldens(void)
{
    tu_section("golden preprocess cases");
    cJSON *root = load_json(GOLD_DIR "cases.json");
    if (!CHECK(root != NULL, "cases.json parses")) {
        return;
    }
    const cJSON *pre = cJSON_GetObjectItem(root, "preprocess");
    int n_cases = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, pre)
    {
        const char *file = cJSON_GetObjectItem(e, "file")->valuestring;
        char path[512];
        snprintf(path, sizeof path, IMG_DIR "%s", file);
        n_cases++;
        nvlm_image *img = NULL;
        nvlm_status st = nvlm_image_load_file(g_ctx, path, NULL, &img);
        const cJSON *err = cJSON_GetObjectItem(e, "error");
        if (err != NULL) {
            CHECK(st != NVLM_OK, "%s: reference refused it (%s); got %d", file,
                  cJSON_PrintUnformatted(err), st);
            nvlm_image_free(img);
            continue;
        }
        if (!CHECK(st == NVLM_OK, "%s loads: %s", file, nvlm_last_error(g_ctx))) {
            continue;
        }
        const cJSON *size = cJSON_GetObjectItem(e, "size_wh");
        const cJSON *grid = cJSON_GetObjectItem(e, "grid_cols_rows");
        CHECK_EQ_INT(nvlm_image_width(img), cJSON_GetArrayItem(size, 0)->valueint, file);
        CHECK_EQ_INT(nvlm_image_height(img), cJSON_GetArrayItem(size, 1)->valueint, file);
        int32_t cols;
        int32_t rows;
        nvlm_image_grid(img, &cols, &rows);
        CHECK(cols == cJSON_GetArrayItem(grid, 0)->valueint &&
                  rows == cJSON_GetArrayItem(grid, 1)->valueint,
              "%s: grid %dx%d", file, cols, rows);
        int32_t n = nvlm_image_tile_count(img);
        CHECK_EQ_INT(n, cJSON_GetObjectItem(e, "n_tiles")->valueint, file);
        bool thumb = cJSON_IsTrue(cJSON_GetObjectItem(e, "thumbnail_appended"));
        CHECK_EQ_INT(n, cols * rows + (thumb ? 1 : 0), "thumbnail flag");
        const cJSON *hashes = cJSON_GetObjectItem(e, "tile_sha256");
        CHECK_EQ_INT(cJSON_GetArraySize(hashes), n, "tile hash count");
        for (int32_t i = 0; i < n && i < cJSON_GetArraySize(hashes); i++) {
            char hex[65];
            sha256_hex(nvlm_image_tile_rgb(img, i), 448 * 448 * 3, hex);
            CHECK(strcmp(hex, cJSON_GetArrayItem(hashes, i)->valuestring) == 0,
                  "%s tile %d sha256", file, i);
        }
        img_rgb rgb;
        if (CHECK(decode_file(path, NULL, &rgb), "%s decodes", file)) {
            char hex[65];
            sha256_hex(rgb.px, (size_t)rgb.w * rgb.h * 3, hex);
            CHECK(strcmp(hex, cJSON_GetObjectItem(e, "decoded_rgb_sha256")->valuestring) == 0,
                  "%s decoded RGB sha256", file);
            check_golden_tensors(e, img, &rgb);
            nv_free(g_ctx, rgb.px);
        }
        nvlm_image_free(img);
    }
    CHECK(n_cases >= 20, "golden image count %d", n_cases);
    cJSON_Delete(root);
}


/* ---- normalization: case2's pixel_values, exact ------------------------------------------------ */

static void test_normalize(void)
{
    tu_section("normalized pixel_values (case2)");
    nvlm_image *img = NULL;
    CHECK_OK(nvlm_image_load_file(g_ctx, IMG_DIR "chelsea_square_160.png", NULL, &img));
    nv_st_file *f = NULL;
    CHECK_OK(nv_st_open(g_ctx, GOLD_DIR "case2_single_tile.safetensors", g_ctx, &f));
    if (img == NULL || f == NULL) {
        nvlm_image_free(img);
        nv_st_close(f);
        return;
    }
    const nv_weight *pv = nv_st_find(f, "pixel_values");
    size_t n = (size_t)3 * 448 * 448;
    if (CHECK(pv != NULL && pv->t.dtype == NV_F32 && pv->t.ndim == 4 && pv->t.shape[0] == 1 &&
                  pv->t.shape[1] == 3 && pv->t.shape[2] == 448 && pv->t.shape[3] == 448,
              "pixel_values (1,3,448,448) f32")) {
        float *out = malloc(n * sizeof(float));
        img_normalize(img, 0, 1, out);
        CHECK(memcmp(out, pv->t.data, n * sizeof(float)) == 0, "img_normalize bit-exact");
        memset(out, 0, n * sizeof(float));
        CHECK_OK(nvlm_image_tile_normalized(img, 0, out));
        CHECK(memcmp(out, pv->t.data, n * sizeof(float)) == 0,
              "nvlm_image_tile_normalized bit-exact");
        CHECK(nvlm_image_tile_normalized(img, 1, out) == NVLM_ERR_INVALID_ARGUMENT,
              "bad tile index refused");
        CHECK(nvlm_image_tile_normalized(img, 0, NULL) == NVLM_ERR_INVALID_ARGUMENT,
              "NULL output refused");
        free(out);
    }
    /* Spec 3.5 check values (the bf16 roundings of these floats are listed there). */
    uint8_t px[3 * 4] = {0, 0, 0, 255, 255, 255, 1, 1, 1, 128, 128, 128};
    nvlm_image_params p;
    nvlm_image_default_params(&p);
    p.tile_size = 2;
    nvlm_image *tiny = NULL;
    CHECK_OK(nvlm_image_from_pixels(g_ctx, px, 2, 2, 0, NVLM_PIXEL_RGB8, &p, &tiny));
    if (tiny != NULL) {
        float v[12];
        img_normalize(tiny, 0, 1, v);
        /* CHW planes of 4 pixels: R then G then B. */
        CHECK(nv_f32_to_bf16(v[0]) == nv_f32_to_bf16(-2.125f), "R 0 -> -2.125");
        CHECK(nv_f32_to_bf16(v[1]) == nv_f32_to_bf16(2.25f), "R 255 -> 2.25");
        CHECK(nv_f32_to_bf16(v[2]) == nv_f32_to_bf16(-2.09375f), "R 1 -> -2.09375");
        CHECK(nv_f32_to_bf16(v[3]) == nv_f32_to_bf16(0.07421875f), "R 128");
        CHECK(nv_f32_to_bf16(v[4]) == nv_f32_to_bf16(-2.03125f), "G 0");
        CHECK(nv_f32_to_bf16(v[5]) == nv_f32_to_bf16(2.421875f), "G 255");
        CHECK(nv_f32_to_bf16(v[8]) == nv_f32_to_bf16(-1.8046875f), "B 0");
        CHECK(nv_f32_to_bf16(v[9]) == nv_f32_to_bf16(2.640625f), "B 255");
        CHECK(v[0] == (0.0f - 0.485f) / 0.229f, "R 0 float32 exact");
    }
    nvlm_image_free(tiny);
    nvlm_image_free(img);
    nv_st_close(f);
}

/* ---- grid choice ------------------------------------------------------------------------------ */

static void test_grid(void)
{
    tu_section("grid choice");
    static const struct {
        int w, h, c, r;
    } spec[] = {
        {448, 448, 1, 1},   {612, 612, 1, 1},   {1000, 1000, 2, 2}, {640, 480, 3, 2},
        {800, 600, 3, 2},   {1024, 768, 3, 2},  {4032, 3024, 3, 2}, {1280, 720, 2, 1},
        {1920, 1080, 2, 1}, {500, 1000, 1, 2},  {3000, 1000, 3, 1}, {5, 4, 1, 1},
        {560, 448, 1, 1},   {800, 640, 2, 2},
    };
    for (size_t i = 0; i < NV_ARRAY_LEN(spec); i++) {
        int32_t c;
        int32_t r;
        img_choose_grid(spec[i].w, spec[i].h, 1, 6, 448, &c, &r);
        CHECK(c == spec[i].c && r == spec[i].r, "spec %dx%d -> %dx%d (got %dx%d)", spec[i].w,
              spec[i].h, spec[i].c, spec[i].r, c, r);
    }
    FILE *f = fopen(DATA_DIR "grid_cases.txt", "r");
    if (!CHECK(f != NULL, "grid_cases.txt")) {
        return;
    }
    char line[256];
    int n = 0;
    int bad = 0;
    int ties = 0;
    while (fgets(line, sizeof line, f) != NULL) {
        long long w;
        long long h;
        int mn;
        int mx;
        int c;
        int r;
        if (line[0] == '#' || sscanf(line, "%lld %lld %d %d %d %d", &w, &h, &mn, &mx, &c, &r) != 6) {
            continue;
        }
        int32_t gc;
        int32_t gr;
        img_choose_grid(w, h, mn, mx, 448, &gc, &gr);
        n++;
        if (gc != c || gr != r) {
            bad++;
            if (bad <= 10) {
                CHECK(false, "grid %lldx%lld min %d max %d: want %dx%d, got %dx%d", w, h, mn, mx,
                      c, r, gc, gr);
            }
        }
        /* Count the exact ties the table exercises (an aspect halfway between candidates). */
        double a = (double)w / (double)h;
        for (int i = 1; i <= 6; i++) {
            for (int j = 1; i * j <= 6; j++) {
                double d1 = a - (double)i / j;
                if (d1 > 0 && (double)(a + d1) == a + d1) {
                    for (int i2 = 1; i2 <= 6; i2++) {
                        for (int j2 = 1; i2 * j2 <= 6; j2++) {
                            if ((double)i2 / j2 - a == d1 && mx == 6 && mn == 1) {
                                ties++;
                            }
                        }
                    }
                }
            }
        }
    }
    fclose(f);
    CHECK(n > 3000 && bad == 0, "oracle grid table: %d cases, %d wrong", n, bad);
    CHECK(ties >= 20, "table holds exact ties (%d)", ties);
}

/* ---- resize against Pillow on pseudo-random images -------------------------------------------- */

static void xorshift_fill(uint32_t seed, uint8_t *out, size_t n)
{
    uint32_t x = seed;
    for (size_t i = 0; i < n; i++) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        out[i] = (uint8_t)(x >> 24);
    }
}

static void test_resize(void)
{
    tu_section("bicubic resize vs Pillow");
    FILE *f = fopen(DATA_DIR "resize_cases.txt", "r");
    if (!CHECK(f != NULL, "resize_cases.txt")) {
        return;
    }
    char line[512];
    int n = 0;
    while (fgets(line, sizeof line, f) != NULL) {
        int sw;
        int sh;
        int dw;
        int dh;
        unsigned long seed;
        char want[65];
        if (line[0] == '#' ||
            sscanf(line, "%d %d %d %d %lu %64s", &sw, &sh, &dw, &dh, &seed, want) != 6) {
            continue;
        }
        n++;
        /* A padded source stride checks that strides are honoured. */
        size_t sstride = (size_t)sw * 3 + 5;
        uint8_t *packed = malloc((size_t)sw * sh * 3);
        uint8_t *src = malloc(sstride * sh);
        uint8_t *dst = malloc((size_t)dw * dh * 3);
        xorshift_fill((uint32_t)seed, packed, (size_t)sw * sh * 3);
        for (int y = 0; y < sh; y++) {
            memcpy(src + (size_t)y * sstride, packed + (size_t)y * sw * 3, (size_t)sw * 3);
        }
        for (int simd = 0; simd < 2; simd++) {
            memset(dst, 0, (size_t)dw * dh * 3);
            CHECK_OK(img_resize_ex(g_ctx, g_ctx, src, sw, sh, sstride, dst, dw, dh,
                                   (size_t)dw * 3, simd));
            char hex[65];
            sha256_hex(dst, (size_t)dw * dh * 3, hex);
            CHECK(strcmp(hex, want) == 0, "resize %dx%d -> %dx%d matches Pillow (%s)", sw, sh, dw,
                  dh, simd ? "SIMD where available" : "scalar");
        }
        free(packed);
        free(src);
        free(dst);
    }
    fclose(f);
    CHECK(n >= 15, "resize cases: %d", n);
}

/* ---- PNG conversions and EXIF against Pillow ---------------------------------------------------- */

static void check_hash_table(const char *table, const char *dir, bool exif)
{
    FILE *f = fopen(table, "r");
    if (!CHECK(f != NULL, "%s", table)) {
        return;
    }
    char line[512];
    int n = 0;
    while (fgets(line, sizeof line, f) != NULL) {
        char name[128];
        int w;
        int h;
        char want[65];
        if (line[0] == '#' || sscanf(line, "%127s %d %d %64s", name, &w, &h, want) != 4) {
            continue;
        }
        n++;
        char path[512];
        snprintf(path, sizeof path, "%s%s", dir, name);
        nvlm_image_params p;
        nvlm_image_default_params(&p);
        p.apply_exif_orientation = exif;
        img_rgb rgb;
        if (!CHECK(decode_file(path, &p, &rgb), "%s decodes: %s", name, nvlm_last_error(g_ctx))) {
            continue;
        }
        char hex[65];
        sha256_hex(rgb.px, (size_t)rgb.w * rgb.h * 3, hex);
        CHECK(rgb.w == w && rgb.h == h && strcmp(hex, want) == 0, "%s matches Pillow (%dx%d)",
              name, rgb.w, rgb.h);
        nv_free(g_ctx, rgb.px);
    }
    fclose(f);
    CHECK(n >= 8, "%s: %d cases", table, n);
}

static void test_conversions(void)
{
    tu_section("PNG color types and bit depths vs Pillow convert('RGB')");
    check_hash_table(DATA_DIR "conv_cases.txt", DATA_DIR "conv/", false);
    tu_section("EXIF orientation vs Pillow exif_transpose");
    check_hash_table(DATA_DIR "exif_cases.txt", DATA_DIR "exif/", true);

    /* Default: EXIF ignored (the reference), so orientation 6 keeps the stored size. */
    nvlm_image *img = NULL;
    CHECK_OK(nvlm_image_load_file(g_ctx, DATA_DIR "exif/orient6.png", NULL, &img));
    CHECK(img != NULL && nvlm_image_width(img) == 23 && nvlm_image_height(img) == 17,
          "EXIF ignored by default");
    nvlm_image_free(img);
    /* The JPEG path: rocket_exif_orient6 rotated is the golden decode rotated by 90 degrees. */
    img_rgb plain;
    img_rgb rot;
    nvlm_image_params p;
    nvlm_image_default_params(&p);
    p.apply_exif_orientation = 1;
    if (CHECK(decode_file(IMG_DIR "rocket_exif_orient6_120x128.jpg", NULL, &plain) &&
                  decode_file(IMG_DIR "rocket_exif_orient6_120x128.jpg", &p, &rot),
              "EXIF JPEG decodes")) {
        bool same = rot.w == plain.h && rot.h == plain.w;
        for (int32_t y = 0; same && y < rot.h; y++) {
            for (int32_t x = 0; same && x < rot.w; x++) {
                /* ROTATE_270 (clockwise): out(x, y) = in(y, H - 1 - x). */
                const uint8_t *s = plain.px + ((size_t)(plain.h - 1 - x) * plain.w + y) * 3;
                same = memcmp(rot.px + ((size_t)y * rot.w + x) * 3, s, 3) == 0;
            }
        }
        CHECK(same, "JPEG EXIF orientation 6 rotates clockwise");
        nv_free(g_ctx, plain.px);
        nv_free(g_ctx, rot.px);
    }
    static const uint8_t tiff_le[] = {'I', 'I', 42, 0, 8, 0, 0, 0, 1, 0, 0x12, 0x01, 3, 0,
                                      1, 0, 0, 0, 6, 0, 0, 0};
    CHECK_EQ_INT(img_exif_orientation_tiff(tiff_le, sizeof tiff_le), 6, "TIFF LE orientation");
    CHECK_EQ_INT(img_exif_orientation_tiff(tiff_le, sizeof tiff_le - 3), 0, "cut entry -> 0");
    static const uint8_t tiff_bad_ifd[] = {'M', 'M', 0, 42, 0xff, 0xff, 0xff, 0xf0, 0, 0};
    CHECK_EQ_INT(img_exif_orientation_tiff(tiff_bad_ifd, sizeof tiff_bad_ifd), 0,
                 "IFD offset past the end -> 0");
}

/* ---- hostile files ------------------------------------------------------------------------------ */

static nvlm_status status_from_name(const char *s)
{
    if (strcmp(s, "OK") == 0) {
        return NVLM_OK;
    }
    if (strcmp(s, "LIMIT") == 0) {
        return NVLM_ERR_LIMIT;
    }
    return NVLM_ERR_FORMAT;
}

static void test_hostile(void)
{
    tu_section("hostile files");
    FILE *f = fopen(DATA_DIR "hostile.txt", "r");
    if (!CHECK(f != NULL, "hostile.txt")) {
        return;
    }
    char line[512];
    int n = 0;
    while (fgets(line, sizeof line, f) != NULL) {
        char name[128];
        char status[16];
        int used = 0;
        if (line[0] == '#' || sscanf(line, "%127s %15s %n", name, status, &used) != 2) {
            continue;
        }
        char *want_msg = line + used;
        want_msg[strcspn(want_msg, "\n")] = '\0';
        nvlm_status want = status_from_name(status);
        char path[512];
        snprintf(path, sizeof path, DATA_DIR "hostile/%s", name);
        size_t size;
        char *data = tu_read_file(path, &size);
        if (!CHECK(data != NULL, "read %s", path)) {
            continue;
        }
        n++;
        stderr_capture cap;
        capture_begin(&cap);
        nvlm_image *img = NULL;
        nvlm_status st = nvlm_image_load_memory(g_ctx, data, size, NULL, &img);
        char msg[NV_ERR_MAX];
        snprintf(msg, sizeof msg, "%s", nvlm_last_error(g_ctx));
        nvlm_image *img2 = NULL;
        nvlm_status st2 = nvlm_image_load_file(g_ctx, path, NULL, &img2);
        long printed = capture_end(&cap);
        CHECK(st == want, "%s: status %d (%s), want %s", name, st, msg, status);
        CHECK(strstr(msg, want_msg) != NULL, "%s: message \"%s\" has \"%s\"", name, msg,
              want_msg);
        CHECK(st2 == st && (st == NVLM_OK) == (img2 != NULL), "%s: file path agrees", name);
        CHECK(st != NVLM_OK ? img == NULL : img != NULL, "%s: handle only on success", name);
        CHECK(printed == 0, "%s: nothing printed to stderr (%ld bytes)", name, printed);
        if (st == NVLM_OK && img != NULL) {
            /* The bomb chunks are skipped: the pixels are the plain 4x3 image. */
            CHECK(nvlm_image_width(img) == 4 && nvlm_image_height(img) == 3, "%s: 4x3", name);
        }
        nvlm_image_free(img);
        nvlm_image_free(img2);
        free(data);
    }
    fclose(f);
    CHECK(n >= 20, "hostile corpus: %d files", n);
    /* Every prefix of a small PNG and a small JPEG: refused cleanly, never a crash. */
    const char *inputs[] = {IMG_DIR "tiny_1x1.png", IMG_DIR "rocket_exif_orient6_120x128.jpg"};
    for (size_t k = 0; k < NV_ARRAY_LEN(inputs); k++) {
        size_t size;
        char *data = tu_read_file(inputs[k], &size);
        if (data == NULL) {
            continue;
        }
        int ok = 0;
        int refused = 0;
        stderr_capture cap;
        capture_begin(&cap);
        for (size_t len = 0; len < size; len += (len < 400 ? 1 : 37)) {
            img_rgb rgb;
            nvlm_status st = img_decode(g_ctx, g_ctx, (const uint8_t *)data, len, 1 << 20, false,
                                        &rgb);
            if (st == NVLM_OK) {
                ok++;
                nv_free(g_ctx, rgb.px);
            } else if (st == NVLM_ERR_FORMAT) {
                refused++;
            }
        }
        long printed = capture_end(&cap);
        CHECK(refused > 0 && printed == 0, "%s prefixes: %d refused, %d decoded, %ld printed",
              inputs[k], refused, ok, printed);
        free(data);
    }
}

/* ---- raw pixels, parameters, arguments ----------------------------------------------------------- */

static bool same_tiles(const nvlm_image *a, const nvlm_image *b)
{
    int32_t na;
    int32_t nb;
    int32_t sa;
    int32_t sb;
    const uint8_t *ta = img_tiles(a, &na, &sa);
    const uint8_t *tb = img_tiles(b, &nb, &sb);
    return na == nb && sa == sb && memcmp(ta, tb, (size_t)na * sa * sa * 3) == 0;
}

static void test_raw_and_params(void)
{
    tu_section("raw pixels, params, arguments");
    img_rgb rgb;
    if (!CHECK(decode_file(IMG_DIR "rocket_wide_640x320.jpg", NULL, &rgb), "decode rocket")) {
        return;
    }
    nvlm_image *ref = NULL;
    CHECK_OK(nvlm_image_load_file(g_ctx, IMG_DIR "rocket_wide_640x320.jpg", NULL, &ref));
    nvlm_image *img = NULL;
    CHECK_OK(nvlm_image_from_pixels(g_ctx, rgb.px, rgb.w, rgb.h, 0, NVLM_PIXEL_RGB8, NULL, &img));
    CHECK(img != NULL && ref != NULL && same_tiles(img, ref), "RGB8 pixels == file tiles");
    nvlm_image_free(img);
    /* RGBA with a padded stride: alpha dropped. */
    size_t stride = (size_t)rgb.w * 4 + 12;
    uint8_t *rgba = malloc(stride * rgb.h);
    for (int32_t y = 0; y < rgb.h; y++) {
        for (int32_t x = 0; x < rgb.w; x++) {
            uint8_t *d = rgba + y * stride + x * 4;
            memcpy(d, rgb.px + ((size_t)y * rgb.w + x) * 3, 3);
            d[3] = (uint8_t)(x * 7);
        }
    }
    img = NULL;
    CHECK_OK(nvlm_image_from_pixels(g_ctx, rgba, rgb.w, rgb.h, stride, NVLM_PIXEL_RGBA8, NULL,
                                    &img));
    CHECK(img != NULL && ref != NULL && same_tiles(img, ref), "RGBA8 strided == file tiles");
    nvlm_image_free(img);
    CHECK(nvlm_image_from_pixels(g_ctx, rgba, rgb.w, rgb.h, 10, NVLM_PIXEL_RGBA8, NULL, &img) ==
              NVLM_ERR_INVALID_ARGUMENT && img == NULL,
          "stride too small refused");
    CHECK(nvlm_image_from_pixels(g_ctx, rgba, 0, 5, 0, NVLM_PIXEL_RGBA8, NULL, &img) ==
              NVLM_ERR_INVALID_ARGUMENT,
          "zero width refused");
    CHECK(nvlm_image_from_pixels(g_ctx, rgba, 5, 5, 0, (nvlm_pixel_format)7, NULL, &img) ==
              NVLM_ERR_INVALID_ARGUMENT,
          "bad format refused");
    free(rgba);
    nv_free(g_ctx, rgb.px);

    /* GRAY8: the gray JPEG's decode replicated to RGB equals the file's tiles. */
    img_rgb gray;
    if (CHECK(decode_file(IMG_DIR "camera_gray_255x253.jpg", NULL, &gray), "decode gray")) {
        uint8_t *g = malloc((size_t)gray.w * gray.h);
        for (size_t i = 0; i < (size_t)gray.w * gray.h; i++) {
            g[i] = gray.px[3 * i];
        }
        nvlm_image *a = NULL;
        nvlm_image *b = NULL;
        CHECK_OK(nvlm_image_from_pixels(g_ctx, g, gray.w, gray.h, 0, NVLM_PIXEL_GRAY8, NULL, &a));
        CHECK_OK(nvlm_image_load_file(g_ctx, IMG_DIR "camera_gray_255x253.jpg", NULL, &b));
        CHECK(a != NULL && b != NULL && same_tiles(a, b), "GRAY8 pixels == file tiles");
        nvlm_image_free(a);
        nvlm_image_free(b);
        free(g);
        nv_free(g_ctx, gray.px);
    }

    /* max_tiles / min_tiles / use_thumbnail / max_pixels overrides. */
    nvlm_image_params p;
    nvlm_image_default_params(&p);
    CHECK(p.struct_size == sizeof p && p.min_tiles == 1 && p.max_tiles == 6 &&
              p.use_thumbnail == 1 && p.tile_size == 448 && p.apply_exif_orientation == 0 &&
              p.max_pixels == 64ull * 1024 * 1024,
          "default params");
    p.max_tiles = 1;
    img = NULL;
    CHECK_OK(nvlm_image_load_file(g_ctx, IMG_DIR "coffee_600x400.jpg", &p, &img));
    int32_t c = 0;
    int32_t r = 0;
    nvlm_image_grid(img, &c, &r);
    CHECK(c == 1 && r == 1 && nvlm_image_tile_count(img) == 1, "max_tiles 1 -> one tile");
    nvlm_image_free(img);
    nvlm_image_default_params(&p);
    p.use_thumbnail = 0;
    img = NULL;
    CHECK_OK(nvlm_image_load_file(g_ctx, IMG_DIR "coffee_600x400.jpg", &p, &img));
    CHECK(nvlm_image_tile_count(img) == 6, "no thumbnail -> 6 tiles");
    /* The six grid tiles are the golden's first six. */
    CHECK(ref != NULL && img != NULL && nvlm_image_tile_rgb(img, 5) != NULL &&
              nvlm_image_tile_rgb(img, 6) == NULL,
          "tile index bounds");
    nvlm_image_free(img);
    nvlm_image_default_params(&p);
    p.min_tiles = 2;
    img = NULL;
    CHECK_OK(nvlm_image_load_file(g_ctx, IMG_DIR "chelsea_square_160.png", &p, &img));
    nvlm_image_grid(img, &c, &r);
    CHECK(c * r >= 2 && nvlm_image_tile_count(img) == c * r + 1, "min_tiles 2 -> %dx%d", c, r);
    nvlm_image_free(img);
    nvlm_image_default_params(&p);
    p.max_pixels = 1000;
    img = NULL;
    CHECK(nvlm_image_load_file(g_ctx, IMG_DIR "chelsea_square_160.png", &p, &img) ==
              NVLM_ERR_LIMIT && img == NULL,
          "max_pixels refuses 160x160");
    CHECK(strstr(nvlm_last_error(g_ctx), "max_pixels") != NULL, "limit message: %s",
          nvlm_last_error(g_ctx));
    uint8_t px[3] = {1, 2, 3};
    CHECK(nvlm_image_from_pixels(g_ctx, px, 1, 2000, 0, NVLM_PIXEL_GRAY8, &p, &img) ==
              NVLM_ERR_LIMIT,
          "max_pixels applies to raw pixels");
    nvlm_image_default_params(&p);
    p.min_tiles = 3;
    p.max_tiles = 2;
    CHECK(nvlm_image_load_file(g_ctx, IMG_DIR "tiny_1x1.png", &p, &img) ==
              NVLM_ERR_INVALID_ARGUMENT,
          "min > max refused");
    p.struct_size = 2;
    CHECK(nvlm_image_load_file(g_ctx, IMG_DIR "tiny_1x1.png", &p, &img) ==
              NVLM_ERR_INVALID_ARGUMENT,
          "bad struct_size refused");
    /* An old caller's smaller struct: the fields it lacks keep their defaults. */
    nvlm_image_params_init(&p, offsetof(nvlm_image_params, use_thumbnail));
    p.max_tiles = 2;
    img = NULL;
    CHECK_OK(nvlm_image_load_file(g_ctx, IMG_DIR "coffee_600x400.jpg", &p, &img));
    nvlm_image_grid(img, &c, &r);
    CHECK(c == 2 && r == 1 && nvlm_image_tile_count(img) == 3, "short params struct");
    nvlm_image_free(img);

    CHECK(nvlm_image_load_file(NULL, IMG_DIR "tiny_1x1.png", NULL, &img) ==
              NVLM_ERR_INVALID_ARGUMENT,
          "NULL context");
    CHECK(nvlm_image_load_file(g_ctx, NULL, NULL, &img) == NVLM_ERR_INVALID_ARGUMENT,
          "NULL path");
    CHECK(nvlm_image_load_file(g_ctx, IMG_DIR "tiny_1x1.png", NULL, NULL) ==
              NVLM_ERR_INVALID_ARGUMENT,
          "NULL out");
    CHECK(nvlm_image_load_memory(g_ctx, NULL, 5, NULL, &img) == NVLM_ERR_INVALID_ARGUMENT,
          "NULL data");
    CHECK(nvlm_image_load_file(g_ctx, "tests/data/image/no_such.png", NULL, &img) ==
              NVLM_ERR_IO,
          "missing file -> IO");
    CHECK(strstr(nvlm_last_error(g_ctx), "no_such.png") != NULL, "message names the file");
    CHECK(nvlm_image_width(NULL) == 0 && nvlm_image_tile_count(NULL) == 0 &&
              nvlm_image_tile_rgb(NULL, 0) == NULL,
          "getters accept NULL");
    nvlm_image_grid(NULL, &c, &r);
    CHECK(c == 0 && r == 0, "grid of NULL");
    CHECK(nvlm_image_tile_normalized(NULL, 0, NULL) == NVLM_ERR_INVALID_ARGUMENT,
          "normalized NULL image");
    nvlm_image_free(NULL);
    nvlm_image_free(ref);
}

/* ---- allocation failures: every allocation of a load fails once, nothing leaks ------------------- */

typedef struct fail_alloc {
    long calls;
    long fail_at;
} fail_alloc;

static void *fa_alloc(void *u, size_t n)
{
    fail_alloc *f = u;
    if (++f->calls == f->fail_at) {
        return NULL;
    }
    return malloc(n);
}

static void *fa_realloc(void *u, void *p, size_t n)
{
    fail_alloc *f = u;
    if (++f->calls == f->fail_at) {
        return NULL;
    }
    return realloc(p, n);
}

static void fa_free(void *u, void *p)
{
    (void)u;
    free(p);
}

static void test_alloc_failures(void)
{
    tu_section("allocation failures");
    const char *files[] = {IMG_DIR "coffee_600x400.jpg", IMG_DIR "chelsea_palette_100x90.png"};
    for (size_t k = 0; k < NV_ARRAY_LEN(files); k++) {
        int oom = 0;
        bool finished = false;
        for (long at = 1; at < 200 && !finished; at++) {
            fail_alloc fa = {0, at};
            nvlm_context_params cp;
            nvlm_context_default_params(&cp);
            cp.backend = NVLM_BACKEND_CPU;
            cp.alloc_fn = fa_alloc;
            cp.realloc_fn = fa_realloc;
            cp.free_fn = fa_free;
            cp.alloc_user = &fa;
            nvlm_context *ctx = NULL;
            if (nvlm_context_create(&cp, &ctx) != NVLM_OK) {
                continue; /* the context's own allocation failed */
            }
            nvlm_image *img = NULL;
            nvlm_status st = nvlm_image_load_file(ctx, files[k], NULL, &img);
            if (st == NVLM_OK) {
                finished = true;
            } else if (st == NVLM_ERR_OUT_OF_MEMORY) {
                oom++;
            } else {
                CHECK(false, "%s: alloc %ld failing gave status %d (%s)", files[k], at, st,
                      nvlm_last_error(ctx));
            }
            nvlm_image_free(img);
            nvlm_context_free(ctx);
        }
        CHECK(finished && oom >= 4, "%s: %d failing allocations refused cleanly", files[k], oom);
    }
}

/* ---- the CLI ----------------------------------------------------------------------------------- */

static void test_cli(void)
{
    tu_section("nvlm preprocess");
    const char *cli = getenv("NVLM_CLI");
    if (cli == NULL || cli[0] == '\0') {
        printf("SKIP nvlm preprocess CLI checks: NVLM_CLI is not set\n");
        return;
    }
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "%s preprocess %scoffee_600x400.jpg --json", cli, IMG_DIR);
    FILE *p = popen(cmd, "r");
    char out[512] = "";
    size_t got = p != NULL ? fread(out, 1, sizeof out - 1, p) : 0;
    out[got] = '\0';
    int rc = p != NULL ? pclose(p) : -1;
    CHECK(rc == 0, "CLI --json exit status %d", rc);
    cJSON *j = cJSON_Parse(out);
    CHECK(j != NULL && cJSON_GetObjectItem(j, "width") != NULL &&
              cJSON_GetObjectItem(j, "width")->valueint == 600 &&
              cJSON_GetObjectItem(j, "height")->valueint == 400 &&
              cJSON_GetArrayItem(cJSON_GetObjectItem(j, "grid"), 0)->valueint == 3 &&
              cJSON_GetArrayItem(cJSON_GetObjectItem(j, "grid"), 1)->valueint == 2 &&
              cJSON_GetObjectItem(j, "tiles")->valueint == 7,
          "CLI JSON: %s", out);
    cJSON_Delete(j);

    char dir[] = "/tmp/nvlm_img_dump_XXXXXX";
    if (!CHECK(mkdtemp(dir) != NULL, "mkdtemp")) {
        return;
    }
    snprintf(cmd, sizeof cmd, "%s preprocess %srocket_wide_640x320.jpg --max-tiles 6 --dump %s "
             ">/dev/null", cli, IMG_DIR, dir);
    CHECK(system(cmd) == 0, "CLI --dump runs");
    nvlm_image *ref = NULL;
    CHECK_OK(nvlm_image_load_file(g_ctx, IMG_DIR "rocket_wide_640x320.jpg", NULL, &ref));
    for (int i = 0; i < 3 && ref != NULL; i++) {
        char path[256];
        snprintf(path, sizeof path, "%s/tile_%02d.png", dir, i);
        img_rgb rgb;
        if (CHECK(decode_file(path, NULL, &rgb), "dumped %s reads back", path)) {
            CHECK(rgb.w == 448 && rgb.h == 448 &&
                      memcmp(rgb.px, nvlm_image_tile_rgb(ref, i), 448 * 448 * 3) == 0,
                  "dumped tile %d == library tile", i);
            nv_free(g_ctx, rgb.px);
        }
        unlink(path);
    }
    char extra[256];
    snprintf(extra, sizeof extra, "%s/tile_03.png", dir);
    CHECK(access(extra, F_OK) != 0, "exactly 3 tiles dumped");
    rmdir(dir);
    nvlm_image_free(ref);

    snprintf(cmd, sizeof cmd, "%s preprocess %s --max-tiles 1 --json", cli,
             IMG_DIR "panorama_3000x120.jpg");
    p = popen(cmd, "r");
    got = p != NULL ? fread(out, 1, sizeof out - 1, p) : 0;
    out[got] = '\0';
    rc = p != NULL ? pclose(p) : -1;
    CHECK(rc == 0 && strstr(out, "\"tiles\":1") != NULL, "--max-tiles 1: %s", out);
    snprintf(cmd, sizeof cmd, "%s preprocess %shostile/garbage.bin 2>/dev/null", cli, DATA_DIR);
    rc = system(cmd);
    CHECK(WIFEXITED(rc) && WEXITSTATUS(rc) == 1, "bad image -> exit 1");
    snprintf(cmd, sizeof cmd, "%s preprocess 2>/dev/null", cli);
    rc = system(cmd);
    CHECK(WIFEXITED(rc) && WEXITSTATUS(rc) == 2, "missing argument -> exit 2");
    snprintf(cmd, sizeof cmd, "%s preprocess --help >/dev/null", cli);
    CHECK(system(cmd) == 0, "--help exits 0");
}

int main(void)
{
    nvlm_context_params cp;
    nvlm_context_default_params(&cp);
    cp.backend = NVLM_BACKEND_CPU;
    if (nvlm_context_create(&cp, &g_ctx) != NVLM_OK) {
        printf("FAIL cannot create a context\n");
        return 1;
    }
    test_goldens();
    test_normalize();
    test_grid();
    test_resize();
    test_conversions();
    test_hostile();
    test_raw_and_params();
    test_alloc_failures();
    test_cli();
    nvlm_context_free(g_ctx);
    return tu_done();
}
