/* stub_image.c - placeholders until the image module lands; delete this file then. */
#include "internal.h"

void nvlm_image_params_init(nvlm_image_params *p, size_t size)
{
    (void)p;
    (void)size;
}

nvlm_status nvlm_image_load_file(nvlm_context *ctx, const char *path, const nvlm_image_params *params, nvlm_image **out)
{
    (void)ctx;
    (void)path;
    (void)params;
    (void)out;
    return NVLM_ERR_UNSUPPORTED;
}

nvlm_status nvlm_image_load_memory(nvlm_context *ctx, const void *data, size_t size, const nvlm_image_params *params, nvlm_image **out)
{
    (void)ctx;
    (void)data;
    (void)size;
    (void)params;
    (void)out;
    return NVLM_ERR_UNSUPPORTED;
}

nvlm_status nvlm_image_from_pixels(nvlm_context *ctx, const void *pixels, int32_t width, int32_t height, size_t stride, nvlm_pixel_format format, const nvlm_image_params *params, nvlm_image **out)
{
    (void)ctx;
    (void)pixels;
    (void)width;
    (void)height;
    (void)stride;
    (void)format;
    (void)params;
    (void)out;
    return NVLM_ERR_UNSUPPORTED;
}

void nvlm_image_free(nvlm_image *img)
{
    (void)img;
}

int32_t nvlm_image_width(const nvlm_image *img)
{
    (void)img;
    return 0;
}

int32_t nvlm_image_height(const nvlm_image *img)
{
    (void)img;
    return 0;
}

void nvlm_image_grid(const nvlm_image *img, int32_t *cols, int32_t *rows)
{
    (void)img;
    (void)cols;
    (void)rows;
}

int32_t nvlm_image_tile_count(const nvlm_image *img)
{
    (void)img;
    return 0;
}

const uint8_t * nvlm_image_tile_rgb(const nvlm_image *img, int32_t index)
{
    (void)img;
    (void)index;
    return NULL;
}

nvlm_status nvlm_image_tile_normalized(const nvlm_image *img, int32_t index, float *out)
{
    (void)img;
    (void)index;
    (void)out;
    return NVLM_ERR_UNSUPPORTED;
}
