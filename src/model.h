/*
 * model.h - the loaded model as the pipeline sees it: parsed config.json (+ generation config),
 * the checked tensor table over the mapped shards, the tokenizer and the engine's weights.
 * Filled by model_load.c; read-only afterwards (models are shared between threads).
 */
#ifndef NVLM_MODEL_H
#define NVLM_MODEL_H

#include "internal.h"
#include "tensor.h"

typedef struct nv_vision_config {
    int hidden_size;          /* 3200 */
    int intermediate_size;    /* 12800 */
    int num_layers;           /* 45 */
    int num_heads;            /* real heads: 25 */
    int num_dummy_heads;      /* padding heads: 7 (from the qkv shape; 7 when unknown) */
    int head_dim;             /* hidden_size / num_heads: 128 */
    int image_size;           /* 448 */
    int patch_size;           /* 14 */
    int num_channels;         /* 3 */
    double layer_norm_eps;    /* 1e-6 */
    bool qk_normalization;    /* true */
    bool qkv_bias;            /* false */
} nv_vision_config;

typedef struct nv_llm_config {
    int hidden_size;          /* 8192 */
    int intermediate_size;    /* 29568 */
    int num_layers;           /* 80 */
    int num_heads;            /* 64 */
    int num_kv_heads;         /* 8 */
    int head_dim;             /* hidden_size / num_heads: 128 */
    int vocab_size;           /* embedding rows: 152064 */
    int max_position_embeddings; /* 32768 */
    double rope_theta;        /* 1e6 */
    double rms_norm_eps;      /* 1e-6 */
    int bos_token_id;         /* -1 when null */
    int eos_token_id;
    int pad_token_id;
    bool tie_word_embeddings; /* false */
} nv_llm_config;

typedef struct nv_config {
    nv_vision_config vision;
    nv_llm_config llm;
    double downsample_ratio;  /* 0.5 */
    int force_image_size;     /* 448 */
    int min_dynamic_patch;    /* 1 */
    int max_dynamic_patch;    /* 6 */
    bool use_thumbnail;       /* true */
    bool dynamic_image_size;  /* true */
    int ps_version;           /* 2 ("v2") */
    int select_layer;         /* -1 */
    char template_name[32];   /* "chatml" */
    int num_image_token;      /* (image/patch)^2 * ratio^2: 256 */
    int proj_input_size;      /* vision hidden / ratio^2: 12800 */
    int proj_hidden_size;     /* mlp1.1 rows: 29568 (= llm intermediate in NVLM-D) */
    int proj_output_size;     /* llm hidden: 8192 */
    /* generation_config.json, with the reference's defaults when absent */
    int gen_max_new_tokens;   /* 1024 */
    int gen_eos_ids[4];       /* stop ids; gen_n_eos of them */
    int gen_n_eos;
    bool gen_do_sample;       /* false */
} nv_config;

/* One mapped tensor of the checkpoint, already checked: dtype known, shape within limits,
 * data inside its shard. */
typedef struct nv_weight {
    const char *name;
    nv_tensor t;              /* t.data points into the mapped (or read) shard */
} nv_weight;

struct nv_checkpoint;         /* model_load.c: shards, their mappings, the tensor table */
struct nv_engine;             /* engine: backend weights and per-model state */

struct nvlm_model {
    nv_handle h;
    nv_config cfg;
    nvlm_load_mode mode;
    nvlm_weight_type weight_type;    /* resolved at load: NVLM_WEIGHTS_BF16 or NVLM_WEIGHTS_FP8 */
    bool quantize_fp8;               /* NVLM_WEIGHTS_FP8 asked: bf16 projections quantized */
    bool has_fp8;                    /* the checkpoint stores F8_E4M3 projections */
    struct fp8_qconfig *qcfg;        /* config.json's quantization_config (fp8.h), never NULL
                                        after the config is read */
    char *dir;                       /* model directory */
    struct nv_checkpoint *ckpt;      /* NULL for a config-only model without shards */
    nvlm_tokenizer *tok;             /* NULL when the directory has no tokenizer */
    struct nv_engine *engine;        /* NULL until the engine prepared the weights */
    nvlm_precision precision;        /* nvlm_model_params.precision; read by nv_engine_init */
    nvlm_progress_fn progress;       /* nvlm_model_params.progress during nvlm_model_load (the
                                        engine reports the weight upload), NULL afterwards */
    void *progress_user;
    /* A model built in memory (benchmarks, tests; see synthetic.c) has no checkpoint: its
     * weights are this array (names and data owned by the model, freed with nv_free by
     * nvlm_model_free: each mem_weights[i].name, then mem_block, then mem_weights). */
    nv_weight *mem_weights;
    size_t n_mem_weights;
    void *mem_block;
    uint64_t n_params;
    uint64_t weight_bytes;
};

/* The checked tensor `name`, or NULL when the checkpoint has no such tensor. Looks in
 * mem_weights when the model has no checkpoint. */
const nv_weight *nv_model_weight(const nvlm_model *m, const char *name);

/* Parse config.json text into cfg (NVLM_ERR_FORMAT with the field named on failure). */
nvlm_status nv_config_parse(nv_config *cfg, const char *json, size_t len, void *err_handle);
/* Overlay generation_config.json (max_new_tokens, eos_token_id int or list, do_sample) on a
 * cfg already filled by nv_config_parse (NVLM_ERR_FORMAT naming the field on failure). */
nvlm_status nv_gen_config_parse(nv_config *cfg, const char *json, size_t len, void *err_handle);

/* Engine hooks, called by nvlm_model_load (after the weights are checked) and nvlm_model_free.
 * The engine lays out the weights for its backend and keeps them in m->engine. */
nvlm_status nv_engine_init(nvlm_model *m);
void nv_engine_free(nvlm_model *m);

/* ---- the checkpoint layout (layout.c) ---- */

/* What a tensor of the layout is (synthetic models draw their random values by it). */
typedef enum nv_tensor_role {
    NV_ROLE_LINEAR = 0,     /* a Linear / conv weight: fan-in = product of dims 1.. */
    NV_ROLE_SMALL,          /* biases, class and position embeddings */
    NV_ROLE_NORM,           /* norm weights (around 1) */
    NV_ROLE_LAYER_SCALE,    /* InternViT ls1 / ls2 */
    NV_ROLE_EMBEDDING       /* the token embedding table */
} nv_tensor_role;

/* The dimension of the model that tensor parallelism divides among the ranks (tp/plan.h
 * gives each rank a contiguous range of it). */
typedef enum nv_tp_part {
    NV_TP_WHOLE = 0,        /* not divided: the tensor is replicated on every rank */
    NV_TP_LLM_HEADS,        /* LLM query heads (units of head_dim rows or columns) */
    NV_TP_LLM_KV_HEADS,     /* the LLM kv heads a rank's query heads use (units of head_dim) */
    NV_TP_LLM_MLP,          /* LLM intermediate channels */
    NV_TP_VOCAB,            /* lm_head rows */
    NV_TP_VIT_HEADS,        /* ViT heads, dummy heads included (units of head_dim) */
    NV_TP_VIT_MLP,          /* ViT intermediate channels */
    NV_TP_PROJ_HIDDEN,      /* projector hidden channels (mlp1.1 rows) */
    NV_TP_N_PARTS
} nv_tp_part;

/* How a tensor is cut under tensor parallelism. cols false: dim 0 (the output rows of a
 * column-parallel layer, or a 1-D vector) follows `part`; true: dim 1 (the input of a
 * row-parallel layer, whose output the ranks all-reduce). Dim 0 holds `blocks` equal blocks
 * cut alike (3 for the fused ViT q, k, v; else 1). */
typedef struct nv_tp_cut {
    nv_tp_part part;
    bool cols;
    int blocks;
} nv_tp_cut;

#define NV_LAYOUT_NAME_MAX 160

typedef struct nv_layout_tensor {
    char name[NV_LAYOUT_NAME_MAX];
    int ndim;
    int64_t shape[4];
    bool optional;          /* may be absent: lm_head when the embeddings are tied */
    nv_tensor_role role;
    nv_tp_cut tp;           /* its tensor-parallel cut */
} nv_layout_tensor;

typedef nvlm_status (*nv_layout_fn)(void *u, const nv_layout_tensor *t);

/* Calls fn for every tensor of the NVLM-D checkpoint layout for cfg (spec §2) in a fixed
 * order; stops at and returns the first status other than NVLM_OK that fn returns. */
nvlm_status nv_layout_tensors(const nv_config *cfg, nv_layout_fn fn, void *u);
/* Number of tensors nv_layout_tensors visits. */
size_t nv_layout_count(const nv_config *cfg);
/* Parameters of the model: the elements of every non-optional tensor of the layout (the
 * attention of the ViT padded to num_heads + num_dummy_heads heads). */
uint64_t nv_layout_params(const nv_config *cfg);

/* A fully loaded model built in memory (synthetic.c): every tensor of the checkpoint layout for
 * cfg (which must be complete, e.g. from nv_config_parse), bf16 random values from `seed`, no
 * tokenizer, engine initialised. Freed with nvlm_model_free. Errors go to ctx. */
nvlm_status nv_model_synthetic(nvlm_context *ctx, const nv_config *cfg, uint64_t seed,
                               nvlm_model **out);

#endif /* NVLM_MODEL_H */
