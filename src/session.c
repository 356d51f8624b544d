/*
 * session.c - the public session API (nvlm.h): one conversation over a shared model. A session
 * owns its backend exec (thread pool), its KV cache, an activation arena, the token list, the
 * last logits and a seeded RNG. Turns are rendered with the tokenizer's chatml prompt builder,
 * images are encoded (all tiles one batch) and spliced, and only new tokens are prefilled.
 * Generation samples, streams UTF-8-safe text through a callback and feeds each token back.
 */
#include "engine.h"
#include "image.h"
#include "memory_plan.h"
#include "tokenizer.h"

#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

struct nvlm_session {
    nv_handle h;
    nvlm_model *model;
    nv_engine *eng;
    int64_t n_ctx;
    nv_dtype kv_type;
    uint64_t seed;
    char *system_message;       /* owned copy, NULL = template default */
    int32_t no_system_message;
    int32_t parse_special;      /* added tokens in turn content are matched (trusted text) */
    nv_exec *ex;
    nv_arena arena;
    int max_batch;              /* tokens per decoder pass (DEC_MAX_BATCH; tests set less) */
    dec_kv kv;
    int32_t *tokens;            /* n_tokens of cap_tokens */
    size_t n_tokens;
    size_t cap_tokens;
    float *logits;              /* vocab */
    bool has_logits;
    float *logits_dev;          /* vocab, device: when the backend samples on the device */
    bool logits_stale;          /* logits_dev is newer than logits (downloaded when asked) */
    bool reply_open;            /* the last generated reply did not end in <|im_end|> */
    bool prompt_open;           /* the tokens end with the generation prompt (assistant header) */
    smp_rng rng;
    smp_work work;
    nvlm_stream_decoder *sd;    /* NULL without a tokenizer */
    char *piece;                /* streamed text of one token */
    size_t piece_cap;
    char *gen;                  /* text of the current generate call (stop strings) */
    size_t gen_len;
    size_t gen_cap;
    int32_t im_end;
    int32_t im_start;
    atomic_int busy;            /* 1 while a public call that changes the session runs */
    atomic_int free_pending;    /* nvlm_session_free came while busy: the running call frees */
    int thread_saved;           /* the backend's thread_enter value of the running call */
};

static bool is_session(const nvlm_session *s)
{
    return s != NULL && s->h.magic == NV_MAGIC_SESSION;
}

void nvlm_session_params_init(nvlm_session_params *p, size_t size)
{
    if (p == NULL || size < sizeof(uint32_t)) {
        return;
    }
    nvlm_session_params d;
    memset(&d, 0, sizeof d);
    d.struct_size = (uint32_t)NV_MIN(size, sizeof d);
    d.n_ctx = 0;
    d.kv_type = NVLM_KV_DEFAULT;
    d.seed = 0x5eed;
    d.system_message = NULL;
    d.no_system_message = 0;
    d.parse_special_in_content = 0;
    memcpy(p, &d, NV_MIN(size, sizeof d));
    p->struct_size = (uint32_t)size;
}

/* The busy flag: every public call that changes the session holds it, so a second thread, or
 * the session's own token callback, gets NVLM_ERR_BUSY instead of corrupting the session. The
 * refused call touches nothing but the flag: the error text belongs to the call in progress. */
static int thread_enter(nv_backend *be)
{
    return be != NULL && be->ops->thread_enter != NULL ? be->ops->thread_enter(be) : 0;
}

static bool enter(nvlm_session *s)
{
    if (atomic_exchange(&s->busy, 1) != 0) {
        return false;
    }
    s->thread_saved = thread_enter(s->ex != NULL ? s->ex->be : NULL);
    return true;
}

/* Gives the calling thread back to the application as the call found it (the backend's
 * thread_leave: CUDA's current device), at return and around the token callback. */
static void thread_leave(nv_backend *be, int saved)
{
    if (be != NULL && be->ops->thread_leave != NULL) {
        be->ops->thread_leave(be, saved);
    }
}

static void destroy(nvlm_session *s)
{
    nvlm_context *ctx = s->h.ctx;
    if (s->ex != NULL) {
        nv_arena_release(&s->arena);
        dec_kv_free(s->ex, &s->kv);
        if (s->logits_dev != NULL) {
            s->ex->be->ops->free(s->ex, s->logits_dev);
        }
        s->ex->be->ops->exec_free(s->ex);
    }
    nvlm_stream_decoder_free(s->sd);
    smp_work_free(ctx, &s->work);
    nv_free(ctx, s->tokens);
    nv_free(ctx, s->logits);
    nv_free(ctx, s->piece);
    nv_free(ctx, s->gen);
    nv_free(ctx, s->system_message);
    s->h.magic = NV_MAGIC_DEAD;
    nv_free(ctx, s);
}

/* Releases the flag and returns st. A free asked for while the session was busy (from the
 * token callback or another thread) happens here; free_pending is set before the free's own
 * attempt to take the flag, so exactly one of the two sides destroys the session. */
static nvlm_status leave(nvlm_session *s, nvlm_status st)
{
    nv_backend *be = s->ex != NULL ? s->ex->be : NULL;
    int saved = s->thread_saved;
    atomic_store(&s->busy, 0);
    if (atomic_load(&s->free_pending) && enter(s)) {
        destroy(s);
    }
    thread_leave(be, saved);
    return st;
}

void nvlm_session_free(nvlm_session *s)
{
    if (!is_session(s)) {
        return;
    }
    atomic_store(&s->free_pending, 1);
    if (enter(s)) {
        nv_backend *be = s->ex != NULL ? s->ex->be : NULL;
        int saved = s->thread_saved;
        destroy(s);
        thread_leave(be, saved);
    }
}

nvlm_status nvlm_session_create(nvlm_model *model, const nvlm_session_params *params,
                                nvlm_session **out)
{
    if (out != NULL) {
        *out = NULL;
    }
    if (model == NULL || model->h.magic != NV_MAGIC_MODEL) {
        return NVLM_ERR_INVALID_ARGUMENT;
    }
    nv_clear(model);
    if (out == NULL) {
        return nv_error(model, NVLM_ERR_INVALID_ARGUMENT, "out is NULL");
    }
    if (model->mode != NVLM_LOAD_FULL || model->engine == NULL) {
        return nv_error(model, NVLM_ERR_INVALID_ARGUMENT,
                        "the model was loaded without weights (config only)");
    }
    nvlm_session_params p;
    nvlm_session_default_params(&p);
    if (!nv_params_copy(&p, sizeof p, params, offsetof(nvlm_session_params, kv_type))) {
        return nv_error(model, NVLM_ERR_INVALID_ARGUMENT, "bad session params struct_size");
    }
    nv_engine *eng = model->engine;
    int64_t max_pos = eng->dec.max_pos;
    if (p.n_ctx < 0 || p.n_ctx > max_pos || p.kv_type < NVLM_KV_DEFAULT ||
        p.kv_type > NVLM_KV_BF16) {
        return nv_error(model, NVLM_ERR_INVALID_ARGUMENT,
                        "bad session params (n_ctx %d: 0..%lld; kv_type %d)", p.n_ctx,
                        (long long)max_pos, (int)p.kv_type);
    }
    /* A device backend: the session's KV cache for its whole context, its workspace and
     * activations must fit the devices now (memory_plan.h), not fail when the context fills. */
    nv_dtype kv_fit = p.kv_type == NVLM_KV_BF16 ? NV_BF16
                      : p.kv_type == NVLM_KV_F32 ? NV_F32
                                                 : eng->be->kv_default;
    NVLM_TRY(nv_mem_fit_session(model, p.n_ctx > 0 ? p.n_ctx : max_pos, kv_fit, model));
    nvlm_context *ctx = model->h.ctx;
    nvlm_session *s = nv_calloc(ctx, 1, sizeof *s);
    if (s == NULL) {
        return nv_error(model, NVLM_ERR_OUT_OF_MEMORY, "out of memory for a session");
    }
    nv_handle_init(&s->h, NV_MAGIC_SESSION, ctx);
    atomic_init(&s->busy, 0);
    atomic_init(&s->free_pending, 0);
    s->model = model;
    s->eng = eng;
    s->n_ctx = p.n_ctx > 0 ? p.n_ctx : max_pos;
    /* NVLM_KV_DEFAULT: the backend's choice (f32 on the CPU, bf16 on a device) */
    s->kv_type = p.kv_type == NVLM_KV_BF16   ? NV_BF16
                 : p.kv_type == NVLM_KV_F32 ? NV_F32
                                            : eng->be->kv_default;
    s->seed = p.seed;
    s->max_batch = DEC_MAX_BATCH;
    s->no_system_message = p.no_system_message;
    s->parse_special = p.parse_special_in_content != 0;
    s->im_end = model->cfg.llm.eos_token_id;
    s->im_start = -1;
    nvlm_status st = NVLM_OK;
    if (p.system_message != NULL) {
        s->system_message = nv_strdup(ctx, p.system_message);
        st = s->system_message == NULL ? NVLM_ERR_OUT_OF_MEMORY : NVLM_OK;
    }
    /* the device allocations below select the model's device: the caller's comes back */
    int saved = thread_enter(eng->be);
    if (st == NVLM_OK) {
        st = eng->be->ops->exec_create(eng->be, ctx->n_threads, s, &s->ex);
    }
    if (st == NVLM_OK) {
        s->arena.ex = s->ex;
        st = dec_kv_init(s->ex, &eng->dec, &s->kv, s->kv_type, s->n_ctx);
    }
    if (st == NVLM_OK) {
        s->logits = nv_alloc_array(ctx, (size_t)eng->dec.vocab, sizeof(float));
        st = s->logits == NULL ? NVLM_ERR_OUT_OF_MEMORY : NVLM_OK;
    }
    if (st == NVLM_OK) {
        st = smp_work_init(ctx, &s->work, eng->dec.vocab);
    }
    if (st == NVLM_OK && eng->be->ops->sample != NULL) {
        /* the logits stay on the device; only the sampled token comes back */
        void *p = NULL;
        st = eng->be->ops->alloc(s->ex, (size_t)eng->dec.vocab * sizeof(float), &p);
        s->logits_dev = p;
    }
    if (st == NVLM_OK && model->tok != NULL) {
        /* Rows the tokenizer has no token for (the checkpoint's padding rows past its ids) are
         * never chosen: they would have no text and their embeddings are untrained. */
        for (int i = 0; i < eng->dec.vocab; i++) {
            size_t len = 0;
            s->work.usable[i] = tok_piece(model->tok, i, &len) != NULL;
        }
    }
    if (st == NVLM_OK && model->tok != NULL) {
        nvlm_special_tokens sp;
        sp.struct_size = sizeof sp;
        if (nvlm_tokenizer_special_tokens(model->tok, &sp) == NVLM_OK) {
            if (sp.im_end >= 0) {
                s->im_end = sp.im_end;
            }
            s->im_start = sp.im_start;
        }
        st = nvlm_stream_decoder_create(model->tok, NVLM_DETOKENIZE_SKIP_SPECIAL, &s->sd);
    }
    if (st != NVLM_OK) {
        char msg[NV_ERR_MAX];
        snprintf(msg, sizeof msg, "%s", s->h.err);
        nvlm_session_free(s);
        thread_leave(eng->be, saved);
        return nv_error(model, st, "cannot create a session%s%s", msg[0] ? ": " : "", msg);
    }
    thread_leave(eng->be, saved);
    smp_seed(&s->rng, s->seed);
    *out = s;
    return NVLM_OK;
}

static nvlm_status session_reset(nvlm_session *s)
{
    if (!is_session(s)) {
        return NVLM_ERR_INVALID_ARGUMENT;
    }
    nv_clear(s);
    s->kv.n = 0;
    s->n_tokens = 0;
    s->has_logits = false;
    s->logits_stale = false;
    s->reply_open = false;
    s->prompt_open = false;
    smp_seed(&s->rng, s->seed);
    if (s->sd != NULL) {
        size_t len;
        nvlm_stream_decoder_flush(s->sd, NULL, 0, &len);
    }
    return NVLM_OK;
}

/* ---- prefill ---------------------------------------------------------------------------- */

static nvlm_status grow_tokens(nvlm_session *s, size_t need)
{
    if (need <= s->cap_tokens) {
        return NVLM_OK;
    }
    size_t cap = NV_MAX(need, NV_MAX((size_t)256, s->cap_tokens * 2));
    int32_t *t = nv_realloc(s->h.ctx, s->tokens, cap * sizeof(int32_t));
    if (t == NULL) {
        return nv_error(s, NVLM_ERR_OUT_OF_MEMORY, "out of memory for the token list");
    }
    s->tokens = t;
    s->cap_tokens = cap;
    return NVLM_OK;
}

nvlm_status nv_session_set_max_batch(nvlm_session *s, int n)
{
    if (!is_session(s) || n < 1 || n > DEC_MAX_BATCH) {
        return NVLM_ERR_INVALID_ARGUMENT;
    }
    s->max_batch = n;
    return NVLM_OK;
}

/* Encodes the images (all tiles as one batch) into `rows` (device memory outside the arena's
 * free space). The pixels and the vision and projector scratch are taken from the arena and
 * given back before returning. */
static nvlm_status encode_images(nvlm_session *s, nvlm_image *const *images, size_t n_images,
                                 int total_tiles, float *rows)
{
    const nv_engine *e = s->eng;
    const nv_backend_ops *op = s->ex->be->ops;
    int S = e->vit.image;
    size_t tile_floats = (size_t)3 * S * S;
    size_t n_pix;
    if (!nv_mul_size(tile_floats, (size_t)total_tiles, &n_pix)) {
        return nv_error(s, NVLM_ERR_LIMIT, "too many tiles");
    }
    size_t mark = nv_arena_mark(&s->arena);
    float *pix = nv_arena_floats(&s->arena, n_pix);
    if (pix == NULL) {
        return nv_error(s, NVLM_ERR_INTERNAL, "image arena too small");
    }
    float *host = nv_alloc_array(s->h.ctx, tile_floats, sizeof(float));
    if (host == NULL) {
        return nv_error(s, NVLM_ERR_OUT_OF_MEMORY, "out of memory for image tiles");
    }
    size_t t = 0;
    nvlm_status st = NVLM_OK;
    for (size_t i = 0; i < n_images && st == NVLM_OK; i++) {
        int32_t n;
        img_tiles(images[i], &n, NULL);
        for (int32_t k = 0; k < n && st == NVLM_OK; k++, t++) {
            img_normalize(images[i], k, 1, host);
            st = op->upload(s->ex, pix + t * tile_floats, host, tile_floats * sizeof(float));
        }
    }
    nv_free(s->h.ctx, host);
    float *vit = NULL;
    if (st == NVLM_OK) {
        st = vit_forward(s->ex, &s->arena, &e->vit, pix, total_tiles, &vit, NULL);
    }
    if (st == NVLM_OK) {
        st = proj_forward(s->ex, &s->arena, &e->proj, &e->vit, vit, total_tiles, rows, NULL);
    }
    nv_arena_rewind(&s->arena, mark);
    return st;
}

/* Runs ids (with images over their <|vision_pad|> runs) through the decoder on top of the
 * cache. On failure the cache and token list are as before. */
static nvlm_status feed(nvlm_session *s, const int32_t *ids, size_t n, nvlm_image *const *images,
                        size_t n_images, bool generated)
{
    const nv_engine *e = s->eng;
    if (n == 0) {
        return nv_error(s, NVLM_ERR_INVALID_ARGUMENT, "no tokens to feed");
    }
    if (n_images > 0 && images == NULL) {
        return nv_error(s, NVLM_ERR_INVALID_ARGUMENT, "images is NULL");
    }
    size_t n_pad = 0;
    for (size_t i = 0; i < n; i++) {
        if (ids[i] < 0 || ids[i] >= e->dec.vocab) {
            return nv_error(s, NVLM_ERR_INVALID_ARGUMENT, "token id %d out of range [0, %d)",
                            ids[i], e->dec.vocab);
        }
        /* a generated <|vision_pad|> is an ordinary token: its embedding row is used */
        n_pad += !generated && e->image_token_id >= 0 && ids[i] == e->image_token_id;
    }
    int64_t total_tiles = 0;
    for (size_t i = 0; i < n_images; i++) {
        if (images[i] == NULL || images[i]->h.magic != NV_MAGIC_IMAGE) {
            return nv_error(s, NVLM_ERR_INVALID_ARGUMENT, "image %zu is not an image", i);
        }
        int32_t nt;
        int32_t ts;
        img_tiles(images[i], &nt, &ts);
        if (ts != e->vit.image) {
            return nv_error(s, NVLM_ERR_INVALID_ARGUMENT,
                            "image %zu has %d-pixel tiles; the model needs %d", i, ts,
                            e->vit.image);
        }
        total_tiles += nt;
    }
    int per_tile = e->vit.n_patches * e->vit.D / e->proj.in;
    if ((int64_t)n_pad != total_tiles * per_tile) {
        return nv_error(s, NVLM_ERR_INVALID_ARGUMENT,
                        "%zu <|vision_pad|> tokens but the images give %lld tiles x %d", n_pad,
                        (long long)total_tiles, per_tile);
    }
    if (total_tiles > 4096) {
        return nv_error(s, NVLM_ERR_LIMIT, "too many tiles (%lld)", (long long)total_tiles);
    }
    if ((int64_t)(s->n_tokens + n) > s->n_ctx) {
        return nv_error(s, NVLM_ERR_CONTEXT_FULL,
                        "context full: %zu tokens in the session + %zu new > n_ctx %lld",
                        s->n_tokens, n, (long long)s->n_ctx);
    }
    NVLM_TRY(grow_tokens(s, s->n_tokens + n));
    NVLM_TRY(dec_kv_reserve(s->ex, &s->kv, (int64_t)(s->n_tokens + n)));
    /* Arena: the image rows (n_pad x D) at the bottom for the whole feed; above them first
     * the pixels and the vision and projector scratch, then each decoder chunk in turn. */
    int chunk = (int)NV_MIN(n, (size_t)s->max_batch);
    size_t dec_bytes = dec_arena_bytes(&e->dec, chunk, 1);
    size_t img_bytes = 0;
    size_t rows_bytes = 0;
    size_t n_rows = 0;
    if (total_tiles > 0) {
        size_t b2 = vit_arena_bytes(&e->vit, (int)total_tiles); /* pixels included */
        size_t b3 = proj_arena_bytes(&e->proj, &e->vit, (int)total_tiles);
        if (!nv_add_size(b2, b3, &img_bytes)) {
            img_bytes = SIZE_MAX;
        }
        rows_bytes = nv_mul_size(n_pad, (size_t)e->dec.D, &n_rows) ? nv_arena_size(n_rows)
                                                                    : SIZE_MAX;
    }
    size_t bytes;
    if (!nv_add_size(rows_bytes, NV_MAX(img_bytes, dec_bytes), &bytes)) {
        bytes = SIZE_MAX;
    }
    NVLM_TRY(nv_arena_reserve(&s->arena, bytes));
    float *img = NULL;
    int32_t *img_pos = NULL;
    int32_t *img_row = NULL;
    nvlm_status st = NVLM_OK;
    if (total_tiles > 0) {
        img = nv_arena_floats(&s->arena, n_rows);
        st = img == NULL ? nv_error(s, NVLM_ERR_INTERNAL, "image arena too small") : NVLM_OK;
        if (st == NVLM_OK) {
            st = encode_images(s, images, n_images, (int)total_tiles, img);
        }
        if (st == NVLM_OK) {
            img_pos = nv_alloc_array(s->h.ctx, n_pad, sizeof(int32_t));
            img_row = nv_alloc_array(s->h.ctx, n_pad, sizeof(int32_t));
            if (img_pos == NULL || img_row == NULL) {
                st = nv_error(s, NVLM_ERR_OUT_OF_MEMORY, "out of memory");
            }
        }
    }
    size_t mark = nv_arena_mark(&s->arena);
    int64_t n0 = s->kv.n;
    size_t done = 0;
    size_t pad_seen = 0;
    while (st == NVLM_OK && done < n) {
        int m = (int)NV_MIN(n - done, (size_t)chunk);
        int n_img = 0;
        for (int i = 0; i < m && total_tiles > 0; i++) {
            if (ids[done + i] == e->image_token_id) {
                img_pos[n_img] = i;
                img_row[n_img] = (int32_t)pad_seen++;
                n_img++;
            }
        }
        bool last = done + m == n;
        nv_arena_rewind(&s->arena, mark);
        dec_trace to_dev = {.logits_dev = s->logits_dev};
        st = dec_decode(s->ex, &s->arena, &e->dec, &s->kv, ids + done, m, img, img_pos,
                        img_row, n_img, last ? 1 : 0, last ? s->logits : NULL,
                        last && s->logits_dev != NULL ? &to_dev : NULL);
        done += m;
    }
    nv_free(s->h.ctx, img_pos);
    nv_free(s->h.ctx, img_row);
    if (st != NVLM_OK) {
        s->kv.n = n0;
        return st;
    }
    memcpy(s->tokens + s->n_tokens, ids, n * sizeof(int32_t));
    s->n_tokens += n;
    s->has_logits = true;
    s->logits_stale = s->logits_dev != NULL;
    return NVLM_OK;
}

static nvlm_status session_feed(nvlm_session *s, const int32_t *ids, size_t n_ids,
                                nvlm_image *const *images, size_t n_images)
{
    if (!is_session(s)) {
        return NVLM_ERR_INVALID_ARGUMENT;
    }
    nv_clear(s);
    if (ids == NULL && n_ids > 0) {
        return nv_error(s, NVLM_ERR_INVALID_ARGUMENT, "ids is NULL");
    }
    NVLM_TRY(feed(s, ids, n_ids, images, n_images, false));
    s->reply_open = false;
    s->prompt_open = false;
    return NVLM_OK;
}

/* Appends the tokens of one rendered prompt piece to *ids (grown with the context's allocator). */
static nvlm_status render(nvlm_session *s, const nvlm_chat_message *msg, size_t n_msgs,
                          const char *system, int no_system, int gen_prompt, int32_t **ids,
                          size_t *n)
{
    nvlm_prompt_params pp;
    nvlm_prompt_default_params(&pp);
    pp.system_message = system;
    pp.no_system_message = no_system;
    pp.add_generation_prompt = gen_prompt;
    pp.parse_special_in_content = s->parse_special;
    const nvlm_tokenizer *tok = s->model->tok;
    size_t need = 0;
    nvlm_status st = nvlm_prompt_tokenize(tok, msg, n_msgs, &pp, NULL, 0, &need, NULL, 0, NULL);
    if (st != NVLM_OK && st != NVLM_ERR_BUFFER_TOO_SMALL) {
        return nv_error_copy(s, tok, st);
    }
    size_t total;
    if (!nv_add_size(*n, need, &total) || total > (size_t)INT32_MAX) {
        return nv_error(s, NVLM_ERR_LIMIT, "prompt too long");
    }
    int32_t *p = nv_realloc(s->h.ctx, *ids, (total + 1) * sizeof(int32_t));
    if (p == NULL) {
        return nv_error(s, NVLM_ERR_OUT_OF_MEMORY, "out of memory for the prompt");
    }
    *ids = p;
    size_t got = 0;
    st = nvlm_prompt_tokenize(tok, msg, n_msgs, &pp, p + *n, need, &got, NULL, 0, NULL);
    if (st != NVLM_OK) {
        return nv_error_copy(s, tok, st);
    }
    *n += got;
    return NVLM_OK;
}

/* Appends the ids of `text` (an assistant reply: plain text unless the session parses added
 * tokens in content) followed by <|im_end|> to *ids. */
static nvlm_status append_text(nvlm_session *s, const char *text, int32_t **ids, size_t *n)
{
    const nvlm_tokenizer *tok = s->model->tok;
    size_t len = strlen(text);
    if (tok_id_vision_pad(tok) >= 0 && strstr(text, "<|vision_pad|>") != NULL) {
        return nv_error(s, NVLM_ERR_INVALID_ARGUMENT,
                        "the text holds <|vision_pad|> tokens of its own");
    }
    size_t plain[2] = {0, len};
    tok_ids v = {.ctx = s->h.ctx};
    nvlm_status st = tok_encode_plain(tok, text, len, 0, plain, s->parse_special ? 0 : 1, &v);
    if (st != NVLM_OK) {
        tok_ids_free(&v);
        return nv_error_copy(s, tok, st);
    }
    size_t total;
    if (!nv_add_size(*n, v.n, &total) || total > (size_t)INT32_MAX) {
        tok_ids_free(&v);
        return nv_error(s, NVLM_ERR_LIMIT, "text too long");
    }
    int32_t *p = nv_realloc(s->h.ctx, *ids, (total + 1) * sizeof(int32_t));
    if (p == NULL) {
        tok_ids_free(&v);
        return nv_error(s, NVLM_ERR_OUT_OF_MEMORY, "out of memory for the prompt");
    }
    *ids = p;
    if (v.n > 0) {
        memcpy(p + *n, v.data, v.n * sizeof *p);
    }
    *n += v.n;
    p[(*n)++] = s->im_end;
    tok_ids_free(&v);
    return NVLM_OK;
}

static nvlm_status session_add_turn(nvlm_session *s, nvlm_role role, const char *content,
                                    nvlm_image *const *images, size_t n_images)
{
    if (!is_session(s)) {
        return NVLM_ERR_INVALID_ARGUMENT;
    }
    nv_clear(s);
    if (content == NULL || role < NVLM_ROLE_SYSTEM || role > NVLM_ROLE_ASSISTANT ||
        (n_images > 0 && images == NULL) || n_images > 64) {
        return nv_error(s, NVLM_ERR_INVALID_ARGUMENT, "bad turn (role %d, %zu images)",
                        (int)role, n_images);
    }
    if (s->model->tok == NULL) {
        return nv_error(s, NVLM_ERR_UNSUPPORTED, "the model has no tokenizer");
    }
    int32_t tiles[64];
    for (size_t i = 0; i < n_images; i++) {
        if (images[i] == NULL || images[i]->h.magic != NV_MAGIC_IMAGE) {
            return nv_error(s, NVLM_ERR_INVALID_ARGUMENT, "image %zu is not an image", i);
        }
        tiles[i] = nvlm_image_tile_count(images[i]);
    }
    int32_t *ids = NULL;
    size_t n = 0;
    nvlm_status st = NVLM_OK;
    if (s->reply_open && s->im_end >= 0) {
        ids = nv_alloc_array(s->h.ctx, 1, sizeof(int32_t));
        if (ids == NULL) {
            return nv_error(s, NVLM_ERR_OUT_OF_MEMORY, "out of memory");
        }
        ids[n++] = s->im_end;
    }
    nvlm_chat_message msg = {role, content, n_images, n_images > 0 ? tiles : NULL};
    if (role == NVLM_ROLE_ASSISTANT && s->prompt_open && n_images == 0) {
        /* The header "<|im_start|>assistant\n" is already there: add the reply and its end. */
        st = append_text(s, content, &ids, &n);
    } else if (role == NVLM_ROLE_SYSTEM) {
        st = render(s, &msg, 1, NULL, 0, 0, &ids, &n);
    } else {
        if (s->n_tokens == 0 && !s->no_system_message) {
            st = render(s, NULL, 0, s->system_message, 0, 0, &ids, &n);
        }
        if (st == NVLM_OK) {
            st = render(s, &msg, 1, NULL, 1, role == NVLM_ROLE_USER, &ids, &n);
        }
    }
    if (st == NVLM_OK) {
        st = feed(s, ids, n, images, n_images, false);
    }
    nv_free(s->h.ctx, ids);
    if (st == NVLM_OK) {
        s->reply_open = false;
        s->prompt_open = role == NVLM_ROLE_USER;
    }
    return st;
}

const float *nvlm_session_logits(nvlm_session *s, size_t *n_vocab)
{
    if (n_vocab != NULL) {
        *n_vocab = 0;
    }
    if (!is_session(s) || !s->has_logits) {
        return NULL;
    }
    if (s->logits_stale) {
        /* sampling on the device left them there: copied only when asked for, the calling
         * thread handed back as every call does (this one may run inside the token
         * callback, where the application's device is current) */
        nv_backend *be = s->ex->be;
        int saved = thread_enter(be);
        bool ok = be->ops->download(s->ex, s->logits, s->logits_dev,
                                    (size_t)s->eng->dec.vocab * sizeof(float)) == NVLM_OK &&
                  be->ops->sync(s->ex) == NVLM_OK;
        thread_leave(be, saved);
        if (!ok) {
            return NULL;
        }
        s->logits_stale = false;
    }
    if (n_vocab != NULL) {
        *n_vocab = (size_t)s->eng->dec.vocab;
    }
    return s->logits;
}

const int32_t *nvlm_session_tokens(const nvlm_session *s, size_t *n_tokens)
{
    if (n_tokens != NULL) {
        *n_tokens = 0;
    }
    if (!is_session(s)) {
        return NULL;
    }
    if (n_tokens != NULL) {
        *n_tokens = s->n_tokens;
    }
    return s->tokens;
}

/* ---- sampling and generation ------------------------------------------------------------ */

void nvlm_sampler_params_init(nvlm_sampler_params *p, size_t size)
{
    if (p == NULL || size < sizeof(uint32_t)) {
        return;
    }
    nvlm_sampler_params d;
    memset(&d, 0, sizeof d);
    d.struct_size = (uint32_t)NV_MIN(size, sizeof d);
    d.temperature = 0.0f;
    d.top_k = 0;
    d.top_p = 1.0f;
    d.min_p = 0.0f;
    d.repetition_penalty = 1.0f;
    d.penalty_last_n = 64;
    d.max_new_tokens = -1; /* resolved from the model's generation config */
    memcpy(p, &d, NV_MIN(size, sizeof d));
    p->struct_size = (uint32_t)size;
}

static nvlm_status sampler_params(nvlm_session *s, const nvlm_sampler_params *params,
                                  nvlm_sampler_params *p)
{
    nvlm_sampler_default_params(p);
    if (!nv_params_copy(p, sizeof *p, params, offsetof(nvlm_sampler_params, top_k))) {
        return nv_error(s, NVLM_ERR_INVALID_ARGUMENT, "bad sampler params struct_size");
    }
    if (p->max_new_tokens == -1) {
        p->max_new_tokens = s->model->cfg.gen_max_new_tokens > 0
                                ? s->model->cfg.gen_max_new_tokens
                                : 1024;
    }
    return smp_check(p, &s->work, s);
}

/* The next token from the current logits: on the device when the backend samples there. */
static nvlm_status sample_next(nvlm_session *s, const nvlm_sampler_params *p, int32_t *token)
{
    if (s->logits_dev != NULL) {
        return smp_sample_device(s->ex, p, s->logits_dev, &s->work, s->tokens, s->n_tokens,
                                 &s->rng, token, s);
    }
    return smp_sample(p, s->logits, &s->work, s->tokens, s->n_tokens, &s->rng, token, s);
}

static nvlm_status session_sample(nvlm_session *s, const nvlm_sampler_params *params,
                                  int32_t *token)
{
    if (!is_session(s)) {
        return NVLM_ERR_INVALID_ARGUMENT;
    }
    nv_clear(s);
    if (token == NULL || !s->has_logits) {
        return nv_error(s, NVLM_ERR_INVALID_ARGUMENT,
                        token == NULL ? "token is NULL" : "nothing was fed yet");
    }
    nvlm_sampler_params p;
    NVLM_TRY(sampler_params(s, params, &p));
    return sample_next(s, &p, token);
}

/* Appends `len` bytes to the buffer *buf (capacity *cap, used *used), NUL-terminated. */
static nvlm_status buf_append(nvlm_session *s, char **buf, size_t *cap, size_t *used,
                              const char *text, size_t len)
{
    size_t need;
    if (!nv_add_size(*used, len, &need) || !nv_add_size(need, 1, &need)) {
        return nv_error(s, NVLM_ERR_LIMIT, "text too long");
    }
    if (need > *cap) {
        size_t c = NV_MAX(need, NV_MAX((size_t)256, *cap * 2));
        char *p = nv_realloc(s->h.ctx, *buf, c);
        if (p == NULL) {
            return nv_error(s, NVLM_ERR_OUT_OF_MEMORY, "out of memory for text");
        }
        *buf = p;
        *cap = c;
    }
    memcpy(*buf + *used, text, len);
    *used += len;
    (*buf)[*used] = '\0';
    return NVLM_OK;
}

static nvlm_status ensure_piece(nvlm_session *s, size_t need)
{
    if (need <= s->piece_cap) {
        return NVLM_OK;
    }
    size_t c = NV_MAX(need, NV_MAX((size_t)256, s->piece_cap * 2));
    char *p = nv_realloc(s->h.ctx, s->piece, c);
    if (p == NULL) {
        return nv_error(s, NVLM_ERR_OUT_OF_MEMORY, "out of memory for text");
    }
    s->piece = p;
    s->piece_cap = c;
    return NVLM_OK;
}

/* Appends what the stream decoder still holds (an incomplete UTF-8 tail as U+FFFD) to
 * s->piece after *len bytes. */
static nvlm_status flush_piece(nvlm_session *s, size_t *len)
{
    if (s->sd == NULL) {
        return NVLM_OK;
    }
    NVLM_TRY(ensure_piece(s, *len + 64));
    size_t m = 0;
    nvlm_status st = nvlm_stream_decoder_flush(s->sd, s->piece + *len, s->piece_cap - *len, &m);
    if (st == NVLM_ERR_BUFFER_TOO_SMALL) {
        NVLM_TRY(ensure_piece(s, *len + m + 1));
        st = nvlm_stream_decoder_flush(s->sd, s->piece + *len, s->piece_cap - *len, &m);
    }
    if (st != NVLM_OK) {
        return nv_error_copy(s, s->sd, st);
    }
    *len += m;
    s->piece[*len] = '\0';
    return NVLM_OK;
}

/* The text newly completed by `token` into s->piece (NUL-terminated), its length in *len. */
static nvlm_status stream_piece(nvlm_session *s, int32_t token, size_t *len)
{
    *len = 0;
    NVLM_TRY(ensure_piece(s, 64));
    s->piece[0] = '\0';
    if (s->sd == NULL) {
        return NVLM_OK;
    }
    size_t n = 0;
    nvlm_status st = nvlm_stream_decoder_push(s->sd, token, s->piece, s->piece_cap, &n);
    if (st == NVLM_ERR_BUFFER_TOO_SMALL) {
        NVLM_TRY(ensure_piece(s, n + 1));
        st = nvlm_stream_decoder_push(s->sd, token, s->piece, s->piece_cap, &n);
    }
    if (st != NVLM_OK) {
        return nv_error_copy(s, s->sd, st);
    }
    *len = n;
    s->piece[n] = '\0';
    return NVLM_OK;
}

static bool has_stop_string(const nvlm_sampler_params *p, const char *text, size_t len,
                            size_t new_from)
{
    for (size_t i = 0; i < p->n_stop_strings; i++) {
        size_t sl = strlen(p->stop_strings[i]);
        if (sl > len) {
            continue;
        }
        size_t start = new_from >= sl - 1 ? new_from - (sl - 1) : 0;
        for (size_t a = start; a + sl <= len; a++) {
            if (memcmp(text + a, p->stop_strings[i], sl) == 0) {
                return true;
            }
        }
    }
    return false;
}

static nvlm_status session_generate(nvlm_session *s, const nvlm_sampler_params *params,
                                    nvlm_token_fn on_token, void *user,
                                    nvlm_generate_result *result)
{
    if (!is_session(s)) {
        return NVLM_ERR_INVALID_ARGUMENT;
    }
    nv_clear(s);
    if (!s->has_logits) {
        return nv_error(s, NVLM_ERR_INVALID_ARGUMENT, "nothing was fed yet");
    }
    if (result != NULL && result->struct_size < sizeof(uint32_t)) {
        return nv_error(s, NVLM_ERR_INVALID_ARGUMENT, "bad result struct_size");
    }
    nvlm_sampler_params p;
    NVLM_TRY(sampler_params(s, params, &p));
    int32_t eos_default[4];
    size_t n_eos = 0;
    if (p.stop_ids == NULL) {
        const nv_config *c = &s->model->cfg;
        for (int i = 0; i < c->gen_n_eos && i < 4; i++) {
            eos_default[n_eos++] = c->gen_eos_ids[i];
        }
        if (n_eos == 0 && s->im_end >= 0) {
            eos_default[n_eos++] = s->im_end;
        }
        p.stop_ids = eos_default;
        p.n_stop_ids = n_eos;
    }
    if (s->sd != NULL) {
        size_t len;
        nvlm_stream_decoder_flush(s->sd, NULL, 0, &len);
    }
    s->gen_len = 0;
    double t0 = nv_time_ms();
    nvlm_generate_result r;
    memset(&r, 0, sizeof r);
    r.struct_size = sizeof r;
    r.finish_reason = NVLM_FINISH_MAX_TOKENS;
    nvlm_status st = NVLM_OK;
    int32_t last = -1;
    while (r.n_tokens < p.max_new_tokens) {
        if ((int64_t)s->n_tokens >= s->n_ctx) {
            r.finish_reason = NVLM_FINISH_CONTEXT_FULL;
            break;
        }
        int32_t tok = -1;
        st = sample_next(s, &p, &tok);
        if (st != NVLM_OK) {
            break;
        }
        bool stop_tok = false;
        for (size_t i = 0; i < p.n_stop_ids; i++) {
            stop_tok = stop_tok || p.stop_ids[i] == tok;
        }
        bool final = stop_tok || r.n_tokens + 1 == p.max_new_tokens;
        size_t len = 0;
        st = stream_piece(s, tok, &len);
        bool stop_str = false;
        if (st == NVLM_OK && p.n_stop_strings > 0 && len > 0) {
            size_t from = s->gen_len;
            st = buf_append(s, &s->gen, &s->gen_cap, &s->gen_len, s->piece, len);
            stop_str = st == NVLM_OK && has_stop_string(&p, s->gen, s->gen_len, from);
        }
        if (st == NVLM_OK && (final || stop_str)) {
            st = flush_piece(s, &len);
        }
        if (st != NVLM_OK) {
            break;
        }
        int cancel = 0;
        if (on_token != NULL) {
            nv_backend *be = s->ex->be;
            thread_leave(be, s->thread_saved);
            cancel = on_token(user, tok, s->piece, len);
            s->thread_saved = thread_enter(be);
        }
        if (atomic_load(&s->free_pending)) {
            /* nvlm_session_free came meanwhile: stop; leave() frees the session */
            r.finish_reason = NVLM_FINISH_CANCELLED;
            break;
        }
        st = feed(s, &tok, 1, NULL, 0, true);
        if (st != NVLM_OK) {
            break;
        }
        r.n_tokens++;
        last = tok;
        if (stop_tok) {
            r.finish_reason = NVLM_FINISH_STOP_TOKEN;
            break;
        }
        if (stop_str) {
            r.finish_reason = NVLM_FINISH_STOP_STRING;
            break;
        }
        if (cancel) {
            r.finish_reason = NVLM_FINISH_CANCELLED;
            break;
        }
    }
    if (r.n_tokens > 0) {
        s->prompt_open = false;
        s->reply_open = last != s->im_end;
    }
    r.decode_ms = nv_time_ms() - t0;
    if (result != NULL) {
        uint32_t size = result->struct_size;
        r.struct_size = (uint32_t)NV_MIN((size_t)size, sizeof r);
        memcpy(result, &r, NV_MIN((size_t)size, sizeof r));
        result->struct_size = size;
    }
    return st;
}

/* ---- public entry points that change the session: under the busy flag ------------------- */

nvlm_status nvlm_session_reset(nvlm_session *s)
{
    if (!is_session(s)) {
        return NVLM_ERR_INVALID_ARGUMENT;
    }
    if (!enter(s)) {
        return NVLM_ERR_BUSY;
    }
    return leave(s, session_reset(s));
}

nvlm_status nvlm_session_feed(nvlm_session *s, const int32_t *ids, size_t n_ids,
                              nvlm_image *const *images, size_t n_images)
{
    if (!is_session(s)) {
        return NVLM_ERR_INVALID_ARGUMENT;
    }
    if (!enter(s)) {
        return NVLM_ERR_BUSY;
    }
    return leave(s, session_feed(s, ids, n_ids, images, n_images));
}

nvlm_status nvlm_session_add_turn(nvlm_session *s, nvlm_role role, const char *content,
                                  nvlm_image *const *images, size_t n_images)
{
    if (!is_session(s)) {
        return NVLM_ERR_INVALID_ARGUMENT;
    }
    if (!enter(s)) {
        return NVLM_ERR_BUSY;
    }
    return leave(s, session_add_turn(s, role, content, images, n_images));
}

nvlm_status nvlm_session_sample(nvlm_session *s, const nvlm_sampler_params *params,
                                int32_t *token)
{
    if (!is_session(s)) {
        return NVLM_ERR_INVALID_ARGUMENT;
    }
    if (!enter(s)) {
        return NVLM_ERR_BUSY;
    }
    return leave(s, session_sample(s, params, token));
}

nvlm_status nvlm_session_generate(nvlm_session *s, const nvlm_sampler_params *params,
                                  nvlm_token_fn on_token, void *user,
                                  nvlm_generate_result *result)
{
    if (!is_session(s)) {
        return NVLM_ERR_INVALID_ARGUMENT;
    }
    if (!enter(s)) {
        return NVLM_ERR_BUSY;
    }
    return leave(s, session_generate(s, params, on_token, user, result));
}

nv_exec *nv_session_exec(nvlm_session *s)
{
    return is_session(s) ? s->ex : NULL;
}
