/*
 * layout.c - the tensor set of the NVLM-D checkpoint layout (spec §2) for a config, in one
 * place: the loader checks a checkpoint against it (model_load.c), the synthetic model fills it
 * with random values (synthetic.c), the parameter count is its sum, and each tensor's
 * tensor-parallel cut gives the per-rank slices (tp/plan.c).
 */
#include "model.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

typedef struct emitter {
    nv_layout_fn fn;
    void *u;
    nvlm_status st;
} emitter;

static void emit(emitter *e, nv_tensor_role role, bool optional, nv_tp_cut tp, int ndim,
                 const int64_t *shape, const char *fmt, ...) __attribute__((format(printf, 7, 8)));

static void emit(emitter *e, nv_tensor_role role, bool optional, nv_tp_cut tp, int ndim,
                 const int64_t *shape, const char *fmt, ...)
{
    if (e->st != NVLM_OK) {
        return;
    }
    nv_layout_tensor t;
    memset(&t, 0, sizeof t);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(t.name, sizeof t.name, fmt, ap);
    va_end(ap);
    t.ndim = ndim;
    for (int i = 0; i < ndim; i++) {
        t.shape[i] = shape[i];
    }
    t.optional = optional;
    t.role = role;
    t.tp = tp;
    e->st = e->fn(e->u, &t);
}

nvlm_status nv_layout_tensors(const nv_config *c, nv_layout_fn fn, void *u)
{
    const nv_vision_config *v = &c->vision;
    const nv_llm_config *l = &c->llm;
    emitter e = {fn, u, NVLM_OK};
    const nv_tensor_role LIN = NV_ROLE_LINEAR, SMALL = NV_ROLE_SMALL, NORM = NV_ROLE_NORM;
    /* Tensor-parallel cuts: rows (dim 0) follow a part for column-parallel layers, columns
     * (dim 1) for row-parallel ones; the fused ViT qkv has three row blocks cut alike. */
    const nv_tp_cut WHOLE = {NV_TP_WHOLE, false, 1};
    const nv_tp_cut VIT_QKV = {NV_TP_VIT_HEADS, false, 3};
    const nv_tp_cut VIT_HEADS_R = {NV_TP_VIT_HEADS, false, 1};
    const nv_tp_cut VIT_HEADS_C = {NV_TP_VIT_HEADS, true, 1};
    const nv_tp_cut VIT_MLP_R = {NV_TP_VIT_MLP, false, 1};
    const nv_tp_cut VIT_MLP_C = {NV_TP_VIT_MLP, true, 1};
    const nv_tp_cut PROJ_R = {NV_TP_PROJ_HIDDEN, false, 1};
    const nv_tp_cut PROJ_C = {NV_TP_PROJ_HIDDEN, true, 1};
    const nv_tp_cut HEADS_R = {NV_TP_LLM_HEADS, false, 1};
    const nv_tp_cut HEADS_C = {NV_TP_LLM_HEADS, true, 1};
    const nv_tp_cut KV_R = {NV_TP_LLM_KV_HEADS, false, 1};
    const nv_tp_cut MLP_R = {NV_TP_LLM_MLP, false, 1};
    const nv_tp_cut MLP_C = {NV_TP_LLM_MLP, true, 1};
    const nv_tp_cut VOCAB_R = {NV_TP_VOCAB, false, 1};

    int64_t H = v->hidden_size;
    int64_t P = (int64_t)(v->num_heads + v->num_dummy_heads) * v->head_dim;
    int64_t I = v->intermediate_size;
    int64_t g = v->image_size / v->patch_size;
    int64_t p = v->patch_size;
    int64_t ch = v->num_channels;
    emit(&e, SMALL, false, WHOLE, 3, (int64_t[]){1, 1, H},
         "vision_model.embeddings.class_embedding");
    emit(&e, LIN, false, WHOLE, 4, (int64_t[]){H, ch, p, p},
         "vision_model.embeddings.patch_embedding.weight");
    emit(&e, SMALL, false, WHOLE, 1, (int64_t[]){H},
         "vision_model.embeddings.patch_embedding.bias");
    emit(&e, SMALL, false, WHOLE, 3, (int64_t[]){1, g * g + 1, H},
         "vision_model.embeddings.position_embedding");
    for (int i = 0; i < v->num_layers; i++) {
        const char *f = "vision_model.encoder.layers.%d.%s";
        emit(&e, LIN, false, VIT_QKV, 2, (int64_t[]){3 * P, H}, f, i, "attn.qkv.weight");
        if (v->qkv_bias) {
            emit(&e, SMALL, false, VIT_QKV, 1, (int64_t[]){3 * P}, f, i, "attn.qkv.bias");
        }
        emit(&e, NORM, false, VIT_HEADS_R, 1, (int64_t[]){P}, f, i, "attn.q_norm.weight");
        emit(&e, NORM, false, VIT_HEADS_R, 1, (int64_t[]){P}, f, i, "attn.k_norm.weight");
        emit(&e, LIN, false, VIT_HEADS_C, 2, (int64_t[]){H, P}, f, i, "attn.proj.weight");
        emit(&e, SMALL, false, WHOLE, 1, (int64_t[]){H}, f, i, "attn.proj.bias");
        emit(&e, LIN, false, VIT_MLP_R, 2, (int64_t[]){I, H}, f, i, "mlp.fc1.weight");
        emit(&e, SMALL, false, VIT_MLP_R, 1, (int64_t[]){I}, f, i, "mlp.fc1.bias");
        emit(&e, LIN, false, VIT_MLP_C, 2, (int64_t[]){H, I}, f, i, "mlp.fc2.weight");
        emit(&e, SMALL, false, WHOLE, 1, (int64_t[]){H}, f, i, "mlp.fc2.bias");
        emit(&e, NORM, false, WHOLE, 1, (int64_t[]){H}, f, i, "norm1.weight");
        emit(&e, NORM, false, WHOLE, 1, (int64_t[]){H}, f, i, "norm2.weight");
        emit(&e, NV_ROLE_LAYER_SCALE, false, WHOLE, 1, (int64_t[]){H}, f, i, "ls1");
        emit(&e, NV_ROLE_LAYER_SCALE, false, WHOLE, 1, (int64_t[]){H}, f, i, "ls2");
    }

    int64_t pi = c->proj_input_size, ph = c->proj_hidden_size, po = c->proj_output_size;
    emit(&e, NORM, false, WHOLE, 1, (int64_t[]){pi}, "mlp1.0.weight");
    emit(&e, SMALL, false, WHOLE, 1, (int64_t[]){pi}, "mlp1.0.bias");
    emit(&e, LIN, false, PROJ_R, 2, (int64_t[]){ph, pi}, "mlp1.1.weight");
    emit(&e, LIN, false, PROJ_C, 2, (int64_t[]){po, ph}, "mlp1.3.weight");

    int64_t E = l->hidden_size;
    int64_t Q = (int64_t)l->num_heads * l->head_dim;
    int64_t K = (int64_t)l->num_kv_heads * l->head_dim;
    int64_t F = l->intermediate_size;
    int64_t V = l->vocab_size;
    emit(&e, NV_ROLE_EMBEDDING, false, WHOLE, 2, (int64_t[]){V, E},
         "language_model.model.embed_tokens.weight");
    emit(&e, NORM, false, WHOLE, 1, (int64_t[]){E}, "language_model.model.norm.weight");
    emit(&e, LIN, l->tie_word_embeddings, VOCAB_R, 2, (int64_t[]){V, E},
         "language_model.lm_head.weight");
    for (int i = 0; i < l->num_layers; i++) {
        const char *f = "language_model.model.layers.%d.%s";
        emit(&e, NORM, false, WHOLE, 1, (int64_t[]){E}, f, i, "input_layernorm.weight");
        emit(&e, NORM, false, WHOLE, 1, (int64_t[]){E}, f, i,
             "post_attention_layernorm.weight");
        emit(&e, LIN, false, HEADS_R, 2, (int64_t[]){Q, E}, f, i, "self_attn.q_proj.weight");
        emit(&e, SMALL, false, HEADS_R, 1, (int64_t[]){Q}, f, i, "self_attn.q_proj.bias");
        emit(&e, LIN, false, KV_R, 2, (int64_t[]){K, E}, f, i, "self_attn.k_proj.weight");
        emit(&e, SMALL, false, KV_R, 1, (int64_t[]){K}, f, i, "self_attn.k_proj.bias");
        emit(&e, LIN, false, KV_R, 2, (int64_t[]){K, E}, f, i, "self_attn.v_proj.weight");
        emit(&e, SMALL, false, KV_R, 1, (int64_t[]){K}, f, i, "self_attn.v_proj.bias");
        emit(&e, LIN, false, HEADS_C, 2, (int64_t[]){E, Q}, f, i, "self_attn.o_proj.weight");
        emit(&e, LIN, false, MLP_R, 2, (int64_t[]){F, E}, f, i, "mlp.gate_proj.weight");
        emit(&e, LIN, false, MLP_R, 2, (int64_t[]){F, E}, f, i, "mlp.up_proj.weight");
        emit(&e, LIN, false, MLP_C, 2, (int64_t[]){E, F}, f, i, "mlp.down_proj.weight");
    }
    return e.st;
}

static nvlm_status count_fn(void *u, const nv_layout_tensor *t)
{
    (void)t;
    (*(size_t *)u)++;
    return NVLM_OK;
}

size_t nv_layout_count(const nv_config *c)
{
    size_t n = 0;
    nv_layout_tensors(c, count_fn, &n);
    return n;
}

static nvlm_status params_fn(void *u, const nv_layout_tensor *t)
{
    if (!t->optional) {
        uint64_t ne = 1;
        for (int d = 0; d < t->ndim; d++) {
            ne *= (uint64_t)t->shape[d];
        }
        *(uint64_t *)u += ne;
    }
    return NVLM_OK;
}

uint64_t nv_layout_params(const nv_config *c)
{
    uint64_t n = 0;
    nv_layout_tensors(c, params_fn, &n);
    return n;
}
