/*
 * test_precision.c - NVLM_PRECISION_FAST on the tiny model against an independent numpy model
 * of exactly this rounding (tests/oracle/fast_precision_logits.py ->
 * tests/data/fast/fast_logits.safetensors), for a text case and an image case, at 1 and 2
 * tensor-parallel ranks:
 * - stage-wise, element-wise within 1e-3 + 1e-4 |want| (FAST_STAGE_ATOL): every stage of the
 *   library fed the oracle's input of that stage (the ViT embeddings from the pixels, each ViT
 *   layer, the projector, each decoder layer as a session runs it: the prompt rows as one
 *   prefill pass, then each teacher-forced step row alone over the bf16 KV cache it built, and
 *   the head: final norm + lm_head on the oracle's last hidden state, one step row at a time,
 *   against the oracle's logits); a row may instead equal one of the oracle's own rounding-flip
 *   alternatives (see FAST_STAGE_ATOL);
 * - end to end, teacher-forced (prefill, then one step token at a time): logits within rel-L2
 *   1e-2 per step of the oracle (FAST_ORACLE_REL); against the f32 goldens rel-L2 per step at
 *   most 3e-2 and above 1e-5 (the rounding is really on), greedy tokens equal wherever the
 *   golden top-1/top-2 margin exceeds 0.1.
 * Plus the params rules (unknown precision refused, older struct_size = exact) and the matmul
 * op's rounding fallback.
 */
#include "eng_golden.h"

#include "cpu/kernels.h"
#include "cpu/matmul_impl.h"

#include <stddef.h>

#define FAST_FILE "tests/data/fast/fast_logits.safetensors"
/* End to end, fast-mode logits are only defined to about the bf16 rounding's own noise: a bf16
 * rounding is a step function, so two correct implementations whose f32 values differ by one
 * ulp before some rounding (a different summation order in attention, say) round a few inputs
 * one bf16 step apart, and through the layers that spreads to every later value. Measured on
 * this model: the oracle against itself with only its softmax sums in f64 moves by rel-L2
 * 3.6e-3 (max |diff| 0.05), this library against the oracle by at most 5.4e-3, fast against
 * exact by up to 1.1e-2. So end to end the bound is the per-step rel-L2, 2x the oracle's
 * self-spread plus margin; the element-wise bound is checked stage by stage (FAST_STAGE_ATOL),
 * where the oracle's input of each stage stops the spreading. */
#define FAST_ORACLE_REL 1e-2
/* The stage-wise bound: |got - want| <= FAST_STAGE_ATOL + EG_RTOL |want| element-wise. Even
 * with the oracle's input, a stage rounds its own intermediate values, and where such a value
 * lies within a few f32 ulps of the midpoint between two bf16 values the two implementations
 * can round it to different neighbours: that element's row then moves by one bf16 step of it
 * times the weights that follow (measured: up to 3.3x the bound, at the attention output of a
 * ViT or decoder layer, the projector's GELU output, and two exact ties at a ViT layer's
 * q/k/v input and GELU output). The oracle therefore also writes, for each stage, every row
 * that one such flip (an element within 128 f32 ulps of a midpoint, rounded the other way)
 * moves by more than half the bound, moved; a row outside the bound passes only when it is
 * within the bound of one of those alternatives of the same row. Every other row, and every
 * element of a row the alternatives do not explain, is held to the bound. */
#define FAST_STAGE_ATOL 1e-3

static nvlm_model *load_fast(nvlm_context **ctx_out, int n_threads, int tp)
{
    nvlm_context_params cp;
    nvlm_context_default_params(&cp);
    cp.n_threads = n_threads;
    cp.tp_size = tp;
    cp.backend = NVLM_BACKEND_CPU;
    nvlm_context *ctx = NULL;
    CHECK_OK(nvlm_context_create(&cp, &ctx));
    nvlm_model_params mp;
    nvlm_model_default_params(&mp);
    mp.precision = NVLM_PRECISION_FAST;
    nvlm_model *m = NULL;
    nvlm_status st = ctx != NULL ? nvlm_model_load(ctx, EG_MODEL_DIR, &mp, &m) : NVLM_ERR_IO;
    CHECK(st == NVLM_OK, "load fast (tp %d) -> %d: %s", tp, (int)st,
          ctx != NULL ? nvlm_last_error(ctx) : "");
    *ctx_out = ctx;
    return st == NVLM_OK ? m : NULL;
}

static double rel_l2(const float *a, const float *b, size_t n)
{
    double d = 0.0, r = 0.0;
    for (size_t i = 0; i < n; i++) {
        d += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
        r += (double)b[i] * b[i];
    }
    return sqrt(d / (r > 0.0 ? r : 1.0));
}

/* Golden top-1 minus top-2 logit. */
static double margin(const float *v, int n)
{
    int32_t best = eg_argmax(v, n);
    double second = -1e30;
    for (int i = 0; i < n; i++) {
        if (i != best && v[i] > second) {
            second = v[i];
        }
    }
    return v[best] - second;
}

static void test_case(nvlm_context *ctx, nvlm_model *m, const cJSON *c, const nv_st_file *fast,
                      int tp)
{
    const char *name = eg_jstr(c, "name");
    char what[160];
    snprintf(what, sizeof what, "%s, fast, tp %d", name, tp);
    tu_section(what);
    nv_st_file *f = eg_open(ctx, name);
    size_t n_ids = 0, n_steps = 0;
    int32_t *ids = eg_ids(f, "prompt_ids", &n_ids);
    int32_t *steps = eg_ids(f, "step_tokens", &n_steps);
    const nv_tensor *gl = eg_tensor(f, "step_logits", NV_F32);
    char key[96];
    snprintf(key, sizeof key, "%s.step_logits", name);
    const nv_tensor *ol = eg_tensor(fast, key, NV_F32);
    nvlm_session *s = eg_build_case(ctx, m, c, NULL);
    if (s == NULL || ids == NULL || steps == NULL || gl == NULL || ol == NULL) {
        goto out;
    }
    size_t n_tok = 0;
    const int32_t *tok = nvlm_session_tokens(s, &n_tok);
    CHECK(n_tok == n_ids && memcmp(tok, ids, n_ids * sizeof *ids) == 0, "prompt ids");
    const size_t V = 4032;
    double worst_rel = 0.0, min_rel = 1e30, worst_oracle = 0.0, max_abs = 0.0;
    int agree = 0, decided = 0;
    for (size_t i = 0; i < n_steps; i++) {
        if (i > 0) {
            CHECK_OK(nvlm_session_feed(s, &steps[i - 1], 1, NULL, 0));
        }
        size_t nv = 0;
        const float *lg = nvlm_session_logits(s, &nv);
        CHECK(lg != NULL && nv == V, "step %zu logits", i);
        if (lg == NULL || nv != V) {
            break;
        }
        const float *want = (const float *)ol->data + i * V;
        const float *gold = (const float *)gl->data + i * V;
        double ro = rel_l2(lg, want, V);
        worst_oracle = ro > worst_oracle ? ro : worst_oracle;
        for (size_t j = 0; j < V; j++) {
            double d = fabs((double)lg[j] - want[j]);
            max_abs = d > max_abs ? d : max_abs;
        }
        double r = rel_l2(lg, gold, V);
        worst_rel = r > worst_rel ? r : worst_rel;
        min_rel = r < min_rel ? r : min_rel;
        if (margin(gold, (int)V) > 0.1) {
            decided++;
            agree += eg_argmax(lg, (int)V) == steps[i];
        }
    }
    printf("#   %s: vs the fast oracle: rel-L2 per step max %.3g, max |diff| %.3g\n", what,
           worst_oracle, max_abs);
    CHECK(worst_oracle <= FAST_ORACLE_REL, "%s: rel-L2 vs the fast oracle %.3g <= %g", what,
          worst_oracle, FAST_ORACLE_REL);
    printf("#   %s: rel-L2 vs the f32 golden per step: max %.3g, min %.3g; greedy equal on "
           "%d of %d steps with margin > 0.1\n", what, worst_rel, min_rel, agree, decided);
    CHECK(worst_rel <= 3e-2, "%s: rel-L2 vs f32 goldens %.3g <= 3e-2", what, worst_rel);
    CHECK(min_rel > 1e-5, "%s: fast differs from exact (rel-L2 %.3g > 1e-5)", what, min_rel);
    CHECK(agree == decided, "%s: greedy tokens agree where the margin > 0.1 (%d of %d)", what,
          agree, decided);
out:
    nvlm_session_free(s);
    free(ids);
    free(steps);
    nv_st_close(f);
}

/* The worst element-wise error / bound ratio of each kind of stage over a run (the margin),
 * and how many rows differed from the oracle by one of its rounding flips. */
enum { ST_EMBED, ST_VIT, ST_PROJ, ST_PREFILL, ST_DECODE, ST_HEAD, ST_KINDS };
static const char *const stage_kind[ST_KINDS] = {
    "ViT embeddings", "ViT layer", "projector", "decoder layer, prefill rows",
    "decoder layer, decode rows", "head (final norm + lm_head)"};
static double stage_ratio[ST_KINDS], stage_abs[ST_KINDS], stage_rest[ST_KINDS];
static int stage_rows[ST_KINDS], stage_flips[ST_KINDS];

/* The oracle's flip alternatives of one stage (tests/oracle/fast_precision_logits.py,
 * flip_alternatives): k rows [row, point, column] and the stage's output row with that
 * element rounded to its other bf16 neighbour. Points as the oracle's POINTS. */
typedef struct flip_set {
    const int64_t *idx;
    const float *alt;
    size_t k;
} flip_set;

static const char *const flip_point[] = {"qkv_in", "proj_in", "fc1_in", "fc2_in",
                                         "w1_in", "w2_in", "k_cache", "v_cache",
                                         "o_in", "gateup_in", "down_in", "lm_in"};

static int flips_at[NV_ARRAY_LEN(flip_point)]; /* rows explained, by point */

static flip_set flips_of(const nv_st_file *fast, const char *name, const char *stage, int cols)
{
    char key[128];
    flip_set fs = {0};
    snprintf(key, sizeof key, "%s.%s_alt_idx", name, stage);
    const nv_tensor *idx = eg_tensor(fast, key, NV_I64);
    snprintf(key, sizeof key, "%s.%s_alt", name, stage);
    const nv_tensor *alt = eg_tensor(fast, key, NV_F32);
    if (idx != NULL && alt != NULL && idx->ndim == 2 && idx->shape[1] == 3 && alt->ndim == 2 &&
        alt->shape[0] == idx->shape[0] && alt->shape[1] == cols) {
        fs.idx = idx->data;
        fs.alt = alt->data;
        fs.k = (size_t)idx->shape[0];
    }
    CHECK(idx == NULL || alt == NULL || fs.idx != NULL, "%s: flip alternatives of %d columns",
          key, cols);
    return fs;
}

/* Worst |a - b| / (FAST_STAGE_ATOL + EG_RTOL |b|) over n values; *max_abs gets max |a - b|. */
static double worst_ratio(const float *a, const float *b, size_t n, double *max_abs)
{
    double ratio = 0.0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]);
        double r = d / (FAST_STAGE_ATOL + EG_RTOL * fabs((double)b[i]));
        ratio = r > ratio || isnan(r) ? r : ratio;
        if (max_abs != NULL) {
            *max_abs = d > *max_abs || isnan(d) ? d : *max_abs;
        }
    }
    return ratio;
}

/* got vs want (rows row0 .. row0 + rows - 1 of a stage, `cols` each) element-wise within
 * FAST_STAGE_ATOL + EG_RTOL |want|. A row outside it passes only when it is within the bound
 * of one of the oracle's flip alternatives for that row (fs may be NULL: none); a row beyond
 * half the bound that an alternative matches better counts as that flip too. One CHECK; the
 * worst ratio of all rows and of the rows that are no flip printed and folded into the
 * kind's figures. */
static void stage_close(int kind, const char *what, const float *got, const float *want,
                        int row0, int rows, int cols, const flip_set *fs)
{
    double ratio = 0.0, rest = 0.0, max_abs = 0.0;
    int flipped = 0, bad = 0, bad_row = -1;
    char flips[160] = "";
    for (int r = 0; r < rows; r++) {
        const float *g = got + (size_t)r * cols;
        double rr = worst_ratio(g, want + (size_t)r * cols, (size_t)cols, &max_abs);
        ratio = rr > ratio || isnan(rr) ? rr : ratio;
        /* A row beyond half the bound that one of the oracle's flip alternatives matches
         * better, within the bound, is that flip; any other row must be within the bound. */
        size_t hit = SIZE_MAX;
        double best = rr;
        for (size_t i = 0; rr > 0.5 && fs != NULL && i < fs->k; i++) {
            if (fs->idx[3 * i] == row0 + r) {
                double ra = worst_ratio(g, fs->alt + i * (size_t)cols, (size_t)cols, NULL);
                if (ra <= 1.0 && ra < best) {
                    best = ra;
                    hit = i;
                }
            }
        }
        if (hit == SIZE_MAX) {
            if (!(rr <= 1.0)) {
                bad++;
                bad_row = bad_row < 0 ? row0 + r : bad_row;
            }
            rest = rr > rest || isnan(rr) ? rr : rest;
            continue;
        }
        flipped++;
        int64_t pt = fs->idx[3 * hit + 1];
        if (pt >= 0 && pt < (int64_t)NV_ARRAY_LEN(flip_point)) {
            flips_at[pt]++;
        }
        size_t len = strlen(flips);
        snprintf(flips + len, sizeof flips - len, "%s row %d: %s[%lld] (ratio %.2f)",
                 len > 0 ? "," : "", row0 + r,
                 pt >= 0 && pt < (int64_t)NV_ARRAY_LEN(flip_point) ? flip_point[pt] : "?",
                 (long long)fs->idx[3 * hit + 2], rr);
    }
    printf("#   %s: max |diff| %.3g, worst |diff| / bound %.3f over %d x %d", what, max_abs,
           ratio, rows, cols);
    if (flipped > 0) {
        printf("; %d row(s) = an oracle flip alternative:%s; the other rows %.3f", flipped,
               flips, rest);
    }
    printf("\n");
    CHECK(bad == 0, "%s: %d of %d rows outside %g + %g |want| and no oracle flip alternative "
          "(first: row %d)", what, bad, rows, FAST_STAGE_ATOL, EG_RTOL, bad_row);
    stage_ratio[kind] = ratio > stage_ratio[kind] || isnan(ratio) ? ratio : stage_ratio[kind];
    stage_rest[kind] = rest > stage_rest[kind] || isnan(rest) ? rest : stage_rest[kind];
    stage_abs[kind] = max_abs > stage_abs[kind] || isnan(max_abs) ? max_abs : stage_abs[kind];
    stage_rows[kind] += rows;
    stage_flips[kind] += flipped;
}

/* The vision stages on case2's tile, each fed the oracle's input of that stage: the
 * embeddings (pixels -> patch embedding + CLS + position), every ViT layer (vit_stage), the
 * projector (the oracle's ViT output without CLS -> pixel shuffle, LayerNorm, mlp1). */
static void stages_vision(nvlm_context *ctx, nv_exec *ex, nv_engine *e, const nv_st_file *fast,
                          int tp)
{
    const vit_weights *w = &e->vit;
    const proj_weights *pw = &e->proj;
    nv_st_file *f = eg_open(ctx, "case2_single_tile");
    const nv_tensor *pv = eg_tensor(f, "pixel_values", NV_F32);
    const nv_tensor *vs = eg_tensor(fast, "case2_single_tile.vit_states", NV_F32);
    const nv_tensor *po = eg_tensor(fast, "case2_single_tile.proj_out", NV_F32);
    size_t per = (size_t)(w->n_patches + 1) * w->D;
    size_t rows = (size_t)w->n_patches / 4;
    if (pv == NULL || vs == NULL || po == NULL || (size_t)nv_tensor_nelem(vs) !=
        (size_t)(w->n_layers + 1) * per || (size_t)nv_tensor_nelem(po) != rows * pw->out) {
        CHECK(false, "vision states of one tile with the model's shapes");
        nv_st_close(f);
        return;
    }
    const float *st = vs->data;
    char what[128];
    nv_arena ar;
    float *out = NULL;
    float *hidden = eg_vit_one_tile(ex, &ar, w, pv->data, &out);
    if (hidden != NULL) {
        snprintf(what, sizeof what, "tp %d: ViT embeddings", tp);
        stage_close(ST_EMBED, what, hidden, st, 0, w->n_patches + 1, w->D, NULL);
    }
    free(hidden);
    float *got = malloc(per * sizeof(float));
    for (int l = 0; l < w->n_layers && got != NULL; l++) {
        nv_arena_rewind(&ar, 0);
        CHECK_OK(vit_stage(ex, &ar, w, l, 1, st + (size_t)l * per, got));
        snprintf(what, sizeof what, "tp %d: ViT layer %d", tp, l);
        char stage[16];
        snprintf(stage, sizeof stage, "vit%d", l);
        flip_set fs = flips_of(fast, "case2_single_tile", stage, w->D);
        stage_close(ST_VIT, what, got, st + (size_t)(l + 1) * per, 0, w->n_patches + 1, w->D,
                    &fs);
    }
    /* The projector: its input rows and output rows below its scratch. */
    size_t n_in = (size_t)w->n_patches * w->D, n_out = rows * pw->out;
    CHECK_OK(nv_arena_reserve(&ar, nv_arena_size(n_in) + nv_arena_size(n_out) +
                                       proj_arena_bytes(pw, w, 1)));
    float *in = nv_arena_floats(&ar, n_in);
    float *dev = nv_arena_floats(&ar, n_out);
    float *pg = malloc(n_out * sizeof(float));
    if (in != NULL && dev != NULL && pg != NULL) {
        const float *last = st + (size_t)w->n_layers * per + w->D; /* CLS dropped */
        CHECK_OK(e->be->ops->upload(ex, in, last, n_in * sizeof(float)));
        CHECK_OK(proj_forward(ex, &ar, pw, w, in, 1, dev, NULL));
        CHECK_OK(e->be->ops->download(ex, pg, dev, n_out * sizeof(float)));
        CHECK_OK(e->be->ops->sync(ex));
        snprintf(what, sizeof what, "tp %d: projector", tp);
        flip_set fs = flips_of(fast, "case2_single_tile", "proj", pw->out);
        stage_close(ST_PROJ, what, pg, po->data, 0, (int)rows, pw->out, &fs);
    }
    free(pg);
    free(got);
    nv_arena_release(&ar);
    nv_st_close(f);
}

/* The decoder stages of one case, teacher-forced, each layer fed the oracle's input of that
 * layer as a session runs it: the prompt rows as one prefill pass (GEMM form: at least
 * MM_SMALL_M rows), then each step row alone (GEMV form) attending over the bf16 KV cache the
 * layer built from the oracle's inputs of the earlier positions; then the head on the oracle's
 * last layer output, one step row at a time, against the oracle's logits. */
static void stages_decoder(nv_exec *ex, nv_engine *e, const nv_st_file *fast, const char *name,
                           int tp)
{
    const dec_weights *w = &e->dec;
    char key[96];
    snprintf(key, sizeof key, "%s.llm_states", name);
    const nv_tensor *ls = eg_tensor(fast, key, NV_F32);
    snprintf(key, sizeof key, "%s.step_logits", name);
    const nv_tensor *sl = eg_tensor(fast, key, NV_F32);
    snprintf(key, sizeof key, "%s.n_prompt", name);
    const nv_tensor *np = eg_tensor(fast, key, NV_I64);
    if (ls == NULL || sl == NULL || np == NULL) {
        return;
    }
    int n_prompt = (int)*(const int64_t *)np->data;
    int n_steps = (int)sl->shape[0];
    int n = n_prompt + n_steps - 1; /* the last step's token is never fed */
    size_t D = (size_t)w->D, V = (size_t)w->vocab;
    if (ls->ndim != 3 || ls->shape[0] != w->n_layers + 1 || ls->shape[1] != n ||
        ls->shape[2] != (int64_t)D || sl->shape[1] != (int64_t)V || n_prompt < MM_SMALL_M ||
        n > DEC_MAX_BATCH) {
        CHECK(false, "%s: decoder states (%d layers + 1, %d rows, %zu) with a prompt of >= %d",
              name, w->n_layers, n, D, MM_SMALL_M);
        return;
    }
    const float *st = ls->data;
    size_t per = (size_t)n * D;
    dec_kv kv;
    nvlm_status kst = dec_kv_init(ex, w, &kv, e->be->kv_default, w->max_pos);
    CHECK_OK(kst);
    if (kst != NVLM_OK) {
        return;
    }
    CHECK(kv.type == NV_BF16, "fast: the KV cache defaults to bf16");
    CHECK_OK(dec_kv_reserve(ex, &kv, n));
    nv_arena ar = {.ex = ex};
    CHECK_OK(nv_arena_reserve(&ar, dec_arena_bytes(w, n_prompt, n_prompt)));
    float *got = malloc(per * sizeof(float));
    char what[160];
    for (int l = 0; l < w->n_layers && got != NULL; l++) {
        const float *in = st + (size_t)l * per, *want = st + (size_t)(l + 1) * per;
        char stage[16];
        snprintf(stage, sizeof stage, "llm%d", l);
        flip_set fs = flips_of(fast, name, stage, w->D);
        nv_arena_rewind(&ar, 0);
        CHECK_OK(dec_stage(ex, &ar, w, &kv, l, 0, n_prompt, in, got));
        snprintf(what, sizeof what, "tp %d: %s decoder layer %d, prefill of %d rows", tp, name,
                 l, n_prompt);
        stage_close(ST_PREFILL, what, got, want, 0, n_prompt, w->D, &fs);
        for (int p = n_prompt; p < n; p++) {
            nv_arena_rewind(&ar, 0);
            CHECK_OK(dec_stage(ex, &ar, w, &kv, l, p, 1, in + (size_t)p * D,
                               got + (size_t)p * D));
        }
        snprintf(what, sizeof what, "tp %d: %s decoder layer %d, %d decode rows", tp, name, l,
                 n - n_prompt);
        stage_close(ST_DECODE, what, got + (size_t)n_prompt * D, want + (size_t)n_prompt * D,
                    n_prompt, n - n_prompt, w->D, &fs);
    }
    const float *last = st + (size_t)w->n_layers * per;
    flip_set fs = flips_of(fast, name, "head", w->vocab);
    float *logits = malloc((size_t)n_steps * V * sizeof(float));
    for (int i = 0; i < n_steps && logits != NULL; i++) {
        nv_arena_rewind(&ar, 0);
        CHECK_OK(dec_stage(ex, &ar, w, &kv, w->n_layers, 0, 1,
                           last + (size_t)(n_prompt - 1 + i) * D, logits + (size_t)i * V));
    }
    if (logits != NULL) {
        snprintf(what, sizeof what, "tp %d: %s head, %d steps (one row each)", tp, name,
                 n_steps);
        stage_close(ST_HEAD, what, logits, sl->data, 0, n_steps, w->vocab, &fs);
    }
    free(logits);
    free(got);
    nv_arena_release(&ar);
    dec_kv_free(ex, &kv);
}

/* Stage-wise teacher forcing against the fast oracle (see FAST_STAGE_ATOL). */
static void test_stages(nvlm_context *ctx, nvlm_model *m, const nv_st_file *fast, int tp)
{
    char what[96];
    snprintf(what, sizeof what, "stages vs the fast oracle, element-wise, tp %d", tp);
    tu_section(what);
    nv_engine *e = m->engine;
    CHECK(e->be->precision == NVLM_PRECISION_FAST, "the model's backend runs the fast precision");
    nv_exec *ex = NULL;
    CHECK_OK(e->be->ops->exec_create(e->be, 2, m, &ex));
    if (ex == NULL) {
        return;
    }
    stages_vision(ctx, ex, e, fast, tp);
    stages_decoder(ex, e, fast, "case3_text_only", tp);
    stages_decoder(ex, e, fast, "case2_single_tile", tp);
    e->be->ops->exec_free(ex);
}

/* The matmul op's fallback (weights that are not bf16: x rounded into the exec's buffer, then
 * the exact kernels) equals cpu_matmul on cpu_round_bf16(x) bit for bit, and differs from the
 * exact op. */
static void test_op_fallback(void)
{
    tu_section("fast matmul op, f16 weights (the rounding fallback)");
    nvlm_context *ctx = NULL;
    CHECK_OK(tu_context_create(&ctx));
    nv_backend *be = NULL;
    CHECK_OK(ctx != NULL ? nv_backend_cpu_create(ctx, &be) : NVLM_ERR_INTERNAL);
    nv_exec *ex = NULL;
    if (be != NULL) {
        CHECK_OK(be->ops->exec_create(be, 2, ctx, &ex));
    }
    enum { M = 20, N = 33, K = 70 };
    uint16_t *w = malloc((size_t)N * K * sizeof(uint16_t));
    float *x = malloc((size_t)M * K * sizeof(float)), *xr = malloc((size_t)M * K * sizeof(float));
    float *y = malloc((size_t)M * N * sizeof(float)), *ye = malloc((size_t)M * N * sizeof(float));
    float *want = malloc((size_t)M * N * sizeof(float));
    uint32_t r = 12345;
    for (size_t i = 0; i < (size_t)N * K; i++) {
        r = r * 1664525u + 1013904223u;
        w[i] = nv_f32_to_f16((float)((double)(r >> 8) / 8388608.0 - 1.0));
    }
    for (size_t i = 0; i < (size_t)M * K; i++) {
        r = r * 1664525u + 1013904223u;
        x[i] = (float)((double)(r >> 8) / 8388608.0 - 1.0);
    }
    nv_bweight bw;
    memset(&bw, 0, sizeof bw);
    bw.t.dtype = NV_F16;
    bw.t.ndim = 2;
    bw.t.shape[0] = N;
    bw.t.shape[1] = K;
    bw.t.data = w;
    if (ex != NULL) {
        be->precision = NVLM_PRECISION_FAST;
        CHECK_OK(be->ops->matmul(ex, y, x, &bw, NULL, M));
        be->precision = NVLM_PRECISION_EXACT;
        CHECK_OK(be->ops->matmul(ex, ye, x, &bw, NULL, M));
        cpu_round_bf16(xr, x, (size_t)M * K);
        cpu_matmul(NULL, want, xr, w, NV_F16, NULL, M, N, K);
        CHECK(memcmp(y, want, (size_t)M * N * sizeof(float)) == 0,
              "fast op with f16 weights = cpu_matmul on bf16-rounded x, bit for bit");
        CHECK(rel_l2(ye, y, (size_t)M * N) > 1e-4, "and differs from the exact op (rel-L2 %.3g)",
              rel_l2(ye, y, (size_t)M * N));
    }
    free(w);
    free(x);
    free(xr);
    free(y);
    free(ye);
    free(want);
    if (ex != NULL) {
        be->ops->exec_free(ex);
    }
    if (be != NULL) {
        be->ops->destroy(be);
    }
    nvlm_context_free(ctx);
}

static void test_params(void)
{
    tu_section("model params: precision");
    nvlm_context *ctx = NULL;
    CHECK_OK(tu_context_create(&ctx));
    if (ctx == NULL) {
        return;
    }
    nvlm_model_params mp;
    nvlm_model_default_params(&mp);
    CHECK_EQ_INT(mp.precision, NVLM_PRECISION_EXACT, "default exact");
    mp.precision = (nvlm_precision)7;
    nvlm_model *m = NULL;
    CHECK_EQ_INT(nvlm_model_load(ctx, EG_MODEL_DIR, &mp, &m), NVLM_ERR_INVALID_ARGUMENT,
                 "unknown precision refused");
    CHECK(m == NULL && strstr(nvlm_last_error(ctx), "precision") != NULL,
          "message names the precision: %s", nvlm_last_error(ctx));
    /* A caller built before the field existed: its struct ends at use_mmap. */
    mp.struct_size = (uint32_t)offsetof(nvlm_model_params, precision);
    mp.mode = NVLM_LOAD_CONFIG_ONLY;
    CHECK_OK(nvlm_model_load(ctx, EG_MODEL_DIR, &mp, &m));
    nvlm_model_free(m);
    nvlm_context_free(ctx);
}

int main(void)
{
    test_params();
    test_op_fallback();
    nvlm_context *ctx0 = NULL;
    nvlm_model *m0 = load_fast(&ctx0, 2, 1);
    nv_st_file *fast = NULL;
    if (ctx0 != NULL) {
        nvlm_status st = nv_st_open(ctx0, FAST_FILE, NULL, &fast);
        CHECK(st == NVLM_OK, "open %s -> %d", FAST_FILE, (int)st);
    }
    size_t size = 0;
    char *json = tu_read_file(EG_GOLDEN_DIR "cases.json", &size);
    cJSON *cases = json != NULL ? cJSON_Parse(json) : NULL;
    CHECK(cases != NULL, "cases.json parses");
    const cJSON *arr = cJSON_GetObjectItemCaseSensitive(cases, "cases");
    static const char *const want[] = {"case3_text_only", "case2_single_tile"};
    for (int tp = 1; tp <= 2; tp++) {
        nvlm_context *ctx = ctx0;
        nvlm_model *m = m0;
        if (tp == 2) {
            m = load_fast(&ctx, 2, 2);
        }
        if (m != NULL && fast != NULL) {
            test_stages(ctx, m, fast, tp);
        }
        const cJSON *c;
        cJSON_ArrayForEach(c, arr)
        {
            for (size_t i = 0; i < 2; i++) {
                const char *nm = eg_jstr(c, "name");
                if (m != NULL && fast != NULL && nm != NULL && strcmp(nm, want[i]) == 0) {
                    test_case(ctx, m, c, fast, tp);
                }
            }
        }
        if (tp == 2) {
            nvlm_model_free(m);
            nvlm_context_free(ctx);
        }
    }
    printf("# per kind of stage, tp 1 and 2: worst element-wise |diff| / bound (%g + %g |want|)"
           ", rows equal to an oracle flip alternative, the worst ratio of the other rows:\n",
           FAST_STAGE_ATOL, EG_RTOL);
    for (int k = 0; k < ST_KINDS; k++) {
        printf("#   %-30s max |diff| %.3g, ratio %.3f; %d of %d rows flipped, others %.3f\n",
               stage_kind[k], stage_abs[k], stage_ratio[k], stage_flips[k], stage_rows[k],
               stage_rest[k]);
    }
    printf("#   rows equal to a flip alternative, by the flipped point:");
    for (size_t i = 0; i < NV_ARRAY_LEN(flip_point); i++) {
        if (flips_at[i] > 0) {
            printf(" %s %d", flip_point[i], flips_at[i]);
        }
    }
    printf("\n");
    cJSON_Delete(cases);
    free(json);
    nv_st_close(fast);
    nvlm_model_free(m0);
    nvlm_context_free(ctx0);
    return tu_done();
}
