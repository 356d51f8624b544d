/*
 * image.c - preprocess: bytes or pixels -> RGB -> dynamic tiles (spec NVLM-D.md 3.2-3.5).
 * The grid (cols, rows) is chosen by aspect ratio; the image is resized with Pillow's bicubic to
 * (S*cols, S*rows) and cut row-major into S x S tiles; a thumbnail resized from the original is
 * appended when there is more than one tile. Output: (n_tiles, S, S, 3) uint8, kept by the
 * image; the encoder reads them normalized as float32 (n, 3, S, S).
 */
#include "image.h"

#include <stdio.h>
#include <string.h>

/* Images larger than this are refused before reading (compressed data is far smaller than the
 * pixel limit, which is checked separately from the header). */
#define IMG_MAX_FILE_BYTES ((size_t)1 << 30)

/* A grid candidate: i columns, j rows. */
typedef struct grid_cand {
    int32_t i;
    int32_t j;
} grid_cand;

void nvlm_image_params_init(nvlm_image_params *p, size_t size)
{
    if (p == NULL || size < sizeof(uint32_t)) {
        return;
    }
    nvlm_image_params d;
    memset(&d, 0, sizeof d);
    d.struct_size = (uint32_t)NV_MIN(size, sizeof d);
    d.min_tiles = 1;
    d.max_tiles = 6;
    d.use_thumbnail = 1;
    d.tile_size = 448;
    d.apply_exif_orientation = 0;
    d.max_pixels = 64ull * 1024 * 1024;
    memcpy(p, &d, NV_MIN(size, sizeof d));
    p->struct_size = (uint32_t)size;
}

/* CPython's iteration order of the reference's candidate set for max_num = 6 (spec 3.2), the
 * order inside a group of equal products. Pairs beyond it (products > 6) are ordered by
 * columns; the oracle table (max_num up to 12) finds no size where that choice matters. */
static const grid_cand ref_order[] = {
    {1, 1}, {1, 2}, {2, 1}, {3, 1}, {1, 3}, {4, 1}, {1, 4}, {2, 2},
    {1, 5}, {5, 1}, {6, 1}, {2, 3}, {1, 6}, {3, 2},
};

static int32_t ref_rank(int32_t i, int32_t j)
{
    for (size_t k = 0; k < NV_ARRAY_LEN(ref_order); k++) {
        if (ref_order[k].i == i && ref_order[k].j == j) {
            return (int32_t)k;
        }
    }
    return (int32_t)NV_ARRAY_LEN(ref_order) + i; /* beyond the table: by columns */
}

static bool cand_before(grid_cand a, grid_cand b)
{
    int32_t pa = a.i * a.j;
    int32_t pb = b.i * b.j;
    if (pa != pb) {
        return pa < pb;
    }
    return ref_rank(a.i, a.j) < ref_rank(b.i, b.j);
}

void img_choose_grid(int64_t w, int64_t h, int32_t min_tiles, int32_t max_tiles,
                     int32_t tile_size, int32_t *cols, int32_t *rows)
{
    double aspect = (double)w / (double)h;
    double best_diff = 1.0 / 0.0;
    grid_cand best = {1, 1};
    /* Walk candidates in order without building the list: repeatedly pick the next one. */
    grid_cand prev = {0, 0};
    bool have_prev = false;
    for (;;) {
        grid_cand next = {0, 0};
        bool found = false;
        for (int32_t i = 1; i <= max_tiles; i++) {
            for (int32_t j = 1; i * j <= max_tiles; j++) {
                if (i * j < min_tiles) {
                    continue;
                }
                grid_cand c = {i, j};
                if (have_prev && !cand_before(prev, c)) {
                    continue;
                }
                if (!found || cand_before(c, next)) {
                    next = c;
                    found = true;
                }
            }
        }
        if (!found) {
            break;
        }
        double diff = aspect - (double)next.i / (double)next.j;
        diff = diff < 0 ? -diff : diff;
        if (diff < best_diff) {
            best_diff = diff;
            best = next;
        } else if (diff == best_diff) {
            /* area > 0.5 * S * S * i * j, in exact integers. */
            unsigned __int128 area2 = (unsigned __int128)((uint64_t)w * (uint64_t)h) * 2u;
            unsigned __int128 rhs = (unsigned __int128)((uint64_t)tile_size * (uint64_t)tile_size) *
                                    (uint64_t)(next.i * next.j);
            if (area2 > rhs) {
                best = next;
            }
        }
        prev = next;
        have_prev = true;
    }
    *cols = best.i;
    *rows = best.j;
}

/* ============================================================================================ */

static nvlm_status get_params(nvlm_context *ctx, const nvlm_image_params *params,
                              nvlm_image_params *p)
{
    nvlm_image_params_init(p, sizeof *p);
    if (!nv_params_copy(p, sizeof *p, params, sizeof(uint32_t))) {
        return nv_error(ctx, NVLM_ERR_INVALID_ARGUMENT, "nvlm_image_params: bad struct_size");
    }
    if (p->min_tiles < 1 || p->max_tiles < p->min_tiles || p->max_tiles > 64) {
        return nv_error(ctx, NVLM_ERR_INVALID_ARGUMENT,
                        "nvlm_image_params: need 1 <= min_tiles <= max_tiles <= 64 (got %d, %d)",
                        p->min_tiles, p->max_tiles);
    }
    if (p->tile_size < 1 || p->tile_size > 4096) {
        return nv_error(ctx, NVLM_ERR_INVALID_ARGUMENT,
                        "nvlm_image_params: tile_size %d outside 1..4096", p->tile_size);
    }
    if (p->max_pixels == 0) {
        return nv_error(ctx, NVLM_ERR_INVALID_ARGUMENT, "nvlm_image_params: max_pixels is 0");
    }
    return NVLM_OK;
}

/* Tiles an RGB image (borrowed) into a new nvlm_image. */
static nvlm_status make_tiles(nvlm_context *ctx, const img_rgb *rgb, const nvlm_image_params *p,
                              nvlm_image **out)
{
    int32_t cols;
    int32_t rows;
    img_choose_grid(rgb->w, rgb->h, p->min_tiles, p->max_tiles, p->tile_size, &cols, &rows);
    int32_t S = p->tile_size;
    int32_t n_grid = cols * rows;
    bool thumb = p->use_thumbnail && n_grid != 1;
    int32_t n = n_grid + (thumb ? 1 : 0);
    size_t tile_bytes = (size_t)S * (size_t)S * 3;

    nvlm_image *img = nv_calloc(ctx, 1, sizeof *img);
    if (img == NULL) {
        return nv_error(ctx, NVLM_ERR_OUT_OF_MEMORY, "out of memory for an image");
    }
    nv_handle_init(&img->h, NV_MAGIC_IMAGE, ctx);
    img->width = rgb->w;
    img->height = rgb->h;
    img->cols = cols;
    img->rows = rows;
    img->n_tiles = n;
    img->tile_size = S;
    img->tiles = nv_alloc_array(ctx, (size_t)n, tile_bytes);
    uint8_t *resized = NULL;
    if (img->tiles == NULL) {
        nvlm_image_free(img);
        return nv_error(ctx, NVLM_ERR_OUT_OF_MEMORY, "out of memory for %d tiles", n);
    }
    int32_t rw = S * cols;
    int32_t rh = S * rows;
    size_t row_bytes = (size_t)S * 3;
    nvlm_status st;
    if (n_grid == 1) {
        st = img_resize(ctx, ctx, rgb->px, rgb->w, rgb->h, (size_t)rgb->w * 3, img->tiles, S, S,
                        row_bytes);
    } else {
        /* Resize the whole grid once, then copy the S x S crops row-major. */
        resized = nv_alloc_array(ctx, (size_t)n_grid, tile_bytes);
        if (resized == NULL) {
            nvlm_image_free(img);
            return nv_error(ctx, NVLM_ERR_OUT_OF_MEMORY, "out of memory resizing to %dx%d", rw,
                            rh);
        }
        size_t rstride = (size_t)rw * 3;
        st = img_resize(ctx, ctx, rgb->px, rgb->w, rgb->h, (size_t)rgb->w * 3, resized, rw, rh,
                        rstride);
        for (int32_t k = 0; st == NVLM_OK && k < n_grid; k++) {
            int32_t x0 = (k % cols) * S;
            int32_t y0 = (k / cols) * S;
            uint8_t *t = img->tiles + (size_t)k * tile_bytes;
            for (int32_t y = 0; y < S; y++) {
                memcpy(t + (size_t)y * row_bytes,
                       resized + (size_t)(y0 + y) * rstride + (size_t)x0 * 3, row_bytes);
            }
        }
        if (st == NVLM_OK && thumb) {
            st = img_resize(ctx, ctx, rgb->px, rgb->w, rgb->h, (size_t)rgb->w * 3,
                            img->tiles + (size_t)n_grid * tile_bytes, S, S, row_bytes);
        }
    }
    nv_free(ctx, resized);
    if (st != NVLM_OK) {
        nvlm_image_free(img);
        return st;
    }
    *out = img;
    return NVLM_OK;
}

nvlm_status nvlm_image_load_memory(nvlm_context *ctx, const void *data, size_t size,
                                   const nvlm_image_params *params, nvlm_image **out)
{
    if (out != NULL) {
        *out = NULL;
    }
    if (ctx == NULL || ctx->h.magic != NV_MAGIC_CONTEXT) {
        return NVLM_ERR_INVALID_ARGUMENT;
    }
    nv_clear(ctx);
    if (out == NULL || (data == NULL && size != 0)) {
        return nv_error(ctx, NVLM_ERR_INVALID_ARGUMENT, "nvlm_image_load_memory: NULL argument");
    }
    nvlm_image_params p;
    NVLM_TRY(get_params(ctx, params, &p));
    img_rgb rgb;
    NVLM_TRY(img_decode(ctx, ctx, data, size, p.max_pixels, p.apply_exif_orientation != 0, &rgb));
    nvlm_status st = make_tiles(ctx, &rgb, &p, out);
    nv_free(ctx, rgb.px);
    return st;
}

nvlm_status nvlm_image_load_file(nvlm_context *ctx, const char *path,
                                 const nvlm_image_params *params, nvlm_image **out)
{
    if (out != NULL) {
        *out = NULL;
    }
    if (ctx == NULL || ctx->h.magic != NV_MAGIC_CONTEXT) {
        return NVLM_ERR_INVALID_ARGUMENT;
    }
    nv_clear(ctx);
    if (out == NULL || path == NULL) {
        return nv_error(ctx, NVLM_ERR_INVALID_ARGUMENT, "nvlm_image_load_file: NULL argument");
    }
    nvlm_image_params p;
    NVLM_TRY(get_params(ctx, params, &p));
    char *data;
    size_t size;
    nvlm_status rst = nv_read_file(ctx, ctx, path, IMG_MAX_FILE_BYTES, &data, &size);
    if (rst != NVLM_OK) {
        /* A missing file is an I/O failure in this function's contract. */
        return rst == NVLM_ERR_NOT_FOUND ? NVLM_ERR_IO : rst;
    }
    img_rgb rgb;
    nvlm_status st = img_decode(ctx, ctx, (const uint8_t *)data, size, p.max_pixels,
                                p.apply_exif_orientation != 0, &rgb);
    nv_free(ctx, data);
    if (st != NVLM_OK) {
        /* Name the file in the message. */
        char msg[NV_ERR_MAX];
        snprintf(msg, sizeof msg, "%s", ctx->h.err);
        return nv_error(ctx, st, "%s: %s", path, msg);
    }
    st = make_tiles(ctx, &rgb, &p, out);
    nv_free(ctx, rgb.px);
    return st;
}

nvlm_status nvlm_image_from_pixels(nvlm_context *ctx, const void *pixels, int32_t width,
                                   int32_t height, size_t stride, nvlm_pixel_format format,
                                   const nvlm_image_params *params, nvlm_image **out)
{
    if (out != NULL) {
        *out = NULL;
    }
    if (ctx == NULL || ctx->h.magic != NV_MAGIC_CONTEXT) {
        return NVLM_ERR_INVALID_ARGUMENT;
    }
    nv_clear(ctx);
    if (out == NULL || pixels == NULL) {
        return nv_error(ctx, NVLM_ERR_INVALID_ARGUMENT, "nvlm_image_from_pixels: NULL argument");
    }
    size_t bpp;
    switch (format) {
    case NVLM_PIXEL_RGB8: bpp = 3; break;
    case NVLM_PIXEL_RGBA8: bpp = 4; break;
    case NVLM_PIXEL_GRAY8: bpp = 1; break;
    default:
        return nv_error(ctx, NVLM_ERR_INVALID_ARGUMENT, "nvlm_image_from_pixels: format %d",
                        (int)format);
    }
    if (width <= 0 || height <= 0) {
        return nv_error(ctx, NVLM_ERR_INVALID_ARGUMENT,
                        "nvlm_image_from_pixels: size %dx%d", width, height);
    }
    nvlm_image_params p;
    NVLM_TRY(get_params(ctx, params, &p));
    if (width > IMG_MAX_SIDE || height > IMG_MAX_SIDE ||
        (uint64_t)width * (uint64_t)height > p.max_pixels) {
        return nv_error(ctx, NVLM_ERR_LIMIT, "image %dx%d exceeds the pixel limit (%llu) or "
                        "side limit (%d)", width, height, (unsigned long long)p.max_pixels,
                        IMG_MAX_SIDE);
    }
    size_t row = (size_t)width * bpp;
    if (stride == 0) {
        stride = row;
    }
    if (stride < row) {
        return nv_error(ctx, NVLM_ERR_INVALID_ARGUMENT,
                        "nvlm_image_from_pixels: stride %zu < %zu bytes per row", stride, row);
    }
    img_rgb rgb = {NULL, width, height};
    rgb.px = nv_alloc_array(ctx, (size_t)width * (size_t)height, 3);
    if (rgb.px == NULL) {
        return nv_error(ctx, NVLM_ERR_OUT_OF_MEMORY, "out of memory for a %dx%d image", width,
                        height);
    }
    const uint8_t *src = pixels;
    for (int32_t y = 0; y < height; y++) {
        const uint8_t *s = src + (size_t)y * stride;
        uint8_t *d = rgb.px + (size_t)y * (size_t)width * 3;
        if (format == NVLM_PIXEL_RGB8) {
            memcpy(d, s, row);
            continue;
        }
        for (int32_t x = 0; x < width; x++) {
            if (format == NVLM_PIXEL_RGBA8) {
                d[3 * x] = s[4 * x];
                d[3 * x + 1] = s[4 * x + 1];
                d[3 * x + 2] = s[4 * x + 2];
            } else {
                d[3 * x] = d[3 * x + 1] = d[3 * x + 2] = s[x];
            }
        }
    }
    nvlm_status st = make_tiles(ctx, &rgb, &p, out);
    nv_free(ctx, rgb.px);
    return st;
}

void nvlm_image_free(nvlm_image *img)
{
    if (img == NULL || img->h.magic != NV_MAGIC_IMAGE) {
        return;
    }
    nvlm_context *ctx = img->h.ctx;
    nv_free(ctx, img->tiles);
    img->h.magic = NV_MAGIC_DEAD;
    nv_free(ctx, img);
}

static bool valid(const nvlm_image *img)
{
    return img != NULL && img->h.magic == NV_MAGIC_IMAGE;
}

int32_t nvlm_image_width(const nvlm_image *img)
{
    return valid(img) ? img->width : 0;
}

int32_t nvlm_image_height(const nvlm_image *img)
{
    return valid(img) ? img->height : 0;
}

void nvlm_image_grid(const nvlm_image *img, int32_t *cols, int32_t *rows)
{
    if (cols != NULL) {
        *cols = valid(img) ? img->cols : 0;
    }
    if (rows != NULL) {
        *rows = valid(img) ? img->rows : 0;
    }
}

int32_t nvlm_image_tile_count(const nvlm_image *img)
{
    return valid(img) ? img->n_tiles : 0;
}

const uint8_t *nvlm_image_tile_rgb(const nvlm_image *img, int32_t index)
{
    if (!valid(img) || index < 0 || index >= img->n_tiles) {
        return NULL;
    }
    return img->tiles + (size_t)index * (size_t)img->tile_size * (size_t)img->tile_size * 3;
}

nvlm_status nvlm_image_tile_normalized(const nvlm_image *img, int32_t index, float *out)
{
    if (!valid(img)) {
        return NVLM_ERR_INVALID_ARGUMENT;
    }
    nvlm_image *mimg = (nvlm_image *)img;
    nv_clear(mimg);
    if (out == NULL || index < 0 || index >= img->n_tiles) {
        return nv_error(mimg, NVLM_ERR_INVALID_ARGUMENT,
                        "nvlm_image_tile_normalized: bad index %d or NULL output", index);
    }
    img_normalize(img, index, 1, out);
    return NVLM_OK;
}

const uint8_t *img_tiles(const nvlm_image *img, int32_t *n, int32_t *tile_size)
{
    if (n != NULL) {
        *n = img->n_tiles;
    }
    if (tile_size != NULL) {
        *tile_size = img->tile_size;
    }
    return img->tiles;
}

void img_normalize(const nvlm_image *img, int32_t first, int32_t count, float *out)
{
    static const float mean[3] = {0.485f, 0.456f, 0.406f};
    static const float stdv[3] = {0.229f, 0.224f, 0.225f};
    /* ToTensor then Normalize in float32: (u8 / 255 - mean) / std; division, not reciprocal
     * multiplication, so every value matches the reference bit for bit. */
    float lut[3][256];
    for (int c = 0; c < 3; c++) {
        for (int v = 0; v < 256; v++) {
            float x = (float)v / 255.0f;
            lut[c][v] = (x - mean[c]) / stdv[c];
        }
    }
    size_t plane = (size_t)img->tile_size * (size_t)img->tile_size;
    for (int32_t t = 0; t < count; t++) {
        const uint8_t *src = img->tiles + (size_t)(first + t) * plane * 3;
        float *dst = out + (size_t)t * plane * 3;
        for (size_t i = 0; i < plane; i++) {
            dst[i] = lut[0][src[3 * i]];
            dst[plane + i] = lut[1][src[3 * i + 1]];
            dst[2 * plane + i] = lut[2][src[3 * i + 2]];
        }
    }
}
