/*
 * bench_image.c - image preprocessing speed: decode + grid tiles + thumbnail + normalization
 * (the encoder's float32 input) of a 12-megapixel JPEG (4032x3024, 3x2 grid) and of a
 * 1000x1000 PNG (2x2 grid), on one thread. The inputs are made at run time from the fixtures
 * (upscaled with the library's resampler, encoded with libjpeg / libpng) and written to
 * build/bench-image/ so bench/bench_image_pillow.py can time Pillow on the same bytes.
 * Usage: bench_image [OUTDIR] [REPEATS]
 */
#include "image.h"

#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <jpeglib.h>
#include <png.h>

static uint8_t *upscaled(nvlm_context *ctx, const char *path, int w, int h)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        return NULL;
    }
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    rewind(f);
    uint8_t *data = malloc((size_t)n);
    if (fread(data, 1, (size_t)n, f) != (size_t)n) {
        fclose(f);
        free(data);
        return NULL;
    }
    fclose(f);
    img_rgb rgb;
    nvlm_status st = img_decode(ctx, ctx, data, (size_t)n, 1u << 30, false, &rgb);
    free(data);
    if (st != NVLM_OK) {
        return NULL;
    }
    uint8_t *out = malloc((size_t)w * h * 3);
    img_resize(ctx, ctx, rgb.px, rgb.w, rgb.h, (size_t)rgb.w * 3, out, w, h, (size_t)w * 3);
    nv_free(ctx, rgb.px);
    return out;
}

static int write_jpeg(const char *path, const uint8_t *rgb, int w, int h)
{
    FILE *f = fopen(path, "wb");
    if (f == NULL) {
        return 1;
    }
    struct jpeg_compress_struct c;
    struct jpeg_error_mgr e;
    c.err = jpeg_std_error(&e);
    jpeg_create_compress(&c);
    jpeg_stdio_dest(&c, f);
    c.image_width = (JDIMENSION)w;
    c.image_height = (JDIMENSION)h;
    c.input_components = 3;
    c.in_color_space = JCS_RGB;
    jpeg_set_defaults(&c);
    jpeg_set_quality(&c, 90, TRUE);
    jpeg_start_compress(&c, TRUE);
    while (c.next_scanline < c.image_height) {
        JSAMPROW row = (JSAMPROW)(rgb + (size_t)c.next_scanline * w * 3);
        jpeg_write_scanlines(&c, &row, 1);
    }
    jpeg_finish_compress(&c);
    jpeg_destroy_compress(&c);
    return fclose(f) != 0;
}

static int write_png(const char *path, const uint8_t *rgb, int w, int h)
{
    FILE *f = fopen(path, "wb");
    if (f == NULL) {
        return 1;
    }
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL);
    png_infop info = png_create_info_struct(png);
    if (setjmp(png_jmpbuf(png)) != 0) {
        png_destroy_write_struct(&png, &info);
        fclose(f);
        return 1;
    }
    png_init_io(png, f);
    png_set_IHDR(png, info, (png_uint_32)w, (png_uint_32)h, 8, PNG_COLOR_TYPE_RGB,
                 PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    png_write_info(png, info);
    for (int y = 0; y < h; y++) {
        png_write_row(png, rgb + (size_t)y * w * 3);
    }
    png_write_end(png, NULL);
    png_destroy_write_struct(&png, &info);
    return fclose(f) != 0;
}

static uint8_t *slurp(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        return NULL;
    }
    fseek(f, 0, SEEK_END);
    *n = (size_t)ftell(f);
    rewind(f);
    uint8_t *d = malloc(*n);
    size_t got = fread(d, 1, *n, f);
    fclose(f);
    if (got != *n) {
        free(d);
        return NULL;
    }
    return d;
}

/* One full preprocessing run; returns milliseconds, split into decode and the rest. */
static double run_once(nvlm_context *ctx, const uint8_t *data, size_t n, float **buf,
                       size_t *cap, double *decode_ms, int32_t *tiles)
{
    double t0 = nv_time_ms();
    img_rgb rgb;
    if (img_decode(ctx, ctx, data, n, 64u << 20, false, &rgb) != NVLM_OK) {
        return -1;
    }
    nv_free(ctx, rgb.px);
    double t1 = nv_time_ms();
    nvlm_image *img = NULL;
    if (nvlm_image_load_memory(ctx, data, n, NULL, &img) != NVLM_OK) {
        return -1;
    }
    int32_t nt;
    int32_t S;
    img_tiles(img, &nt, &S);
    size_t need = (size_t)nt * 3 * S * S;
    if (need > *cap) {
        free(*buf);
        *buf = malloc(need * sizeof(float));
        *cap = need;
    }
    img_normalize(img, 0, nt, *buf);
    nvlm_image_free(img);
    double t2 = nv_time_ms();
    *decode_ms = t1 - t0;
    *tiles = nt;
    return t2 - t1;
}

int main(int argc, char **argv)
{
    const char *dir = argc > 1 ? argv[1] : "build/bench-image";
    int reps = argc > 2 ? atoi(argv[2]) : 5;
    mkdir(dir, 0755);
    nvlm_context *ctx = NULL;
    nvlm_context_params cp;
    nvlm_context_default_params(&cp);
    cp.backend = NVLM_BACKEND_CPU;
    cp.n_threads = 1;
    if (nvlm_context_create(&cp, &ctx) != NVLM_OK) {
        return 1;
    }
    char jpg[512];
    char png[512];
    snprintf(jpg, sizeof jpg, "%s/photo_4032x3024.jpg", dir);
    snprintf(png, sizeof png, "%s/photo_1000x1000.png", dir);
    uint8_t *a = upscaled(ctx, "tests/data/images/coffee_600x400.jpg", 4032, 3024);
    uint8_t *b = upscaled(ctx, "tests/data/images/chelsea_square_160.png", 1000, 1000);
    if (a == NULL || b == NULL || write_jpeg(jpg, a, 4032, 3024) || write_png(png, b, 1000, 1000)) {
        fprintf(stderr, "bench_image: cannot make the inputs (run from the repository root)\n");
        return 1;
    }
    free(a);
    free(b);
    const char *files[2] = {jpg, png};
    const char *names[2] = {"12 MP JPEG 4032x3024", "1000x1000 PNG"};
    float *buf = NULL;
    size_t cap = 0;
    printf("nvlm image preprocessing, 1 thread, best of %d\n", reps);
    for (int k = 0; k < 2; k++) {
        size_t n = 0;
        uint8_t *data = slurp(files[k], &n);
        if (data == NULL) {
            fprintf(stderr, "bench_image: cannot read %s\n", files[k]);
            return 1;
        }
        double best = 1e30;
        double best_dec = 0;
        int32_t tiles = 0;
        for (int r = 0; r < reps; r++) {
            double dec;
            double rest = run_once(ctx, data, n, &buf, &cap, &dec, &tiles);
            if (rest < 0) {
                fprintf(stderr, "bench_image: %s failed: %s\n", files[k], nvlm_last_error(ctx));
                return 1;
            }
            /* The load also decodes: total = load (decode + tiles) + normalization. */
            if (rest < best) {
                best = rest;
                best_dec = dec;
            }
        }
        printf("%-22s %d tiles: total %.1f ms (decode alone %.1f ms)\n", names[k], tiles, best,
               best_dec);
        free(data);
    }
    free(buf);
    nvlm_context_free(ctx);
    return 0;
}
