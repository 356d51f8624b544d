/*
 * image.h - the image module inside the library: decoded RGB (image_decode.c), Pillow-exact
 * bicubic resampling (resample.c), grid choice, tiles and normalization (image.c).
 * Tiles are (n_tiles, S, S, 3) uint8 HWC, encoder order (row-major grid tiles, thumbnail last);
 * the encoder reads them as float32 (n_tiles, 3, S, S). Spec: NVLM-D.md section 3.
 */
#ifndef NVLM_IMAGE_H
#define NVLM_IMAGE_H

#include "internal.h"

struct nvlm_image {
    nv_handle h;
    int32_t width;      /* source size, after EXIF orientation if applied */
    int32_t height;
    int32_t cols;       /* grid */
    int32_t rows;
    int32_t n_tiles;    /* cols * rows, plus 1 when a thumbnail is appended */
    int32_t tile_size;  /* S, 448 by default */
    uint8_t *tiles;     /* (n_tiles, S, S, 3), owned, from the context's allocator */
};

/* Longest side the library accepts (PNG allows 2^31 - 1; the resampler's coefficient tables
 * grow with the side). */
#define IMG_MAX_SIDE (1 << 20)

/* A decoded image: tightly packed 8-bit RGB, w * h * 3 bytes from the context's allocator. */
typedef struct img_rgb {
    uint8_t *px;
    int32_t w;
    int32_t h;
} img_rgb;

/* ---- image_decode.c ------------------------------------------------------------------------ */

/* Decodes a PNG or JPEG (sniffed from the magic bytes) to RGB exactly as Pillow's
 * Image.open(...).convert('RGB') (spec 3.1). width * height is checked against max_pixels
 * (and both sides against IMG_MAX_SIDE) before any pixel buffer is allocated. When
 * apply_exif is set, the EXIF orientation (JPEG APP1, PNG eXIf) is applied as Pillow's
 * ImageOps.exif_transpose. Errors (with text) go to err_handle. Returns NVLM_OK,
 * NVLM_ERR_FORMAT, NVLM_ERR_LIMIT, NVLM_ERR_UNSUPPORTED, NVLM_ERR_OUT_OF_MEMORY.
 * On success the caller owns out->px (nv_free with ctx). */
nvlm_status img_decode(nvlm_context *ctx, void *err_handle, const uint8_t *data, size_t size,
                       uint64_t max_pixels, bool apply_exif, img_rgb *out);

/* The EXIF orientation (1..8) stored in a TIFF/EXIF block ("II*\0" or "MM\0*" header), or 0
 * when absent or malformed. Bounds-checked against size. */
int img_exif_orientation_tiff(const uint8_t *tiff, size_t size);

/* Applies EXIF orientation `o` (2..8; others: no change) in place of rgb (reallocates). */
nvlm_status img_apply_orientation(nvlm_context *ctx, void *err_handle, img_rgb *rgb, int o);

/* ---- resample.c ------------------------------------------------------------------------------ */

/* Pillow's Image.resize(..., BICUBIC) of an 8-bit RGB image (spec 3.4): horizontal pass into an
 * 8-bit intermediate, then vertical; a pass is skipped when its axis keeps its size, a plain
 * copy when both do. Strides are in bytes. Returns NVLM_OK or NVLM_ERR_OUT_OF_MEMORY
 * (message on err_handle). */
nvlm_status img_resize(nvlm_context *ctx, void *err_handle, const uint8_t *src, int32_t sw,
                       int32_t sh, size_t sstride, uint8_t *dst, int32_t dw, int32_t dh,
                       size_t dstride);

/* The same; simd = false forces the portable scalar loops (tests compare both). */
nvlm_status img_resize_ex(nvlm_context *ctx, void *err_handle, const uint8_t *src, int32_t sw,
                          int32_t sh, size_t sstride, uint8_t *dst, int32_t dw, int32_t dh,
                          size_t dstride, bool simd);

/* ---- image.c --------------------------------------------------------------------------------- */

/* The reference's grid choice (spec 3.2) for a w x h image, tile size S and
 * min_tiles <= cols * rows <= max_tiles (1 <= min_tiles <= max_tiles). */
void img_choose_grid(int64_t w, int64_t h, int32_t min_tiles, int32_t max_tiles,
                     int32_t tile_size, int32_t *cols, int32_t *rows);

/* All tiles, (n, S, S, 3) uint8, encoder order; *n (may be NULL) gets the tile count and
 * *tile_size (may be NULL) S. Borrowed from the image. */
const uint8_t *img_tiles(const nvlm_image *img, int32_t *n, int32_t *tile_size);

/* Writes the normalized pixel values of tiles [first, first + count) as float32
 * (count, 3, S, S) CHW: (float(u8) / 255 - mean[c]) / std[c] with true float32 divisions
 * (spec 3.5). out holds count * 3 * S * S floats. The caller checks the range. */
void img_normalize(const nvlm_image *img, int32_t first, int32_t count, float *out);

#endif /* NVLM_IMAGE_H */
