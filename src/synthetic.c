/*
 * synthetic.c - an NVLM-D model built in memory from a config alone (benchmarks, tests): every
 * tensor of the checkpoint layout (spec §2: layout.c's tensor set, which model_load.c checks),
 * bf16, filled with seeded uniform noise of a sensible scale (linear weights +-1/sqrt(fan_in),
 * norm weights ~1, biases and embeddings small, layer scales 0.1, dummy-head q/k/v rows zero as
 * in the real checkpoint), then handed to the engine like a loaded model.
 */
#include "model.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

/* The layout's tensors (layout.c) that a model has: all but the optional ones. */
typedef struct syn_list {
    nv_layout_tensor *v;
    size_t n, cap;
} syn_list;

static nvlm_status syn_collect(void *u, const nv_layout_tensor *t)
{
    syn_list *L = u;
    if (!t->optional && L->n < L->cap) {
        L->v[L->n++] = *t;
    }
    return NVLM_OK;
}

/* Values uniform in center +- scale, by what the tensor is: Linear weights +-1/sqrt(fan_in),
 * norm weights ~1, biases and the class / position embeddings small, layer scales 0.1. */
static void syn_init(const nv_layout_tensor *t, float *center, float *scale)
{
    *center = 0.0f;
    switch (t->role) {
    case NV_ROLE_LINEAR: {
        int64_t fan_in = 1;
        for (int d = 1; d < t->ndim; d++) {
            fan_in *= t->shape[d];
        }
        *scale = fan_in > 0 ? 1.0f / sqrtf((float)fan_in) : 1.0f;
        break;
    }
    case NV_ROLE_NORM:
        *center = 1.0f;
        *scale = 0.05f;
        break;
    case NV_ROLE_LAYER_SCALE:
        *center = 0.1f;
        *scale = 0.01f;
        break;
    case NV_ROLE_EMBEDDING:
        *scale = 0.035f;
        break;
    default:
        *scale = 0.02f;
        break;
    }
}

/* splitmix64: 4 uniform bf16 values per step. */
static void syn_fill(uint16_t *dst, size_t n, float center, float scale, uint64_t *state)
{
    const float k = scale / 32768.0f;
    for (size_t i = 0; i < n; i += 4) {
        uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
        z ^= z >> 31;
        for (size_t j = 0; j < 4 && i + j < n; j++) {
            float u = (float)((int32_t)((z >> (16 * j)) & 0xffffu) - 32768) * k;
            dst[i + j] = nv_f32_to_bf16(center + u);
        }
    }
}

/* Zero the q/k/v rows of the padding heads (the real checkpoint's "zero" heads). */
static void syn_zero_dummy(const nv_vision_config *v, uint16_t *qkv)
{
    size_t hd = (size_t)v->head_dim, H = (size_t)v->hidden_size;
    size_t P = (size_t)(v->num_heads + v->num_dummy_heads) * hd;
    for (size_t s = 0; s < 3; s++) {
        size_t r0 = s * P + (size_t)v->num_heads * hd;
        memset(qkv + r0 * H, 0, (P - (size_t)v->num_heads * hd) * H * sizeof(uint16_t));
    }
}

static nvlm_status syn_check(nvlm_context *ctx, const nv_config *c)
{
    const nv_vision_config *v = &c->vision;
    const nv_llm_config *l = &c->llm;
    const int vals[] = {v->hidden_size, v->intermediate_size, v->num_layers, v->num_heads,
                        v->head_dim, v->image_size, v->patch_size, v->num_channels,
                        l->hidden_size, l->intermediate_size, l->num_layers, l->num_heads,
                        l->num_kv_heads, l->head_dim, l->vocab_size, c->proj_input_size,
                        c->proj_hidden_size, c->proj_output_size};
    for (size_t i = 0; i < NV_ARRAY_LEN(vals); i++) {
        if (vals[i] <= 0) {
            return nv_error(ctx, NVLM_ERR_INVALID_ARGUMENT,
                            "synthetic model: config size #%zu is %d, must be positive", i,
                            vals[i]);
        }
    }
    if (v->num_dummy_heads < 0 || v->image_size % v->patch_size != 0 ||
        c->proj_output_size != l->hidden_size) {
        return nv_error(ctx, NVLM_ERR_INVALID_ARGUMENT,
                        "synthetic model: inconsistent config (dummy heads, image/patch size or "
                        "projector output)");
    }
    return NVLM_OK;
}

nvlm_status nv_model_synthetic(nvlm_context *ctx, const nv_config *cfg, uint64_t seed,
                               nvlm_model **out)
{
    if (ctx == NULL || cfg == NULL || out == NULL) {
        return nv_error(ctx, NVLM_ERR_INVALID_ARGUMENT, "nv_model_synthetic: NULL argument");
    }
    *out = NULL;
    NVLM_TRY(syn_check(ctx, cfg));
    syn_list L = {NULL, 0, nv_layout_count(cfg)};
    L.v = nv_alloc_array(ctx, L.cap, sizeof *L.v);
    if (L.v == NULL) {
        return nv_error(ctx, NVLM_ERR_OUT_OF_MEMORY, "out of memory for the synthetic model");
    }
    nv_layout_tensors(cfg, syn_collect, &L);

    /* Sizes, each tensor 64-byte aligned in one block. */
    size_t total = 0;
    uint64_t n_params = 0;
    for (size_t i = 0; i < L.n; i++) {
        size_t ne = 1, bytes;
        for (int d = 0; d < L.v[i].ndim; d++) {
            if (!nv_mul_size(ne, (size_t)L.v[i].shape[d], &ne)) {
                ne = SIZE_MAX;
                break;
            }
        }
        if (ne == SIZE_MAX || !nv_mul_size(ne, 2, &bytes) || !nv_add_size(bytes, 63, &bytes) ||
            !nv_add_size(total, bytes & ~(size_t)63, &total)) {
            nv_free(ctx, L.v);
            return nv_error(ctx, NVLM_ERR_LIMIT, "synthetic model: size overflows");
        }
        n_params += ne;
    }

    nvlm_model *m = nv_calloc(ctx, 1, sizeof *m);
    if (m == NULL) {
        nv_free(ctx, L.v);
        return nv_error(ctx, NVLM_ERR_OUT_OF_MEMORY, "out of memory for the synthetic model");
    }
    nv_handle_init(&m->h, NV_MAGIC_MODEL, ctx);
    m->cfg = *cfg;
    m->mode = NVLM_LOAD_FULL;
    m->dir = nv_strdup(ctx, "(synthetic)");
    m->mem_weights = nv_calloc(ctx, L.n, sizeof *m->mem_weights);
    m->mem_block = nv_malloc(ctx, total + 64);
    if (m->dir == NULL || m->mem_weights == NULL || m->mem_block == NULL) {
        nv_free(ctx, L.v);
        nvlm_model_free(m);
        return nv_error(ctx, NVLM_ERR_OUT_OF_MEMORY,
                        "out of memory for the synthetic model (%zu bytes of weights)", total);
    }
    char *base = (char *)(((uintptr_t)m->mem_block + 63u) & ~(uintptr_t)63u);
    size_t off = 0;
    uint64_t state = seed ^ 0x6a09e667f3bcc908ull;
    for (size_t i = 0; i < L.n; i++) {
        const nv_layout_tensor *t = &L.v[i];
        nv_weight *w = &m->mem_weights[i];
        w->name = nv_strdup(ctx, t->name);
        if (w->name == NULL) {
            nv_free(ctx, L.v);
            nvlm_model_free(m);
            return nv_error(ctx, NVLM_ERR_OUT_OF_MEMORY, "out of memory for the synthetic model");
        }
        m->n_mem_weights = i + 1;
        w->t.dtype = NV_BF16;
        w->t.ndim = t->ndim;
        w->t.device = -1;
        size_t ne = 1;
        for (int d = 0; d < t->ndim; d++) {
            w->t.shape[d] = t->shape[d];
            ne *= (size_t)t->shape[d];
        }
        w->t.data = base + off;
        off += (ne * 2 + 63) & ~(size_t)63;
        float center, scale;
        syn_init(t, &center, &scale);
        syn_fill(w->t.data, ne, center, scale, &state);
        size_t nl = strlen(t->name);
        if (cfg->vision.num_dummy_heads > 0 && nl > 15 &&
            strcmp(t->name + nl - 15, "attn.qkv.weight") == 0) {
            syn_zero_dummy(&cfg->vision, w->t.data);
        }
    }
    nv_free(ctx, L.v);
    m->n_params = n_params;
    m->weight_bytes = (uint64_t)n_params * 2u;

    nvlm_status st = nv_engine_init(m);
    if (st != NVLM_OK) {
        nv_error_copy(ctx, m, st);
        nvlm_model_free(m);
        return st;
    }
    *out = m;
    return NVLM_OK;
}
