/*
 * image_decode.c - PNG (libpng) and JPEG (libjpeg-turbo) from memory to packed 8-bit RGB, with
 * Pillow's convert('RGB') rules (spec NVLM-D.md 3.1): alpha dropped, palette looked up, 16-bit
 * gray clamped to 255, 16-bit color and gray+alpha keep the high byte, 4-channel JPEGs read as
 * Adobe-inverted CMYK. Decoder errors are caught with setjmp/longjmp; warnings are recorded,
 * never printed. The pixel count is checked from the header before pixels are allocated.
 */
#include "image.h"

#include <limits.h>
#include <setjmp.h>
#include <stdio.h>
#include <string.h>

#include <jerror.h>
#include <jpeglib.h>
#include <png.h>

/* Progressive JPEGs may hold any number of scans; real encoders write about 10. */
#define JPEG_MAX_SCANS 1000

static nvlm_status check_dims(void *err, const char *fmt, uint64_t w, uint64_t h,
                              uint64_t max_pixels)
{
    if (w == 0 || h == 0) {
        return nv_error(err, NVLM_ERR_FORMAT, "%s image has size %llux%llu", fmt,
                        (unsigned long long)w, (unsigned long long)h);
    }
    if (w > IMG_MAX_SIDE || h > IMG_MAX_SIDE) {
        return nv_error(err, NVLM_ERR_LIMIT, "%s image %llux%llu: a side exceeds %d pixels", fmt,
                        (unsigned long long)w, (unsigned long long)h, IMG_MAX_SIDE);
    }
    if (w * h > max_pixels) {
        return nv_error(err, NVLM_ERR_LIMIT, "%s image %llux%llu has %llu pixels, more than the "
                        "max_pixels limit %llu", fmt, (unsigned long long)w,
                        (unsigned long long)h, (unsigned long long)(w * h),
                        (unsigned long long)max_pixels);
    }
    return NVLM_OK;
}

static uint8_t *alloc_rgb(nvlm_context *ctx, uint32_t w, uint32_t h)
{
    size_t n;
    if (!nv_mul_size((size_t)w, (size_t)h, &n) || !nv_mul_size(n, 3, &n)) {
        return NULL;
    }
    return nv_malloc(ctx, n);
}

/* ============================================================================================ */
/* EXIF                                                                                          */
/* ============================================================================================ */

static uint32_t rd16(const uint8_t *p, bool le)
{
    return le ? (uint32_t)p[0] | (uint32_t)p[1] << 8 : (uint32_t)p[0] << 8 | (uint32_t)p[1];
}

static uint32_t rd32(const uint8_t *p, bool le)
{
    return le ? (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24
              : (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | (uint32_t)p[3];
}

int img_exif_orientation_tiff(const uint8_t *t, size_t size)
{
    if (t == NULL || size < 8) {
        return 0;
    }
    bool le;
    if (memcmp(t, "II*\0", 4) == 0) {
        le = true;
    } else if (memcmp(t, "MM\0*", 4) == 0) {
        le = false;
    } else {
        return 0;
    }
    uint32_t ifd = rd32(t + 4, le);
    if (ifd > size - 2 || ifd < 8) {
        return 0;
    }
    uint32_t n = rd16(t + ifd, le);
    size_t pos = (size_t)ifd + 2;
    for (uint32_t i = 0; i < n; i++, pos += 12) {
        if (pos > size - 12) {
            return 0;
        }
        const uint8_t *e = t + pos;
        if (rd16(e, le) != 0x0112) {
            continue;
        }
        /* SHORT (3), count 1: the value sits in the first two bytes of the value field. */
        if (rd16(e + 2, le) != 3 || rd32(e + 4, le) != 1) {
            return 0;
        }
        uint32_t v = rd16(e + 8, le);
        return v >= 1 && v <= 8 ? (int)v : 0;
    }
    return 0;
}

/* The orientation from a JPEG's first APP1 "Exif\0\0" segment, scanning markers up to SOS. */
static int jpeg_exif_orientation(const uint8_t *d, size_t size)
{
    size_t pos = 2;
    while (pos + 4 <= size) {
        if (d[pos] != 0xFF) {
            return 0;
        }
        uint8_t m = d[pos + 1];
        if (m == 0xFF) {
            pos++;
            continue;
        }
        if (m == 0xD8 || (m >= 0xD0 && m <= 0xD7) || m == 0x01) {
            pos += 2;
            continue;
        }
        if (m == 0xDA || m == 0xD9) {
            return 0;
        }
        size_t len = (size_t)d[pos + 2] << 8 | d[pos + 3];
        if (len < 2 || len > size - pos - 2) {
            return 0;
        }
        if (m == 0xE1 && len >= 8 && memcmp(d + pos + 4, "Exif\0\0", 6) == 0) {
            return img_exif_orientation_tiff(d + pos + 10, len - 8);
        }
        pos += 2 + len;
    }
    return 0;
}

nvlm_status img_apply_orientation(nvlm_context *ctx, void *err, img_rgb *rgb, int o)
{
    if (o < 2 || o > 8) {
        return NVLM_OK;
    }
    int32_t w = rgb->w;
    int32_t h = rgb->h;
    bool swap = o >= 5;
    int32_t ow = swap ? h : w;
    int32_t oh = swap ? w : h;
    uint8_t *dst = alloc_rgb(ctx, (uint32_t)ow, (uint32_t)oh);
    if (dst == NULL) {
        return nv_error(err, NVLM_ERR_OUT_OF_MEMORY, "out of memory rotating a %dx%d image", w, h);
    }
    for (int32_t oy = 0; oy < oh; oy++) {
        for (int32_t ox = 0; ox < ow; ox++) {
            int32_t sx;
            int32_t sy;
            switch (o) {
            case 2: sx = w - 1 - ox; sy = oy; break;              /* FLIP_LEFT_RIGHT */
            case 3: sx = w - 1 - ox; sy = h - 1 - oy; break;      /* ROTATE_180 */
            case 4: sx = ox; sy = h - 1 - oy; break;              /* FLIP_TOP_BOTTOM */
            case 5: sx = oy; sy = ox; break;                      /* TRANSPOSE */
            case 6: sx = oy; sy = h - 1 - ox; break;              /* ROTATE_270 */
            case 7: sx = w - 1 - oy; sy = h - 1 - ox; break;      /* TRANSVERSE */
            default: sx = w - 1 - oy; sy = ox; break;             /* 8: ROTATE_90 */
            }
            const uint8_t *s = rgb->px + ((size_t)sy * (size_t)w + (size_t)sx) * 3;
            uint8_t *d = dst + ((size_t)oy * (size_t)ow + (size_t)ox) * 3;
            d[0] = s[0];
            d[1] = s[1];
            d[2] = s[2];
        }
    }
    nv_free(ctx, rgb->px);
    rgb->px = dst;
    rgb->w = ow;
    rgb->h = oh;
    return NVLM_OK;
}

/* ============================================================================================ */
/* PNG                                                                                           */
/* ============================================================================================ */

typedef struct png_state {
    jmp_buf jmp;
    const uint8_t *data;
    size_t size;
    size_t pos;
    char msg[256];
    char warn[256];
} png_state;

static void png_on_error(png_structp png, png_const_charp msg)
{
    png_state *s = png_get_error_ptr(png);
    snprintf(s->msg, sizeof s->msg, "%s", msg != NULL ? msg : "unknown libpng error");
    longjmp(s->jmp, 1);
}

static void png_on_warning(png_structp png, png_const_charp msg)
{
    png_state *s = png_get_error_ptr(png);
    if (s->warn[0] == '\0') {
        snprintf(s->warn, sizeof s->warn, "%s", msg != NULL ? msg : "");
    }
}

static void png_on_read(png_structp png, png_bytep out, png_size_t n)
{
    png_state *s = png_get_io_ptr(png);
    if (n > s->size - s->pos) {
        png_error(png, "truncated PNG data");
    }
    memcpy(out, s->data + s->pos, n);
    s->pos += n;
}

/* Ancillary chunks that never change pixels: skipped without decompressing them. */
static const png_byte png_ignored_chunks[] = {
    'i', 'C', 'C', 'P', '\0', 'z', 'T', 'X', 't', '\0', 'i', 'T', 'X', 't', '\0',
    't', 'E', 'X', 't', '\0', 's', 'P', 'L', 'T', '\0', 'h', 'I', 'S', 'T', '\0',
    't', 'I', 'M', 'E', '\0', 'p', 'H', 'Y', 's', '\0', 's', 'C', 'A', 'L', '\0',
    'p', 'C', 'A', 'L', '\0', 'o', 'F', 'F', 's', '\0', 'g', 'A', 'M', 'A', '\0',
    'c', 'H', 'R', 'M', '\0', 's', 'R', 'G', 'B', '\0', 's', 'B', 'I', 'T', '\0',
    'b', 'K', 'G', 'D', '\0',
};

/* Everything libpng allocates or we allocate while a longjmp may happen; freed in one place. */
typedef struct png_job {
    png_structp png;
    png_infop info;
    uint8_t *raw;        /* decoded rows as libpng delivers them */
    png_bytep *rows;
    uint8_t *rgb;
} png_job;

static nvlm_status decode_png(nvlm_context *ctx, void *err, const uint8_t *data, size_t size,
                              uint64_t max_pixels, bool apply_exif, img_rgb *out)
{
    png_state s;
    memset(&s, 0, sizeof s);
    s.data = data;
    s.size = size;
    /* volatile: modified between setjmp and a possible longjmp. */
    png_job job_storage;
    memset(&job_storage, 0, sizeof job_storage);
    png_job *volatile job = &job_storage;
    nvlm_status volatile st = NVLM_OK;
    int volatile orientation = 0;

    job->png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &s, png_on_error, png_on_warning);
    if (job->png == NULL) {
        return nv_error(err, NVLM_ERR_OUT_OF_MEMORY, "cannot create a PNG decoder");
    }
    job->info = png_create_info_struct(job->png);
    if (job->info == NULL) {
        png_destroy_read_struct(&job->png, NULL, NULL);
        return nv_error(err, NVLM_ERR_OUT_OF_MEMORY, "cannot create a PNG decoder");
    }
    if (setjmp(s.jmp) != 0) {
        if (st == NVLM_OK) {
            st = nv_error(err, NVLM_ERR_FORMAT, "corrupt PNG: %s", s.msg);
        }
        goto done;
    }
    png_structp png = job->png;
    png_infop info = job->info;
    png_set_read_fn(png, &s, png_on_read);
    png_set_crc_action(png, PNG_CRC_DEFAULT, PNG_CRC_ERROR_QUIT);
    png_set_user_limits(png, 0x7fffffffu, 0x7fffffffu);
    png_set_chunk_cache_max(png, 1000);
    png_set_chunk_malloc_max(png, 16u << 20);
    png_set_keep_unknown_chunks(png, PNG_HANDLE_CHUNK_NEVER, png_ignored_chunks,
                                (int)(sizeof png_ignored_chunks / 5));
    png_read_info(png, info);

    png_uint_32 w = 0;
    png_uint_32 h = 0;
    int depth = 0;
    int ctype = 0;
    int interlace = 0;
    png_get_IHDR(png, info, &w, &h, &depth, &ctype, &interlace, NULL, NULL);
    nvlm_status dst = check_dims(err, "PNG", w, h, max_pixels);
    if (dst != NVLM_OK) {
        st = dst;
        goto done;
    }

    /* Palette: indices are expanded to 8 bits and looked up below (Pillow's P -> RGB), so an
     * index past the palette is caught instead of silently mapping to black. */
    png_colorp palette = NULL;
    int n_palette = 0;
    if (ctype == PNG_COLOR_TYPE_PALETTE) {
        if (png_get_PLTE(png, info, &palette, &n_palette) == 0 || n_palette <= 0) {
            st = nv_error(err, NVLM_ERR_FORMAT, "corrupt PNG: palette image without PLTE");
            goto done;
        }
    }
    bool gray16 = ctype == PNG_COLOR_TYPE_GRAY && depth == 16;
    if (depth < 8) {
        if (ctype == PNG_COLOR_TYPE_GRAY) {
            png_set_expand_gray_1_2_4_to_8(png); /* 1-bit -> 0/255, 2-bit x85, 4-bit x17 */
        } else {
            png_set_packing(png);
        }
    }
    if (depth == 16 && !gray16) {
        png_set_strip_16(png); /* high byte, as Pillow's ;16B raw modes */
    }
    (void)png_set_interlace_handling(png);
    png_read_update_info(png, info);
    size_t rowbytes = png_get_rowbytes(png, info);
    int channels = png_get_channels(png, info);
    size_t want_bytes = (size_t)w * (size_t)channels * (gray16 ? 2u : 1u);
    if (rowbytes != want_bytes) {
        st = nv_error(err, NVLM_ERR_INTERNAL, "PNG row size %zu, expected %zu", rowbytes,
                      want_bytes);
        goto done;
    }
    size_t raw_size;
    if (!nv_mul_size(rowbytes, h, &raw_size)) {
        st = nv_error(err, NVLM_ERR_LIMIT, "PNG image too large");
        goto done;
    }
    job->raw = nv_malloc(ctx, raw_size);
    job->rows = nv_alloc_array(ctx, h, sizeof(png_bytep));
    job->rgb = alloc_rgb(ctx, w, h);
    if (job->raw == NULL || job->rows == NULL || job->rgb == NULL) {
        st = nv_error(err, NVLM_ERR_OUT_OF_MEMORY, "out of memory decoding a %ux%u PNG",
                      (unsigned)w, (unsigned)h);
        goto done;
    }
    for (png_uint_32 y = 0; y < h; y++) {
        job->rows[y] = job->raw + (size_t)y * rowbytes;
    }
    png_read_image(png, job->rows);
    if (apply_exif) {
        png_uint_32 n_exif = 0;
        png_bytep exif = NULL;
        if (png_get_eXIf_1(png, info, &n_exif, &exif) != 0 && exif != NULL) {
            orientation = img_exif_orientation_tiff(exif, n_exif);
        }
    }

    size_t npx = (size_t)w * (size_t)h;
    const uint8_t *src = job->raw;
    uint8_t *d = job->rgb;
    switch (ctype) {
    case PNG_COLOR_TYPE_GRAY:
        for (size_t i = 0; i < npx; i++) {
            uint32_t v = src[i];
            if (gray16) {
                /* Pillow I;16 -> L clamps instead of scaling. */
                v = (uint32_t)src[2 * i] << 8 | src[2 * i + 1];
                v = v > 255 ? 255 : v;
            }
            d[3 * i] = d[3 * i + 1] = d[3 * i + 2] = (uint8_t)v;
        }
        break;
    case PNG_COLOR_TYPE_GRAY_ALPHA:
        for (size_t i = 0; i < npx; i++) {
            d[3 * i] = d[3 * i + 1] = d[3 * i + 2] = src[2 * i];
        }
        break;
    case PNG_COLOR_TYPE_PALETTE:
        for (size_t i = 0; i < npx; i++) {
            if (src[i] >= n_palette) {
                st = nv_error(err, NVLM_ERR_FORMAT,
                              "corrupt PNG: palette index %u out of range (%d entries)",
                              (unsigned)src[i], n_palette);
                goto done;
            }
            const png_color *c = &palette[src[i]];
            d[3 * i] = c->red;
            d[3 * i + 1] = c->green;
            d[3 * i + 2] = c->blue;
        }
        break;
    case PNG_COLOR_TYPE_RGB:
        memcpy(d, src, npx * 3);
        break;
    case PNG_COLOR_TYPE_RGB_ALPHA:
        for (size_t i = 0; i < npx; i++) {
            d[3 * i] = src[4 * i];
            d[3 * i + 1] = src[4 * i + 1];
            d[3 * i + 2] = src[4 * i + 2];
        }
        break;
    default:
        st = nv_error(err, NVLM_ERR_FORMAT, "corrupt PNG: color type %d", ctype);
        goto done;
    }
    out->px = job->rgb;
    out->w = (int32_t)w;
    out->h = (int32_t)h;
    job->rgb = NULL;
done:
    png_destroy_read_struct(&job->png, &job->info, NULL);
    nv_free(ctx, job->raw);
    nv_free(ctx, job->rows);
    nv_free(ctx, job->rgb);
    if (st == NVLM_OK && orientation > 1) {
        st = img_apply_orientation(ctx, err, out, orientation);
        if (st != NVLM_OK) {
            nv_free(ctx, out->px);
            out->px = NULL;
        }
    }
    return st;
}

/* ============================================================================================ */
/* JPEG                                                                                          */
/* ============================================================================================ */

typedef struct jpeg_err {
    struct jpeg_error_mgr pub;
    jmp_buf jmp;
    char msg[JMSG_LENGTH_MAX];
    bool truncated;             /* libjpeg hit the end of the data and inserted an EOI */
} jpeg_err;

static void jpeg_on_error(j_common_ptr cinfo)
{
    jpeg_err *e = (jpeg_err *)cinfo->err;
    (*cinfo->err->format_message)(cinfo, e->msg);
    longjmp(e->jmp, 1);
}

/* Warnings and trace messages: recorded, never printed. */
static void jpeg_on_message(j_common_ptr cinfo, int level)
{
    jpeg_err *e = (jpeg_err *)cinfo->err;
    if (level < 0) {
        if (cinfo->err->msg_code == JWRN_JPEG_EOF) {
            e->truncated = true;
        }
        cinfo->err->num_warnings++;
    }
}

static void jpeg_on_output(j_common_ptr cinfo)
{
    (void)cinfo;
}

typedef struct jpeg_job {
    struct jpeg_decompress_struct cinfo;
    bool created;
    uint8_t *line;   /* one decoded scanline */
    uint8_t *rgb;
    bool too_many_scans;
} jpeg_job;

/* Progress monitor: stops hostile progressive files with endless scans. */
static void jpeg_progress_check(j_common_ptr cinfo)
{
    j_decompress_ptr d = (j_decompress_ptr)cinfo;
    jpeg_job *job = d->client_data;
    if (d->input_scan_number > JPEG_MAX_SCANS) {
        job->too_many_scans = true;
        ERREXIT(cinfo, JERR_NOTIMPL); /* the message is replaced by ours */
    }
}

static nvlm_status decode_jpeg(nvlm_context *ctx, void *err, const uint8_t *data, size_t size,
                               uint64_t max_pixels, bool apply_exif, img_rgb *out)
{
    if (size > ULONG_MAX) {
        return nv_error(err, NVLM_ERR_LIMIT, "JPEG data too large");
    }
    jpeg_err e;
    memset(&e, 0, sizeof e);
    jpeg_job job_storage;
    memset(&job_storage, 0, sizeof job_storage);
    jpeg_job *volatile job = &job_storage;
    nvlm_status volatile st = NVLM_OK;
    struct jpeg_progress_mgr progress;
    memset(&progress, 0, sizeof progress);

    job->cinfo.err = jpeg_std_error(&e.pub);
    e.pub.error_exit = jpeg_on_error;
    e.pub.emit_message = jpeg_on_message;
    e.pub.output_message = jpeg_on_output;
    if (setjmp(e.jmp) != 0) {
        if (st == NVLM_OK) {
            if (job->too_many_scans) {
                st = nv_error(err, NVLM_ERR_LIMIT, "JPEG has more than %d scans",
                              JPEG_MAX_SCANS);
            } else {
                st = nv_error(err, NVLM_ERR_FORMAT, "corrupt JPEG: %s", e.msg);
            }
        }
        goto done;
    }
    j_decompress_ptr ci = &job->cinfo;
    jpeg_create_decompress(ci);
    job->created = true;
    progress.progress_monitor = jpeg_progress_check;
    ci->progress = &progress;
    ci->client_data = job;
    jpeg_mem_src(ci, data, (unsigned long)size);
    jpeg_read_header(ci, TRUE);
    nvlm_status dst = check_dims(err, "JPEG", ci->image_width, ci->image_height, max_pixels);
    if (dst != NVLM_OK) {
        st = dst;
        goto done;
    }
    /* Coefficient buffers of a progressive image take about 2 bytes per sample per component;
     * more than that for the allowed pixels means a hostile header. */
    uint64_t mem = (uint64_t)ci->image_width * ci->image_height * 2u * 4u + (64u << 20);
    ci->mem->max_memory_to_use = mem > (uint64_t)LONG_MAX ? LONG_MAX : (long)mem;

    int comps = ci->num_components;
    bool cmyk = ci->jpeg_color_space == JCS_CMYK || ci->jpeg_color_space == JCS_YCCK;
    if (cmyk) {
        ci->out_color_space = JCS_CMYK;
    } else if (ci->jpeg_color_space == JCS_GRAYSCALE) {
        ci->out_color_space = JCS_GRAYSCALE;
    } else if (comps == 3) {
        ci->out_color_space = JCS_RGB;
    } else {
        st = nv_error(err, NVLM_ERR_UNSUPPORTED, "JPEG with %d components (color space %d)",
                      comps, (int)ci->jpeg_color_space);
        goto done;
    }
    /* Pillow's settings are libjpeg's defaults: ISLOW IDCT, fancy upsampling, no scaling. */
    ci->dct_method = JDCT_ISLOW;
    ci->do_fancy_upsampling = TRUE;
    jpeg_start_decompress(ci);
    if (e.truncated) {
        st = nv_error(err, NVLM_ERR_FORMAT, "truncated JPEG data");
        goto done;
    }
    uint32_t w = ci->output_width;
    uint32_t h = ci->output_height;
    int oc = ci->output_components;
    job->line = nv_alloc_array(ctx, w, (size_t)oc);
    job->rgb = alloc_rgb(ctx, w, h);
    if (job->line == NULL || job->rgb == NULL) {
        st = nv_error(err, NVLM_ERR_OUT_OF_MEMORY, "out of memory decoding a %ux%u JPEG",
                      (unsigned)w, (unsigned)h);
        goto done;
    }
    while (ci->output_scanline < h) {
        uint8_t *d = job->rgb + (size_t)ci->output_scanline * w * 3;
        JSAMPROW row = (oc == 3) ? d : job->line;
        if (jpeg_read_scanlines(ci, &row, 1) != 1) {
            st = nv_error(err, NVLM_ERR_FORMAT, "truncated JPEG data");
            goto done;
        }
        if (oc == 1) {
            for (uint32_t x = 0; x < w; x++) {
                d[3 * x] = d[3 * x + 1] = d[3 * x + 2] = row[x];
            }
        } else if (oc == 4) {
            /* Pillow reads 4-channel JPEGs as "CMYK;I" (Adobe inverted), then CMYK -> RGB. */
            for (uint32_t x = 0; x < w; x++) {
                uint32_t nk = row[4 * x + 3]; /* 255 - (255 - K) */
                for (int c = 0; c < 3; c++) {
                    uint32_t cv = 255u - row[4 * x + c];
                    uint32_t t = cv * nk + 128u;
                    int32_t v = (int32_t)nk - (int32_t)((t + (t >> 8)) >> 8);
                    d[3 * x + c] = (uint8_t)(v < 0 ? 0 : v);
                }
            }
        }
        if (e.truncated) {
            st = nv_error(err, NVLM_ERR_FORMAT, "truncated JPEG data");
            goto done;
        }
    }
    out->px = job->rgb;
    out->w = (int32_t)w;
    out->h = (int32_t)h;
    job->rgb = NULL;
done:
    if (job->created) {
        jpeg_destroy_decompress(&job->cinfo);
    }
    nv_free(ctx, job->line);
    nv_free(ctx, job->rgb);
    if (st == NVLM_OK && apply_exif) {
        int o = jpeg_exif_orientation(data, size);
        st = img_apply_orientation(ctx, err, out, o);
        if (st != NVLM_OK) {
            nv_free(ctx, out->px);
            out->px = NULL;
        }
    }
    return st;
}


/* ============================================================================================ */

nvlm_status img_decode(nvlm_context *ctx, void *err, const uint8_t *data, size_t size,
                       uint64_t max_pixels, bool apply_exif, img_rgb *out)
{
    memset(out, 0, sizeof *out);
    if (size >= 8 && memcmp(data, "\x89PNG\r\n\x1a\n", 8) == 0) {
        return decode_png(ctx, err, data, size, max_pixels, apply_exif, out);
    }
    if (size >= 3 && data[0] == 0xFF && data[1] == 0xD8 && data[2] == 0xFF) {
        return decode_jpeg(ctx, err, data, size, max_pixels, apply_exif, out);
    }
    if (size == 0) {
        return nv_error(err, NVLM_ERR_FORMAT, "unknown image format (empty data)");
    }
    return nv_error(err, NVLM_ERR_FORMAT, "unknown image format (not PNG or JPEG)");
}
