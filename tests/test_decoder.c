/*
 * test_decoder.c - the Qwen2 decoder on the tiny model against the reference goldens, for every
 * case: golden prompt ids (+ golden proj_out spliced over <|vision_pad|>) -> batched prefill ->
 * last 8 logits; then 16 teacher-forced greedy steps over the KV cache, each step's logits and
 * token compared. case3 also checks the input embeddings, each layer's output and the final
 * norm. Also: a bf16 KV cache, chunked prefill equals one pass, and the context limit.
 */
#include "eng_golden.h"

typedef struct dec_env {
    nv_engine *e;
    nv_exec *ex;
    nvlm_context *ctx;
} dec_env;

/* Prefills ids (img rows from `proj` when given) in chunks of at most `chunk` tokens; the
 * logits of the last n_logits rows of the final chunk land in logits. */
static nvlm_status prefill(dec_env *d, nv_arena *ar, dec_kv *kv, const int32_t *ids, size_t n,
                           const float *proj, int chunk, int n_logits, float *logits,
                           dec_trace *trace)
{
    const dec_weights *w = &d->e->dec;
    int image_id = d->e->image_token_id;
    size_t n_img_rows = 0;
    for (size_t i = 0; i < n; i++) {
        n_img_rows += ids[i] == image_id;
    }
    NVLM_TRY(dec_kv_reserve(d->ex, kv, kv->n + (int64_t)n));
    size_t rows_bytes = nv_arena_size(n_img_rows * (size_t)w->D);
    NVLM_TRY(nv_arena_reserve(ar, rows_bytes + dec_arena_bytes(w, chunk, n_logits)));
    float *img = NULL;
    if (n_img_rows > 0) {
        img = nv_arena_floats(ar, n_img_rows * (size_t)w->D);
        memcpy(img, proj, n_img_rows * (size_t)w->D * sizeof(float));
    }
    size_t mark = nv_arena_mark(ar);
    int32_t *pos = malloc((n + 1) * sizeof(int32_t));
    int32_t *row = malloc((n + 1) * sizeof(int32_t));
    size_t seen = 0;
    nvlm_status st = NVLM_OK;
    for (size_t c0 = 0; c0 < n && st == NVLM_OK; c0 += (size_t)chunk) {
        int m = (int)NV_MIN((size_t)chunk, n - c0);
        int k = 0;
        for (int i = 0; i < m; i++) {
            if (ids[c0 + i] == image_id) {
                pos[k] = i;
                row[k] = (int32_t)seen++;
                k++;
            }
        }
        bool last = c0 + (size_t)m == n;
        nv_arena_rewind(ar, mark);
        st = dec_forward(d->ex, ar, w, kv, ids + c0, m, img, pos, row, k, last ? n_logits : 0,
                         last ? logits : NULL, last ? trace : NULL);
    }
    free(pos);
    free(row);
    return st;
}

/* One decode step of `token`; logits of it into `logits`. */
static nvlm_status step(dec_env *d, nv_arena *ar, dec_kv *kv, int32_t token, float *logits)
{
    NVLM_TRY(dec_kv_reserve(d->ex, kv, kv->n + 1));
    nv_arena_rewind(ar, 0);
    return dec_forward(d->ex, ar, &d->e->dec, kv, &token, 1, NULL, NULL, NULL, 0, 1, logits,
                       NULL);
}

static void run_case(dec_env *d, const char *name, nv_dtype kv_type, double logit_atol,
                     int chunk)
{
    const dec_weights *w = &d->e->dec;
    nv_st_file *f = eg_open(d->ctx, name);
    size_t n = 0;
    size_t n_steps = 0;
    int32_t *ids = eg_ids(f, "prompt_ids", &n);
    int32_t *steps = eg_ids(f, "step_tokens", &n_steps);
    const nv_tensor *pl = eg_tensor(f, "prefill_logits_last8", NV_F32);
    const nv_tensor *sl = eg_tensor(f, "step_logits", NV_F32);
    const nv_weight *po = nv_st_find(f, "proj_out");
    const nv_weight *emb = nv_st_find(f, "llm_input_embeds");
    const nv_weight *lay = nv_st_find(f, "llm_layer_outputs");
    const nv_weight *fin = nv_st_find(f, "llm_final_norm");
    if (ids == NULL || steps == NULL || pl == NULL || sl == NULL) {
        free(ids);
        free(steps);
        nv_st_close(f);
        return;
    }
    bool exact = kv_type == NV_F32 && chunk == DEC_MAX_BATCH;
    size_t V = (size_t)w->vocab;
    size_t hD = n * (size_t)w->D;
    dec_trace tr = {0};
    if (exact && emb != NULL) {
        tr.embeds = malloc(hD * sizeof(float));
        tr.layers = malloc((size_t)w->n_layers * hD * sizeof(float));
        tr.final_norm = malloc(hD * sizeof(float));
    }
    dec_kv kv;
    nv_arena ar = {.ex = d->ex};
    float *logits = malloc(8 * V * sizeof(float));
    CHECK_OK(dec_kv_init(d->ex, w, &kv, kv_type, w->max_pos));
    nvlm_status st = prefill(d, &ar, &kv, ids, n, po != NULL ? po->t.data : NULL, chunk, 8,
                             logits, exact && emb != NULL ? &tr : NULL);
    CHECK(st == NVLM_OK, "%s prefill -> %d", name, (int)st);
    char what[128];
    if (st == NVLM_OK && tr.embeds != NULL) {
        eg_close("case3 llm_input_embeds", tr.embeds, emb->t.data, hD, 2e-4);
        for (int l = 0; l < w->n_layers; l++) {
            snprintf(what, sizeof what, "case3 llm layer %d output", l);
            eg_close(what, tr.layers + (size_t)l * hD, (const float *)lay->t.data + l * hD, hD,
                     2e-4);
        }
        eg_close("case3 llm_final_norm", tr.final_norm, fin->t.data, hD, 2e-4);
    }
    if (st == NVLM_OK) {
        snprintf(what, sizeof what, "%s%s prefill_logits_last8", name,
                 kv_type == NV_BF16 ? " (bf16 kv)" : "");
        eg_close(what, logits, pl->data, 8 * V, logit_atol);
    }
    /* Teacher-forced greedy: step i's logits choose token i, which is fed for step i + 1. */
    const float *cur = logits + 7 * V;
    float *next = malloc(V * sizeof(float));
    int tok_ok = 0;
    for (size_t i = 0; i < n_steps && st == NVLM_OK; i++) {
        snprintf(what, sizeof what, "%s%s step %zu logits", name,
                 kv_type == NV_BF16 ? " (bf16 kv)" : "", i);
        if (i == 0 || i + 1 == n_steps || !exact) {
            eg_close(what, cur, (const float *)sl->data + i * V, V, logit_atol);
        } else {
            /* quiet comparison in the middle: count failures only */
            size_t bad = 0;
            const float *want = (const float *)sl->data + i * V;
            for (size_t k = 0; k < V; k++) {
                bad += !(fabs(cur[k] - want[k]) <= logit_atol + EG_RTOL * fabs(want[k]));
            }
            CHECK(bad == 0, "%s: %zu values outside tolerance", what, bad);
        }
        int32_t t = eg_argmax(cur, (int)V);
        tok_ok += t == steps[i];
        st = step(d, &ar, &kv, steps[i], next);
        memcpy(logits, next, V * sizeof(float));
        cur = logits;
    }
    snprintf(what, sizeof what, "%s%s greedy tokens", name, kv_type == NV_BF16 ? " (bf16 kv)" : "");
    CHECK(tok_ok == (int)n_steps, "%s: %d of %zu match", what, tok_ok, n_steps);
    CHECK_EQ_INT(kv.n, (int64_t)(n + n_steps), "cache length after the steps");
    free(next);
    free(logits);
    free(tr.embeds);
    free(tr.layers);
    free(tr.final_norm);
    dec_kv_free(d->ex, &kv);
    nv_arena_release(&ar);
    free(ids);
    free(steps);
    nv_st_close(f);
}

static void test_context_full(dec_env *d)
{
    tu_section("decoder: context limit");
    const dec_weights *w = &d->e->dec;
    dec_kv kv;
    CHECK_OK(dec_kv_init(d->ex, w, &kv, NV_F32, 4));
    CHECK_OK(dec_kv_reserve(d->ex, &kv, 4));
    CHECK_EQ_INT(kv.cap, 4, "capacity capped at n_ctx");
    CHECK_EQ_INT(dec_kv_reserve(d->ex, &kv, 5), NVLM_ERR_CONTEXT_FULL, "5 rows in a 4 context");
    nv_arena ar = {.ex = d->ex};
    CHECK_OK(nv_arena_reserve(&ar, dec_arena_bytes(w, 4, 1)));
    int32_t ids[4] = {1, 2, 3, 4};
    float *logits = malloc((size_t)w->vocab * sizeof(float));
    CHECK_OK(dec_forward(d->ex, &ar, w, &kv, ids, 4, NULL, NULL, NULL, 0, 1, logits, NULL));
    nv_arena_rewind(&ar, 0);
    CHECK_EQ_INT(dec_forward(d->ex, &ar, w, &kv, ids, 1, NULL, NULL, NULL, 0, 1, logits, NULL),
                 NVLM_ERR_INTERNAL, "forward past the reserved cache is refused");
    CHECK_EQ_INT(kv.n, 4, "cache untouched");
    int32_t bad = w->vocab;
    kv.n = 0;
    nv_arena_rewind(&ar, 0);
    CHECK_EQ_INT(dec_forward(d->ex, &ar, w, &kv, &bad, 1, NULL, NULL, NULL, 0, 1, logits, NULL),
                 NVLM_ERR_INVALID_ARGUMENT, "token id out of range");
    free(logits);
    nv_arena_release(&ar);
    dec_kv_free(d->ex, &kv);
}

/* ---- grouped weights: a CPU backend that groups (the path of CUDA's weight_load_group) ---- */

/* n tensors of one dtype as one owned weight: matrices keep their dtype, vectors become f32
 * (as the CPU backend lays out its weights). */
static nvlm_status grp_load(nv_backend *be, const nv_tensor *srcs, int n, nv_bweight *out,
                            bool *grouped, void *eh)
{
    (void)eh;
    memset(out, 0, sizeof *out);
    *grouped = false;
    int64_t rows = 0;
    int64_t K = srcs[0].ndim == 2 ? srcs[0].shape[1] : 1;
    for (int i = 0; i < n; i++) {
        rows += srcs[i].shape[0];
    }
    nv_dtype dt = srcs[0].ndim == 2 ? srcs[0].dtype : NV_F32;
    size_t es = nv_dtype_size(dt);
    char *p = nv_alloc_array(be->ctx, (size_t)(rows * K), es);
    if (p == NULL) {
        return NVLM_ERR_OUT_OF_MEMORY;
    }
    size_t at = 0;
    for (int i = 0; i < n; i++) {
        size_t cnt = (size_t)(srcs[i].shape[0] * K);
        if (dt == srcs[i].dtype) {
            memcpy(p + at * es, srcs[i].data, cnt * es);
        } else {
            nv_to_f32((float *)(p + at * es), srcs[i].data, srcs[i].dtype, cnt);
        }
        at += cnt;
    }
    out->t = srcs[0];
    out->t.shape[0] = rows;
    out->t.dtype = dt;
    out->t.data = p;
    out->owned = 1;
    *grouped = true;
    return NVLM_OK;
}

static void test_grouped(dec_env *d, nvlm_model *m)
{
    tu_section("decoder: grouped q|k|v and gate|up weights (CPU backend that groups)");
    nv_engine *e = d->e;
    const nv_backend_ops *plain = e->be->ops;
    static nv_backend_ops grp;
    grp = *plain;
    grp.weight_load_group = grp_load;
    CHECK(plain->silu_mul_cat != NULL && plain->add_rmsnorm != NULL && plain->rope_store,
          "the CPU backend has the fused ops");
    dec_free(e);
    e->be->ops = &grp;
    CHECK_OK(dec_init(e, m));
    CHECK(e->dec.grouped && e->dec.layers != NULL && e->dec.layers[0].grouped &&
              e->dec.layers[0].q.t.data == NULL && e->dec.layers[0].qkv.t.data != NULL,
          "layers carry grouped weights only");
    if (e->dec.layers != NULL) {
        const dec_weights *w = &e->dec;
        CHECK_EQ_INT(w->layers[0].qkv.t.shape[0],
                     (int64_t)(w->n_heads + 2 * w->n_kv_heads) * w->head_dim, "q|k|v rows");
        CHECK_EQ_INT(w->layers[0].gate_up.t.shape[0], 2 * (int64_t)w->I, "gate|up rows");
    }
    /* The goldens, through q, k, v as column blocks of one output and silu_mul_cat. */
    run_case(d, "case3_text_only", NV_F32, 2e-4, DEC_MAX_BATCH);
    run_case(d, "case1_multitile", NV_F32, 2e-4, 100);
    run_case(d, "case3_text_only", NV_BF16, 1e-1, DEC_MAX_BATCH);
    dec_free(e);
    e->be->ops = plain;
    CHECK_OK(dec_init(e, m));
    CHECK(!e->dec.grouped, "the plain backend does not group");
}

int main(void)
{
    nvlm_context *ctx = NULL;
    nvlm_model *m = eg_load_model(&ctx, 2);
    nv_engine *e = m != NULL ? m->engine : NULL;
    if (e != NULL) {
        dec_env d = {.e = e, .ctx = ctx};
        CHECK_OK(e->be->ops->exec_create(e->be, 2, m, &d.ex));
        CHECK_EQ_INT(e->image_token_id, 4011, "<|vision_pad|> id");
        if (d.ex != NULL) {
            for (size_t i = 0; i < NV_ARRAY_LEN(eg_cases); i++) {
                tu_section(eg_cases[i]);
                run_case(&d, eg_cases[i], NV_F32, 2e-4, DEC_MAX_BATCH);
            }
            tu_section("decoder: chunked prefill (100-token chunks) = one pass");
            run_case(&d, "case2_single_tile", NV_F32, 2e-4, 100);
            tu_section("decoder: bf16 KV cache (looser logits, same tokens)");
            run_case(&d, "case3_text_only", NV_BF16, 1e-1, DEC_MAX_BATCH);
            test_context_full(&d);
            test_grouped(&d, m);
            e->be->ops->exec_free(d.ex);
        }
    }
    nvlm_model_free(m);
    nvlm_context_free(ctx);
    return tu_done();
}
