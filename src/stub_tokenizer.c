/* stub_tokenizer.c - placeholders until the tokenizer module lands; delete this file then. */
#include "internal.h"

nvlm_status nvlm_tokenizer_load(nvlm_context *ctx, const char *path, nvlm_tokenizer **out)
{
    (void)ctx;
    (void)path;
    (void)out;
    return NVLM_ERR_UNSUPPORTED;
}

void nvlm_tokenizer_free(nvlm_tokenizer *tok)
{
    (void)tok;
}

int32_t nvlm_tokenizer_vocab_size(const nvlm_tokenizer *tok)
{
    (void)tok;
    return 0;
}

int32_t nvlm_tokenizer_token_id(const nvlm_tokenizer *tok, const char *text)
{
    (void)tok;
    (void)text;
    return 0;
}

nvlm_status nvlm_tokenizer_special_tokens(const nvlm_tokenizer *tok, nvlm_special_tokens *out)
{
    (void)tok;
    (void)out;
    return NVLM_ERR_UNSUPPORTED;
}

nvlm_status nvlm_tokenize(const nvlm_tokenizer *tok, const char *text, size_t len, uint32_t flags, int32_t *ids, size_t cap, size_t *n_ids)
{
    (void)tok;
    (void)text;
    (void)len;
    (void)flags;
    (void)ids;
    (void)cap;
    (void)n_ids;
    return NVLM_ERR_UNSUPPORTED;
}

nvlm_status nvlm_detokenize(const nvlm_tokenizer *tok, const int32_t *ids, size_t n_ids, uint32_t flags, char *buf, size_t cap, size_t *len)
{
    (void)tok;
    (void)ids;
    (void)n_ids;
    (void)flags;
    (void)buf;
    (void)cap;
    (void)len;
    return NVLM_ERR_UNSUPPORTED;
}

nvlm_status nvlm_token_to_piece(const nvlm_tokenizer *tok, int32_t id, char *buf, size_t cap, size_t *len)
{
    (void)tok;
    (void)id;
    (void)buf;
    (void)cap;
    (void)len;
    return NVLM_ERR_UNSUPPORTED;
}

nvlm_status nvlm_stream_decoder_create(const nvlm_tokenizer *tok, uint32_t flags, nvlm_stream_decoder **out)
{
    (void)tok;
    (void)flags;
    (void)out;
    return NVLM_ERR_UNSUPPORTED;
}

nvlm_status nvlm_stream_decoder_push(nvlm_stream_decoder *sd, int32_t id, char *buf, size_t cap, size_t *len)
{
    (void)sd;
    (void)id;
    (void)buf;
    (void)cap;
    (void)len;
    return NVLM_ERR_UNSUPPORTED;
}

nvlm_status nvlm_stream_decoder_flush(nvlm_stream_decoder *sd, char *buf, size_t cap, size_t *len)
{
    (void)sd;
    (void)buf;
    (void)cap;
    (void)len;
    return NVLM_ERR_UNSUPPORTED;
}

void nvlm_stream_decoder_free(nvlm_stream_decoder *sd)
{
    (void)sd;
}

void nvlm_prompt_params_init(nvlm_prompt_params *p, size_t size)
{
    (void)p;
    (void)size;
}

nvlm_status nvlm_prompt_format(const nvlm_tokenizer *tok, const nvlm_chat_message *msgs, size_t n_msgs, const nvlm_prompt_params *params, char *buf, size_t cap, size_t *len)
{
    (void)tok;
    (void)msgs;
    (void)n_msgs;
    (void)params;
    (void)buf;
    (void)cap;
    (void)len;
    return NVLM_ERR_UNSUPPORTED;
}

nvlm_status nvlm_prompt_tokenize(const nvlm_tokenizer *tok, const nvlm_chat_message *msgs, size_t n_msgs, const nvlm_prompt_params *params, int32_t *ids, size_t cap, size_t *n_ids, nvlm_image_span *spans, size_t span_cap, size_t *n_spans)
{
    (void)tok;
    (void)msgs;
    (void)n_msgs;
    (void)params;
    (void)ids;
    (void)cap;
    (void)n_ids;
    (void)spans;
    (void)span_cap;
    (void)n_spans;
    return NVLM_ERR_UNSUPPORTED;
}
