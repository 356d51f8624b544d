/*
 * caption.c - caption one image with NVLM-D through the installed library (public API only).
 *
 *   cc -std=c11 caption.c $(pkg-config --cflags --libs nvlm) -o caption
 *   ./caption MODEL_DIR IMAGE [QUESTION]
 *
 * Loads the model, tiles the image, asks the question (default "Describe the image.") in one
 * session and streams the greedy answer to stdout.
 */
#include <nvlm/nvlm.h>

#include <stdio.h>

static int on_token(void *user, int32_t token, const char *text, size_t len)
{
    (void)user;
    (void)token;
    fwrite(text, 1, len, stdout);
    fflush(stdout);
    return 0; /* non-zero would stop the generation */
}

static int fail(const char *what, nvlm_status st, const void *handle)
{
    fprintf(stderr, "caption: %s: %s (%s)\n", what, nvlm_status_str(st), nvlm_last_error(handle));
    return 1;
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: %s MODEL_DIR IMAGE [QUESTION]\n", argv[0]);
        return 2;
    }
    const char *question = argc > 3 ? argv[3] : "Describe the image.";
    int rc = 1;
    nvlm_context *ctx = NULL;
    nvlm_model *model = NULL;
    nvlm_image *img = NULL;
    nvlm_session *s = NULL;
    nvlm_status st = nvlm_context_create(NULL, &ctx);
    if (st != NVLM_OK) {
        fprintf(stderr, "caption: %s\n", nvlm_status_str(st));
        return 1;
    }
    st = nvlm_model_load(ctx, argv[1], NULL, &model);
    if (st != NVLM_OK) {
        rc = fail("load model", st, ctx);
        goto done;
    }
    nvlm_image_params ip;
    nvlm_image_default_params(&ip);
    nvlm_model_image_params(model, &ip); /* tiling settings from the model's config */
    st = nvlm_image_load_file(ctx, argv[2], &ip, &img);
    if (st != NVLM_OK) {
        rc = fail("load image", st, ctx);
        goto done;
    }
    st = nvlm_session_create(model, NULL, &s);
    if (st != NVLM_OK) {
        rc = fail("session", st, model);
        goto done;
    }
    st = nvlm_session_add_turn(s, NVLM_ROLE_USER, question, &img, 1);
    if (st != NVLM_OK) {
        rc = fail("prompt", st, s);
        goto done;
    }
    nvlm_sampler_params sp;
    nvlm_sampler_default_params(&sp); /* greedy, stop at <|im_end|> */
    nvlm_generate_result res;
    res.struct_size = sizeof res;
    st = nvlm_session_generate(s, &sp, on_token, NULL, &res);
    if (st != NVLM_OK) {
        rc = fail("generate", st, s);
        goto done;
    }
    printf("\n");
    fprintf(stderr, "(%d tokens in %.0f ms)\n", res.n_tokens, res.decode_ms);
    rc = 0;
done:
    nvlm_session_free(s);
    nvlm_image_free(img);
    nvlm_model_free(model);
    nvlm_context_free(ctx);
    return rc;
}
