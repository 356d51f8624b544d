/*
 * cmd_preprocess.c - `nvlm preprocess IMAGE [--max-tiles N] [--json] [--dump DIR]`: decode an
 * image, choose its tile grid and show it; --dump writes the tiles the encoder sees as
 * DIR/tile_00.png, tile_01.png, ... (thumbnail last). Public API plus libpng only.
 */
#include "cli.h"

#include <errno.h>
#include <png.h>
#include <setjmp.h>
#include <stdlib.h>
#include <string.h>

static void usage(FILE *f)
{
    fprintf(f,
            "usage: nvlm preprocess IMAGE [--max-tiles N] [--json] [--dump DIR]\n"
            "\n"
            "Decodes a PNG or JPEG image and splits it into 448x448 tiles as NVLM-D does.\n"
            "  --max-tiles N  most grid tiles (the reference's max_num; default 6; the\n"
            "                 thumbnail is not counted)\n"
            "  --json         print {\"width\":W,\"height\":H,\"grid\":[cols,rows],\"tiles\":n}\n"
            "                 where tiles counts what the encoder sees (thumbnail included)\n"
            "  --dump DIR     write the tiles as DIR/tile_00.png ... in encoder order\n"
            "                 (thumbnail last); DIR must exist\n");
}

static int write_png(const char *path, const uint8_t *rgb, int size)
{
    FILE *f = fopen(path, "wb");
    if (f == NULL) {
        fprintf(stderr, "nvlm: preprocess: cannot write %s: %s\n", path, strerror(errno));
        return 1;
    }
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL);
    png_infop info = png != NULL ? png_create_info_struct(png) : NULL;
    if (png == NULL || info == NULL || setjmp(png_jmpbuf(png)) != 0) {
        png_destroy_write_struct(&png, &info);
        fclose(f);
        fprintf(stderr, "nvlm: preprocess: cannot encode %s\n", path);
        return 1;
    }
    png_init_io(png, f);
    png_set_IHDR(png, info, (png_uint_32)size, (png_uint_32)size, 8, PNG_COLOR_TYPE_RGB,
                 PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    png_write_info(png, info);
    for (int y = 0; y < size; y++) {
        png_write_row(png, rgb + (size_t)y * (size_t)size * 3);
    }
    png_write_end(png, NULL);
    png_destroy_write_struct(&png, &info);
    if (fclose(f) != 0) {
        fprintf(stderr, "nvlm: preprocess: cannot write %s\n", path);
        return 1;
    }
    return 0;
}

int cmd_preprocess(int argc, char **argv)
{
    const char *image = NULL;
    const char *dump = NULL;
    int json = 0;
    long max_tiles = -1;
    for (int i = 1; i < argc; i++) {
        if (cli_is_help(argv[i])) {
            usage(stdout);
            return 0;
        } else if (strcmp(argv[i], "--json") == 0) {
            json = 1;
        } else if (strcmp(argv[i], "--max-tiles") == 0 && i + 1 < argc) {
            char *end = NULL;
            max_tiles = strtol(argv[++i], &end, 10);
            if (end == argv[i] || *end != '\0' || max_tiles < 1 || max_tiles > 64) {
                fprintf(stderr, "nvlm: preprocess: --max-tiles wants 1..64\n");
                return 2;
            }
        } else if (strcmp(argv[i], "--dump") == 0 && i + 1 < argc) {
            dump = argv[++i];
        } else if (argv[i][0] == '-' && argv[i][1] != '\0') {
            fprintf(stderr, "nvlm: preprocess: unknown option '%s'\n", argv[i]);
            usage(stderr);
            return 2;
        } else if (image == NULL) {
            image = argv[i];
        } else {
            fprintf(stderr, "nvlm: preprocess: more than one image given\n");
            return 2;
        }
    }
    if (image == NULL) {
        usage(stderr);
        return 2;
    }
    nvlm_context_params cp;
    nvlm_context_default_params(&cp);
    cp.backend = NVLM_BACKEND_CPU;
    nvlm_context *ctx = NULL;
    nvlm_status st = nvlm_context_create(&cp, &ctx);
    if (st != NVLM_OK) {
        return cli_fail("context", st, NULL);
    }
    nvlm_image_params ip;
    nvlm_image_default_params(&ip);
    if (max_tiles > 0) {
        ip.max_tiles = (int32_t)max_tiles;
    }
    nvlm_image *img = NULL;
    st = nvlm_image_load_file(ctx, image, &ip, &img);
    if (st != NVLM_OK) {
        int rc = cli_fail("preprocess", st, ctx);
        nvlm_context_free(ctx);
        return rc;
    }
    int32_t cols = 0;
    int32_t rows = 0;
    nvlm_image_grid(img, &cols, &rows);
    int32_t n = nvlm_image_tile_count(img);
    if (json) {
        printf("{\"width\":%d,\"height\":%d,\"grid\":[%d,%d],\"tiles\":%d}\n",
               nvlm_image_width(img), nvlm_image_height(img), cols, rows, n);
    } else {
        printf("%s: %dx%d, grid %dx%d, %d tile%s%s\n", image, nvlm_image_width(img),
               nvlm_image_height(img), cols, rows, n, n == 1 ? "" : "s",
               n > cols * rows ? " (thumbnail last)" : "");
    }
    int rc = 0;
    for (int32_t i = 0; dump != NULL && i < n && rc == 0; i++) {
        char path[4096];
        snprintf(path, sizeof path, "%s/tile_%02d.png", dump, (int)i);
        rc = write_png(path, nvlm_image_tile_rgb(img, i), ip.tile_size);
    }
    nvlm_image_free(img);
    nvlm_context_free(ctx);
    return rc;
}
