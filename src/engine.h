/*
 * engine.h - the inference pipeline's internal interface: per-model weights as the backend
 * laid them out (struct nv_engine, built by engine.c at load) and the stage entry points
 * vit_ (vision.c), proj_ (projector.c), dec_ (decoder.c) and smp_ (sampler.c). Stages call
 * backend ops only (backend.h); activations live in a per-call nv_arena.
 */
#ifndef NVLM_ENGINE_H
#define NVLM_ENGINE_H

#include "backend.h"
#include "model.h"

/* ---- weights ---------------------------------------------------------------------------- */

typedef struct vit_layer {
    nv_bweight norm1, norm2;   /* (D) */
    nv_bweight qkv;            /* (3 * Hp * hd, D): q, k, v blocks of Hp padded heads */
    nv_bweight q_norm, k_norm; /* (Hp * hd) */
    nv_bweight proj, proj_b;   /* (D, Hp * hd), (D) */
    nv_bweight ls1, ls2;       /* (D) layer scales */
    nv_bweight fc1, fc1_b;     /* (I, D), (I) */
    nv_bweight fc2, fc2_b;     /* (D, I), (D) */
} vit_layer;

typedef struct vit_weights {
    int D, I, n_layers, n_heads, n_heads_padded, head_dim, patch, image, n_patches;
    float eps;
    bool skip_dummy;           /* dummy heads' q/k/v rows are all zero: their context is 0 */
    nv_bweight cls;            /* (1, 1, D) */
    nv_bweight patch_w;        /* (D, 3, p, p) used as (D, 3 p p) */
    nv_bweight patch_b;        /* (D) */
    nv_bweight pos;            /* (1, 1 + n_patches, D) */
    vit_layer *layers;
} vit_weights;

typedef struct proj_weights {
    int in, hidden, out;       /* 4 D, mlp1.1 rows, llm hidden */
    nv_bweight ln_w, ln_b;     /* (in) */
    nv_bweight w1;             /* (hidden, in) */
    nv_bweight w2;             /* (out, hidden) */
} proj_weights;

typedef struct dec_layer {
    nv_bweight in_norm, post_norm;  /* (D) */
    nv_bweight q, q_b;              /* (H hd, D), (H hd) */
    nv_bweight k, k_b, v, v_b;      /* (KV hd, D), (KV hd) */
    nv_bweight o;                   /* (D, H hd) */
    nv_bweight gate, up;            /* (I, D) */
    nv_bweight down;                /* (D, I) */
    /* Grouped (backend weight_load_group; then q..v_b, gate and up above are empty): */
    bool grouped;
    nv_bweight qkv, qkv_b;          /* (H hd + 2 KV hd, D), (H hd + 2 KV hd) */
    nv_bweight gate_up;             /* (2 I, D): gate rows then up rows */
} dec_layer;

typedef struct dec_weights {
    int D, I, n_layers, n_heads, n_kv_heads, head_dim, vocab, max_pos;
    double theta;
    float eps;
    bool grouped;                   /* some layer has grouped weights (dec_layer.grouped) */
    nv_bweight embed;               /* (vocab, D), gathered in place */
    nv_bweight norm;                /* (D) */
    nv_bweight lm_head;             /* (vocab, D) */
    dec_layer *layers;
} dec_weights;

struct nv_engine {
    nv_backend *be;
    nv_layout_tensor *layout;       /* the checkpoint layout sorted by name: each tensor's cut */
    size_t n_layout;
    vit_weights vit;
    proj_weights proj;
    dec_weights dec;
    int image_token_id;             /* <|vision_pad|>, -1 when unknown */
    /* FP8 weights (fp8.h): buffers of codes and scales made at load (quantized or converted),
     * owned here and freed after the backend; weights of the backend point into them. */
    void **fp8_bufs;
    size_t n_fp8_bufs, cap_fp8_bufs;
    /* Load: progress by bytes of the checkpoint tensors laid out (memory_plan.h's nv_progress,
     * its own struct here to keep this header light), and the CUDA backends whose weight
     * upload state is released once every weight is on the device (borrowed). */
    struct nv_progress *progress;
    nv_backend *upload_ranks[NV_TP_MAX_RANKS];
    int n_upload_ranks;
};

typedef struct nv_engine nv_engine;

/* Loads checkpoint tensor `name` through the backend after checking it has `nelem` elements
 * and (rows >= 0) `rows` rows, with the tensor-parallel cut the layout gives it. Failure text
 * goes to the model. (engine.c) */
nvlm_status eng_load(nv_engine *e, const nvlm_model *m, const char *name, int64_t nelem,
                     int64_t rows, nv_bweight *out);
void eng_unload(nv_engine *e, nv_bweight *w);
/* Loads checkpoint tensors names[0..n) (each checked as by eng_load) as ONE weight through the
 * backend's weight_load_group (backend.h), n <= ENG_GROUP_MAX. *grouped false, NVLM_OK and
 * nothing loaded when the backend has no grouping or keeps these apart (FP8 weights, mixed
 * dtypes): the caller loads them one by one. */
#define ENG_GROUP_MAX 4
nvlm_status eng_load_group(nv_engine *e, const nvlm_model *m, const char *const *names,
                           const int64_t *nelem, const int64_t *rows, int n, nv_bweight *out,
                           bool *grouped);

/* ---- vision (vision.c) ------------------------------------------------------------------ */

nvlm_status vit_init(nv_engine *e, const nvlm_model *m);
void vit_free(nv_engine *e);
/* Arena bytes for n_tiles: the caller's pixels (pix below) plus vit_forward's own pieces. */
size_t vit_arena_bytes(const vit_weights *w, int n_tiles);
/* pix: (n_tiles, 3, S, S) f32 in the arena -> out: (n_tiles * n_patches, D) (CLS dropped),
 * taken from the arena. hidden (may be NULL): host buffer of n_layers x n_tiles x (1 +
 * n_patches) x D receiving the embeddings output then every layer's output but the last. */
nvlm_status vit_forward(nv_exec *ex, nv_arena *ar, const vit_weights *w, const float *pix,
                        int n_tiles, float **out, float *hidden);

/* One ViT layer alone, for the stage-wise tests: host rows `in` (n_tiles x (1 + n_patches) x D,
 * CLS first in each tile) through layer `layer` with the ops vit_forward runs -> out (host, same
 * shape, h after the layer). The arena must hold vit_arena_bytes(w, n_tiles). */
nvlm_status vit_stage(nv_exec *ex, nv_arena *ar, const vit_weights *w, int layer, int n_tiles,
                      const float *in, float *out);

/* ---- projector (projector.c) ------------------------------------------------------------ */

nvlm_status proj_init(nv_engine *e, const nvlm_model *m);
void proj_free(nv_engine *e);
/* Arena bytes proj_forward takes for its scratch (not the output rows). */
size_t proj_arena_bytes(const proj_weights *w, const vit_weights *v, int n_tiles);
/* vit: (n_tiles * n_patches, D) -> out: (n_tiles * n_patches / 4, llm D), device memory the
 * caller provides (outside the scratch, e.g. taken from the arena first so the rows outlive
 * it). shuffled (may be NULL): host copy of the pixel-shuffle output
 * (n_tiles * n_patches / 4, 4 D). */
nvlm_status proj_forward(nv_exec *ex, nv_arena *ar, const proj_weights *w, const vit_weights *v,
                         const float *vit, int n_tiles, float *out, float *shuffled);

/* ---- decoder (decoder.c) ---------------------------------------------------------------- */

/* The KV cache of one session, in backend memory: per layer k and v of (cap, KV hd). */
typedef struct dec_kv {
    nv_dtype type;                  /* NV_F32 or NV_BF16 */
    int n_layers, n_kv_heads, head_dim, kv_dim;
    int64_t cap;                    /* rows allocated */
    int64_t n_ctx;                  /* hard limit */
    int64_t n;                      /* rows filled */
    void **k;
    void **v;
} dec_kv;

/* Optional host captures of the decoder's intermediate rows (tests). Each pointer may be NULL:
 * embeds (n, D), layers (n_layers, n, D), final_norm (n, D). logits_dev: device memory that
 * receives the logits instead of the host buffer (the session's device sampling). */
typedef struct dec_trace {
    float *embeds;
    float *layers;
    float *final_norm;
    float *logits_dev;
} dec_trace;

nvlm_status dec_init(nv_engine *e, const nvlm_model *m);
void dec_free(nv_engine *e);
nvlm_status dec_kv_init(nv_exec *ex, const dec_weights *w, dec_kv *kv, nv_dtype type,
                        int64_t n_ctx);
/* Ensures room for `rows` rows (grows by doubling up to n_ctx, keeping the contents). A
 * backend with kv_reserve_all gets n_ctx rows at once (dec_kv_init reserves them already). */
nvlm_status dec_kv_reserve(nv_exec *ex, dec_kv *kv, int64_t rows);
void dec_kv_free(nv_exec *ex, dec_kv *kv);
/* Largest batch one dec_forward call takes (longer inputs go through in chunks). */
#define DEC_MAX_BATCH 2048
size_t dec_arena_bytes(const dec_weights *w, int n, int n_logits);
/* Runs n new tokens (n <= DEC_MAX_BATCH) at positions kv->n.. through the decoder and appends
 * them to the cache (kv->n += n on success only). img (device rows of D, may be NULL) fills the
 * positions listed in img_pos (indices into ids) with rows img_row[i] of img. logits: host
 * buffer for the last n_logits rows (n_logits x vocab), or NULL with n_logits 0. The caller
 * must have reserved the cache for kv->n + n rows. */
nvlm_status dec_forward(nv_exec *ex, nv_arena *ar, const dec_weights *w, dec_kv *kv,
                        const int32_t *ids, int n, const float *img, const int32_t *img_pos,
                        const int32_t *img_row, int n_img, int n_logits, float *logits,
                        dec_trace *trace);

/* One decoder stage alone, for the stage-wise tests: host rows `in` (n x D) at positions
 * pos0.. go through decoder layer `layer` (< n_layers) with the ops dec_forward runs, its K and
 * V stored at rows pos0.. of that layer's cache (reserved by the caller; rows 0 .. pos0 - 1 of
 * it filled by earlier calls; kv->n is left alone), -> out (host, n x D, h after the layer);
 * layer == n_layers: the head, the final RMSNorm and lm_head -> out (host, n x vocab). The
 * arena must hold dec_arena_bytes(w, n, n). */
nvlm_status dec_stage(nv_exec *ex, nv_arena *ar, const dec_weights *w, dec_kv *kv, int layer,
                      int64_t pos0, int n, const float *in, float *out);

/* dec_forward as a decode step (dec_step.c): a pass of one token without images, trace or more
 * than one logits row, on a backend with step ops, runs between step_begin and step_end (a
 * CUDA graph replayed per token) and again without a step when the backend asks; anything
 * else is a plain dec_forward. Same arguments, results and errors as dec_forward. */
nvlm_status dec_decode(nv_exec *ex, nv_arena *ar, const dec_weights *w, dec_kv *kv,
                       const int32_t *ids, int n, const float *img, const int32_t *img_pos,
                       const int32_t *img_row, int n_img, int n_logits, float *logits,
                       dec_trace *trace);

/* ---- session (session.c) ---------------------------------------------------------------- */

/* Sets how many tokens one decoder pass of session s takes (1..DEC_MAX_BATCH, the default);
 * longer feeds go through in passes of this size. For tests (chunk boundaries). */
nvlm_status nv_session_set_max_batch(nvlm_session *s, int n);

/* The session's backend exec (tests reach backend hooks through it); NULL for a non-session. */
nv_exec *nv_session_exec(nvlm_session *s);

/* ---- sampler (sampler.c) ---------------------------------------------------------------- */

typedef struct smp_rng {
    uint64_t s[4];
} smp_rng;

void smp_seed(smp_rng *r, uint64_t seed);
/* Uniform double in [0, 1). */
double smp_uniform(smp_rng *r);

typedef struct smp_cand {
    float v;
    int32_t i;
    double p;
} smp_cand;

/* Work buffers sized for one vocabulary (owned by the session). */
typedef struct smp_work {
    int n_vocab;
    float *val;       /* n_vocab */
    smp_cand *cand;   /* n_vocab */
    int32_t *count;   /* n_vocab, all zero between calls */
    uint8_t *usable;  /* n_vocab: 0 for rows that are never chosen (ids the tokenizer lacks,
                         such as the checkpoint's padding rows); all 1 after smp_work_init */
    int32_t *list;    /* smp_sample_device's bias and penalty pairs (allocated at its first
                         call; 2 * n_vocab + 2 * list_bias elements) */
    size_t list_bias; /* bias pairs list has room for */
} smp_work;

nvlm_status smp_work_init(nvlm_context *ctx, smp_work *w, int n_vocab);
void smp_work_free(nvlm_context *ctx, smp_work *w);
/* Checks a params struct (ranges, token ids; a logit bias on an unusable row is refused);
 * errors go to err_handle. */
nvlm_status smp_check(const nvlm_sampler_params *p, const smp_work *w, void *err_handle);
/* Picks a token from logits[n_vocab] after bias and penalties over hist (the last tokens) into
 * *token. Unusable rows and non-finite logits are never chosen. Returns NVLM_OK,
 * NVLM_ERR_BACKEND ("all logits are non-finite": no usable row holds a finite logit) or
 * NVLM_ERR_INVALID_ARGUMENT (the logit bias or the penalties exclude every finite one); errors
 * go to err_handle. */
nvlm_status smp_sample(const nvlm_sampler_params *p, const float *logits, smp_work *w,
                       const int32_t *hist, size_t n_hist, smp_rng *rng, int32_t *token,
                       void *err_handle);
/* The same through the backend's `sample` op (ex->be->ops->sample must exist): logits_dev is
 * device memory; the host prepares the bias and penalty lists and draws the uniform number
 * from rng as smp_sample would (one draw when temperature > 0; none on failure: the RNG is
 * left as it was). Same tokens as smp_sample for the same logits and RNG state except where
 * the draw falls within rounding (~1e-16 relative) of a cumulative-probability boundary; the
 * same errors with the same text. */
nvlm_status smp_sample_device(nv_exec *ex, const nvlm_sampler_params *p, const float *logits_dev,
                              smp_work *w, const int32_t *hist, size_t n_hist, smp_rng *rng,
                              int32_t *token, void *err_handle);

#endif /* NVLM_ENGINE_H */
