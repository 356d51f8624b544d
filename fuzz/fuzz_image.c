/*
 * fuzz_image.c - libFuzzer target for the image decoders (PNG via libpng, JPEG via
 * libjpeg-turbo) and, for whatever decodes, the tiling path. `make fuzz-image FUZZ_SECONDS=60`.
 * Seeds: the small fixtures and the hostile corpus (tests/data/image/hostile). Invariants:
 * a decode either fails with a status and a message or yields w*h RGB within the pixel limit;
 * nothing is printed (stderr is not checked here; the unit tests do that).
 */
#include "image.h"

#include <stdlib.h>
#include <string.h>

static nvlm_context *ctx;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    nvlm_context_params cp; /* parsing only: the CPU, never the plugin (auto) */
    nvlm_context_default_params(&cp);
    cp.backend = NVLM_BACKEND_CPU;
    if (nvlm_context_create(&cp, &ctx) != NVLM_OK) {
        abort();
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* Keep each input cheap: at most 1 megapixel. The first byte toggles EXIF handling. */
    const uint64_t max_pixels = 1u << 20;
    bool exif = size > 0 && (data[size - 1] & 1);
    img_rgb rgb;
    nvlm_status st = img_decode(ctx, ctx, data, size, max_pixels, exif, &rgb);
    if (st != NVLM_OK) {
        if (nvlm_last_error(ctx)[0] == '\0' || rgb.px != NULL) {
            abort();
        }
        return 0;
    }
    if (rgb.w <= 0 || rgb.h <= 0 || (uint64_t)rgb.w * (uint64_t)rgb.h > max_pixels) {
        abort();
    }
    /* Touch every byte (ASan checks the buffer size), then tile at a small tile size. */
    unsigned sum = 0;
    for (size_t i = 0; i < (size_t)rgb.w * rgb.h * 3; i++) {
        sum += rgb.px[i];
    }
    (void)sum;
    nvlm_image_params p;
    nvlm_image_default_params(&p);
    p.tile_size = 32;
    nvlm_image *img = NULL;
    if (nvlm_image_from_pixels(ctx, rgb.px, rgb.w, rgb.h, 0, NVLM_PIXEL_RGB8, &p, &img) ==
        NVLM_OK) {
        int32_t cols;
        int32_t rows;
        nvlm_image_grid(img, &cols, &rows);
        int32_t n = nvlm_image_tile_count(img);
        if (cols < 1 || rows < 1 || cols * rows > 6 || n < cols * rows || n > cols * rows + 1) {
            abort();
        }
        nvlm_image_free(img);
    }
    nv_free(ctx, rgb.px);
    return 0;
}
