/* stub_model.c - placeholders until the model module lands; delete this file then. */
#include "internal.h"

void nvlm_model_params_init(nvlm_model_params *p, size_t size)
{
    (void)p;
    (void)size;
}

nvlm_status nvlm_model_load(nvlm_context *ctx, const char *dir, const nvlm_model_params *params, nvlm_model **out)
{
    (void)ctx;
    (void)dir;
    (void)params;
    (void)out;
    return NVLM_ERR_UNSUPPORTED;
}

void nvlm_model_free(nvlm_model *model)
{
    (void)model;
}

nvlm_status nvlm_model_get_info(const nvlm_model *model, nvlm_model_info *info)
{
    (void)model;
    (void)info;
    return NVLM_ERR_UNSUPPORTED;
}

nvlm_tokenizer * nvlm_model_tokenizer(const nvlm_model *model)
{
    (void)model;
    return NULL;
}

nvlm_status nvlm_model_image_params(const nvlm_model *model, nvlm_image_params *p)
{
    (void)model;
    (void)p;
    return NVLM_ERR_UNSUPPORTED;
}
