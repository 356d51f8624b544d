/*
 * synthetic.c - an NVLM-D model built in memory from a config alone (benchmarks, tests): every
 * tensor of the checkpoint layout (spec §2, the same names and shapes model_load.c expects),
 * bf16, filled with seeded uniform noise of a sensible scale (linear weights +-1/sqrt(fan_in),
 * norm weights ~1, biases and embeddings small, layer scales 0.1, dummy-head q/k/v rows zero as
 * in the real checkpoint), then handed to the engine like a loaded model.
 */
#include "model.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

typedef struct syn_tensor {
    char name[96];
    int ndim;
    int64_t shape[4];
    float scale;      /* uniform in center +- scale */
    float center;
} syn_tensor;

typedef struct syn_list {
    syn_tensor *v;
    size_t n, cap;
} syn_list;

static void syn_add(syn_list *L, float center, float scale, int ndim, const int64_t *shape,
                    const char *fmt, ...) __attribute__((format(printf, 6, 7)));

static void syn_add(syn_list *L, float center, float scale, int ndim, const int64_t *shape,
                    const char *fmt, ...)
{
    if (L->v == NULL || L->n >= L->cap) {
        L->n++; /* counting pass */
        return;
    }
    syn_tensor *t = &L->v[L->n++];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(t->name, sizeof t->name, fmt, ap);
    va_end(ap);
    t->ndim = ndim;
    for (int i = 0; i < ndim; i++) {
        t->shape[i] = shape[i];
    }
    t->center = center;
    t->scale = scale;
}

static float inv_sqrt(int64_t fan_in)
{
    return fan_in > 0 ? 1.0f / sqrtf((float)fan_in) : 1.0f;
}

/* The tensor set of spec §2 for cfg (mirrors model_load.c's expected list). */
static void syn_build(const nv_config *c, syn_list *L)
{
    const nv_vision_config *v = &c->vision;
    const nv_llm_config *l = &c->llm;
    int64_t H = v->hidden_size;
    int64_t P = (int64_t)(v->num_heads + v->num_dummy_heads) * v->head_dim;
    int64_t I = v->intermediate_size;
    int64_t g = v->image_size / v->patch_size;
    int64_t p = v->patch_size;
    int64_t ch = v->num_channels;
    syn_add(L, 0.0f, 0.02f, 3, (int64_t[]){1, 1, H}, "vision_model.embeddings.class_embedding");
    syn_add(L, 0.0f, inv_sqrt(ch * p * p), 4, (int64_t[]){H, ch, p, p},
            "vision_model.embeddings.patch_embedding.weight");
    syn_add(L, 0.0f, 0.02f, 1, (int64_t[]){H}, "vision_model.embeddings.patch_embedding.bias");
    syn_add(L, 0.0f, 0.02f, 3, (int64_t[]){1, g * g + 1, H},
            "vision_model.embeddings.position_embedding");
    for (int i = 0; i < v->num_layers; i++) {
        const char *f = "vision_model.encoder.layers.%d.%s";
        syn_add(L, 0.0f, inv_sqrt(H), 2, (int64_t[]){3 * P, H}, f, i, "attn.qkv.weight");
        if (v->qkv_bias) {
            syn_add(L, 0.0f, 0.02f, 1, (int64_t[]){3 * P}, f, i, "attn.qkv.bias");
        }
        syn_add(L, 1.0f, 0.05f, 1, (int64_t[]){P}, f, i, "attn.q_norm.weight");
        syn_add(L, 1.0f, 0.05f, 1, (int64_t[]){P}, f, i, "attn.k_norm.weight");
        syn_add(L, 0.0f, inv_sqrt(P), 2, (int64_t[]){H, P}, f, i, "attn.proj.weight");
        syn_add(L, 0.0f, 0.02f, 1, (int64_t[]){H}, f, i, "attn.proj.bias");
        syn_add(L, 0.0f, inv_sqrt(H), 2, (int64_t[]){I, H}, f, i, "mlp.fc1.weight");
        syn_add(L, 0.0f, 0.02f, 1, (int64_t[]){I}, f, i, "mlp.fc1.bias");
        syn_add(L, 0.0f, inv_sqrt(I), 2, (int64_t[]){H, I}, f, i, "mlp.fc2.weight");
        syn_add(L, 0.0f, 0.02f, 1, (int64_t[]){H}, f, i, "mlp.fc2.bias");
        syn_add(L, 1.0f, 0.05f, 1, (int64_t[]){H}, f, i, "norm1.weight");
        syn_add(L, 1.0f, 0.05f, 1, (int64_t[]){H}, f, i, "norm2.weight");
        syn_add(L, 0.1f, 0.01f, 1, (int64_t[]){H}, f, i, "ls1");
        syn_add(L, 0.1f, 0.01f, 1, (int64_t[]){H}, f, i, "ls2");
    }
    int64_t pi = c->proj_input_size, ph = c->proj_hidden_size, po = c->proj_output_size;
    syn_add(L, 1.0f, 0.05f, 1, (int64_t[]){pi}, "mlp1.0.weight");
    syn_add(L, 0.0f, 0.02f, 1, (int64_t[]){pi}, "mlp1.0.bias");
    syn_add(L, 0.0f, inv_sqrt(pi), 2, (int64_t[]){ph, pi}, "mlp1.1.weight");
    syn_add(L, 0.0f, inv_sqrt(ph), 2, (int64_t[]){po, ph}, "mlp1.3.weight");

    int64_t E = l->hidden_size;
    int64_t Q = (int64_t)l->num_heads * l->head_dim;
    int64_t K = (int64_t)l->num_kv_heads * l->head_dim;
    int64_t F = l->intermediate_size;
    int64_t V = l->vocab_size;
    syn_add(L, 0.0f, 0.035f, 2, (int64_t[]){V, E}, "language_model.model.embed_tokens.weight");
    syn_add(L, 1.0f, 0.05f, 1, (int64_t[]){E}, "language_model.model.norm.weight");
    if (!l->tie_word_embeddings) {
        syn_add(L, 0.0f, inv_sqrt(E), 2, (int64_t[]){V, E}, "language_model.lm_head.weight");
    }
    for (int i = 0; i < l->num_layers; i++) {
        const char *f = "language_model.model.layers.%d.%s";
        syn_add(L, 1.0f, 0.05f, 1, (int64_t[]){E}, f, i, "input_layernorm.weight");
        syn_add(L, 1.0f, 0.05f, 1, (int64_t[]){E}, f, i, "post_attention_layernorm.weight");
        syn_add(L, 0.0f, inv_sqrt(E), 2, (int64_t[]){Q, E}, f, i, "self_attn.q_proj.weight");
        syn_add(L, 0.0f, 0.02f, 1, (int64_t[]){Q}, f, i, "self_attn.q_proj.bias");
        syn_add(L, 0.0f, inv_sqrt(E), 2, (int64_t[]){K, E}, f, i, "self_attn.k_proj.weight");
        syn_add(L, 0.0f, 0.02f, 1, (int64_t[]){K}, f, i, "self_attn.k_proj.bias");
        syn_add(L, 0.0f, inv_sqrt(E), 2, (int64_t[]){K, E}, f, i, "self_attn.v_proj.weight");
        syn_add(L, 0.0f, 0.02f, 1, (int64_t[]){K}, f, i, "self_attn.v_proj.bias");
        syn_add(L, 0.0f, inv_sqrt(Q), 2, (int64_t[]){E, Q}, f, i, "self_attn.o_proj.weight");
        syn_add(L, 0.0f, inv_sqrt(E), 2, (int64_t[]){F, E}, f, i, "mlp.gate_proj.weight");
        syn_add(L, 0.0f, inv_sqrt(E), 2, (int64_t[]){F, E}, f, i, "mlp.up_proj.weight");
        syn_add(L, 0.0f, inv_sqrt(F), 2, (int64_t[]){E, F}, f, i, "mlp.down_proj.weight");
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
    syn_list L = {NULL, 0, 0};
    syn_build(cfg, &L);
    L.cap = L.n;
    L.v = nv_alloc_array(ctx, L.cap, sizeof *L.v);
    if (L.v == NULL) {
        return nv_error(ctx, NVLM_ERR_OUT_OF_MEMORY, "out of memory for the synthetic model");
    }
    L.n = 0;
    syn_build(cfg, &L);

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
        const syn_tensor *t = &L.v[i];
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
        syn_fill(w->t.data, ne, t->center, t->scale, &state);
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
