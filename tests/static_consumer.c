/*
 * static_consumer.c - an application that links libnvlm.a and defines functions and data with
 * the names of the library's internal functions (img_resize, tok_encode, nv_pool_create, ...),
 * each with its own signature and meaning. The library's own internals must neither replace these
 * nor be replaced by them (no clash at link time either): libnvlm.a exports only nvlm_* symbols.
 * Built and run by tests/install_check.sh against the installed tree (static and shared link),
 * whose outputs must agree.
 * Usage: static_consumer MODEL_DIR IMAGE   (prints the image geometry, a hash of its tiles and
 * the first greedy tokens of a short chat; exit status 0 when every own function kept its value)
 */
#include <nvlm/nvlm.h>

#include <stdint.h>
#include <stdio.h>
#include <string.h>

/* The application's own symbols, named like the library's internal ones. */
int img_resize(int x);
int img_resize_ex(int x);
int img_decode;
int tok_encode(void);
int tok_load_json(const char *s);
void *nv_pool_create(void);
int nv_pool_run(void);
int dec_forward(int a, int b);
double smp_sample(double x);
int vit_forward(void);
int proj_forward(void);
int mm_run(int x);
int nv_malloc(int x);
int nv_error(void);
int nv_st_open(void);
int cpu_matmul(int a, int b);
int eng_load(void);

static int marker;

int img_resize(int x) { return x * 7 + 1; }
int img_resize_ex(int x) { return x * 11; }
int img_decode = 17;
int tok_encode(void) { return 4242; }
int tok_load_json(const char *s) { return (int)strlen(s); }
void *nv_pool_create(void) { return &marker; }
int nv_pool_run(void) { return -3; }
int dec_forward(int a, int b) { return a - b; }
double smp_sample(double x) { return x * 0.5; }
int vit_forward(void) { return 640; }
int proj_forward(void) { return 320; }
int mm_run(int x) { return x + 100; }
int nv_malloc(int x) { return -x; }
int nv_error(void) { return 12345; }
int nv_st_open(void) { return 99; }
int cpu_matmul(int a, int b) { return a * b; }
int eng_load(void) { return 5; }

static int own_functions_ok(void)
{
    return img_resize(3) == 22 && img_resize_ex(2) == 22 && img_decode == 17 &&
           tok_encode() == 4242 && tok_load_json("abc") == 3 && nv_pool_create() == &marker &&
           nv_pool_run() == -3 && dec_forward(9, 4) == 5 && smp_sample(3.0) == 1.5 &&
           vit_forward() == 640 && proj_forward() == 320 && mm_run(1) == 101 &&
           nv_malloc(8) == -8 && nv_error() == 12345 && nv_st_open() == 99 &&
           cpu_matmul(6, 7) == 42 && eng_load() == 5;
}

static int on_token(void *user, int32_t token, const char *text, size_t len)
{
    (void)user;
    (void)text;
    (void)len;
    printf(" %d", (int)token);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: %s MODEL_DIR IMAGE\n", argv[0]);
        return 2;
    }
    if (!own_functions_ok()) {
        fprintf(stderr, "an application function was replaced by the library's\n");
        return 1;
    }
    nvlm_context_params cp;
    nvlm_context_default_params(&cp);
    cp.backend = NVLM_BACKEND_CPU;
    cp.n_threads = 2;
    nvlm_context *ctx = NULL;
    if (nvlm_context_create(&cp, &ctx) != NVLM_OK) {
        fprintf(stderr, "context_create failed\n");
        return 1;
    }
    nvlm_image *img = NULL;
    nvlm_status st = nvlm_image_load_file(ctx, argv[2], NULL, &img);
    if (st != NVLM_OK) {
        fprintf(stderr, "image: %s\n", nvlm_last_error(ctx));
        return 1;
    }
    int32_t cols = 0;
    int32_t rows = 0;
    nvlm_image_grid(img, &cols, &rows);
    int32_t n_tiles = nvlm_image_tile_count(img);
    /* FNV-1a over every tile's 448x448 RGB bytes. */
    uint64_t h = 1469598103934665603ull;
    for (int32_t t = 0; t < n_tiles; t++) {
        const uint8_t *rgb = nvlm_image_tile_rgb(img, t);
        for (size_t i = 0; rgb != NULL && i < (size_t)448 * 448 * 3; i++) {
            h = (h ^ rgb[i]) * 1099511628211ull;
        }
    }
    printf("image %dx%d grid %dx%d tiles %d hash %016llx\n", (int)nvlm_image_width(img),
           (int)nvlm_image_height(img), (int)cols, (int)rows, (int)n_tiles,
           (unsigned long long)h);

    nvlm_model *model = NULL;
    st = nvlm_model_load(ctx, argv[1], NULL, &model);
    if (st != NVLM_OK) {
        fprintf(stderr, "model: %s\n", nvlm_last_error(ctx));
        return 1;
    }
    nvlm_session *s = NULL;
    st = nvlm_session_create(model, NULL, &s);
    if (st == NVLM_OK) {
        st = nvlm_session_add_turn(s, NVLM_ROLE_USER, "Describe the image.", &img, 1);
    }
    if (st == NVLM_OK) {
        nvlm_sampler_params sp;
        nvlm_sampler_default_params(&sp);
        sp.max_new_tokens = 6;
        static const int32_t no_stop = 0;
        sp.stop_ids = &no_stop;
        sp.n_stop_ids = 0;
        printf("tokens");
        st = nvlm_session_generate(s, &sp, on_token, NULL, NULL);
        printf("\n");
    }
    if (st != NVLM_OK) {
        fprintf(stderr, "session: %s\n", s != NULL ? nvlm_last_error(s) : nvlm_last_error(model));
    }
    nvlm_session_free(s);
    nvlm_model_free(model);
    nvlm_image_free(img);
    nvlm_context_free(ctx);
    if (st != NVLM_OK || !own_functions_ok()) {
        return 1;
    }
    return 0;
}
