/* stub_session.c - placeholders until the session module lands; delete this file then. */
#include "internal.h"

void nvlm_session_params_init(nvlm_session_params *p, size_t size)
{
    (void)p;
    (void)size;
}

nvlm_status nvlm_session_create(nvlm_model *model, const nvlm_session_params *params, nvlm_session **out)
{
    (void)model;
    (void)params;
    (void)out;
    return NVLM_ERR_UNSUPPORTED;
}

void nvlm_session_free(nvlm_session *s)
{
    (void)s;
}

nvlm_status nvlm_session_reset(nvlm_session *s)
{
    (void)s;
    return NVLM_ERR_UNSUPPORTED;
}

nvlm_status nvlm_session_add_turn(nvlm_session *s, nvlm_role role, const char *content, nvlm_image *const *images, size_t n_images)
{
    (void)s;
    (void)role;
    (void)content;
    (void)images;
    (void)n_images;
    return NVLM_ERR_UNSUPPORTED;
}

nvlm_status nvlm_session_feed(nvlm_session *s, const int32_t *ids, size_t n_ids, nvlm_image *const *images, size_t n_images)
{
    (void)s;
    (void)ids;
    (void)n_ids;
    (void)images;
    (void)n_images;
    return NVLM_ERR_UNSUPPORTED;
}

const float * nvlm_session_logits(nvlm_session *s, size_t *n_vocab)
{
    (void)s;
    (void)n_vocab;
    return NULL;
}

const int32_t * nvlm_session_tokens(const nvlm_session *s, size_t *n_tokens)
{
    (void)s;
    (void)n_tokens;
    return NULL;
}

void nvlm_sampler_params_init(nvlm_sampler_params *p, size_t size)
{
    (void)p;
    (void)size;
}

nvlm_status nvlm_session_sample(nvlm_session *s, const nvlm_sampler_params *params, int32_t *token)
{
    (void)s;
    (void)params;
    (void)token;
    return NVLM_ERR_UNSUPPORTED;
}

nvlm_status nvlm_session_generate(nvlm_session *s, const nvlm_sampler_params *params, nvlm_token_fn on_token, void *user, nvlm_generate_result *result)
{
    (void)s;
    (void)params;
    (void)on_token;
    (void)user;
    (void)result;
    return NVLM_ERR_UNSUPPORTED;
}

#include "model.h"
nvlm_status nv_engine_init(nvlm_model *m)
{
    (void)m;
    return NVLM_OK;
}

void nv_engine_free(nvlm_model *m)
{
    (void)m;
}
