/*
 * test_synthetic.c - the in-memory synthetic model (src/synthetic.c) over the tiny fixture's
 * config: every tensor the loader expects, with the loader's shapes, values in the documented
 * ranges, reproducible from the seed, and accepted by the engine (a session runs on it).
 */
#include "model.h"
#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int range_ok(const nv_weight *w, float lo, float hi, double *mean)
{
    size_t n = (size_t)nv_tensor_nelem(&w->t);
    const uint16_t *p = w->t.data;
    double s = 0;
    for (size_t i = 0; i < n; i++) {
        float f = nv_bf16_to_f32(p[i]);
        if (!(f >= lo && f <= hi)) {
            return 0;
        }
        s += f;
    }
    *mean = s / (double)n;
    return 1;
}

int main(void)
{
    nvlm_context *ctx = NULL;
    CHECK_OK(tu_context_create(&ctx));
    size_t len = 0;
    char *json = tu_read_file("tests/data/tiny-nvlm-d/config.json", &len);
    CHECK(json != NULL, "tiny config readable");
    if (json == NULL) {
        return tu_done();
    }
    nv_config cfg;
    memset(&cfg, 0, sizeof cfg);
    CHECK_OK(nv_config_parse(&cfg, json, len, ctx));
    free(json);

    tu_section("build");
    nvlm_model *m = NULL, *m2 = NULL, *m3 = NULL;
    CHECK_OK(nv_model_synthetic(ctx, &cfg, 7, &m));
    CHECK_OK(nv_model_synthetic(ctx, &cfg, 7, &m2));
    CHECK_OK(nv_model_synthetic(ctx, &cfg, 8, &m3));
    if (m == NULL || m2 == NULL || m3 == NULL) {
        nvlm_model_free(m);
        nvlm_model_free(m2);
        nvlm_model_free(m3);
        nvlm_context_free(ctx);
        return tu_done();
    }
    const nv_llm_config *l = &cfg.llm;
    const nv_vision_config *v = &cfg.vision;
    size_t want = 4 + 13 * (size_t)v->num_layers + (v->qkv_bias ? (size_t)v->num_layers : 0) + 4 +
                  2 + (l->tie_word_embeddings ? 0 : 1) + 12 * (size_t)l->num_layers;
    CHECK_EQ_INT(m->n_mem_weights, want, "tensor count (spec §2 set)");
    CHECK(m->engine != NULL, "engine initialised");

    tu_section("shapes (as model_load.c expects them)");
    struct {
        const char *name;
        int ndim;
        int64_t s0, s1;
    } cases[] = {
        {"language_model.model.embed_tokens.weight", 2, l->vocab_size, l->hidden_size},
        {"language_model.lm_head.weight", 2, l->vocab_size, l->hidden_size},
        {"language_model.model.layers.0.self_attn.k_proj.weight", 2,
         (int64_t)l->num_kv_heads * l->head_dim, l->hidden_size},
        {"language_model.model.layers.0.self_attn.q_proj.bias", 1,
         (int64_t)l->num_heads * l->head_dim, 0},
        {"language_model.model.layers.0.mlp.down_proj.weight", 2, l->hidden_size,
         l->intermediate_size},
        {"mlp1.1.weight", 2, cfg.proj_hidden_size, cfg.proj_input_size},
        {"mlp1.3.weight", 2, cfg.proj_output_size, cfg.proj_hidden_size},
        {"vision_model.encoder.layers.0.mlp.fc1.weight", 2, v->intermediate_size,
         v->hidden_size},
        {"vision_model.embeddings.patch_embedding.weight", 4, v->hidden_size, 3},
    };
    for (size_t i = 0; i < NV_ARRAY_LEN(cases); i++) {
        const nv_weight *w = nv_model_weight(m, cases[i].name);
        CHECK(w != NULL && w->t.dtype == NV_BF16 && w->t.ndim == cases[i].ndim &&
                  w->t.shape[0] == cases[i].s0 && (cases[i].ndim < 2 || w->t.shape[1] == cases[i].s1),
              "%s: bf16, shape", cases[i].name);
    }
    CHECK(nv_model_weight(m, "language_model.model.layers.99.mlp.up_proj.weight") == NULL,
          "no tensor beyond the config's layers");

    tu_section("values");
    double mean = 0;
    const nv_weight *w = nv_model_weight(m, "language_model.model.layers.1.mlp.gate_proj.weight");
    float b = 1.0f / sqrtf((float)l->hidden_size) * 1.004f;
    CHECK(w != NULL && range_ok(w, -b, b, &mean) && fabs(mean) < 0.01 * b * 10,
          "linear weight uniform within +-1/sqrt(fan_in), mean ~0 (%.3g)", mean);
    w = nv_model_weight(m, "language_model.model.layers.1.input_layernorm.weight");
    CHECK(w != NULL && range_ok(w, 0.94f, 1.06f, &mean) && fabs(mean - 1.0) < 0.02,
          "norm weight ~1 (mean %.4f)", mean);
    w = nv_model_weight(m, "vision_model.encoder.layers.0.ls1");
    CHECK(w != NULL && range_ok(w, 0.089f, 0.111f, &mean), "layer scale ~0.1");
    const nv_weight *a = nv_model_weight(m, "mlp1.1.weight");
    const nv_weight *a2 = nv_model_weight(m2, "mlp1.1.weight");
    const nv_weight *a3 = nv_model_weight(m3, "mlp1.1.weight");
    size_t bytes = (size_t)nv_tensor_nelem(&a->t) * 2;
    CHECK(memcmp(a->t.data, a2->t.data, bytes) == 0, "same seed, same weights");
    CHECK(memcmp(a->t.data, a3->t.data, bytes) != 0, "other seed, other weights");

    tu_section("engine runs it");
    nvlm_session *s = NULL;
    CHECK_OK(nvlm_session_create(m, NULL, &s));
    if (s != NULL) {
        int32_t ids[5] = {1, 17, 300, 2, 999};
        CHECK_OK(nvlm_session_feed(s, ids, 5, NULL, 0));
        size_t nv = 0;
        const float *lg = nvlm_session_logits(s, &nv);
        int finite = lg != NULL && nv == (size_t)l->vocab_size;
        double ss = 0;
        for (size_t i = 0; finite && i < nv; i++) {
            finite = isfinite(lg[i]);
            ss += (double)lg[i] * lg[i];
        }
        CHECK(finite && ss > 0, "logits finite and non-zero");
        nvlm_session_free(s);
    }

    tu_section("errors");
    nv_config bad = cfg;
    bad.llm.hidden_size = 0;
    nvlm_model *mb = NULL;
    CHECK_EQ_INT(nv_model_synthetic(ctx, &bad, 1, &mb), NVLM_ERR_INVALID_ARGUMENT,
                 "zero hidden size rejected");
    CHECK(mb == NULL && strlen(nvlm_last_error(ctx)) > 0, "no model, message on the context");
    CHECK_EQ_INT(nv_model_synthetic(ctx, NULL, 1, &mb), NVLM_ERR_INVALID_ARGUMENT, "NULL cfg");

    nvlm_model_free(m);
    nvlm_model_free(m2);
    nvlm_model_free(m3);
    nvlm_context_free(ctx);
    return tu_done();
}
